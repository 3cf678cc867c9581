//! The reconcile loop: desired state (applied stacks) against observed state (instances).
//!
//! The engine owns one `Unit` per component of every applied stack: its spec, its
//! `Lifecycle` and the handles (instance, probe, start in flight). What happens to a
//! component is decided by a pure state machine, `unit::step`: the engine feeds it what it
//! observed (an instance started or ended, a probe returned, a user asked to stop, time
//! passed) and performs the `Action`s it returns (launch, SIGTERM, SIGKILL, probe, write
//! the record, log an event). Restarts wait their backoff (the stack's `restart_backoff`
//! doubling up to `restart_backoff_max`, reset after `restart_reset_after` of running, at most
//! `max_restarts` times, then `Failed` with the reason; see `policy`); health probes gate
//! `Running`, and `retries` failures in a row stop the instance as unhealthy.
//!
//! Every decision is durable: the component's record (status, instance, restarts, backoff,
//! last exit, reason) is written to the [`Store`] when it changes, and an action's *intent*
//! (start instance X, stop instance X) is written before the action and cleared after. When
//! the engine opens a store that a killed engine left behind, it re-adopts the instances that
//! still run through their runtime, records the ones that ended meanwhile, and starts only
//! what is really missing — never a component twice.
//!
//! Runtimes are reached only through [`osvm_core::Runtime`] and [`osvm_core::Instance`], held
//! by kind; starts run off the engine thread (`boot`), so the engine keeps ticking and
//! answering while a VM boots. The rest is glue, one concern per module: `recover` (after a
//! restart), `trust` (identity and CA rotation), `hub` (the hub network and policy edits),
//! `mcp` (the gateway), `swap` (hot-swap, its readiness clock in `swap/progress.rs`) and
//! `views` (what clients see).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use osvm_core::model::ComponentStatus;
use osvm_core::stack::{Component, Stack};
use osvm_core::{Adoption, ExitStatus, InstanceStats, Runtime, RuntimeKind, Wiring};
use osvm_microvm::{MicroVmConfig, MicroVmInstance, MicroVmRuntime};
use osvm_sandbox::{SandboxRuntime, new_instance_id};
use osvm_unikernel::{UnikernelInstance, UnikernelRuntime};

use crate::workload::Workload;
use serde::{Deserialize, Serialize};

mod boot;
mod hub;
mod mcp;
mod policy;
mod recover;
mod swap;
mod trust;
mod unit;
mod views;

pub use boot::StartError;
use boot::{Booting, Slot};
use mcp::stdio_mcp;
pub use trust::IdentityError;
use trust::{CA_CHECK_EVERY, HOUSEKEEPING_EVERY};
pub use views::{ComponentView, Health};

use unit::{Action, Lifecycle, Observation, Settings};

pub use swap::{SwapPlan, SwapRequest};

use crate::health::{self, ProbeResult};
use crate::identity::{self, Delivered};
use crate::store::{
    ComponentRecord, Event, EventKind, InstanceRecord, Intent, Store, StoreError, now_ms,
};

/// One component: its spec, its lifecycle (pure state, see [`unit`]) and the handles the
/// executor holds for it.
struct Unit {
    /// The component as applied.
    component: Component,
    /// Status, record, timers: changed only by [`unit::step`].
    life: Lifecycle,
    /// Its running instance.
    instance: Option<Arc<Workload>>,
    /// The health probe in flight.
    probe: Option<Receiver<ProbeResult>>,
    /// When the component's certificate is due for renewal.
    renew_at: Option<Instant>,
    /// When it last got a certificate.
    delivered_at: Option<Instant>,
    stats: Option<InstanceStats>,
    cpu_sample: Option<(Instant, u64)>,
    cpu_percent: f64,
    /// A hot-swap under way.
    swap: Option<swap::Swap>,
    /// A start finishing on its own thread (a boot takes seconds; the engine keeps ticking).
    booting: Option<Booting>,
}

/// The runtimes an engine starts instances with, by kind.
pub type Runtimes = BTreeMap<RuntimeKind, Arc<dyn Runtime>>;

/// osvm's runtimes, each confining what it runs with `sandbox` (a guest's emulator too).
pub fn runtimes(sandbox: Arc<SandboxRuntime>) -> Runtimes {
    let state_dir = sandbox.config().state_dir.clone();
    BTreeMap::from([
        (RuntimeKind::Process, sandbox.clone() as Arc<dyn Runtime>),
        (
            RuntimeKind::MicroVm,
            Arc::new(MicroVmRuntime::new(
                sandbox.clone(),
                MicroVmConfig::new(state_dir.clone()),
            )) as _,
        ),
        (
            RuntimeKind::Unikernel,
            Arc::new(UnikernelRuntime::new(sandbox, state_dir)) as _,
        ),
    ])
}

impl Unit {
    /// A unit for `component` with `record`, `due` to start (or not).
    fn new(component: Component, record: ComponentRecord, due: Option<Instant>) -> Self {
        let life = Lifecycle::new(record, component.health.is_some(), due, Instant::now());
        Self {
            component,
            life,
            instance: None,
            probe: None,
            renew_at: None,
            delivered_at: None,
            stats: None,
            cpu_sample: None,
            cpu_percent: 0.0,
            swap: None,
            booting: None,
        }
    }
}

/// Errors of requests about one component.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No component has that name.
    #[error("no component is called `{0}`")]
    NotFound(String),
    /// Several stacks have a component of that name.
    #[error("several stacks have a component called `{0}`; name one of {1:?}")]
    Ambiguous(String, Vec<String>),
    /// No stack has that name, or a stack has no such rule.
    #[error("{0}")]
    Missing(String),
    /// The request makes no sense for this stack.
    #[error("{0}")]
    Invalid(String),
    /// The change could not be stored.
    #[error("{0}")]
    Store(String),
    /// A new instance could not be started (a swap's).
    #[error("the new instance cannot start: {0}")]
    Start(#[from] StartError),
}

/// Why a stack could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// It could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// It publishes a host address another stack publishes.
    #[error("{0}")]
    Published(String),
    /// It declares an MCP server whose name or tool prefix another stack's server has.
    #[error("{0}")]
    McpServer(String),
}

/// A change to a stack's policy made through the API.
#[derive(Debug, Clone)]
pub enum PolicyEdit {
    /// Append a rule.
    Add(osvm_core::stack::PolicyRule),
    /// Remove the rule at this index.
    Remove(usize),
}

/// The reconcile loop's state.
pub struct Engine {
    /// The process runtime's host side: the state directory and the uid ranges that own each
    /// component's files (its identity key).
    runtime: Arc<SandboxRuntime>,
    /// What starts and adopts instances, by kind: the only seam to the runtimes.
    runtimes: Runtimes,
    store: Arc<Store>,
    stacks: BTreeMap<String, Stack>,
    units: Vec<Unit>,
    /// Events not yet handed to the caller.
    pending: Vec<Event>,
    /// When CA rotations were last followed.
    last_housekeeping: Instant,
    /// When the CAs' expiry was last checked (`None`: not yet).
    last_ca_check: Option<Instant>,
    /// CA rotations under way, by trust domain, and when this engine noticed each.
    rotations: BTreeMap<String, Instant>,
    /// The hub network, once a `network = "hub"` stack needed it.
    net: Option<crate::network::NetPlane>,
    /// Published traffic: when it was last reported, and the kernel's counts then, by
    /// (stack, component, port): (accepted, refused).
    published_report: (Instant, BTreeMap<hub::PublishedPort, (u64, u64)>),
    /// Host processes found listening on published addresses, already warned about.
    published_listeners: BTreeSet<String>,
    /// The MCP gateway that MCP server components are attached to (the daemon's; `osvm up`
    /// runs without one, and starts MCP stdio servers with their stdout logged).
    mcp: Option<osvm_mcp::Gateway>,
    /// Failures the gateway reported for instances still booting (the gateway connects to a
    /// server as soon as it runs, before the engine has recorded the start): followed once
    /// the start is recorded.
    mcp_failures_early: Vec<osvm_mcp::gateway::Failure>,
}

pub use osvm_core::quantity::format_duration as human_duration;

impl Engine {
    /// Opens the engine on `store`, re-adopting whatever a previous engine left running, with
    /// MCP server components attached to `gateway` (the daemon's; the foreground `osvm up` has
    /// none). The gateway is known before recovery: a stdio server's channel died with the
    /// previous engine, so it is started again rather than adopted.
    pub fn open(
        runtime: SandboxRuntime,
        store: Arc<Store>,
        gateway: Option<osvm_mcp::Gateway>,
    ) -> Result<Self, StoreError> {
        let runtime = Arc::new(runtime);
        Self::open_with(runtime.clone(), runtimes(runtime), store, gateway)
    }

    /// [`Engine::open`] with the runtimes given: `sandbox` keeps the state and allocates the
    /// components' uid ranges, `runtimes` start and adopt instances.
    pub fn open_with(
        runtime: Arc<SandboxRuntime>,
        runtimes: Runtimes,
        store: Arc<Store>,
        gateway: Option<osvm_mcp::Gateway>,
    ) -> Result<Self, StoreError> {
        let mut engine = Self {
            runtime,
            runtimes,
            store,
            stacks: BTreeMap::new(),
            units: Vec::new(),
            pending: Vec::new(),
            last_housekeeping: Instant::now(),
            last_ca_check: None,
            rotations: BTreeMap::new(),
            net: None,
            published_report: (Instant::now(), BTreeMap::new()),
            published_listeners: BTreeSet::new(),
            mcp: gateway,
            mcp_failures_early: Vec::new(),
        };
        let records: BTreeMap<String, ComponentRecord> = engine
            .store
            .components()?
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        for stack in engine.store.stacks()? {
            let stack = stack.stack;
            for c in &stack.components {
                let key = crate::store::component_key(&stack.name, &c.name);
                let record = records
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| ComponentRecord::new(&stack.name, &c.name));
                engine.units.push(Unit::new(c.clone(), record, None));
            }
            engine.stacks.insert(stack.name.clone(), stack);
        }
        engine.configure_mcp();
        for i in 0..engine.units.len() {
            engine.recover(i);
        }
        // Swaps a killed engine left half done: finished or undone now, their second hub
        // slot cleared once the hub is open below.
        let unswapped: Vec<(String, String)> = (0..engine.units.len())
            .filter_map(|i| engine.recover_swap(i))
            .collect();
        // Components of a stack removed just before the previous engine died: stop what still
        // runs of them, then forget them.
        for record in records
            .values()
            .filter(|r| !engine.stacks.contains_key(&r.stack))
        {
            if let Some(id) = record.instance.clone().or(match &record.intent {
                Some(Intent::Start { instance }) | Some(Intent::Stop { instance }) => {
                    Some(instance.clone())
                }
                None => None,
            }) {
                // Which runtime ran it is not recorded: each stops what is its own.
                for runtime in engine.runtimes.values() {
                    runtime.stop_leftovers(&id);
                }
            }
            engine.store.remove_component(&record.stack, &record.name)?;
        }
        // A restarted daemon rebuilds the hub's ruleset from the stored stacks at once, so it
        // knows what it enforces (and can cut it when revoked) before anything starts.
        if engine
            .stacks
            .values()
            .any(|s| s.network == osvm_core::stack::StackNetwork::Hub)
        {
            match crate::network::NetPlane::open(&engine.runtime.config().state_dir) {
                Ok(plane) => {
                    engine.use_plane(plane);
                    engine.reapply_network();
                    // Socket-activated instances that still run hold their listening
                    // sockets: take copies back for the next instance.
                    for i in 0..engine.units.len() {
                        if let Some(inst) = engine.units[i].instance.clone()
                            && let Err(e) = engine.listeners_for(i, Some(&inst))
                        {
                            engine.note(EventKind::NetworkFailed, &e.to_string());
                        }
                    }
                    let stacks = engine.stacks.clone();
                    for (stack, component) in unswapped {
                        if let Some(plane) = engine.net.as_mut()
                            && let Err(e) = plane.drop_next(&stacks, &stack, &component)
                        {
                            engine.note(EventKind::NetworkFailed, &e.to_string());
                        }
                    }
                }
                Err(e) => engine.note(
                    EventKind::NetworkFailed,
                    &format!("unavailable: the hub network: {e}"),
                ),
            }
        }
        Ok(engine)
    }

    /// Applies `stack` as desired state: new components start, changed ones are replaced,
    /// removed ones stop.
    pub fn apply(&mut self, stack: Stack) -> Result<(), ApplyError> {
        // Clients name a tool `<prefix>.<tool>`: an MCP server's name and prefix are one
        // stack's, or a second stack could take calls meant for the first.
        for (c, spec) in stack
            .components
            .iter()
            .filter_map(|c| c.mcp.as_ref().map(|m| (c, m)))
        {
            let clash = self
                .stacks
                .values()
                .filter(|s| s.name != stack.name)
                .flat_map(|s| s.components.iter().map(move |o| (s, o)))
                .find_map(|(s, o)| {
                    let theirs = o.mcp.as_ref()?;
                    (theirs.name == spec.name || theirs.prefix == spec.prefix)
                        .then_some((s, o, theirs))
                });
            if let Some((s, o, theirs)) = clash {
                return Err(ApplyError::McpServer(format!(
                    "component `{}` declares MCP server `{}` (tools `{}.*`), but stack `{}` already has server `{}` (tools `{}.*`, component `{}`): give one of them another `name` or `prefix` in its `mcp` table",
                    c.name, spec.name, spec.prefix, s.name, theirs.name, theirs.prefix, o.name
                )));
            }
        }
        // A host address is published by one component of one stack.
        for (c, p) in stack
            .components
            .iter()
            .flat_map(|c| c.publish.iter().map(move |p| (c, p)))
        {
            let taken = self
                .stacks
                .values()
                .filter(|s| s.name != stack.name)
                .flat_map(|s| s.components.iter().map(move |o| (s, o)))
                .find_map(|(s, o)| o.publish.iter().find(|q| q.overlaps(p)).map(|q| (s, o, q)));
            if let Some((s, o, q)) = taken {
                return Err(ApplyError::Published(format!(
                    "component `{}` publishes host address {}, which `{}/{}` already publishes ({q})",
                    c.name, p.host, s.name, o.name
                )));
            }
            // A process of the host listening there would lose its new connections to the DNAT.
            if let Some(l) = osvm_net::listeners::on_port(p.host.port())
                .into_iter()
                .find(|l| l.covers(*p.host.ip()))
            {
                return Err(ApplyError::Published(format!(
                    "component `{}` publishes host address {}, where {l} already listens on {}",
                    c.name,
                    p.host,
                    std::net::SocketAddr::new(l.addr, l.port)
                )));
            }
        }
        self.store.apply_stack(&stack)?;
        let now = Instant::now();
        for c in &stack.components {
            match self
                .units
                .iter()
                .position(|u| u.life.record.stack == stack.name && u.component.name == c.name)
            {
                Some(i) => {
                    let changed = self.units[i].component != *c;
                    self.units[i].component = c.clone();
                    if changed {
                        self.abandon_swap(i, now, "the component's spec changed");
                        self.observe(i, Observation::Changed, now);
                    }
                }
                None => {
                    let record = self
                        .store
                        .component(&stack.name, &c.name)?
                        .unwrap_or_else(|| ComponentRecord::new(&stack.name, &c.name));
                    self.units.push(Unit::new(c.clone(), record, Some(now)));
                }
            }
        }
        for i in 0..self.units.len() {
            let u = &self.units[i];
            if u.life.record.stack == stack.name
                && !stack.components.iter().any(|c| c.name == u.component.name)
            {
                self.emit(i, EventKind::Removed, "no longer in the stack; stopping it");
                self.abandon_swap(i, now, "the component left its stack");
                self.observe(i, Observation::Removed, now);
            }
        }
        self.stacks.insert(stack.name.clone(), stack);
        self.collect_removed();
        // Policy may have changed without any component restarting.
        self.reapply_network();
        self.configure_mcp();
        Ok(())
    }

    /// Drops units that were removed and have stopped, their records, and stacks left empty.
    fn collect_removed(&mut self) {
        let mut left_hub = Vec::new();
        let mut released = Vec::new();
        let mut i = 0;
        while i < self.units.len() {
            let u = &self.units[i];
            if u.life.removing && u.instance.is_none() && !u.life.launching && u.swap.is_none() {
                let _ = self
                    .store
                    .remove_component(&u.life.record.stack, &u.component.name);
                // Whatever runtime it ran in last (a swap may have changed it).
                released.extend(
                    self.runtimes
                        .values()
                        .filter_map(|r| r.released(&u.life.record.stack, &u.component.name)),
                );
                left_hub.push((u.life.record.stack.clone(), u.component.name.clone()));
                self.units.remove(i);
            } else {
                i += 1;
            }
        }
        for problem in released {
            self.note(EventKind::Warning, &problem);
        }
        let units = &self.units;
        let store = &self.store;
        let before = self.stacks.len();
        self.stacks.retain(|name, _| {
            units.iter().any(|u| &u.life.record.stack == name)
                || store.stack(name).ok().flatten().is_some()
        });
        if self.stacks.len() != before {
            self.configure_mcp();
        }
        if let Some(plane) = self.net.as_mut()
            && !left_hub.is_empty()
        {
            let failures: Vec<String> = left_hub
                .iter()
                .filter_map(|(stack, component)| {
                    plane.leave(stack, component).err().map(|e| e.to_string())
                })
                .collect();
            for e in failures {
                self.note(EventKind::NetworkFailed, &e);
            }
            self.reapply_network();
        }
        // The last hub stack is gone: so is the hub (its proxies, namespaces and ruleset).
        if self.net.is_some()
            && !self
                .stacks
                .values()
                .any(|s| s.network == osvm_core::stack::StackNetwork::Hub)
        {
            self.teardown_network();
            self.note(
                EventKind::Network,
                "no stack uses the hub any more; removed it",
            );
        }
    }

    fn stack_of(&self, i: usize) -> &Stack {
        &self.stacks[&self.units[i].life.record.stack]
    }

    fn emit(&mut self, i: usize, kind: EventKind, detail: &str) {
        let u = &self.units[i];
        let event = Event {
            seq: 0,
            at_ms: now_ms(),
            stack: Some(u.life.record.stack.clone()),
            component: Some(u.component.name.clone()),
            kind,
            detail: detail.into(),
        };
        self.push(event);
    }

    fn push(&mut self, event: Event) {
        let event = match self.store.append_event(event.clone()) {
            Ok(e) => e,
            Err(e) => {
                self.pending.push(Event {
                    kind: EventKind::StoreError,
                    detail: e.to_string(),
                    ..event.clone()
                });
                event
            }
        };
        self.pending.push(event);
    }

    /// Records an event that concerns no single component.
    pub fn note(&mut self, kind: EventKind, detail: &str) {
        self.push(Event {
            seq: 0,
            at_ms: now_ms(),
            stack: None,
            component: None,
            kind,
            detail: detail.into(),
        });
    }

    /// Writes unit `i`'s record (a scheduled start as the wall-clock time it is due, so that a
    /// restarted daemon keeps the backoff).
    fn save(&mut self, i: usize) {
        let life = &mut self.units[i].life;
        life.record.next_start_ms = life
            .restart_at
            .map(|t| now_ms() + t.saturating_duration_since(Instant::now()).as_millis() as u64);
        let record = life.record.clone();
        if let Err(e) = self.store.put_component(&record) {
            self.emit(i, EventKind::StoreError, &e.to_string());
        }
    }

    /// Feeds `obs` to unit `i`'s lifecycle and performs what it decides.
    fn observe(&mut self, i: usize, obs: Observation, now: Instant) {
        let settings = Settings::of(&self.units[i].component, self.stack_of(i));
        let actions = unit::step(&mut self.units[i].life, &settings, obs, now);
        // Traffic follows readiness before anything is announced: a client that saw the
        // `healthy` event is routed to the instance.
        self.route_if_ready(i);
        for action in actions {
            self.perform(i, action, now);
        }
    }

    /// Carries out one of the lifecycle's actions.
    fn perform(&mut self, i: usize, action: Action, now: Instant) {
        let inst = self.units[i].instance.clone();
        match action {
            Action::Save => self.save(i),
            Action::Emit(kind, detail) => self.emit(i, kind, &detail),
            Action::Launch => self.start(i, now),
            Action::Terminate => {
                if let Some(inst) = inst {
                    let _ = inst.signal(libc::SIGTERM);
                }
            }
            Action::Kill => {
                if let Some(inst) = inst {
                    let _ = inst.kill();
                }
            }
            Action::Probe => {
                if let (Some(inst), Some(check)) = (inst, &self.units[i].component.health) {
                    self.units[i].probe = Some(health::spawn(inst, &check.probe, check.timeout));
                }
            }
            Action::CancelProbe => self.units[i].probe = None,
        }
    }

    /// Runs one pass over every component; returns what happened.
    pub fn tick(&mut self) -> Vec<Event> {
        let now = Instant::now();
        self.follow_mcp_failures(now);
        for i in 0..self.units.len() {
            self.tick_unit(i, now);
        }
        if now.duration_since(self.last_housekeeping) >= HOUSEKEEPING_EVERY {
            self.last_housekeeping = now;
            self.follow_ca_rotations(now);
            if self
                .last_ca_check
                .is_none_or(|t| now.duration_since(t) >= CA_CHECK_EVERY)
            {
                self.last_ca_check = Some(now);
                self.check_ca_expiry();
            }
            if now.duration_since(self.published_report.0) >= hub::PUBLISHED_REPORT_EVERY {
                self.published_report.0 = now;
                self.report_published();
                self.watch_published_listeners();
            }
        }
        self.collect_removed();
        std::mem::take(&mut self.pending)
    }

    fn tick_unit(&mut self, i: usize, now: Instant) {
        self.tick_swap(i, now);
        self.tick_boot(i, now);
        if let Some(inst) = self.units[i].instance.clone() {
            match inst.try_wait() {
                Ok(Some(status)) => self.on_exit(i, status, now),
                Ok(None) => {}
                Err(e) => self.emit(i, EventKind::Error, &e.to_string()),
            }
        }
        if let Some(result) = self.units[i].probe.as_ref().and_then(health::poll) {
            self.units[i].probe = None;
            self.observe(i, Observation::Probe(result), now);
        }
        self.observe(i, Observation::Tick, now);
        if self.units[i].instance.is_some() && self.units[i].renew_at.is_some_and(|t| t <= now) {
            match self.deliver_identity(i, now, true) {
                Ok(_) => {
                    self.push_identity(i);
                    self.reload_identity(i);
                }
                Err(e) => {
                    self.emit(
                        i,
                        EventKind::IdentityRenewalFailed,
                        &format!("{e}; trying again in 30s"),
                    );
                    self.units[i].renew_at = Some(now + Duration::from_secs(30));
                }
            }
        }
        let u = &mut self.units[i];
        if let Some(inst) = u.instance.clone()
            && let Ok(stats) = inst.stats()
        {
            if let Some((t0, c0)) = u.cpu_sample {
                let wall = now.duration_since(t0).as_micros() as f64;
                if wall > 0.0 {
                    u.cpu_percent = stats.cpu_usage_usec.saturating_sub(c0) as f64 / wall * 100.0;
                }
            }
            u.cpu_sample = Some((now, stats.cpu_usage_usec));
            u.stats = Some(stats);
        }
    }

    /// Unit `i`'s instance ended with `status`.
    fn on_exit(&mut self, i: usize, status: ExitStatus, now: Instant) {
        let ended = self.units[i].life.record.instance.clone();
        // What only the runtime can say about the end (a deadline, a panic).
        let how = self.units[i].instance.as_ref().and_then(|w| w.ended_how());
        let u = &mut self.units[i];
        u.instance = None;
        u.probe = None;
        if let Some(id) = &ended {
            self.record_end(id, Some(status));
        }
        self.observe(i, Observation::Exited { status, how }, now);
        // An MCP server's callers learn what comes next, not only what happened.
        if let (Some(gw), Some(spec), Some(id)) = (&self.mcp, &self.units[i].component.mcp, &ended)
        {
            let life = &self.units[i].life;
            let next = match (life.restart_at, life.record.status) {
                (Some(at), _) => {
                    let wait = at.saturating_duration_since(now);
                    format!(
                        "restart {} in {} (at {})",
                        life.record.restarts,
                        human_duration(wait),
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + wait)
                    )
                }
                (None, ComponentStatus::Failed) => format!(
                    "it failed for good ({}); `osvm start {}/{}` starts it again",
                    life.record.reason, life.record.stack, self.units[i].component.name
                ),
                _ => "it is stopped".to_owned(),
            };
            gw.detach(&spec.name, id, &format!("instance {id} {status}; {next}"));
        }
    }

    /// Stops every running component in parallel within its grace period, records them
    /// stopped, and returns what happened.
    pub fn shutdown(&mut self) -> Vec<Event> {
        // VMs still booting are waited for, so that they are stopped like the rest.
        let now = Instant::now();
        for i in 0..self.units.len() {
            if let Some(b) = self.units[i].booting.take() {
                let id = b.id.clone();
                self.start_result(i, id, b.wait(), now);
            }
        }
        let mut handles = Vec::new();
        for (i, u) in self.units.iter_mut().enumerate() {
            u.life.restart_at = None;
            if let Some(inst) = u.instance.clone() {
                u.life.record.intent = Some(Intent::Stop {
                    instance: inst.id().to_string(),
                });
                let grace = u.component.stop_grace;
                handles.push((i, std::thread::spawn(move || inst.stop(grace))));
            }
        }
        for i in 0..self.units.len() {
            self.save(i);
        }
        for (i, h) in handles {
            match h.join() {
                Ok(Ok(status)) => {
                    let how = match status.signal {
                        Some(libc::SIGTERM) => "ended by the SIGTERM it was sent".to_string(),
                        Some(libc::SIGKILL) => "killed after its stop grace period".to_string(),
                        _ => status.to_string(),
                    };
                    let u = &mut self.units[i];
                    u.instance = None;
                    u.life.running = false;
                    u.life.kill_at = None;
                    u.life.record.last_instance = u.life.record.instance.take();
                    u.life.record.intent = None;
                    u.life.record.last_exit = Some(status);
                    u.life.record.status = ComponentStatus::Stopped;
                    self.save(i);
                    self.emit(i, EventKind::Stopped, &how);
                }
                Ok(Err(e)) => self.emit(i, EventKind::StopFailed, &e.to_string()),
                Err(_) => self.emit(i, EventKind::StopFailed, "the stopping thread panicked"),
            }
        }
        std::mem::take(&mut self.pending)
    }

    /// Finds the component called `name` (`stack/name` when several stacks have one).
    fn find(&self, name: &str) -> Result<usize, EngineError> {
        let matches: Vec<usize> = self
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.component.name == name || u.life.record.key() == name)
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [i] => Ok(*i),
            [] => Err(EngineError::NotFound(name.to_string())),
            many => Err(EngineError::Ambiguous(
                name.to_string(),
                many.iter()
                    .map(|i| self.units[*i].life.record.key())
                    .collect(),
            )),
        }
    }

    /// Lets a stopped component run again (`osvm start`).
    pub fn start_component(&mut self, name: &str) -> Result<(), EngineError> {
        let i = self.find(name)?;
        self.observe(i, Observation::StartRequested, Instant::now());
        Ok(())
    }

    /// Stops a component and keeps it stopped (`osvm stop`).
    pub fn stop_component(&mut self, name: &str) -> Result<(), EngineError> {
        let i = self.find(name)?;
        let now = Instant::now();
        self.abandon_swap(i, now, "osvm stop");
        self.observe(i, Observation::StopRequested, now);
        Ok(())
    }

    /// Replaces a component's instance with a fresh one (`osvm restart`); not counted as a
    /// failure restart.
    pub fn restart_component(&mut self, name: &str) -> Result<(), EngineError> {
        let i = self.find(name)?;
        let now = Instant::now();
        self.abandon_swap(i, now, "osvm restart");
        self.observe(i, Observation::RestartRequested, now);
        Ok(())
    }

    /// Removes stack `name` from the desired state: its components stop, then their records
    /// go. Returns false if no such stack was applied.
    pub fn remove_stack(&mut self, name: &str) -> Result<bool, StoreError> {
        if !self.stacks.contains_key(name) {
            return Ok(false);
        }
        self.store.remove_stack(name)?;
        let now = Instant::now();
        for i in 0..self.units.len() {
            if self.units[i].life.record.stack == name {
                self.abandon_swap(i, now, "its stack was removed");
                self.observe(i, Observation::Removed, now);
            }
        }
        self.collect_removed();
        Ok(true)
    }

    /// Forgets stack `name` and its components' records (call after [`Engine::shutdown`]).
    pub fn forget_stack(&mut self, name: &str) -> Result<(), StoreError> {
        for u in self.units.iter().filter(|u| u.life.record.stack == name) {
            self.store.remove_component(name, &u.component.name)?;
        }
        self.units.retain(|u| u.life.record.stack != name);
        self.stacks.remove(name);
        self.store.remove_stack(name)?;
        Ok(())
    }

    /// True when nothing runs and nothing is scheduled to start.
    pub fn all_ended(&self) -> bool {
        self.units
            .iter()
            .all(|u| u.instance.is_none() && u.life.idle())
    }

    /// How many components ended `Failed`.
    pub fn failed(&self) -> usize {
        self.units
            .iter()
            .filter(|u| u.life.record.status == ComponentStatus::Failed)
            .count()
    }
}
