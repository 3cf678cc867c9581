//! The REST API, over a unix socket that only root (or the daemon's own user) may use.
//!
//! Every response is JSON; errors are `{"code": "...", "message": "..."}` with a fitting HTTP
//! status. The OpenAPI document is served at `/openapi.json` and checked in at
//! `docs/api/openapi.json`.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::{self, ConnectInfo};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use crate::daemon::{Command, ComponentAction, DaemonError, Shared};
use crate::engine::{ComponentView, EngineError};

/// The OpenAPI document.
pub const OPENAPI: &str = include_str!("../../../docs/api/openapi.json");

/// The largest request body accepted (a stack file).
const MAX_BODY: usize = 1 << 20;

/// An API error: HTTP status, a stable code, and words for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "code": self.code, "message": self.message })),
        )
            .into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            EngineError::Ambiguous(..) => {
                Self::new(StatusCode::CONFLICT, "ambiguous", e.to_string())
            }
            EngineError::Missing(_) => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            EngineError::Invalid(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                e.to_string(),
            ),
            EngineError::Store(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string())
            }
            EngineError::Start(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "start_failed",
                e.to_string(),
            ),
        }
    }
}

/// The peer of a connection, from `SO_PEERCRED`.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The peer's uid, if the kernel told.
    pub uid: Option<u32>,
    /// The connection's socket (a duplicate), for an upgraded connection that receives
    /// descriptors (`osvm mcp serve` handing over its stdin and stdout).
    pub socket: Option<Arc<std::os::fd::OwnedFd>>,
}

impl connect_info::Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        use std::os::fd::AsFd;
        Self {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
            socket: stream.io().as_fd().try_clone_to_owned().ok().map(Arc::new),
        }
    }
}

/// Serves the API on `socket` until SIGTERM or SIGINT.
pub async fn serve(socket: &Path, shared: Arc<Shared>) -> Result<(), DaemonError> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|e| DaemonError::Io(format!("bind {}", socket.display()), e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| DaemonError::Io(format!("chmod {}", socket.display()), e))?;
    let app = router(shared);
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        })
        .await
        .map_err(|e| DaemonError::Io("serve the API".into(), e))
}

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    let mcp = match &shared.mcp {
        Some(gw) => crate::mcp::routes(gw.clone()),
        None => Router::new(),
    };
    read_routes(&shared)
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/components/{name}/start", post(start))
        .route("/v1/components/{name}/stop", post(stop))
        .route("/v1/components/{name}/restart", post(restart))
        .route("/v1/components/{name}/swap", post(swap))
        .route("/v1/stacks", post(apply))
        .route("/v1/stacks/{name}", axum::routing::delete(remove))
        .route("/v1/stacks/{name}/policy", post(policy_add))
        .route(
            "/v1/stacks/{name}/policy/{index}",
            axum::routing::delete(policy_remove),
        )
        .merge(mcp.with_state(()))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(middleware::from_fn(only_root))
        .with_state(shared)
}

/// The API's routes that only read (every one a `GET`): the whole API the dashboard serves
/// (see `crate::ui`), so it cannot change anything by construction.
pub fn read_routes(shared: &Shared) -> Router<Arc<Shared>> {
    let mcp = match &shared.mcp {
        Some(gw) => crate::mcp::read_routes(gw.clone()),
        None => Router::new(),
    };
    Router::new()
        .route(
            "/v1/version",
            get(|| async { Json(json!({ "version": env!("CARGO_PKG_VERSION") })) }),
        )
        .route("/v1/components", get(list))
        .route("/v1/components/{name}", get(one))
        .route("/v1/components/{name}/logs", get(logs))
        .route("/v1/events", get(events))
        .route("/v1/stats", get(stats))
        .route("/v1/stacks/{name}/policy", get(policy_list))
        .route("/v1/network", get(network))
        .merge(mcp.with_state(()))
}

/// Refuses every peer but root and the daemon's own user.
async fn only_root(ConnectInfo(peer): ConnectInfo<Peer>, req: Request, next: Next) -> Response {
    let own = nix::unistd::geteuid().as_raw();
    match peer.uid {
        Some(0) => next.run(req).await,
        Some(uid) if uid == own => next.run(req).await,
        Some(uid) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("uid {uid} may not use the osvm API; only root may"),
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the peer's credentials are unknown",
        )
        .into_response(),
    }
}

fn views(shared: &Shared) -> Arc<Vec<ComponentView>> {
    shared.views.read().map(|v| v.clone()).unwrap_or_default()
}

fn find(shared: &Shared, name: &str) -> Result<ComponentView, ApiError> {
    let all = views(shared);
    let found: Vec<ComponentView> = all
        .iter()
        .filter(|v| v.name == name || format!("{}/{}", v.stack, v.name) == name)
        .cloned()
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_else(|| unreachable!())),
        0 => Err(EngineError::NotFound(name.into()).into()),
        _ => Err(EngineError::Ambiguous(
            name.into(),
            found
                .iter()
                .map(|v| format!("{}/{}", v.stack, v.name))
                .collect(),
        )
        .into()),
    }
}

async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let current = views(&shared);
    let cached = shared.views_json.lock().ok().and_then(|c| {
        c.as_ref()
            .filter(|(of, _)| Arc::ptr_eq(of, &current))
            .map(|(_, bytes)| bytes.clone())
    });
    let bytes = match cached {
        Some(bytes) => bytes,
        None => match serde_json::to_vec(&*current) {
            Ok(json) => {
                let bytes = Bytes::from(json);
                if let Ok(mut cache) = shared.views_json.lock() {
                    *cache = Some((current, bytes.clone()));
                }
                bytes
            }
            Err(e) => {
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                    .into_response();
            }
        },
    };
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

async fn one(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<ComponentView>, ApiError> {
    find(&shared, &name).map(Json)
}

pub(crate) async fn ask<T>(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    shared
        .commands
        .lock()
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the engine is gone",
            )
        })?
        .send(make(tx))
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the engine is gone",
            )
        })?;
    rx.await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the engine did not answer",
        )
    })
}

async fn act(
    shared: Arc<Shared>,
    name: String,
    action: ComponentAction,
) -> Result<Response, ApiError> {
    ask(&shared, |tx| Command::Component(action, name.clone(), tx)).await??;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "component": name, "accepted": format!("{action:?}").to_lowercase() })),
    )
        .into_response())
}

async fn start(
    State(s): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    act(s, name, ComponentAction::Start).await
}

async fn stop(
    State(s): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    act(s, name, ComponentAction::Stop).await
}

async fn restart(
    State(s): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    act(s, name, ComponentAction::Restart).await
}

/// `POST /v1/stacks`: `{"source": "stack.toml", "toml": "..."}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyRequest {
    /// Where the text came from, for error messages.
    source: String,
    /// The stack file's text.
    toml: String,
}

async fn apply(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body exceeds {MAX_BODY} bytes"),
        ));
    }
    let req: ApplyRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed JSON: {e}"),
        )
    })?;
    let stack = osvm_core::stack::parse(&req.toml, &req.source).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_stack",
            e.to_string(),
        )
    })?;
    let name = stack.name.clone();
    let components = stack.components.len();
    ask(&shared, |tx| Command::Apply(Box::new(stack), tx))
        .await?
        .map_err(|e| match e {
            crate::engine::ApplyError::Published(m) => {
                ApiError::new(StatusCode::CONFLICT, "published", m)
            }
            crate::engine::ApplyError::McpServer(m) => {
                ApiError::new(StatusCode::CONFLICT, "mcp_server", m)
            }
            crate::engine::ApplyError::Store(e) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string())
            }
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "stack": name, "components": components })),
    )
        .into_response())
}

/// `POST /v1/components/{name}/swap`: a [`crate::engine::SwapRequest`]; answers the plan
/// (202 when started, 200 for a dry run).
async fn swap(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body exceeds {MAX_BODY} bytes"),
        ));
    }
    let req: crate::engine::SwapRequest = if body.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("malformed swap request: {e}"),
            )
        })?
    };
    let dry = req.dry_run;
    let plan = ask(&shared, |tx| Command::Swap(name.clone(), Box::new(req), tx)).await??;
    let status = if dry {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(plan)).into_response())
}

/// One rule of `GET /v1/stacks/{name}/policy`.
#[derive(Debug, Serialize)]
struct ListedRule {
    index: usize,
    rule: osvm_core::stack::PolicyRule,
    text: String,
}

async fn policy_list(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let rules = ask(&shared, |tx| Command::Policies(name.clone(), tx)).await??;
    let set = osvm_policy::PolicySet::new(rules.clone());
    let listed: Vec<ListedRule> = rules
        .into_iter()
        .enumerate()
        .map(|(index, rule)| ListedRule {
            index,
            text: set.describe(index).unwrap_or_default(),
            rule,
        })
        .collect();
    Ok(Json(json!({ "stack": name, "default": "deny", "rules": listed })).into_response())
}

/// `POST /v1/stacks/{name}/policy`: one rule, in the stack file's terms.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRule {
    /// `allow` or `deny`.
    action: osvm_core::stack::PolicyAction,
    /// A selector: a component, `type:<kind>` or `*`.
    from: String,
    /// A selector: a component, `type:<kind>`, `cidr:<network>` or `*`.
    to: String,
    /// Destination ports; none means every port.
    #[serde(default)]
    ports: Vec<u16>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    protocol: Option<osvm_core::stack::Protocol>,
}

async fn policy_add(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    if body.len() > MAX_BODY {
        return Err(bad(format!("the body exceeds {MAX_BODY} bytes")));
    }
    let req: NewRule =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed rule: {e}")))?;
    let selector = |end: &str, s: &str| {
        s.parse::<osvm_core::stack::Selector>().map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_policy",
                format!("`{end}`: {e}"),
            )
        })
    };
    if req.ports.contains(&0) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_policy",
            "ports are 1-65535",
        ));
    }
    let rule = osvm_core::stack::PolicyRule {
        action: req.action,
        from: selector("from", &req.from)?,
        to: selector("to", &req.to)?,
        ports: req.ports,
        protocol: req.protocol.unwrap_or_default(),
    };
    let edit = crate::engine::PolicyEdit::Add(rule);
    let (index, text) = ask(&shared, |tx| Command::Policy(name.clone(), edit, tx)).await??;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "stack": name, "index": index, "rule": text })),
    )
        .into_response())
}

async fn policy_remove(
    State(shared): State<Arc<Shared>>,
    UrlPath((name, index)): UrlPath<(String, usize)>,
) -> Result<Response, ApiError> {
    let edit = crate::engine::PolicyEdit::Remove(index);
    let (index, text) = ask(&shared, |tx| Command::Policy(name.clone(), edit, tx)).await??;
    Ok(Json(json!({ "stack": name, "index": index, "removed": text })).into_response())
}

async fn network(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    match ask(&shared, Command::Network).await? {
        Some(Ok(view)) => Ok(Json(view).into_response()),
        Some(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "network",
            format!("reading the hub: {e}"),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_network",
            "no stack of this daemon uses the hub network (network = \"hub\")",
        )),
    }
}

async fn remove(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let existed = ask(&shared, |tx| Command::Remove(name.clone(), tx))
        .await?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()))?;
    if existed {
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "stack": name, "removing": true })),
        )
            .into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no stack is called `{name}`"),
        ))
    }
}

/// `?after=SEQ&limit=N&follow=true`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    follow: bool,
}

fn default_limit() -> usize {
    1000
}

/// Events as newline-delimited JSON; with `follow`, the stream stays open for new ones.
async fn events(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let mut live = q.follow.then(|| shared.events.subscribe());
    let past = shared
        .store
        .events_after(q.after, q.limit.min(100_000))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()))?;
    let last = past.last().map(|e| e.seq).unwrap_or(q.after);
    let mut text = String::new();
    for e in &past {
        text.push_str(&serde_json::to_string(e).unwrap_or_default());
        text.push('\n');
    }
    let Some(rx) = live.take() else {
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response());
    };
    let body = follow_events(vec![Bytes::from(text)], last, rx, ndjson_line, None);
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn ndjson_line(e: &crate::store::Event) -> Bytes {
    let mut line = serde_json::to_string(e).unwrap_or_default();
    line.push('\n');
    Bytes::from(line)
}

/// A streamed body: `first`, then every event of `live` after sequence number `last`, each
/// framed by `frame`; with `keep_alive`, those bytes after each quiet period of that length.
/// Ends when the client goes or the daemon stops.
pub(crate) fn follow_events(
    first: Vec<Bytes>,
    mut last: u64,
    mut live: tokio::sync::broadcast::Receiver<crate::store::Event>,
    frame: fn(&crate::store::Event) -> Bytes,
    keep_alive: Option<(Duration, Bytes)>,
) -> Body {
    use tokio::sync::broadcast::error::RecvError;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        for f in first {
            if tx.send(Ok(f)).await.is_err() {
                return;
            }
        }
        loop {
            let next = match &keep_alive {
                Some((quiet, bytes)) => match tokio::time::timeout(*quiet, live.recv()).await {
                    Ok(next) => next,
                    // Quiet for that long: the keep-alive bytes instead of an event.
                    Err(_) => {
                        if tx.send(Ok(bytes.clone())).await.is_err() {
                            return;
                        }
                        continue;
                    }
                },
                None => live.recv().await,
            };
            let out = match next {
                Ok(e) if e.seq > last => {
                    last = e.seq;
                    frame(&e)
                }
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `?tail=N&follow=true&stream=both|stdout|stderr`.
#[derive(Debug, Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
    #[serde(default = "default_stream")]
    stream: String,
}

fn default_stream() -> String {
    "both".into()
}

/// One log record, ready to print: `TIME STREAM PAYLOAD`.
struct Line {
    time: String,
    text: Vec<u8>,
}

/// Complete records of `bytes` (a log file's content from some offset), labelled `stream`.
fn lines_of(bytes: &[u8], stream: &str) -> Vec<Line> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| match osvm_sandbox::output::parse(l) {
            Some(r) => {
                let mut text = format!("{} {stream} ", r.time).into_bytes();
                text.extend_from_slice(r.payload);
                text.push(b'\n');
                Line {
                    time: r.time.to_string(),
                    text,
                }
            }
            None => {
                let mut text = format!("- {stream} ").into_bytes();
                text.extend_from_slice(l);
                text.push(b'\n');
                Line {
                    time: String::new(),
                    text,
                }
            }
        })
        .collect()
}

/// The bytes of `path` from `offset` up to the last complete record, and the new offset; a
/// file that shrank (rotated) is read from its start.
async fn read_records(path: &std::path::Path, offset: u64) -> (Vec<u8>, u64) {
    let bytes = tokio::fs::read(path).await.unwrap_or_default();
    let offset = if (bytes.len() as u64) < offset {
        0
    } else {
        offset
    };
    let tail = &bytes[offset as usize..];
    match tail.iter().rposition(|b| *b == b'\n') {
        Some(end) => (tail[..=end].to_vec(), offset + end as u64 + 1),
        None => (Vec::new(), offset),
    }
}

/// A component's current (or last) instance's log: stdout and stderr interleaved by time, each
/// record as `TIME STREAM LINE`.
async fn logs(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let view = find(&shared, &name)?;
    let streams: &[&str] = match q.stream.as_str() {
        "both" => &["stdout", "stderr"],
        "stdout" => &["stdout"],
        "stderr" => &["stderr"],
        "console" => &[],
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("stream must be both, stdout, stderr or console, not `{other}`"),
            ));
        }
    };
    let Some(instance) = view.instance.clone().or(view.last_instance.clone()) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_instance",
            format!("`{name}` has not run yet"),
        ));
    };
    let dir = shared.state_dir.join("instances").join(&instance);
    if streams.is_empty() {
        return console(&name, dir.join("console.log"), q).await;
    }
    let mut files: Vec<(std::path::PathBuf, &'static str, u64)> = streams
        .iter()
        .map(|s| {
            let label: &'static str = if *s == "stdout" { "stdout" } else { "stderr" };
            (dir.join(format!("{s}.log")), label, 0u64)
        })
        .collect();
    let mut all = Vec::new();
    for (path, label, offset) in files.iter_mut() {
        let (bytes, next) = read_records(path, 0).await;
        *offset = next;
        all.extend(lines_of(&bytes, label));
    }
    all.sort_by(|a, b| a.time.cmp(&b.time));
    if let Some(n) = q.tail {
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
    }
    let first: Vec<u8> = all.into_iter().flat_map(|l| l.text).collect();
    Ok(text_response(first, q.follow, Tail::Records(files)))
}

/// What a followed log response reads more of.
enum Tail {
    /// Stamped record files (path, stream label, offset read so far), interleaved by time.
    Records(Vec<(std::path::PathBuf, &'static str, u64)>),
    /// A raw file (a guest console) and the offset read so far.
    Raw(std::path::PathBuf, u64),
}

impl Tail {
    /// What was appended since the last call; `None` once the source is gone.
    async fn more(&mut self) -> Option<Vec<u8>> {
        match self {
            Tail::Records(files) => {
                let mut batch = Vec::new();
                for (path, label, offset) in files.iter_mut() {
                    let (bytes, next) = read_records(path, *offset).await;
                    *offset = next;
                    batch.extend(lines_of(&bytes, label));
                }
                batch.sort_by(|a, b| a.time.cmp(&b.time));
                Some(batch.into_iter().flat_map(|l| l.text).collect())
            }
            Tail::Raw(path, offset) => {
                let bytes = tokio::fs::read(&*path).await.ok()?;
                let start = (*offset as usize).min(bytes.len());
                *offset = bytes.len() as u64;
                Some(bytes[start..].to_vec())
            }
        }
    }
}

/// A text response of `first`; with `follow` the response stays open and carries what `tail`
/// finds appended, every 200 ms, until the client goes away or the source does.
fn text_response(first: Vec<u8>, follow: bool, mut tail: Tail) -> Response {
    if !follow {
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], first).into_response();
    }
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if tx.is_closed() {
                return;
            }
            let Some(chunk) = tail.more().await else {
                return;
            };
            if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(body_rx);
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A guest's console: a microVM's serial port (the guest kernel and agent), a unikernel's
/// (the Hermit kernel's log and the app's output).
async fn console(name: &str, path: std::path::PathBuf, q: LogsQuery) -> Result<Response, ApiError> {
    let Ok(bytes) = tokio::fs::read(&path).await else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_console",
            format!(
                "`{name}` has no guest console: only microVM and unikernel components have one"
            ),
        ));
    };
    let offset = bytes.len() as u64;
    let mut first = bytes;
    if let Some(n) = q.tail {
        let text = String::from_utf8_lossy(&first).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        let keep = lines[lines.len().saturating_sub(n)..].join("\n");
        first = if keep.is_empty() {
            Vec::new()
        } else {
            format!("{keep}\n").into_bytes()
        };
    }
    Ok(text_response(first, q.follow, Tail::Raw(path, offset)))
}

/// Totals and per-component usage.
#[derive(Debug, Serialize)]
struct Stats {
    total: usize,
    running: usize,
    healthy: usize,
    unhealthy: usize,
    failed: usize,
    stacks: usize,
    services: usize,
    endpoints: usize,
    components: Vec<ComponentView>,
}

async fn stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    use crate::engine::Health;
    let all = views(&shared);
    let mut stacks: Vec<&str> = all.iter().map(|v| v.stack.as_str()).collect();
    stacks.sort();
    stacks.dedup();
    Json(Stats {
        total: all.len(),
        running: all
            .iter()
            .filter(|v| v.status == osvm_core::model::ComponentStatus::Running)
            .count(),
        healthy: all
            .iter()
            .filter(|v| matches!(v.health, Health::Healthy(_)))
            .count(),
        unhealthy: all
            .iter()
            .filter(|v| matches!(v.health, Health::Failing(..)))
            .count(),
        failed: all
            .iter()
            .filter(|v| v.status == osvm_core::model::ComponentStatus::Failed)
            .count(),
        stacks: stacks.len(),
        services: all.iter().filter(|v| !v.listen.is_empty()).count(),
        endpoints: all.iter().map(|v| v.listen.len()).sum(),
        components: all.to_vec(),
    })
}
