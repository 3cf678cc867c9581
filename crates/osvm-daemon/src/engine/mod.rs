//! The reconcile loop: desired state (applied stacks) against observed state (instances).
//!
//! The engine owns one [`Unit`] per component of every applied stack. Each [`Engine::tick`]
//! looks at every unit: an instance that ended is recorded and, per its restart policy, started
//! again after a backoff (the stack's `restart_backoff` doubling up to `restart_backoff_max`,
//! reset after `restart_reset_after` of running, at most `max_restarts` times, then `Failed`
//! with the reason); a unit without an instance that should run is started; health probes run
//! (HTTP/TCP from the component's network namespace, exec inside its sandbox), and readiness
//! gates `Running` while `retries` failed probes in a row after the start period stop the
//! instance as unhealthy (a liveness failure), which then restarts per the policy.
//!
//! Every decision is durable: the component's record (status, instance, restarts, backoff,
//! last exit, reason) is written to the [`Store`] when it changes, and an action's *intent*
//! (start instance X, stop instance X) is written before the action and cleared after. When
//! the engine opens a store that a killed engine left behind, it re-adopts the instances that
//! still run ([`SandboxRuntime::adopt`]), records the ones that ended meanwhile, and starts only
//! what is really missing — never a component twice.

use std::collections::BTreeMap;
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

mod policy;
mod swap;
mod unit;

use unit::{Action, Lifecycle, Observation, Settings};

pub use swap::{SwapPlan, SwapRequest};

use crate::health::{self, ProbeResult};
use crate::identity::{self, Delivered};
use crate::store::{
    ComponentRecord, Event, EventKind, InstanceRecord, Intent, Store, StoreError, now_ms,
};

/// The health of one component, as last probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Health {
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
    /// A word or two for tables.
    pub fn short(&self) -> String {
        match self {
            Health::None => "-".into(),
            Health::Pending => "pending".into(),
            Health::Healthy(_) => "healthy".into(),
            Health::Failing(n, _) => format!("failing ({n})"),
        }
    }
}

/// What a client sees of one component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentView {
    /// Its stack.
    pub stack: String,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: ComponentStatus,
    /// Its health.
    pub health: Health,
    /// The current instance's id.
    pub instance: Option<String>,
    /// The last instance that ended.
    pub last_instance: Option<String>,
    /// The TCP ports it listens on.
    pub listen: Vec<u16>,
    /// Host pid of the instance's init.
    pub pid: Option<i32>,
    /// Usage of the current instance.
    pub stats: Option<InstanceStats>,
    /// Its memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// CPU use over the last tick, in percent of one CPU.
    pub cpu_percent: f64,
    /// Restarts so far.
    pub restarts: u32,
    /// How long the current instance has run.
    pub uptime_secs: Option<u64>,
    /// How the last instance ended.
    pub last_exit: Option<ExitStatus>,
    /// Why it is in its status.
    pub reason: String,
    /// How long the last health probe took, in milliseconds.
    #[serde(default)]
    pub probe_latency_ms: Option<f64>,
    /// A hot-swap under way.
    #[serde(default)]
    pub swap: Option<crate::store::SwapRecord>,
    /// How the last hot-swap ended.
    #[serde(default)]
    pub last_swap: Option<crate::store::SwapOutcome>,
    /// Which runtime runs it.
    #[serde(default = "process_runtime")]
    pub runtime: osvm_core::RuntimeKind,
    /// The running microVM's facts (accelerator and its warning, vCPUs, memory, kernel, image,
    /// vsock context id, boot times).
    #[serde(default)]
    pub vm: Option<osvm_microvm::VmFacts>,
    /// The running unikernel's facts (launcher and why, accelerator and its warning, image,
    /// memory, boot times, deadline).
    #[serde(default)]
    pub unikernel: Option<osvm_unikernel::UnikernelFacts>,
}

fn process_runtime() -> osvm_core::RuntimeKind {
    osvm_core::RuntimeKind::Process
}

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

/// A start that finishes on another thread: every start and every swap's new instance (a
/// process starts in milliseconds, a VM boots for seconds, a unikernel image may be built
/// first), so that the engine keeps ticking and answering meanwhile.
struct Booting {
    /// The instance id being started.
    id: String,
    /// Its outcome.
    rx: Receiver<Result<Workload, osvm_core::RuntimeError>>,
}

impl Booting {
    /// The outcome, once the start finished.
    fn poll(&self) -> Option<Result<Workload, osvm_core::RuntimeError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(Err(
                osvm_core::RuntimeError::Setup("the start thread ended without a result".into()),
            )),
        }
    }

    /// Waits for the outcome.
    fn wait(self) -> Result<Workload, osvm_core::RuntimeError> {
        self.rx.recv().unwrap_or_else(|_| {
            Err(osvm_core::RuntimeError::Setup(
                "the start thread ended without a result".into(),
            ))
        })
    }
}

/// The runtimes an engine starts instances with, by kind.
pub type Runtimes = BTreeMap<RuntimeKind, Arc<dyn Runtime>>;

/// Where a new instance of a component goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    /// It becomes the component's instance (a start).
    Own,
    /// Beside the running one, for a hot-swap: in the component's second namespace, or
    /// (`socket`) in its own namespace sharing its listening sockets.
    Next {
        /// Socket handoff.
        socket: bool,
    },
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
    /// The MCP gateway that MCP server components are attached to (the daemon's; `osvm up`
    /// runs without one, and starts MCP stdio servers with their stdout logged).
    mcp: Option<osvm_mcp::Gateway>,
}

/// How often CA rotations under way are followed.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// How often the CAs in use are checked for nearing expiry.
const CA_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Whether the component is an MCP server reached over its stdio.
fn stdio_mcp(c: &Component) -> bool {
    c.mcp
        .as_ref()
        .is_some_and(|m| m.transport == osvm_core::stack::McpTransport::Stdio)
}

/// Two pipes for an MCP stdio channel: (its stdin: read, write), (its stdout: read, write).
#[allow(clippy::type_complexity)]
fn stdio_pipes() -> std::io::Result<(
    (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
)> {
    let stdin = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let stdout = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((stdin, stdout))
}

/// RFC 3339 (UTC, seconds) of Unix time `secs`.
fn humantime_secs(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub use osvm_core::quantity::format_duration as human_duration;

impl Engine {
    /// Opens the engine on `store`, re-adopting whatever a previous engine left running.
    pub fn open(runtime: SandboxRuntime, store: Arc<Store>) -> Result<Self, StoreError> {
        let runtime = Arc::new(runtime);
        let state_dir = runtime.config().state_dir.clone();
        let runtimes: Runtimes = BTreeMap::from([
            (RuntimeKind::Process, runtime.clone() as Arc<dyn Runtime>),
            (
                RuntimeKind::MicroVm,
                Arc::new(MicroVmRuntime::new(
                    runtime.clone(),
                    MicroVmConfig::new(state_dir.clone()),
                )) as _,
            ),
            (
                RuntimeKind::Unikernel,
                Arc::new(UnikernelRuntime::new(runtime.clone(), state_dir)) as _,
            ),
        ]);
        Self::open_with(runtime, runtimes, store)
    }

    /// [`Engine::open`] with the runtimes given: `sandbox` keeps the state and allocates the
    /// components' uid ranges, `runtimes` start and adopt instances.
    pub fn open_with(
        runtime: Arc<SandboxRuntime>,
        runtimes: Runtimes,
        store: Arc<Store>,
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
            mcp: None,
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
                    engine.net = Some(plane);
                    engine.reapply_network();
                    // Socket-activated instances that still run hold their listening
                    // sockets: take copies back for the next instance.
                    for i in 0..engine.units.len() {
                        if let Some(inst) = engine.units[i].instance.clone()
                            && let Err(e) = engine.listeners_for(i, Some(&inst))
                        {
                            engine.note(EventKind::NetworkFailed, &e);
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

    /// Attaches MCP server components to `gateway` from now on (their next starts).
    pub fn set_gateway(&mut self, gateway: osvm_mcp::Gateway) {
        self.mcp = Some(gateway);
        self.configure_mcp();
    }

    /// Tells the gateway which MCP servers, rules and settings the applied stacks declare.
    fn configure_mcp(&mut self) {
        let Some(gw) = &self.mcp else {
            return;
        };
        let mut servers = Vec::new();
        let mut rules = Vec::new();
        let mut settings: Option<osvm_core::stack::McpSettings> = None;
        for stack in self.stacks.values() {
            let mut declares = false;
            for c in &stack.components {
                if let Some(spec) = &c.mcp {
                    declares = true;
                    servers.push(osvm_mcp::ServerDecl {
                        stack: stack.name.clone(),
                        component: c.name.clone(),
                        spec: spec.clone(),
                    });
                }
            }
            rules.extend(stack.mcp_policy.iter().cloned());
            if declares {
                // Several stacks: the tightest of their limits.
                let s = &stack.mcp;
                settings = Some(match settings {
                    None => *s,
                    Some(t) => osvm_core::stack::McpSettings {
                        call_timeout: t.call_timeout.min(s.call_timeout),
                        max_message_bytes: t.max_message_bytes.min(s.max_message_bytes),
                        rate_per_second: t.rate_per_second.min(s.rate_per_second),
                        burst: t.burst.min(s.burst),
                    },
                });
            }
        }
        if let Err(e) = gw.configure(servers, &rules, settings.unwrap_or_default()) {
            self.note(EventKind::McpFailed, &format!("the MCP policy: {e}"));
        }
    }

    /// Connects the gateway to a streamable-HTTP MCP server that just started, inside its own
    /// network namespace.
    fn attach_http_mcp(&mut self, i: usize, id: &str, inst: &Workload) {
        let (Some(gw), Some(spec)) = (&self.mcp, &self.units[i].component.mcp) else {
            return;
        };
        let osvm_core::stack::McpTransport::Http { port, path } = &spec.transport else {
            return;
        };
        if !matches!(inst.endpoint(), Ok(osvm_core::Endpoint::Namespace(_))) {
            let why = "an MCP server over HTTP is connected only where its ports are in a \
                       network namespace the daemon can enter (a process), not in a guest";
            gw.detach(&spec.name, id, why);
            return self.emit(i, EventKind::McpFailed, why);
        }
        let netns = PathBuf::from(format!("/proc/{}/ns/net", inst.init_pid()));
        let relays = self.runtime.config().state_dir.join("mcp").join("relays");
        gw.attach_http(&spec.name, id, netns, *port, path.clone(), relays);
    }

    /// Restarts MCP servers the gateway found broken (hung, crashed, wrote garbage).
    fn follow_mcp_failures(&mut self, now: Instant) {
        let Some(gw) = &self.mcp else {
            return;
        };
        for f in gw.take_failures() {
            let Some(i) = self.units.iter().position(|u| {
                u.life.record.stack == f.stack
                    && u.component.name == f.component
                    && u.instance
                        .as_ref()
                        .is_some_and(|inst| inst.id() == f.instance)
            }) else {
                continue;
            };
            let why = format!("instance {}: {}; restarting it", f.instance, f.reason);
            self.observe(i, Observation::Broken(why), now);
        }
    }

    /// Finds unit `i`'s instance again, or decides what to do without it.
    fn recover(&mut self, i: usize) {
        let now = Instant::now();
        let record = self.units[i].life.record.clone();
        let id = match &record.intent {
            Some(Intent::Start { instance }) | Some(Intent::Stop { instance }) => {
                Some(instance.clone())
            }
            None => record.instance.clone(),
        };
        let Some(id) = id else {
            // Keep a backoff that was running when the previous engine stopped.
            let wait = record
                .next_start_ms
                .map(|due| due.saturating_sub(now_ms()))
                .unwrap_or(0);
            let wait = Duration::from_millis(wait);
            return self.observe(i, Observation::Resume { wait }, now);
        };
        let runtime = match self.runtime_of(i) {
            Ok(r) => r,
            Err(e) => return self.lost(i, now, &format!("instance {id}: {e}")),
        };
        if stdio_mcp(&self.units[i].component) && self.mcp.is_some() {
            // Its stdio channel was the previous engine's pipes, gone with it.
            if let Ok(Adoption::Running(inst)) = runtime.adopt(&id) {
                let _ = inst.stop(self.units[i].component.stop_grace);
            }
            return self.lost(
                i,
                now,
                &format!(
                    "instance {id}: its MCP stdio channel belonged to the previous daemon; it \
                     was stopped and starts again"
                ),
            );
        }
        match runtime.adopt(&id) {
            Ok(Adoption::Running(inst)) => {
                let hub = self.net.as_ref().map(|n| n.hub_path());
                let inst = Arc::new(Workload::new(inst, hub));
                // Uptime counts from the instance's real start, not from the adoption.
                let age = self
                    .store
                    .instance(&id)
                    .ok()
                    .flatten()
                    .map(|r| Duration::from_millis(now_ms().saturating_sub(r.started_at_ms)))
                    .unwrap_or_default();
                let stack = self.stack_of(i);
                let ttl = stack.certificate_ttl;
                let dir = identity::identity_dir(
                    &self.runtime.config().state_dir,
                    &stack.name,
                    &self.units[i].component.name,
                );
                let seed = self.renewal_seed(i);
                // A certificate that expired while no engine ran is renewed at once.
                let renew_in = identity::due_in(&dir, ttl, seed);
                let u = &mut self.units[i];
                u.renew_at = Some(now + renew_in);
                u.instance = Some(inst.clone());
                self.emit(
                    i,
                    EventKind::Adopted,
                    &format!("instance {id} (pid {}) still runs", inst.init_pid()),
                );
                self.observe(i, Observation::Adopted { id, age }, now);
            }
            Ok(Adoption::Ended(status)) => {
                self.record_end(&id, Some(status));
                self.observe(i, Observation::EndedWhileAway { id, status }, now);
            }
            Ok(Adoption::Stopped(why)) => self.lost(i, now, &format!("instance {id}: {why}")),
            // The start was recorded but never happened (or its directory is gone).
            Err(e) => self.lost(i, now, &format!("instance {id}: {e}")),
        }
    }

    /// Unit `i`'s instance is gone without an exit record: forgotten, and started again now
    /// unless the component is meant to be stopped or has failed.
    fn lost(&mut self, i: usize, now: Instant, detail: &str) {
        self.observe(i, Observation::Lost(detail.into()), now);
    }

    /// Applies `stack` as desired state: new components start, changed ones are replaced,
    /// removed ones stop.
    pub fn apply(&mut self, stack: Stack) -> Result<(), StoreError> {
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
        let mut i = 0;
        while i < self.units.len() {
            let u = &self.units[i];
            if u.life.removing && u.instance.is_none() && !u.life.launching {
                let _ = self
                    .store
                    .remove_component(&u.life.record.stack, &u.component.name);
                left_hub.push((u.life.record.stack.clone(), u.component.name.clone()));
                self.units.remove(i);
            } else {
                i += 1;
            }
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

    /// Recomputes the hub's ruleset from every hub stack (when the hub is in use) and logs
    /// what changed.
    fn apply_network(&mut self) -> Result<(), crate::network::NetPlaneError> {
        let Some(plane) = self.net.as_mut() else {
            return Ok(());
        };
        let a = plane.apply(&self.stacks)?;
        if a.added + a.removed > 0 {
            self.note(
                EventKind::NetworkPolicy,
                &format!(
                    "hub ruleset applied: {} flows added, {} removed, {} connections cut",
                    a.added, a.removed, a.cut
                ),
            );
        }
        Ok(())
    }

    /// [`Engine::apply_network`] where a failure is only logged (nothing waits on it).
    fn reapply_network(&mut self) {
        if let Err(e) = self.apply_network() {
            self.note(EventKind::NetworkFailed, &e.to_string());
        }
    }

    /// Changes a stack's policy (kept until the stack is applied again from its file) and
    /// enforces the result at once: a removed allow cuts the connections it let in. Returns the
    /// index and text of the rule added or removed.
    pub fn edit_policy(
        &mut self,
        stack: &str,
        edit: PolicyEdit,
    ) -> Result<(usize, String), EngineError> {
        use osvm_core::stack::Selector;
        let mut changed = self
            .stacks
            .get(stack)
            .cloned()
            .ok_or_else(|| EngineError::Missing(format!("no stack is called `{stack}`")))?;
        let (index, rule, action) = match edit {
            PolicyEdit::Add(rule) => {
                for (end, selector) in [("from", &rule.from), ("to", &rule.to)] {
                    match selector {
                        Selector::Component(name)
                            if !changed.components.iter().any(|c| &c.name == name) =>
                        {
                            return Err(EngineError::Invalid(format!(
                                "`{end}`: stack `{stack}` has no component `{name}`"
                            )));
                        }
                        Selector::Cidr(_) if end == "from" => {
                            return Err(EngineError::Invalid(
                                "`from` cannot be a `cidr:` network: rules govern traffic from components".into(),
                            ));
                        }
                        _ => {}
                    }
                }
                changed.policies.push(rule.clone());
                (changed.policies.len() - 1, rule, EventKind::PolicyAdd)
            }
            PolicyEdit::Remove(index) => {
                if index >= changed.policies.len() {
                    return Err(EngineError::Missing(format!(
                        "stack `{stack}` has {} rule(s); there is no #{index}",
                        changed.policies.len()
                    )));
                }
                (
                    index,
                    changed.policies.remove(index),
                    EventKind::PolicyRemove,
                )
            }
        };
        let text = osvm_policy::PolicySet::new(vec![rule])
            .describe(0)
            .unwrap_or_default();
        self.apply(changed)
            .map_err(|e| EngineError::Store(e.to_string()))?;
        if let Some(plane) = self.net.as_ref() {
            let _ = plane.audit().append(&osvm_policy::AuditRecord::new(
                "operator",
                "root (API)",
                &format!("stack {stack} policy"),
                action.as_str(),
                true,
                &format!("#{index} {text}"),
            ));
        }
        self.note(action, &format!("stack {stack}: #{index} {text}"));
        Ok((index, text))
    }

    /// The policy rules of `stack`, in order.
    pub fn policies(&self, stack: &str) -> Result<Vec<osvm_core::stack::PolicyRule>, EngineError> {
        self.stacks
            .get(stack)
            .map(|s| s.policies.clone())
            .ok_or_else(|| EngineError::Missing(format!("no stack is called `{stack}`")))
    }

    /// The hub as it is now (`None` when no stack uses it).
    pub fn network_view(
        &self,
    ) -> Option<Result<crate::network::NetView, crate::network::NetPlaneError>> {
        self.net.as_ref().map(|plane| plane.show(&self.stacks))
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
        for action in unit::step(&mut self.units[i].life, &settings, obs, now) {
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

    /// The trust domains of the stacks this engine runs.
    fn trust_domains(&self) -> std::collections::BTreeSet<String> {
        self.stacks
            .values()
            .map(|s| s.trust_domain.clone())
            .collect()
    }

    /// Carries CA rotations (`osvm cert ca rotate`) through: first every running component of
    /// the trust domain gets the bundle with both CAs, then each gets a leaf of the new CA, and
    /// when all have one the previous CA leaves the bundle (and the components' bundles).
    fn follow_ca_rotations(&mut self, now: Instant) {
        let state_dir = self.runtime.config().state_dir.clone();
        let domains = self.trust_domains();
        for domain in domains {
            let Ok(pki) = osvm_pki::Pki::new(&identity::pki_dir(&state_dir, &domain), &domain)
            else {
                continue;
            };
            let running: Vec<usize> = (0..self.units.len())
                .filter(|i| {
                    self.units[*i].instance.is_some() && self.stack_of(*i).trust_domain == domain
                })
                .collect();
            if !pki.rotation_pending() {
                self.rotations.remove(&domain);
                continue;
            }
            match self.rotations.get(&domain).copied() {
                None => {
                    self.rotations.insert(domain.clone(), now);
                    for &i in &running {
                        let stack = self.stack_of(i).clone();
                        let name = self.units[i].component.name.clone();
                        match identity::refresh_trust(&state_dir, &stack, &name) {
                            Ok(()) => self.push_identity(i),
                            Err(e) => self.emit(i, EventKind::IdentityTrustFailed, &e.to_string()),
                        }
                    }
                    for &i in &running {
                        self.units[i].renew_at = Some(now);
                    }
                    self.note(
                        EventKind::CaRotation,
                        &format!(
                            "trust domain {domain}: both CAs trusted; reissuing {} leaves",
                            running.len()
                        ),
                    );
                }
                Some(since) => {
                    let done = running
                        .iter()
                        .all(|&i| self.units[i].delivered_at.is_some_and(|t| t >= since));
                    if done {
                        match pki.finish_rotation() {
                            Ok(_) => {
                                for &i in &running {
                                    let stack = self.stack_of(i).clone();
                                    let name = self.units[i].component.name.clone();
                                    if identity::refresh_trust(&state_dir, &stack, &name).is_ok() {
                                        self.push_identity(i);
                                        self.reload_identity(i);
                                    }
                                }
                                self.rotations.remove(&domain);
                                self.note(
                                    EventKind::CaRotationFinished,
                                    &format!(
                                        "trust domain {domain}: the previous CA left the bundle"
                                    ),
                                );
                            }
                            Err(e) => self.note(EventKind::CaRotationFailed, &e.to_string()),
                        }
                    }
                }
            }
        }
    }

    /// Logs `ca-expiring` for every CA in use that has less than
    /// [`osvm_pki::ca::CA_EXPIRY_WARNING`] left (or has expired).
    fn check_ca_expiry(&mut self) {
        let state_dir = self.runtime.config().state_dir.clone();
        let domains = self.trust_domains();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for domain in domains {
            let Ok(pki) = osvm_pki::Pki::new(&identity::pki_dir(&state_dir, &domain), &domain)
            else {
                continue;
            };
            let Ok(not_after) = pki.ca_not_after() else {
                continue;
            };
            let left = not_after - now;
            if left < osvm_pki::ca::CA_EXPIRY_WARNING.as_secs() as i64 {
                let when = if left <= 0 {
                    "has expired".to_string()
                } else {
                    format!("expires in {} h", left / 3600)
                };
                self.note(
                    EventKind::CaExpiring,
                    &format!(
                        "the CA of trust domain {domain} {when}; run `osvm cert --trust-domain {domain} ca rotate`"
                    ),
                );
            }
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

    /// Spreads renewals of the components over their window, the same for a component every
    /// time (a hash of its key).
    fn renewal_seed(&self, i: usize) -> u64 {
        self.units[i]
            .life
            .record
            .key()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
    }

    /// Issues and writes unit `i`'s identity; schedules its renewal.
    fn deliver_identity(
        &mut self,
        i: usize,
        now: Instant,
        renewal: bool,
    ) -> Result<Delivered, String> {
        let stack = self.stack_of(i).clone();
        let name = self.units[i].component.name.clone();
        let state_dir = self.runtime.config().state_dir.clone();
        // The key belongs to the component's own host uid (root of its sandbox).
        let uid = self
            .runtime
            .component_ids(&stack.name, &name)
            .map_err(|e| format!("identity: {e}"))?
            .host_base;
        let delivered = identity::deliver(&state_dir, &stack, &name, uid)
            .map_err(|e| format!("identity: {e}"))?;
        if delivered.created_ca {
            self.emit(
                i,
                EventKind::CaCreated,
                &format!(
                    "a CA for trust domain {} in {}",
                    stack.trust_domain,
                    identity::pki_dir(&state_dir, &stack.trust_domain).display()
                ),
            );
        }
        let seed = self.renewal_seed(i);
        self.units[i].renew_at = Some(now + identity::renew_after(stack.certificate_ttl, seed));
        self.units[i].delivered_at = Some(now);
        let expires = humantime_secs(delivered.not_after);
        self.emit(
            i,
            if renewal {
                EventKind::IdentityRenewed
            } else {
                EventKind::Identity
            },
            &format!(
                "{} (serial {}), valid until {expires}, at {}",
                delivered.spiffe_id,
                delivered.serial,
                identity::INSIDE
            ),
        );
        Ok(delivered)
    }

    /// Copies unit `i`'s identity files into its running instance (a sandbox sees a copy, not
    /// the host directory).
    fn push_identity(&mut self, i: usize) {
        let Some(inst) = self.units[i].instance.clone() else {
            return;
        };
        let state_dir = self.runtime.config().state_dir.clone();
        let dir = identity::identity_dir(
            &state_dir,
            &self.units[i].life.record.stack,
            &self.units[i].component.name,
        );
        if let Err(e) = inst.refresh_identity(&dir) {
            self.emit(i, EventKind::IdentityDeliveryFailed, &e.to_string());
        }
    }

    /// Tells unit `i` its identity was renewed, as its `identity_reload` says.
    fn reload_identity(&mut self, i: usize) {
        let Some(reload) = self.units[i].component.identity_reload.clone() else {
            return;
        };
        let Some(inst) = self.units[i].instance.clone() else {
            return;
        };
        match reload {
            osvm_core::stack::IdentityReload::Signal(sig) => match inst.signal(sig) {
                Ok(()) => self.emit(i, EventKind::IdentityReload, &format!("sent signal {sig}")),
                Err(e) => self.emit(i, EventKind::IdentityReloadFailed, &e.to_string()),
            },
            osvm_core::stack::IdentityReload::Exec(cmd) => {
                match inst.exec(&cmd, Duration::from_secs(5)) {
                    Ok(out) if out.code == Some(0) => {
                        self.emit(i, EventKind::IdentityReload, &format!("{} -> 0", cmd[0]))
                    }
                    Ok(out) => self.emit(
                        i,
                        EventKind::IdentityReloadFailed,
                        &format!(
                            "{} -> {:?}: {}",
                            cmd[0],
                            out.code,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    ),
                    Err(e) => self.emit(i, EventKind::IdentityReloadFailed, &e.to_string()),
                }
            }
        }
    }

    /// Puts unit `i`'s whole stack on the hub (so every name resolves) and applies the
    /// ruleset; returns `i`'s namespace and its `/etc/hosts` lines.
    fn join_hub(
        &mut self,
        i: usize,
    ) -> Result<(std::path::PathBuf, Vec<(String, String)>), String> {
        if self.net.is_none() {
            let plane = crate::network::NetPlane::open(&self.runtime.config().state_dir)
                .map_err(|e| e.to_string())?;
            self.net = Some(plane);
        }
        let stack = self.stack_of(i).clone();
        let name = self.units[i].component.name.clone();
        let plane = self.net.as_mut().expect("opened above");
        let mut own = None;
        let mut joined = false;
        for c in &stack.components {
            let (path, new) = plane
                .join(&stack.name, &c.name)
                .map_err(|e| e.to_string())?;
            joined |= new;
            if c.name == name {
                own = Some(path);
            }
        }
        let hosts = plane.hosts(&stack);
        if joined {
            // New members: the ruleset must know them before the component starts.
            self.apply_network().map_err(|e| e.to_string())?;
        }
        let own = own.ok_or_else(|| format!("component {name} is not in its stack"))?;
        Ok((own, hosts))
    }

    /// Removes the hub and every component namespace: the foreground `osvm up` after
    /// [`Engine::shutdown`], and a daemon once no stack uses the hub (a daemon that merely
    /// stops keeps them for its next start).
    pub fn teardown_network(&mut self) {
        if let Some(plane) = self.net.take()
            && let Err(e) = plane.destroy()
        {
            self.note(EventKind::NetworkTeardownFailed, &e.to_string());
        }
    }

    /// Unit `i`'s listening sockets when it is socket-activated (none otherwise): made once in
    /// its hub namespace, or taken back from `running` after a daemon restart.
    fn listeners_for(
        &mut self,
        i: usize,
        running: Option<&Workload>,
    ) -> Result<Vec<std::os::fd::OwnedFd>, String> {
        let running = running.map(|w| &**w);
        let c = &self.units[i].component;
        if !c.socket_activation {
            return Ok(Vec::new());
        }
        let (stack, name, ports) = (
            self.units[i].life.record.stack.clone(),
            c.name.clone(),
            c.listen.clone(),
        );
        match self.net.as_mut() {
            Some(plane) => plane
                .listeners(&stack, &name, &ports, running)
                .map_err(|e| format!("the listening sockets: {e}")),
            None => Err("unavailable: socket_activation needs the hub network (network = \"hub\"), where osvm makes the component's namespace before it starts".into()),
        }
    }

    /// Records that instance `id` of unit `i` started now.
    fn record_start(&self, i: usize, id: &str) {
        let _ = self.store.put_instance(&InstanceRecord {
            id: id.to_owned(),
            component: self.units[i].life.record.key(),
            started_at_ms: now_ms(),
            ended_at_ms: None,
            exit: None,
        });
    }

    /// Records that instance `id` ended (`status` when known).
    fn record_end(&mut self, id: &str, status: Option<ExitStatus>) {
        if let Ok(Some(mut rec)) = self.store.instance(id) {
            rec.ended_at_ms = Some(now_ms());
            rec.exit = status;
            let _ = self.store.put_instance(&rec);
        }
    }

    /// Unit `i` could not start because of `why`: recorded, and retried with backoff.
    fn start_failed(&mut self, i: usize, now: Instant, why: String) {
        self.observe(i, Observation::StartFailed(why), now);
    }

    /// Starts unit `i`'s instance (its lifecycle said [`Action::Launch`]).
    fn start(&mut self, i: usize, now: Instant) {
        if self.units[i].booting.is_some() {
            return;
        }
        let component = self.units[i].component.clone();
        match self.boot(i, &component, Slot::Own, now) {
            Ok(booting) => self.units[i].booting = Some(booting),
            Err(e) => self.start_failed(i, now, e),
        }
    }

    /// The runtime that runs unit `i`.
    fn runtime_of(&self, i: usize) -> Result<Arc<dyn Runtime>, String> {
        let kind = self.units[i].component.runtime;
        self.runtimes
            .get(&kind)
            .cloned()
            .ok_or_else(|| format!("unavailable: this daemon has no {kind} runtime"))
    }

    /// The one boot path of starts and swaps: prepares unit `i`'s next instance as `component`
    /// in `slot` (identity, hub namespace, listening sockets, an MCP stdio channel), records
    /// the intent, and has the runtime start it on a thread of its own. The outcome is picked up
    /// by [`Engine::tick_boot`] (a start) or the swap.
    fn boot(
        &mut self,
        i: usize,
        component: &Component,
        slot: Slot,
        now: Instant,
    ) -> Result<Booting, String> {
        let runtime = self.runtime_of(i)?;
        let stack = self.stack_of(i).clone();
        let mut spec = component.launch_spec(&stack.name);
        spec.logs = stack.log_limits();
        spec.identity = Some(self.deliver_identity(i, now, slot != Slot::Own)?.dir);
        let on_hub = stack.network == osvm_core::stack::StackNetwork::Hub;
        match slot {
            Slot::Own if on_hub => {
                let (netns, hosts) = self
                    .join_hub(i)
                    .map_err(|e| format!("unavailable: the hub network: {e}"))?;
                spec.netns = Some(netns);
                spec.hosts = hosts;
            }
            Slot::Own => {}
            Slot::Next { socket } => {
                let stacks = self.stacks.clone();
                let plane = self
                    .net
                    .as_mut()
                    .ok_or("the hub network is not up (the component never started on it)")?;
                let netns = if socket {
                    plane.join(&stack.name, &component.name).map(|(p, _)| p)
                } else {
                    plane.prepare_next(&stacks, &stack.name, &component.name)
                };
                spec.netns = Some(netns.map_err(|e| e.to_string())?);
                spec.hosts = plane.hosts(&stack);
            }
        }
        let id = new_instance_id(&spec.name);
        let mut wiring = Wiring::new(&id);
        wiring.fds = self.listeners_for(i, None)?;
        // An MCP server's stdio channel is wired to the gateway once the start succeeds.
        let mut attach = None;
        if slot == Slot::Own && stdio_mcp(component) {
            match self.mcp.clone() {
                Some(gw) => {
                    let ((in_r, in_w), (out_r, out_w)) =
                        stdio_pipes().map_err(|e| format!("make the MCP stdio pipes: {e}"))?;
                    wiring.stdin = Some(in_r);
                    wiring.stdout = Some(out_w);
                    let server = component.mcp.as_ref().map(|m| m.name.clone());
                    let id = id.clone();
                    attach = Some(move || {
                        gw.attach_stdio(&server.unwrap_or_default(), &id, out_r, in_w)
                    });
                }
                None => self.emit(
                    i,
                    EventKind::McpUnavailable,
                    "no MCP gateway runs here (`osvm up` in the foreground): the server starts \
                     with its stdout logged and no client can reach it; run `osvm daemon` and \
                     `osvm up -d`",
                ),
            }
        }
        if slot == Slot::Own {
            self.observe(i, Observation::Launching { id: id.clone() }, now);
        }
        let hub = self.net.as_ref().map(|n| n.hub_path());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_id = id.clone();
        std::thread::Builder::new()
            .name(format!("start-{id}"))
            .spawn(move || {
                let started = runtime.start(&spec, wiring);
                if started.is_ok()
                    && let Some(attach) = attach
                {
                    attach();
                }
                let _ = tx.send(started.map(|inst| Workload::new(inst, hub)));
            })
            .map_err(|e| {
                if slot == Slot::Own {
                    // The intent was recorded: the failure is the start's.
                    format!("start a thread for instance {thread_id}: {e}")
                } else {
                    format!("start a thread for the new instance: {e}")
                }
            })?;
        self.emit(
            i,
            EventKind::Booting,
            &format!(
                "instance {id}: the {} runtime is starting it",
                component.runtime
            ),
        );
        Ok(Booting { id, rx })
    }

    /// Picks up a start that finished.
    fn tick_boot(&mut self, i: usize, now: Instant) {
        let Some(result) = self.units[i].booting.as_ref().and_then(Booting::poll) else {
            return;
        };
        let id = self.units[i].booting.take().expect("checked").id;
        self.start_result(i, id, result, now);
    }

    /// Records the outcome of starting instance `id` of unit `i`.
    fn start_result(
        &mut self,
        i: usize,
        id: String,
        result: Result<Workload, osvm_core::RuntimeError>,
        now: Instant,
    ) {
        match result {
            Ok(inst) => {
                let detail = format!(
                    "instance {} (pid {}), logs in {}",
                    inst.id(),
                    inst.init_pid(),
                    inst.instance_dir().display()
                );
                let reach = self.units[i]
                    .component
                    .listen
                    .first()
                    .map(|&port| inst.reach(port));
                let confined = inst.confinement();
                let confinement = confined.summary();
                let warning = confined.warning().map(str::to_owned);
                self.attach_http_mcp(i, &id, &inst);
                self.record_start(i, &id);
                let u = &mut self.units[i];
                u.instance = Some(Arc::new(inst));
                u.probe = None;
                u.cpu_sample = None;
                self.emit(i, EventKind::Started, &detail);
                if let Some(reach) = reach {
                    self.emit(i, EventKind::Reach, &reach);
                }
                self.emit(i, EventKind::Confined, &confinement);
                if let Some(w) = warning {
                    self.emit(i, EventKind::Warning, &w);
                }
                self.observe(i, Observation::Started { id }, now);
            }
            Err(e) => self.start_failed(i, now, e.to_string()),
        }
    }

    /// Unit `i`'s instance ended with `status`.
    fn on_exit(&mut self, i: usize, status: ExitStatus, now: Instant) {
        if let (Some(gw), Some(spec), Some(id)) = (
            &self.mcp,
            &self.units[i].component.mcp,
            &self.units[i].life.record.instance,
        ) {
            gw.detach(&spec.name, id, &format!("instance {id} {status}"));
        }
        // What only the runtime can say about the end (a deadline, a panic).
        let how = self.units[i].instance.as_ref().and_then(|w| w.ended_how());
        let u = &mut self.units[i];
        u.instance = None;
        u.probe = None;
        if let Some(id) = u.life.record.instance.clone() {
            self.record_end(&id, Some(status));
        }
        self.observe(i, Observation::Exited { status, how }, now);
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

    /// The view of one component.
    pub fn view(&self, name: &str) -> Result<ComponentView, EngineError> {
        let i = self.find(name)?;
        Ok(self.views().swap_remove(i))
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
        self.observe(i, Observation::StopRequested, Instant::now());
        Ok(())
    }

    /// Replaces a component's instance with a fresh one (`osvm restart`); not counted as a
    /// failure restart.
    pub fn restart_component(&mut self, name: &str) -> Result<(), EngineError> {
        let i = self.find(name)?;
        self.observe(i, Observation::RestartRequested, Instant::now());
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

    /// What clients see of every component.
    pub fn views(&self) -> Vec<ComponentView> {
        let now = Instant::now();
        self.units
            .iter()
            .map(|u| {
                let running = u.instance.is_some();
                ComponentView {
                    stack: u.life.record.stack.clone(),
                    name: u.component.name.clone(),
                    status: u.life.record.status,
                    health: if running {
                        u.life.health.clone()
                    } else {
                        Health::None
                    },
                    instance: u.instance.as_ref().map(|i| i.id().to_string()),
                    last_instance: u.life.record.last_instance.clone(),
                    listen: u.component.listen.clone(),
                    pid: u.instance.as_ref().map(|i| i.init_pid()),
                    stats: if running { u.stats.clone() } else { None },
                    // What the running instance's usage is measured against (for a guest, its
                    // emulator's cgroup), as the runtime set it; the component's own otherwise.
                    memory_limit: u
                        .instance
                        .as_ref()
                        .filter(|_| running)
                        .and_then(|i| i.memory_limit())
                        .or(u.component.resources.memory_bytes),
                    cpu_percent: if running { u.cpu_percent } else { 0.0 },
                    restarts: u.life.record.restarts,
                    uptime_secs: u
                        .life
                        .started_at
                        .filter(|_| running)
                        .map(|s| now.duration_since(s).as_secs()),
                    last_exit: u.life.record.last_exit,
                    reason: u.life.record.reason.clone(),
                    probe_latency_ms: u.life.probe_latency.map(|d| d.as_secs_f64() * 1000.0),
                    swap: u.life.record.swap.clone(),
                    last_swap: u.life.record.last_swap.clone(),
                    runtime: u.component.runtime,
                    vm: u
                        .instance
                        .as_ref()
                        .and_then(|i| i.downcast::<MicroVmInstance>())
                        .map(|vm| vm.facts().clone()),
                    unikernel: u
                        .instance
                        .as_ref()
                        .and_then(|i| i.downcast::<UnikernelInstance>())
                        .map(|k| k.facts().clone()),
                }
            })
            .collect()
    }
}
