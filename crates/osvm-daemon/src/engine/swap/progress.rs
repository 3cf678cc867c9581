//! A swap's readiness clock as a pure decision: given what was seen of the new instance (it
//! exited, a probe returned, nothing) at a time, [`Progress::decide`] says the next move. The
//! executor in `swap.rs` holds the instances and the probe thread and carries the move out.
//!
//! The rules, first match wins:
//! 1. the new instance exited: roll back;
//! 2. still `starting` after `healthy_deadline`: roll back;
//! 3. a probe returned: a pass starts (or continues) the healthy stretch, a failure ends it, and
//!    after the switch rolls back when `auto_revert` is on;
//! 4. a probe is in flight: wait; none and one is due: probe;
//! 5. healthy for `min_healthy_time` while `starting`: switch to the first canary step (confirm
//!    at once with socket handoff, where there is no address to switch); each step held
//!    healthy for `min_healthy_time`: the next step, and after the last one, confirm.

use std::time::{Duration, Instant};

use osvm_core::ExitStatus;
use osvm_core::stack::SwapPolicy;

use super::human_duration;
use crate::health::ProbeResult;
use crate::store::SwapPhase;

/// The clock and readiness of a swap under way.
#[derive(Debug, Clone)]
pub(in crate::engine) struct Progress {
    /// Socket handoff rather than the service-address switch.
    pub socket: bool,
    /// The settings in force.
    pub policy: SwapPolicy,
    /// Time between readiness probes.
    pub interval: Duration,
    /// Where the swap is (set by the executor as it acts).
    pub phase: SwapPhase,
    /// When the new instance started.
    pub began: Instant,
    /// A readiness probe is in flight.
    pub probing: bool,
    /// When the next probe is due.
    pub next_probe: Instant,
    /// Since when every probe passed.
    pub ready_since: Option<Instant>,
    /// The share of new connections the new instance gets at each step, ending at 100.
    pub steps: Vec<u8>,
    /// The step in force once switched.
    pub step: usize,
    /// When the current step began.
    pub switched_at: Option<Instant>,
}

/// What was seen of the new instance since the last decision.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::engine) enum Seen {
    /// Nothing new.
    Nothing,
    /// It exited.
    Exited(ExitStatus),
    /// The probe in flight returned.
    Probe(ProbeResult),
}

/// The next move.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::engine) enum Move {
    /// Nothing to do yet.
    Wait,
    /// Start a readiness probe.
    Probe,
    /// Give the new instance canary step `n`'s share of new connections.
    Switch(usize),
    /// The new instance becomes the component's; the old one drains.
    Confirm,
    /// Give up: traffic back to the old instance, the new one stopped.
    RollBack(String),
}

impl Progress {
    /// A swap whose new instance started at `now`.
    pub fn new(
        socket: bool,
        policy: SwapPolicy,
        interval: Duration,
        steps: Vec<u8>,
        now: Instant,
    ) -> Self {
        Self {
            socket,
            policy,
            interval,
            phase: SwapPhase::Starting,
            began: now,
            probing: false,
            next_probe: now,
            ready_since: None,
            steps,
            step: 0,
            switched_at: None,
        }
    }

    /// The next move after `seen` at `now` (see the module's rules).
    pub fn decide(&mut self, seen: Seen, now: Instant) -> Move {
        if let Seen::Exited(status) = seen {
            return Move::RollBack(format!("the new instance exited ({status})"));
        }
        if self.phase == SwapPhase::Starting
            && now.duration_since(self.began) > self.policy.healthy_deadline
        {
            return Move::RollBack(format!(
                "the new instance was not ready within {} (healthy_deadline)",
                human_duration(self.policy.healthy_deadline)
            ));
        }
        match seen {
            Seen::Probe(result) => {
                self.probing = false;
                self.next_probe = now + self.interval;
                match result {
                    Ok(_) => {
                        self.ready_since.get_or_insert(now);
                    }
                    Err(reason) => {
                        self.ready_since = None;
                        if self.phase == SwapPhase::Switched && self.policy.auto_revert {
                            return Move::RollBack(format!(
                                "the new instance failed its check after the switch: {reason}"
                            ));
                        }
                    }
                }
            }
            _ if self.probing => return Move::Wait,
            _ if now >= self.next_probe => {
                self.probing = true;
                return Move::Probe;
            }
            _ => {}
        }
        let hold = self.policy.min_healthy_time;
        let held = self
            .ready_since
            .is_some_and(|t| now.duration_since(t) >= hold);
        let step_held = self.ready_since.is_some()
            && self
                .switched_at
                .is_some_and(|t| now.duration_since(t) >= hold);
        match self.phase {
            SwapPhase::Starting if held && self.socket => Move::Confirm,
            SwapPhase::Starting if held => Move::Switch(0),
            SwapPhase::Switched if step_held && self.step + 1 < self.steps.len() => {
                Move::Switch(self.step + 1)
            }
            SwapPhase::Switched if step_held => Move::Confirm,
            _ => Move::Wait,
        }
    }

    /// Canary step `step` took effect at `now`.
    pub fn switched(&mut self, step: usize, now: Instant) {
        self.phase = SwapPhase::Switched;
        self.step = step;
        self.switched_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ProbeError;

    /// A failed probe that says `why`.
    fn fail(why: &str) -> ProbeError {
        ProbeError::Runtime(why.into())
    }

    const S: Duration = Duration::from_secs(1);

    fn policy() -> SwapPolicy {
        SwapPolicy {
            min_healthy_time: Duration::from_secs(3),
            healthy_deadline: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            auto_revert: true,
        }
    }

    /// A swap at t0 with probes every second; `run` feeds passing probes until a move other
    /// than waiting or probing, and returns it with the time it came.
    struct Clock {
        p: Progress,
        t0: Instant,
    }

    impl Clock {
        fn new(socket: bool, steps: Vec<u8>) -> Self {
            let t0 = Instant::now();
            Self {
                p: Progress::new(socket, policy(), S, steps, t0),
                t0,
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }

        /// Probes pass every second from `from` on; returns the first decisive move.
        fn run_healthy(&mut self, from: u64) -> (Move, u64) {
            for t in from..from + 120 {
                let now = self.at(t);
                let mut m = self.p.decide(Seen::Nothing, now);
                if m == Move::Probe {
                    m = self.p.decide(Seen::Probe(Ok("ok".into())), now);
                }
                if !matches!(m, Move::Wait | Move::Probe) {
                    return (m, t);
                }
            }
            panic!("no decision in 120 s");
        }
    }

    #[test]
    fn the_first_look_starts_a_probe_and_waits_for_it() {
        let mut c = Clock::new(false, vec![100]);
        assert_eq!(c.p.decide(Seen::Nothing, c.at(0)), Move::Probe);
        assert_eq!(c.p.decide(Seen::Nothing, c.at(1)), Move::Wait);
    }

    #[test]
    fn held_healthy_for_min_healthy_time_it_switches_then_confirms() {
        let mut c = Clock::new(false, vec![100]);
        let (m, t) = c.run_healthy(0);
        assert_eq!((m, t), (Move::Switch(0), 3));
        c.p.switched(0, c.at(t));
        let (m, t2) = c.run_healthy(t + 1);
        assert_eq!((m, t2), (Move::Confirm, 6));
    }

    #[test]
    fn canary_steps_each_hold_before_the_next() {
        let mut c = Clock::new(false, vec![10, 50, 100]);
        let mut moves = Vec::new();
        let mut t = 0;
        loop {
            let (m, at) = c.run_healthy(t);
            moves.push((m.clone(), at));
            match m {
                Move::Switch(n) => c.p.switched(n, c.at(at)),
                _ => break,
            }
            t = at + 1;
        }
        assert_eq!(
            moves,
            vec![
                (Move::Switch(0), 3),
                (Move::Switch(1), 6),
                (Move::Switch(2), 9),
                (Move::Confirm, 12)
            ]
        );
    }

    #[test]
    fn socket_handoff_confirms_without_a_switch() {
        let mut c = Clock::new(true, vec![100]);
        assert_eq!(c.run_healthy(0), (Move::Confirm, 3));
    }

    #[test]
    fn a_failed_probe_before_the_switch_restarts_the_healthy_stretch() {
        let mut c = Clock::new(false, vec![100]);
        c.p.decide(Seen::Nothing, c.at(0));
        c.p.decide(Seen::Probe(Ok("ok".into())), c.at(0));
        c.p.decide(Seen::Nothing, c.at(1));
        let m = c.p.decide(Seen::Probe(Err(fail("refused"))), c.at(1));
        assert_eq!(m, Move::Wait, "no rollback before the switch");
        assert_eq!(c.p.ready_since, None);
        assert_eq!(c.run_healthy(2), (Move::Switch(0), 5));
    }

    #[test]
    fn a_new_instance_that_exits_is_rolled_back() {
        let mut c = Clock::new(false, vec![100]);
        let m = c.p.decide(
            Seen::Exited(ExitStatus {
                code: Some(2),
                signal: None,
                oom_killed: false,
            }),
            c.at(1),
        );
        assert_eq!(
            m,
            Move::RollBack("the new instance exited (exited with code 2)".into())
        );
    }

    #[test]
    fn a_new_instance_never_ready_is_rolled_back_at_the_deadline() {
        let mut c = Clock::new(false, vec![100]);
        for t in 0..=60 {
            let now = c.at(t);
            if c.p.decide(Seen::Nothing, now) == Move::Probe {
                c.p.decide(Seen::Probe(Err(fail("refused"))), now);
            }
        }
        assert_eq!(
            c.p.decide(Seen::Nothing, c.at(61)),
            Move::RollBack("the new instance was not ready within 1m00s (healthy_deadline)".into())
        );
    }

    #[test]
    fn after_the_switch_the_deadline_no_longer_applies() {
        let mut c = Clock::new(false, vec![10, 100]);
        let (_, t) = c.run_healthy(0);
        c.p.switched(0, c.at(t));
        c.p.policy.min_healthy_time = Duration::from_secs(3600);
        for t in t + 1..200 {
            let now = c.at(t);
            let mut m = c.p.decide(Seen::Nothing, now);
            if m == Move::Probe {
                m = c.p.decide(Seen::Probe(Ok("ok".into())), now);
            }
            assert_eq!(m, Move::Wait, "at {t} s");
        }
    }

    #[test]
    fn a_failure_after_the_switch_rolls_back_with_auto_revert() {
        let mut c = Clock::new(false, vec![100]);
        let (_, t) = c.run_healthy(0);
        c.p.switched(0, c.at(t));
        c.p.decide(Seen::Nothing, c.at(t + 1));
        let m = c.p.decide(Seen::Probe(Err(fail("HTTP 500"))), c.at(t + 1));
        assert_eq!(
            m,
            Move::RollBack("the new instance failed its check after the switch: HTTP 500".into())
        );
    }

    #[test]
    fn without_auto_revert_a_failure_after_the_switch_is_left_to_the_health_check() {
        let mut c = Clock::new(false, vec![100]);
        c.p.policy.auto_revert = false;
        let (_, t) = c.run_healthy(0);
        c.p.switched(0, c.at(t));
        c.p.decide(Seen::Nothing, c.at(t + 1));
        let m = c.p.decide(Seen::Probe(Err(fail("HTTP 500"))), c.at(t + 1));
        assert_eq!(m, Move::Wait);
        assert_eq!(c.p.ready_since, None);
        // The next pass counts again; the step is held from the switch on.
        assert_eq!(c.run_healthy(t + 2), (Move::Confirm, t + 3));
    }
}
