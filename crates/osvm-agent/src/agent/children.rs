//! The children of PID 1: spawning them, and reaping every process that ends.
//!
//! PID 1 inherits every orphan in the VM and must reap them all, so the main thread waits for
//! *any* child in a loop. That rules out `std::process::Child::wait` anywhere else: whichever
//! of the two waits first would steal the other's status. Instead, whoever spawns a child
//! registers it here and gets a channel on which the reaper delivers its exit status.
//!
//! Two races are closed by one lock:
//!
//! - A child can end before its spawner registered it. Spawning happens while holding the lock,
//!   and the reaper takes the lock before reaping, so a child is always registered first.
//! - std's `Command::spawn` itself waits for a child whose `exec` failed, on its fork/exec
//!   path (taken whenever it cannot use `posix_spawn`; in a static binary its `dlsym` probes of
//!   glibc fail, so possibly always). If the reaper took that status first, std's wait would
//!   fail and std would panic. So the reaper
//!   only *peeks* at a finished child (`waitid` with `WNOWAIT`), then reaps it under the lock:
//!   a spawn in progress finishes its own wait before that.
//!
//! Reaping under the lock has a third use: the workload's pid cannot be reused while the lock
//! is held, so signalling it under the lock never hits a stranger.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use super::lock;

/// Every child of PID 1 that someone waits for, and which one is the workload.
pub struct Children {
    state: Mutex<State>,
    /// Signalled on every spawn, for a reaper that found no children to wait for.
    spawned: Condvar,
}

/// What [`Children`] guards.
#[derive(Default)]
struct State {
    /// Registered children, with where their exit status goes.
    waiting: HashMap<Pid, Sender<WaitStatus>>,
    /// The workload's pid while it has not been reaped.
    workload: Option<Pid>,
    /// Counts spawns, so the reaper can tell whether one happened while it looked away.
    generation: u64,
}

/// A child just spawned, and where its exit status will arrive.
pub struct Spawned {
    /// std's handle, for its pipes; never waited on (see the module docs).
    pub child: Child,
    /// Its pid.
    pub pid: Pid,
    /// Receives its exit status once it was reaped.
    pub exit: Receiver<WaitStatus>,
}

/// Why the workload could not be signalled.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// There is no workload (not started yet, or already ended).
    #[error("no workload is running")]
    NoWorkload,
    /// `kill` failed.
    #[error("cannot signal the workload: {0}")]
    Kill(#[from] Errno),
}

impl Children {
    /// No children yet.
    pub fn new() -> Self {
        Children {
            state: Mutex::new(State::default()),
            spawned: Condvar::new(),
        }
    }

    /// Spawns `command` and registers the child.
    pub fn spawn(&self, command: &mut Command) -> io::Result<Spawned> {
        self.spawn_registered(command, false)
    }

    /// Spawns `command` as the workload: the child [`Self::signal_workload`] signals.
    pub fn spawn_workload(&self, command: &mut Command) -> io::Result<Spawned> {
        self.spawn_registered(command, true)
    }

    /// Spawns and registers under the lock (see the module docs for why).
    fn spawn_registered(&self, command: &mut Command, workload: bool) -> io::Result<Spawned> {
        let mut state = lock(&self.state);
        let child = command.spawn()?;
        let pid = Pid::from_raw(child.id() as i32);
        let (sender, exit) = mpsc::channel();
        state.waiting.insert(pid, sender);
        if workload {
            state.workload = Some(pid);
        }
        state.generation += 1;
        self.spawned.notify_all();
        Ok(Spawned { child, pid, exit })
    }

    /// Whether the workload runs (or has ended but was not reaped yet).
    pub fn workload_running(&self) -> bool {
        lock(&self.state).workload.is_some()
    }

    /// Sends `signal` to the workload.
    pub fn signal_workload(&self, signal: Signal) -> Result<(), SignalError> {
        let state = lock(&self.state);
        let pid = state.workload.ok_or(SignalError::NoWorkload)?;
        kill(pid, signal)?;
        Ok(())
    }

    /// Reaps every child that ends, forever, delivering the statuses of registered ones.
    pub fn reap_forever(&self) -> ! {
        loop {
            // Read before waiting: a spawn after this point changes it, so an ECHILD below
            // cannot make the reaper sleep through the birth of a child.
            let generation = lock(&self.state).generation;
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(peeked) => {
                    if let Some(pid) = peeked.pid() {
                        self.reap(pid);
                    }
                }
                Err(Errno::ECHILD) => {
                    // No children at all: sleep until a spawn (the timeout is only a safety
                    // net; orphans cannot appear without a child of ours).
                    let state = lock(&self.state);
                    let _ =
                        self.spawned
                            .wait_timeout_while(state, Duration::from_secs(1), |state| {
                                state.generation == generation
                            });
                }
                Err(Errno::EINTR) => {}
                Err(error) => {
                    say!("waitid failed: {error}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Reaps `pid`, which `waitid` reported finished, and delivers its status if registered.
    fn reap(&self, pid: Pid) {
        let mut state = lock(&self.state);
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            // ECHILD: std's spawn reaped it itself (an exec that failed), nothing to deliver.
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => {}
            Ok(status) => {
                if state.workload == Some(pid) {
                    state.workload = None;
                }
                // Unregistered: an orphan that ended, nobody to tell.
                if let Some(sender) = state.waiting.remove(&pid) {
                    // The receiver may have given up (an exec that timed out); fine.
                    let _ = sender.send(status);
                }
            }
            Err(error) => say!("waitpid({pid}) failed: {error}"),
        }
    }
}

/// The exit code and the killing signal in `status`, as [`proto::Event::Exited`] reports them.
///
/// [`proto::Event::Exited`]: osvm_agent::proto::Event::Exited
pub fn code_and_signal(status: WaitStatus) -> (Option<i32>, Option<i32>) {
    match status {
        WaitStatus::Exited(_, code) => (Some(code), None),
        WaitStatus::Signaled(_, signal, _) => (None, Some(signal as i32)),
        _ => (None, None),
    }
}
