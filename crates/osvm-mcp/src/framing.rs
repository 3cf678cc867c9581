//! A client's stdio session with a size limit that answers instead of hanging.
//!
//! On the stdio transport every JSON-RPC message is one line. A line longer than the limit is
//! not passed on; the client gets an Invalid Request error for it, with the id of the request
//! found by scanning the line as it streams past (memory stays bounded by the limit), and the
//! session goes on. rmcp's own transport drops such a line silently, which leaves a client
//! waiting for an answer that never comes.
//!
//! ```text
//! client ──lines──▶ [cap + id scan] ──▶ duplex ──▶ rmcp session
//! client ◀──lines── [merge errors]  ◀── duplex ◀──
//! ```

use rmcp::ServiceExt;
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

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
/// documentation). Returns when the client's input ends and the session has answered, or the
/// session ends.
pub async fn serve_stdio<R, W>(session: Session, read: R, write: W, max: usize)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (inner, outer) = tokio::io::duplex(64 * 1024);
    let (inner_read, inner_write) = tokio::io::split(inner);
    let (outer_read, mut outer_write) = tokio::io::split(outer);
    // The limit is enforced here; rmcp's own (which drops silently) never triggers first.
    let transport =
        AsyncRwTransport::new_server(inner_read, inner_write).with_max_line_length(max + 2);
    let service = tokio::spawn(async move {
        if let Ok(running) = session.serve(transport).await {
            let _ = running.waiting().await;
        }
    });
    let (refusals, mut refused) = tokio::sync::mpsc::unbounded_channel::<String>();

    // Client -> session: whole lines up to the limit; longer ones answered and skipped.
    let reader = tokio::spawn(async move {
        let mut read = BufReader::with_capacity(64 * 1024, read);
        let mut line: Vec<u8> = Vec::new();
        let mut over: Option<(IdScanner, usize)> = None;
        loop {
            let chunk = match read.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(chunk) => chunk,
            };
            let newline = chunk.iter().position(|&b| b == b'\n');
            let take = newline.map_or(chunk.len(), |i| i + 1);
            let part = &chunk[..take];
            match &mut over {
                Some((scan, size)) => {
                    scan.feed(part);
                    *size += part.len();
                }
                None if line.len() + part.len() > max + 1 => {
                    let mut scan = IdScanner::default();
                    scan.feed(&line);
                    scan.feed(part);
                    over = Some((scan, line.len() + part.len()));
                    line.clear();
                }
                None => line.extend_from_slice(part),
            }
            read.consume(take);
            if newline.is_some() {
                if let Some((scan, size)) = over.take() {
                    let _ = refusals.send(too_large(scan.id(), size.saturating_sub(1), max));
                } else {
                    if outer_write.write_all(&line).await.is_err() {
                        break;
                    }
                    line.clear();
                }
            }
        }
        let _ = outer_write.shutdown().await;
    });

    // Session -> client, whole lines, with the refusals in between.
    let mut write = write;
    let mut from_session = BufReader::new(outer_read);
    let mut out = Vec::new();
    let mut refusals_open = true;
    loop {
        tokio::select! {
            n = from_session.read_until(b'\n', &mut out) => {
                match n {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if write.write_all(&out).await.is_err() || write.flush().await.is_err() {
                            break;
                        }
                        out.clear();
                    }
                }
            }
            r = refused.recv(), if refusals_open => match r {
                Some(text) => {
                    let line = format!("{text}\n");
                    if write.write_all(line.as_bytes()).await.is_err()
                        || write.flush().await.is_err()
                    {
                        break;
                    }
                }
                None => refusals_open = false,
            },
        }
    }
    let _ = write.shutdown().await;
    reader.abort();
    service.abort();
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
