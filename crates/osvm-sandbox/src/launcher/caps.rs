//! Dropping every capability, bounding set included, and locking root's special cases.

use caps::CapSet;

/// Errors while dropping capabilities.
#[derive(Debug, thiserror::Error)]
#[error("capabilities: {0}")]
pub struct CapsError(String);

/// SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED and
/// SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock bit.
const SECUREBITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;

fn lock_securebits() -> Result<(), CapsError> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) } != 0 {
        return Err(CapsError(format!(
            "setting securebits: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Locks the securebits so that uid 0 never regains capabilities through `execve`, then
/// empties the bounding, ambient, inheritable, permitted and effective sets.
pub fn drop_all() -> Result<(), CapsError> {
    lock_securebits()?;
    drop_bounding_except(&[])?;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| CapsError(format!("clearing {set:?}: {e}")))?;
    }
    Ok(())
}

/// Like [`drop_all`], but `CAP_SETPCAP` and `CAP_SYS_CHROOT` stay in every set, ambient
/// included, so that they survive the exec: the bounding set holds nothing else, so the
/// program can only chroot and drop them. The securebits are locked last (setting them needs
/// `CAP_SETPCAP`, and ambient raising must still be allowed when they are raised).
pub fn drop_all_but_helper_caps() -> Result<(), CapsError> {
    use caps::Capability::{CAP_SETPCAP, CAP_SYS_CHROOT};
    let keep = [CAP_SETPCAP, CAP_SYS_CHROOT];
    drop_bounding_except(&keep)?;
    let only: caps::CapsHashSet = keep.into_iter().collect();
    // Effective and inheritable first: each must stay within the permitted set.
    for set in [CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
        caps::set(None, set, &only).map_err(|e| CapsError(format!("setting {set:?}: {e}")))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| CapsError(format!("clearing ambient: {e}")))?;
    for cap in keep {
        caps::raise(None, CapSet::Ambient, cap)
            .map_err(|e| CapsError(format!("raising ambient {cap}: {e}")))?;
    }
    lock_securebits()
}

/// Drops every capability from the bounding set but those in `keep`.
fn drop_bounding_except(keep: &[caps::Capability]) -> Result<(), CapsError> {
    let last: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        if keep.iter().any(|k| libc::c_ulong::from(k.index()) == cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(CapsError(format!(
                "dropping capability {cap} from the bounding set: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}
