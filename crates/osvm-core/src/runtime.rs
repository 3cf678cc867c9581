//! The contract between the control plane and an isolation runtime.
//!
//! A [`Runtime`] starts an [`Instance`] from a [`LaunchSpec`]. An instance can be waited on,
//! signalled, stopped with a grace period, and asked for its resource usage. A runtime never
//! falls back to another one: if it cannot confine a workload on this host, `start` fails
//! with [`RuntimeError::Unavailable`] naming the reason.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::launch::LaunchSpec;

/// Which isolation runtime runs a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// A confined Linux process (namespaces, cgroups, seccomp, Landlock).
    Process,
    /// A QEMU `microvm` virtual machine.
    #[serde(rename = "microvm")]
    MicroVm,
    /// A Hermit unikernel.
    Unikernel,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Process => "process",
            RuntimeKind::MicroVm => "microvm",
            RuntimeKind::Unikernel => "unikernel",
        })
    }
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct ExitStatus {
    /// Exit code when the workload exited by itself.
    pub code: Option<i32>,
    /// Signal number when the workload was killed by a signal.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it because of the instance's memory limit.
    pub oom_killed: bool,
}

impl ExitStatus {
    /// True when the workload exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exited with code {c}")?,
            (None, Some(s)) => write!(f, "killed by signal {s}")?,
            (None, None) => write!(f, "ended (status unknown)")?,
        }
        if self.oom_killed {
            write!(f, " (out of memory: the memory limit was reached)")?;
        }
        Ok(())
    }
}

/// Resource usage of a running instance, read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// Current memory use in bytes.
    pub memory_bytes: u64,
    /// Peak memory use in bytes, where the host reports it.
    pub memory_peak_bytes: Option<u64>,
    /// Total CPU time consumed, in microseconds.
    pub cpu_usage_usec: u64,
    /// Number of periods in which the CPU quota throttled the instance.
    pub cpu_throttled_periods: u64,
    /// Total time throttled, in microseconds.
    pub cpu_throttled_usec: u64,
    /// Number of processes and threads.
    pub pids: u64,
    /// Times the OOM killer fired inside the instance.
    pub oom_kills: u64,
}

/// Errors a runtime reports.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime cannot work on this host; the string says why.
    #[error("runtime {kind} unavailable: {reason}")]
    Unavailable {
        /// The runtime that was asked for.
        kind: RuntimeKind,
        /// Why it cannot run here.
        reason: String,
    },
    /// The launch spec cannot be honoured (bad path, unknown program, ...).
    #[error("invalid launch spec: {0}")]
    InvalidSpec(String),
    /// Setting up the confinement failed; the message names the step.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// A host operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Starts instances of one kind of isolation.
pub trait Runtime: Send + Sync {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;

    /// Starts one instance. Returns once the workload has been exec'd inside its confinement
    /// (or fails, naming the step that failed). Never falls back to weaker isolation.
    fn start(&self, spec: &LaunchSpec) -> Result<Box<dyn Instance>, RuntimeError>;
}

/// A running (or finished) instance of a component.
pub trait Instance: Send + Sync {
    /// Unique id of this instance (one component may have several over time).
    fn id(&self) -> &str;

    /// The workload's process id as seen from the host, if it has one.
    fn pid(&self) -> Option<u32>;

    /// Where the instance's stdout and stderr are written.
    fn log_paths(&self) -> (PathBuf, PathBuf);

    /// Blocks until the instance ends.
    fn wait(&self) -> Result<ExitStatus, RuntimeError>;

    /// Returns the exit status if the instance has ended, without blocking.
    fn try_wait(&self) -> Result<Option<ExitStatus>, RuntimeError>;

    /// Sends a signal to the workload.
    fn signal(&self, signal: i32) -> Result<(), RuntimeError>;

    /// Asks the workload to stop (SIGTERM), waits up to `grace`, then kills everything the
    /// instance started. Returns how it ended.
    fn stop(&self, grace: Duration) -> Result<ExitStatus, RuntimeError>;

    /// Current resource usage.
    fn stats(&self) -> Result<InstanceStats, RuntimeError>;

    /// The memory limit `stats().memory_bytes` is measured against: the limit of the cgroup
    /// the instance runs in (for a guest, its emulator's: guest memory plus the emulator's
    /// own), `None` when there is none.
    fn memory_limit(&self) -> Option<u64>;

    /// The confinement actually applied.
    fn confinement(&self) -> crate::Confinement;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_kinds_round_trip_with_the_stack_file_names() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Wrapper {
            runtime: RuntimeKind,
        }
        for (kind, name) in [
            (RuntimeKind::Process, "process"),
            (RuntimeKind::MicroVm, "microvm"),
            (RuntimeKind::Unikernel, "unikernel"),
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            assert_eq!(kind.to_string(), name);
            let w = Wrapper { runtime: kind };
            let text = toml::to_string(&w).unwrap();
            assert_eq!(text.trim(), format!("runtime = \"{name}\""));
            assert_eq!(toml::from_str::<Wrapper>(&text).unwrap(), w);
        }
    }

    #[test]
    fn exit_status_follows_the_shell_convention() {
        let exited = ExitStatus {
            code: Some(3),
            signal: None,
            oom_killed: false,
        };
        assert_eq!(exited.shell_code(), 3);
        assert_eq!(exited.to_string(), "exited with code 3");
        let oom = ExitStatus {
            code: None,
            signal: Some(9),
            oom_killed: true,
        };
        assert_eq!(oom.shell_code(), 137);
        assert!(!oom.success());
        assert_eq!(
            oom.to_string(),
            "killed by signal 9 (out of memory: the memory limit was reached)"
        );
    }
}
