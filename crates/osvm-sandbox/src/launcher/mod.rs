//! The launcher: code that runs in the re-exec'd, single-threaded `osvm __sandbox-monitor`
//! process and in the sandbox it creates. Nothing here runs in the (multi-threaded) caller.

pub mod caps;
pub mod confine;
pub mod exec;
pub mod init;
pub mod landlock;
pub mod monitor;
pub mod protocol;
pub mod rootfs;
pub mod seccomp;

use std::os::fd::{FromRawFd, OwnedFd};

/// The argument that makes a binary act as the sandbox monitor.
pub const MONITOR_ARG: &str = "__sandbox-monitor";

/// If this process was started as a sandbox monitor or exec helper, runs it and never returns.
/// Call it first thing in `main`, before any thread exists.
pub fn run_if_requested() {
    let mut args = std::env::args_os();
    let _ = args.next();
    match args.next() {
        Some(a) if a == MONITOR_ARG => {
            let plan = args.next().unwrap_or_default();
            monitor::main(std::path::Path::new(&plan));
        }
        Some(a) if a == exec::EXEC_ARG => {
            let dir = args.next().unwrap_or_default();
            let command: Vec<String> = args
                .skip_while(|a| a != "--")
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            exec::main(std::path::Path::new(&dir), &command);
        }
        _ => {}
    }
}

/// `pidfd_open(2)`.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        // SAFETY: the kernel just gave us this fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}
