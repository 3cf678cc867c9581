//! What every guest instance holds, whichever driver runs it: its id and files, its emulator's
//! sandbox, the hub address it borrowed from the component's namespace (given back once, when
//! the guest ends), and how it ended (worked out once, by the driver).
//!
//! The parts of [`osvm_core::Instance`] that only ask the emulator's sandbox are written once,
//! in [`guest_instance_basics`]; a driver writes the rest (signals, stop, exit status, facts).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use osvm_agent::proto::GuestNetwork;
use osvm_core::ExitStatus;
use osvm_sandbox::SandboxInstance;

/// The driver-independent part of a guest instance.
pub struct GuestBase {
    /// The instance id.
    pub id: String,
    /// The instance directory (logs, console, facts).
    pub dir: PathBuf,
    /// The workload's stdout log.
    pub stdout: PathBuf,
    /// The workload's stderr log.
    pub stderr: PathBuf,
    /// The emulator in its sandbox.
    pub emulator: Arc<SandboxInstance>,
    /// The namespace and address to give back when the guest ends.
    net: Mutex<Option<(String, GuestNetwork)>>,
    /// How it ended, once the driver worked it out.
    ended: Mutex<Option<ExitStatus>>,
}

impl GuestBase {
    /// Instance `id` in `dir` (logs `stdout.log` and `stderr.log` there), run by `emulator`,
    /// holding `net` until it ends.
    pub fn new(
        id: &str,
        dir: PathBuf,
        emulator: Arc<SandboxInstance>,
        net: Option<(String, GuestNetwork)>,
    ) -> Self {
        Self {
            id: id.to_owned(),
            stdout: dir.join("stdout.log"),
            stderr: dir.join("stderr.log"),
            dir,
            emulator,
            net: Mutex::new(net),
            ended: Mutex::new(None),
        }
    }

    /// Holds `net` (the component's namespace and the address the guest took) until the guest
    /// ends, when it is given back.
    pub fn hold_network(&self, net: Option<(String, GuestNetwork)>) {
        *self.net.lock().expect("net") = net;
    }

    /// How it ended, if the driver recorded it.
    pub fn ended(&self) -> Option<ExitStatus> {
        *self.ended.lock().expect("ended")
    }

    /// Records the end once: the network goes back to the component's namespace, then
    /// `status` (worked out by the driver, called only the first time) is kept. Returns the
    /// status kept.
    pub fn finish(&self, status: impl FnOnce() -> ExitStatus) -> ExitStatus {
        let mut ended = self.ended.lock().expect("ended");
        if let Some(s) = *ended {
            return s;
        }
        if let Some((netns, guest)) = self.net.lock().expect("net").take()
            && let Err(e) = crate::net::detach(&netns, &guest)
        {
            tracing::warn!(instance = %self.id, "give the network namespace back: {e}");
        }
        let s = status();
        *ended = Some(s);
        s
    }
}

/// The methods of [`osvm_core::Instance`] that a guest answers from its [`GuestBase`] (the
/// field named `$base`): id, pids, directory, logs, usage and memory limit (the emulator's
/// cgroup: guest memory plus the emulator's own), and `as_any`.
#[macro_export]
macro_rules! guest_instance_basics {
    ($base:ident) => {
        fn id(&self) -> &str {
            &self.$base.id
        }

        fn pid(&self) -> Option<u32> {
            Some(self.$base.emulator.init_pid() as u32)
        }

        fn init_pid(&self) -> i32 {
            self.$base.emulator.init_pid()
        }

        fn instance_dir(&self) -> std::path::PathBuf {
            self.$base.dir.clone()
        }

        fn log_paths(&self) -> (std::path::PathBuf, std::path::PathBuf) {
            (self.$base.stdout.clone(), self.$base.stderr.clone())
        }

        fn stats(&self) -> Result<osvm_core::InstanceStats, osvm_core::RuntimeError> {
            osvm_core::Instance::stats(&*self.$base.emulator)
        }

        fn memory_limit(&self) -> Option<u64> {
            osvm_core::Instance::memory_limit(&*self.$base.emulator)
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}
