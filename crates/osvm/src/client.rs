//! A client of the daemon's REST API over its unix socket (HTTP/1.1 with hyper).

use std::os::fd::AsFd;
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
    ///
    /// The bridge sits on every message of an agent's session, so it is plain blocking I/O on
    /// two threads, one per direction: each message wakes one thread once. (tokio's stdin and
    /// stdout go through its blocking pool, a hand-off between threads each way.)
    pub fn bridge_stdio(
        &self,
        path: &str,
        headers: &[(&str, String)],
        protocol: &str,
        max_line: usize,
    ) -> anyhow::Result<()> {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::os::unix::net::UnixStream;

        let stream = UnixStream::connect(&self.socket).with_context(|| {
            format!(
                "cannot reach the osvm daemon at {}; is `osvm daemon` running?",
                self.socket.display()
            )
        })?;
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nhost: osvm\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n"
        );
        // An agent's pipes (or unix sockets) can be handed to the daemon, which then reads and
        // writes them itself: this process leaves the data path and only waits for the end.
        let offer_fds = passable(std::io::stdin().as_fd()) && passable(std::io::stdout().as_fd());
        if offer_fds {
            head.push_str(&format!("{}: 1\r\n", osvm_daemon::mcp::PASS_FDS_HEADER));
        }
        for (k, v) in headers {
            if v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(anyhow!("a line break in the value of header {k}"));
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        (&stream).write_all(head.as_bytes())?;

        // The answer's head: a status line and header lines, each bounded.
        let mut from_daemon = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
        let mut read_line = |what: &str| -> anyhow::Result<String> {
            let mut line = Vec::new();
            (&mut from_daemon).take(8192).read_until(b'\n', &mut line)?;
            if !line.ends_with(b"\n") {
                return Err(anyhow!("the daemon's answer ended in its {what}"));
            }
            Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
        };
        let status_line = read_line("status line")?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| anyhow!("the daemon answered {status_line:?}"))?;
        let mut length: Option<usize> = None;
        let mut takes_fds = false;
        loop {
            let line = read_line("headers")?;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().ok();
                } else if k
                    .trim()
                    .eq_ignore_ascii_case(osvm_daemon::mcp::PASS_FDS_HEADER)
                {
                    takes_fds = v.trim() == "1";
                }
            }
        }
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let mut body = Vec::new();
            let limit = length.unwrap_or(1 << 20).min(1 << 20) as u64;
            (&mut from_daemon).take(limit).read_to_end(&mut body)?;
            return Err(failure(status, &body).into());
        }

        if offer_fds && takes_fds {
            use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
            use std::os::fd::AsRawFd;
            let fds = [
                std::io::stdin().as_fd().as_raw_fd(),
                std::io::stdout().as_fd().as_raw_fd(),
            ];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[std::io::IoSlice::new(b"F")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .context("hand stdin and stdout to the daemon")?;
            // The daemon says nothing on this connection unless it could not take them; it
            // closes the connection when the session ends.
            let mut said = Vec::new();
            (&mut from_daemon).take(64 * 1024).read_to_end(&mut said)?;
            return if said.is_empty() {
                Ok(())
            } else {
                Err(anyhow!("{}", String::from_utf8_lossy(&said).trim()))
            };
        }

        // Client to daemon, on its own thread; an error there (a line too long, a broken
        // socket) ends the session and is reported.
        let to_daemon = stream.try_clone()?;
        let (failed_tx, failed) = std::sync::mpsc::channel::<anyhow::Error>();
        std::thread::spawn(move || {
            let up = || -> anyhow::Result<()> {
                let mut stdin = std::io::stdin().lock();
                let mut out = &to_daemon;
                let mut buf = vec![0u8; 64 * 1024];
                let mut line = 0usize;
                loop {
                    let n = match stdin.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    };
                    for &b in &buf[..n] {
                        line = if b == b'\n' { 0 } else { line + 1 };
                        if line > max_line {
                            return Err(anyhow!(
                                "a message from the client is longer than {max_line} bytes"
                            ));
                        }
                    }
                    out.write_all(&buf[..n])?;
                }
                // The client's input ended: the daemon answers what it has, then closes.
                to_daemon.shutdown(std::net::Shutdown::Write)?;
                Ok(())
            };
            if let Err(e) = up() {
                let _ = failed_tx.send(e);
                let _ = to_daemon.shutdown(std::net::Shutdown::Both);
            }
        });

        // Daemon to client, here, until the daemon closes the session.
        let mut stdout = std::io::stdout().lock();
        loop {
            let chunk = match from_daemon.fill_buf() {
                Ok([]) => break,
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(failed.try_recv().unwrap_or_else(|_| e.into()));
                }
            };
            let n = chunk.len();
            stdout.write_all(chunk)?;
            stdout.flush()?;
            from_daemon.consume(n);
        }
        match failed.try_recv() {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        }
    }
}

/// Whether a descriptor can be handed to the daemon for an MCP session: a pipe or a unix
/// socket (what agents spawn their servers with). A terminal or a file is copied instead.
fn passable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use osvm_daemon::mcp::{Kind, kind};
    matches!(kind(&fd), Ok(Kind::Fifo | Kind::UnixSocket))
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
