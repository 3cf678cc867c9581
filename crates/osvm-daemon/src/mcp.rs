//! The MCP gateway's face on the daemon's API socket.
//!
//! - `/v1/mcp`: the gateway as a streamable-HTTP MCP server (any MCP client that can speak HTTP
//!   over a unix socket; `osvm mcp serve --listen` fronts it on TCP);
//! - `/v1/mcp/stdio`: an HTTP upgrade to a raw stdio-style MCP stream (newline-delimited
//!   JSON-RPC), which `osvm mcp serve` bridges to its own stdin/stdout for local agents;
//! - `/v1/mcp/tools`, `/v1/mcp/servers`, `/v1/mcp/call`: for operators (`osvm mcp tools|call`);
//! - `/v1/mcp/tokens`: bearer tokens (issue, list, revoke).
//!
//! Every MCP request names its client: `Authorization: Bearer <token>` (a token osvm issued,
//! checked and revocable), or `X-Osvm-Client: <identity>`, which only a caller on this socket
//! can send: the socket is root's alone (mode 0600), so that caller is an operator, or
//! `osvm mcp serve --listen` vouching for a client whose certificate it verified.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use hyper_util::rt::TokioIo;
use osvm_mcp::gateway::{ClientIdentity, Gateway, Session};
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde::Deserialize;
use serde_json::json;

/// The header through which a trusted caller of the socket names the client.
pub const CLIENT_HEADER: &str = "x-osvm-client";
/// The `Upgrade` protocol of the stdio bridge.
pub const STDIO_UPGRADE: &str = "osvm-mcp-stdio";
/// Sent by a bridge that can hand its stdin and stdout over, and answered by a daemon that
/// takes them: after the upgrade the bridge sends one byte with both descriptors
/// (`SCM_RIGHTS`), the daemon serves the session on them directly, and the connection only
/// says when the session ends (the daemon closes it).
pub const PASS_FDS_HEADER: &str = "x-osvm-stdio-fds";

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// A refused request: status, API error code, message.
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.0, self.1, self.2)
    }
}

/// A JSON request body.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed JSON: {e}"),
        )
    })
}

/// Who the request is from: a verified bearer token's client, or the trusted header.
fn authenticate(gw: &Gateway, headers: &HeaderMap) -> Result<String, Refusal> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Refusal(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Authorization must be `Bearer <token>`".into(),
                )
            })?;
        return match gw.tokens().verify(token.trim()) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(why)) => Err(Refusal(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                why.to_string(),
            )),
            Err(e) => Err(Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "tokens",
                e.to_string(),
            )),
        };
    }
    if let Some(client) = headers.get(CLIENT_HEADER).and_then(|v| v.to_str().ok()) {
        osvm_mcp::tokens::check_client(client)
            .map_err(|e| Refusal(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
        return Ok(client.to_owned());
    }
    Err(Refusal(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "an MCP request needs `Authorization: Bearer <token>` (osvm mcp token issue CLIENT)".into(),
    ))
}

/// The streamable-HTTP header that names a session.
const SESSION_HEADER: &str = "mcp-session-id";

/// Which client opened each streamable-HTTP session: a session is its client's alone. An entry
/// goes when its session is deleted or answered 404 (rmcp ends idle sessions after 5 minutes);
/// at most [`MAX_SESSIONS`] are open at once, so the table stays bounded.
#[derive(Clone, Default)]
struct Sessions(Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>);

/// The most streamable-HTTP sessions open at once; a new one past it is answered 503.
const MAX_SESSIONS: usize = 65_536;

/// Puts the authenticated client into the request for the gateway's handlers, and keeps each
/// session to the client that opened it: another client naming it (a leaked or guessed
/// `Mcp-Session-Id`) is answered as if it did not exist, 404, and can neither read its event
/// stream nor post into it. A session's DELETE answers 204.
async fn auth(
    State((gw, sessions)): State<(Gateway, Sessions)>,
    mut req: Request,
    next: Next,
) -> Response {
    let client = match authenticate(&gw, req.headers()) {
        Ok(client) => client,
        Err(r) => return r.into_response(),
    };
    let named = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(id) = &named {
        let owner = sessions.0.lock().expect("sessions").get(id).cloned();
        // Every session was opened through here, so one missing from the table is nobody's
        // (ended, expired, or never opened): fail closed.
        if owner.is_none_or(|o| o != client) {
            return refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such session for this client".into(),
            );
        }
    }
    if named.is_none() && sessions.0.lock().expect("sessions").len() >= MAX_SESSIONS {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            format!("{MAX_SESSIONS} MCP sessions are open; end one (DELETE) or let one expire"),
        );
    }
    let delete = req.method() == axum::http::Method::DELETE;
    req.extensions_mut().insert(ClientIdentity(client.clone()));
    let mut response = next.run(req).await;
    let mut table = sessions.0.lock().expect("sessions");
    if let Some(id) = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        table.entry(id.to_owned()).or_insert(client);
    }
    if delete && response.status().is_success() {
        if let Some(id) = &named {
            table.remove(id);
        }
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    // A session rmcp no longer knows (expired): its entry goes too.
    if response.status() == StatusCode::NOT_FOUND
        && let Some(id) = &named
    {
        table.remove(id);
    }
    response
}

/// The gateway's routes that act or stream (its read-only ones are [`read_routes`]).
pub fn routes(gw: Gateway) -> Router {
    let max = gw.settings().max_message_bytes as usize;
    let service_gw = gw.clone();
    let config = StreamableHttpServerConfig::default()
        // Only root reaches this socket; there is no browser to rebind a name against.
        .disable_allowed_hosts()
        .with_max_request_body_bytes(max)
        .with_sse_keep_alive(Some(Duration::from_secs(15)));
    let service = StreamableHttpService::new(
        move || Ok(Session::new(service_gw.clone(), None)),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let mcp = Router::new()
        .nest_service("/v1/mcp", service)
        .layer(middleware::from_fn_with_state(
            (gw.clone(), Sessions::default()),
            auth,
        ));
    Router::new()
        .route("/v1/mcp/stdio", get(stdio))
        .route("/v1/mcp/call", post(call))
        .route("/v1/mcp/tokens", get(list_tokens).post(issue_token))
        .route("/v1/mcp/tokens/{what}", delete(revoke_token))
        .with_state(gw)
        .merge(mcp)
}

/// The gateway's routes that only read: its servers and their tools (for the dashboard).
pub fn read_routes(gw: Gateway) -> Router {
    Router::new()
        .route("/v1/mcp/tools", get(tools))
        .route("/v1/mcp/servers", get(servers))
        .with_state(gw)
}

/// `GET /v1/mcp/stdio` with `Upgrade: osvm-mcp-stdio`: the connection becomes one MCP session
/// in stdio framing, its client fixed by the request's authentication.
async fn stdio(State(gw): State<Gateway>, mut req: Request) -> Response {
    let client = match authenticate(&gw, req.headers()) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(STDIO_UPGRADE));
    if !wants {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            format!("send `Connection: upgrade` and `Upgrade: {STDIO_UPGRADE}`"),
        );
    }
    // A bridge on this host offering its stdin and stdout, on a connection whose socket the
    // API kept.
    let socket = req
        .headers()
        .get(PASS_FDS_HEADER)
        .is_some_and(|v| v == "1")
        .then(|| {
            req.extensions()
                .get::<axum::extract::ConnectInfo<crate::api::Peer>>()
                .and_then(|c| c.0.socket.clone())
        })
        .flatten();
    let pass_fds = socket.is_some();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max = gw.settings().max_message_bytes as usize;
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let session = Session::new(gw, Some(client));
        if let Some(socket) = socket {
            // The client's own pipes: the bridge is out of the data path. What goes wrong is
            // told to the bridge on the connection, which it prints; the connection's end
            // tells it the session is over. hyper reads nothing more from an upgraded
            // connection, so the descriptors' byte is read here, with its descriptors.
            match passed_stdio(&socket).await {
                // A line past the limit gets an error with its id, and the session goes on.
                Ok((read, write)) => {
                    osvm_mcp::framing::serve_stdio(session, read, write, max).await
                }
                Err(e) => {
                    use tokio::io::AsyncWriteExt;
                    let mut conn = TokioIo::new(upgraded);
                    let _ = conn
                        .write_all(format!("the bridge's stdin and stdout: {e}\n").as_bytes())
                        .await;
                }
            }
            return;
        }
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        osvm_mcp::framing::serve_stdio(session, read, write, max).await;
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, STDIO_UPGRADE);
    if pass_fds {
        response = response.header(PASS_FDS_HEADER, "1");
    }
    response.body(Body::empty()).expect("a valid response")
}

type BoxRead = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// Receives a bridge's stdin and stdout (one byte with two descriptors) and wraps them for the
/// session. Each must be a pipe (stdin's read end, stdout's write end) or a unix socket, as
/// agents spawn their servers with; anything else is refused.
async fn passed_stdio(socket: &std::os::fd::OwnedFd) -> std::io::Result<(BoxRead, BoxWrite)> {
    use std::os::fd::OwnedFd;

    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};

    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    // Its own duplicate, watched for readiness (the socket is non-blocking already).
    let stream = tokio::net::UnixStream::from_std(socket.try_clone()?.into())?;
    let fds: Vec<OwnedFd> = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            stream.readable().await?;
            let got = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut byte = [0u8; 1];
                let mut space =
                    [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = recvmsg(
                    &stream,
                    &mut [std::io::IoSliceMut::new(&mut byte)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                if got.bytes == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(passed) = message {
                        fds.extend(passed);
                    }
                }
                Ok(fds)
            });
            match got {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| invalid("no descriptors within 10 s"))??;
    let [input, output]: [OwnedFd; 2] = fds
        .try_into()
        .map_err(|_| invalid("expected exactly two descriptors"))?;
    let read: BoxRead = match kind(&input)? {
        Kind::Fifo => Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(input)?),
        Kind::UnixSocket => Box::new(unix_stream(input)?),
        Kind::Other => return Err(invalid("stdin is neither a pipe nor a unix socket")),
    };
    let write: BoxWrite = match kind(&output)? {
        Kind::Fifo => Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(output)?),
        Kind::UnixSocket => Box::new(unix_stream(output)?),
        Kind::Other => return Err(invalid("stdout is neither a pipe nor a unix socket")),
    };
    Ok((read, write))
}

/// What a descriptor handed over for an MCP stdio session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pipe.
    Fifo,
    /// A unix stream socket.
    UnixSocket,
    /// Anything else (a terminal, a file, an inet socket).
    Other,
}

/// Whether `fd` is a pipe, a unix socket or neither: only the first two are taken for a session
/// (and offered by `osvm mcp serve`).
pub fn kind(fd: &impl std::os::fd::AsFd) -> std::io::Result<Kind> {
    use nix::sys::stat::{SFlag, fstat};
    let st = fstat(fd).map_err(std::io::Error::from)?;
    let mode = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    Ok(if mode == SFlag::S_IFIFO {
        Kind::Fifo
    } else if mode == SFlag::S_IFSOCK
        && nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(
            std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
        )
        .is_ok()
    {
        Kind::UnixSocket
    } else {
        Kind::Other
    })
}

fn unix_stream(fd: std::os::fd::OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
    let s = std::os::unix::net::UnixStream::from(fd);
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s)
}

#[derive(Deserialize)]
struct ToolsQuery {
    /// Whose view (default: the authenticated client).
    client: Option<String>,
    /// Include what the client may not call.
    #[serde(default)]
    all: bool,
}

/// The operator's client name when a request names none.
const OPERATOR: &str = "operator";

async fn tools(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    Query(q): Query<ToolsQuery>,
) -> Response {
    let client = q
        .client
        .or_else(|| authenticate(&gw, &headers).ok())
        .unwrap_or_else(|| OPERATOR.into());
    Json(json!({ "client": client, "tools": gw.tools(&client, q.all).await })).into_response()
}

async fn servers(State(gw): State<Gateway>) -> Response {
    Json(gw.servers()).into_response()
}

#[derive(Deserialize)]
struct CallBody {
    /// The client to call as (default: the authenticated one, else `operator`).
    client: Option<String>,
    /// `<server>.<tool>`.
    name: String,
    /// The tool's arguments.
    #[serde(default)]
    arguments: Option<serde_json::Map<String, serde_json::Value>>,
}

async fn call(State(gw): State<Gateway>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let req: CallBody = match json_body(&body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let client = req
        .client
        .or_else(|| authenticate(&gw, &headers).ok())
        .unwrap_or_else(|| OPERATOR.into());
    match gw.call(&client, &req.name, req.arguments).await {
        Ok(result) => Json(json!({ "client": client, "result": result })).into_response(),
        Err(e) => (
            StatusCode::OK,
            Json(json!({ "client": client, "error": { "code": e.code.0, "message": e.message, "data": e.data } })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct IssueBody {
    client: String,
    /// Lifetime, such as `24h` (default: until revoked).
    ttl: Option<String>,
}

async fn issue_token(State(gw): State<Gateway>, body: axum::body::Bytes) -> Response {
    let req: IssueBody = match json_body(&body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let ttl = match req.ttl.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return refuse(StatusCode::BAD_REQUEST, "bad_request", format!("ttl: {e}")),
    };
    match gw.tokens().issue(&req.client, ttl) {
        Ok((record, token)) => (
            StatusCode::CREATED,
            Json(json!({ "token": token, "record": record })),
        )
            .into_response(),
        Err(osvm_mcp::tokens::TokenError::Invalid(m)) => {
            refuse(StatusCode::BAD_REQUEST, "bad_request", m)
        }
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "tokens", e.to_string()),
    }
}

async fn list_tokens(State(gw): State<Gateway>) -> Response {
    match gw.tokens().list() {
        Ok(list) => Json(list).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "tokens", e.to_string()),
    }
}

async fn revoke_token(State(gw): State<Gateway>, UrlPath(what): UrlPath<String>) -> Response {
    match gw.tokens().revoke(&what) {
        Ok(revoked) => Json(json!({ "revoked": revoked })).into_response(),
        Err(osvm_mcp::tokens::TokenError::Unknown(w)) => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token or client `{w}`"),
        ),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "tokens", e.to_string()),
    }
}
