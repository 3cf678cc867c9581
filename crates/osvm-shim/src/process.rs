//! The life of a process containerd knows by id: a container's init or one of its execs.
//! Created, then running with a handle to signal or read it by, then stopped with an exit code
//! in the shell's convention and a time; `wait` callers sleep until it stops.

use std::sync::{Condvar, Mutex, MutexGuard};

use containerd_shim::Error;
use containerd_shim::api::{self, Status};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

/// Where a process is.
pub enum Life<H> {
    Created,
    Running { handle: H, pid: u32 },
    Stopped { pid: u32, code: u32, at: Timestamp },
}

/// A process, its stdio as containerd gave it, and its life.
pub struct Proc<H> {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    life: Mutex<Life<H>>,
    changed: Condvar,
}

/// The time now, as containerd takes it.
pub fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

impl<H: Clone> Proc<H> {
    /// A created process with these stdio paths.
    pub fn new(stdin: &str, stdout: &str, stderr: &str) -> Self {
        Self {
            stdin: stdin.to_owned(),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            life: Mutex::new(Life::Created),
            changed: Condvar::new(),
        }
    }

    /// Its life, locked.
    pub fn life(&self) -> MutexGuard<'_, Life<H>> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle of a running process.
    pub fn running(&self) -> Option<H> {
        match &*self.life() {
            Life::Running { handle, .. } => Some(handle.clone()),
            _ => None,
        }
    }

    /// Runs `f` on the handle of a running process, its life locked meanwhile (so it cannot be
    /// recorded stopped, nor, where its waiter reaps only after recording, reaped, while `f`
    /// uses the handle).
    pub fn with_running<R>(&self, f: impl FnOnce(&H) -> R) -> Option<R> {
        match &*self.life() {
            Life::Running { handle, .. } => Some(f(handle)),
            _ => None,
        }
    }

    /// Its pid once started.
    pub fn pid(&self) -> Option<u32> {
        match &*self.life() {
            Life::Running { pid, .. } | Life::Stopped { pid, .. } => Some(*pid),
            Life::Created => None,
        }
    }

    /// Records that it ended with `code`; wakes every `wait`. Returns when.
    pub fn stopped(&self, pid: u32, code: u32) -> Timestamp {
        let at = now();
        *self.life() = Life::Stopped {
            pid,
            code,
            at: at.clone(),
        };
        self.changed.notify_all();
        at
    }

    /// Fills `r` (status, pid, exit code and time, stdio) for `state`.
    pub fn report(&self, r: &mut api::StateResponse) {
        r.stdin = self.stdin.clone();
        r.stdout = self.stdout.clone();
        r.stderr = self.stderr.clone();
        match &*self.life() {
            Life::Created => r.set_status(Status::CREATED),
            Life::Running { pid, .. } => {
                r.pid = *pid;
                r.set_status(Status::RUNNING);
            }
            Life::Stopped { pid, code, at } => {
                r.pid = *pid;
                r.exit_status = *code;
                r.exited_at = MessageField::some(at.clone());
                r.set_status(Status::STOPPED);
            }
        }
    }

    /// Blocks until it stops; its exit code and time.
    pub fn wait(&self) -> api::WaitResponse {
        let life = self
            .changed
            .wait_while(self.life(), |l| !matches!(l, Life::Stopped { .. }))
            .unwrap_or_else(|e| e.into_inner());
        let mut r = api::WaitResponse::new();
        if let Life::Stopped { code, at, .. } = &*life {
            r.exit_status = *code;
            r.exited_at = MessageField::some(at.clone());
        }
        r
    }

    /// Ends its record for `delete` (`what` names it): refused while it runs; one that never
    /// ran counts as stopped with 255 now, and a `wait` for it returns.
    pub fn end(&self, what: &str) -> Result<(u32, u32, Timestamp), Error> {
        let mut life = self.life();
        let ended = match &*life {
            Life::Running { .. } => {
                return Err(Error::FailedPreconditionError(format!(
                    "{what} is running; kill it first"
                )));
            }
            Life::Created => (0, 255, now()),
            Life::Stopped { pid, code, at } => (*pid, *code, at.clone()),
        };
        *life = Life::Stopped {
            pid: ended.0,
            code: ended.1,
            at: ended.2.clone(),
        };
        self.changed.notify_all();
        Ok(ended)
    }

    /// The delete response for what [`end`](Self::end) returned.
    pub fn deleted((pid, code, at): (u32, u32, Timestamp)) -> api::DeleteResponse {
        let mut r = api::DeleteResponse::new();
        r.pid = pid;
        r.exit_status = code;
        r.exited_at = MessageField::some(at);
        r
    }
}
