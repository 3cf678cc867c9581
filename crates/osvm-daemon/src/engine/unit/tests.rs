//! The lifecycle machine driven by hand, with instants the test chooses: no process, no root,
//! no sleep.

use super::*;
use crate::health::ProbeError;
use osvm_core::stack::HealthProbe;

/// A failed probe that says `why`.
fn fail(why: &str) -> ProbeError {
    ProbeError::Runtime(why.into())
}

const SECOND: Duration = Duration::from_secs(1);

fn settings() -> Settings {
    Settings {
        restart: RestartPolicy::OnFailure,
        max_restarts: 5,
        backoff: Duration::from_secs(10),
        backoff_max: Duration::from_secs(300),
        reset_after: Duration::from_secs(600),
        stop_grace: Duration::from_secs(5),
        health: None,
    }
}

fn check() -> HealthCheck {
    HealthCheck {
        probe: HealthProbe::Tcp { port: 8080 },
        interval: Duration::from_secs(2),
        timeout: SECOND,
        retries: 3,
        start_period: Duration::ZERO,
        ready_within: None,
    }
}

fn code(c: i32) -> ExitStatus {
    ExitStatus {
        code: Some(c),
        signal: None,
        oom_killed: false,
    }
}

fn signalled(s: i32) -> ExitStatus {
    ExitStatus {
        code: None,
        signal: Some(s),
        oom_killed: false,
    }
}

/// A component and the time the test has moved it to.
struct Sim {
    lc: Lifecycle,
    s: Settings,
    t0: Instant,
    now: Instant,
    /// Every action so far, in order.
    log: Vec<Action>,
    ids: u32,
}

impl Sim {
    fn new(s: Settings) -> Self {
        let t0 = Instant::now();
        let lc = Lifecycle::new(
            ComponentRecord::new("st", "web"),
            s.health.is_some(),
            Some(t0),
            t0,
        );
        Self {
            lc,
            s,
            t0,
            now: t0,
            log: Vec::new(),
            ids: 0,
        }
    }

    fn with_health(h: HealthCheck) -> Self {
        Self::new(Settings {
            health: Some(h),
            ..settings()
        })
    }

    fn at(&mut self, secs: f64) -> &mut Self {
        self.now = self.t0 + Duration::from_secs_f64(secs);
        self
    }

    fn elapsed(&self) -> f64 {
        self.now.duration_since(self.t0).as_secs_f64()
    }

    fn see(&mut self, obs: Observation) -> Vec<Action> {
        let out = step(&mut self.lc, &self.s, obs, self.now);
        self.log.extend(out.iter().cloned());
        out
    }

    fn tick(&mut self) -> Vec<Action> {
        self.see(Observation::Tick)
    }

    /// Ticks, and carries out a `Launch` the way the executor does: an id, then started.
    fn tick_and_start(&mut self) -> Vec<Action> {
        let out = self.tick();
        if out.contains(&Action::Launch) {
            self.ids += 1;
            let id = format!("web-{}", self.ids);
            self.see(Observation::Launching { id: id.clone() });
            self.see(Observation::Started { id });
        }
        out
    }

    fn status(&self) -> ComponentStatus {
        self.lc.record.status
    }

    fn events(out: &[Action]) -> Vec<EventKind> {
        out.iter()
            .filter_map(|a| match a {
                Action::Emit(k, _) => Some(*k),
                _ => None,
            })
            .collect()
    }

    fn detail(out: &[Action], kind: EventKind) -> String {
        out.iter()
            .find_map(|a| match a {
                Action::Emit(k, d) if *k == kind => Some(d.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {kind:?} in {out:?}"))
    }

    /// The instance ends with `status`.
    fn exit(&mut self, status: ExitStatus) -> Vec<Action> {
        self.see(Observation::Exited { status, how: None })
    }

    /// Seconds until the scheduled start.
    fn due_in(&self) -> Option<f64> {
        self.lc
            .restart_at
            .map(|t| t.saturating_duration_since(self.now).as_secs_f64())
    }
}

// --- starting -------------------------------------------------------------------------------

#[test]
fn a_new_component_is_launched_on_the_first_tick() {
    let mut sim = Sim::new(settings());
    assert_eq!(sim.tick(), vec![Action::Launch]);
    assert!(sim.lc.launching);
    assert_eq!(sim.lc.restart_at, None);
}

#[test]
fn the_intent_is_saved_before_the_instance_starts() {
    let mut sim = Sim::new(settings());
    sim.tick();
    let out = sim.see(Observation::Launching { id: "web-1".into() });
    assert_eq!(out.last(), Some(&Action::Save));
    assert_eq!(
        sim.lc.record.intent,
        Some(Intent::Start {
            instance: "web-1".into()
        })
    );
    sim.see(Observation::Started { id: "web-1".into() });
    assert_eq!(sim.lc.record.intent, None);
    assert_eq!(sim.lc.record.instance.as_deref(), Some("web-1"));
    assert!(sim.lc.running && !sim.lc.launching);
}

#[test]
fn no_second_start_while_one_is_under_way() {
    let mut sim = Sim::new(settings());
    sim.tick();
    sim.see(Observation::Launching { id: "web-1".into() });
    sim.see(Observation::RestartRequested);
    sim.lc.restart_at = Some(sim.now);
    assert!(!sim.tick().contains(&Action::Launch));
}

#[test]
fn without_a_health_check_a_started_instance_is_running_at_the_next_tick() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    assert_eq!(sim.status(), ComponentStatus::Starting);
    let out = sim.at(0.1).tick();
    assert_eq!(sim.status(), ComponentStatus::Running);
    assert_eq!(Sim::events(&out), vec![EventKind::Running]);
}

#[test]
fn a_failed_start_is_retried_after_the_backoff() {
    let mut sim = Sim::new(settings());
    sim.tick();
    let out = sim.see(Observation::StartFailed("no such program".into()));
    assert_eq!(
        Sim::events(&out),
        vec![EventKind::StartFailed, EventKind::RestartScheduled]
    );
    assert_eq!(sim.lc.record.reason, "no such program");
    assert_eq!(sim.due_in(), Some(10.0));
    assert!(!sim.lc.launching);
    assert!(sim.at(9.9).tick().is_empty());
    assert_eq!(sim.at(10.0).tick(), vec![Action::Launch]);
}

#[test]
fn a_failed_start_with_restart_never_leaves_the_component_failed() {
    let mut sim = Sim::new(Settings {
        restart: RestartPolicy::Never,
        ..settings()
    });
    sim.tick();
    sim.see(Observation::StartFailed("boom".into()));
    assert_eq!(sim.status(), ComponentStatus::Failed);
    assert!(sim.lc.idle());
}

#[test]
fn a_start_that_finishes_after_osvm_stop_is_stopped_at_once() {
    let mut sim = Sim::new(settings());
    sim.tick();
    sim.see(Observation::Launching { id: "web-1".into() });
    sim.see(Observation::StopRequested);
    let out = sim.see(Observation::Started { id: "web-1".into() });
    assert!(out.contains(&Action::Terminate));
    assert_eq!(sim.status(), ComponentStatus::Stopping);
}

// --- restarts and backoff -------------------------------------------------------------------

#[test]
fn the_backoff_doubles_from_10s_to_at_most_5_minutes() {
    let mut sim = Sim::new(Settings {
        restart: RestartPolicy::Always,
        max_restarts: 100,
        ..settings()
    });
    let mut waits = Vec::new();
    for _ in 0..8 {
        let now = sim.elapsed();
        sim.at(now).tick_and_start();
        sim.exit(code(1));
        waits.push(sim.due_in().unwrap() as u64);
        let due = sim.elapsed() + sim.due_in().unwrap();
        sim.at(due);
    }
    assert_eq!(waits, vec![10, 20, 40, 80, 160, 300, 300, 300]);
    assert_eq!(sim.lc.record.restarts, 8);
}

#[test]
fn a_restart_is_announced_with_its_count_and_delay() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    let out = sim.at(1.0).exit(code(3));
    assert_eq!(
        Sim::detail(&out, EventKind::RestartScheduled),
        "restart 1 in 10s"
    );
    assert_eq!(Sim::detail(&out, EventKind::Exited), "exited with code 3");
    assert_eq!(sim.lc.record.reason, "exited with code 3");
    assert_eq!(sim.status(), ComponentStatus::Starting);
}

#[test]
fn on_failure_does_not_restart_after_a_clean_exit() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    sim.exit(code(0));
    assert_eq!(sim.status(), ComponentStatus::Stopped);
    assert!(sim.lc.idle());
}

#[test]
fn always_restarts_after_a_clean_exit() {
    let mut sim = Sim::new(Settings {
        restart: RestartPolicy::Always,
        ..settings()
    });
    sim.tick_and_start();
    sim.exit(code(0));
    assert_eq!(sim.due_in(), Some(10.0));
}

#[test]
fn never_leaves_a_crashed_component_failed() {
    let mut sim = Sim::new(Settings {
        restart: RestartPolicy::Never,
        ..settings()
    });
    sim.tick_and_start();
    sim.exit(signalled(9));
    assert_eq!(sim.status(), ComponentStatus::Failed);
    assert_eq!(sim.lc.record.reason, "killed by signal 9");
}

#[test]
fn max_restarts_gives_up_with_the_last_reason() {
    let mut sim = Sim::new(Settings {
        max_restarts: 2,
        ..settings()
    });
    let mut last = Vec::new();
    for _ in 0..3 {
        sim.tick_and_start();
        last = sim.exit(code(7));
        if let Some(due) = sim.due_in() {
            let t = sim.elapsed() + due;
            sim.at(t);
        }
    }
    assert_eq!(sim.status(), ComponentStatus::Failed);
    assert_eq!(
        Sim::detail(&last, EventKind::Failed),
        "gave up after 2 restarts (the stack's max_restarts); last: exited with code 7"
    );
    assert!(sim.lc.idle());
}

#[test]
fn running_past_reset_after_resets_the_backoff_but_not_the_count() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    sim.exit(code(1));
    sim.at(10.0).tick_and_start();
    assert_eq!(sim.lc.record.backoff_exp, 1);
    sim.at(10.0 + 600.0).tick();
    assert_eq!(sim.lc.record.backoff_exp, 1, "not past reset_after yet");
    let out = sim.at(10.0 + 601.0).tick();
    assert_eq!(sim.lc.record.backoff_exp, 0);
    assert!(out.contains(&Action::Save));
    assert_eq!(sim.lc.record.restarts, 1);
    sim.exit(code(1));
    assert_eq!(sim.due_in(), Some(10.0), "the first delay again");
}

#[test]
fn an_oom_kill_is_a_failure_and_says_so() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    let out = sim.exit(ExitStatus {
        code: None,
        signal: Some(9),
        oom_killed: true,
    });
    assert!(Sim::detail(&out, EventKind::Exited).contains("out of memory"));
    assert_eq!(sim.due_in(), Some(10.0));
}

#[test]
fn what_the_runtime_adds_about_an_end_is_in_the_exit_event() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    let out = sim.see(Observation::Exited {
        status: code(1),
        how: Some("the app panicked".into()),
    });
    assert_eq!(
        Sim::detail(&out, EventKind::Exited),
        "exited with code 1 (the app panicked)"
    );
}

// --- health ---------------------------------------------------------------------------------

#[test]
fn the_first_probe_runs_at_the_first_tick_after_the_start() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    assert_eq!(sim.lc.health, Health::Pending);
    assert_eq!(sim.at(0.01).tick(), vec![Action::Probe]);
    assert!(sim.at(0.5).tick().is_empty(), "one probe at a time");
}

#[test]
fn a_passing_probe_makes_the_component_running_and_healthy() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    sim.tick();
    let out = sim.at(0.2).see(Observation::Probe(Ok("HTTP 200".into())));
    assert_eq!(sim.status(), ComponentStatus::Running);
    assert_eq!(sim.lc.health, Health::Healthy("HTTP 200".into()));
    assert_eq!(Sim::events(&out), vec![EventKind::Healthy]);
    assert_eq!(sim.lc.probe_latency, Some(Duration::from_millis(200)));
}

#[test]
fn probes_repeat_every_interval_after_the_last_result() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    sim.tick();
    sim.at(0.5).see(Observation::Probe(Ok("ok".into())));
    assert!(sim.at(2.4).tick().is_empty());
    assert_eq!(sim.at(2.5).tick(), vec![Action::Probe]);
}

#[test]
fn a_healthy_component_is_announced_once() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    sim.tick();
    sim.see(Observation::Probe(Ok("ok".into())));
    sim.at(3.0).tick();
    let out = sim.see(Observation::Probe(Ok("ok".into())));
    assert!(Sim::events(&out).is_empty());
}

#[test]
fn retries_failed_probes_in_a_row_stop_the_instance_as_unhealthy() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    let mut out = Vec::new();
    for n in 0..3 {
        sim.at(f64::from(n) * 2.0).tick();
        out = sim.see(Observation::Probe(Err(fail("connection refused"))));
    }
    assert_eq!(
        sim.lc.health,
        Health::Failing(3, "connection refused".into())
    );
    assert_eq!(
        Sim::detail(&out, EventKind::Unhealthy),
        "3 failed probes in a row; last: connection refused"
    );
    assert!(out.contains(&Action::Terminate));
    assert_eq!(sim.status(), ComponentStatus::Stopping);
    assert_eq!(sim.lc.stop_reason, Some(StopReason::Unhealthy));
}

#[test]
fn an_unhealthy_instance_that_ends_cleanly_still_counts_as_failed() {
    let mut sim = Sim::with_health(HealthCheck {
        retries: 1,
        ..check()
    });
    sim.tick_and_start();
    sim.tick();
    sim.see(Observation::Probe(Err(fail("500"))));
    let out = sim.at(1.0).exit(signalled(15));
    assert_eq!(
        Sim::detail(&out, EventKind::Exited),
        "killed by signal 15 (stopped as unhealthy)"
    );
    assert_eq!(sim.due_in(), Some(10.0));
    assert_eq!(sim.lc.record.restarts, 1);
}

#[test]
fn a_pass_between_failures_resets_the_count() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    for (t, r) in [
        (0.0, Err(fail("x"))),
        (2.0, Err(fail("x"))),
        (4.0, Ok("ok".into())),
        (6.0, Err(fail("x"))),
        (8.0, Err(fail("x"))),
    ] {
        sim.at(t).tick();
        sim.see(Observation::Probe(r));
    }
    assert_eq!(sim.lc.health, Health::Failing(2, "x".into()));
    assert!(sim.lc.running && sim.lc.kill_at.is_none());
}

#[test]
fn recovering_from_failing_is_announced() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    sim.tick();
    sim.see(Observation::Probe(Ok("ok".into())));
    sim.at(2.0).tick();
    sim.see(Observation::Probe(Err(fail("slow"))));
    sim.at(4.0).tick();
    let out = sim.see(Observation::Probe(Ok("ok again".into())));
    assert_eq!(Sim::events(&out), vec![EventKind::Healthy]);
}

#[test]
fn failures_in_the_start_period_do_not_count() {
    let mut sim = Sim::with_health(HealthCheck {
        start_period: Duration::from_secs(5),
        retries: 1,
        ..check()
    });
    sim.tick_and_start();
    sim.at(1.0).tick();
    let out = sim.see(Observation::Probe(Err(fail("not yet"))));
    assert!(out.is_empty());
    assert_eq!(sim.lc.health, Health::Pending);
    sim.at(5.0).tick();
    sim.see(Observation::Probe(Err(fail("still not"))));
    assert_eq!(sim.status(), ComponentStatus::Stopping);
}

#[test]
fn ready_within_stops_the_instance_and_fails_the_component_for_good() {
    let mut sim = Sim::with_health(HealthCheck {
        ready_within: Some(Duration::from_secs(30)),
        ..check()
    });
    sim.tick_and_start();
    sim.at(0.0).tick();
    sim.see(Observation::Probe(Err(fail("starting"))));
    let out = sim.at(30.5).tick();
    assert_eq!(
        Sim::detail(&out, EventKind::NeverReady),
        "not ready within 30s (ready_within)"
    );
    assert!(out.contains(&Action::Terminate));
    let out = sim.at(31.0).exit(signalled(15));
    assert_eq!(
        Sim::detail(&out, EventKind::Exited),
        "killed by signal 15 (stopped: never ready)"
    );
    assert_eq!(sim.status(), ComponentStatus::Failed);
    assert_eq!(sim.lc.record.reason, "not ready within 30s (ready_within)");
    assert!(sim.lc.idle(), "never restarted");
}

#[test]
fn a_ready_component_has_no_deadline() {
    let mut sim = Sim::with_health(HealthCheck {
        ready_within: Some(Duration::from_secs(30)),
        ..check()
    });
    sim.tick_and_start();
    sim.tick();
    sim.see(Observation::Probe(Ok("ok".into())));
    let out = sim.at(100.0).tick();
    assert_eq!(out, vec![Action::Probe]);
}

#[test]
fn a_probe_result_after_a_stop_request_is_ignored() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    sim.tick();
    let out = sim.see(Observation::StopRequested);
    assert!(out.contains(&Action::CancelProbe));
    let out = sim.see(Observation::Probe(Err(fail("refused"))));
    assert!(out.is_empty());
    assert_eq!(sim.lc.health, Health::Pending);
}

#[test]
fn no_probes_while_stopping() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    sim.see(Observation::StopRequested);
    assert!(!sim.at(3.0).tick().contains(&Action::Probe));
}

// --- stopping -------------------------------------------------------------------------------

#[test]
fn osvm_stop_terminates_then_kills_after_the_grace_period() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    let out = sim.at(1.0).see(Observation::StopRequested);
    let save = out.iter().rposition(|a| *a == Action::Save).unwrap();
    let term = out.iter().position(|a| *a == Action::Terminate).unwrap();
    assert!(
        save < term,
        "the stop intent is saved before SIGTERM: {out:?}"
    );
    assert_eq!(
        sim.lc.record.intent,
        Some(Intent::Stop {
            instance: "web-1".into()
        })
    );
    assert!(!sim.at(5.9).tick().contains(&Action::Kill));
    assert!(sim.at(6.0).tick().contains(&Action::Kill));
    assert!(!sim.at(7.0).tick().contains(&Action::Kill), "one SIGKILL");
}

#[test]
fn a_stopped_component_stays_stopped_whatever_its_exit() {
    let mut sim = Sim::new(Settings {
        restart: RestartPolicy::Always,
        ..settings()
    });
    sim.tick_and_start();
    sim.see(Observation::StopRequested);
    sim.at(6.0).exit(signalled(9));
    assert_eq!(sim.status(), ComponentStatus::Stopped);
    assert!(sim.lc.idle());
    assert!(!sim.lc.record.enabled);
    assert!(sim.at(100.0).tick().is_empty());
}

#[test]
fn osvm_stop_of_a_component_in_backoff_cancels_the_start() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    sim.exit(code(1));
    sim.see(Observation::StopRequested);
    assert_eq!(sim.status(), ComponentStatus::Stopped);
    assert!(sim.at(60.0).tick().is_empty());
}

#[test]
fn osvm_start_clears_the_count_and_starts_now() {
    let mut sim = Sim::new(Settings {
        max_restarts: 1,
        ..settings()
    });
    sim.tick_and_start();
    sim.exit(code(1));
    sim.at(10.0).tick_and_start();
    sim.exit(code(1));
    assert_eq!(sim.status(), ComponentStatus::Failed);
    sim.see(Observation::StartRequested);
    assert_eq!(sim.lc.record.restarts, 0);
    assert_eq!(sim.lc.record.reason, "");
    assert_eq!(sim.status(), ComponentStatus::Starting);
    assert_eq!(sim.tick(), vec![Action::Launch]);
}

#[test]
fn osvm_restart_replaces_the_instance_without_counting_a_restart() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    sim.at(1.0).see(Observation::RestartRequested);
    assert_eq!(sim.lc.stop_reason, Some(StopReason::Replace));
    sim.exit(signalled(15));
    assert_eq!(sim.due_in(), Some(0.0), "at once");
    assert_eq!(sim.lc.record.restarts, 0);
    assert_eq!(sim.tick(), vec![Action::Launch]);
}

#[test]
fn a_changed_spec_replaces_a_running_instance_and_nothing_else() {
    let mut sim = Sim::new(settings());
    let out = sim.see(Observation::Changed);
    assert!(out.is_empty(), "nothing runs yet");
    sim.tick_and_start();
    let out = sim.see(Observation::Changed);
    assert_eq!(Sim::events(&out), vec![EventKind::Changed]);
    assert!(out.contains(&Action::Terminate));
}

#[test]
fn unhealthy_then_replace_keeps_the_stronger_reason() {
    let mut sim = Sim::with_health(HealthCheck {
        retries: 1,
        ..check()
    });
    sim.tick_and_start();
    sim.tick();
    sim.see(Observation::Probe(Err(fail("down"))));
    sim.see(Observation::Changed);
    assert_eq!(sim.lc.stop_reason, Some(StopReason::Replace));
    sim.exit(signalled(15));
    assert_eq!(sim.due_in(), Some(0.0));
}

#[test]
fn a_broken_mcp_session_restarts_the_server_as_unhealthy() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    let out = sim.see(Observation::Broken("instance web-1: wrote garbage".into()));
    assert_eq!(Sim::events(&out), vec![EventKind::McpFailed]);
    assert_eq!(sim.lc.stop_reason, Some(StopReason::Unhealthy));
    sim.exit(code(0));
    assert_eq!(sim.due_in(), Some(10.0), "counted as a failure");
}

// --- removal --------------------------------------------------------------------------------

#[test]
fn a_removed_component_stops_and_is_never_started_again() {
    let mut sim = Sim::new(Settings {
        restart: RestartPolicy::Always,
        ..settings()
    });
    sim.tick_and_start();
    let out = sim.see(Observation::Removed);
    assert!(out.contains(&Action::Terminate));
    sim.exit(signalled(15));
    assert_eq!(sim.status(), ComponentStatus::Stopped);
    assert!(sim.lc.idle() && sim.lc.removing);
}

#[test]
fn a_removed_component_that_was_starting_is_stopped_when_it_comes_up() {
    let mut sim = Sim::new(settings());
    sim.tick();
    sim.see(Observation::Launching { id: "web-1".into() });
    sim.see(Observation::Removed);
    let out = sim.see(Observation::Started { id: "web-1".into() });
    assert!(out.contains(&Action::Terminate));
}

// --- adoption after a daemon crash ----------------------------------------------------------

fn restarted(record: ComponentRecord) -> Sim {
    let mut sim = Sim::new(settings());
    sim.lc = Lifecycle::new(record, false, None, sim.now);
    sim
}

#[test]
fn an_adopted_instance_keeps_its_uptime_and_clears_its_intent() {
    let mut record = ComponentRecord::new("st", "web");
    record.intent = Some(Intent::Start {
        instance: "web-1".into(),
    });
    let mut sim = restarted(record);
    sim.at(100.0);
    let out = sim.see(Observation::Adopted {
        id: "web-1".into(),
        age: Duration::from_secs(40),
    });
    assert_eq!(out, vec![Action::Save]);
    assert_eq!(sim.lc.record.intent, None);
    assert_eq!(sim.lc.started_at, Some(sim.t0 + Duration::from_secs(60)));
    let out = sim.tick();
    assert_eq!(Sim::events(&out), vec![EventKind::Running]);
    assert_eq!(sim.status(), ComponentStatus::Running);
    assert!(
        !sim.log.contains(&Action::Launch),
        "never a second instance"
    );
}

#[test]
fn an_adopted_instance_that_was_being_stopped_is_stopped() {
    let mut record = ComponentRecord::new("st", "web");
    record.intent = Some(Intent::Stop {
        instance: "web-1".into(),
    });
    let mut sim = restarted(record);
    let out = sim.see(Observation::Adopted {
        id: "web-1".into(),
        age: SECOND,
    });
    assert!(out.contains(&Action::Terminate));
}

#[test]
fn an_instance_that_ended_while_no_engine_ran_is_restarted_per_policy() {
    let mut sim = restarted(ComponentRecord::new("st", "web"));
    let out = sim.see(Observation::EndedWhileAway {
        id: "web-1".into(),
        status: code(2),
    });
    assert_eq!(
        Sim::events(&out),
        vec![
            EventKind::EndedWhileAway,
            EventKind::Exited,
            EventKind::RestartScheduled
        ]
    );
    assert_eq!(sim.lc.record.last_instance.as_deref(), Some("web-1"));
    assert_eq!(sim.lc.record.instance, None);
}

#[test]
fn a_lost_instance_starts_again_unless_the_component_was_stopped() {
    let mut sim = restarted(ComponentRecord::new("st", "web"));
    sim.see(Observation::Lost("instance web-1: gone".into()));
    assert_eq!(sim.due_in(), Some(0.0));

    let mut record = ComponentRecord::new("st", "web");
    record.status = ComponentStatus::Stopped;
    let mut sim = restarted(record);
    sim.see(Observation::Lost("instance web-1: gone".into()));
    assert_eq!(sim.due_in(), None);
}

#[test]
fn a_backoff_running_at_the_crash_is_kept() {
    let mut sim = restarted(ComponentRecord::new("st", "web"));
    sim.see(Observation::Resume {
        wait: Duration::from_secs(7),
    });
    assert_eq!(sim.due_in(), Some(7.0));
    let mut record = ComponentRecord::new("st", "web");
    record.status = ComponentStatus::Failed;
    let mut sim = restarted(record);
    sim.see(Observation::Resume {
        wait: Duration::ZERO,
    });
    assert_eq!(sim.due_in(), None, "a failed component stays failed");
}

// --- hot-swap -------------------------------------------------------------------------------

#[test]
fn during_a_swap_a_healthy_probe_shows_upgrading() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    sim.see(Observation::SwapBegan);
    sim.tick();
    sim.see(Observation::Probe(Ok("ok".into())));
    assert_eq!(sim.status(), ComponentStatus::Upgrading);
}

#[test]
fn the_old_instance_dying_during_a_swap_is_left_to_the_swap() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    sim.see(Observation::SwapBegan);
    sim.exit(code(1));
    assert!(sim.lc.idle(), "no restart scheduled by the lifecycle");
    assert_eq!(sim.lc.record.restarts, 0);
}

#[test]
fn a_confirmed_swap_makes_the_new_instance_the_components() {
    let mut sim = Sim::with_health(check());
    sim.tick_and_start();
    sim.see(Observation::SwapBegan);
    let began = sim.t0 + SECOND;
    sim.at(5.0).see(Observation::SwapConfirmed {
        id: "web-2".into(),
        began,
    });
    assert_eq!(sim.lc.record.instance.as_deref(), Some("web-2"));
    assert_eq!(sim.lc.record.last_instance.as_deref(), Some("web-1"));
    assert_eq!(sim.lc.started_at, Some(sim.t0 + SECOND));
    assert!(matches!(sim.lc.health, Health::Healthy(_)));
    sim.see(Observation::SwapEnded);
    assert_eq!(sim.status(), ComponentStatus::Running);
}

#[test]
fn a_rollback_after_the_old_instance_died_restarts_the_component() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    sim.see(Observation::SwapBegan);
    sim.exit(code(1));
    let out = sim.see(Observation::SwapEnded);
    assert_eq!(Sim::events(&out), vec![EventKind::RestartScheduled]);
    assert_eq!(sim.due_in(), Some(10.0));
}

#[test]
fn a_rollback_with_the_old_instance_alive_leaves_it_running() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    sim.tick();
    sim.see(Observation::SwapBegan);
    assert_eq!(sim.status(), ComponentStatus::Upgrading);
    sim.see(Observation::SwapEnded);
    assert_eq!(sim.status(), ComponentStatus::Running);
    assert_eq!(sim.lc.record.instance.as_deref(), Some("web-1"));
}

#[test]
fn a_swap_abandoned_by_osvm_stop_leaves_the_component_stopped() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    sim.see(Observation::SwapBegan);
    sim.see(Observation::StopRequested);
    // The swap's rollback ends before the old instance has stopped: it keeps stopping.
    sim.see(Observation::SwapEnded);
    assert_eq!(sim.status(), ComponentStatus::Stopping);
    sim.at(1.0).exit(signalled(15));
    assert_eq!(sim.status(), ComponentStatus::Stopped);
    assert!(sim.lc.idle());
}

#[test]
fn a_swap_that_ends_after_its_component_was_removed_does_not_restart_it() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    sim.see(Observation::SwapBegan);
    sim.see(Observation::Removed);
    sim.at(1.0).exit(signalled(15));
    let out = sim.see(Observation::SwapEnded);
    assert!(
        !Sim::events(&out).contains(&EventKind::RestartScheduled),
        "{out:?}"
    );
    assert_eq!(sim.status(), ComponentStatus::Stopped);
    assert!(sim.lc.idle());
}

#[test]
fn an_instance_with_a_health_check_is_ready_only_once_it_passes() {
    let mut sim = Sim::with_health(check());
    assert!(!sim.lc.ready(), "nothing runs yet");
    sim.tick_and_start();
    assert!(!sim.lc.ready(), "started, not probed");
    sim.tick();
    sim.at(0.1).see(Observation::Probe(Err(fail("refused"))));
    assert!(!sim.lc.ready(), "a failed probe");
    sim.at(2.2).tick();
    sim.at(2.3).see(Observation::Probe(Ok("HTTP 200".into())));
    assert!(sim.lc.ready(), "passed");
    // A failing probe below retries keeps it serving; reaching retries stops it, and a stopping
    // instance takes no new traffic.
    for (k, t) in [4.4, 6.6, 8.8].into_iter().enumerate() {
        sim.at(t).tick();
        sim.at(t + 0.1)
            .see(Observation::Probe(Err(fail("timeout"))));
        assert_eq!(sim.lc.ready(), k < 2, "after {} failures", k + 1);
    }
    sim.exit(signalled(15));
    assert!(!sim.lc.ready());
    // Its next instance starts over.
    sim.at(30.0).tick_and_start();
    assert!(sim.lc.running);
    assert!(!sim.lc.ready());
}

#[test]
fn an_instance_without_a_health_check_is_ready_while_it_runs_and_not_while_it_stops() {
    let mut sim = Sim::new(settings());
    sim.tick_and_start();
    assert!(sim.lc.ready());
    sim.see(Observation::StopRequested);
    assert!(!sim.lc.ready(), "stopping");
}

#[test]
fn an_adopted_instance_with_a_health_check_keeps_serving_until_a_probe_fails_it() {
    let mut sim = Sim::with_health(check());
    sim.lc = Lifecycle::new(ComponentRecord::new("st", "web"), true, None, sim.now);
    sim.see(Observation::Adopted {
        id: "web-1".into(),
        age: Duration::from_secs(40),
    });
    assert!(
        sim.lc.ready(),
        "a restarted engine does not take a serving instance out of its service"
    );
}
