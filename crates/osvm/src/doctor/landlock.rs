//! Landlock probe: the ABI version, queried with the kernel's own version call.

use nix::errno::Errno;

use super::{AREA_LANDLOCK, Check};

/// What each Landlock ABI version added, index 0 being ABI 1.
const LANDLOCK_ABI_FEATURES: [&str; 7] = [
    "fs basic",
    "refer",
    "truncate",
    "TCP bind/connect",
    "ioctl on devices",
    "scoping of abstract unix sockets and signals",
    "logging",
];

/// What a Landlock ABI version covers, cumulatively.
fn landlock_features(abi: u32) -> String {
    let known = usize::try_from(abi)
        .unwrap_or(usize::MAX)
        .min(LANDLOCK_ABI_FEATURES.len());
    let mut words = LANDLOCK_ABI_FEATURES[..known].join(", ");
    if known < usize::try_from(abi).unwrap_or(usize::MAX) {
        words.push_str(", and newer features this osvm does not know");
    }
    words
}

/// The Landlock ABI version, straight from the kernel.
pub(super) fn landlock_check() -> Check {
    let rc = match osvm_sandbox::host::landlock_abi() {
        Ok(v) => v,
        Err(errno) => {
            let why = match errno {
                Errno::ENOSYS => "kernel without Landlock".to_owned(),
                Errno::EOPNOTSUPP => {
                    "Landlock is built in but disabled at boot (add landlock to the lsm= parameter)"
                        .to_owned()
                }
                other => format!("landlock_create_ruleset failed with {other}"),
            };
            return Check::no(AREA_LANDLOCK, "abi", format!("unavailable: {why}"));
        }
    };
    match u32::try_from(rc) {
        Ok(abi) if abi >= 1 => Check::yes(
            AREA_LANDLOCK,
            "abi",
            format!("ABI {abi}: {}", landlock_features(abi)),
        ),
        _ => Check::no(
            AREA_LANDLOCK,
            "abi",
            format!("unavailable: kernel reported ABI version {rc}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landlock_abi_lists_cumulative_features() {
        assert_eq!(landlock_features(1), "fs basic");
        assert!(landlock_features(4).ends_with("TCP bind/connect"));
        assert!(landlock_features(9).contains("newer features"));
    }
}
