//! Probes of what this host's kernel allows, for `osvm doctor`. Each one really tries the
//! mechanism (in a throw-away child where it would change the caller) instead of guessing from
//! version numbers.

use nix::errno::Errno;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

/// `LANDLOCK_CREATE_RULESET_VERSION`: makes `landlock_create_ruleset` return the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1 << 0;
/// uid/gid of `nobody`.
const NOBODY: libc::c_long = 65534;

/// Whether a probe child keeps the caller's identity or first drops to nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeIdentity {
    /// Run as the current user.
    Current,
    /// Switch to uid/gid 65534 first (only meaningful as root): what an unprivileged user gets.
    Nobody,
}

/// Outcome of one unshare attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnshareOutcome {
    /// The kernel created the namespace(s).
    Created,
    /// The kernel refused, with this errno.
    Refused(Errno),
}

/// Why a probe child gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum HostProbeError {
    /// fork(2) failed.
    #[error("fork failed: {0}")]
    Fork(Errno),
    /// The child ended some other way than by exiting.
    #[error("the probe child ended unexpectedly: {0:?}")]
    Ended(WaitStatus),
    /// waitpid(2) failed.
    #[error("waiting for the probe child failed: {0}")]
    Wait(Errno),
}

/// Tries `unshare(flags)` in a forked child so that the caller's namespaces stay as they are.
/// The child reports the errno through its exit code (errno values fit in 8 bits).
pub fn try_unshare(
    flags: libc::c_int,
    identity: ProbeIdentity,
) -> Result<UnshareOutcome, HostProbeError> {
    // SAFETY: after fork the child runs only raw syscalls and `_exit`, all async-signal-safe, so
    // it is sound even if the parent has other threads; it touches no allocator, lock or stdio.
    let child = match unsafe { fork() }.map_err(HostProbeError::Fork)? {
        ForkResult::Child => {
            // SAFETY: async-signal-safe syscalls only (see above); `_exit` skips atexit handlers
            // and stdio flushing, which belong to the parent.
            unsafe { libc::_exit(unshare_in_probe_child(flags, identity)) }
        }
        ForkResult::Parent { child } => child,
    };
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => return Ok(UnshareOutcome::Created),
            Ok(WaitStatus::Exited(_, code)) => {
                return Ok(UnshareOutcome::Refused(Errno::from_raw(code)));
            }
            Ok(other) => return Err(HostProbeError::Ended(other)),
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(HostProbeError::Wait(errno)),
        }
    }
}

/// Body of the probe child: optionally drop to nobody, then unshare. Returns 0 or the errno.
/// Raw syscalls, not the libc wrappers: glibc's `setresuid` signals every thread of the process.
fn unshare_in_probe_child(flags: libc::c_int, identity: ProbeIdentity) -> libc::c_int {
    // SAFETY: raw syscalls with integer arguments only; no memory is passed to the kernel.
    unsafe {
        if identity == ProbeIdentity::Nobody
            && (libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY) != 0
                || libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY) != 0)
        {
            return Errno::last_raw();
        }
        if libc::syscall(libc::SYS_unshare, libc::c_long::from(flags)) == 0 {
            0
        } else {
            Errno::last_raw()
        }
    }
}

/// This thread's seccomp mode (`PR_GET_SECCOMP`): 0 off, 1 strict, 2 filter.
pub fn seccomp_mode() -> Result<i32, Errno> {
    // SAFETY: PR_GET_SECCOMP takes no pointer arguments and only reports this thread's mode.
    let rc = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    if rc < 0 { Err(Errno::last()) } else { Ok(rc) }
}

/// The kernel's Landlock ABI version.
pub fn landlock_abi() -> Result<i64, Errno> {
    // SAFETY: with a NULL attribute pointer, size 0 and only the VERSION flag the kernel reads no
    // memory and creates no file descriptor; it returns the ABI version or an error.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(rc) }
}

/// Whether the new mount API the sandbox builds its root with works here: a tmpfs made with
/// `fsopen`/`fsmount` (left detached, so nothing is mounted anywhere).
pub fn mount_api() -> Result<(), String> {
    crate::launcher::mounts::new_fs("tmpfs", &[("size", "4096".into())], &[], 0)
        .map(drop)
        .map_err(|e| {
            format!("fsopen/fsmount of a tmpfs failed: {e} (Linux 5.2 or newer is needed)")
        })
}

/// Whether an overlay root (a container image's layers, containerd's default snapshotter) can
/// be mounted the way the sandbox mounts one: layers id-mapped, then overlaid by descriptor
/// (Linux 6.13 or newer), created with the mapped root's file-system ids. Probed on throw-away
/// tmpfs layers, never attached anywhere. Needs root.
pub fn overlay_roots() -> Result<(), String> {
    use crate::launcher::mounts;
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsFd;
    let ns = mounts::mapping_userns(0, 0, crate::ids::BASE, 1)
        .map_err(|e| format!("make a user namespace for the mapping: {e}"))?;
    let layer = || {
        mounts::new_fs("tmpfs", &[("size", "65536".into())], &[], 0)
            .map_err(|e| format!("make a tmpfs layer: {e}"))
    };
    let (lower, upper) = (layer()?, layer()?);
    for dir in ["upper", "work"] {
        rustix::fs::mkdirat(&upper, dir, Mode::from_raw_mode(0o755))
            .map_err(|e| format!("make the {dir} directory: {e}"))?;
    }
    for tree in [&lower, &upper] {
        mounts::set_attrs(tree.as_fd(), 0, 0, false, Some(ns.as_fd()))
            .map_err(|e| format!("id-map a tmpfs layer: {e} (Linux 6.3 or newer)"))?;
    }
    let open = |dir: &str| {
        rustix::fs::openat(
            &upper,
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open the {dir} directory: {e}"))
    };
    let (u, w) = (open("upper")?, open("work")?);
    mounts::overlay(
        &[lower.as_fd()],
        Some((u.as_fd(), w.as_fd())),
        crate::ids::BASE,
        0,
    )
    .map(drop)
    .map_err(|e| {
        format!(
            "an overlay of id-mapped layers given by descriptor failed: {e} (Linux 6.13 or newer \
             is needed)"
        )
    })
}

/// Whether a detached copy of `dir` (a directory on the file system osvm keeps its state on)
/// can be id-mapped, as `rw` binds are. Needs root; makes and drops a throw-away user namespace.
pub fn idmapped_mounts(dir: &std::path::Path) -> Result<(), String> {
    use crate::launcher::mounts;
    use std::os::fd::AsFd;
    let tree = mounts::clone_tree(rustix::fs::CWD, dir, false, true)
        .map_err(|e| format!("copy the mount of {}: {e}", dir.display()))?;
    let ns = mounts::mapping_userns(0, 0, crate::ids::BASE, 1)
        .map_err(|e| format!("make a user namespace for the mapping: {e}"))?;
    mounts::set_attrs(tree.as_fd(), 0, 0, false, Some(ns.as_fd())).map_err(|e| {
        format!(
            "id-mapping a mount of {} failed: {e} (Linux 5.12 or newer and a file system that \
             supports id-mapped mounts are needed)",
            dir.display()
        )
    })
}
