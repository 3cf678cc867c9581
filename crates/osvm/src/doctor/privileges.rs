//! Privilege probes: root, no_new_privs and capability dropping.

use nix::unistd::geteuid;

use super::parse::parse_kernel_version;
use super::{AREA_PRIVILEGES, Check, read_value};

/// Oldest kernel with `PR_SET_NO_NEW_PRIVS`; capability dropping predates it.
const MIN_KERNEL_NO_NEW_PRIVS: (u32, u32) = (3, 5);

/// Rows for root, no_new_privs and capability dropping (both judged by kernel version).
pub(super) fn privilege_checks(is_root: bool) -> Vec<Check> {
    let uid = nix::unistd::getuid();
    let euid = geteuid();
    let root = if is_root {
        Check::yes(
            AREA_PRIVILEGES,
            "root",
            format!("running as root (uid {uid}, euid {euid})"),
        )
    } else {
        Check::no(
            AREA_PRIVILEGES,
            "root",
            format!(
                "running as uid {uid}: the sandbox needs user namespaces and delegated cgroups"
            ),
        )
    };

    let release = read_value("/proc/sys/kernel/osrelease");
    let version = release.as_deref().and_then(parse_kernel_version);
    let release_words = release.as_deref().unwrap_or("unknown");
    let new_enough = version.is_some_and(|v| v >= MIN_KERNEL_NO_NEW_PRIVS);
    let (min_major, min_minor) = MIN_KERNEL_NO_NEW_PRIVS;
    let nnp_now = match nix::sys::prctl::get_no_new_privs() {
        Ok(true) => "set",
        Ok(false) => "not set",
        Err(_) => "unknown",
    };
    let (nnp, caps) = if new_enough {
        (
            Check::yes(
                AREA_PRIVILEGES,
                "no_new_privs",
                format!(
                    "kernel {release_words} (>= {min_major}.{min_minor}); this process: {nnp_now}"
                ),
            ),
            Check::yes(
                AREA_PRIVILEGES,
                "capability dropping",
                format!(
                    "kernel {release_words} (>= {min_major}.{min_minor}): bounding set and capset"
                ),
            ),
        )
    } else {
        let why = format!("kernel {release_words} is older than {min_major}.{min_minor}");
        (
            Check::no(AREA_PRIVILEGES, "no_new_privs", why.clone()),
            Check::no(AREA_PRIVILEGES, "capability dropping", why),
        )
    };
    vec![root, nnp, caps]
}
