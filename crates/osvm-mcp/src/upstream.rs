//! The gateway's side of one MCP server: an MCP client session (rmcp) over the server's stdio
//! channel, which the daemon owns as two pipes, or over streamable HTTP to a port inside the
//! server's network namespace.
//!
//! The gateway runs on the host, and a component's ports exist only in its own namespace. For
//! an HTTP server, [`Relay`] listens on a unix socket of the gateway's (root only) and carries
//! each connection to `127.0.0.1:<port>` inside the component's namespace (the TCP socket is
//! made by a short-lived thread that entered it); rmcp's HTTP client (reqwest) uses that unix
//! socket. Nothing is opened on the host's network.
//!
//! The handshake (`initialize`) has a deadline: a server that writes garbage instead of
//! answering would otherwise hold it forever. A negotiated version this SDK does not know is
//! refused. Every line the server writes is bounded: [`LineCapReader`] ends the session with an
//! error at the first line longer than the limit, so every call in flight fails at once (rmcp
//! alone would drop the line and leave its call waiting for its timeout), and the gateway
//! reports the server as broken so the orchestrator restarts it.

use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;

use crate::framing::SharedOut;

/// A connected MCP server.
pub struct Upstream {
    /// The MCP client session.
    pub client: RunningService<RoleClient, ClientConfig>,
    /// The protocol version agreed on.
    pub protocol: String,
    /// The server's own name and version, as it announced them.
    pub server_info: String,
    /// For an HTTP server, the relay into its namespace (lives as long as the session).
    pub relay: Option<Relay>,
    /// For a server on stdio, where the gateway relays `tools/call`s as bytes.
    pub(crate) raw: Option<Arc<crate::relay::RawLink>>,
}

/// An `AsyncRead` that fails once a single line (a JSON-RPC message on the stdio transport)
/// grows past `max` bytes.
pub struct LineCapReader<R> {
    inner: R,
    max: usize,
    current: usize,
}

impl<R> LineCapReader<R> {
    /// Bounds the lines read from `inner` to `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            current: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LineCapReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        for &b in &buf.filled()[before..] {
            if b == b'\n' {
                this.current = 0;
            } else {
                this.current += 1;
                if this.current > this.max {
                    // An error must come with no bytes read (tokio's read contract).
                    buf.set_filled(before);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a message longer than the limit of {} bytes", this.max),
                    )));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// How osvm introduces itself to MCP servers.
pub fn client_config() -> ClientConfig {
    // The newest revision that still has `initialize`: the servers in the field (the reference
    // servers' TypeScript SDK included) answer it; rmcp's default asks for a newer one.
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("osvm-mcp-gateway", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

/// How long the gateway uses one certificate toward an MCP server before it asks for a fresh
/// one (they are issued for 24 h).
const RENEW_AFTER: Duration = Duration::from_secs(12 * 3600);

/// Makes the gateway's client configuration with a fresh certificate.
type Issue = dyn Fn() -> Result<rustls::ClientConfig, String> + Send + Sync;
/// The configuration in use and when it was made.
type Current = Option<(std::time::Instant, std::sync::Arc<rustls::ClientConfig>)>;

/// Where a streamable-HTTP MCP server is: `to` as seen from the network namespace `netns` (a
/// process's own loopback, or a guest's hub address from the hub), its endpoint `path`, and
/// whether the gateway speaks mutual TLS to it.
pub struct HttpUpstream {
    /// The namespace the relay connects from.
    pub netns: std::path::PathBuf,
    /// The server's address there.
    pub to: std::net::SocketAddr,
    /// Its MCP endpoint.
    pub path: String,
    /// The gateway's TLS, when the server asks for it.
    pub tls: Option<UpstreamTls>,
}

/// How the gateway speaks mutual TLS to an MCP server: its identity (renewed while the server
/// runs) and the name the server's certificate must carry.
#[derive(Clone)]
pub struct UpstreamTls {
    issue: std::sync::Arc<Issue>,
    current: std::sync::Arc<std::sync::Mutex<Current>>,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl UpstreamTls {
    /// The gateway presenting what `issue` makes (called now, and again for a connection made
    /// when the certificate is older than [`RENEW_AFTER`]) to a server that must prove
    /// `server_name`.
    pub fn new(
        issue: impl Fn() -> Result<rustls::ClientConfig, String> + Send + Sync + 'static,
        server_name: &str,
    ) -> Result<Self, String> {
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| format!("server name {server_name:?}: {e}"))?;
        let tls = Self {
            issue: std::sync::Arc::new(issue),
            current: Default::default(),
            server_name,
        };
        tls.config()?;
        Ok(tls)
    }

    /// The configuration for a new connection.
    fn config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((made, config)) = current.as_ref()
            && made.elapsed() < RENEW_AFTER
        {
            return Ok(config.clone());
        }
        let config = std::sync::Arc::new((self.issue)()?);
        *current = Some((std::time::Instant::now(), config.clone()));
        Ok(config)
    }
}

/// Carries connections from a unix socket to an address as seen from a network namespace (a
/// process server's own loopback, or a guest's hub address from the hub).
pub struct Relay {
    /// The unix socket clients connect to.
    pub path: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to `to` from inside the namespace `netns`.
fn connect_in(
    netns: &std::path::Path,
    to: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    osvm_net::netns::run_in_path(netns, move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })
    .map_err(std::io::Error::other)?
}

impl Relay {
    /// Relays `path` (a unix socket, created) to `to` as seen from namespace `netns`, over
    /// mutual TLS when `tls` says how (the HTTP client speaks plain HTTP to the socket).
    pub fn start(
        path: std::path::PathBuf,
        netns: std::path::PathBuf,
        to: std::net::SocketAddr,
        tls: Option<UpstreamTls>,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (netns, tls) = (netns.clone(), tls.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tcp)) =
                        tokio::task::spawn_blocking(move || connect_in(&netns, to)).await
                    else {
                        return;
                    };
                    if tcp.set_nonblocking(true).is_err() {
                        return;
                    }
                    let Ok(mut tcp) = tokio::net::TcpStream::from_std(tcp) else {
                        return;
                    };
                    let _ = tcp.set_nodelay(true);
                    let Some(tls) = tls else {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut tcp).await;
                        return;
                    };
                    let config = {
                        let tls = tls.clone();
                        match tokio::task::spawn_blocking(move || tls.config()).await {
                            Ok(Ok(config)) => config,
                            Ok(Err(e)) => {
                                tracing::warn!("the gateway's certificate for {to}: {e}");
                                return;
                            }
                            Err(_) => return,
                        }
                    };
                    let connector = tokio_rustls::TlsConnector::from(config);
                    let handshake = tokio::time::timeout(
                        Duration::from_secs(10),
                        connector.connect(tls.server_name.clone(), tcp),
                    );
                    match handshake.await {
                        Ok(Ok(mut stream)) => {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
                        }
                        Ok(Err(e)) => tracing::warn!(
                            "mutual TLS with the MCP server {:?} at {to} failed: {e}",
                            tls.server_name
                        ),
                        Err(_) => tracing::warn!(
                            "mutual TLS with the MCP server {:?} at {to}: no handshake within 10s",
                            tls.server_name
                        ),
                    }
                });
            }
        });
        Ok(Self { path, task })
    }
}

/// Connects to an MCP server's streamable HTTP endpoint `path` on `port` through `relay`,
/// trying until `deadline` passes (the server may still be starting).
pub async fn connect_http(
    relay: &Relay,
    port: u16,
    path: &str,
    max_message: usize,
    deadline: Duration,
) -> Result<Upstream, String> {
    let http = reqwest::Client::builder()
        .unix_socket(relay.path.clone())
        .build()
        .map_err(|e| format!("an HTTP client: {e}"))?;
    let began = std::time::Instant::now();
    loop {
        let config =
            StreamableHttpClientTransportConfig::with_uri(format!("http://localhost:{port}{path}"))
                .max_json_response_size(max_message)
                .max_sse_event_size(max_message);
        let transport = StreamableHttpClientTransport::with_client(http.clone(), config);
        let left = deadline.saturating_sub(began.elapsed());
        match tokio::time::timeout(left, client_config().serve(transport)).await {
            Ok(Ok(client)) => return finish(client),
            Ok(Err(e)) if began.elapsed() + Duration::from_millis(200) < deadline => {
                tracing::debug!("MCP server on port {port} not ready: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => return Err(format!("initialize over HTTP failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "no answer to initialize on port {port} within {}s",
                    deadline.as_secs()
                ));
            }
        }
    }
}

/// Checks the agreed version and describes the server.
fn finish(client: RunningService<RoleClient, ClientConfig>) -> Result<Upstream, String> {
    let info = client
        .peer()
        .peer_info()
        .ok_or("the server sent no initialize result")?;
    let protocol = info.protocol_version.clone();
    if !ProtocolVersion::KNOWN_VERSIONS.contains(&protocol) {
        return Err(format!(
            "the server answered protocol version {protocol}, which is not an MCP revision"
        ));
    }
    let server_info = info
        .server_info
        .as_ref()
        .map(|i| format!("{} {}", i.name, i.version))
        .unwrap_or_default();
    Ok(Upstream {
        protocol: protocol.to_string(),
        server_info,
        client,
        relay: None,
        raw: None,
    })
}

/// Connects to an MCP server whose stdout is `from` and stdin is `to`.
pub async fn connect_stdio(
    from: OwnedFd,
    to: OwnedFd,
    max_message: usize,
    handshake: Duration,
) -> Result<Upstream, String> {
    let rx = pipe::Receiver::from_owned_fd(from).map_err(|e| format!("the stdout pipe: {e}"))?;
    let tx = pipe::Sender::from_owned_fd(to).map_err(|e| format!("the stdin pipe: {e}"))?;
    // rmcp and the relay share the server's input (whole lines each) and its output (the
    // relay takes the answers to its own calls, rmcp reads the rest).
    let input = SharedOut::new(tx);
    let raw = crate::relay::RawLink::new(Arc::new(input.clone()), max_message);
    let output = crate::relay::ServerOutput::new(rx, max_message, raw.clone(), input.clone());
    let transport = AsyncRwTransport::new_client(output, input).with_max_line_length(max_message);
    let client = tokio::time::timeout(handshake, client_config().serve(transport))
        .await
        .map_err(|_| format!("no answer to initialize within {}s", handshake.as_secs()))?
        .map_err(|e| format!("initialize failed: {e}"))?;
    let mut up = finish(client)?;
    up.raw = Some(raw);
    Ok(up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn lines_past_the_cap_end_the_stream_with_an_error() {
        let data = b"short\nthis line is far too long\nnever read\n".to_vec();
        let mut r = LineCapReader::new(&data[..], 10);
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let mut ok = LineCapReader::new(&b"0123456789\n0123456789\n"[..], 10);
        let mut out = Vec::new();
        ok.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), 22);
    }
}
