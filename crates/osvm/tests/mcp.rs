//! The MCP gateway end to end: real third-party MCP servers (the reference `filesystem` and
//! `everything` servers from the npm registry, run with the machine's Node.js) and a misbehaving
//! one, each confined as a component of a stack; a real third-party client (the official Python
//! SDK from PyPI) over stdio and over streamable HTTP; policy, audit, crashes, hangs, garbage.
//!
//! The npm packages and the Python SDK are installed once per target directory (pinned
//! versions); a test skips with the reason when the host lacks root, Node.js, npm or python3's
//! venv, or cannot reach the registries.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The MCP servers of the test stack.
const SERVER_COUNT: usize = 5;

#[derive(Clone)]
struct Fixtures {
    /// `node_modules` with the reference servers.
    node_modules: PathBuf,
    /// A python with the MCP SDK.
    python: PathBuf,
}

static FIXTURES: Mutex<Option<Result<Fixtures, String>>> = Mutex::new(None);

fn install() -> Result<Fixtures, String> {
    Ok(Fixtures {
        node_modules: reference_mcp_servers()?,
        python: python_mcp_sdk()?,
    })
}

fn fixtures(test: &str) -> Option<Fixtures> {
    if !sandbox_available(test) {
        return None;
    }
    let mut guard = FIXTURES.lock().unwrap_or_else(|e| e.into_inner());
    let r = guard.get_or_insert_with(install).clone();
    match r {
        Ok(f) => Some(f),
        Err(e) => {
            skip("mcp", test, &e);
            None
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The stack: the reference servers, the misbehaving one, and two clients' policies.
fn stack(state: &StateDir, f: &Fixtures) -> PathBuf {
    let shared = state.path.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(
        shared.join("hello.txt"),
        "hello from the shared directory\n",
    )
    .unwrap();
    let nm = f.node_modules.display();
    let fixtures = fixture("").display().to_string();
    let text = format!(
        r#"
[stack]
name = "mcp"
restart_backoff = "500ms"
restart_backoff_max = "1s"
max_restarts = 50
mcp = {{ call_timeout = "3s", max_message_size = "1M", rate = 200, burst = 400 }}

[[component]]
name = "files"
type = {{ kind = "mcp_server", name = "fs", version = "2026.8.31" }}
command = "/usr/bin/node"
args = ["/opt/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js", "/shared"]
mounts = [
  {{ source = "{nm}", target = "/opt/mcp/node_modules" }},
  {{ source = "{shared}", target = "/shared", mode = "rw" }},
]

# The same server told it may use the whole file system: only osvm's confinement keeps the
# host's files away from it.
[[component]]
name = "rootfs"
type = {{ kind = "mcp_server", name = "rootfs" }}
command = "/usr/bin/node"
args = ["/opt/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js", "/"]
mounts = [
  {{ source = "{nm}", target = "/opt/mcp/node_modules" }},
  {{ source = "{shared}", target = "/shared" }},
]

[[component]]
name = "everything"
type = {{ kind = "mcp_server", name = "everything" }}
command = "/usr/bin/node"
args = ["/opt/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"]
mounts = [{{ source = "{nm}", target = "/opt/mcp/node_modules" }}]

# The same server over streamable HTTP, on a port inside its own network namespace.
[[component]]
name = "everything-http"
type = {{ kind = "mcp_server", name = "evhttp" }}
command = "/usr/bin/node"
args = ["/opt/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "streamableHttp"]
env = {{ PORT = "3001" }}
listen = [3001]
mcp = {{ transport = "http", port = 3001, path = "/mcp" }}
mounts = [{{ source = "{nm}", target = "/opt/mcp/node_modules" }}]

[[component]]
name = "fake"
type = {{ kind = "mcp_server", name = "fake" }}
command = "/usr/bin/python3"
args = ["/fixtures/mcp_fake_server.py"]
mounts = [{{ source = "{fixtures}", target = "/fixtures" }}]

[[mcp_policy]]
allow = {{ clients = ["alice"], tools = ["*"] }}

[[mcp_policy]]
allow = {{ clients = ["bob", "spiffe://osvm.local/clients/bob"], tools = ["fs.read_*", "fs.list_*", "everything.echo"] }}

[[mcp_policy]]
deny = {{ clients = ["*"], tools = ["fs.move_file"] }}
"#,
        shared = shared.display()
    );
    let file = state.path.join("mcp.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A daemon running the stack with every MCP server connected.
fn up(test: &str) -> Option<(StateDir, Daemon, PathBuf, Fixtures)> {
    let f = fixtures(test)?;
    let state = StateDir::new(test);
    let daemon = Daemon::start(&state);
    let file = stack(&state, &f);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_servers(&state, SERVER_COUNT);
    Some((state, daemon, file, f))
}

fn servers(state: &StateDir) -> Vec<Value> {
    let o = run(state.osvm().args(["-o", "json", "mcp", "servers"]));
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn wait_servers(state: &StateDir, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = servers(state);
        if s.iter().filter(|s| s["state"] == "up").count() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {n} MCP servers up: {s:?}\n{}",
            stdout(&run(state.osvm().arg("events")))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn call(state: &StateDir, client: &str, name: &str, args: &str) -> (i32, Value) {
    let o = run(state.osvm().args([
        "-o", "json", "mcp", "call", name, "--as", client, "--args", args,
    ]));
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), v)
}

fn down(state: &StateDir, file: &Path) {
    let _ = run(state.osvm().arg("down").arg(file));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !ps(state).is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn audit(state: &StateDir) -> Vec<Value> {
    std::fs::read_to_string(state.path.join("mcp/audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Checks what the Python client printed.
fn check_client_view(out: &Value, how: &str) {
    let tools: Vec<&str> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(tools.contains(&"fs.read_text_file"), "{how}: {tools:?}");
    assert!(tools.contains(&"everything.echo"), "{how}: {tools:?}");
    assert!(
        !tools.contains(&"fs.write_file") && !tools.iter().any(|t| t.starts_with("fake.")),
        "{how}: bob sees only what bob may call: {tools:?}"
    );
    assert_eq!(out["read"]["is_error"], false, "{how}: {out}");
    assert!(
        out["read"]["text"]
            .as_str()
            .unwrap()
            .contains("hello from the shared directory"),
        "{how}: {out}"
    );
    assert_eq!(out["write"]["error_code"], -32001, "{how}: denied: {out}");
    assert_eq!(out["protocol"], "2025-11-25", "{how}: negotiated: {out}");
    // bob may call a tool of `everything`, so its resources and prompts pass through; of the
    // servers bob may use nothing, none show.
    let resources: Vec<&str> = out["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !resources.is_empty()
            && resources
                .iter()
                .all(|u| u.starts_with("osvm+mcp://everything/")),
        "{how}: {resources:?}"
    );
    assert!(
        out["resource_read"].as_u64().unwrap_or(0) >= 1,
        "{how}: {out}"
    );
    assert!(
        out["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p.as_str().unwrap().starts_with("everything.")),
        "{how}: {out}"
    );
    assert!(
        out["prompt_messages"].as_u64().unwrap_or(0) >= 1,
        "{how}: {out}"
    );
    assert!(
        out["write"]["error"].as_str().unwrap().contains("bob"),
        "{how}: the denial names the client: {out}"
    );
}

#[test]
fn a_third_party_client_lists_calls_and_is_denied_over_stdio_and_http() {
    const TEST: &str = "mcp_e2e";
    let Some((state, _daemon, file, f)) = up(TEST) else {
        return;
    };
    let client = fixture("mcp_client.py");

    // stdio: the SDK spawns `osvm mcp serve --as bob` as its server.
    let o = run(Command::new(&f.python)
        .arg(&client)
        .args(["stdio"])
        .arg(osvm_bin())
        .arg(&state.path)
        .arg("bob"));
    assert!(o.status.success(), "python over stdio: {}", stderr(&o));
    let out: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    check_client_view(&out, "stdio");

    // streamable HTTP through `osvm mcp serve --listen`, with a bearer token osvm issued.
    let o = run(state.osvm().args(["mcp", "token", "issue", "bob"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_owned();
    let (mut serve, url) = serve_listen(&state, &[]);
    let o = run(Command::new(&f.python)
        .arg(&client)
        .args(["http", &url, &token]));
    let http_ok = o.status.success();
    let http_out = stdout(&o);
    // A revoked token is refused at once.
    let _ = run(state.osvm().args(["mcp", "token", "revoke", "bob"]));
    let revoked = run(Command::new(&f.python)
        .arg(&client)
        .args(["http", &url, &token]));
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(http_ok, "python over HTTP: {}", stderr(&o));
    check_client_view(&serde_json::from_str(http_out.trim()).unwrap(), "http");
    assert!(!revoked.status.success(), "a revoked token still worked");

    // Every call was audited: client, server, tool, argument hash, outcome, latency.
    let trail = audit(&state);
    let denied: Vec<&Value> = trail
        .iter()
        .filter(|r| r["client"] == "bob" && r["tool"] == "write_file")
        .collect();
    assert_eq!(denied.len(), 2, "one denial per transport: {trail:?}");
    assert!(denied.iter().all(|r| r["outcome"] == "denied"
        && r["server"] == "fs"
        && r["args_sha256"].as_str().is_some_and(|h| h.len() == 64)
        && r["latency_ms"].is_number()));
    assert!(
        trail
            .iter()
            .any(|r| r["client"] == "bob" && r["tool"] == "read_text_file" && r["outcome"] == "ok")
    );
    down(&state, &file);
}

/// Starts `osvm mcp serve --listen 127.0.0.1:0 EXTRA...` and returns it with its URL.
fn serve_listen(state: &StateDir, extra: &[&str]) -> (std::process::Child, String) {
    let mut serve = state
        .osvm()
        .args(["mcp", "serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (serve, url)
}

#[test]
fn a_client_certificate_of_osvms_ca_names_the_client_over_https() {
    const TEST: &str = "mcp_mtls";
    if Command::new("curl").arg("--version").output().is_err() {
        skip("curl", TEST, "needs curl");
        return;
    }
    let Some((state, _daemon, file, _)) = up(TEST) else {
        return;
    };
    // The daemon made the stack's CA when it issued the servers' identities.
    let certs = state.path.join("certs");
    for (name, stack) in [("bob", "clients"), ("mallory", "clients")] {
        let o = run(state
            .osvm()
            .args(["cert", "issue", name, "--stack", stack, "--out"])
            .arg(certs.join(name)));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (mut serve, url) = serve_listen(&state, &["--tls"]);
    let port = url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/mcp")
        .to_owned();
    // curl checks the gateway's certificate against osvm's CA by its DNS name.
    let post = |who: Option<&str>, session: &str, body: &str| -> (bool, String) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-i", "--max-time", "10", "--cacert"])
            .arg(certs.join("bob/bundle.pem"))
            .args([
                "--resolve",
                &format!("mcp-gateway.osvm.osvm:{port}:127.0.0.1"),
            ])
            .args(["-H", "content-type: application/json"])
            .args(["-H", "accept: application/json, text/event-stream"])
            .args(["-H", "mcp-protocol-version: 2025-06-18"]);
        if !session.is_empty() {
            c.args(["-H", &format!("mcp-session-id: {session}")]);
        }
        if let Some(w) = who {
            c.arg("--cert")
                .arg(certs.join(w).join("cert.pem"))
                .arg("--key")
                .arg(certs.join(w).join("key.pem"));
        }
        let o = c
            .args([
                "-d",
                body,
                &format!("https://mcp-gateway.osvm.osvm:{port}/mcp"),
            ])
            .output()
            .unwrap();
        (o.status.success(), format!("{}{}", stdout(&o), stderr(&o)))
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}"#;
    let call = |who: &str, tool: &str, args: &str| -> String {
        let (ok, out) = post(Some(who), "", init);
        assert!(ok && out.contains("protocolVersion"), "{who}: {out}");
        let session = out
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("mcp-session-id:")
                    .then(|| l.split_once(':').unwrap().1.trim().to_owned())
            })
            .unwrap_or_default();
        post(
            Some(who),
            &session,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        );
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
        );
        post(Some(who), &session, &body).1
    };
    let bob_reads = call(
        "bob",
        "fs.read_text_file",
        r#"{"path":"/shared/hello.txt"}"#,
    );
    let bob_writes = call(
        "bob",
        "fs.write_file",
        r#"{"path":"/shared/y","content":"y"}"#,
    );
    let mallory_reads = call(
        "mallory",
        "fs.read_text_file",
        r#"{"path":"/shared/hello.txt"}"#,
    );
    let (anon_ok, anon) = post(None, "", init);
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        bob_reads.contains("hello from the shared directory"),
        "bob's certificate lets bob read: {bob_reads}"
    );
    for (what, out, who) in [
        (
            "bob may not write",
            &bob_writes,
            "spiffe://osvm.local/clients/bob",
        ),
        (
            "mallory may do nothing",
            &mallory_reads,
            "spiffe://osvm.local/clients/mallory",
        ),
    ] {
        assert!(out.contains("-32001") && out.contains(who), "{what}: {out}");
    }
    assert!(
        !anon_ok,
        "a client without a certificate got through: {anon}"
    );
    assert!(
        audit(&state)
            .iter()
            .any(|r| r["client"] == "spiffe://osvm.local/clients/bob" && r["outcome"] == "ok"),
        "the audit names the certificate's identity"
    );
    down(&state, &file);
}

#[test]
fn a_confined_server_cannot_read_host_files_even_when_its_tool_would() {
    const TEST: &str = "mcp_confined";
    let Some((state, _daemon, file, _)) = up(TEST) else {
        return;
    };
    let secret = state.path.join("host-secret.txt");
    std::fs::write(&secret, "the host's secret\n").unwrap();
    // The server itself allows "/": it tries, and the sandbox has no such file.
    let (code, v) = call(
        &state,
        "alice",
        "rootfs.read_text_file",
        &format!(r#"{{"path": "{}"}}"#, secret.display()),
    );
    assert_eq!(code, 1, "the tool reports an error: {v}");
    let text = v["result"]["content"][0]["text"].as_str().unwrap_or("");
    assert!(
        text.contains("ENOENT") && !text.contains("secret\n"),
        "the host file is not there for it: {v}"
    );
    let (code, v) = call(
        &state,
        "alice",
        "rootfs.read_text_file",
        r#"{"path": "/shared/hello.txt"}"#,
    );
    assert_eq!(code, 0, "what the stack binds in is readable: {v}");
    let (code, v) = call(
        &state,
        "alice",
        "rootfs.read_text_file",
        r#"{"path": "/etc/shadow"}"#,
    );
    assert_eq!(code, 1, "{v}");
    // A `mode = "rw"` mount of a directory the test (root) made: writable as it is, no chown
    // (an outside tester needed one), and what the server writes belongs to the directory's
    // owner on the host. The read-only mount of the same directory is not writable.
    let (code, v) = call(
        &state,
        "alice",
        "fs.write_file",
        r#"{"path": "/shared/written.txt", "content": "written by the fs server\n"}"#,
    );
    assert_eq!(code, 0, "the rw mount is writable: {v}");
    let written = state.path.join("shared/written.txt");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "written by the fs server\n"
    );
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(state.path.join("shared")).unwrap().uid();
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), owner);
    let (code, v) = call(
        &state,
        "alice",
        "rootfs.write_file",
        r#"{"path": "/shared/nope.txt", "content": "x"}"#,
    );
    assert_eq!(code, 1, "the ro mount is not writable: {v}");
    assert!(!state.path.join("shared/nope.txt").exists());
    down(&state, &file);
}

#[test]
fn crashing_hanging_and_garbage_writing_servers_fail_the_call_and_come_back() {
    const TEST: &str = "mcp_crash";
    let Some((state, _daemon, file, _)) = up(TEST) else {
        return;
    };
    // A server killed in the middle of a long call: the call errors at once, no hang.
    let pid = ps(&state)
        .iter()
        .find(|c| c["name"] == "everything")
        .and_then(|c| c["pid"].as_i64())
        .expect("everything runs");
    let osvm_state = state.path.clone();
    let long = std::thread::spawn(move || {
        let began = Instant::now();
        let o = Command::new(osvm_bin())
            .arg("--state-dir")
            .arg(&osvm_state)
            .args([
                "-o",
                "json",
                "mcp",
                "call",
                "everything.trigger-long-running-operation",
            ])
            .args([
                "--as",
                "alice",
                "--args",
                r#"{"duration": 20, "steps": 20}"#,
            ])
            .output()
            .unwrap();
        (o, began.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (o, took) = long.join().unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(took < Duration::from_secs(10), "the call hung for {took:?}");
    wait_servers(&state, SERVER_COUNT);
    let (code, v) = call(&state, "alice", "everything.echo", r#"{"message": "back"}"#);
    assert_eq!(code, 0, "after the restart: {v}");

    // Each call fails by itself. A tool that is merely slow (hang) or whose answer is garbage
    // is cancelled, and the server, which still answers a ping, is not restarted: a read-only
    // client cannot use up its max_restarts. A server that answers nothing any more (wedge),
    // writes an oversized line or dies is restarted, and answers the next call.
    let restarts = || {
        ps(&state)
            .iter()
            .find(|c| c["name"] == "fake")
            .and_then(|c| c["restarts"].as_u64())
            .unwrap_or(0)
    };
    for (tool, why, restarted) in [
        ("fake.hang", "was cancelled", false),
        ("fake.garbage", "was cancelled", false),
        ("fake.wedge", "was cancelled", true),
        ("fake.huge", "failed", true),
        ("fake.die", "failed", true),
    ] {
        let before = restarts();
        let began = Instant::now();
        let (code, v) = call(&state, "alice", tool, "{}");
        assert_eq!(code, 3, "{tool}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(why), "{tool}: {v}");
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{tool} took {:?}",
            began.elapsed()
        );
        if restarted {
            let deadline = Instant::now() + Duration::from_secs(20);
            while restarts() == before {
                assert!(
                    Instant::now() < deadline,
                    "{tool}: the server was not restarted"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            // Longer than the ping that follows a timeout.
            std::thread::sleep(Duration::from_secs(4));
            assert_eq!(restarts(), before, "{tool}: a live server was restarted");
            let logs = stdout(&run(state
                .osvm()
                .args(["logs", "--stream", "stderr", "fake"])));
            assert!(
                logs.contains("cancelled"),
                "{tool}: the server was told the call was cancelled: {logs}"
            );
        }
        wait_servers(&state, SERVER_COUNT);
        let (code, v) = call(&state, "alice", "fake.echo", r#"{"message": "still here"}"#);
        assert_eq!(code, 0, "after {tool}: {v}");
    }
    down(&state, &file);
}

#[test]
fn malformed_and_oversized_client_messages_get_errors_and_the_gateway_lives_on() {
    const TEST: &str = "mcp_garbage";
    let Some((state, _daemon, file, _)) = up(TEST) else {
        return;
    };
    let session = |input: &[u8]| -> (String, bool) {
        let mut child = state
            .osvm()
            .args(["mcp", "serve", "--as", "alice"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input);
        drop(stdin);
        let o = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            o.status.success(),
        )
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    // Garbage first, then a well-formed request: the session answers it.
    let (out, _) =
        session(format!("this is not JSON\n{{\"jsonrpc\":\"2.0\"}}\n{init}\n").as_bytes());
    assert!(
        out.lines()
            .any(|l| l.contains("\"id\":1") && l.contains("protocolVersion")),
        "initialize answered after garbage: {out}"
    );
    // A message over the stack's 1 MiB limit is answered with an error, and the session
    // goes on (the next request is served).
    let huge = format!(
        "{init}\n{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\",\"params\":{{\"x\":\"{}\"}}}}\n\
         {{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/list\"}}\n",
        "A".repeat(2 << 20)
    );
    let (out, _) = session(huge.as_bytes());
    let answers: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let two = answers
        .iter()
        .find(|a| a["id"] == 2)
        .expect("an answer for id 2");
    assert_eq!(two["error"]["code"], -32600, "{two}");
    assert!(
        answers
            .iter()
            .any(|a| a["id"] == 3 && a["result"]["tools"].is_array()),
        "the session goes on: {out}"
    );
    let (code, v) = call(
        &state,
        "alice",
        "everything.echo",
        r#"{"message": "alive"}"#,
    );
    assert_eq!(code, 0, "the gateway still serves: {v}");
    down(&state, &file);
}

/// One stack's `[[mcp_policy]]` governs only its own servers, and a second stack can neither
/// take a server name or tool prefix the first uses nor widen access to the first's tools
/// (an outside tester's finding: a second stack's `* -> *` let a denied client call the
/// first's tools, and its same-named server took the first's calls).
#[test]
fn a_second_stack_can_neither_take_nor_open_the_first_stacks_mcp_servers() {
    const TEST: &str = "mcp_stacks";
    if !sandbox_available(TEST) {
        return;
    }
    if !Path::new("/usr/bin/python3").exists() {
        skip(
            "python3",
            TEST,
            "needs /usr/bin/python3 (the fake MCP server)",
        );
        return;
    }
    let state = StateDir::new(TEST);
    let _daemon = Daemon::start(&state);
    let fixtures = fixture("").display().to_string();
    let server = |stack: &str, component: &str, name: &str, extra: &str, rules: &str| {
        let file = state.path.join(format!("{stack}.toml"));
        std::fs::write(
            &file,
            format!(
                r#"
[stack]
name = "{stack}"

[[component]]
name = "{component}"
type = {{ kind = "mcp_server", name = "{name}" }}
command = "/usr/bin/python3"
args = ["/fixtures/mcp_fake_server.py"]
mounts = [{{ source = "{fixtures}", target = "/fixtures" }}]
{extra}
{rules}
"#
            ),
        )
        .unwrap();
        file
    };
    let first = server(
        "first",
        "fake",
        "fake",
        "",
        "[[mcp_policy]]\nallow = { clients = [\"alice\"], tools = [\"fake.*\"] }\n",
    );
    let o = run(state.osvm().args(["up", "-d"]).arg(&first));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_servers(&state, 1);
    let open = "[[mcp_policy]]\nallow = { clients = [\"*\"], tools = [\"*\"] }\n";

    // The same server name, or another name with the same tool prefix: refused, naming both.
    for (name, extra) in [("fake", ""), ("imposter", "mcp = { prefix = \"fake\" }")] {
        let second = server("second", "imp", name, extra, open);
        let o = run(state.osvm().args(["up", "-d"]).arg(&second));
        assert!(!o.status.success(), "{name}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("stack `first` already has server `fake`") && err.contains("`imp`"),
            "{name}: {err}"
        );
    }

    // Its own server, with rules that allow everyone everything: they open only its own tools.
    let second = server("second", "other", "other", "", open);
    let o = run(state.osvm().args(["up", "-d"]).arg(&second));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_servers(&state, 2);
    let (code, v) = call(&state, "mallory", "other.echo", r#"{"message": "mine"}"#);
    assert_eq!(code, 0, "second's rules open second's server: {v}");
    let (code, v) = call(&state, "mallory", "fake.echo", r#"{"message": "theirs"}"#);
    assert_eq!(code, 3, "second's rules do not open first's server: {v}");
    assert_eq!(v["error"]["code"], -32001, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        message, "denied: no mcp_policy rule allows client `mallory` to use fake.echo",
        "{v}"
    );
    // A server that does not exist is refused in the same words: mallory cannot tell.
    let (code, v) = call(&state, "mallory", "nosuch.echo", "{}");
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["error"]["code"], -32001, "{v}");
    assert_eq!(
        v["error"]["message"],
        "denied: no mcp_policy rule allows client `mallory` to use nosuch.echo",
        "{v}"
    );
    let (code, v) = call(&state, "alice", "fake.echo", r#"{"message": "hi"}"#);
    assert_eq!(code, 0, "first's own rule still holds: {v}");
    let trail = audit(&state);
    assert!(
        trail.iter().any(|r| r["client"] == "mallory"
            && r["tool"] == "echo"
            && r["server"] == "fake"
            && r["outcome"] == "denied"),
        "{trail:?}"
    );
    // Resources and prompts of a server mallory may not use: refused, and audited.
    let mut child = state
        .osvm()
        .args(["mcp", "serve", "--as", "mallory"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    writeln!(stdin, "{init}").unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{{"uri":"osvm+mcp://fake/secret"}}}}"#
    )
    .unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{{"name":"fake.p"}}}}"#
    )
    .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for id in [2, 3] {
        let a = answers.iter().find(|a| a["id"] == id).expect("answered");
        assert_eq!(a["error"]["code"], -32001, "{a}");
    }

    // A call to a server that is not running names it.
    let o = run(state.osvm().args(["stop", "first/fake"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(20);
    while servers(&state)
        .iter()
        .any(|s| s["server"] == "fake" && s["state"] == "up")
    {
        assert!(Instant::now() < deadline, "fake still up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, v) = call(&state, "alice", "fake.echo", r#"{"message": "anyone?"}"#);
    assert_eq!(code, 3, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("it is stopped"),
        "says what comes next: {v}"
    );

    let trail = audit(&state);
    let has = |method: &str, client: &str, outcome: &str| {
        trail.iter().any(|r| {
            r["method"] == method
                && r["client"] == client
                && r["server"] == "fake"
                && r["outcome"] == outcome
        })
    };
    assert!(has("resources/read", "mallory", "denied"), "{trail:?}");
    assert!(has("prompts/get", "mallory", "denied"), "{trail:?}");
    assert!(has("tools/call", "alice", "unavailable"), "{trail:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.path.join("mcp/audit.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the audit log is root's alone");
    // The CLI reads it, one client's records.
    let o = run(state.osvm().args(["mcp", "audit", "--client", "mallory"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.lines().count() >= 3 && text.lines().all(|l| l.contains("  mallory  ")),
        "{text}"
    );
    assert!(
        text.contains("resources/read  osvm+mcp://fake/secret  denied"),
        "{text}"
    );
    let o = run(state
        .osvm()
        .args(["-o", "json", "mcp", "audit", "--tail", "1"]));
    let last: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(last["outcome"], "unavailable", "{last}");

    let o = run(state.osvm().arg("down").arg(&second));
    assert!(o.status.success(), "{}", stderr(&o));
    down(&state, &first);
}

/// One HTTP/1.1 request to the daemon's socket: the status and the response's head (lower-
/// cased), read for at most 2 s (an event stream never ends by itself).
fn socket_http(
    state: &StateDir,
    method: &str,
    token: &str,
    session: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(state.path.join("osvm.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let session = session
        .map(|id| format!("Mcp-Session-Id: {id}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} /v1/mcp HTTP/1.1\r\nHost: osvm\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         MCP-Protocol-Version: 2025-06-18\r\n{session}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A streamable-HTTP session is its client's alone: bob, with his own valid token and alice's
/// `Mcp-Session-Id`, gets 404 for her event stream and for a POST into her session (an outside
/// tester got both), while alice keeps using it; DELETE answers 204.
#[test]
fn an_http_session_belongs_to_the_client_that_opened_it() {
    const TEST: &str = "mcp_session";
    if !sandbox_available(TEST) {
        return;
    }
    let state = StateDir::new(TEST);
    let _daemon = Daemon::start(&state);
    let token = |client: &str| {
        let o = run(state.osvm().args(["mcp", "token", "issue", client]));
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).trim().to_owned()
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let (status, head) = socket_http(&state, "POST", &alice, None, init);
    assert_eq!(status, 200, "{head}");
    let session = head
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("a session id in {head}"));
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, head) = socket_http(&state, "POST", &alice, Some(&session), initialized);
    assert_eq!(status, 202, "{head}");

    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let (status, head) = socket_http(&state, "POST", &bob, Some(&session), list);
    assert_eq!(status, 404, "bob posts into alice's session: {head}");
    let (status, head) = socket_http(&state, "GET", &bob, Some(&session), "");
    assert_eq!(status, 404, "bob reads alice's event stream: {head}");
    let (status, head) = socket_http(&state, "DELETE", &bob, Some(&session), "");
    assert_eq!(status, 404, "bob ends alice's session: {head}");

    let (status, head) = socket_http(&state, "POST", &alice, Some(&session), list);
    assert_eq!(status, 200, "alice's session goes on: {head}");
    let (status, head) = socket_http(&state, "DELETE", &alice, Some(&session), "");
    assert_eq!(status, 204, "{head}");
    let (status, head) = socket_http(&state, "POST", &alice, Some(&session), list);
    assert_eq!(status, 404, "an ended session: {head}");
    let (status, head) = socket_http(&state, "POST", &bob, Some("made-up-session"), list);
    assert_eq!(status, 404, "a session nobody opened: {head}");
}

/// A message just over the size limit on a stdio session, with the client's input left open
/// as a real client leaves it: an Invalid Request error with the message's id comes back at
/// once and the session serves the next request (an outside tester saw no answer and no end
/// for 45 s). Needs no MCP server: the gateway answers `initialize` and `tools/list` itself.
#[test]
fn an_oversized_stdio_message_is_answered_with_its_id_and_the_session_goes_on() {
    const TEST: &str = "mcp_oversized";
    if !sandbox_available(TEST) {
        return;
    }
    let state = StateDir::new(TEST);
    let _daemon = Daemon::start(&state);
    let mut child = state
        .osvm()
        .args(["mcp", "serve", "--as", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let answer = |id: i64| -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer for id {id} within 10 s"));
            if v["id"] == id {
                return v;
            }
        }
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    writeln!(stdin, "{init}").unwrap();
    answer(1);
    // The default limit is 4 MiB; the id comes after the oversized params.
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"tools/list\",\"params\":{{\"x\":\"{}\"}},\"id\":2}}\n",
        "A".repeat(4 << 20)
    );
    stdin.write_all(big.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let refused = answer(2);
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over the gateway's limit of 4194304 bytes"),
        "{refused}"
    );
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":3,"method":"tools/list"}}"#).unwrap();
    let next = answer(3);
    assert!(next["result"]["tools"].is_array(), "{next}");
    // The bridge handed its pipes to the daemon: stopped, it is not in the way.
    let bridge = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(bridge, nix::sys::signal::Signal::SIGSTOP).unwrap();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":4,"method":"tools/list"}}"#).unwrap();
    let while_stopped = answer(4);
    nix::sys::signal::kill(bridge, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(
        while_stopped["result"]["tools"].is_array(),
        "{while_stopped}"
    );
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the bridge ends cleanly at the client's EOF: {status}"
    );

    // Input from a file (not a pipe): the bridge copies it to the daemon itself.
    let requests = state.path.join("requests.jsonl");
    std::fs::write(
        &requests,
        format!(
            "{init}\n{}\n",
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#
        ),
    )
    .unwrap();
    let o = state
        .osvm()
        .args(["mcp", "serve", "--as", "alice"])
        .stdin(std::fs::File::open(&requests).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(r#""id":2"#) && out.contains("tools"), "{out}");

    // Handed over: a plain file, not a pipe or socket. The daemon refuses it, says why on the
    // connection and never reads it as a session.
    {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut conn =
            std::os::unix::net::UnixStream::connect(state.path.join("osvm.sock")).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        write!(
            conn,
            "GET /v1/mcp/stdio HTTP/1.1\r\nhost: osvm\r\nconnection: upgrade\r\n\
             upgrade: osvm-mcp-stdio\r\nx-osvm-client: alice\r\nx-osvm-stdio-fds: 1\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(conn.read(&mut byte).unwrap(), 1, "{head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(
            head.starts_with("http/1.1 101") && head.contains("x-osvm-stdio-fds: 1"),
            "{head}"
        );
        let file = std::fs::File::open(&requests).unwrap();
        let fds = [file.as_raw_fd(), file.as_raw_fd()];
        sendmsg::<()>(
            conn.as_raw_fd(),
            &[std::io::IoSlice::new(b"F")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut said = String::new();
        conn.read_to_string(&mut said).unwrap();
        assert!(
            said.contains("neither a pipe nor a unix socket"),
            "{said:?}"
        );
    }

    // A token the daemon does not know: the bridge says why and fails, before any message.
    let o = state
        .osvm()
        .args(["mcp", "serve", "--token", "osvm_not-a-token"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("token"), "{err}");
    assert!(o.stdout.is_empty());
}

/// `kill -9` of the daemon ends every stdio MCP server's channel (the pipes were the daemon's):
/// the next daemon starts each of them again at once, whatever its `restart` (an outside tester
/// found `on-failure` servers left stopped, exited with code 0, and `always` ones back only
/// after a 40 s backoff), without counting a restart, and calls work again.
#[test]
fn stdio_servers_come_back_at_once_after_the_daemon_is_killed() {
    const TEST: &str = "mcp_daemon_crash";
    if !sandbox_available(TEST) {
        return;
    }
    if !Path::new("/usr/bin/python3").exists() {
        skip(
            "python3",
            TEST,
            "needs /usr/bin/python3 (the fake MCP server)",
        );
        return;
    }
    let state = StateDir::new(TEST);
    let mut daemon = Daemon::start(&state);
    let fixtures = fixture("").display().to_string();
    let file = state.path.join("crash.toml");
    let server = |name: &str, restart: &str| {
        format!(
            r#"
[[component]]
name = "{name}"
type = {{ kind = "mcp_server", name = "{name}" }}
command = "/usr/bin/python3"
args = ["/fixtures/mcp_fake_server.py"]
mounts = [{{ source = "{fixtures}", target = "/fixtures" }}]
restart = "{restart}"
"#
        )
    };
    std::fs::write(
        &file,
        format!(
            "[stack]\nname = \"crash\"\n{}{}\n[[mcp_policy]]\nallow = {{ clients = [\"alice\"], tools = [\"*\"] }}\n",
            server("onfail", "on-failure"),
            server("always", "always")
        ),
    )
    .unwrap();
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_servers(&state, 2);
    for tool in ["onfail.echo", "always.echo"] {
        let (code, v) = call(&state, "alice", tool, r#"{"message": "before"}"#);
        assert_eq!(code, 0, "{tool}: {v}");
    }

    daemon.kill9();
    let began = Instant::now();
    let _daemon = Daemon::start(&state);
    wait_servers(&state, 2);
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "back in {:?}, not after a backoff",
        began.elapsed()
    );
    for tool in ["onfail.echo", "always.echo"] {
        let (code, v) = call(&state, "alice", tool, r#"{"message": "after"}"#);
        assert_eq!(code, 0, "{tool}: {v}");
    }
    let views = wait_ps(&state, "both running again", |v| {
        v.len() == 2 && v.iter().all(|c| c["status"] == "running")
    });
    for c in views {
        assert_eq!(
            c["restarts"], 0,
            "a lost channel is not the server's failure: {c}"
        );
    }
    // A server in its backoff: a call is told when it comes back, not only why it went.
    let (code, _) = call(&state, "alice", "onfail.die", "{}");
    assert_eq!(code, 3);
    // Once the daemon has seen the end (a moment after the call failed).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, v) = call(&state, "alice", "onfail.echo", r#"{"message": "now?"}"#);
        assert_eq!(code, 3, "{v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        if message.contains("exited with code 7") && message.contains("restart 1 in ") {
            assert!(message.contains("(at "), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    down(&state, &file);
}

/// `mcp = { tls = true }`: the gateway speaks mutual TLS to an HTTP MCP server, presenting a
/// certificate of the stack's CA for `spiffe://osvm.local/osvm/mcp-gateway` and checking the
/// server's. The server (a Python fixture over HTTPS, requiring a client certificate of the
/// CA) answers only that identity: alice's call through the gateway reports the gateway as
/// the TLS peer, while a component that network policy lets reach the port, with its own valid
/// certificate, is refused by the server, and one speaking plain HTTP gets no answer.
#[test]
fn an_http_mcp_server_with_tls_admits_only_the_gateway() {
    const TEST: &str = "mcp_tls";
    if !hub_available(TEST) {
        return;
    }
    let state = StateDir::new(TEST);
    let fixtures = fixture("").display().to_string();
    let probe = r#"
import socket, ssl, sys, time, http.client
who = sys.argv[1]
for _ in range(120):
    try:
        socket.create_connection(('tls', 8443), timeout=2).close()
        break
    except OSError:
        time.sleep(0.5)
body = '{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
try:
    if who == 'impostor':
        ctx = ssl.create_default_context(cafile='/run/osvm/identity/bundle.pem')
        ctx.load_cert_chain('/run/osvm/identity/cert.pem', '/run/osvm/identity/key.pem')
        c = http.client.HTTPSConnection('tls.mtlsmcp.osvm', 8443, context=ctx, timeout=10)
    else:
        c = http.client.HTTPConnection('tls', 8443, timeout=10)
    c.request('POST', '/mcp', body, {'Content-Type': 'application/json'})
    print(who.upper(), 'GOT', c.getresponse().status)
except Exception as e:
    print(who.upper(), 'REFUSED', type(e).__name__, e)
"#;
    let file = state.path.join("tls.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[stack]
name = "mtlsmcp"
network = "hub"

[[component]]
name = "tls"
type = {{ kind = "mcp_server", name = "secure" }}
command = "/usr/bin/python3"
args = ["/fixtures/mcp_tls_server.py", "8443", "spiffe://osvm.local/osvm/mcp-gateway"]
mounts = [{{ source = "{fixtures}", target = "/fixtures" }}]
listen = [8443]
mcp = {{ transport = "http", port = 8443, path = "/mcp", tls = true }}

[[component]]
name = "impostor"
command = "/usr/bin/python3"
args = ["-c", '''{probe}''', "impostor"]
restart = "never"

[[component]]
name = "plain"
command = "/usr/bin/python3"
args = ["-c", '''{probe}''', "plain"]
restart = "never"

[[policy]]
allow = {{ from = "impostor", to = "tls", ports = [8443] }}

[[policy]]
allow = {{ from = "plain", to = "tls", ports = [8443] }}

[[mcp_policy]]
allow = {{ clients = ["alice"], tools = ["secure.*"] }}
"#
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&state);
    let o = run(state.osvm().args(["up", "-d"]).arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_servers(&state, 1);
    let (code, out) = call(&state, "alice", "secure.whoami", "{}");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.to_string()
            .contains("peer=spiffe://osvm.local/osvm/mcp-gateway"),
        "the server saw the gateway's certificate: {out}"
    );
    let views = wait_ps(&state, "both probes ended", |v| {
        ["impostor", "plain"].iter().all(|n| {
            v.iter()
                .any(|c| c["name"] == *n && c["last_exit"]["code"].is_number())
        })
    });
    let log = |name: &str| stdout(&run(state.osvm().args(["logs", name])));
    let impostor = log("impostor");
    assert!(
        impostor.contains("IMPOSTOR GOT 403"),
        "{impostor}\n{views:?}"
    );
    let plain = log("plain");
    assert!(plain.contains("PLAIN REFUSED"), "{plain}\n{views:?}");
    let server = log("tls");
    assert!(
        server.contains("REFUSED spiffe://osvm.local/mtlsmcp/impostor"),
        "{server}"
    );
    down(&state, &file);
}

/// Asserts that `v` is a JSON-RPC error with `code` whose message contains `says`.
fn assert_error(v: &Value, code: i64, says: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(says)),
        "{v}"
    );
}

/// `tools/call`s of a stdio session are relayed as bytes between the client's and the
/// server's pipes (the typed rmcp path is for everything else). The relay must keep every
/// promise of the typed path: answers reach the session that asked, under the id it used, even
/// when two sessions use the same ids on one server at once; a refusal is the same error and
/// the same audit record; a slow call times out and the server is told; a client's
/// cancellation reaches the server and no answer follows; a server that dies or answers
/// garbage fails the call at once, and is restarted.
#[test]
fn relayed_calls_reach_their_own_session_and_fail_alone() {
    const TEST: &str = "mcp_relay";
    let Some((state, _daemon, file, _)) = up(TEST) else {
        return;
    };
    let mut a = RawSession::open(&state, "alice");
    let mut b = RawSession::open(&state, "alice");
    // Pipelined, the same ids in both sessions, both on one server.
    const N: i64 = 40;
    for id in 1..=N {
        a.call(
            id,
            "fake.echo",
            serde_json::json!({ "message": format!("a{id}") }),
        );
        b.call(
            id,
            "fake.echo",
            serde_json::json!({ "message": format!("b{id}") }),
        );
    }
    for (s, who) in [(&a, "a"), (&b, "b")] {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 1..=N {
            let v = s.next(Duration::from_secs(10)).expect("an answer");
            let id = v["id"].as_i64().unwrap_or_else(|| panic!("{v}"));
            assert_eq!(
                v["result"]["content"][0]["text"],
                format!("{who}{id}"),
                "session {who} got another's answer: {v}"
            );
            assert!(seen.insert(id), "answered twice: {v}");
        }
    }
    // rmcp's own requests go on between relayed calls (answered in either order).
    a.send(r#"{"jsonrpc":"2.0","id":50,"method":"tools/list"}"#);
    a.call(
        51,
        "fake.echo",
        serde_json::json!({ "message": "after list" }),
    );
    let mut two: Vec<Value> = (0..2)
        .map(|_| a.next(Duration::from_secs(10)).expect("an answer"))
        .collect();
    two.sort_by_key(|v| v["id"].as_i64());
    assert!(two[0]["result"]["tools"].is_array(), "{two:?}");
    assert_eq!(
        two[1]["result"]["content"][0]["text"], "after list",
        "{two:?}"
    );

    // Refused by policy: the typed path's error and audit record.
    let mut bob = RawSession::open(&state, "bob");
    bob.call(1, "fake.echo", serde_json::json!({ "message": "x" }));
    let denied = bob.answer(1, Duration::from_secs(10));
    assert_eq!(denied["error"]["code"], -32001, "{denied}");
    assert_eq!(denied["error"]["data"]["client"], "bob", "{denied}");
    assert_eq!(denied["error"]["data"]["tool"], "echo", "{denied}");

    // The same arguments give the same digest on the relay and on the typed path.
    let args = r#"{"message": "digest", "z": [1, 2], "a": {"k": true}}"#;
    let earlier = audit(&state).len();
    a.call(60, "fake.echo", serde_json::from_str(args).unwrap());
    a.answer(60, Duration::from_secs(10));
    let (code, v) = call(&state, "alice", "fake.echo", args);
    assert_eq!(code, 0, "{v}");
    let both = audit(&state)[earlier..].to_vec();
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(
        both[0]["args_sha256"].is_string() && both[0]["args_sha256"] == both[1]["args_sha256"],
        "the relay's digest differs from the typed path's: {both:?}"
    );

    // Slow: cancelled at the stack's call_timeout (3 s), the server told, and not restarted.
    let fake_restarts = || {
        ps(&state)
            .iter()
            .find(|c| c["name"] == "fake")
            .and_then(|c| c["restarts"].as_u64())
            .unwrap_or(0)
    };
    let before = fake_restarts();
    let began = Instant::now();
    a.call(70, "fake.hang", serde_json::json!({}));
    let slow = a.answer(70, Duration::from_secs(10));
    assert_error(&slow, -32003, "within 3s; the call was cancelled");
    assert!(began.elapsed() >= Duration::from_secs(3), "{slow}");

    // Cancelled by the client: the server is told, and no answer follows (not even the
    // timeout's).
    a.call(71, "fake.hang", serde_json::json!({}));
    a.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":71,"reason":"the user gave up"}}"#);
    let quiet = a.next(Duration::from_secs(5));
    assert!(quiet.is_none(), "an answer to a cancelled call: {quiet:?}");
    let logs = stdout(&run(state
        .osvm()
        .args(["logs", "--stream", "stderr", "fake"])));
    assert_eq!(
        logs.matches("cancelled \"osvm-").count(),
        2,
        "the server was told of the timeout and of the cancellation: {logs}"
    );
    assert_eq!(fake_restarts(), before, "a slow call restarted the server");

    // Dies in the call: the call fails at once (not at the timeout), the server comes back.
    let began = Instant::now();
    a.call(80, "fake.die", serde_json::json!({}));
    let died = a.answer(80, Duration::from_secs(10));
    assert_error(&died, -32003, "failed during the call");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "waited for the timeout: {died}"
    );
    let wait_restart = |before: u64, tool: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while fake_restarts() == before {
            assert!(
                Instant::now() < deadline,
                "{tool}: the server was not restarted: {:?} {}",
                ps(&state).into_iter().find(|c| c["name"] == "fake"),
                stdout(&run(state.osvm().args(["events"])))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_servers(&state, SERVER_COUNT);
    };
    wait_restart(before, "die");

    // A result that is not an object: the call fails, the server is restarted.
    let before = fake_restarts();
    a.call(90, "fake.badresult", serde_json::json!({}));
    let bad = a.answer(90, Duration::from_secs(10));
    assert_error(&bad, -32003, "not an object");
    wait_restart(before, "badresult");
    a.call(91, "fake.echo", serde_json::json!({ "message": "back" }));
    assert_eq!(
        a.answer(91, Duration::from_secs(10))["result"]["content"][0]["text"],
        "back"
    );

    // The audit trail has each of them.
    let trail = audit(&state);
    let of = |tool: &str, outcome: &str| {
        trail
            .iter()
            .filter(|r| r["tool"] == tool && r["outcome"] == outcome)
            .count()
    };
    assert_eq!(of("echo", "denied"), 1, "{trail:?}");
    assert_eq!(of("hang", "timeout"), 1, "{trail:?}");
    assert_eq!(of("hang", "cancelled"), 1, "{trail:?}");
    assert_eq!(of("die", "upstream_error"), 1, "{trail:?}");
    assert_eq!(of("badresult", "upstream_error"), 1, "{trail:?}");
    assert!(of("echo", "ok") >= 2 * N as usize + 3, "{trail:?}");
    drop((a, b, bob));
    down(&state, &file);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A client that sends call after call and reads none of the answers must not make the daemon
/// hold them all: past a bounded backlog (and 64 calls in flight) the daemon stops reading the
/// session, so the client's own writes block; once it reads, every answer arrives, in full.
#[test]
fn a_client_that_does_not_read_its_answers_is_held_back_not_buffered() {
    const TEST: &str = "mcp_backpressure";
    let Some((state, daemon, file, _)) = up(TEST) else {
        return;
    };
    let mut child = state
        .osvm()
        .args(["mcp", "serve", "--as", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"raw","version":"1"}}}}}}"#).unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains(r#""id":0"#), "{line}");
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    // 2,000 calls whose answers are 64 KiB each: 128 MiB if the daemon kept them.
    const CALLS: usize = 2000;
    let text = "A".repeat(64 << 10);
    let rss_before = rss_kib(daemon.child.id());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        for id in 1..=CALLS {
            let call = serde_json::json!({
                "jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": { "name": "fake.echo", "arguments": { "message": text } },
            });
            if writeln!(stdin, "{call}").is_err() {
                break;
            }
        }
        let _ = done_tx.send(());
        stdin
    });
    // The answers are not read: the daemon stops reading the calls, and the writer blocks.
    let blocked = done_rx.recv_timeout(Duration::from_secs(5)).is_err();
    let rss_held = rss_kib(daemon.child.id());
    assert!(
        blocked,
        "the daemon read all {CALLS} calls without their answers being read"
    );
    assert!(
        rss_held < rss_before + 64 * 1024,
        "the daemon's RSS went from {rss_before} to {rss_held} KiB"
    );
    // Read: every call is answered, in full (or refused by the stack's rate, 200/s in bursts
    // of 400, once reading lets the calls through faster), and the writer finishes.
    let (mut full, mut limited) = (0, 0);
    while full + limited < CALLS {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the session ended"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["error"]["code"] == -32005 {
            limited += 1;
            continue;
        }
        assert_eq!(
            v["result"]["content"][0]["text"].as_str().map(str::len),
            Some(64 << 10),
            "{}",
            &line[..line.len().min(300)]
        );
        full += 1;
    }
    assert!(full >= 400, "{full} answered, {limited} rate-limited");
    let stdin = writer.join().unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());

    // The other way: a server that stops reading its input gets no more than a bounded backlog;
    // further calls are refused at once, saying why.
    std::thread::sleep(Duration::from_secs(2));
    let mut s = RawSession::open(&state, "alice");
    s.call(1, "fake.wedge", serde_json::json!({}));
    let text = "B".repeat(64 << 10);
    // Over 3 s: a backlog alone is not enough, the server must also have taken nothing for a
    // second (one that reads slowly is waited for).
    for id in 2..=120 {
        s.call(id, "fake.echo", serde_json::json!({ "message": text }));
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut refused = 0;
    for _ in 1..=120 {
        let v = s
            .next(Duration::from_secs(30))
            .expect("every call answered");
        if v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is not reading its input"))
        {
            refused += 1;
        }
    }
    assert!(refused > 0, "no call was refused for the server's backlog");
    drop(s);
    down(&state, &file);
}
