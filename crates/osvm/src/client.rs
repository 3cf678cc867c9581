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

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = UnixStream::connect(&self.socket).await.with_context(|| {
            format!(
                "cannot reach the osvm daemon at {}; is `osvm daemon` running?",
                self.socket.display()
            )
        })?;
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
