//! Messages between the launcher's processes and the runtime.
//!
//! - runtime -> monitor: the plan on descriptor [`PLAN_FD`] (an open `plan.json`), nothing on
//!   the command line but the instance id.
//! - monitor -> init: one JSON object per datagram on a `SOCK_SEQPACKET` pair ([`ToInit`]):
//!   the detached mounts the monitor prepared on the host, each with its descriptor as
//!   `SCM_RIGHTS`, then "maps written", later "cgroup joined".
//! - init -> monitor: one JSON object per line on a pipe ([`InitMsg`]).
//! - monitor -> runtime: one JSON object per datagram on a `SOCK_SEQPACKET` socket
//!   ([`MonitorMsg`]); `Started` carries a pidfd of the sandbox's init as `SCM_RIGHTS`, so the
//!   runtime can signal it without any pid-reuse race.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use osvm_core::{ExitStatus, InstanceStats};
use serde::{Deserialize, Serialize};

use super::landlock::LandlockReport;

/// The fd number the monitor finds its runtime socket on.
pub const MONITOR_FD: i32 = 3;
/// The fd number the monitor (and the exec helper) find the open `plan.json` on.
pub const PLAN_FD: i32 = 4;
/// The fd number at which the monitor keeps the sandbox's identity file system (a directory
/// descriptor of its writable root) for as long as the sandbox lives; the runtime takes a copy
/// with `pidfd_getfd` to replace the files.
pub const IDENTITY_FD: i32 = 5;

/// From the monitor to the sandbox's init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToInit {
    /// The detached mount of the component's data volume (descriptor attached).
    Data,
    /// The detached, id-mapped copy of the component's own root directory.
    Rootfs,
    /// The detached copy of bind `n` of the launch spec.
    Bind(usize),
    /// The identity file system (writable; init covers it with a read-only view).
    Identity,
    /// The uid and gid maps are written: init may become root of its namespace.
    MapsWritten,
    /// Init is in the sandbox's cgroups: it may enter its cgroup namespace and go on.
    CgroupJoined,
}

/// Sends `msg` as one datagram on `sock`, with `fd` attached.
pub fn send_msg<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let iov = [IoSlice::new(&bytes)];
    let fds;
    let cmsgs: &[ControlMessage] = match fd {
        Some(f) => {
            fds = [f.as_raw_fd()];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one datagram from `sock` and the descriptor attached to it, if any; `None` when the
/// other end is gone.
pub fn recv_msg<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> std::io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel installed this descriptor in our table for us.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                fd.get_or_insert(owned);
            }
        }
    }
    let len = msg.bytes;
    if len == 0 {
        return Ok(None);
    }
    let parsed = serde_json::from_slice(&buf[..len]).map_err(std::io::Error::other)?;
    Ok(Some((parsed, fd)))
}
/// The largest message either side sends.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// From the sandbox's init to the monitor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitMsg {
    /// The workload was exec'd; this is what confines it.
    Ready {
        /// The workload's pid inside the sandbox.
        workload_pid: i32,
        /// What Landlock enforced.
        landlock: LandlockReport,
        /// Number of syscalls the seccomp allowlist admits.
        seccomp_allowed: usize,
    },
    /// Setup failed before the workload ran.
    Failed {
        /// What went wrong, naming the step.
        message: String,
    },
    /// The workload ended.
    Exited {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if it was killed.
        signal: Option<i32>,
    },
}

/// What the sandbox runs under, as reported to the runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confinement {
    /// Host pid of the sandbox's init (pid 1 inside).
    pub init_pid: i32,
    /// Host pid of the workload, when the kernel lists it.
    pub workload_pid: Option<i32>,
    /// `uid_map` line.
    pub id_map: String,
    /// The cgroup layout and directories.
    pub cgroup: String,
    /// What Landlock enforced.
    pub landlock: LandlockReport,
    /// Number of syscalls the allowlist admits.
    pub seccomp_allowed: usize,
}

/// From the monitor to the runtime.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMsg {
    /// The workload runs; a pidfd of init is attached.
    Started(Confinement),
    /// Setup failed; nothing runs any more.
    Failed {
        /// What went wrong, naming the step.
        message: String,
    },
}

/// Written to `running.json` by the monitor once the workload runs: what a restarted daemon
/// needs to find the sandbox again. Each pid comes with its start time (clock ticks after boot,
/// `/proc/<pid>/stat` field 22) so a recycled pid is never mistaken for the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunningRecord {
    /// The monitor's host pid.
    pub monitor_pid: i32,
    /// The monitor's start time.
    pub monitor_start: u64,
    /// The sandbox's init's start time (its pid is in `confinement`).
    pub init_start: u64,
    /// What confines the sandbox.
    pub confinement: Confinement,
}

/// A process's start time in clock ticks after boot (`/proc/<pid>/stat` field 22), which
/// together with the pid identifies one process across pid reuse.
pub fn process_start_time(pid: i32) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: count from its end.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat = "4711 (my (odd) cmd) S 1 4711 4711 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
        let own = process_start_time(std::process::id() as i32);
        assert!(own.is_some_and(|t| t > 0));
    }
}

/// Written to `exit.json` by the monitor when the sandbox has ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitRecord {
    /// How the workload ended.
    pub status: ExitStatus,
    /// Usage at the end (peak memory, CPU time, throttling, OOM kills).
    pub stats: Option<InstanceStats>,
    /// Unix time in milliseconds when the monitor saw the end.
    pub finished_at_ms: u64,
}
