//! Hot-swap: replace a component's instance with a new one without a failed request.
//!
//! The new instance starts beside the old one in a namespace of its own (the component's
//! second address block, allowed by policy exactly like the first; see `NetPlane`), with the
//! same identity name and a fresh certificate. Its readiness check (the component's health
//! check, or a TCP connect to its first listen port) must pass continuously for
//! `min_healthy_time`; then the service address's DNAT entry moves to it in one nftables
//! transaction, so new connections go to the new instance from the next packet on while live
//! ones keep the old. It must stay healthy for `min_healthy_time` more; then it is confirmed
//! (the component's instance, its address block the component's own) and the old instance
//! drains: it is stopped (SIGTERM, then SIGKILL after the component's `stop_grace`) once the
//! hub tracks no established connection to it, or after `drain_timeout`.
//!
//! A new instance that exits, is not ready within `healthy_deadline`, or fails its check after
//! the switch (with `auto_revert`) is rolled back: traffic goes back to the old instance, which
//! was never stopped, and the new one is stopped. Every step is an event and the phase is
//! written to the component's record before it is acted on, so a daemon killed in the middle
//! finishes a confirmed swap or undoes an unconfirmed one when it starts again: exactly one
//! version serves afterwards.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use osvm_core::Adoption;
use osvm_core::ExitStatus;
use osvm_core::stack::{Component, HealthProbe, StackNetwork, SwapPolicy};

use crate::workload::Workload;
use serde::{Deserialize, Serialize};

mod progress;

use progress::{Move, Progress, Seen};

use super::unit::Observation;
use super::{Booting, Engine, EngineError, Slot, human_duration};
use crate::health::{self, ProbeResult};
use crate::network::NetPlaneError;
use crate::store::{EventKind, SwapOutcome, SwapPhase, SwapRecord, now_ms};

/// What `osvm swap` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapRequest {
    /// A new command line (program, then arguments) for the same component.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The whole new component (from a stack file); its name must match.
    #[serde(default)]
    pub component: Option<Component>,
    /// Overrides of the component's `swap` settings, in milliseconds.
    #[serde(default)]
    pub min_healthy_time_ms: Option<u64>,
    /// See `min_healthy_time_ms`.
    #[serde(default)]
    pub healthy_deadline_ms: Option<u64>,
    /// See `min_healthy_time_ms`.
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
    /// Override of `auto_revert`.
    #[serde(default)]
    pub auto_revert: Option<bool>,
    /// Canary steps: percent of new connections to the new instance at each step, rising to
    /// 100, each held healthy for `min_healthy_time` (default: straight to 100).
    #[serde(default)]
    pub canary: Option<Vec<u8>>,
    /// Only say what would happen.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a swap will do (or, for a dry run, would do).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapPlan {
    /// `stack/component`.
    pub component: String,
    /// The instance it started (none for a dry run).
    pub new_instance: Option<String>,
    /// The settings in force.
    pub policy: SwapPolicy,
    /// The readiness check, in words.
    pub readiness: String,
    /// The steps, in order.
    pub steps: Vec<String>,
}

/// A swap in memory: the instances, the probe in flight and the pure [`Progress`].
pub(super) struct Swap {
    /// The new instance's id.
    id: String,
    /// Its start, until it finished.
    booting: Option<Booting>,
    /// The new instance, once started.
    new: Option<Arc<Workload>>,
    /// The old instance once the swap is confirmed (before that it is the unit's instance).
    old: Option<Arc<Workload>>,
    component: Component,
    readiness: HealthProbe,
    timeout: Duration,
    /// The clock and readiness, decided purely.
    progress: Progress,
    probe: Option<Receiver<ProbeResult>>,
    drain_began: Option<Instant>,
    old_addr: Option<Ipv4Addr>,
    /// When the instance being stopped (old when draining, new when rolling back) is killed.
    kill_at: Option<Instant>,
    reason: String,
}

/// The readiness check of `c`: its health check, or a TCP connect to its first listen port.
/// The CPU weight of a swap's new instance from its start until it takes traffic (v2's scale;
/// 100 is the default).
const SWAP_START_CPU_WEIGHT: u32 = 10;

fn readiness(c: &Component) -> Option<(HealthProbe, Duration, Duration, String)> {
    match &c.health {
        Some(h) => Some((
            h.probe.clone(),
            h.interval,
            h.timeout,
            format!("its health check, every {}", human_duration(h.interval)),
        )),
        None => c.listen.first().map(|&port| {
            (
                HealthProbe::Tcp { port },
                Duration::from_secs(2),
                Duration::from_secs(1),
                format!("a TCP connect to port {port}, every 2s"),
            )
        }),
    }
}

impl Engine {
    /// Starts a hot-swap of component `name` (or, with `dry_run`, only plans it).
    pub fn swap(&mut self, name: &str, req: SwapRequest) -> Result<SwapPlan, EngineError> {
        let i = self.find(name)?;
        let stack = self.stack_of(i).clone();
        let current = self.units[i].component.clone();
        let invalid = |m: String| Err(EngineError::Invalid(m));
        if stack.network != StackNetwork::Hub {
            return invalid(format!(
                "hot-swap moves traffic with the component's service address, which needs the hub network: set network = \"hub\" in stack `{}`",
                stack.name
            ));
        }
        if self.units[i].swap.is_some() {
            return invalid(format!("a swap of `{name}` is already under way"));
        }
        let mut component = match (req.component, req.command) {
            (Some(_), Some(_)) => return invalid("give a command or a component, not both".into()),
            (Some(c), None) if c.name != current.name => {
                return invalid(format!(
                    "the stack file's component is `{}`, not `{}`",
                    c.name, current.name
                ));
            }
            (Some(c), None) => c,
            (None, Some(cmd)) => {
                let Some((program, args)) = cmd.split_first() else {
                    return invalid("the new command is empty".into());
                };
                let mut c = current.clone();
                c.command = program.clone();
                c.args = args.to_vec();
                c
            }
            (None, None) => current.clone(),
        };
        let mut policy = component.swap;
        for (ms, slot) in [
            (req.min_healthy_time_ms, &mut policy.min_healthy_time),
            (req.healthy_deadline_ms, &mut policy.healthy_deadline),
            (req.drain_timeout_ms, &mut policy.drain_timeout),
        ] {
            if let Some(ms) = ms {
                *slot = Duration::from_millis(ms);
            }
        }
        if let Some(b) = req.auto_revert {
            policy.auto_revert = b;
        }
        component.swap = policy;
        let weights = req.canary.clone().unwrap_or_else(|| vec![100]);
        if weights.is_empty()
            || weights.last() != Some(&100)
            || weights.iter().any(|w| *w == 0 || *w > 100)
            || weights.windows(2).any(|p| p[0] >= p[1])
        {
            return invalid(format!(
                "canary steps must rise from 1 to 100 and end at 100, e.g. 10,50,100; got {weights:?}"
            ));
        }
        let Some((probe, interval, timeout, readiness_text)) = readiness(&component) else {
            return invalid(format!(
                "`{name}` has no health check and no listen port: nothing says when a new instance is ready"
            ));
        };
        let socket = current.socket_activation;
        if socket != component.socket_activation {
            return invalid(
                "the new version must keep socket_activation as it is: a swap cannot change how traffic reaches the component".into(),
            );
        }
        if socket && weights.len() > 1 {
            return invalid(
                "a canary splits the service address between two instances; with socket_activation both versions accept from one queue, so there is nothing to split".into(),
            );
        }
        let steps = if socket {
            vec![
                format!(
                    "start a new instance of {}/{name} beside the running one, in the same namespace, handed the same listening sockets (both accept from one queue from now on), with a fresh certificate",
                    stack.name
                ),
                format!(
                    "wait until it passes {readiness_text} continuously for {} (at most {} in all, else stop it)",
                    human_duration(policy.min_healthy_time),
                    human_duration(policy.healthy_deadline)
                ),
                format!(
                    "SIGTERM the old instance, which stops accepting and finishes what it has (SIGKILL after {}); connections waiting in the queue go to the new one",
                    human_duration(policy.drain_timeout)
                ),
            ]
        } else {
            vec![
                format!(
                    "start a new instance of {}/{name} beside the running one, in its own namespace and address, with a fresh certificate",
                    stack.name
                ),
                format!(
                    "wait until it passes {readiness_text} continuously for {} (at most {} in all, else roll back)",
                    human_duration(policy.min_healthy_time),
                    human_duration(policy.healthy_deadline)
                ),
                if weights.len() == 1 {
                    "point the service address at it (one nftables transaction; live connections stay on the old instance)".into()
                } else {
                    format!(
                        "send it {} of new connections in turn, each step held healthy for {} (one nftables transaction each; live connections keep their instance)",
                        weights
                            .iter()
                            .map(|w| format!("{w}%"))
                            .collect::<Vec<_>>()
                            .join(", then "),
                        human_duration(policy.min_healthy_time)
                    )
                },
                format!(
                    "watch it for {} more ({})",
                    human_duration(policy.min_healthy_time),
                    if policy.auto_revert {
                        "a failure moves traffic back"
                    } else {
                        "auto_revert is off: failures are left to the health check"
                    }
                ),
                format!(
                    "drain the old instance: stop it when no connection to it is left, at most after {} (SIGTERM, SIGKILL after {})",
                    human_duration(policy.drain_timeout),
                    human_duration(current.stop_grace)
                ),
            ]
        };
        let mut plan = SwapPlan {
            component: format!("{}/{name}", stack.name),
            new_instance: None,
            policy,
            readiness: readiness_text,
            steps,
        };
        if req.dry_run {
            return Ok(plan);
        }
        if self.units[i].instance.is_none() {
            return invalid(format!(
                "`{name}` is not running; start it instead (`osvm start {name}`)"
            ));
        }
        let now = Instant::now();
        let booting = self
            .boot(i, &component, Slot::Next { socket }, now)
            .map_err(EngineError::Start)?;
        let id = booting.id.clone();
        plan.new_instance = Some(id.clone());
        self.units[i].life.record.swap = Some(SwapRecord {
            new_instance: id.clone(),
            old_instance: self.units[i].life.record.instance.clone(),
            phase: SwapPhase::Starting,
            began_ms: now_ms(),
            component: component.clone(),
            weight: 0,
        });
        self.units[i].swap = Some(Swap {
            id: id.clone(),
            booting: Some(booting),
            new: None,
            old: None,
            component,
            readiness: probe,
            timeout,
            progress: Progress::new(socket, policy, interval, weights, now),
            probe: None,
            drain_began: None,
            old_addr: None,
            kill_at: None,
            reason: String::new(),
        });
        self.observe(i, Observation::SwapBegan, Instant::now());
        self.save(i);
        self.emit(
            i,
            EventKind::SwapStarted,
            &format!("new instance {id} is starting; waiting for it to be ready"),
        );
        Ok(plan)
    }

    /// Moves unit `i`'s swap along.
    pub(super) fn tick_swap(&mut self, i: usize, now: Instant) {
        let Some(phase) = self.units[i].swap.as_ref().map(|s| s.progress.phase) else {
            return;
        };
        match phase {
            SwapPhase::Starting | SwapPhase::Switched => self.watch_new(i, now),
            SwapPhase::Draining => self.drain_old(i, now),
            SwapPhase::RollingBack => self.finish_rollback(i, now),
        }
    }

    /// Picks up the new instance's start, looks at it, and carries out the next move
    /// [`Progress::decide`] gives.
    fn watch_new(&mut self, i: usize, now: Instant) {
        let sw = self.units[i].swap.as_mut().expect("checked by the caller");
        if let Some(booting) = &sw.booting {
            let Some(outcome) = booting.poll() else {
                return;
            };
            sw.booting = None;
            match outcome.started {
                Ok(inst) => {
                    // Low on CPU until it takes traffic: its start (an interpreter loading,
                    // caches warming) must not take the CPUs from the instance serving. Not
                    // with socket handoff: the new instance accepts from the shared queue as
                    // soon as it listens, so it serves from its start, and starving it would
                    // stall the requests it takes (seen: 5 s timeouts under load).
                    let socket = sw.progress.socket;
                    let lowered = if socket {
                        Ok(())
                    } else {
                        inst.set_cpu_weight(Some(SWAP_START_CPU_WEIGHT))
                    };
                    sw.new = Some(Arc::new(inst));
                    let id = sw.id.clone();
                    self.record_start(i, &id);
                    if let Err(e) = lowered {
                        self.emit(i, EventKind::Warning, &format!("swap: {e}"));
                    }
                }
                Err(e) => {
                    return self.roll_back(i, now, format!("the new instance did not start: {e}"));
                }
            }
        }
        let sw = self.units[i].swap.as_mut().expect("checked by the caller");
        let Some(new) = sw.new.clone() else {
            return;
        };
        let seen = if let Ok(Some(status)) = new.try_wait() {
            Seen::Exited(status)
        } else if let Some(result) = sw.probe.as_ref().and_then(health::poll) {
            sw.probe = None;
            Seen::Probe(result)
        } else {
            Seen::Nothing
        };
        match sw.progress.decide(seen, now) {
            Move::Wait => {}
            Move::Probe => {
                sw.probe = Some(health::spawn(new, &sw.readiness, sw.timeout));
            }
            Move::Switch(step) => self.move_traffic(i, now, step),
            Move::Confirm => self.confirm(i, now),
            Move::RollBack(why) => self.roll_back(i, now, why),
        }
    }

    fn swap_names(&self, i: usize) -> (String, String) {
        (
            self.units[i].life.record.stack.clone(),
            self.units[i].component.name.clone(),
        )
    }

    fn set_phase(&mut self, i: usize, phase: SwapPhase) {
        if let Some(sw) = self.units[i].swap.as_mut() {
            sw.progress.phase = phase;
        }
        if let Some(r) = self.units[i].life.record.swap.as_mut() {
            r.phase = phase;
        }
        self.save(i);
    }

    /// Gives the new instance the share of new connections of canary step `step`.
    fn move_traffic(&mut self, i: usize, now: Instant, step: usize) {
        let (stack, name) = self.swap_names(i);
        let weight = self.units[i]
            .swap
            .as_ref()
            .expect("swap under way")
            .progress
            .steps[step];
        // Durable first: a daemon killed from here on finds the swap switched and undoes it.
        if let Some(r) = self.units[i].life.record.swap.as_mut() {
            r.weight = weight;
        }
        self.set_phase(i, SwapPhase::Switched);
        let stacks = self.stacks.clone();
        let result = match self.net.as_mut() {
            Some(plane) => plane.switch(&stacks, &stack, &name, weight),
            None => Err(NetPlaneError::NotOnHub("the hub network is gone".into())),
        };
        if let Err(e) = result {
            return self.roll_back(i, now, format!("could not switch the service address: {e}"));
        }
        let sw = self.units[i].swap.as_mut().expect("swap under way");
        // It serves from now on: the default CPU weight again.
        let restored = sw
            .new
            .as_ref()
            .map_or(Ok(()), |new| new.set_cpu_weight(None));
        sw.progress.switched(step, now);
        let waited = now.duration_since(sw.progress.began);
        let detail = if weight == 100 {
            format!(
                "the service address sends new connections to the new instance ({} after the start)",
                human_duration(waited)
            )
        } else {
            format!(
                "canary: {weight}% of new connections to the new instance ({} after the start)",
                human_duration(waited)
            )
        };
        self.emit(i, EventKind::SwapSwitched, &detail);
        if let Err(e) = restored {
            self.emit(i, EventKind::Warning, &format!("swap: {e}"));
        }
    }

    /// The new instance held: it becomes the component's instance, the old one drains.
    fn confirm(&mut self, i: usize, now: Instant) {
        let (stack, name) = self.swap_names(i);
        let socket = self.units[i]
            .swap
            .as_ref()
            .is_some_and(|s| s.progress.socket);
        if !socket
            && let Some(plane) = self.net.as_mut()
            && let Err(e) = plane.promote(&stack, &name)
        {
            return self.roll_back(i, now, format!("could not promote the new instance: {e}"));
        }
        let old_addr = self.net.as_ref().and_then(|p| p.next_addr(&stack, &name));
        // It is the component's instance from now on: the default CPU weight, whichever way
        // the swap went (a canary's last step restored it already; this is idempotent).
        let restored = self.units[i]
            .swap
            .as_ref()
            .and_then(|s| s.new.as_ref())
            .map_or(Ok(()), |new| new.set_cpu_weight(None));
        if let Err(e) = restored {
            self.emit(i, EventKind::Warning, &format!("swap: {e}"));
        }
        let u = &mut self.units[i];
        let sw = u.swap.as_mut().expect("swap under way");
        sw.old = u.instance.take();
        sw.old_addr = old_addr;
        sw.drain_began = Some(now);
        let (id, began) = (sw.id.clone(), sw.progress.began);
        u.instance = sw.new.clone();
        u.component = sw.component.clone();
        u.probe = None;
        self.observe(i, Observation::SwapConfirmed { id, began }, now);
        let u = &mut self.units[i];
        if let Some(r) = u.life.record.swap.as_mut() {
            r.old_instance = u.life.record.last_instance.clone();
        }
        // The new spec is the component's from now on.
        let component = u.component.clone();
        if let Some(s) = self.stacks.get_mut(&stack)
            && let Some(c) = s.components.iter_mut().find(|c| c.name == name)
        {
            *c = component;
            let _ = self.store.apply_stack(s);
        }
        self.set_phase(i, SwapPhase::Draining);
        self.emit(
            i,
            EventKind::SwapConfirmed,
            "the new instance is the component's; draining the old one",
        );
    }

    fn drain_old(&mut self, i: usize, now: Instant) {
        let sw = self.units[i].swap.as_mut().expect("checked by the caller");
        let Some(old) = sw.old.clone() else {
            return self.finish_swap(i, now, None);
        };
        if let Ok(Some(status)) = old.try_wait() {
            return self.finish_swap(i, now, Some(status));
        }
        match sw.kill_at {
            Some(t) if t <= now => {
                let _ = old.signal(libc::SIGKILL);
                sw.kill_at = Some(now + Duration::from_secs(3600));
            }
            Some(_) => {}
            None => {
                let left = match (sw.old_addr, self.net.as_ref()) {
                    (Some(addr), Some(plane)) => plane.established_to(addr).unwrap_or(0),
                    _ => 0,
                };
                let sw = self.units[i].swap.as_mut().expect("swap under way");
                let waited = sw
                    .drain_began
                    .map_or(Duration::ZERO, |t| now.duration_since(t));
                if left == 0 || waited >= sw.progress.policy.drain_timeout {
                    let grace = self.units[i].component.stop_grace;
                    let sw = self.units[i].swap.as_mut().expect("swap under way");
                    sw.kill_at = Some(now + grace);
                    let _ = old.signal(libc::SIGTERM);
                    let detail = if left == 0 {
                        format!(
                            "no connection left after {}; stopping the old instance",
                            human_duration(waited)
                        )
                    } else {
                        format!(
                            "{left} connection(s) still open after drain_timeout; stopping the old instance"
                        )
                    };
                    self.emit(i, EventKind::SwapDrained, &detail);
                }
            }
        }
    }

    fn finish_swap(&mut self, i: usize, now: Instant, old_exit: Option<ExitStatus>) {
        let sw = self.units[i].swap.take().expect("swap under way");
        if let Some(old) = &sw.old {
            self.record_end(old.id(), old_exit);
        }
        let took = self.close_swap(i, now, &sw, true, "the new instance serves".into());
        self.observe(i, Observation::SwapEnded, now);
        self.emit(
            i,
            EventKind::SwapDone,
            &format!(
                "instance {} serves; the swap took {}",
                sw.id,
                human_duration(took)
            ),
        );
    }

    /// Clears unit `i`'s second hub slot and records the swap's outcome; returns how long
    /// the swap took.
    fn close_swap(
        &mut self,
        i: usize,
        now: Instant,
        sw: &Swap,
        done: bool,
        reason: String,
    ) -> Duration {
        let (stack, name) = self.swap_names(i);
        let stacks = self.stacks.clone();
        if let Some(plane) = self.net.as_mut()
            && let Err(e) = plane.drop_next(&stacks, &stack, &name)
        {
            self.note(EventKind::NetworkFailed, &e.to_string());
        }
        let took = now.duration_since(sw.progress.began);
        let u = &mut self.units[i];
        u.life.record.swap = None;
        u.life.record.last_swap = Some(SwapOutcome {
            new_instance: sw.id.clone(),
            done,
            reason,
            duration_ms: took.as_millis() as u64,
        });
        took
    }

    /// Gives up the swap: traffic back to the old instance, the new one stopped.
    fn roll_back(&mut self, i: usize, now: Instant, reason: String) {
        let (stack, name) = self.swap_names(i);
        let switched = self.units[i]
            .swap
            .as_ref()
            .is_some_and(|s| s.progress.phase == SwapPhase::Switched);
        self.set_phase(i, SwapPhase::RollingBack);
        if switched {
            let stacks = self.stacks.clone();
            if let Some(plane) = self.net.as_mut()
                && let Err(e) = plane.switch(&stacks, &stack, &name, 0)
            {
                self.note(EventKind::NetworkFailed, &e.to_string());
            }
        }
        let grace = self.units[i].component.stop_grace;
        let sw = self.units[i].swap.as_mut().expect("swap under way");
        sw.reason = reason.clone();
        sw.probe = None;
        sw.progress.probing = false;
        sw.kill_at = Some(now + grace);
        if let Some(new) = &sw.new {
            let _ = new.signal(libc::SIGTERM);
        }
        self.emit(i, EventKind::SwapRollingBack, &reason);
    }

    fn finish_rollback(&mut self, i: usize, now: Instant) {
        let grace = self.units[i].component.stop_grace;
        let sw = self.units[i].swap.as_mut().expect("checked by the caller");
        // Rolled back while the new instance was still starting: it is stopped once it exists.
        if let Some(booting) = &sw.booting {
            let Some(started) = booting.poll() else {
                return;
            };
            sw.booting = None;
            if let Ok(inst) = started.started {
                let _ = inst.signal(libc::SIGTERM);
                sw.kill_at = Some(now + grace);
                sw.new = Some(Arc::new(inst));
                let id = sw.id.clone();
                self.record_start(i, &id);
                return;
            }
        }
        let sw = self.units[i].swap.as_mut().expect("checked by the caller");
        if let Some(new) = &sw.new {
            let Ok(Some(status)) = new.try_wait() else {
                if sw.kill_at.is_some_and(|t| t <= now) {
                    let _ = new.signal(libc::SIGKILL);
                    sw.kill_at = Some(now + Duration::from_secs(3600));
                }
                return;
            };
            let id = sw.id.clone();
            self.record_end(&id, Some(status));
        }
        let sw = self.units[i].swap.take().expect("swap under way");
        self.close_swap(i, now, &sw, false, sw.reason.clone());
        let detail = if self.units[i].instance.is_some() {
            format!("{}; the old instance serves", sw.reason)
        } else {
            format!("{}; the old instance had ended", sw.reason)
        };
        self.emit(i, EventKind::SwapRolledBack, &detail);
        self.observe(i, Observation::SwapEnded, now);
    }

    /// Gives up unit `i`'s swap because the user changed their mind about the component
    /// (stopped, restarted, changed or removed it) while the new instance was not yet its own:
    /// the new instance is stopped, traffic stays with (or goes back to) the old one, which the
    /// lifecycle then handles as asked. A confirmed swap only drains its old instance.
    pub(super) fn abandon_swap(&mut self, i: usize, now: Instant, why: &str) {
        let phase = self.units[i].swap.as_ref().map(|s| s.progress.phase);
        if matches!(phase, Some(SwapPhase::Starting | SwapPhase::Switched)) {
            self.roll_back(i, now, format!("abandoned: {why}"));
        }
    }

    /// After a restart: finishes a swap that was confirmed, undoes one that was not, so that
    /// exactly one instance serves. Returns the component to clear from the hub's second slot.
    pub(super) fn recover_swap(&mut self, i: usize) -> Option<(String, String)> {
        let record = self.units[i].life.record.swap.take()?;
        let stop = |engine: &Engine, id: &str| {
            if let Ok(runtime) = engine.runtime_of(i)
                && let Ok(Adoption::Running(inst)) = runtime.adopt(id)
            {
                let _ = inst.stop(engine.units[i].component.stop_grace);
            }
        };
        let outcome = if record.phase == SwapPhase::Draining {
            if let Some(old) = &record.old_instance {
                stop(self, old);
                self.record_end(old, None);
            }
            self.units[i].component = record.component.clone();
            SwapOutcome {
                new_instance: record.new_instance.clone(),
                done: true,
                reason: "finished by a restarted daemon: the new instance serves".into(),
                duration_ms: now_ms().saturating_sub(record.began_ms),
            }
        } else {
            stop(self, &record.new_instance);
            self.record_end(&record.new_instance, None);
            SwapOutcome {
                new_instance: record.new_instance.clone(),
                done: false,
                reason: "the daemon restarted before the new instance was confirmed; the old instance serves".into(),
                duration_ms: now_ms().saturating_sub(record.began_ms),
            }
        };
        let detail = outcome.reason.clone();
        let done = outcome.done;
        self.units[i].life.record.last_swap = Some(outcome);
        self.save(i);
        self.emit(
            i,
            if done {
                EventKind::SwapDone
            } else {
                EventKind::SwapRolledBack
            },
            &detail,
        );
        Some(self.swap_names(i))
    }
}
