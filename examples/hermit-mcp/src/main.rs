//! An MCP server as a Hermit unikernel, reached by osvm's gateway over the hub.
//!
//! It speaks MCP's streamable HTTP transport in its simplest form: every JSON-RPC request is
//! one `POST` on a connection of its own, answered with one `application/json` response; notifications get `202 Accepted`;
//! there is no server-initiated stream (`GET` answers `405`, as the transport allows) and no
//! session. The JSON-RPC handling is its own, on std's `TcpListener`, with serde_json for the
//! messages: rmcp's server runs on tokio, which was not tried on Hermit.
//!
//! Tools: `echo` (gives `message` back), `uppercase` (`text` in upper case), `info` (where it
//! runs: the OS, its arguments, the calls it has answered, and the SPIFFE ID of the certificate
//! osvm's CA issued it, read from `/run/osvm/identity/cert.pem`: a read-only virtio-fs share
//! the Hermit kernel mounts at `/run`; nothing may be written there, Hermit 0.11 panics on a
//! refused write).
//!
//! Usage: `hermit-mcp [PORT]` (default 8080); the endpoint is `/mcp`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::{env, process, thread};

use serde_json::{Value, json};

/// The largest request body accepted; more is answered `413`.
const MAX_BODY: usize = 1 << 20;
/// The largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// The MCP revision answered when the client asks for one this server does not know.
const PROTOCOL: &str = "2025-06-18";
const KNOWN: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

static CALLS: AtomicU64 = AtomicU64::new(0);

fn main() {
    let port: u16 = env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("cannot bind port {port}: {e}");
        process::exit(1);
    });
    println!("hermit-mcp: MCP over streamable HTTP on port {port}, endpoint /mcp");
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                thread::spawn(move || {
                    if let Err(e) = connection(stream) {
                        eprintln!("hermit-mcp: connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => eprintln!("hermit-mcp: accept: {e}"),
        }
    }
}

/// One HTTP/1.1 request in a connection's keep-alive sequence.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Serves one request, then closes the connection (`Connection: close`). Keep-alive is left
/// out on purpose: on Hermit's one vCPU, a thread blocked reading an idle kept-alive
/// connection held up the threads of the others (the gateway's `tools/list` waited 30 s in
/// about one start in six), and a connection per request costs little here.
fn connection(stream: TcpStream) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let request = match read_request(&mut reader) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err((status, why)) => return respond(&mut out, status, "text/plain", why.as_bytes()),
    };
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/mcp") => match handle(&request.body) {
            Some(answer) => respond(&mut out, "200 OK", "application/json", &answer),
            None => respond(&mut out, "202 Accepted", "text/plain", b""),
        },
        (_, "/mcp") => respond(
            &mut out,
            "405 Method Not Allowed",
            "text/plain",
            b"only POST: this server opens no event stream and keeps no session\n",
        ),
        _ => respond(
            &mut out,
            "404 Not Found",
            "text/plain",
            b"the endpoint is /mcp\n",
        ),
    }
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
fn read_request(r: &mut impl BufRead) -> Result<Option<Request>, (&'static str, String)> {
    let bad = |why: String| ("400 Bad Request", why);
    let mut head = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| bad(format!("reading the request: {e}")))?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(bad("the connection ended inside a request head".into()))
            };
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push(line.trim_end().to_owned());
        if head.iter().map(String::len).sum::<usize>() > MAX_HEAD {
            return Err((
                "431 Request Header Fields Too Large",
                "head too large\n".into(),
            ));
        }
    }
    let mut parts = head.first().map(|l| l.split(' ')).into_iter().flatten();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(bad("no request line".into()));
    };
    let mut length = 0usize;
    for h in &head[1..] {
        if let Some((name, value)) = h.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .parse()
                    .map_err(|_| bad(format!("Content-Length {value:?}")))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err((
                    "501 Not Implemented",
                    "chunked bodies are not read\n".into(),
                ));
            }
        }
    }
    if length > MAX_BODY {
        return Err((
            "413 Content Too Large",
            format!("at most {MAX_BODY} bytes\n"),
        ));
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body)
        .map_err(|e| bad(format!("reading the body: {e}")))?;
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.split('?').next().unwrap_or(path).to_owned(),
        body,
    }))
}

fn respond(out: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// The JSON-RPC answer to one POSTed message, or `None` for a notification or a response.
fn handle(body: &[u8]) -> Option<Vec<u8>> {
    let msg: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some(error(Value::Null, -32700, &format!("parse error: {e}"))),
    };
    if !msg.is_object() {
        return Some(error(
            Value::Null,
            -32600,
            "one JSON-RPC object per request",
        ));
    }
    let id = msg.get("id").cloned()?;
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        // A response to a request this server never sends.
        return None;
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let asked = params["protocolVersion"].as_str().unwrap_or(PROTOCOL);
            let version = if KNOWN.contains(&asked) {
                asked
            } else {
                PROTOCOL
            };
            json!({
                "protocolVersion": version,
                "capabilities": { "tools": {} },
                "serverInfo": { "name": "hermit-mcp", "version": env!("CARGO_PKG_VERSION") },
                "instructions": "An MCP server running as a Hermit unikernel under osvm.",
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({ "tools": tools() }),
        "tools/call" => match call(&params) {
            Ok(text) => json!({ "content": [{ "type": "text", "text": text }] }),
            Err(e) => return Some(error(id, -32602, &e)),
        },
        other => return Some(error(id, -32601, &format!("no method {other}"))),
    };
    Some(
        json!({ "jsonrpc": "2.0", "id": id, "result": result })
            .to_string()
            .into_bytes(),
    )
}

fn error(id: Value, code: i64, message: &str) -> Vec<u8> {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
        .to_string()
        .into_bytes()
}

fn tools() -> Value {
    let string_arg = |name: &str, what: &str| {
        json!({
            "type": "object",
            "properties": { name: { "type": "string", "description": what } },
            "required": [name],
        })
    };
    json!([
        { "name": "echo", "description": "Gives the message back",
          "inputSchema": string_arg("message", "what to give back") },
        { "name": "uppercase", "description": "The text in upper case",
          "inputSchema": string_arg("text", "the text") },
        { "name": "info", "description": "Where this server runs",
          "inputSchema": { "type": "object", "properties": {} } },
    ])
}

fn call(params: &Value) -> Result<String, String> {
    let args = &params["arguments"];
    let text = |key: &str| {
        args[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("argument `{key}` (a string) is missing"))
    };
    let answer = match params["name"].as_str().unwrap_or("") {
        "echo" => text("message")?,
        "uppercase" => text("text")?.to_uppercase(),
        "info" => format!(
            "os={} arch={} args={:?} calls_answered={} identity={}",
            env::consts::OS,
            env::consts::ARCH,
            env::args().collect::<Vec<_>>(),
            CALLS.load(Ordering::Relaxed),
            identity()
        ),
        other => return Err(format!("no tool {other:?}")),
    };
    CALLS.fetch_add(1, Ordering::Relaxed);
    Ok(answer)
}

/// Where osvm puts the component's certificate.
const CERT: &str = "/run/osvm/identity/cert.pem";

/// The SPIFFE ID in the certificate osvm gave this unikernel, or `none (why)`.
fn identity() -> String {
    use base64::Engine;
    let pem = match std::fs::read_to_string(CERT) {
        Ok(pem) => pem,
        Err(e) => return format!("none ({CERT}: {e})"),
    };
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = match base64::engine::general_purpose::STANDARD.decode(body) {
        Ok(der) => der,
        Err(e) => return format!("none ({CERT} is not PEM: {e})"),
    };
    // The URI in the subject alternative name: tag 0x86, a short length, the bytes.
    let needle = b"spiffe://";
    let found = der.windows(needle.len()).position(|w| w == needle);
    match found {
        Some(at) if at >= 2 && der[at - 2] == 0x86 && der[at - 1] < 0x80 => {
            let end = (at + usize::from(der[at - 1])).min(der.len());
            String::from_utf8_lossy(&der[at..end]).into_owned()
        }
        _ => format!("none ({CERT} names no SPIFFE ID)"),
    }
}
