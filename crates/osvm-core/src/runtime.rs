//! The contract between the control plane and an isolation runtime: the only seam between
//! them. The engine holds one [`Runtime`] per [`RuntimeKind`] and never asks which kind it
//! has; everything that differs between a process, a microVM and a unikernel is behind these
//! two traits.
//!
//! A [`Runtime`] starts an [`Instance`] from a [`LaunchSpec`] and what the caller wires to it
//! ([`Wiring`]), and finds again the instances a previous control plane started
//! ([`Runtime::adopt`]). A start may take seconds (a VM boot, a unikernel image build): the
//! caller runs it off its own thread. An instance can be waited on, signalled, stopped with a
//! grace period, asked for its resource usage and facts, reached ([`Instance::endpoint`]) and,
//! where the runtime allows, run a command in ([`Instance::exec`]). A runtime never falls back
//! to another one: if it cannot confine a workload on this host, `start` fails with
//! [`RuntimeError::Unavailable`] naming the reason.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::launch::LaunchSpec;

/// Which isolation runtime runs a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

/// What the caller wires to a new instance besides its launch spec.
#[derive(Debug)]
pub struct Wiring {
    /// The instance id (`<name>-<suffix>`), chosen by the caller so that it can record it
    /// durably before the instance exists.
    pub id: String,
    /// What the workload reads on stdin (an MCP server's stdio channel).
    pub stdin: Option<OwnedFd>,
    /// Where the workload writes its stdout instead of its log (an MCP server's channel).
    pub stdout: Option<OwnedFd>,
    /// Listening sockets handed over as fds 3, 4, ... (socket activation, `LISTEN_FDS`).
    pub fds: Vec<OwnedFd>,
}

impl Wiring {
    /// Nothing wired but the id.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            stdin: None,
            stdout: None,
            fds: Vec::new(),
        }
    }

    /// Whether anything besides the id is wired (runtimes without stdio channels or socket
    /// activation refuse such a start rather than drop the wiring).
    pub fn has_io(&self) -> bool {
        self.stdin.is_some() || self.stdout.is_some() || !self.fds.is_empty()
    }
}

/// What became of an instance a previous control plane started.
pub enum Adoption {
    /// It still runs; here it is.
    Running(Box<dyn Instance>),
    /// It ended meanwhile, like this.
    Ended(ExitStatus),
    /// This runtime cannot take it back (it was driven through the previous control plane's
    /// connections); whatever was left of it has been stopped. The string says why.
    Stopped(String),
}

/// How a host process reaches an instance's TCP ports.
#[derive(Debug)]
pub enum Endpoint {
    /// On the loopback of this network namespace (a process: its own).
    Namespace(File),
    /// At this address, from the network the instance was attached to (a guest that took the
    /// component's hub address).
    Address(std::net::Ipv4Addr),
    /// Only through the runtime ([`Instance::connect`]: a guest agent over vsock).
    Runtime,
    /// From nowhere (a guest without a network).
    Unreachable,
}

/// A byte stream to a port of an instance.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// What a command run inside an instance did.
#[derive(Debug, Clone, Default)]
pub struct ExecResult {
    /// Its exit code (128 + N when signal N ended it); `None` when it timed out.
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

/// What slow work reports while it runs (library crates do not print; the CLI does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A step begins or ends, in words.
    Step(String),
    /// A line a tool (cargo, apt) printed.
    Tool(String),
}

/// Starts instances of one kind of isolation.
pub trait Runtime: Send + Sync {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;

    /// Checks that `spec` can start here and does the slow one-time work its starts need (a
    /// guest image built), reporting `progress`: what `osvm up` runs for every component
    /// before it starts anything, so that a host that cannot run one says so at once. Nothing
    /// to do by default.
    fn prepare(
        &self,
        spec: &LaunchSpec,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), RuntimeError> {
        let _ = (spec, progress);
        Ok(())
    }

    /// Starts one instance as `wiring.id`. Returns once the workload has been exec'd inside
    /// its confinement, or the guest is ready (or fails, naming the step that failed). Never
    /// falls back to weaker isolation. May take seconds.
    fn start(&self, spec: &LaunchSpec, wiring: Wiring) -> Result<Box<dyn Instance>, RuntimeError>;

    /// Finds instance `id`, started by a previous control plane.
    fn adopt(&self, id: &str) -> Result<Adoption, RuntimeError>;

    /// Stops whatever is left of instance `id` whose control plane is gone (it is not being
    /// adopted); nothing when nothing is left.
    fn stop_leftovers(&self, id: &str) {
        let _ = id;
    }

    /// Component `name` of `stack` has left its stack for good (removed from it, or the stack
    /// taken down): the runtime lets go of what it held for the component's later starts, and
    /// says what, if anything worth telling. Nothing by default.
    fn released(&self, stack: &str, name: &str) -> Option<String> {
        let _ = (stack, name);
        None
    }
}

/// A running (or finished) instance of a component.
pub trait Instance: Send + Sync {
    /// Unique id of this instance (one component may have several over time).
    fn id(&self) -> &str;

    /// The workload's process id as seen from the host, if it has one.
    fn pid(&self) -> Option<u32>;

    /// The host pid of the init of the sandbox the instance runs in (a guest's: its
    /// emulator's).
    fn init_pid(&self) -> i32;

    /// Where the instance's files (logs, console, records) are.
    fn instance_dir(&self) -> PathBuf;

    /// Where the instance's stdout and stderr are written.
    fn log_paths(&self) -> (PathBuf, PathBuf);

    /// Blocks until the instance ends.
    fn wait(&self) -> Result<ExitStatus, RuntimeError>;

    /// Returns the exit status if the instance has ended, without blocking.
    fn try_wait(&self) -> Result<Option<ExitStatus>, RuntimeError>;

    /// Sends a signal to the workload.
    fn signal(&self, signal: i32) -> Result<(), RuntimeError>;

    /// Ends it at once, everything it started with it.
    fn kill(&self) -> Result<(), RuntimeError>;

    /// Asks the workload to stop (SIGTERM), waits up to `grace`, then kills everything the
    /// instance started. Returns how it ended.
    fn stop(&self, grace: Duration) -> Result<ExitStatus, RuntimeError>;

    /// Current resource usage.
    fn stats(&self) -> Result<InstanceStats, RuntimeError>;

    /// Sets the instance's share of CPU time when CPUs are contended: `Some(w)` a weight on
    /// cgroup v2's scale (1-10000; 100 is everyone's default), `None` back to the default. A
    /// hot-swap starts the new instance low, so that the instance serving meanwhile keeps the
    /// CPUs. Runtimes without such a weight do nothing.
    fn set_cpu_weight(&self, weight: Option<u32>) -> Result<(), RuntimeError> {
        let _ = weight;
        Ok(())
    }

    /// The memory limit `stats().memory_bytes` is measured against: the limit of the cgroup
    /// the instance runs in (for a guest, its emulator's: guest memory plus the emulator's
    /// own), `None` when there is none.
    fn memory_limit(&self) -> Option<u64>;

    /// The confinement actually applied.
    fn confinement(&self) -> crate::Confinement;

    /// How a host process reaches the instance's ports.
    fn endpoint(&self) -> Result<Endpoint, RuntimeError>;

    /// A connection to TCP `port` made by the runtime itself ([`Endpoint::Runtime`]).
    fn connect(&self, port: u16, timeout: Duration) -> Result<Box<dyn Conn>, RuntimeError> {
        let _ = timeout;
        Err(RuntimeError::InvalidSpec(format!(
            "port {port}: this runtime connects to nothing itself; see the instance's endpoint"
        )))
    }

    /// How a person reaches `port` of the instance, in words (for the `reach` event).
    fn reach(&self, port: u16) -> String;

    /// Runs `command` inside the instance, as confined as the workload, for at most `timeout`.
    fn exec(&self, command: &[String], timeout: Duration) -> Result<ExecResult, RuntimeError> {
        let _ = (command, timeout);
        Err(RuntimeError::InvalidSpec(
            "this runtime cannot run a command inside its instances".into(),
        ))
    }

    /// Replaces the identity files the instance sees with those of the host directory `dir`.
    /// A runtime that gives its instances no identity files has nothing to replace.
    fn refresh_identity(&self, dir: &Path) -> Result<(), RuntimeError> {
        let _ = dir;
        Ok(())
    }

    /// Copies of the `count` listening sockets the instance was handed (socket activation),
    /// for its next instance after the control plane restarted.
    fn listening_sockets(&self, count: usize) -> Result<Vec<OwnedFd>, RuntimeError> {
        let _ = count;
        Err(RuntimeError::InvalidSpec(
            "this runtime hands its instances no listening sockets".into(),
        ))
    }

    /// What only the runtime can say about how the instance ended (a deadline, a panic).
    fn ended_how(&self) -> Option<String> {
        None
    }

    /// The instance as `Any`, for a view that shows a runtime's own facts.
    fn as_any(&self) -> &dyn std::any::Any;
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
