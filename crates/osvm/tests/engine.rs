//! The engine through the runtime seam with a runtime that takes 10 s to start an instance
//! (the real process runtime behind a delay: a VM boot or a unikernel image build stands
//! there). Starts run off the engine thread, so every tick and every view (what `osvm ps`
//! reads) and every command (`osvm stop`) is answered long before the start ends (the test
//! allows 5 s, room for a store commit's disk sync on a loaded host; an engine held by the
//! start takes 10 s). The instance comes up when the
//! runtime is done, and one stopped while it started is stopped as soon as it exists.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use osvm_core::model::ComponentStatus;
use osvm_core::{Adoption, Instance, LaunchSpec, Runtime, RuntimeError, RuntimeKind, Wiring};
use osvm_daemon::engine::Engine;
use osvm_daemon::store::Store;
use osvm_sandbox::{SandboxConfig, SandboxRuntime};

/// How long each start takes.
const START_TAKES: Duration = Duration::from_secs(10);
/// What the engine must never take to tick, list components or take a command: half the
/// start, so an engine that waits for a start fails, while a loaded CI host does not. Not a
/// speed goal (the slowest answer is printed; benches measure speed).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The process runtime, made slow.
struct Slow(Arc<SandboxRuntime>);

impl Runtime for Slow {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn start(&self, spec: &LaunchSpec, wiring: Wiring) -> Result<Box<dyn Instance>, RuntimeError> {
        std::thread::sleep(START_TAKES);
        self.0.start(spec, wiring)
    }

    fn adopt(&self, id: &str) -> Result<Adoption, RuntimeError> {
        Runtime::adopt(&*self.0, id)
    }
}

const STACK: &str = r#"
[stack]
name = "slow"

[[component]]
name = "kept"
command = "/bin/busybox"
args = ["sleep", "600"]

[[component]]
name = "dropped"
command = "/bin/busybox"
args = ["sleep", "600"]
"#;

#[test]
fn a_start_that_takes_10s_never_holds_the_engine() {
    let test = "engine slow start";
    if !sandbox_available(test) {
        return;
    }
    if !std::path::Path::new("/bin/busybox").exists() {
        return skip("busybox", test, "needs /bin/busybox");
    }
    let state = StateDir::new("engine-slow");
    let mut config = SandboxConfig::new(osvm_bin());
    config.state_dir = state.path.clone();
    let sandbox = Arc::new(SandboxRuntime::new(config));
    let runtimes = BTreeMap::from([(
        RuntimeKind::Process,
        Arc::new(Slow(sandbox.clone())) as Arc<dyn Runtime>,
    )]);
    let store = Arc::new(Store::open(&state.path.join("osvm.redb")).unwrap());
    let mut engine = Engine::open_with(sandbox, runtimes, store, None).unwrap();
    let stack = osvm_core::stack::parse(STACK, "slow.toml").unwrap();

    let began = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut timed = |what: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        let took = t.elapsed();
        assert!(
            took < ANSWER_WITHIN,
            "{what} took {took:?} while an instance was starting"
        );
        slowest = slowest.max(took);
    };
    timed("apply", &mut || engine.apply(stack.clone()).unwrap());
    let status = |engine: &Engine, name: &str| engine.view(name).unwrap().status;
    let mut stopped_early = false;
    let mut running_after = None;
    while began.elapsed() < START_TAKES * 3 {
        timed("a tick", &mut || {
            engine.tick();
        });
        let mut views = Vec::new();
        timed("the views", &mut || views = engine.views());
        if !stopped_early && began.elapsed() > Duration::from_secs(2) {
            // `osvm stop` while the runtime is still starting it.
            assert_eq!(status(&engine, "dropped"), ComponentStatus::Starting);
            timed("osvm stop", &mut || {
                engine.stop_component("dropped").unwrap()
            });
            stopped_early = true;
        }
        if running_after.is_none() && status(&engine, "kept") == ComponentStatus::Running {
            running_after = Some(began.elapsed());
        }
        // `dropped` shows stopped from `osvm stop` on; it is done once the instance its start
        // brought up (its own start thread may come back after `kept`'s) was stopped too.
        let dropped = engine.view("dropped").unwrap();
        if running_after.is_some()
            && dropped.status == ComponentStatus::Stopped
            && dropped.last_instance.is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let running_after = running_after.expect("`kept` never ran");
    assert!(
        running_after >= START_TAKES,
        "`kept` ran after {running_after:?}: the runtime's delay did not apply"
    );
    let dropped = engine.view("dropped").unwrap();
    assert_eq!(dropped.status, ComponentStatus::Stopped, "{dropped:?}");
    assert!(
        dropped.last_instance.is_some(),
        "the instance that came up after `osvm stop` was stopped: {dropped:?}"
    );
    let kept = engine.view("kept").unwrap();
    assert!(kept.pid.is_some(), "{kept:?}");
    println!("starts took {running_after:?}; the slowest tick, view or command took {slowest:?}");
    engine.shutdown();
}
