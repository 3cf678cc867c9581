//! An MCP call to a server in a microVM (stdio carried over vsock by the guest agent) vs the
//! same server in a process sandbox (stdio over pipes), side by side in one run, through the
//! same daemon and gateway.
//!
//! Run with `cargo build --release -p osvm-testkit && cargo bench -p osvm --bench mcp_microvm`
//! as root, on a host that can boot microVMs (`osvm doctor`). The server is osvm's test probe
//! (`osvm-probe mcp`, a static Rust binary answering `echo` at once), so the figures are the
//! transports' and not a server's; the client is rmcp on the daemon's socket, as `bench`.
//!
//! `OSVM_BENCH_CALLS` sets the calls per server (default 2000).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use osvm_microvm::kernel::Kernel;
use support::{apply, measure, on_socket, osvm, start_daemon, tear_down, wait_up};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP mcp_microvm bench: needs root");
        return;
    }
    let calls: usize = std::env::var("OSVM_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let probe = osvm().with_file_name("osvm-probe");
    if !probe.exists() {
        println!(
            "SKIP mcp_microvm bench: {} is missing (cargo build --release -p osvm-testkit)",
            probe.display()
        );
        return;
    }
    let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("microvm-kernel");
    std::fs::create_dir_all(&shared).unwrap();
    if Kernel::installed(&shared).is_err()
        && let Err(e) = osvm_microvm::kernel::fetch(&shared, false, &mut |_| {})
    {
        println!("SKIP mcp_microvm bench: no guest kernel: {e}");
        return;
    }
    let state = std::env::temp_dir().join(format!("osvm-bench-mcpvm-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(shared.join("kernels"), state.join("kernels")).unwrap();
    let stack = state.join("bench.toml");
    std::fs::write(
        &stack,
        format!(
            r#"[stack]
name = "mcpvm"
mcp = {{ rate = 1000000, burst = 1000000 }}

[[component]]
name = "proc"
type = {{ kind = "mcp_server", name = "ptool" }}
command = "/probe/osvm-probe"
args = ["mcp", "ptool"]
mounts = [{{ source = "{probe_dir}", target = "/probe" }}]
resources = {{ memory = "128M", cpus = 1 }}

[[component]]
name = "vm"
type = {{ kind = "mcp_server", name = "vtool" }}
runtime = "microvm"
command = "{probe}"
args = ["mcp", "vtool"]
resources = {{ memory = "128M", cpus = 1 }}
microvm = {{ data_disk = false }}

[[mcp_policy]]
allow = {{ clients = ["bench"], tools = ["*"] }}
"#,
            probe = probe.display(),
            probe_dir = probe.parent().unwrap().display()
        ),
    )
    .unwrap();
    let daemon = start_daemon(&state);
    apply(&state, &stack);
    wait_up(&state, 2);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows = rt.block_on(async {
        let client = on_socket(&state.join("osvm.sock")).await;
        // Interleaved halves, so drift affects both alike.
        let mut rows: Vec<(Vec<Duration>, f64)> = vec![(Vec::new(), 0.0); 2];
        for _ in 0..2 {
            for (row, tool) in rows.iter_mut().zip(["ptool.echo", "vtool.echo"]) {
                let (lat, rate) = measure(&client, tool, calls / 2).await;
                row.0.extend(lat);
                row.1 += rate / 2.0;
            }
        }
        for row in &mut rows {
            row.0.sort();
        }
        let _ = client.cancel().await;
        rows
    });
    let inside = inside_daemon(&state);

    tear_down(&state, &[&stack], daemon);

    println!(
        "\ntools/call `echo` of osvm-probe through the gateway, rmcp client on the daemon's socket, {calls} calls each\n"
    );
    println!(
        "| server runs in | p50 | p99 | calls/s (1 caller) | calls/s (8 callers) | inside the daemon p50 (all calls, the 8-caller rounds too) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let names = [
        ("a process sandbox (stdio over pipes)", "ptool"),
        (
            "a microVM (stdio over vsock through the guest agent, TCG)",
            "vtool",
        ),
    ];
    for ((name, server), (v, rate)) in names.iter().zip(&rows) {
        let total: Duration = v.iter().sum();
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.0} | {:.0} | {:.3} ms |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            v.len() as f64 / total.as_secs_f64(),
            rate,
            inside.get(*server).copied().unwrap_or(f64::NAN)
        );
    }
    let (proc, vm) = (&rows[0].0, &rows[1].0);
    println!(
        "\nmicroVM vs process: p50 {:.2}x (+{:.3} ms), p99 {:.2}x, calls/s {:.2}x (8 callers)",
        ms(pct(vm, 0.5)) / ms(pct(proc, 0.5)),
        ms(pct(vm, 0.5)) - ms(pct(proc, 0.5)),
        ms(pct(vm, 0.99)) / ms(pct(proc, 0.99)),
        rows[1].1 / rows[0].1
    );
}

/// The median of the audit log's latency of `tools/call` per server: from the gateway
/// receiving a call to its answer (policy, rate, the server's round trip, the audit write).
fn inside_daemon(state: &Path) -> std::collections::BTreeMap<String, f64> {
    let mut by_server: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for v in std::fs::read_to_string(state.join("mcp").join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["method"] == "tools/call")
    {
        if let (Some(server), Some(ms)) = (v["server"].as_str(), v["latency_ms"].as_f64()) {
            by_server.entry(server.to_owned()).or_default().push(ms);
        }
    }
    by_server
        .into_iter()
        .map(|(server, mut v)| {
            v.sort_by(f64::total_cmp);
            (server, v[v.len() / 2])
        })
        .collect()
}
