//! The launcher: code that runs in the re-exec'd, single-threaded `osvm __sandbox-monitor`
//! process and in the sandbox it creates. Nothing here runs in the (multi-threaded) caller.

pub mod caps;
pub mod confine;
pub mod exec;
pub mod init;
pub mod landlock;
pub mod monitor;
pub mod mounts;
pub mod protocol;
pub mod resolve;
pub mod rootfs;
pub mod seccomp;

use std::os::fd::{FromRawFd, OwnedFd};

/// The argument that makes a binary act as the sandbox monitor.
pub const MONITOR_ARG: &str = "__sandbox-monitor";

/// What the launcher's processes are called (their `argv[0]`): their command lines, which
/// anyone on the host and the workload (through `/proc/1/cmdline`) can read, name no host path.
pub const PROCESS_NAME: &str = "osvm";

/// If this process was started as a sandbox monitor (`__sandbox-monitor <instance id>`) or exec
/// helper (`__sandbox-exec <instance id> -- COMMAND...`), runs it and never returns. Both find
/// their plan on an inherited descriptor; the instance id on the command line only names them.
/// Call it first thing in `main`, before any thread exists.
pub fn run_if_requested() {
    let mut args = std::env::args_os();
    let _ = args.next();
    match args.next() {
        Some(a) if a == MONITOR_ARG => monitor::main(),
        Some(a) if a == exec::EXEC_ARG => {
            let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
            let dashes = args.iter().position(|a| a == "--").unwrap_or(args.len());
            let process = args[..dashes]
                .iter()
                .position(|a| a == exec::PROCESS_ARG)
                .and_then(|i| args.get(i + 1))
                .cloned();
            let command = args.get(dashes + 1..).unwrap_or_default();
            exec::main(command, process.as_deref());
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
