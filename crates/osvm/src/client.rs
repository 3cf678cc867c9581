//! A client of the daemon's REST API over its unix socket (HTTP/1.1 with hyper).

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// The daemon's answer was an error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    /// HTTP status.
    pub status: StatusCode,
    /// The API's error code.
    pub code: String,
    /// The API's message.
    pub message: String,
}

/// A connection factory for one daemon socket.
pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: &Path) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            socket: socket.to_path_buf(),
            rt,
        })
    }

    /// A fresh connection to the daemon's socket.
    async fn connect(&self) -> anyhow::Result<UnixStream> {
        UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "cannot reach the osvm daemon at {}; is `osvm daemon` running?",
                self.socket.display()
            )
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = self.connect().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://osvm{path}"))
            .header("host", "osvm");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        Ok(sender.send_request(req).await?)
    }

    /// Sends a request and returns the whole body; a non-2xx answer is an [`ApiFailure`].
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        self.rt.block_on(async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes().to_vec();
            if status.is_success() {
                Ok(bytes)
            } else {
                Err(failure(status, &bytes).into())
            }
        })
    }

    /// Sends a GET and hands each chunk of the body to `each` as it arrives (follow modes).
    pub fn stream(&self, path: &str, mut each: impl FnMut(&[u8])) -> anyhow::Result<()> {
        self.rt.block_on(async {
            let resp = self.send(Method::GET, path, None).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let bytes = body.collect().await?.to_bytes();
                return Err(failure(status, &bytes).into());
            }
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    each(&data);
                }
            }
            Ok(())
        })
    }
}

impl Client {
    /// Upgrades `GET path` (with `headers`) to a raw stream of protocol `protocol`, then copies
    /// this process's stdin to it and it to stdout until either side ends; at most `max_line`
    /// bytes between newlines are passed on from stdin.
    pub fn bridge_stdio(
        &self,
        path: &str,
        headers: &[(&str, String)],
        protocol: &str,
        max_line: usize,
    ) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.rt.block_on(async {
            let stream = self.connect().await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            let mut req = Request::builder()
                .method(Method::GET)
                .uri(format!("http://osvm{path}"))
                .header("host", "osvm")
                .header("connection", "upgrade")
                .header("upgrade", protocol);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let resp = sender
                .send_request(req.body(Full::new(Bytes::new()))?)
                .await?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                let status = resp.status();
                let bytes = resp.into_body().collect().await?.to_bytes();
                return Err(failure(status, &bytes).into());
            }
            let upgraded = hyper::upgrade::on(resp).await?;
            let (mut from_daemon, mut to_daemon) = tokio::io::split(TokioIo::new(upgraded));
            let up = async {
                let mut stdin = tokio::io::stdin();
                let mut buf = vec![0u8; 64 * 1024];
                let mut line = 0usize;
                loop {
                    let n = stdin.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    for &b in &buf[..n] {
                        line = if b == b'\n' { 0 } else { line + 1 };
                        if line > max_line {
                            return Err(anyhow!(
                                "a message from the client is longer than {max_line} bytes"
                            ));
                        }
                    }
                    to_daemon.write_all(&buf[..n]).await?;
                }
                to_daemon.shutdown().await?;
                anyhow::Ok(())
            };
            let down = async {
                let mut stdout = tokio::io::stdout();
                tokio::io::copy(&mut from_daemon, &mut stdout).await?;
                stdout.flush().await?;
                anyhow::Ok(())
            };
            // The session ends when the gateway closes it (or the client's input ends and the
            // gateway has answered).
            tokio::select! {
                r = down => r,
                r = async { up.await?; std::future::pending::<anyhow::Result<()>>().await } => r,
            }
        })
    }
}

fn failure(status: StatusCode, body: &[u8]) -> ApiFailure {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v[k].as_str())
            .map(String::from)
    };
    ApiFailure {
        status,
        code: field("code").unwrap_or_else(|| "unknown".into()),
        message: field("message").unwrap_or_else(|| {
            format!(
                "the daemon answered {status}: {}",
                String::from_utf8_lossy(body)
            )
        }),
    }
}

/// Turns a JSON body into `T`.
pub fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| anyhow!("malformed answer from the daemon: {e}"))
}
