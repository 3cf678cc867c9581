//! The one boot path: every start and every hot-swap's new instance is prepared here
//! (identity, hub slot, listening sockets, an MCP stdio channel), its intent recorded, and
//! started by its runtime on a thread of its own; the outcome comes back on a channel the
//! engine polls, so a VM boot or a unikernel image build never holds the engine.

use super::mcp::stdio_pipes;
use super::trust::IdentityError;
use super::*;
use crate::network::NetPlaneError;

/// Why a new instance could not be started (a start, or a swap's new instance).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No runtime of the component's kind was given to this engine.
    #[error("unavailable: this daemon has no {0} runtime")]
    NoRuntime(RuntimeKind),
    /// Its identity could not be issued.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Its stack's hub could not be joined.
    #[error("unavailable: the hub network: {0}")]
    Hub(NetPlaneError),
    /// A swap's slot beside the running instance could not be made.
    #[error("{0}")]
    NextSlot(NetPlaneError),
    /// A swap of a component whose hub is gone.
    #[error("the hub network is not up (the component never started on it)")]
    HubDown,
    /// Its listening sockets could not be made or taken back.
    #[error("the listening sockets: {0}")]
    Listeners(NetPlaneError),
    /// Socket activation outside the hub.
    #[error(
        "unavailable: socket_activation needs the hub network (network = \"hub\"), where osvm \
         makes the component's namespace before it starts"
    )]
    SocketsWithoutHub,
    /// An MCP server's stdio channel could not be made.
    #[error("make the MCP stdio pipes: {0}")]
    Pipes(std::io::Error),
    /// The thread that starts it could not be made.
    #[error("start a thread for instance {id}: {source}")]
    Thread {
        /// The instance.
        id: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A start that finishes on another thread: every start and every swap's new instance (a
/// process starts in milliseconds, a VM boots for seconds, a unikernel image may be built
/// first), so that the engine keeps ticking and answering meanwhile.
pub(super) struct Booting {
    /// The instance id being started.
    pub(super) id: String,
    /// Its outcome.
    pub(super) rx: Receiver<Outcome>,
}

/// What a start's thread hands back.
pub(super) struct Outcome {
    /// The instance, or why it did not start.
    pub(super) started: Result<Workload, osvm_core::RuntimeError>,
    /// The identity the thread wrote before the start (a start writes its own, off the engine
    /// thread: a certificate, a key and a few files per component, most of a large apply's
    /// engine time; a swap's new instance shares the running one's, written by the engine).
    pub(super) identity: Option<Delivered>,
}

impl Outcome {
    fn lost() -> Self {
        Self {
            started: Err(osvm_core::RuntimeError::Setup(
                "the start thread ended without a result".into(),
            )),
            identity: None,
        }
    }
}

impl Booting {
    /// The outcome, once the start finished.
    pub(super) fn poll(&self) -> Option<Outcome> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(Outcome::lost()),
        }
    }

    /// Waits for the outcome.
    pub(super) fn wait(self) -> Outcome {
        self.rx.recv().unwrap_or_else(|_| Outcome::lost())
    }
}

/// Where a new instance of a component goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Slot {
    /// It becomes the component's instance (a start).
    Own,
    /// Beside the running one, for a hot-swap: in the component's second namespace, or
    /// (`socket`) in its own namespace sharing its listening sockets.
    Next {
        /// Socket handoff.
        socket: bool,
    },
}

impl Engine {
    /// Records that instance `id` of unit `i` started now.
    pub(super) fn record_start(&self, i: usize, id: &str) {
        let _ = self.store.put_instance(&InstanceRecord {
            id: id.to_owned(),
            component: self.units[i].life.record.key(),
            started_at_ms: now_ms(),
            ended_at_ms: None,
            exit: None,
        });
    }

    /// Records that instance `id` ended (`status` when known).
    pub(super) fn record_end(&mut self, id: &str, status: Option<ExitStatus>) {
        if let Ok(Some(mut rec)) = self.store.instance(id) {
            rec.ended_at_ms = Some(now_ms());
            rec.exit = status;
            let _ = self.store.put_instance(&rec);
        }
    }

    /// Unit `i` could not start because of `why`: recorded, and retried with backoff.
    pub(super) fn start_failed(&mut self, i: usize, now: Instant, why: String) {
        self.observe(i, Observation::StartFailed(why), now);
    }

    /// Starts unit `i`'s instance (its lifecycle said [`Action::Launch`]).
    pub(super) fn start(&mut self, i: usize, now: Instant) {
        if self.units[i].booting.is_some() {
            return;
        }
        let component = self.units[i].component.clone();
        match self.boot(i, &component, Slot::Own, now) {
            Ok(booting) => self.units[i].booting = Some(booting),
            Err(e) => self.start_failed(i, now, e.to_string()),
        }
    }

    /// The runtime that runs unit `i`.
    pub(super) fn runtime_of(&self, i: usize) -> Result<Arc<dyn Runtime>, StartError> {
        let kind = self.units[i].component.runtime.kind();
        self.runtimes
            .get(&kind)
            .cloned()
            .ok_or(StartError::NoRuntime(kind))
    }

    /// The one boot path of starts and swaps: prepares unit `i`'s next instance as `component`
    /// in `slot` (identity, hub namespace, listening sockets, an MCP stdio channel), records
    /// the intent, and has the runtime start it on a thread of its own. The outcome is picked up
    /// by [`Engine::tick_boot`] (a start) or the swap.
    pub(super) fn boot(
        &mut self,
        i: usize,
        component: &Component,
        slot: Slot,
        now: Instant,
    ) -> Result<Booting, StartError> {
        let runtime = self.runtime_of(i)?;
        let stack = self.stack_of(i).clone();
        let mut spec = component.launch_spec(&stack.name);
        spec.logs = stack.log_limits();
        // A start writes its identity on its own thread (below); a swap's new instance gets
        // the component's renewed one now, beside the instance still serving with the old.
        let identity = match slot {
            Slot::Own => {
                let job = self.identity_job(i)?;
                spec.identity = Some(job.dir());
                Some(job)
            }
            Slot::Next { .. } => {
                spec.identity = Some(self.deliver_identity(i, now, true)?.dir);
                None
            }
        };
        let on_hub = stack.network == osvm_core::stack::StackNetwork::Hub;
        match slot {
            Slot::Own if on_hub => {
                let (netns, hosts) = self.join_hub(i).map_err(StartError::Hub)?;
                spec.netns = Some(netns);
                spec.hosts = hosts;
            }
            Slot::Own => {}
            Slot::Next { socket } => {
                let stacks = self.stacks.clone();
                let plane = self.net.as_mut().ok_or(StartError::HubDown)?;
                let netns = if socket {
                    plane.join(&stack.name, &component.name).map(|(p, _)| p)
                } else {
                    plane.prepare_next(&stacks, &stack.name, &component.name)
                };
                spec.netns = Some(netns.map_err(StartError::NextSlot)?);
                spec.hosts = plane.hosts(&stack);
            }
        }
        // A guest serves its own `mtls_egress` (see the agent's egress module).
        if on_hub
            && !component.mtls_egress.is_empty()
            && component.runtime.kind() != osvm_core::RuntimeKind::Process
        {
            let plane = self.net.as_ref().ok_or(StartError::HubDown)?;
            spec.tls_egress = plane
                .tls_egress(&stack, component)
                .map_err(StartError::Hub)?;
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
                        stdio_pipes().map_err(StartError::Pipes)?;
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
                let identity = match identity.map(|job| job.deliver()).transpose() {
                    Ok(delivered) => delivered,
                    Err(e) => {
                        let started = Err(osvm_core::RuntimeError::Setup(e.to_string()));
                        let _ = tx.send(Outcome {
                            started,
                            identity: None,
                        });
                        return;
                    }
                };
                let started = runtime.start(&spec, wiring);
                if started.is_ok()
                    && let Some(attach) = attach
                {
                    attach();
                }
                let started = started.map(|inst| Workload::new(inst, hub));
                let _ = tx.send(Outcome { started, identity });
            })
            .map_err(|source| StartError::Thread {
                id: thread_id,
                source,
            })?;
        self.emit(
            i,
            EventKind::Booting,
            &format!(
                "instance {id}: the {} runtime is starting it",
                component.runtime.kind()
            ),
        );
        Ok(Booting { id, rx })
    }

    /// Picks up a start that finished.
    pub(super) fn tick_boot(&mut self, i: usize, now: Instant) {
        let Some(outcome) = self.units[i].booting.as_ref().and_then(Booting::poll) else {
            return;
        };
        let id = self.units[i].booting.take().expect("checked").id;
        self.start_result(i, id, outcome, now);
    }

    /// Records the outcome of starting instance `id` of unit `i`.
    pub(super) fn start_result(&mut self, i: usize, id: String, outcome: Outcome, now: Instant) {
        if let Some(delivered) = &outcome.identity {
            self.identity_delivered(i, now, delivered, false);
        }
        match outcome.started {
            Ok(inst) => {
                let detail = format!(
                    "instance {} (pid {}), logs in {}",
                    inst.id(),
                    inst.init_pid(),
                    inst.instance_dir().display()
                );
                let reach = self.reach(i, &inst);
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

    /// How to reach unit `i`'s first listen port: where the host publishes it, its name on
    /// the hub, or (alone in its namespace) how to enter it.
    fn reach(&self, i: usize, inst: &Workload) -> Option<String> {
        let c = &self.units[i].component;
        let &port = c.listen.first()?;
        let stack = self.stack_of(i);
        if stack.network != osvm_core::stack::StackNetwork::Hub {
            return Some(inst.reach(port));
        }
        let name = format!("{}.{}.osvm:{port}", c.name, stack.name);
        let published: Vec<String> = c
            .publish
            .iter()
            .map(|p| format!("{} -> {}", p.host, p.port))
            .collect();
        Some(if published.is_empty() {
            format!("port {port} is on the stack's hub as {name}, as its [[policy]] allows")
        } else {
            format!(
                "published on the host at {} and on the stack's hub as {name}, as its [[policy]] allows",
                published.join(", ")
            )
        })
    }
}
