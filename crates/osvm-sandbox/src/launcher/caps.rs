//! Dropping every capability, bounding set included, and locking root's special cases.

use caps::CapSet;

/// Errors while dropping capabilities.
#[derive(Debug, thiserror::Error)]
#[error("capabilities: {0}")]
pub struct CapsError(String);

/// Locks the securebits so that uid 0 never regains capabilities through `execve`, then
/// empties the bounding, ambient, inheritable, permitted and effective sets.
pub fn drop_all() -> Result<(), CapsError> {
    // SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED and
    // SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock bit.
    const SECUREBITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;
    // SAFETY: prctl with integer arguments only; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) } != 0 {
        return Err(CapsError(format!(
            "setting securebits: {}",
            std::io::Error::last_os_error()
        )));
    }
    let last: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(CapsError(format!(
                "dropping capability {cap} from the bounding set: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
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
