//! What the MCP benches share: the osvm binary, applying a stack, waiting for its servers, a
//! client session on the daemon's socket, timed calls, a process's RSS.

// Each bench includes this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rmcp::RoleClient;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::RunningService;

/// A process's resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A client session on the daemon's socket as client `bench`, upgraded here: the gateway
/// without the stdio bridge.
pub async fn on_socket(socket: &Path) -> RunningService<RoleClient, ClientConfig> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream
        .write_all(
            b"GET /v1/mcp/stdio HTTP/1.1\r\nhost: osvm\r\nconnection: upgrade\r\n\
              upgrade: osvm-mcp-stdio\r\nx-osvm-client: bench\r\n\r\n",
        )
        .await
        .unwrap();
    let mut r = tokio::io::BufReader::new(stream);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("bench", "1"),
    )
    .serve(tokio::io::split(r))
    .await
    .expect("initialize")
}

/// The osvm binary the benches drive.
pub fn osvm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_osvm"))
}

/// Sequential calls (latency) and 8 concurrent callers (throughput) of `tool`.
pub async fn measure(
    client: &RunningService<RoleClient, ClientConfig>,
    tool: &str,
    calls: usize,
) -> (Vec<Duration>, f64) {
    let args = serde_json::json!({ "message": "ping" })
        .as_object()
        .cloned()
        .unwrap();
    let one = || {
        let peer = client.peer().clone();
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args.clone());
        async move { peer.call_tool(params).await.expect("call") }
    };
    for _ in 0..50 {
        one().await;
    }
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let r = one().await;
        lat.push(t.elapsed());
        assert_ne!(r.is_error, Some(true));
    }
    lat.sort();
    let t = Instant::now();
    let per = calls / 8;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let peer = client.peer().clone();
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                peer.call_tool(params.clone()).await.expect("call");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (lat, (per * 8) as f64 / t.elapsed().as_secs_f64())
}

pub fn wait_up(state: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let o = Command::new(osvm())
            .arg("--state-dir")
            .arg(state)
            .args(["-o", "json", "mcp", "servers"])
            .output()
            .unwrap();
        let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v.iter().filter(|s| s["state"] == "up").count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "servers not up: {v:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn apply(state: &Path, file: &Path) {
    let o = Command::new(osvm())
        .arg("--state-dir")
        .arg(state)
        .args(["up", "-d"])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Starts `osvm daemon` on `state` and waits for its socket.
pub fn start_daemon(state: &Path) -> std::process::Child {
    let daemon = Command::new(osvm())
        .arg("--state-dir")
        .arg(state)
        .arg("daemon")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !state.join("osvm.sock").exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

/// Takes `stacks` down, waits (up to a minute) until nothing runs, stops the daemon and
/// removes `state`.
pub fn tear_down(state: &Path, stacks: &[&Path], mut daemon: std::process::Child) {
    for f in stacks {
        let _ = Command::new(osvm())
            .arg("--state-dir")
            .arg(state)
            .arg("down")
            .arg(f)
            .output();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let o = Command::new(osvm())
            .arg("--state-dir")
            .arg(state)
            .args(["-o", "json", "ps"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout).trim() == "[]" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(state);
}

/// A microVM bench's directories: the guest kernel (fetched once into cargo's target tmp
/// directory, shared with the tests, and fetched again when it lacks `module`), a fresh state
/// directory whose `kernels` links there, and in it a `www` directory with an index page.
pub fn microvm_state(
    tag: &str,
    module: Option<&str>,
) -> (osvm_microvm::kernel::Kernel, PathBuf, PathBuf) {
    use osvm_microvm::kernel::{Kernel, fetch};
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("microvm-kernel");
    std::fs::create_dir_all(&shared).unwrap();
    let has = |k: &Kernel| module.is_none_or(|m| k.modules.iter().any(|p| p.ends_with(m)));
    let kernel = match Kernel::installed(&shared) {
        Ok(k) if has(&k) => k,
        Ok(_) => fetch(&shared, true, &mut |_| {}).expect("fetch kernel"),
        Err(_) => fetch(&shared, false, &mut |_| {}).expect("fetch kernel"),
    };
    let state = std::env::temp_dir().join(format!("osvm-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(shared.join("kernels"), state.join("kernels")).unwrap();
    let www = state.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "ok\n").unwrap();
    (kernel, state, www)
}
