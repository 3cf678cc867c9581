//! Messages between the launcher's processes and the runtime.
//!
//! - init -> monitor: one JSON object per line on a pipe ([`InitMsg`]).
//! - monitor -> runtime: one JSON object per datagram on a `SOCK_SEQPACKET` socket
//!   ([`MonitorMsg`]); `Started` carries a pidfd of the sandbox's init as `SCM_RIGHTS`, so the
//!   runtime can signal it without any pid-reuse race.

use osvm_core::{ExitStatus, InstanceStats};
use serde::{Deserialize, Serialize};

use super::landlock::LandlockReport;

/// The fd number the monitor finds its runtime socket on.
pub const MONITOR_FD: i32 = 3;
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
