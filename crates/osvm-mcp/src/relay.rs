//! The gateway's fast path: `tools/call` relayed as bytes between a client's stdio session and
//! a server on stdio.
//!
//! Through rmcp on both sides, a call crossed four tasks inside the daemon (the client
//! session's loop, its request handler, the server session's loop, and back), each a wakeup
//! that on these virtualized CPUs costs more than the JSON work. Here the task that reads the
//! client's line checks it and writes it to the server's input, and the task that reads the
//! server's output writes the answer to the client's output: two wakeups, as for any process
//! in the middle.
//!
//! ```text
//! client ─line─▶ ClientSide::take ── admit (rate, policy, a running server), audit refusals
//!                    │ {"id":"osvm-<n>","method":"tools/call","params":{"name":<tool>,"arguments":…}}
//!                    ▼
//!                server's input (lines shared with rmcp)            RawLink: n → Pending
//! client ◀─line── ServerOutput::poll_read ── answer to "osvm-<n>": id put back, audited
//! ```
//!
//! Only the method, the id and the tool's name are read for the decision; the arguments and
//! the server's result pass through as the bytes they were (the arguments are parsed once more
//! for their digest in the audit record, as the typed path does). What the policy decides and
//! what the audit log says are the same as on the typed path ([`Gateway::admit`],
//! [`Gateway::audit_call`]). A call times out after the stack's `call_timeout` (the server is
//! sent `notifications/cancelled`, and restarted only if it does not answer a ping either); a
//! client's `notifications/cancelled` reaches the server; a server whose output ends fails its
//! calls at once and is reported broken. Everything else (the handshake, lists, resources,
//! prompts, pings, calls of HTTP sessions or to HTTP servers) stays on rmcp.

use std::borrow::Cow;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::sync::Notify;

use crate::audit::Outcome;
use crate::framing::{Inject, Ready, SharedOut};
use crate::gateway::{Admitted, Gateway, UPSTREAM_FAILED, alive};
use crate::upstream::Upstream;

/// The first MCP revision whose results carry `resultType` (rmcp adds it on the typed path).
const RESULT_TYPE_SINCE: &str = "2026-07-28";

/// Sessions, numbered so that a client's cancellation finds only its own calls.
static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// Relayed calls one session may have in flight; past it, its input is not read until one
/// ends (a client cannot pile up answers in the daemon's memory).
const MAX_IN_FLIGHT: usize = 64;

/// How long a server may take nothing from its input, with a full backlog waiting, before
/// further calls to it are refused.
const STUCK: std::time::Duration = std::time::Duration::from_secs(1);

/// The top of a JSON-RPC message, its parameters left unparsed.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    /// A task-augmented call (not relayed: rmcp answers it).
    #[serde(borrow, default)]
    task: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Cancelled<'a> {
    #[serde(rename = "requestId", borrow)]
    request_id: &'a RawValue,
    #[serde(default)]
    reason: Option<String>,
}

/// A client session's side of the relay: it takes the `tools/call` lines it can relay.
pub(crate) struct ClientSide {
    gw: Gateway,
    client: String,
    /// The client's output.
    reply: Arc<dyn Inject>,
    session: u64,
    /// The client has finished the handshake (`notifications/initialized`).
    ready: bool,
    /// The client speaks a revision whose results carry `resultType`.
    result_type: bool,
    /// The servers this session has relayed calls to (where its cancellations go).
    links: Vec<Weak<RawLink>>,
    /// Its calls in flight.
    in_flight: Arc<AtomicUsize>,
}

impl ClientSide {
    /// The relay for `client`'s session, answering on `reply`.
    pub(crate) fn new(gw: Gateway, client: String, reply: Arc<dyn Inject>) -> Self {
        Self {
            gw,
            client,
            reply,
            session: SESSIONS.fetch_add(1, Ordering::Relaxed),
            ready: false,
            result_type: false,
            links: Vec::new(),
            in_flight: Arc::default(),
        }
    }

    /// The session has as many calls in flight as it may.
    pub(crate) fn saturated(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT
    }

    /// Takes `line` (one whole message from the client) if it is a call this relay handles;
    /// otherwise it goes to rmcp.
    pub(crate) fn take(&mut self, line: &[u8]) -> bool {
        let Ok(head) = serde_json::from_slice::<Head>(line) else {
            return false;
        };
        if head.jsonrpc.as_deref() != Some("2.0") {
            return false;
        }
        match head.method.as_deref() {
            Some("tools/call") if self.ready => {}
            Some("initialize") => {
                #[derive(Deserialize)]
                struct Init {
                    #[serde(rename = "protocolVersion")]
                    protocol_version: String,
                }
                if let Some(p) = head.params
                    && let Ok(init) = serde_json::from_str::<Init>(p.get())
                {
                    self.result_type = init.protocol_version.as_str() >= RESULT_TYPE_SINCE;
                }
                return false;
            }
            Some("notifications/initialized") => {
                self.ready = true;
                return false;
            }
            Some("notifications/cancelled") => return self.cancel(head.params),
            _ => return false,
        }
        let (Some(id), Some(params)) = (head.id, head.params) else {
            return false;
        };
        // A JSON-RPC id is a string or a number; anything else is rmcp's to refuse.
        if !id
            .get()
            .starts_with(|c: char| c == '"' || c == '-' || c.is_ascii_digit())
        {
            return false;
        }
        let Ok(p) = serde_json::from_str::<CallParams>(params.get()) else {
            return false;
        };
        let arguments = match p.arguments {
            Some(a) if a.get() == "null" => None,
            Some(a) if !a.get().starts_with('{') => return false,
            a => a,
        };
        if p.task.is_some() {
            return false;
        }
        self.call(id.get(), &p.name, arguments)
    }

    /// Relays a call of tool `name` (`<prefix>.<tool>`) with request id `id` (raw JSON).
    fn call(&mut self, id: &str, name: &str, arguments: Option<&RawValue>) -> bool {
        // Only to a running server on stdio; anything else (including every refusal of a
        // server that does not run) is rmcp's to answer.
        match self.gw.resolve(name) {
            Ok((_, _, up)) if up.raw.is_some() => {}
            _ => return false,
        }
        let began = Instant::now();
        // The arguments as the typed path sends them: parsed into a map and printed again, so
        // the server gets exactly what the audit record's digest is of (a duplicate key cannot
        // mean one thing to the digest and another to the server).
        let arguments = match arguments {
            Some(raw) => {
                match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get())
                {
                    Ok(map) => Some(serde_json::to_string(&map).expect("maps serialize")),
                    Err(_) => return false,
                }
            }
            None => None,
        };
        let args_sha256 = arguments
            .as_deref()
            .map(|a| crate::digest::sha256(a.as_bytes()));
        let (admitted, up) = match self.gw.admit(&self.client, name, args_sha256, began) {
            Ok(a) => a,
            Err(e) => {
                self.reply.inject(error_line(id, &e).as_bytes());
                return true;
            }
        };
        let Some(link) = up.raw.clone() else {
            // Replaced by a server on HTTP between the two looks: a lost race, told as such.
            let e = crate::gateway::error(
                UPSTREAM_FAILED,
                format!("MCP server `{}` was replaced; try again", admitted.server),
            );
            self.reply.inject(error_line(id, &e).as_bytes());
            return true;
        };
        self.links.retain(|l| l.strong_count() > 0);
        if !self
            .links
            .iter()
            .any(|l| std::ptr::eq(l.as_ptr(), Arc::as_ptr(&link)))
        {
            self.links.push(Arc::downgrade(&link));
        }
        let deadline = began + admitted.timeout;
        let tool = admitted.tool.clone();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        link.send(
            Pending {
                gw: self.gw.clone(),
                up: Arc::downgrade(&up),
                call: admitted,
                client_id: id.to_owned(),
                reply: self.reply.clone(),
                slot: InFlight(self.in_flight.clone()),
                session: self.session,
                result_type: self.result_type,
                deadline,
            },
            &tool,
            arguments.as_deref(),
        );
        true
    }

    /// A client's `notifications/cancelled`: taken if it names one of this session's relayed
    /// calls.
    fn cancel(&mut self, params: Option<&RawValue>) -> bool {
        let Some(c) = params.and_then(|p| serde_json::from_str::<Cancelled>(p.get()).ok()) else {
            return false;
        };
        let reason = c.reason.as_deref().unwrap_or("cancelled by the client");
        self.links
            .iter()
            .filter_map(Weak::upgrade)
            .any(|link| link.cancel(self.session, c.request_id.get(), reason))
    }
}

/// A JSON-RPC error answer to request `id` (raw JSON).
fn error_line(id: &str, e: &rmcp::ErrorData) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{}}}"#,
        serde_json::to_string(e).expect("errors serialize")
    )
}

/// The answer to the client's request `id` with the server's `result` (an object), with
/// `"resultType": "complete"` added when `add_result_type` (as rmcp's typed result would say it
/// to a client of a revision that has it).
fn answer_line(id: &str, result: &str, add_result_type: bool) -> String {
    if add_result_type {
        let inner = result[1..].trim_start();
        let sep = if inner.starts_with('}') { "" } else { "," };
        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"resultType":"complete"{sep}{inner}}}"#)
    } else {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
    }
}

/// One of a session's calls in flight, given back when dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A relayed call waiting for its answer.
struct Pending {
    gw: Gateway,
    up: Weak<Upstream>,
    call: Admitted,
    /// The client's request id, raw JSON.
    client_id: String,
    reply: Arc<dyn Inject>,
    slot: InFlight,
    session: u64,
    result_type: bool,
    deadline: Instant,
}

impl Pending {
    /// Writes `line` to the client, the call no longer in flight.
    fn reply(self, line: &str) {
        let Pending { reply, slot, .. } = self;
        drop(slot);
        reply.inject(line.as_bytes());
    }

    /// The server answered with `result`.
    fn answered(self, result: &RawValue) {
        #[derive(Deserialize)]
        struct Flags {
            #[serde(rename = "isError", default)]
            is_error: Option<bool>,
            #[serde(rename = "resultType", default)]
            result_type: Option<serde_json::Value>,
        }
        let text = result.get();
        let flags = text
            .starts_with('{')
            .then(|| serde_json::from_str::<Flags>(text).ok())
            .flatten();
        let Some(flags) = flags else {
            let shown: String = text.chars().take(200).collect();
            let msg = format!(
                "MCP server `{}` answered tools/call with a result that is not an object: {shown}",
                self.call.server
            );
            return self.garbage(msg);
        };
        let outcome = if flags.is_error == Some(true) {
            Outcome::ToolError
        } else {
            Outcome::Ok
        };
        self.gw
            .audit_call(&self.call, outcome, self.call.reason.clone());
        let line = answer_line(
            &self.client_id,
            text,
            self.result_type && flags.result_type.is_none(),
        );
        self.reply(&line);
    }

    /// The server answered with its own JSON-RPC error: it goes to the client as it is.
    fn refused(self, error: &RawValue) {
        #[derive(Deserialize)]
        struct Message {
            #[serde(default)]
            message: String,
        }
        let Ok(m) = serde_json::from_str::<Message>(error.get()) else {
            let msg = format!(
                "MCP server `{}` answered tools/call with a malformed error",
                self.call.server
            );
            return self.garbage(msg);
        };
        self.gw
            .audit_call(&self.call, Outcome::ToolError, m.message);
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{},"error":{}}}"#,
            self.client_id,
            error.get()
        );
        self.reply(&line);
    }

    /// The server's answer was not an answer: it is reported broken.
    fn garbage(self, msg: String) {
        if let Some(up) = self.up.upgrade() {
            self.gw.broken(&self.call.server, &up, msg.clone());
        }
        self.fail(Outcome::UpstreamError, msg);
    }

    /// No answer within the call's timeout (the server has been sent `notifications/cancelled`).
    fn timed_out(self) {
        let (server, tool, timeout) = (
            self.call.server.clone(),
            self.call.tool.clone(),
            self.call.timeout,
        );
        let msg = format!(
            "MCP server `{server}` did not answer tools/call {tool} within {}s; the call was \
             cancelled",
            timeout.as_secs_f64()
        );
        // A slow tool is not a crash: the server is restarted only if it does not answer a
        // ping either.
        if let Some(up) = self.up.upgrade() {
            let gw = self.gw.clone();
            tokio::spawn(async move {
                if !alive(&up).await {
                    gw.broken(
                        &server,
                        &up,
                        format!(
                            "no answer to tools/call {tool} within {timeout:?}, nor to a ping after it"
                        ),
                    );
                }
            });
        }
        self.fail(Outcome::Timeout, msg);
    }

    /// The server's session ended during the call (`broken`: its output ended or broke, so
    /// the server is reported broken).
    fn lost(self, why: &str, broken: bool) {
        let msg = format!(
            "MCP server `{}` failed during the call: {why}; it is being restarted",
            self.call.server
        );
        if broken && let Some(up) = self.up.upgrade() {
            self.gw.broken(
                &self.call.server,
                &up,
                format!("tools/call {}: {why}", self.call.tool),
            );
        }
        self.fail(Outcome::UpstreamError, msg);
    }

    /// Ends the call with the gateway's error `msg`.
    fn fail(self, outcome: Outcome, msg: String) {
        self.gw.audit_call(&self.call, outcome, msg.clone());
        let e = crate::gateway::error(UPSTREAM_FAILED, msg);
        self.reply
            .inject(error_line(&self.client_id, &e).as_bytes());
    }
}

/// The calls in flight on one server.
#[derive(Default)]
struct Calls {
    pending: HashMap<u64, Pending>,
    /// The server's output has ended, and why.
    closed: Option<String>,
}

/// The relay's side of one server on stdio: its input, and the calls waiting for an answer.
pub(crate) struct RawLink {
    input: Arc<dyn Inject>,
    /// The most the server's input may hold unread before calls are refused.
    max_backlog: usize,
    calls: Mutex<Calls>,
    next: AtomicU64,
    /// Wakes the task that times calls out.
    wake: Arc<Notify>,
    /// That task waits for a call (none is pending).
    idle: AtomicBool,
}

impl RawLink {
    /// A link writing to the server's `input` (messages of at most `max` bytes), with the
    /// task that times its calls out.
    pub(crate) fn new(input: Arc<dyn Inject>, max: usize) -> Arc<Self> {
        let link = Arc::new(Self {
            input,
            max_backlog: 2 * max + (1 << 20),
            calls: Mutex::default(),
            next: AtomicU64::new(1),
            wake: Arc::new(Notify::new()),
            idle: AtomicBool::new(true),
        });
        tokio::spawn(sweep(Arc::downgrade(&link), link.wake.clone()));
        link
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the call to the server and waits for its answer.
    fn send(&self, pending: Pending, tool: &str, arguments: Option<&str>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = serde_json::to_string(tool).expect("strings serialize");
        let line = match arguments {
            Some(a) => format!(
                r#"{{"jsonrpc":"2.0","id":"osvm-{n}","method":"tools/call","params":{{"name":{name},"arguments":{a}}}}}"#
            ),
            None => format!(
                r#"{{"jsonrpc":"2.0","id":"osvm-{n}","method":"tools/call","params":{{"name":{name}}}}}"#
            ),
        };
        // A server that does not read its input gets no more: what waits for it stays bounded.
        // A server that reads slowly is waited for; one that has taken nothing for a second
        // while that much waits is not reading.
        let (backlog, idle) = self.input.backlog();
        if backlog > self.max_backlog && idle > STUCK {
            let msg = format!(
                "MCP server `{}` is not reading its input ({backlog} bytes wait for it, none \
                 taken for {:.1}s); the call was not sent",
                pending.call.server,
                idle.as_secs_f64()
            );
            return pending.fail(Outcome::UpstreamError, msg);
        }
        {
            let mut calls = self.calls();
            if let Some(why) = calls.closed.clone() {
                drop(calls);
                return pending.lost(&why, false);
            }
            calls.pending.insert(n, pending);
        }
        if self.idle.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        self.input.inject(line.as_bytes());
    }

    /// Takes `line` from the server's output if it answers a relayed call.
    fn take(&self, line: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Answer<'a> {
            #[serde(borrow, default)]
            id: Option<&'a RawValue>,
            #[serde(borrow, default)]
            method: Option<&'a RawValue>,
            #[serde(borrow, default)]
            result: Option<&'a RawValue>,
            #[serde(borrow, default)]
            error: Option<&'a RawValue>,
        }
        if !line.windows(6).any(|w| w == b"\"osvm-") {
            return false;
        }
        let Ok(answer) = serde_json::from_slice::<Answer>(line) else {
            return false;
        };
        if answer.method.is_some() {
            return false;
        }
        let Some(n) = answer.id.and_then(|id| {
            id.get()
                .strip_prefix("\"osvm-")?
                .strip_suffix('"')?
                .parse::<u64>()
                .ok()
        }) else {
            return false;
        };
        // An answer to a call already timed out or cancelled is dropped here too.
        let Some(pending) = self.calls().pending.remove(&n) else {
            return true;
        };
        match (answer.result, answer.error) {
            (Some(r), None) => pending.answered(r),
            (None, Some(e)) => pending.refused(e),
            _ => {
                let msg = format!(
                    "MCP server `{}` answered tools/call with neither a result nor an error",
                    pending.call.server
                );
                pending.garbage(msg);
            }
        }
        true
    }

    /// The client's cancellation of its request `client_id` in session `session`.
    fn cancel(&self, session: u64, client_id: &str, reason: &str) -> bool {
        let found = {
            let mut calls = self.calls();
            let n = calls
                .pending
                .iter()
                .find(|(_, p)| p.session == session && p.client_id == client_id)
                .map(|(n, _)| *n);
            n.and_then(|n| Some((n, calls.pending.remove(&n)?)))
        };
        let Some((n, pending)) = found else {
            return false;
        };
        self.cancel_upstream(n, reason);
        pending
            .gw
            .audit_call(&pending.call, Outcome::Cancelled, reason.to_owned());
        true
    }

    /// Tells the server that call `n` is cancelled.
    fn cancel_upstream(&self, n: u64, reason: &str) {
        let line = serde_json::json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": { "requestId": format!("osvm-{n}"), "reason": reason },
        });
        self.input.inject(line.to_string().as_bytes());
    }

    /// Ends the calls past their deadline; returns the next deadline, if a call is pending.
    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let (expired, next) = {
            let mut calls = self.calls();
            let due: Vec<u64> = calls
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(n, _)| *n)
                .collect();
            let expired: Vec<(u64, Pending)> = due
                .into_iter()
                .filter_map(|n| Some((n, calls.pending.remove(&n)?)))
                .collect();
            let next = calls.pending.values().map(|p| p.deadline).min();
            if next.is_none() {
                self.idle.store(true, Ordering::Release);
            }
            (expired, next)
        };
        for (n, pending) in expired {
            self.cancel_upstream(n, "timed out in osvm's gateway");
            pending.timed_out();
        }
        next
    }

    /// The server's output ended or broke: every call fails now.
    fn close(&self, why: String) {
        let pending: Vec<Pending> = {
            let mut calls = self.calls();
            calls.closed.get_or_insert(why.clone());
            calls.pending.drain().map(|(_, p)| p).collect()
        };
        for p in pending {
            p.lost(&why, true);
        }
    }
}

impl Drop for RawLink {
    fn drop(&mut self) {
        let calls = std::mem::take(&mut *self.calls());
        for (_, p) in calls.pending {
            p.lost("its session with the gateway ended", false);
        }
        self.wake.notify_one();
    }
}

/// Times out a link's calls: sleeps until the oldest call's deadline, or until a call comes
/// when none is pending; ends with the link.
async fn sweep(link: Weak<RawLink>, wake: Arc<Notify>) {
    loop {
        let next = match link.upgrade() {
            Some(link) => link.expire(),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// A server's output as rmcp reads it: whole lines of at most `max` bytes, without the
/// answers to relayed calls (which go to their clients from here). A longer line ends the
/// session with an error, and so does the end of the output; either fails the relayed calls
/// at once.
pub(crate) struct ServerOutput<R, W> {
    inner: BufReader<R>,
    max: usize,
    line: Vec<u8>,
    ready: Ready,
    link: Arc<RawLink>,
    /// The server's input: lines queued by the relay are finished from this task.
    input: SharedOut<W>,
}

impl<R: AsyncRead, W> ServerOutput<R, W> {
    /// Reads the server's output `inner` for rmcp and for `link`.
    pub(crate) fn new(inner: R, max: usize, link: Arc<RawLink>, input: SharedOut<W>) -> Self {
        Self {
            inner: BufReader::with_capacity(64 * 1024, inner),
            max,
            line: Vec::new(),
            ready: Ready::default(),
            link,
            input,
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> AsyncRead for ServerOutput<R, W> {
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
            this.input.poll_reader(cx);
            let chunk = match ready!(Pin::new(&mut this.inner).poll_fill_buf(cx)) {
                Ok(chunk) => chunk,
                Err(e) => {
                    this.link.close(format!("reading its output: {e}"));
                    return Poll::Ready(Err(e));
                }
            };
            if chunk.is_empty() {
                this.link.close("its output ended".into());
                return Poll::Ready(Ok(()));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let take = newline.map_or(chunk.len(), |i| i + 1);
            let content = this.line.len() + newline.unwrap_or(chunk.len());
            if content > this.max {
                let e = format!("a message longer than the limit of {} bytes", this.max);
                this.link.close(e.clone());
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
            }
            this.line.extend_from_slice(&chunk[..take]);
            Pin::new(&mut this.inner).consume(take);
            if newline.is_some() {
                if this.link.take(&this.line) {
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

    fn parsed(line: &str) -> serde_json::Value {
        serde_json::from_str(line).expect("the answer is JSON")
    }

    #[test]
    fn an_answer_keeps_the_result_and_puts_the_clients_id_back() {
        let v = parsed(&answer_line(
            r#""c-7""#,
            r#"{"content":[{"type":"text","text":"x"}]}"#,
            false,
        ));
        assert_eq!(v["id"], "c-7");
        assert_eq!(v["result"]["content"][0]["text"], "x");
        assert!(v["result"].get("resultType").is_none());
    }

    #[test]
    fn a_new_revision_client_gets_result_type_whatever_the_result_looks_like() {
        for result in [
            r#"{}"#,
            r#"{ }"#,
            r#"{"isError":true}"#,
            "{\n \"content\": []}",
        ] {
            let v = parsed(&answer_line("3", result, true));
            assert_eq!(v["id"], 3, "{result}");
            assert_eq!(v["result"]["resultType"], "complete", "{result}");
        }
        let v = parsed(&answer_line("3", r#"{"isError":true}"#, true));
        assert_eq!(v["result"]["isError"], true);
    }

    #[test]
    fn the_server_output_hands_on_other_lines_and_ends_at_an_oversized_one() {
        use tokio::io::AsyncReadExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (sink, _keep) = tokio::io::duplex(1024);
            let input = SharedOut::new(sink);
            let link = RawLink::new(Arc::new(input.clone()), 1000);
            // An answer to a relayed call nobody waits for any more is taken (dropped); the
            // rest reaches rmcp as it was.
            let data: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":\"osvm-9\",\"result\":{}}\n\
                {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\
                {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"data\":\"osvm-1\"}}\n";
            let mut out = ServerOutput::new(data, 1000, link.clone(), input.clone());
            let mut got = String::new();
            out.read_to_string(&mut got).await.unwrap();
            assert_eq!(
                got,
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\
                 {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"data\":\"osvm-1\"}}\n"
            );
            // The end of the output closes the link: a call sent now fails at once.
            assert!(link.calls().closed.is_some());
            let long = format!("{{\"x\":\"{}\"}}\n", "A".repeat(2000));
            let link = RawLink::new(Arc::new(input.clone()), 1000);
            let mut out = ServerOutput::new(long.as_bytes(), 1000, link.clone(), input);
            let mut got = String::new();
            let e = out.read_to_string(&mut got).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            assert!(link.calls().closed.as_deref().unwrap().contains("limit of 1000"));
        });
    }
}
