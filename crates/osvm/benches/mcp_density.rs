//! MCP density: N small MCP servers (`osvm-probe mcp`, each a confined component of its own)
//! behind one daemon's gateway. Reports the time from `osvm up -d` until the gateway lists all
//! of them as up, the daemon's memory per server, the host's memory per server, and the
//! latency of `tools/list` (every server's tools, gathered) and `tools/call` (a random server)
//! through one client session at that size.
//!
//! Run as root: `OSVM_MCP_DENSITY=1000 cargo bench -p osvm --bench mcp_density` (default 1000;
//! build the probe first, `cargo build --release -p osvm-testkit`).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use support::{on_socket, rss_kib};

fn osvm(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_osvm"));
    c.arg("--state-dir").arg(state);
    c
}

/// Servers the gateway has up.
fn up_count(state: &Path) -> usize {
    let o = osvm(state)
        .args(["-o", "json", "mcp", "servers"])
        .output()
        .unwrap();
    serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout)
        .unwrap_or_default()
        .iter()
        .filter(|s| s["state"] == "up")
        .count()
}

/// The host's available memory, KiB.
fn available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    ms(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize])
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP mcp_density bench: the sandbox needs root");
        return;
    }
    let n: usize = std::env::var("OSVM_MCP_DENSITY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_osvm")).parent().unwrap();
    if !bin_dir.join("osvm-probe").exists() {
        println!(
            "SKIP mcp_density bench: {} is missing (cargo build --release -p osvm-testkit)",
            bin_dir.join("osvm-probe").display()
        );
        return;
    }
    let state = std::env::temp_dir().join(format!("osvm-mcp-density-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let socket = state.join("osvm.sock");
    let mut daemon = osvm(&state)
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rss_before, avail_before) = (rss_kib(daemon.id()), available_kib());

    let mut text = String::from(
        "[stack]\nname = \"mcpdensity\"\nmcp = { rate = 1000000, burst = 1000000 }\n\n\
         [[mcp_policy]]\nallow = { clients = [\"bench\"], tools = [\"*\"] }\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "\n[[component]]\nname = \"s{i}\"\ntype = {{ kind = \"mcp_server\", name = \"s{i}\" }}\n\
             command = \"/probe/osvm-probe\"\nargs = [\"mcp\", \"s{i}\"]\n\
             mounts = [{{ source = \"{}\", target = \"/probe\" }}]\n\
             resources = {{ memory = \"16M\", pids = 4 }}\n",
            bin_dir.display()
        ));
    }
    let file = state.join("mcpdensity.toml");
    std::fs::write(&file, text).unwrap();
    let began = Instant::now();
    let o = osvm(&state).args(["up", "-d"]).arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(1800);
    let all_up = loop {
        if up_count(&state) == n {
            break began.elapsed();
        }
        assert!(Instant::now() < deadline, "not all {n} servers up");
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(500));
    let (rss_after, avail_after) = (rss_kib(daemon.id()), available_kib());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (first_list, tools, lists, calls, direct_calls) = rt.block_on(async {
        let client = on_socket(&socket).await;
        let t = Instant::now();
        let tools = client
            .peer()
            .list_all_tools()
            .await
            .expect("tools/list")
            .len();
        let first_list = t.elapsed();
        let mut lists = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            client.peer().list_all_tools().await.expect("tools/list");
            lists.push(t.elapsed());
        }
        let mut calls = Vec::new();
        let args = serde_json::json!({ "message": "hi" })
            .as_object()
            .cloned()
            .unwrap();
        for k in 0..1000usize {
            // A spread of servers: a stride coprime with most N.
            let server = (k * 7919) % n;
            let params =
                CallToolRequestParams::new(format!("s{server}.echo")).with_arguments(args.clone());
            let t = Instant::now();
            let r = client.peer().call_tool(params).await.expect("tools/call");
            calls.push(t.elapsed());
            assert_ne!(r.is_error, Some(true));
        }
        let _ = client.cancel().await;
        lists.sort();
        calls.sort();
        // The peer: the same server run directly (not confined) as the client's own child.
        let mut child = tokio::process::Command::new(bin_dir.join("osvm-probe"))
            .args(["mcp", "direct"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let io = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let direct = rmcp::model::ClientConfig::default()
            .serve(io)
            .await
            .expect("initialize");
        let mut direct_calls = Vec::new();
        for _ in 0..1000 {
            let params = CallToolRequestParams::new("echo").with_arguments(args.clone());
            let t = Instant::now();
            direct.peer().call_tool(params).await.expect("tools/call");
            direct_calls.push(t.elapsed());
        }
        let _ = direct.cancel().await;
        direct_calls.sort();
        (first_list, tools, lists, calls, direct_calls)
    });

    let began_down = Instant::now();
    let o = osvm(&state).arg("down").arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    while up_count(&state) > 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let down = began_down.elapsed();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&state);

    println!(
        "\nMCP density: {n} MCP servers (`osvm-probe mcp`, one tool each, 16M, 4 pids, each \
         confined) behind one gateway:\n"
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| `osvm up -d` until the gateway has all {n} up | {:.1} s ({:.1} ms per server) |",
        all_up.as_secs_f64(),
        ms(all_up) / n as f64
    );
    println!(
        "| daemon RSS before / after | {:.1} / {:.1} MiB ({:.0} KiB per server) |",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        rss_after.saturating_sub(rss_before) as f64 / n as f64
    );
    println!(
        "| host memory per server (MemAvailable drop / N) | {:.2} MiB |",
        avail_before.saturating_sub(avail_after) as f64 / 1024.0 / n as f64
    );
    println!(
        "| first `tools/list` ({tools} tools) | {:.1} ms |",
        ms(first_list)
    );
    println!(
        "| `tools/list` p50 / p99, 20 sequential | {:.1} / {:.1} ms |",
        pct(&lists, 0.5),
        pct(&lists, 0.99)
    );
    println!(
        "| `tools/call` p50 / p99, 1,000 sequential over the servers | {:.3} / {:.3} ms |",
        pct(&calls, 0.5),
        pct(&calls, 0.99)
    );
    println!(
        "| the peer: `tools/call` p50 / p99 of the same server run directly, 1,000 sequential | {:.3} / {:.3} ms |",
        pct(&direct_calls, 0.5),
        pct(&direct_calls, 0.99)
    );
    println!(
        "| `osvm down` until none is up | {:.1} s |",
        down.as_secs_f64()
    );
}
