//! The dashboard: a read-only web page the daemon serves when asked (`osvm daemon --ui ADDR`).
//!
//! Everything is in the binary: one HTML page, one script and one style sheet
//! (`crates/osvm-daemon/ui/`), plain JavaScript with no library, no CDN and no build step. The
//! page reads what the API reads, through the API's own `GET` handlers ([`api::read_routes`],
//! mounted under `/api`), so it can show everything and change nothing: there is no route here
//! that writes. Three views are the dashboard's own: the event stream as server-sent events,
//! the MCP audit trail (filtered), and the identities the CA issued.
//!
//! Every request but the sign-in page needs a bearer token issued with `osvm ui token issue`
//! (kept hashed in `<state>/ui/tokens.json`, apart from the MCP clients' tokens): in an
//! `Authorization: Bearer` header, or in the `HttpOnly`, `SameSite=Strict` cookie the sign-in
//! form sets. Each request checks the token again, so a revoked token stops working at once.
//! A browser without one gets the sign-in page and nothing else.
//!
//! The page builds its DOM with `textContent` and `createElement` only (never `innerHTML`), so
//! a component's log line, an event's reason or a tool's description is text, whatever it
//! holds; and every response carries a strict Content-Security-Policy (scripts and styles from
//! this origin only, no inline script, no framing) as a second wall.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use osvm_mcp::tokens::TokenStore;
use serde::Deserialize;
use serde_json::json;

use crate::api;
use crate::daemon::{DaemonError, Shared};

/// The cookie the sign-in form sets.
pub const COOKIE: &str = "osvm_ui";

const INDEX: &str = include_str!("../ui/index.html");
const LOGIN: &str = include_str!("../ui/login.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// What the page may load and do: its own script and style sheet, requests to this origin,
/// nothing inline, nothing framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' \
                   data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
                   frame-ancestors 'none'";

/// The largest sign-in form accepted.
const MAX_FORM: usize = 4096;

/// How many past events the stream starts with.
const EVENTS_BACKLOG: u64 = 200;

/// The dashboard's token store, `<state>/ui/tokens.json`.
pub fn tokens(state_dir: &Path) -> TokenStore {
    TokenStore::at(state_dir.join("ui").join("tokens.json"))
}

#[derive(Clone)]
struct Ui {
    shared: Arc<Shared>,
    tokens: Arc<TokenStore>,
    /// Over TLS, the trust domain whose client certificates (`spiffe://<it>/clients/<name>`)
    /// sign in like a token.
    trust_domain: Option<String>,
}

/// Binds `addr` for the dashboard (before the daemon's runtime starts, so the address can be
/// told in the daemon's first events and written to [`addr_file`]).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, DaemonError> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| DaemonError::Io(format!("bind the dashboard's address {addr}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| DaemonError::Io("set up the dashboard's listener".into(), e))?;
    Ok(listener)
}

/// Serves the dashboard on `listener` (from [`bind`]), on the daemon's runtime: over TLS with
/// `tls`, else plain HTTP; a connection on which nothing moves for `idle` is closed.
pub fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<UiTls>>,
    idle: Duration,
) -> Result<(), DaemonError> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| DaemonError::Io("set up the dashboard's listener".into(), e))?;
    let trust_domain = tls.as_ref().map(|t| t.trust_domain.clone());
    let app = router(shared, trust_domain);
    let slots = crate::listen::Slots::new(CONNECTIONS_AT_ONCE, CONNECTIONS_PER_SOURCE, idle);
    match tls {
        // Both end only with the runtime; an accept error is retried.
        None => {
            let listener = crate::listen::Bounded::new(listener, slots);
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
        Some(tls) => {
            let listener = TlsListener::start(listener, tls, slots);
            tokio::spawn(async move {
                let _ = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<Certified>(),
                )
                .await;
            });
        }
    }
    Ok(())
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections the dashboard holds at once (handshaking, idle or busy); one beyond is
/// closed at once. Anyone who can reach the port can connect before any credential is asked
/// for, so without a bound idle connections could take the daemon's descriptors, which its
/// components need.
const CONNECTIONS_AT_ONCE: usize = 128;

/// How many of those one source (an IPv4 address or an IPv6 /64) may hold: one client cannot
/// keep the page from the others. A browser opens about six per origin.
const CONNECTIONS_PER_SOURCE: usize = 32;

/// How long the dashboard's own certificate is valid; it is renewed at half that age.
const CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The dashboard's TLS: its certificate from the trust domain's CA (`spiffe://<trust
/// domain>/osvm/dashboard`, DNS name `dashboard.osvm.osvm`), renewed at half its life, and the
/// CA's current bundle and CRLs read again for every connection, so a client certificate
/// revoked with `osvm cert revoke` is refused from the next connection on.
pub struct UiTls {
    dir: PathBuf,
    trust_domain: String,
    current: std::sync::Mutex<(osvm_pki::tls::Material, std::time::Instant)>,
}

impl UiTls {
    /// The trust domain's CA (created if it has none: the second value says so) and a fresh
    /// certificate for the dashboard.
    pub fn open(state_dir: &Path, trust_domain: &str) -> Result<(Self, bool), DaemonError> {
        let dir = crate::identity::pki_dir(state_dir, trust_domain);
        let failed = |e: osvm_pki::PkiError| {
            DaemonError::Io(
                format!("the dashboard's certificate from the CA of {trust_domain}"),
                std::io::Error::other(e.to_string()),
            )
        };
        let pki = osvm_pki::Pki::new(&dir, trust_domain).map_err(failed)?;
        let created = !pki.has_ca();
        if created {
            pki.init_ca(osvm_pki::ca::CA_VALIDITY).map_err(failed)?;
        }
        let material = pki
            .issue_server("dashboard", CERT_VALIDITY)
            .map_err(failed)?;
        Ok((
            Self {
                dir,
                trust_domain: trust_domain.to_owned(),
                current: std::sync::Mutex::new((material, std::time::Instant::now())),
            },
            created,
        ))
    }

    /// The acceptor for one new connection.
    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let pki = osvm_pki::Pki::open(&self.dir).map_err(|e| e.to_string())?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.1.elapsed() > CERT_VALIDITY / 2 {
            *current = (
                pki.issue_server("dashboard", CERT_VALIDITY)
                    .map_err(|e| e.to_string())?,
                std::time::Instant::now(),
            );
        }
        let mut material = current.0.clone();
        drop(current);
        material.bundle_pem = pki.bundle_pem().map_err(|e| e.to_string())?;
        material.crl_pem = pki.crl_bundle_pem().map_err(|e| e.to_string())?;
        let config =
            osvm_pki::tls::server_config_optional_client(&material).map_err(|e| e.to_string())?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// Who is on the other end of a TLS connection: its address, and the SPIFFE ID of the client
/// certificate it presented (checked against the CA, its CRLs and the trust domain), if any.
#[derive(Debug, Clone)]
pub struct Certified {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The verified certificate's SPIFFE ID.
    pub spiffe_id: Option<String>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for Certified
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Accepts TCP connections and completes their TLS handshakes concurrently (a slow client
/// holds up only itself), handing on the finished ones.
pub struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(
        crate::listen::Counted<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        Certified,
    )>,
}

impl TlsListener {
    fn start(
        listener: tokio::net::TcpListener,
        tls: Arc<UiTls>,
        slots: crate::listen::Slots,
    ) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, addr)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some(slot) = slots.take(addr.ip()) else {
                    continue; // `tcp` is dropped: closed.
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(acceptor) = tls.acceptor() else {
                        return;
                    };
                    // A handshake with a certificate that fails its checks ends here.
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let spiffe_id =
                        osvm_pki::tls::peer_spiffe_id(stream.get_ref().1.peer_certificates());
                    let stream = crate::listen::Counted::new(stream, slot);
                    let _ = tx.send((stream, Certified { addr, spiffe_id })).await;
                });
            }
        });
        Self { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = crate::listen::Counted<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;
    type Addr = Certified;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(next) => next,
            // The accepting task never ends while the runtime runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Certified {
            addr: self.local,
            spiffe_id: None,
        })
    }
}

/// The dashboard's routes.
pub fn router(shared: Arc<Shared>, trust_domain: Option<String>) -> Router {
    let ui = Ui {
        tokens: Arc::new(tokens(&shared.state_dir)),
        shared: shared.clone(),
        trust_domain,
    };
    let api = api::read_routes(&shared).with_state(shared);
    Router::new()
        .route("/", get(|| async { page(INDEX) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route("/ui/events", get(events))
        .route("/ui/audit", get(audit))
        .route("/ui/identities", get(identities))
        .route("/ui/counters", get(counters))
        .nest("/api", api)
        .route_layer(middleware::from_fn_with_state(ui.clone(), signed_in))
        // The sign-in page and its style sheet hold nothing of the daemon's.
        .route("/login", get(|| async { page(LOGIN) }).post(login))
        .route("/app.css", get(|| async { asset("text/css", APP_CSS) }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .layer(middleware::from_fn(headers))
        .with_state(ui)
}

fn page(html: &'static str) -> Response {
    asset("text/html; charset=utf-8", html)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({ "code": status.as_u16(), "message": message })),
    )
        .into_response()
}

/// The security headers of every response.
async fn headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The token a request carries: its bearer header, or the sign-in cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })
}

/// Lets a request through only with a valid token; a browser asking for the page without one
/// is sent to the sign-in page.
async fn signed_in(State(ui): State<Ui>, req: Request, next: Next) -> Response {
    // An osvm client certificate (checked in the handshake) is as good as a token; a
    // component's certificate is not: a component is not an operator.
    let certified = req
        .extensions()
        .get::<axum::extract::ConnectInfo<Certified>>()
        .and_then(|c| c.0.spiffe_id.as_deref());
    if let (Some(id), Some(domain)) = (certified, ui.trust_domain.as_deref())
        && id.starts_with(&format!("spiffe://{domain}/clients/"))
    {
        return next.run(req).await;
    }
    let refused = match presented(req.headers()) {
        None => "sign in: no token".to_owned(),
        Some(token) => match ui.tokens.verify(&token) {
            Ok(Ok(_)) => return next.run(req).await,
            Ok(Err(why)) => why.to_string(),
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the token store is unreadable: {e}"),
                );
            }
        },
    };
    if req.uri().path() == "/" {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    }
    error(StatusCode::UNAUTHORIZED, &refused)
}

/// `POST /login` with `token=...`: sets the cookie and goes to the page, or back to the form.
async fn login(State(ui): State<Ui>, body: Bytes) -> Response {
    let token = (body.len() <= MAX_FORM)
        .then(|| {
            std::str::from_utf8(&body)
                .ok()?
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(|t| t.trim().to_owned())
        })
        .flatten();
    let valid = token
        .as_deref()
        .filter(|t| t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .filter(|t| matches!(ui.tokens.verify(t), Ok(Ok(_))));
    match valid {
        Some(token) => {
            let secure = if ui.trust_domain.is_some() {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200{secure}"
            );
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_owned()),
                    (header::SET_COOKIE, cookie),
                ],
            )
                .into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            LOGIN.replace(
                "<p id=\"refused\" hidden>",
                "<p id=\"refused\">That token was not accepted.",
            ),
        )
            .into_response(),
    }
}

/// `GET /ui/events`: the daemon's events as server-sent events, the last 200 first (or those
/// after `Last-Event-ID`), then as they happen.
async fn events(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let shared = ui.shared;
    let live = shared.events.subscribe();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let past = match resume {
        Some(after) => shared.store.events_after(after, 10_000),
        None => shared.store.last_event_seq().and_then(|last| {
            shared
                .store
                .events_after(last.saturating_sub(EVENTS_BACKLOG), 10_000)
        }),
    };
    let past = match past {
        Ok(p) => p,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let last = past.last().map_or(resume.unwrap_or(0), |e| e.seq);
    let first = past.iter().map(sse_frame).collect();
    // A comment now and then keeps proxies and the browser from timing the stream out.
    let keep_alive = (
        Duration::from_secs(15),
        Bytes::from_static(b": keep-alive\n\n"),
    );
    let body = api::follow_events(first, last, live, sse_frame, Some(keep_alive));
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

fn sse_frame(e: &crate::store::Event) -> Bytes {
    Bytes::from(format!(
        "id: {}\ndata: {}\n\n",
        e.seq,
        serde_json::to_string(e).unwrap_or_default()
    ))
}

/// `GET /ui/counters`: what each policy rule of the hub's stacks counted (the `rules` of
/// `GET /api/v1/network`), and an empty list when no stack uses the hub.
async fn counters(State(ui): State<Ui>) -> Response {
    match api::ask(&ui.shared, crate::daemon::Command::Network).await {
        Ok(Some(Ok(view))) => Json(view.rules).into_response(),
        Ok(None) => Json(json!([])).into_response(),
        Ok(Some(Err(e))) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("reading the hub: {e}"),
        ),
        Err(e) => e.into_response(),
    }
}

/// `GET /ui/audit?client=&tool=&outcome=&limit=`.
#[derive(Debug, Deserialize)]
struct AuditQuery {
    client: Option<String>,
    tool: Option<String>,
    outcome: Option<String>,
    limit: Option<usize>,
}

/// The MCP gateway's audit trail, newest first, filtered by client, tool (`server.tool`,
/// substring) and outcome.
async fn audit(State(ui): State<Ui>, Query(q): Query<AuditQuery>) -> Response {
    let path = ui.shared.state_dir.join("mcp").join("audit.log");
    let limit = q.limit.unwrap_or(200).min(2000);
    let found = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<serde_json::Value>> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for line in text.lines().rev() {
            let Ok(r) = serde_json::from_str::<osvm_mcp::audit::Record>(line) else {
                continue;
            };
            let tool = format!(
                "{}.{}",
                r.server.as_deref().unwrap_or("-"),
                r.tool.as_deref().unwrap_or("-")
            );
            let outcome = serde_json::to_value(r.outcome).unwrap_or_default();
            let keep = q
                .client
                .as_deref()
                .is_none_or(|c| c.is_empty() || r.client == c)
                && q.tool.as_deref().is_none_or(|t| tool.contains(t))
                && q.outcome
                    .as_deref()
                    .is_none_or(|o| o.is_empty() || outcome.as_str() == Some(o));
            if keep {
                out.push(serde_json::to_value(&r).unwrap_or_default());
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    })
    .await;
    match found {
        Ok(Ok(records)) => Json(records).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("read the audit log: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `GET /ui/identities`: every certificate each trust domain's CA issued (SPIFFE ID, serial,
/// validity, revocation), by trust domain.
async fn identities(State(ui): State<Ui>) -> Response {
    let pki = ui.shared.state_dir.join("pki");
    let found = tokio::task::spawn_blocking(move || {
        let mut domains: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let Ok(dirs) = std::fs::read_dir(&pki) else {
            return domains;
        };
        for dir in dirs.filter_map(Result::ok).map(|d| d.path()) {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let listed = osvm_pki::Pki::open(&dir).and_then(|p| p.list());
            domains.insert(
                name,
                match listed {
                    Ok(entries) => json!({ "issued": entries }),
                    Err(e) => json!({ "error": e.to_string() }),
                },
            );
        }
        domains
    })
    .await;
    match found {
        Ok(domains) => Json(domains).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Where the dashboard's address is written for scripts and tests: `<state>/ui.addr`.
pub fn addr_file(state_dir: &Path) -> PathBuf {
    state_dir.join("ui.addr")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    /// The token comes from the bearer header first, else from the dashboard's own cookie
    /// among others; a cookie of another name that ends the same way is not it.
    #[test]
    fn the_token_is_the_bearer_or_the_dashboards_own_cookie() {
        assert_eq!(presented(&headers(&[])), None);
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer osvm_a")])),
            Some("osvm_a".into())
        );
        assert_eq!(
            presented(&headers(&[("cookie", "x=1; osvm_ui=osvm_b; y=2")])),
            Some("osvm_b".into())
        );
        assert_eq!(
            presented(&headers(&[
                ("cookie", "not_osvm_ui=osvm_c"),
                ("cookie", "z=3")
            ])),
            None
        );
        assert_eq!(
            presented(&headers(&[
                ("cookie", "osvm_ui=osvm_b"),
                ("authorization", "Bearer osvm_a")
            ])),
            Some("osvm_a".into())
        );
        assert_eq!(
            presented(&headers(&[("authorization", "Basic b3N2bQ==")])),
            None
        );
    }
}
