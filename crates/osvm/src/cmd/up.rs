//! `osvm up FILE`: every component of a stack in the foreground.
//!
//! A small supervisor loop: it starts each component in its runtime, probes health from inside
//! each component's network namespace, restarts per the restart policy with exponential
//! backoff (the stack's `restart_backoff`, 10 s, doubling to `restart_backoff_max`, 5 min,
//! reset after `restart_reset_after`, 10 min, running; at most `max_restarts` times), and shows a
//! live status table. SIGINT/SIGTERM stops every component within
//! its grace period; the sandboxes' monitors remove their cgroups, and their mounts only ever
//! existed in the sandboxes' own mount namespaces.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use osvm_core::model::ComponentStatus;
use osvm_core::stack::{Component, RestartPolicy, Stack};
use osvm_core::{ExitStatus, Instance, InstanceStats, RuntimeError, RuntimeKind};
use osvm_sandbox::{SandboxInstance, SandboxRuntime};
use serde_json::json;

use super::{SetupFailed, human_bytes, human_duration, sandbox_runtime};
use crate::cli::{Global, Output, UpArgs};
use crate::health::{self, ProbeResult};

/// How often the loop looks at every component.
const TICK: Duration = Duration::from_millis(200);

/// The health of one component, as last probed.
#[derive(Debug, Clone, PartialEq)]
enum Health {
    /// The component has no health check.
    None,
    /// Not probed successfully yet.
    Pending,
    /// The last probe passed.
    Healthy(String),
    /// Probes failed this many times in a row; the last said why.
    Failing(u32, String),
}

impl Health {
    fn short(&self) -> String {
        match self {
            Health::None => "-".into(),
            Health::Pending => "pending".into(),
            Health::Healthy(_) => "healthy".into(),
            Health::Failing(n, _) => format!("failing ({n})"),
        }
    }
}

/// One component and what the loop knows about it.
struct Unit {
    component: Component,
    instance: Option<Arc<SandboxInstance>>,
    status: ComponentStatus,
    health: Health,
    /// Restarts so far (shown), and the exponent of the next backoff.
    restarts: u32,
    backoff_exp: u32,
    started_at: Option<Instant>,
    next_probe: Instant,
    probe: Option<Receiver<ProbeResult>>,
    /// When a stop requested by the loop (failed liveness) escalates to SIGKILL.
    kill_at: Option<Instant>,
    /// Set when the loop stopped the instance because it was unhealthy.
    unhealthy_stop: bool,
    restart_at: Option<Instant>,
    last_exit: Option<ExitStatus>,
    reason: String,
    stats: Option<InstanceStats>,
    cpu_sample: Option<(Instant, u64)>,
    cpu_percent: f64,
}

struct Supervisor {
    stack: Stack,
    runtime: SandboxRuntime,
    units: Vec<Unit>,
    output: Output,
    tty: bool,
    began: Instant,
    drawn_lines: usize,
}

pub fn run(global: &Global, args: UpArgs) -> anyhow::Result<ExitCode> {
    let stack = osvm_core::stack::load(&args.file)?;
    for c in &stack.components {
        if c.runtime != RuntimeKind::Process {
            return Err(SetupFailed(RuntimeError::Unavailable {
                kind: c.runtime,
                reason: format!(
                    "component `{}` asks for the {} runtime, which this release of osvm does not \
                     provide yet; `osvm doctor` shows what the host supports",
                    c.name, c.runtime
                ),
            })
            .into());
        }
    }
    let signals = crate::signals::listen()?;
    let runtime = sandbox_runtime(global)?;
    if let Some(reason) = runtime.unavailable_reason() {
        return Err(SetupFailed(RuntimeError::Unavailable {
            kind: RuntimeKind::Process,
            reason,
        })
        .into());
    }
    let now = Instant::now();
    let units = stack
        .components
        .iter()
        .map(|c| Unit {
            component: c.clone(),
            instance: None,
            status: ComponentStatus::Starting,
            health: if c.health.is_some() {
                Health::Pending
            } else {
                Health::None
            },
            restarts: 0,
            backoff_exp: 0,
            started_at: None,
            next_probe: now,
            probe: None,
            kill_at: None,
            unhealthy_stop: false,
            restart_at: Some(now),
            last_exit: None,
            reason: String::new(),
            stats: None,
            cpu_sample: None,
            cpu_percent: 0.0,
        })
        .collect();
    let mut sup = Supervisor {
        stack,
        runtime,
        units,
        output: global.output,
        tty: std::io::stdout().is_terminal() && global.output == Output::Text,
        began: now,
        drawn_lines: 0,
    };
    sup.event(
        None,
        "up",
        &format!(
            "stack `{}` from {}; Ctrl-C stops it",
            sup.stack.name,
            args.file.display()
        ),
    );
    let code = sup.run(&signals);
    Ok(code)
}

/// The confinement facts that matter at a glance, on one line (`-v` and `osvm run -o json`
/// give all of them).
fn confinement_summary(facts: &[(String, String)]) -> String {
    let get = |k: &str| {
        facts
            .iter()
            .find(|(w, _)| w == k)
            .map(|(_, h)| h.as_str())
            .unwrap_or("?")
    };
    let mut parts = vec![
        format!("uid map {}", get("uid map")),
        format!("capabilities {}", get("capabilities")),
        format!("seccomp {}", get("seccomp")),
        format!("landlock {}", get("landlock")),
    ];
    if facts.iter().any(|(w, _)| w == "tcp bind") {
        parts.push("tcp bind only on listen ports".into());
    }
    parts.push(get("root").to_string());
    parts.join("; ")
}

impl Supervisor {
    fn run(&mut self, signals: &Receiver<nix::sys::signal::Signal>) -> ExitCode {
        let mut last_draw = Instant::now() - Duration::from_secs(10);
        loop {
            if let Ok(sig) = signals.try_recv() {
                self.clear_table();
                self.event(
                    None,
                    "stopping",
                    &format!("{sig}: stopping every component"),
                );
                return self.shutdown();
            }
            let now = Instant::now();
            for i in 0..self.units.len() {
                self.tick_unit(i, now);
            }
            if self.tty && now.duration_since(last_draw) >= Duration::from_secs(1) {
                self.draw();
                last_draw = now;
            }
            if self
                .units
                .iter()
                .all(|u| u.instance.is_none() && u.restart_at.is_none())
            {
                self.clear_table();
                let failed = self
                    .units
                    .iter()
                    .filter(|u| u.status == ComponentStatus::Failed)
                    .count();
                self.event(
                    None,
                    "done",
                    &format!("every component has ended; {failed} failed"),
                );
                return if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                };
            }
            std::thread::sleep(TICK);
        }
    }

    fn tick_unit(&mut self, i: usize, now: Instant) {
        let reset_after = self.stack.restart_reset_after;
        // Ended?
        if let Some(inst) = self.units[i].instance.clone() {
            match inst.try_wait() {
                Ok(Some(status)) => self.on_exit(i, status, now),
                Ok(None) => {}
                Err(e) => self.event(Some(i), "error", &e.to_string()),
            }
        }
        // Due for a (re)start?
        if self.units[i].restart_at.is_some_and(|t| t <= now) {
            self.units[i].restart_at = None;
            self.start(i, now);
        }
        let u = &mut self.units[i];
        let Some(inst) = u.instance.clone() else {
            return;
        };
        // A stop the loop asked for that is taking too long.
        if u.kill_at.is_some_and(|t| t <= now) {
            u.kill_at = None;
            let _ = inst.signal(libc::SIGKILL);
        }
        // Usage.
        if let Ok(stats) = inst.stats() {
            if let Some((t0, c0)) = u.cpu_sample {
                let wall = now.duration_since(t0).as_micros() as f64;
                if wall > 0.0 {
                    u.cpu_percent = (stats.cpu_usage_usec.saturating_sub(c0)) as f64 / wall * 100.0;
                }
            }
            u.cpu_sample = Some((now, stats.cpu_usage_usec));
            u.stats = Some(stats);
        }
        if u.started_at
            .is_some_and(|s| now.duration_since(s) > reset_after)
        {
            u.backoff_exp = 0;
        }
        self.tick_health(i, &inst, now);
    }

    fn tick_health(&mut self, i: usize, inst: &Arc<SandboxInstance>, now: Instant) {
        let u = &mut self.units[i];
        let Some(check) = u.component.health.clone() else {
            if u.status == ComponentStatus::Starting {
                u.status = ComponentStatus::Running;
                self.event(Some(i), "running", "no health check configured");
            }
            return;
        };
        if u.kill_at.is_some() || u.status == ComponentStatus::Stopping {
            return;
        }
        if let Some(rx) = &u.probe {
            let result = match rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => Err("the probe ended without a result".into()),
            };
            u.probe = None;
            u.next_probe = now + check.interval;
            match result {
                Ok(detail) => {
                    let was_starting = u.status == ComponentStatus::Starting;
                    let was_failing = matches!(u.health, Health::Failing(..));
                    u.health = Health::Healthy(detail.clone());
                    u.status = ComponentStatus::Running;
                    if was_starting || was_failing {
                        self.event(Some(i), "healthy", &detail);
                    }
                }
                Err(reason) => {
                    let in_start_period = u
                        .started_at
                        .is_some_and(|s| now.duration_since(s) < check.start_period);
                    if in_start_period {
                        return;
                    }
                    let n = match &u.health {
                        Health::Failing(n, _) => n + 1,
                        _ => 1,
                    };
                    u.health = Health::Failing(n, reason.clone());
                    if n >= check.retries {
                        self.event(
                            Some(i),
                            "unhealthy",
                            &format!("{n} failed probes in a row; last: {reason}"),
                        );
                        let u = &mut self.units[i];
                        u.unhealthy_stop = true;
                        u.status = ComponentStatus::Stopping;
                        u.kill_at = Some(now + u.component.stop_grace);
                        let _ = inst.signal(libc::SIGTERM);
                    }
                }
            }
            return;
        }
        if now >= u.next_probe {
            u.probe = Some(health::spawn(inst.clone(), &check.probe, check.timeout));
        }
    }

    fn start(&mut self, i: usize, now: Instant) {
        let spec = self.units[i].component.launch_spec(&self.stack.name);
        match self.runtime.start_sandbox(&spec) {
            Ok(inst) => {
                let detail = format!(
                    "instance {} (pid {}), logs in {}",
                    inst.id(),
                    inst.init_pid(),
                    inst.instance_dir().display()
                );
                let u = &mut self.units[i];
                u.instance = Some(Arc::new(inst));
                u.started_at = Some(now);
                u.status = ComponentStatus::Starting;
                u.unhealthy_stop = false;
                u.kill_at = None;
                u.probe = None;
                u.cpu_sample = None;
                if u.health != Health::None {
                    u.health = Health::Pending;
                }
                u.next_probe = now;
                self.event(Some(i), "started", &detail);
                if let (Some(port), Some(inst)) = (
                    self.units[i].component.listen.first(),
                    &self.units[i].instance,
                ) {
                    let hint = format!(
                        "port {port} is in the component's own network namespace: \
                         nsenter -t {} -n curl http://127.0.0.1:{port}/",
                        inst.init_pid()
                    );
                    self.event(Some(i), "reach", &hint);
                }
                let confinement = self.units[i]
                    .instance
                    .as_ref()
                    .map(|inst| confinement_summary(&inst.confinement()))
                    .unwrap_or_default();
                self.event(Some(i), "confined", &confinement);
            }
            Err(e) => {
                self.event(Some(i), "start-failed", &e.to_string());
                self.units[i].reason = e.to_string();
                self.schedule_restart(i, now, true);
            }
        }
    }

    fn on_exit(&mut self, i: usize, status: ExitStatus, now: Instant) {
        let u = &mut self.units[i];
        u.instance = None;
        u.probe = None;
        u.kill_at = None;
        u.last_exit = Some(status);
        let failed = !status.success() || u.unhealthy_stop;
        let detail = if u.unhealthy_stop {
            format!("{status} (stopped as unhealthy)")
        } else {
            status.to_string()
        };
        u.reason = detail.clone();
        self.event(Some(i), "exited", &detail);
        self.schedule_restart(i, now, failed);
    }

    fn schedule_restart(&mut self, i: usize, now: Instant, failed: bool) {
        let max = self.stack.max_restarts;
        let (first, ceiling) = (self.stack.restart_backoff, self.stack.restart_backoff_max);
        let u = &mut self.units[i];
        let wanted = match u.component.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        if !wanted {
            u.status = if failed {
                ComponentStatus::Failed
            } else {
                ComponentStatus::Stopped
            };
            return;
        }
        if u.restarts >= max {
            u.status = ComponentStatus::Failed;
            let reason = format!(
                "gave up after {max} restarts (the stack's max_restarts); last: {}",
                u.reason
            );
            u.reason = reason.clone();
            self.event(Some(i), "failed", &reason);
            return;
        }
        let delay = first
            .saturating_mul(1 << u.backoff_exp.min(16))
            .min(ceiling);
        u.backoff_exp += 1;
        u.restarts += 1;
        u.restart_at = Some(now + delay);
        u.status = ComponentStatus::Starting;
        self.event(
            Some(i),
            "restart-scheduled",
            &format!(
                "restart {} in {}",
                self.units[i].restarts,
                human_duration(delay)
            ),
        );
    }

    /// Stops every running component in parallel within its grace period.
    fn shutdown(&mut self) -> ExitCode {
        let mut handles = Vec::new();
        for u in &mut self.units {
            u.restart_at = None;
            if let Some(inst) = u.instance.take() {
                let grace = u.component.stop_grace;
                let name = u.component.name.clone();
                handles.push(std::thread::spawn(move || (name, inst.stop(grace))));
            }
        }
        let mut ok = true;
        for h in handles {
            match h.join() {
                Ok((name, Ok(status))) => {
                    let i = self.units.iter().position(|u| u.component.name == name);
                    if let Some(i) = i {
                        self.units[i].status = ComponentStatus::Stopped;
                        self.units[i].last_exit = Some(status);
                    }
                    let how = match (status.signal, status.code) {
                        (Some(libc::SIGTERM), _) => "ended by the SIGTERM it was sent".to_string(),
                        (Some(libc::SIGKILL), _) => {
                            "killed after its stop grace period".to_string()
                        }
                        _ => status.to_string(),
                    };
                    self.event(i, "stopped", &how);
                }
                Ok((name, Err(e))) => {
                    ok = false;
                    let i = self.units.iter().position(|u| u.component.name == name);
                    self.event(i, "stop-failed", &e.to_string());
                }
                Err(_) => ok = false,
            }
        }
        self.event(None, "down", "every component stopped");
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }

    fn event(&mut self, unit: Option<usize>, event: &str, detail: &str) {
        let name = unit.map(|i| self.units[i].component.name.clone());
        let name = name.as_deref();
        let elapsed = self.began.elapsed().as_secs_f64();
        match self.output {
            Output::Json => {
                let doc = json!({ "t": (elapsed * 1000.0).round() / 1000.0, "component": name, "event": event, "detail": detail });
                let _ = writeln!(std::io::stdout(), "{doc}");
            }
            Output::Text if self.tty => {
                // Events scroll above the live table: take the table down, print, redraw.
                let line = format!(
                    "{}{event}: {detail}",
                    name.map(|n| format!("{n}: ")).unwrap_or_default()
                );
                let had_table = self.drawn_lines > 0;
                self.clear_table();
                let _ = writeln!(std::io::stdout(), "{line}");
                if had_table {
                    self.draw();
                }
            }
            Output::Text => {
                // A closed stdout (the reader went away) must not stop osvm from stopping
                // its components, so write errors are ignored rather than panicking.
                let _ = writeln!(
                    std::io::stdout(),
                    "[{elapsed:7.2}s] {}{event}: {detail}",
                    name.map(|n| format!("{n} ")).unwrap_or_default()
                );
            }
        }
        let _ = std::io::stdout().flush();
    }

    fn table(&self) -> Vec<String> {
        let mut rows = vec![
            [
                "NAME",
                "STATUS",
                "HEALTH",
                "PID",
                "MEMORY",
                "CPU",
                "RESTARTS",
                "UPTIME",
                "LAST EXIT",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let now = Instant::now();
        for u in &self.units {
            let running = u.instance.is_some();
            rows.push(vec![
                u.component.name.clone(),
                u.status.to_string(),
                u.health.short(),
                u.instance
                    .as_ref()
                    .map(|i| i.init_pid().to_string())
                    .unwrap_or_else(|| "-".into()),
                match (&u.stats, u.component.resources.memory_bytes) {
                    (Some(s), Some(limit)) if running => {
                        format!("{} / {}", human_bytes(s.memory_bytes), human_bytes(limit))
                    }
                    (Some(s), None) if running => human_bytes(s.memory_bytes),
                    _ => "-".into(),
                },
                if running {
                    format!("{:.1}%", u.cpu_percent)
                } else {
                    "-".into()
                },
                u.restarts.to_string(),
                u.started_at
                    .filter(|_| running)
                    .map(|s| human_duration(now - s))
                    .unwrap_or_else(|| "-".into()),
                u.last_exit
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        rows.iter()
            .map(|r| {
                r.iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    fn clear_table(&mut self) {
        if self.tty && self.drawn_lines > 0 {
            let _ = write!(std::io::stdout(), "\r\x1b[{}A\x1b[J", self.drawn_lines);
            self.drawn_lines = 0;
            let _ = std::io::stdout().flush();
        }
    }

    fn draw(&mut self) {
        let lines = self.table();
        let mut out = std::io::stdout().lock();
        if self.drawn_lines > 0 {
            let _ = write!(out, "\r\x1b[{}A\x1b[J", self.drawn_lines);
        }
        for l in &lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
        self.drawn_lines = lines.len();
    }
}
