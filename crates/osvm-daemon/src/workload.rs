//! One running instance, whichever runtime started it: a sandboxed process, a microVM or a
//! unikernel.
//!
//! The engine, health probes and hot-swap treat both alike through [`Workload`]; the few
//! things only one kind can do (re-adoption, handed-over sockets, entering the namespace of a
//! process) are asked for through [`Workload::sandbox`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use osvm_core::{ExitStatus, Instance, InstanceStats, RuntimeError};
use osvm_microvm::MicroVmInstance;
use osvm_sandbox::SandboxInstance;
use osvm_unikernel::UnikernelInstance;

/// A byte stream to a port of the workload.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A running instance.
// Made once per start and kept behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Workload {
    /// A confined process.
    Sandbox(SandboxInstance),
    /// A virtual machine.
    Vm(MicroVmInstance),
    /// A Hermit unikernel.
    Unikernel {
        /// The guest.
        inst: UnikernelInstance,
        /// The hub's network namespace, from which its address is probed (hub stacks).
        probe_from: Option<PathBuf>,
    },
}

/// What an exec inside the instance did.
#[derive(Debug, Clone)]
pub struct Exec {
    /// Exit code; `None` when it timed out.
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
}

impl Workload {
    /// A unikernel probed from `probe_from` (the hub's namespace) if it has a network.
    pub fn from_unikernel(inst: UnikernelInstance, probe_from: Option<PathBuf>) -> Self {
        Workload::Unikernel { inst, probe_from }
    }

    fn inner(&self) -> &dyn Instance {
        match self {
            Workload::Sandbox(s) => s,
            Workload::Vm(v) => v,
            Workload::Unikernel { inst, .. } => inst,
        }
    }

    /// Replaces the identity files the instance sees with those of the host directory `dir`.
    /// Guests get no identity files yet, so for them there is nothing to replace.
    pub fn refresh_identity(&self, dir: &std::path::Path) -> Result<(), RuntimeError> {
        match self {
            Workload::Sandbox(s) => s.refresh_identity(dir),
            Workload::Vm(_) | Workload::Unikernel { .. } => Ok(()),
        }
    }

    /// The sandboxed process, if this is one.
    pub fn sandbox(&self) -> Option<&SandboxInstance> {
        match self {
            Workload::Sandbox(s) => Some(s),
            _ => None,
        }
    }

    /// The microVM, if this is one.
    pub fn vm(&self) -> Option<&MicroVmInstance> {
        match self {
            Workload::Vm(v) => Some(v),
            _ => None,
        }
    }

    /// The unikernel, if this is one.
    pub fn unikernel(&self) -> Option<&UnikernelInstance> {
        match self {
            Workload::Unikernel { inst, .. } => Some(inst),
            _ => None,
        }
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        self.inner().id()
    }

    /// The host pid of the sandbox's init (for a VM: QEMU's sandbox).
    pub fn init_pid(&self) -> i32 {
        match self {
            Workload::Sandbox(s) => s.init_pid(),
            Workload::Vm(v) => v.qemu().init_pid(),
            Workload::Unikernel { inst, .. } => inst.launcher().init_pid(),
        }
    }

    /// Where its files (logs, console) are.
    pub fn instance_dir(&self) -> PathBuf {
        match self {
            Workload::Sandbox(s) => s.instance_dir().to_path_buf(),
            Workload::Vm(v) => v.dir().to_path_buf(),
            Workload::Unikernel { inst, .. } => inst.dir().to_path_buf(),
        }
    }

    /// The workload's stdout and stderr logs.
    pub fn log_paths(&self) -> (PathBuf, PathBuf) {
        self.inner().log_paths()
    }

    /// The exit status, if it has ended.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, RuntimeError> {
        self.inner().try_wait()
    }

    /// Sends a signal to the workload.
    pub fn signal(&self, signal: i32) -> Result<(), RuntimeError> {
        self.inner().signal(signal)
    }

    /// Kills it outright: the process's sandbox with SIGKILL, a VM's QEMU.
    pub fn kill(&self) -> Result<(), RuntimeError> {
        match self {
            Workload::Sandbox(s) => s.signal(libc::SIGKILL),
            Workload::Vm(v) => v.qemu().stop(Duration::ZERO).map(|_| ()),
            Workload::Unikernel { inst, .. } => inst.signal(libc::SIGKILL),
        }
    }

    /// Stops it: SIGTERM (for a VM through its agent), `grace`, then kill.
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus, RuntimeError> {
        self.inner().stop(grace)
    }

    /// Resource usage.
    pub fn stats(&self) -> Result<InstanceStats, RuntimeError> {
        self.inner().stats()
    }

    /// The memory limit its usage is measured against (see [`Instance::memory_limit`]).
    pub fn memory_limit(&self) -> Option<u64> {
        self.inner().memory_limit()
    }

    /// The confinement actually applied.
    pub fn confinement(&self) -> osvm_core::Confinement {
        self.inner().confinement()
    }

    /// Runs a command inside it, as confined as the workload.
    pub fn exec(&self, command: &[String], timeout: Duration) -> Result<Exec, RuntimeError> {
        match self {
            Workload::Sandbox(s) => s.exec(command, timeout).map(|o| Exec {
                code: o.code,
                stdout: o.stdout,
                stderr: o.stderr,
            }),
            // The sandbox's convention: 128 + N when signal N killed it, `None` on timeout.
            Workload::Vm(v) => v.exec(command, timeout).map(|o| Exec {
                code: match (o.timed_out, o.code, o.signal) {
                    (true, _, _) => None,
                    (false, Some(c), _) => Some(c),
                    (false, None, Some(s)) => Some(128 + s),
                    (false, None, None) => None,
                },
                stdout: o.stdout.into_bytes(),
                stderr: o.stderr.into_bytes(),
            }),
            Workload::Unikernel { .. } => Err(RuntimeError::InvalidSpec(
                "a unikernel runs one program and nothing else: nothing can be executed in it"
                    .into(),
            )),
        }
    }

    /// A connection to TCP `port` on the instance's own loopback: for a process from inside
    /// its network namespace, for a VM over vsock through its agent.
    pub fn connect(&self, port: u16, timeout: Duration) -> Result<Box<dyn Conn>, String> {
        match self {
            Workload::Sandbox(s) => {
                let netns = s.open_namespace("net").map_err(|e| e.to_string())?;
                crate::health::connect_in(&netns, port, timeout).map(|c| Box::new(c) as _)
            }
            Workload::Vm(v) => {
                let s = v
                    .connect_tcp(port, timeout)
                    .map_err(|e| format!("connect to port {port} over vsock: {e}"))?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                Ok(Box::new(s))
            }
            Workload::Unikernel { inst, probe_from } => {
                let addr = inst
                    .facts()
                    .address
                    .as_deref()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse().ok())
                    .ok_or("the unikernel has no network (only hub stacks give it one)")?;
                let hub = probe_from
                    .as_ref()
                    .ok_or("the hub network is not up")
                    .and_then(|p| {
                        std::fs::File::open(p).map_err(|_| "the hub namespace is gone")
                    })?;
                crate::health::connect_to_in(&hub, std::net::SocketAddrV4::new(addr, port), timeout)
                    .map(|c| Box::new(c) as _)
            }
        }
    }
}
