//! One component's lifecycle as a pure state machine: [`step`] takes what the engine observed
//! ([`Observation`]) at a time it is given, changes the component's [`Lifecycle`], and returns
//! what must be done ([`Action`]) in order. It holds no handle, reads no clock and does no I/O,
//! so every rule below is tested with instants the test chooses; the engine's executor performs the actions
//! (start an instance, signal it, spawn a probe, write the record, log an event) and feeds the
//! outcomes back as observations.
//!
//! The states, as the record's status shows them:
//! - `starting`: a start is scheduled (`restart_at`), under way (`launching`), or an instance
//!   runs and has not passed its first health check;
//! - `running`: the instance passed its check (or has none);
//! - `stopping`: the engine sent SIGTERM (`kill_at` arms the SIGKILL after `stop_grace`);
//! - `stopped` / `failed`: nothing runs and nothing is scheduled;
//! - `upgrading`: a hot-swap is under way (the swap's own machine decides; see `swap.rs`).
//!
//! Invariants: an intent (start or stop instance X) is saved before the action it announces
//! ([`Action::Save`] precedes [`Action::Launch`] and [`Action::Terminate`]); at most one start
//! is under way; a probe result arriving after a stop was requested is ignored; why the engine
//! stopped an instance is one [`StopReason`] (the stronger wins), decoded once by
//! [`policy::after_exit`] when the instance ends.

use std::time::{Duration, Instant};

use osvm_core::ExitStatus;
use osvm_core::model::ComponentStatus;
use osvm_core::stack::{Component, HealthCheck, RestartPolicy, Stack};

use super::policy::{self, AfterExit, ExitFacts, Restart, StopReason};
use super::{Health, human_duration};
use crate::health::ProbeResult;
use crate::store::{ComponentRecord, EventKind, Intent};

/// The settings that govern a component's lifecycle: its own and its stack's.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The component's restart policy.
    pub restart: RestartPolicy,
    /// The stack's `max_restarts`.
    pub max_restarts: u32,
    /// The first restart delay (the stack's `restart_backoff`).
    pub backoff: Duration,
    /// The longest restart delay (`restart_backoff_max`).
    pub backoff_max: Duration,
    /// Running this long resets the delay (`restart_reset_after`).
    pub reset_after: Duration,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// The component's health check.
    pub health: Option<HealthCheck>,
}

impl Settings {
    /// The settings of `c` in `stack`.
    pub fn of(c: &Component, stack: &Stack) -> Self {
        Self {
            restart: c.restart,
            max_restarts: stack.max_restarts,
            backoff: stack.restart_backoff,
            backoff_max: stack.restart_backoff_max,
            reset_after: stack.restart_reset_after,
            stop_grace: c.stop_grace,
            health: c.health.clone(),
        }
    }
}

/// What the engine knows of one component's lifecycle, without handles.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// The durable part (status, instance, intent, restarts, backoff, reason).
    pub record: ComponentRecord,
    /// The last probe's verdict.
    pub health: Health,
    /// An instance runs (the executor holds its handle).
    pub running: bool,
    /// A start is under way (between [`Action::Launch`] and its outcome).
    pub launching: bool,
    /// When the running instance started.
    pub started_at: Option<Instant>,
    /// When a scheduled start is due.
    pub restart_at: Option<Instant>,
    /// When a requested stop escalates to SIGKILL.
    pub kill_at: Option<Instant>,
    /// Why the engine asked the instance to stop.
    pub stop_reason: Option<StopReason>,
    /// The component left its stack: stop it, then forget it.
    pub removing: bool,
    /// A hot-swap is under way.
    pub swapping: bool,
    /// When the next probe is due.
    pub next_probe: Instant,
    /// When the probe in flight started.
    pub probing: Option<Instant>,
    /// How long the last probe took.
    pub probe_latency: Option<Duration>,
    /// The running instance has passed its health check since it started (or was adopted
    /// serving after an engine restart, or confirmed by a hot-swap).
    pub passed: bool,
}

impl Lifecycle {
    /// A component with `record`, `due` to start (or not), at `now`.
    pub fn new(
        record: ComponentRecord,
        has_health: bool,
        due: Option<Instant>,
        now: Instant,
    ) -> Self {
        Self {
            record,
            health: if has_health {
                Health::Pending
            } else {
                Health::None
            },
            running: false,
            launching: false,
            started_at: None,
            restart_at: due,
            kill_at: None,
            stop_reason: None,
            removing: false,
            swapping: false,
            next_probe: now,
            probing: None,
            probe_latency: None,
            passed: false,
        }
    }

    /// Whether the instance should receive traffic (the hub's service address, and so a
    /// published port, sends to it): it runs, is not being stopped, and has passed its health
    /// check since it started, if it has one. Like a Kubernetes endpoint's readiness.
    pub fn ready(&self) -> bool {
        self.running
            && self.kill_at.is_none()
            && self.record.status != ComponentStatus::Stopping
            && (self.health == Health::None || self.passed)
    }

    /// Nothing runs, nothing starts and nothing is scheduled.
    pub fn idle(&self) -> bool {
        !self.running && !self.launching && self.restart_at.is_none()
    }
}

/// What the engine observed about a component (or was asked to do with it).
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Time passed: due starts, kills, probes and deadlines.
    Tick,
    /// A start of instance `id` began (identity, network and listeners are ready).
    Launching {
        /// The new instance's id.
        id: String,
    },
    /// Instance `id` started.
    Started {
        /// Its id.
        id: String,
    },
    /// A start could not be made, or failed.
    StartFailed(String),
    /// The running instance ended; `how` is what only the runtime can add (a unikernel's
    /// deadline, a panic).
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// What the runtime adds.
        how: Option<String>,
    },
    /// The probe in flight returned.
    Probe(ProbeResult),
    /// Something outside the health check found the instance broken (the MCP gateway).
    Broken(String),
    /// `osvm start`.
    StartRequested,
    /// `osvm stop`.
    StopRequested,
    /// `osvm restart`.
    RestartRequested,
    /// The component's spec changed on apply.
    Changed,
    /// The component left its stack (or its stack was removed).
    Removed,
    /// After a daemon restart: instance `id` still runs, started `age` ago.
    Adopted {
        /// Its id.
        id: String,
        /// How long it has run.
        age: Duration,
    },
    /// After a daemon restart: instance `id` ended while no engine watched.
    EndedWhileAway {
        /// Its id.
        id: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// After a daemon restart: the instance cannot be found or driven again.
    Lost(String),
    /// After a daemon restart: no instance was recorded; a pending start is due in `wait`.
    Resume {
        /// What is left of the backoff that was running.
        wait: Duration,
    },
    /// A hot-swap began.
    SwapBegan,
    /// The swap's new instance `id`, started at `began`, became the component's instance (it
    /// passed the swap's checks, so it counts as healthy).
    SwapConfirmed {
        /// The new instance's id.
        id: String,
        /// When it started.
        began: Instant,
    },
    /// The swap ended (done or rolled back); the instance that serves, if any, is `running`. A
    /// component without one starts again unless it was stopped or removed meanwhile.
    SwapEnded,
}

/// What the executor must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write the record to the store.
    Save,
    /// Log an event about the component.
    Emit(EventKind, String),
    /// Prepare and start a new instance (the outcome comes back as [`Observation::Launching`]
    /// then [`Observation::Started`] or [`Observation::StartFailed`]).
    Launch,
    /// Send the instance SIGTERM.
    Terminate,
    /// Send the instance SIGKILL.
    Kill,
    /// Start a health probe (its result comes back as [`Observation::Probe`]).
    Probe,
    /// Forget the probe in flight.
    CancelProbe,
}

/// Advances `lc` by `obs` at `now` under `s`; returns the actions to perform, in order.
pub fn step(lc: &mut Lifecycle, s: &Settings, obs: Observation, now: Instant) -> Vec<Action> {
    let mut m = Machine {
        lc,
        s,
        now,
        out: Vec::new(),
    };
    m.observe(obs);
    m.out
}

/// One step in progress.
struct Machine<'a> {
    lc: &'a mut Lifecycle,
    s: &'a Settings,
    now: Instant,
    out: Vec<Action>,
}

impl Machine<'_> {
    fn emit(&mut self, kind: EventKind, detail: impl Into<String>) {
        self.out.push(Action::Emit(kind, detail.into()));
    }

    fn save(&mut self) {
        self.out.push(Action::Save);
    }

    /// Sets the status (a swap shows `upgrading` instead of `running`); saves on a change.
    fn set_status(&mut self, mut status: ComponentStatus) {
        if self.lc.swapping && status == ComponentStatus::Running {
            status = ComponentStatus::Upgrading;
        }
        if self.lc.record.status != status {
            self.lc.record.status = status;
            self.save();
        }
    }

    fn observe(&mut self, obs: Observation) {
        match obs {
            Observation::Tick => self.tick(),
            Observation::Launching { id } => {
                self.lc.launching = true;
                self.lc.record.intent = Some(Intent::Start { instance: id });
                self.set_status(ComponentStatus::Starting);
                self.save();
            }
            Observation::Started { id } => self.started(id),
            Observation::StartFailed(why) => {
                self.lc.launching = false;
                // The instance that failed is the last one: its files (a VM's console) are
                // what `osvm logs` shows until another runs.
                if let Some(Intent::Start { instance }) = self.lc.record.intent.take() {
                    self.lc.record.last_instance = Some(instance);
                }
                self.lc.record.reason = why.clone();
                self.save();
                self.emit(EventKind::StartFailed, why);
                self.schedule_restart(true);
            }
            Observation::Exited { status, how } => self.exited(status, how),
            Observation::Probe(result) => self.probed(result),
            Observation::Broken(why) => {
                if self.lc.running {
                    self.emit(EventKind::McpFailed, why);
                    self.stop_for(StopReason::Unhealthy);
                }
            }
            Observation::StartRequested => {
                let r = &mut self.lc.record;
                r.enabled = true;
                r.restarts = 0;
                r.backoff_exp = 0;
                r.reason.clear();
                if !self.lc.running && !self.lc.launching {
                    self.lc.restart_at = Some(self.now);
                }
                self.set_status(ComponentStatus::Starting);
                self.save();
                self.emit(EventKind::StartRequested, "by the API");
            }
            Observation::StopRequested => {
                self.lc.record.enabled = false;
                self.lc.restart_at = None;
                self.save();
                self.emit(EventKind::StopRequested, "by the API");
                if self.lc.running {
                    self.request_stop();
                } else {
                    self.set_status(ComponentStatus::Stopped);
                }
            }
            Observation::RestartRequested => {
                self.lc.record.enabled = true;
                self.emit(EventKind::RestartRequested, "by the API");
                if self.lc.running {
                    self.stop_for(StopReason::Replace);
                } else if !self.lc.launching {
                    self.lc.restart_at = Some(self.now);
                }
            }
            Observation::Changed => {
                if self.lc.running {
                    self.emit(
                        EventKind::Changed,
                        "the component's spec changed; replacing its instance",
                    );
                    self.stop_for(StopReason::Replace);
                }
            }
            Observation::Removed => {
                self.lc.removing = true;
                self.lc.restart_at = None;
                self.request_stop();
            }
            Observation::Adopted { id, age } => {
                self.lc.record.instance = Some(id);
                self.lc.running = true;
                // It served before the engine went away: it keeps serving until a probe fails.
                self.lc.passed = true;
                self.lc.started_at = Some(self.now.checked_sub(age).unwrap_or(self.now));
                if matches!(self.lc.record.intent, Some(Intent::Stop { .. }))
                    || !self.lc.record.enabled
                {
                    self.request_stop();
                } else {
                    self.lc.record.intent = None;
                    self.save();
                }
            }
            Observation::EndedWhileAway { id, status } => {
                self.lc.record.instance = Some(id.clone());
                self.lc.running = true;
                self.emit(
                    EventKind::EndedWhileAway,
                    format!("instance {id}: {status}"),
                );
                self.lc.record.intent = None;
                self.exited(status, None);
            }
            Observation::Lost(detail) => {
                self.emit(EventKind::Lost, detail);
                self.lc.record.intent = None;
                self.lc.record.instance = None;
                self.lc.running = false;
                if self.wants_to_run() {
                    self.lc.restart_at = Some(self.now);
                }
                self.save();
            }
            Observation::Resume { wait } => {
                if self.wants_to_run() {
                    self.lc.restart_at = Some(self.now + wait);
                }
            }
            Observation::SwapBegan => {
                self.lc.swapping = true;
                self.set_status(ComponentStatus::Upgrading);
            }
            Observation::SwapConfirmed { id, began } => {
                let lc = &mut *self.lc;
                lc.running = true;
                lc.started_at = Some(began);
                lc.health = if self.s.health.is_some() {
                    Health::Healthy("passed its checks during the swap".into())
                } else {
                    Health::None
                };
                lc.probing = None;
                lc.next_probe = self.now;
                lc.kill_at = None;
                lc.passed = true;
                lc.record.last_instance = lc.record.instance.take();
                lc.record.instance = Some(id);
                self.out.push(Action::CancelProbe);
            }
            Observation::SwapEnded => {
                self.lc.swapping = false;
                if self.lc.running {
                    // Unless a stop was asked for meanwhile, which goes on.
                    if !self.stopping() {
                        self.set_status(ComponentStatus::Running);
                    }
                    self.save();
                } else if self.lc.record.enabled && !self.lc.removing {
                    self.save();
                    self.schedule_restart(true);
                } else {
                    self.set_status(ComponentStatus::Stopped);
                    self.save();
                }
            }
        }
    }

    /// Enabled, and neither failed nor stopped on purpose.
    fn wants_to_run(&self) -> bool {
        self.lc.record.enabled
            && !matches!(
                self.lc.record.status,
                ComponentStatus::Failed | ComponentStatus::Stopped
            )
    }

    fn tick(&mut self) {
        if self.lc.restart_at.is_some_and(|t| t <= self.now) && !self.lc.launching {
            self.lc.restart_at = None;
            if self.lc.record.enabled && !self.lc.removing && !self.lc.running {
                self.lc.launching = true;
                self.out.push(Action::Launch);
            }
        }
        if !self.lc.running {
            return;
        }
        if self.lc.kill_at.is_some_and(|t| t <= self.now) {
            self.lc.kill_at = None;
            self.out.push(Action::Kill);
        }
        if self.lc.record.backoff_exp > 0
            && self
                .lc
                .started_at
                .is_some_and(|s| self.now.duration_since(s) > self.s.reset_after)
        {
            self.lc.record.backoff_exp = 0;
            self.save();
        }
        self.check_health();
    }

    /// Readiness, deadlines and due probes of the running instance.
    fn check_health(&mut self) {
        if self.stopping() {
            return;
        }
        let Some(check) = self.s.health.clone() else {
            if self.lc.record.status == ComponentStatus::Starting {
                self.set_status(ComponentStatus::Running);
                self.emit(EventKind::Running, "no health check configured");
            }
            return;
        };
        if let Some(deadline) = check.ready_within
            && self.lc.record.status == ComponentStatus::Starting
            && self
                .lc
                .started_at
                .is_some_and(|s| self.now.duration_since(s) > deadline)
        {
            let why = format!(
                "not ready within {} (ready_within)",
                human_duration(deadline)
            );
            self.emit(EventKind::NeverReady, why.clone());
            self.lc.record.reason = why;
            self.stop_for(StopReason::NeverReady);
            return;
        }
        if self.lc.probing.is_none() && self.now >= self.lc.next_probe {
            self.lc.probing = Some(self.now);
            self.out.push(Action::Probe);
        }
    }

    /// A stop was requested and the instance has not ended yet.
    fn stopping(&self) -> bool {
        self.lc.kill_at.is_some() || self.lc.record.status == ComponentStatus::Stopping
    }

    fn probed(&mut self, result: ProbeResult) {
        let Some(began) = self.lc.probing.take() else {
            return; // cancelled: a stop was requested meanwhile
        };
        let Some(check) = self.s.health.clone() else {
            return;
        };
        if !self.lc.running || self.stopping() {
            return;
        }
        self.lc.probe_latency = Some(self.now.duration_since(began));
        self.lc.next_probe = self.now + check.interval;
        match result {
            Ok(detail) => {
                let announce = self.lc.record.status == ComponentStatus::Starting
                    || matches!(self.lc.health, Health::Failing(..));
                self.lc.health = Health::Healthy(detail.clone());
                self.lc.passed = true;
                self.set_status(ComponentStatus::Running);
                if announce {
                    self.emit(EventKind::Healthy, detail);
                }
            }
            Err(reason) => {
                if self
                    .lc
                    .started_at
                    .is_some_and(|s| self.now.duration_since(s) < check.start_period)
                {
                    return;
                }
                let n = match &self.lc.health {
                    Health::Failing(n, _) => n + 1,
                    _ => 1,
                };
                self.lc.health = Health::Failing(n, reason.to_string());
                if n >= check.retries {
                    self.emit(
                        EventKind::Unhealthy,
                        format!("{n} failed probes in a row; last: {reason}"),
                    );
                    self.stop_for(StopReason::Unhealthy);
                }
            }
        }
    }

    fn started(&mut self, id: String) {
        let lc = &mut *self.lc;
        lc.launching = false;
        lc.running = true;
        lc.record.instance = Some(id);
        lc.record.intent = None;
        lc.started_at = Some(self.now);
        lc.stop_reason = None;
        lc.kill_at = None;
        lc.probing = None;
        lc.passed = false;
        if lc.health != Health::None {
            lc.health = Health::Pending;
        }
        lc.next_probe = self.now;
        self.save();
        // Stopped or removed while it started: stop it now.
        if !self.lc.record.enabled || self.lc.removing {
            self.request_stop();
        }
    }

    /// SIGTERM now (the intent saved first), SIGKILL after the grace period.
    fn request_stop(&mut self) {
        if !self.lc.running {
            return;
        }
        let Some(id) = self.lc.record.instance.clone() else {
            return;
        };
        self.lc.record.intent = Some(Intent::Stop { instance: id });
        self.lc.kill_at = Some(self.now + self.s.stop_grace);
        if self.lc.probing.take().is_some() {
            self.out.push(Action::CancelProbe);
        }
        self.set_status(ComponentStatus::Stopping);
        self.save();
        self.out.push(Action::Terminate);
    }

    /// Stops the instance for `reason` (the stronger of it and an earlier one counts).
    fn stop_for(&mut self, reason: StopReason) {
        self.lc.stop_reason = Some(reason.stronger(self.lc.stop_reason));
        self.request_stop();
    }

    fn exited(&mut self, status: ExitStatus, how: Option<String>) {
        let lc = &mut *self.lc;
        lc.running = false;
        lc.passed = false;
        if lc.probing.take().is_some() {
            self.out.push(Action::CancelProbe);
        }
        let lc = &mut *self.lc;
        lc.kill_at = None;
        lc.started_at = None;
        lc.record.intent = None;
        lc.record.last_exit = Some(status);
        // The exit is handled: a restarted engine must not count it again.
        lc.record.last_instance = lc.record.instance.take();
        let stopped_for = lc.stop_reason.take();
        let detail = match (how, stopped_for) {
            (Some(how), _) => format!("{status} ({how})"),
            (None, Some(StopReason::NeverReady)) => format!("{status} (stopped: never ready)"),
            (None, Some(StopReason::Unhealthy)) => format!("{status} (stopped as unhealthy)"),
            _ => status.to_string(),
        };
        if stopped_for != Some(StopReason::NeverReady) {
            lc.record.reason = detail.clone();
        }
        let facts = ExitFacts {
            success: status.success(),
            stopped_for,
            enabled: lc.record.enabled,
            removing: lc.removing,
            swapping: lc.swapping,
            restart: self.s.restart,
            restarts: lc.record.restarts,
            max_restarts: self.s.max_restarts,
        };
        self.save();
        self.emit(EventKind::Exited, detail);
        match policy::after_exit(&facts) {
            AfterExit::FailedNeverReady => {
                let reason = self.lc.record.reason.clone();
                self.set_status(ComponentStatus::Failed);
                self.emit(EventKind::Failed, reason);
            }
            AfterExit::Stopped => self.set_status(ComponentStatus::Stopped),
            // The old instance died during a swap: the swap decides (the new instance takes
            // over, or a rollback restarts the component).
            AfterExit::LeaveToSwap => {}
            AfterExit::StartNow => self.lc.restart_at = Some(self.now),
            AfterExit::Restart(decision) => self.carry_out(decision),
        }
    }

    /// What the restart policy says after a start failed (`failed`) or an end.
    fn schedule_restart(&mut self, failed: bool) {
        let decision = policy::restart_after(
            self.s.restart,
            failed,
            self.lc.record.restarts,
            self.s.max_restarts,
        );
        self.carry_out(decision);
    }

    fn carry_out(&mut self, decision: Restart) {
        match decision {
            Restart::No { failed } => self.set_status(if failed {
                ComponentStatus::Failed
            } else {
                ComponentStatus::Stopped
            }),
            Restart::GiveUp { max } => {
                let reason = format!(
                    "gave up after {max} restarts (the stack's max_restarts); last: {}",
                    self.lc.record.reason
                );
                self.lc.record.reason = reason.clone();
                self.set_status(ComponentStatus::Failed);
                self.save();
                self.emit(EventKind::Failed, reason);
            }
            Restart::Backoff => {
                let r = &mut self.lc.record;
                let delay = policy::backoff(self.s.backoff, self.s.backoff_max, r.backoff_exp);
                r.backoff_exp += 1;
                r.restarts += 1;
                let restarts = r.restarts;
                self.lc.restart_at = Some(self.now + delay);
                self.set_status(ComponentStatus::Starting);
                self.save();
                self.emit(
                    EventKind::RestartScheduled,
                    format!("restart {restarts} in {}", human_duration(delay)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
