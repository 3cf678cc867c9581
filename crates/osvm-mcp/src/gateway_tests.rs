//! The gateway's client side on an in-memory stream: malformed and oversized input gets an
//! error or ends the session, never a panic, and a well-formed request after garbage is served.

use std::collections::BTreeMap;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::transport::async_rw::AsyncRwTransport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Gateway, Session};
use crate::upstream::LineCapReader;

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

/// Runs one stdio-framed session for `client` over an in-memory pipe; returns the client's ends.
fn session(
    gw: &Gateway,
    max: usize,
) -> (
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
    BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (read, write) = tokio::io::split(theirs);
    let transport = AsyncRwTransport::new_server(LineCapReader::new(read, max), write)
        .with_max_line_length(max);
    let session = Session::new(gw.clone(), Some("alice".into()));
    tokio::spawn(async move {
        if let Ok(running) = session.serve(transport).await {
            let _ = running.waiting().await;
        }
    });
    let (r, w) = tokio::io::split(ours);
    (w, BufReader::new(r))
}

async fn next_line(
    r: &mut BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
) -> Option<String> {
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Some(line),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_then_a_request_is_served_and_tools_list_is_empty_without_servers() {
    let dir = std::env::temp_dir().join(format!("osvm-gw-test-{}", std::process::id()));
    let gw = Gateway::new(tokio::runtime::Handle::current(), &dir);
    let (mut w, mut r) = session(&gw, 1 << 20);
    for junk in [
        "not json",
        "{}",
        "[1,2,3]",
        r#"{"jsonrpc":"2.0","id":7,"method":"no/such"}"#,
    ] {
        w.write_all(format!("{junk}\n").as_bytes()).await.unwrap();
    }
    w.write_all(format!("{INIT}\n").as_bytes()).await.unwrap();
    // Whatever the session says to the junk, the initialize gets its answer.
    let mut answered = false;
    while let Some(line) = next_line(&mut r).await {
        if line.contains(r#""id":1"#) && line.contains("protocolVersion") {
            answered = true;
            break;
        }
    }
    assert!(answered, "initialize was answered after garbage");
    w.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n")
        .await
        .unwrap();
    let mut tools = None;
    while let Some(line) = next_line(&mut r).await {
        if line.contains(r#""id":2"#) {
            tools = Some(line);
            break;
        }
    }
    let tools = tools.expect("tools/list answered");
    assert!(tools.contains(r#""tools":[]"#), "{tools}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_ends_the_session_without_an_answer() {
    let dir = std::env::temp_dir().join(format!("osvm-gw-test2-{}", std::process::id()));
    let gw = Gateway::new(tokio::runtime::Handle::current(), &dir);
    let (mut w, mut r) = session(&gw, 1024);
    w.write_all(format!("{INIT}\n").as_bytes()).await.unwrap();
    assert!(
        next_line(&mut r)
            .await
            .is_some_and(|l| l.contains("protocolVersion"))
    );
    let huge = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/list\",\"params\":{{\"x\":\"{}\"}}}}\n",
        "A".repeat(4096)
    );
    let _ = w.write_all(huge.as_bytes()).await;
    while let Some(line) = next_line(&mut r).await {
        assert!(
            !line.contains(r#""id":3"#),
            "the oversized request was served: {line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_clients_rate_are_refused_and_audited_per_client() {
    let dir = std::env::temp_dir().join(format!("osvm-gw-test3-{}", std::process::id()));
    let gw = Gateway::new(tokio::runtime::Handle::current(), &dir);
    let settings = osvm_core::stack::McpSettings {
        rate_per_second: 1,
        burst: 2,
        ..Default::default()
    };
    // One stack with server `fs` (not running) and those limits; another, laxer stack must not
    // loosen them.
    let decl = |stack: &str, name: &str| crate::ServerDecl {
        stack: stack.into(),
        component: name.into(),
        spec: osvm_core::stack::McpServerSpec {
            name: name.into(),
            version: None,
            transport: osvm_core::stack::McpTransport::Stdio,
            prefix: name.into(),
        },
    };
    let limits = BTreeMap::from([
        ("tight".to_owned(), settings),
        ("lax".to_owned(), osvm_core::stack::McpSettings::default()),
    ]);
    gw.configure(
        vec![decl("tight", "fs"), decl("lax", "other")],
        &BTreeMap::new(),
        &limits,
    )
    .unwrap();
    let code = |r: Result<rmcp::model::CallToolResult, rmcp::ErrorData>| r.unwrap_err().code;
    // Within the burst: no rule allows it (and it does not run), refused by the policy.
    assert_eq!(code(gw.call("alice", "fs.read", None).await), super::DENIED);
    assert_eq!(code(gw.call("alice", "fs.read", None).await), super::DENIED);
    assert_eq!(
        code(gw.call("alice", "fs.read", None).await),
        super::RATE_LIMITED
    );
    // Another client has its own bucket.
    assert_eq!(code(gw.call("bob", "fs.read", None).await), super::DENIED);
    // The lax stack's server is under the lax stack's limits (its own bucket for alice).
    for _ in 0..5 {
        assert_eq!(code(gw.call("alice", "other.x", None).await), super::DENIED);
    }
    let trail = std::fs::read_to_string(gw.audit().path()).unwrap();
    let outcomes: Vec<&str> = trail
        .lines()
        .map(|l| {
            if l.contains("rate_limited") {
                "limited"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "other", "other", "limited", "other", "other", "other", "other", "other", "other"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
