//! A client's stdio session with a size limit that answers instead of hanging.
//!
//! On the stdio transport every JSON-RPC message is one line. A line longer than the limit is
//! not passed on; the client gets an Invalid Request error for it, with the id of the request
//! found by scanning the line as it streams past (memory stays bounded by the limit), and the
//! session goes on. rmcp's own transport drops such a line silently, which leaves a client
//! waiting for an answer that never comes.
//!
//! ```text
//! client ──lines──▶ CappedLines (cap + id scan, tools/call relayed) ──▶ rmcp session
//! client ◀──lines── SharedOut (+ refusals and relayed answers, between lines) ◀──
//! ```
//!
//! A `tools/call` of an authenticated session to a server on stdio does not go through rmcp:
//! [`crate::relay`] checks it and writes it to the server's input from here, and the server's
//! answer is written to [`SharedOut`] by the task reading the server's output.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use rmcp::ServiceExt;
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, BufReader, ReadBuf};

use crate::gateway::Session;

/// The JSON-RPC code of a message the gateway would not read (Invalid Request).
pub const TOO_LARGE: i32 = -32600;

/// Finds a JSON object's top-level `"id"` value in a stream of bytes, without keeping more
/// than the value itself.
#[derive(Debug, Default)]
pub struct IdScanner {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The current top-level key string, while it is read (at most a few bytes kept).
    key: Option<Vec<u8>>,
    /// The last top-level key completed, waiting for its `:`.
    last_key: Option<Vec<u8>>,
    /// Expecting a key next (after `{` or `,` at depth 1).
    want_key: bool,
    /// Capturing the id's raw value.
    capturing: Option<Vec<u8>>,
    /// The id's raw JSON value, once complete.
    found: Option<String>,
}

impl IdScanner {
    /// The longest id kept; a longer one is not an id osvm will echo.
    const MAX_ID: usize = 256;

    /// Feeds the next bytes of the message.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.found.is_some() {
                return;
            }
            self.step(b);
        }
    }

    /// The id, as raw JSON (`7`, `"abc"`), if the message had one at its top level.
    pub fn id(&self) -> Option<&str> {
        self.found.as_deref()
    }

    fn step(&mut self, b: u8) {
        if let Some(value) = &mut self.capturing {
            let ends = !self.in_string && self.depth == 1 && (b == b',' || b == b'}');
            if ends || value.len() > Self::MAX_ID {
                let raw = String::from_utf8_lossy(value).trim().to_owned();
                let scalar = raw.starts_with('"')
                    || raw == "null"
                    || raw
                        .chars()
                        .all(|c| c.is_ascii_digit() || "-+.eE".contains(c));
                if ends && scalar && !raw.is_empty() {
                    self.found = Some(raw);
                }
                self.capturing = None;
            } else {
                value.push(b);
            }
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if let Some(k) = self.key.take() {
                    self.last_key = Some(k);
                }
                return;
            }
            if let Some(k) = &mut self.key
                && k.len() < 8
            {
                k.push(b);
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.want_key {
                    self.key = Some(Vec::new());
                    self.want_key = false;
                }
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth == 1 {
                    self.want_key = b == b'{';
                }
            }
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b',' if self.depth == 1 => self.want_key = true,
            b':' if self.depth == 1 => {
                let key = self.last_key.take();
                if key.as_deref() == Some(b"id") && self.capturing.is_none() {
                    self.capturing = Some(Vec::new());
                }
            }
            _ => {}
        }
    }
}

/// The error a client gets for a message of more than `max` bytes.
pub fn too_large(id: Option<&str>, size: usize, max: usize) -> String {
    let message = format!(
        "a message of {size} bytes is over the gateway's limit of {max} bytes \
         (the stack's max_message_size); it was discarded, the session goes on"
    );
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok()),
        "error": { "code": TOO_LARGE, "message": message },
    })
    .to_string()
}

/// Serves `session` to a client in stdio framing (one JSON-RPC message per line) on
/// `read`/`write`, refusing lines longer than `max` bytes with an error (see the module
/// documentation). Returns when the client's input ends or the session ends.
///
/// rmcp's transport reads straight from [`CappedLines`] and writes to [`SharedOut`]: no task
/// or buffer sits between the client's socket and the session.
pub async fn serve_stdio<R, W>(session: Session, read: R, write: W, max: usize)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let out = SharedOut::new(write);
    let relay = session.client_name().map(|client| {
        crate::relay::ClientSide::new(
            session.gateway().clone(),
            client.to_owned(),
            Arc::new(out.clone()),
        )
    });
    let lines = CappedLines {
        inner: BufReader::with_capacity(64 * 1024, read),
        max,
        line: Vec::new(),
        ready: Ready::default(),
        over: None,
        out: out.clone(),
        relay,
    };
    let transport = AsyncRwTransport::new_server(lines, out).with_max_line_length(max + 2);
    if let Ok(running) = session.serve(transport).await {
        let _ = running.waiting().await;
    }
}

/// One side's output: rmcp's messages, and between them lines of the gateway's own (refusals
/// of oversized lines, relayed calls and answers), never inside one of rmcp's lines.
pub(crate) struct Out<W> {
    inner: W,
    /// Lines waiting for a line boundary.
    pending: Vec<u8>,
    /// How much of `pending` is written (once begun, it is finished before anything else).
    sent: usize,
    /// The last byte written ended a line.
    at_line_start: bool,
    /// The task that reads this side's input (and is always waiting on it): it finishes
    /// writing lines another task queued when the output could not take them at once.
    reader: Option<Waker>,
    /// That task stopped reading input until the output drains or an answer arrives
    /// (backpressure on a client that does not read, or has too many calls in flight).
    reader_blocked: bool,
    /// When the output last took bytes (a slow reader still makes progress; a stuck one not).
    progress: std::time::Instant,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    /// Writes the queued refusals if the output is between lines.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.pending.is_empty() || (!self.at_line_start && self.sent == 0) {
            return Poll::Ready(Ok(()));
        }
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
            self.progress = std::time::Instant::now();
        }
        self.pending.clear();
        if self.pending.capacity() > 1 << 20 {
            // One large message is no reason to keep its buffer for the session's life.
            self.pending = Vec::new();
        }
        self.sent = 0;
        self.at_line_start = true;
        self.wake_blocked_reader();
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn wake_blocked_reader(&mut self) {
        if std::mem::take(&mut self.reader_blocked)
            && let Some(w) = &self.reader
        {
            w.wake_by_ref();
        }
    }
}

/// [`Out`] shared by rmcp's transport (as its writer), the reader of the same side, and the
/// relay.
pub(crate) struct SharedOut<W>(Arc<Mutex<Out<W>>>);

/// Where the relay writes a whole line (without its newline) from any task.
pub(crate) trait Inject: Send + Sync {
    /// Queues `line` and writes as much of it as the output takes now; the side's reader task
    /// writes the rest.
    fn inject(&self, line: &[u8]);

    /// Bytes queued and not yet written, and how long ago the output last took any.
    fn backlog(&self) -> (usize, std::time::Duration);
}

impl<W: AsyncWrite + Unpin + Send> Inject for SharedOut<W> {
    fn inject(&self, line: &[u8]) {
        let mut out = self.lock();
        out.pending.extend_from_slice(line);
        out.pending.push(b'\n');
        // Written now if the output is between lines; what it cannot take now wakes the
        // reader when it can. With no reader yet (still handshaking), its first poll writes it.
        if let Some(waker) = out.reader.clone() {
            let _ = out.poll_drain(&mut Context::from_waker(&waker));
        }
        // An answer: a reader waiting for its calls in flight to go down may go on.
        out.wake_blocked_reader();
    }

    fn backlog(&self) -> (usize, std::time::Duration) {
        let out = self.lock();
        (out.pending.len() - out.sent, out.progress.elapsed())
    }
}

impl<W> SharedOut<W> {
    /// An output over `inner`.
    pub(crate) fn new(inner: W) -> Self {
        Self(Arc::new(Mutex::new(Out {
            inner,
            pending: Vec::new(),
            sent: 0,
            at_line_start: true,
            reader: None,
            reader_blocked: false,
            progress: std::time::Instant::now(),
        })))
    }
}

impl<W: AsyncWrite + Unpin> SharedOut<W> {
    /// Called by the side's reader on every poll: writes queued lines, and remembers the task
    /// to wake for the rest.
    pub(crate) fn poll_reader(&self, cx: &mut Context<'_>) {
        let mut out = self.lock();
        if !out.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            out.reader = Some(cx.waker().clone());
        }
        let _ = out.poll_drain(cx);
    }

    /// The reader stops until the output drains or the next injected line; `still` says,
    /// once that is arranged, whether it must still stop (no wakeup is lost in between).
    fn block_reader(&self, cx: &mut Context<'_>, still: impl FnOnce(usize) -> bool) -> bool {
        {
            let mut out = self.lock();
            out.reader = Some(cx.waker().clone());
            out.reader_blocked = true;
        }
        let backlog = self.backlog_now();
        if still(backlog) {
            return true;
        }
        self.lock().reader_blocked = false;
        false
    }

    fn backlog_now(&self) -> usize {
        let out = self.lock();
        out.pending.len() - out.sent
    }
}

impl<W> Clone for SharedOut<W> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<W> SharedOut<W> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Out<W>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SharedOut<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut out = self.lock();
        ready!(out.poll_drain(cx))?;
        let n = ready!(Pin::new(&mut out.inner).poll_write(cx, buf))?;
        if n > 0 {
            out.at_line_start = buf[n - 1] == b'\n';
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut out = self.lock();
        ready!(out.poll_drain(cx))?;
        Pin::new(&mut out.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut out = self.lock();
        ready!(out.poll_drain(cx))?;
        Pin::new(&mut out.inner).poll_shutdown(cx)
    }
}

/// A whole line on its way to rmcp, and how much of it rmcp has read.
#[derive(Default)]
pub(crate) struct Ready {
    line: Vec<u8>,
    handed: usize,
}

impl Ready {
    /// Takes `line` (leaving `line` empty, with this one's old buffer).
    pub(crate) fn set(&mut self, line: &mut Vec<u8>) {
        std::mem::swap(&mut self.line, line);
        self.handed = 0;
    }

    /// Puts as much of the line as fits into `buf`; false if there is none.
    pub(crate) fn hand(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.handed >= self.line.len() {
            return false;
        }
        let n = buf.remaining().min(self.line.len() - self.handed);
        buf.put_slice(&self.line[self.handed..self.handed + n]);
        self.handed += n;
        if self.handed == self.line.len() {
            self.line.clear();
            self.handed = 0;
        }
        true
    }
}

/// The client's input as rmcp reads it: whole lines of at most `max` bytes. A longer line is
/// not passed on; its refusal (with the id scanned from it as it streamed past) is queued on
/// the output, and the next line follows.
struct CappedLines<R, W> {
    inner: BufReader<R>,
    max: usize,
    /// The line being read.
    line: Vec<u8>,
    /// A whole line being handed to rmcp.
    ready: Ready,
    /// The line being read is over the limit: its id scan and size so far.
    over: Option<(IdScanner, usize)>,
    out: SharedOut<W>,
    /// Relays an authenticated session's `tools/call`s (a stdio session has a client).
    relay: Option<crate::relay::ClientSide>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> AsyncRead for CappedLines<R, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready.hand(buf) {
                return Poll::Ready(Ok(()));
            }
            // Refusals go out as soon as the output is between lines; if the output is
            // busy, its writer (or the next poll here) finishes them.
            this.out.poll_reader(cx);
            // A client that does not read its answers, or has too many relayed calls in
            // flight, is not read from until that changes: what it makes the daemon hold stays
            // bounded.
            let limit = 2 * this.max + (1 << 20);
            let saturated = |relay: &Option<crate::relay::ClientSide>, backlog: usize| {
                backlog > limit || relay.as_ref().is_some_and(|r| r.saturated())
            };
            if saturated(&this.relay, this.out.backlog_now())
                && this
                    .out
                    .block_reader(cx, |backlog| saturated(&this.relay, backlog))
            {
                return Poll::Pending;
            }
            let chunk = ready!(Pin::new(&mut this.inner).poll_fill_buf(cx))?;
            if chunk.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let take = newline.map_or(chunk.len(), |i| i + 1);
            let part = &chunk[..take];
            match &mut this.over {
                Some((scan, size)) => {
                    scan.feed(part);
                    *size += part.len();
                }
                None if this.line.len() + part.len() > this.max + 1 => {
                    let mut scan = IdScanner::default();
                    scan.feed(&this.line);
                    scan.feed(part);
                    this.over = Some((scan, this.line.len() + part.len()));
                    this.line.clear();
                }
                None => this.line.extend_from_slice(part),
            }
            Pin::new(&mut this.inner).consume(take);
            if newline.is_some() {
                if let Some((scan, size)) = this.over.take() {
                    let refusal = too_large(scan.id(), size.saturating_sub(1), this.max);
                    let mut out = this.out.lock();
                    out.pending.extend_from_slice(refusal.as_bytes());
                    out.pending.push(b'\n');
                } else if this.relay.as_mut().is_some_and(|r| r.take(&this.line)) {
                    this.line.clear();
                } else {
                    this.ready.set(&mut this.line);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(text: &str) -> Option<String> {
        let mut s = IdScanner::default();
        // In small pieces, as a stream would bring it.
        for piece in text.as_bytes().chunks(3) {
            s.feed(piece);
        }
        s.id().map(str::to_owned)
    }

    #[test]
    fn the_scanner_finds_the_top_level_id_wherever_it_is() {
        assert_eq!(
            id_of(r#"{"jsonrpc":"2.0","id":7,"method":"x"}"#).as_deref(),
            Some("7")
        );
        assert_eq!(
            id_of(r#"{"method":"x","params":{"id":99,"s":"\"id\":5"},"id":"abc"}"#).as_deref(),
            Some("\"abc\"")
        );
        assert_eq!(
            id_of(r#"{"params":{"x":"AAAA"},"id":12}"#).as_deref(),
            Some("12")
        );
        assert_eq!(
            id_of(r#"{"method":"notifications/x","params":{"id":3}}"#),
            None
        );
        assert_eq!(
            id_of(r#"{"id":{"nested":1},"method":"x"}"#),
            None,
            "not a valid id"
        );
        assert_eq!(id_of("not json at all"), None);
    }

    #[test]
    fn the_refusal_is_a_json_rpc_error_with_the_id() {
        let v: serde_json::Value = serde_json::from_str(&too_large(Some("\"a\""), 10, 5)).unwrap();
        assert_eq!(v["id"], "a");
        assert_eq!(v["error"]["code"], TOO_LARGE);
        let v: serde_json::Value = serde_json::from_str(&too_large(None, 10, 5)).unwrap();
        assert!(v["id"].is_null());
    }
}
