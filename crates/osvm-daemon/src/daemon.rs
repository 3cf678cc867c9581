//! `osvm daemon`: the engine on its own thread, and the REST API on a unix socket.
//!
//! The engine thread owns the [`Engine`]: it ticks every 200 ms, and wakes at once for a
//! command from the API (apply a stack, remove one, start/stop/restart a component). After each
//! tick it publishes a snapshot of every component for the API to read, and broadcasts the new
//! events to followers. The API runs on tokio and never touches the engine directly.
//!
//! Stopping the daemon (SIGTERM, SIGINT) does not stop the components: they run on, and the
//! next daemon adopts them.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use osvm_core::stack::Stack;
use osvm_sandbox::SandboxRuntime;
use tokio::sync::{broadcast, oneshot};

use crate::engine::{ApplyError, ComponentView, Engine, EngineError};
use crate::store::{Event, EventKind, Store, StoreError};

/// How often the engine looks at every component when nothing asks it to.
const TICK: Duration = Duration::from_millis(200);

/// Where the daemon keeps its state and listens.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The state directory (also the sandbox runtime's).
    pub state_dir: PathBuf,
    /// The API's unix socket.
    pub socket: PathBuf,
    /// Where to serve Prometheus metrics, if anywhere (opt-in).
    pub metrics: Option<std::net::SocketAddr>,
    /// Where to serve the dashboard, if anywhere (opt-in; see `crate::ui`).
    pub ui: Option<std::net::SocketAddr>,
    /// Serve it over TLS with a certificate of this trust domain's CA, admitting that CA's
    /// client certificates as well as tokens.
    pub ui_tls: Option<String>,
    /// How long a connection to the dashboard or the metrics endpoint may stay open with
    /// nothing moving on it (see `crate::listen`).
    pub http_idle: Duration,
}

impl DaemonConfig {
    /// The default socket inside `state_dir`.
    pub fn default_socket(state_dir: &Path) -> PathBuf {
        state_dir.join("osvm.sock")
    }
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An I/O step failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// A request for the engine thread.
pub enum Command {
    /// Apply a stack.
    Apply(Box<Stack>, oneshot::Sender<Result<(), ApplyError>>),
    /// Remove a stack; answers whether it existed.
    Remove(String, oneshot::Sender<Result<bool, StoreError>>),
    /// Change a stack's policy.
    Policy(
        String,
        crate::engine::PolicyEdit,
        oneshot::Sender<Result<(usize, String), EngineError>>,
    ),
    /// Hot-swap a component.
    Swap(
        String,
        Box<crate::engine::SwapRequest>,
        oneshot::Sender<Result<crate::engine::SwapPlan, EngineError>>,
    ),
    /// A stack's policy rules.
    Policies(
        String,
        oneshot::Sender<Result<Vec<osvm_core::stack::PolicyRule>, EngineError>>,
    ),
    /// Show the hub network.
    Network(
        oneshot::Sender<Option<Result<crate::network::NetView, crate::network::NetPlaneError>>>,
    ),
    /// Start, stop or restart a component.
    Component(
        ComponentAction,
        String,
        oneshot::Sender<Result<(), EngineError>>,
    ),
}

/// What to do to one component.
#[derive(Debug, Clone, Copy)]
pub enum ComponentAction {
    /// `osvm start`.
    Start,
    /// `osvm stop`.
    Stop,
    /// `osvm restart`.
    Restart,
}

/// What the API shares with the engine thread.
pub struct Shared {
    /// The latest snapshot of every component, replaced whole at every pass (readers share
    /// it; nothing is copied per request).
    pub views: RwLock<Arc<Vec<ComponentView>>>,
    /// The JSON of a snapshot, made by the first request that wanted it and kept for the
    /// requests that come before the next pass (`osvm ps` at 1,000 components).
    pub views_json: std::sync::Mutex<Option<(Arc<Vec<ComponentView>>, axum::body::Bytes)>>,
    /// New events, for followers.
    pub events: broadcast::Sender<Event>,
    /// Requests for the engine.
    pub commands: std::sync::Mutex<Sender<Command>>,
    /// The store, for reading history (events).
    pub store: Arc<Store>,
    /// The state directory (instance logs live under it).
    pub state_dir: PathBuf,
    /// Duration of the last reconcile pass, in microseconds.
    pub last_tick_us: std::sync::atomic::AtomicU64,
    /// Reconcile passes so far.
    pub ticks: std::sync::atomic::AtomicU64,
    /// The MCP gateway.
    pub mcp: Option<osvm_mcp::Gateway>,
}

/// Creates `dir` (and its parents) and makes it root's alone (0700): osvm's state holds
/// secrets (environments, keys, tokens).
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// How many connections the metrics endpoint holds at once.
const METRICS_CONNECTIONS: usize = 32;
/// How many of those one source may hold (a Prometheus server scrapes on one).
const METRICS_CONNECTIONS_PER_SOURCE: usize = 8;

/// The default of [`DaemonConfig::http_idle`]: longer than the dashboard's keep-alive on its
/// event stream (15 s) and a Prometheus server's usual scrape interval.
pub const HTTP_IDLE_DEFAULT: Duration = Duration::from_secs(60);

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: DaemonConfig, runtime: SandboxRuntime) -> Result<(), DaemonError> {
    private_dir(&config.state_dir)
        .map_err(|e| DaemonError::Io(format!("create {}", config.state_dir.display()), e))?;
    let store = Arc::new(Store::open(&config.state_dir.join("osvm.redb"))?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Io("start the async runtime".into(), e))?;
    let gateway = osvm_mcp::Gateway::new(rt.handle().clone(), &config.state_dir);
    let mut engine = Engine::open(runtime, store.clone(), Some(gateway.clone()))?;
    engine.note(EventKind::Daemon, "started");
    let ui = match config.ui {
        Some(addr) => {
            let tls = match &config.ui_tls {
                Some(domain) => {
                    let (tls, created) = crate::ui::UiTls::open(&config.state_dir, domain)?;
                    if created {
                        engine.note(
                            EventKind::CaCreated,
                            &format!("a CA for trust domain {domain} (for the dashboard's TLS)"),
                        );
                    }
                    Some(Arc::new(tls))
                }
                None => None,
            };
            let listener = crate::ui::bind(addr)?;
            let bound = listener
                .local_addr()
                .map_err(|e| DaemonError::Io("read the dashboard's address".into(), e))?;
            // For scripts and tests that asked for port 0.
            let file = crate::ui::addr_file(&config.state_dir);
            std::fs::write(&file, format!("{bound}\n"))
                .map_err(|e| DaemonError::Io(format!("write {}", file.display()), e))?;
            let how = match &config.ui_tls {
                Some(domain) => format!(
                    "https://{bound}/ (certificate of the {domain} CA for dashboard.osvm.osvm; \
                     sign in with a token from `osvm ui token issue` or an `osvm cert client` \
                     certificate)"
                ),
                None => {
                    format!("http://{bound}/ (sign in with a token from `osvm ui token issue`)")
                }
            };
            engine.note(EventKind::Daemon, &format!("dashboard on {how}"));
            Some((listener, tls))
        }
        None => None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (events, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        views: RwLock::new(Arc::new(engine.views())),
        views_json: Default::default(),
        events,
        commands: std::sync::Mutex::new(tx),
        store,
        state_dir: config.state_dir.clone(),
        last_tick_us: Default::default(),
        ticks: Default::default(),
        mcp: Some(gateway),
    });
    let engine_shared = shared.clone();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine_loop(engine, &engine_shared, &rx, &stop_rx))
        .map_err(|e| DaemonError::Io("start the engine thread".into(), e))?;
    let served = rt.block_on(async {
        if let Some(addr) = config.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::Io(format!("bind the metrics listener {addr}"), e))?;
            // Unauthenticated like any Prometheus endpoint, so bounded (see `crate::listen`).
            let listener = crate::listen::Bounded::new(
                listener,
                crate::listen::Slots::new(
                    METRICS_CONNECTIONS,
                    METRICS_CONNECTIONS_PER_SOURCE,
                    config.http_idle,
                ),
            );
            let app = crate::metrics::router(shared.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
        if let Some((listener, tls)) = ui {
            crate::ui::serve(listener, shared.clone(), tls, config.http_idle)?;
        }
        crate::api::serve(&config.socket, shared).await
    });
    let _ = stop_tx.send(());
    let _ = engine_thread.join();
    let _ = std::fs::remove_file(&config.socket);
    served
}

fn engine_loop(
    mut engine: Engine,
    shared: &Shared,
    commands: &Receiver<Command>,
    stop: &Receiver<()>,
) {
    loop {
        if stop.try_recv().is_ok() {
            engine.note(EventKind::Daemon, "stopping; the components keep running");
            publish(&mut engine, shared);
            return;
        }
        match commands.recv_timeout(TICK) {
            Ok(cmd) => handle(&mut engine, cmd),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        publish(&mut engine, shared);
    }
}

fn handle(engine: &mut Engine, cmd: Command) {
    match cmd {
        Command::Apply(stack, reply) => {
            let _ = reply.send(engine.apply(*stack));
        }
        Command::Remove(name, reply) => {
            let _ = reply.send(engine.remove_stack(&name));
        }
        Command::Policy(stack, edit, reply) => {
            let _ = reply.send(engine.edit_policy(&stack, edit));
        }
        Command::Swap(name, req, reply) => {
            let _ = reply.send(engine.swap(&name, *req));
        }
        Command::Policies(stack, reply) => {
            let _ = reply.send(engine.policies(&stack));
        }
        Command::Network(reply) => {
            let _ = reply.send(engine.network_view());
        }
        Command::Component(action, name, reply) => {
            let result = match action {
                ComponentAction::Start => engine.start_component(&name),
                ComponentAction::Stop => engine.stop_component(&name),
                ComponentAction::Restart => engine.restart_component(&name),
            };
            let _ = reply.send(result);
        }
    }
}

fn publish(engine: &mut Engine, shared: &Shared) {
    use std::sync::atomic::Ordering::Relaxed;
    let began = std::time::Instant::now();
    let events = engine.tick();
    shared
        .last_tick_us
        .store(began.elapsed().as_micros() as u64, Relaxed);
    shared.ticks.fetch_add(1, Relaxed);
    for event in events {
        // No follower is listening: nothing to do.
        let _ = shared.events.send(event);
    }
    let fresh = Arc::new(engine.views());
    if let Ok(mut views) = shared.views.write() {
        *views = fresh;
    }
}
