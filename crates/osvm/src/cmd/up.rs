//! `osvm up FILE`: every component of a stack in the foreground, run by the control plane's
//! engine embedded in this process (see `osvm_daemon::engine`), with a live status table.
//!
//! The engine's state lives in `<state dir>/foreground/<stack>.redb`: if this process is
//! killed, the next `osvm up` of the same stack re-adopts the components that still run
//! instead of starting them twice. SIGINT/SIGTERM stops every component within its grace
//! period and forgets the stack; the sandboxes' monitors remove their cgroups, and their mounts
//! only ever existed in the sandboxes' own mount namespaces.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::Context;
use osvm_daemon::engine::Engine;
use osvm_daemon::store::{Event, EventKind, Store};
use serde_json::json;

use super::state_dir;
use crate::cli::{Global, Output, UpArgs};

/// Fails (exit 125, or 2 for a spec the runtime refuses) when a component of `stack` cannot
/// start on this host, naming it, before anything starts; does the slow one-time work the
/// starts need first (a unikernel's image build), with progress. Each component's runtime
/// decides ([`osvm_core::Runtime::prepare`]).
fn preflight(
    runtimes: &osvm_daemon::engine::Runtimes,
    global: &Global,
    stack: &osvm_core::stack::Stack,
) -> anyhow::Result<()> {
    use osvm_core::RuntimeError;
    let mut progress = super::unikernel::printer(global, global.verbose > 0);
    for c in &stack.components {
        let Some(runtime) = runtimes.get(&c.runtime.kind()) else {
            continue;
        };
        runtime
            .prepare(&c.launch_spec(&stack.name), &mut progress)
            .map_err(|e| {
                let named = |m: String| format!("component `{}`: {m}", c.name);
                super::SetupFailed(match e {
                    RuntimeError::Unavailable { kind, reason } => RuntimeError::Unavailable {
                        kind,
                        reason: named(reason),
                    },
                    RuntimeError::InvalidSpec(m) => RuntimeError::InvalidSpec(named(m)),
                    other => other,
                })
            })?;
    }
    Ok(())
}

/// How often the engine looks at every component.
const TICK: Duration = Duration::from_millis(200);

/// Prints events and the live table.
struct Screen {
    output: Output,
    tty: bool,
    began: Instant,
    drawn_lines: usize,
}

pub fn run(global: &Global, args: UpArgs) -> anyhow::Result<ExitCode> {
    let stack = osvm_core::stack::load(&args.file)?;
    super::print_warnings(&stack);
    let sandbox = std::sync::Arc::new(super::sandbox_runtime(global)?);
    let runtimes = osvm_daemon::engine::runtimes(sandbox.clone());
    preflight(&runtimes, global, &stack)?;
    if args.detach {
        return super::control::apply(global, &args.file);
    }
    let signals = crate::signals::listen()?;
    super::ensure_available(&sandbox)?;
    let state = state_dir(global)?;
    let dir = state.join("foreground");
    for d in [&state, &dir] {
        osvm_daemon::daemon::private_dir(d).with_context(|| format!("create {}", d.display()))?;
    }
    let store_path = dir.join(format!("{}.redb", stack.name));
    let store = Store::open(&store_path).with_context(|| {
        format!(
            "is another `osvm up` of stack `{}` running with this state directory?",
            stack.name
        )
    })?;
    let mut engine = Engine::open_with(sandbox, runtimes, std::sync::Arc::new(store), None)?;
    let mut screen = Screen {
        output: global.output,
        tty: std::io::stdout().is_terminal() && global.output == Output::Text,
        began: Instant::now(),
        drawn_lines: 0,
    };
    let name = stack.name.clone();
    engine.note(
        EventKind::Up,
        &format!(
            "stack `{name}` from {}; Ctrl-C stops it",
            args.file.display()
        ),
    );
    engine.apply(stack)?;
    Ok(screen.run(&mut engine, &name, &signals))
}

impl Screen {
    fn run(
        &mut self,
        engine: &mut Engine,
        stack: &str,
        signals: &Receiver<nix::sys::signal::Signal>,
    ) -> ExitCode {
        let mut last_draw = Instant::now() - Duration::from_secs(10);
        loop {
            if let Ok(sig) = signals.try_recv() {
                self.clear_table();
                engine.note(
                    EventKind::Stopping,
                    &format!("{sig}: stopping every component"),
                );
                let mut events = engine.shutdown();
                engine.teardown_network();
                let forgotten = engine.forget_stack(stack);
                engine.note(EventKind::Down, "every component stopped");
                events.extend(engine.tick());
                self.print(&events);
                if let Err(e) = forgotten {
                    let _ = writeln!(std::io::stderr(), "error: forget stack `{stack}`: {e}");
                    return ExitCode::from(1);
                }
                let failed = events.iter().any(|e| e.kind == EventKind::StopFailed);
                return if failed {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                };
            }
            let events = engine.tick();
            self.print(&events);
            if self.tty && last_draw.elapsed() >= Duration::from_secs(1) {
                self.draw(engine);
                last_draw = Instant::now();
            }
            if engine.all_ended() {
                self.clear_table();
                let failed = engine.failed();
                engine.note(
                    EventKind::Done,
                    &format!("every component has ended; {failed} failed"),
                );
                engine.teardown_network();
                let _ = engine.forget_stack(stack);
                let events = engine.tick();
                self.print(&events);
                return if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                };
            }
            std::thread::sleep(TICK);
        }
    }

    fn print(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        self.clear_table();
        let elapsed = self.began.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        // A closed stdout (the reader went away) must not stop osvm from stopping its
        // components, so write errors are ignored rather than panicking.
        for e in events {
            let name = e.component.as_deref();
            let _ = match self.output {
                Output::Json => {
                    let doc = json!({
                        "t": (elapsed * 1000.0).round() / 1000.0,
                        "seq": e.seq,
                        "component": name,
                        "event": e.kind,
                        "detail": e.detail,
                    });
                    writeln!(out, "{doc}")
                }
                Output::Text if self.tty => {
                    writeln!(
                        out,
                        "{}{}: {}",
                        name.map(|n| format!("{n}: ")).unwrap_or_default(),
                        e.kind,
                        e.detail
                    )
                }
                Output::Text => writeln!(
                    out,
                    "[{elapsed:7.2}s] {}{}: {}",
                    name.map(|n| format!("{n} ")).unwrap_or_default(),
                    e.kind,
                    e.detail
                ),
            };
        }
        let _ = out.flush();
    }

    fn clear_table(&mut self) {
        if self.tty && self.drawn_lines > 0 {
            let _ = write!(std::io::stdout(), "\r\x1b[{}A\x1b[J", self.drawn_lines);
            self.drawn_lines = 0;
            let _ = std::io::stdout().flush();
        }
    }

    fn draw(&mut self, engine: &Engine) {
        let lines = table(engine);
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

/// The status table: one row per component.
fn table(engine: &Engine) -> Vec<String> {
    super::table::lines(&engine.views(), false)
}
