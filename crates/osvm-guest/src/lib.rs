//! What osvm's guest runtimes share: a guest kernel run by an emulator (QEMU, uhyve) that is
//! itself confined by the process sandbox. The `microvm` and `unikernel` runtimes supply only
//! their drivers (the guest agent's protocol, the Hermit serial console); the rest is here.
//!
//! - [`host`]: which accelerator the host allows (KVM only with VMX/SVM; TCG, loudly,
//!   elsewhere) and the TSC frequency a guest must be told;
//! - [`net`]: a TAP in the component's network namespace, bridged to its `eth0`, so the guest
//!   takes the component's hub address;
//! - [`digest`]: content digests of images and their inputs (the image caches' keys);
//! - [`emulator`]: the launch spec of an emulator in its sandbox (read-only root, cgroup sized
//!   for guest memory plus the emulator's own, `/dev/kvm` only under KVM);
//! - [`instance`]: what every guest instance holds (its files, its emulator's sandbox, the
//!   network it borrowed, how it ended) and the [`guest_instance_basics`] of its `Instance`;
//! - [`share`]: virtiofsd for host directories shared into a guest, and the identity files
//!   as a guest gets them;
//! - small helpers: [`find_program`], [`tail`], [`real_path`], [`until_ready`], the runtimes'
//!   errors.

pub mod digest;
pub mod emulator;
pub mod host;
pub mod instance;
pub mod net;
pub mod share;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use osvm_core::{RuntimeError, RuntimeKind};

pub use instance::GuestBase;

/// Looks for a program in `PATH` and in cargo's install directory.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"] {
        dirs.push(PathBuf::from(d));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        p.is_file()
            && p.metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
    })
}

/// The last lines of a log, on one line, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// `path` with every symbolic link resolved: the sandbox refuses links in mount sources, and
/// these paths (osvm's own state, installed programs) are osvm's to trust.
pub fn real_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Runtime `kind` cannot work here, because of `reason`.
pub fn unavailable(kind: RuntimeKind, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Unavailable {
        kind,
        reason: reason.into(),
    }
}

/// A step of a start failed.
pub fn setup(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Setup(what.to_string())
}

/// Why [`until_ready`] gave up.
pub enum Gave<E> {
    /// What should answer has ended (what the `failed` check said).
    Failed(String),
    /// The deadline passed; the last attempt's error.
    Late(E),
}

/// Tries `attempt` until it succeeds (a socket QEMU makes once it runs), pausing `pause` between
/// tries; gives up when `failed` says why (QEMU ended) or at `deadline`.
pub fn until_ready<T, E>(
    deadline: Instant,
    pause: Duration,
    failed: impl Fn() -> Option<String>,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, Gave<E>> {
    loop {
        match attempt() {
            Ok(done) => return Ok(done),
            Err(e) => {
                if let Some(why) = failed() {
                    return Err(Gave::Failed(why));
                }
                if Instant::now() > deadline {
                    return Err(Gave::Late(e));
                }
                std::thread::sleep(pause);
            }
        }
    }
}
