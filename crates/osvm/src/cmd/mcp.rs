//! `osvm mcp serve|tools|servers|call|token`: the MCP gateway, which runs in the daemon.
//!
//! `serve` without `--listen` is the stdio face for a local agent: it upgrades a connection to
//! the daemon's socket to a raw MCP stream (the daemon's gateway runs the session) and copies
//! its own stdin and stdout to it. With `--listen ADDR` it is the streamable-HTTP face for
//! remote clients: every request to `/mcp` is passed to the daemon's `/v1/mcp` with its bearer
//! token, which the daemon checks (an unauthenticated request is refused here already).

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use osvm_mcp::ToolView;
use serde_json::{Value, json};

use super::control::{client, print_json};
use super::socket;
use crate::cli::{Global, McpCommand, McpTokenCommand, Output};
use crate::client::json as parse;

/// The bridge's limit on one message from the client (the daemon enforces the stack's own).
const MAX_LINE: usize = 16 << 20;

pub fn run(global: &Global, command: McpCommand) -> anyhow::Result<ExitCode> {
    match command {
        McpCommand::Serve(args) => {
            if let Some(addr) = args.listen {
                let tls = if args.tls {
                    Some(gateway_tls(global, &args.trust_domain)?)
                } else {
                    None
                };
                return listen(global, &addr, tls);
            }
            let headers: Vec<(&str, String)> = match (args.token, args.client) {
                (Some(t), _) => vec![("authorization", format!("Bearer {t}"))],
                (None, Some(c)) => vec![(osvm_daemon::mcp::CLIENT_HEADER, c)],
                (None, None) => anyhow::bail!(
                    "say who the client is: --token TOKEN (osvm mcp token issue CLIENT) or \
                     --as CLIENT"
                ),
            };
            client(global)?.bridge_stdio(
                "/v1/mcp/stdio",
                &headers,
                osvm_daemon::mcp::STDIO_UPGRADE,
                MAX_LINE,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        McpCommand::Tools(args) => {
            let mut path = format!("/v1/mcp/tools?all={}", args.all);
            if let Some(c) = &args.client {
                path.push_str(&format!("&client={}", super::urlencode(c)));
            }
            let answer = client(global)?.call(Method::GET, &path, None)?;
            if global.output == Output::Json {
                print_json(&answer)?;
                return Ok(ExitCode::SUCCESS);
            }
            let v: Value = parse(&answer)?;
            let tools: Vec<ToolView> = serde_json::from_value(v["tools"].clone())?;
            println!("client: {}", v["client"].as_str().unwrap_or("?"));
            let mut rows = vec![vec![
                "TOOL".to_string(),
                "COMPONENT".into(),
                "POLICY".into(),
                "DESCRIPTION".into(),
            ]];
            for t in &tools {
                let mut desc: String = t.description.lines().next().unwrap_or("").to_owned();
                if desc.chars().count() > 60 {
                    desc = desc.chars().take(57).collect::<String>() + "...";
                }
                rows.push(vec![
                    t.name.clone(),
                    t.component.clone(),
                    if t.allowed { "allowed" } else { "denied" }.into(),
                    desc,
                ]);
            }
            print!("{}", super::net::columns(&rows));
            if tools.is_empty() {
                println!("(no tools: no MCP server is connected, or the policy allows none)");
            }
            Ok(ExitCode::SUCCESS)
        }
        McpCommand::Servers => {
            let answer = client(global)?.call(Method::GET, "/v1/mcp/servers", None)?;
            if global.output == Output::Json {
                print_json(&answer)?;
                return Ok(ExitCode::SUCCESS);
            }
            let servers: Vec<osvm_mcp::gateway::ServerView> = parse(&answer)?;
            let mut rows = vec![vec![
                "SERVER".to_string(),
                "PREFIX".into(),
                "COMPONENT".into(),
                "STATE".into(),
                "PROTOCOL".into(),
                "DETAIL".into(),
            ]];
            for s in servers {
                rows.push(vec![
                    s.server,
                    s.prefix,
                    s.component,
                    s.state,
                    s.protocol.unwrap_or_else(|| "-".into()),
                    s.detail,
                ]);
            }
            print!("{}", super::net::columns(&rows));
            Ok(ExitCode::SUCCESS)
        }
        McpCommand::Call(args) => {
            let arguments: Value = serde_json::from_str(&args.args)
                .map_err(|e| super::InvalidInput(format!("--args is not JSON: {e}")))?;
            if !arguments.is_object() {
                return Err(super::InvalidInput("--args must be a JSON object".into()).into());
            }
            let body = json!({ "client": args.client, "name": args.name, "arguments": arguments });
            let answer = client(global)?.call(
                Method::POST,
                "/v1/mcp/call",
                Some(serde_json::to_vec(&body)?),
            )?;
            let v: Value = parse(&answer)?;
            if global.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(e) = v.get("error") {
                eprintln!(
                    "error {}: {}",
                    e["code"],
                    e["message"].as_str().unwrap_or("?")
                );
            } else {
                for block in v["result"]["content"].as_array().into_iter().flatten() {
                    match block["text"].as_str() {
                        Some(text) => println!("{text}"),
                        None => println!("{block}"),
                    }
                }
            }
            Ok(if v.get("error").is_some() {
                ExitCode::from(3)
            } else if v["result"]["isError"] == true {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        McpCommand::Token(cmd) => token(global, cmd),
        McpCommand::Audit(args) => audit(global, args),
    }
}

fn token(global: &Global, cmd: McpTokenCommand) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        McpTokenCommand::Issue(a) => {
            let body = json!({ "client": a.client, "ttl": a.ttl });
            let answer = c.call(
                Method::POST,
                "/v1/mcp/tokens",
                Some(serde_json::to_vec(&body)?),
            )?;
            if global.output == Output::Json {
                print_json(&answer)?;
            } else {
                let v: Value = parse(&answer)?;
                println!("{}", v["token"].as_str().unwrap_or(""));
                eprintln!(
                    "token {} for client `{}`: shown once, only its hash is kept; revoke with \
                     `osvm mcp token revoke {}`",
                    v["record"]["id"].as_str().unwrap_or("?"),
                    v["record"]["client"].as_str().unwrap_or("?"),
                    v["record"]["id"].as_str().unwrap_or("?"),
                );
            }
        }
        McpTokenCommand::List => {
            let answer = c.call(Method::GET, "/v1/mcp/tokens", None)?;
            if global.output == Output::Json {
                print_json(&answer)?;
            } else {
                let list: Vec<osvm_mcp::tokens::TokenRecord> = parse(&answer)?;
                print!("{}", token_table(&list));
            }
        }
        McpTokenCommand::Revoke(a) => {
            let answer = c.call(
                Method::DELETE,
                &format!("/v1/mcp/tokens/{}", super::urlencode(&a.what)),
                None,
            )?;
            if global.output == Output::Json {
                print_json(&answer)?;
            } else {
                let v: Value = parse(&answer)?;
                for t in v["revoked"].as_array().into_iter().flatten() {
                    println!(
                        "revoked token {} of client `{}`",
                        t["id"].as_str().unwrap_or("?"),
                        t["client"].as_str().unwrap_or("?")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Issued tokens as a table: ID CLIENT ISSUED EXPIRES STATE.
pub(super) fn token_table(list: &[osvm_mcp::tokens::TokenRecord]) -> String {
    let mut rows = vec![vec![
        "ID".to_string(),
        "CLIENT".into(),
        "ISSUED".into(),
        "EXPIRES".into(),
        "STATE".into(),
    ]];
    let when = |s: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
            .to_string()
    };
    for t in list {
        rows.push(vec![
            t.id.clone(),
            t.client.clone(),
            when(t.issued_at),
            t.expires_at.map_or("never".into(), when),
            if t.revoked { "revoked" } else { "valid" }.into(),
        ]);
    }
    super::net::columns(&rows)
}

type Body = BoxBody<Bytes, hyper::Error>;

/// A refusal of the front itself, in the daemon's error format (`{"error": {"code", "message"}}`
/// with a word as the code), so a client sees one format whoever refused.
fn text(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = json!({ "error": { "code": code, "message": message } }).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed())
        .expect("a valid response")
}

/// The TLS configuration of `serve --listen --tls`: a fresh certificate of the trust domain's CA
/// for the gateway, client certificates of that CA required.
fn gateway_tls(global: &Global, trust_domain: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let dir = super::state_dir(global)?.join("pki").join(trust_domain);
    let pki = osvm_pki::Pki::open(&dir).with_context(|| {
        format!("no CA for trust domain {trust_domain}: `osvm cert ca init` creates one")
    })?;
    let material = pki.issue_gateway(std::time::Duration::from_secs(86_400))?;
    let config = osvm_pki::tls::server_config(&material)?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Passes one client request to the daemon's `/v1/mcp`, its body and the answer streamed. A
/// client that presented a verified certificate is named by its SPIFFE ID (`certified`);
/// otherwise its bearer token names it, checked by the daemon.
async fn forward(
    req: Request<Incoming>,
    daemon: PathBuf,
    certified: Option<String>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() != "/mcp" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "not_found",
            "the MCP endpoint is /mcp",
        ));
    }
    if certified.is_none() && !req.headers().contains_key("authorization") {
        return Ok(text(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send Authorization: Bearer <token> (osvm mcp token issue CLIENT)",
        ));
    }
    let stream = match tokio::net::UnixStream::connect(&daemon).await {
        Ok(s) => s,
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_GATEWAY,
                "daemon_unavailable",
                &format!("the osvm daemon is unreachable: {e}"),
            ));
        }
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return Ok(text(
            StatusCode::BAD_GATEWAY,
            "daemon_unavailable",
            "the osvm daemon did not answer",
        ));
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (parts, body) = req.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut out = Request::builder()
        .method(parts.method)
        .uri(format!("http://osvm/v1/mcp{query}"));
    for (k, v) in &parts.headers {
        // The client may not name itself: only its token or its certificate does.
        let named_by_cert = certified.is_some() && k == "authorization";
        if k == "host" || k == osvm_daemon::mcp::CLIENT_HEADER || k == "connection" || named_by_cert
        {
            continue;
        }
        out = out.header(k, v);
    }
    if let Some(id) = &certified {
        out = out.header(osvm_daemon::mcp::CLIENT_HEADER, id);
    }
    let Ok(out) = out.header("host", "osvm").body(body) else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a malformed request",
        ));
    };
    match sender.send_request(out).await {
        Ok(resp) => Ok(resp.map(BodyExt::boxed)),
        Err(e) => Ok(text(
            StatusCode::BAD_GATEWAY,
            "daemon_unavailable",
            &format!("the osvm daemon: {e}"),
        )),
    }
}

fn listen(
    global: &Global,
    addr: &str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<ExitCode> {
    let daemon = socket(global)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        eprintln!(
            "serving MCP (streamable HTTP) at {}://{}/mcp for the gateway of {}",
            if tls.is_some() { "https" } else { "http" },
            listener.local_addr()?,
            daemon.display()
        );
        loop {
            let (tcp, _) = tokio::select! {
                a = listener.accept() => a?,
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            };
            let daemon = daemon.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let service = hyper::service::service_fn(move |req| {
                            forward(req, daemon.clone(), None)
                        });
                        let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                    }
                    // A handshake without a valid client certificate fails here.
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let id =
                            osvm_pki::tls::peer_spiffe_id(stream.get_ref().1.peer_certificates());
                        let service = hyper::service::service_fn(move |req| {
                            forward(req, daemon.clone(), id.clone())
                        });
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    })
}

/// One audit record as a line of text.
fn audit_line(r: &osvm_mcp::audit::Record) -> String {
    let what = match (&r.server, &r.tool) {
        // A resource is named by its gateway URI, which names its server.
        (_, Some(uri)) if r.method == "resources/read" => uri.clone(),
        (Some(s), Some(t)) => format!("{s}.{t}"),
        (Some(s), None) => s.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => "-".into(),
    };
    let outcome = serde_json::to_value(r.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "{}  {}  {}  {what}  {outcome}  {}",
        r.time, r.client, r.method, r.detail
    )
}

/// `osvm mcp audit`: reads `<state dir>/mcp/audit.log` (root's alone) directly, so it works
/// without a daemon; with `--follow`, reopens it when it is rotated.
fn audit(global: &Global, args: crate::cli::McpAuditArgs) -> anyhow::Result<ExitCode> {
    use std::io::{BufRead, Seek};
    use std::os::unix::fs::MetadataExt;
    let path = super::state_dir(global)?.join("mcp").join("audit.log");
    let wanted = |r: &osvm_mcp::audit::Record| args.client.as_deref().is_none_or(|c| r.client == c);
    let print = |line: &str| {
        let Ok(r) = serde_json::from_str::<osvm_mcp::audit::Record>(line) else {
            return;
        };
        if !wanted(&r) {
            return;
        }
        match global.output {
            Output::Json => println!("{}", line.trim_end()),
            Output::Text => println!("{}", audit_line(&r)),
        }
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.follow => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("no audit records yet ({} does not exist)", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(anyhow::anyhow!("read {}: {e}", path.display())),
    };
    let mut reader = file.map(std::io::BufReader::new);
    if let Some(r) = reader.as_mut() {
        let mut text = String::new();
        std::io::Read::read_to_string(r, &mut text)?;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<osvm_mcp::audit::Record>(l).is_ok_and(|rec| wanted(&rec))
            })
            .collect();
        let skip = args.tail.map_or(0, |n| lines.len().saturating_sub(n));
        for line in &lines[skip..] {
            print(line);
        }
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut inode = reader
        .as_ref()
        .and_then(|r| r.get_ref().metadata().ok())
        .map(|m| m.ino());
    let mut pending = String::new();
    loop {
        // Rotated (another inode at the path) or not there yet: start on the new file.
        let now = std::fs::metadata(&path).ok().map(|m| m.ino());
        if now.is_some() && now != inode {
            if let Some(r) = reader.as_mut() {
                // What the old file got since the last look.
                let mut rest = String::new();
                let _ = std::io::Read::read_to_string(r, &mut rest);
                for line in rest.lines() {
                    print(line);
                }
            }
            reader = std::fs::File::open(&path).ok().map(std::io::BufReader::new);
            inode = now;
            pending.clear();
        }
        if let Some(r) = reader.as_mut() {
            let pos = r.stream_position()?;
            let mut chunk = String::new();
            if r.read_line(&mut chunk)? > 0 {
                pending.push_str(&chunk);
                if pending.ends_with('\n') {
                    print(&pending);
                    pending.clear();
                }
                continue;
            }
            r.seek(std::io::SeekFrom::Start(pos))?;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
