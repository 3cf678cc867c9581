//! `tools/call` through osvm's MCP gateway vs the same client talking to the same server
//! directly over stdio, side by side in one run; then the gateway's memory with 50 servers.
//!
//! Run with `cargo bench -p osvm --bench mcp` as root (the daemon confines the servers). The
//! client is rmcp (the official Rust SDK) in both cases; the server is the reference
//! `everything` server (npm, Node.js), `echo` tool. Direct: the client spawns the server and
//! speaks stdio to it. Gateway: the client spawns `osvm mcp serve --as bench` and speaks stdio
//! to that, which bridges to the daemon's gateway, which calls the server (confined as a
//! component) over its stdio, checking policy, rate and writing the audit log on the way.
//!
//! `OSVM_BENCH_CALLS` sets the calls per case (default 2000).

mod support;

use std::path::PathBuf;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{apply, measure, on_socket, osvm, rss_kib, start_daemon, tear_down, wait_up};

use rmcp::RoleClient;
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ClientRequest, Implementation,
    PingRequest,
};
use rmcp::service::RunningService;

const EVERYTHING: &str = "@modelcontextprotocol/server-everything@2026.8.31";
/// The Python SDK the tests install (what the venv holds).
const PYTHON_SDK: &str = "2.3.0";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn connect(mut cmd: tokio::process::Command) -> RunningService<RoleClient, ClientConfig> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let (out, inp) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    // The child lives as long as the session's transport; it is killed when dropped.
    std::mem::forget(child);
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("bench", "1"),
    )
    .serve((out, inp))
    .await
    .expect("initialize")
}

/// Sequential `ping`s: the transport alone (through the gateway: the bridge and the daemon,
/// which answers without reaching a server).
async fn pings(client: &RunningService<RoleClient, ClientConfig>, n: usize) -> Vec<Duration> {
    let ping = || {
        client
            .peer()
            .send_request(ClientRequest::PingRequest(PingRequest::default()))
    };
    for _ in 0..50 {
        ping().await.expect("ping");
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        ping().await.expect("ping");
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP mcp bench: needs root");
        return;
    }
    let calls: usize = std::env::var("OSVM_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let servers = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mcp-bench-servers");
    let index = servers.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if !index.exists() {
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&servers)
            .arg(EVERYTHING)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("SKIP mcp bench: npm install {EVERYTHING} failed");
            return;
        }
    }
    let state = std::env::temp_dir().join(format!("osvm-bench-mcp-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let fake = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let nm = servers.join("node_modules");
    let probe = Some(
        std::path::Path::new(env!("CARGO_BIN_EXE_osvm"))
            .parent()
            .unwrap()
            .join("osvm-probe"),
    )
    .filter(|p| p.exists());
    // The smallest server (two syscalls a call), confined like the other: what the gateway
    // adds, apart from what confinement costs a busy server.
    let probe_component = probe
        .as_ref()
        .map(|p| {
            format!(
                "\n[[component]]\nname = \"probe\"\ntype = {{ kind = \"mcp_server\", name = \"probe\" }}\n\
                 command = \"/probe/osvm-probe\"\nargs = [\"mcp\", \"probe\"]\n\
                 mounts = [{{ source = \"{}\", target = \"/probe\" }}]\n",
                p.parent().unwrap().display()
            )
        })
        .unwrap_or_default();
    let stack = state.join("bench.toml");
    std::fs::write(
        &stack,
        format!(
            r#"[stack]
name = "bench"
mcp = {{ rate = 1000000, burst = 1000000 }}

[[component]]
name = "everything"
type = {{ kind = "mcp_server", name = "everything" }}
command = "/usr/bin/node"
args = ["/opt/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"]
mounts = [{{ source = "{}", target = "/opt/mcp/node_modules" }}]

{probe_component}
[[mcp_policy]]
allow = {{ clients = ["bench"], tools = ["*"] }}
"#,
            nm.display()
        ),
    )
    .unwrap();
    let daemon = start_daemon(&state);
    apply(&state, &stack);
    let first = 1 + usize::from(probe.is_some());
    wait_up(&state, first);
    let rss_one = rss_kib(daemon.id());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (rows, pings_direct, pings_gw) = rt.block_on(async {
        let mut node = tokio::process::Command::new("/usr/bin/node");
        node.arg(&index).arg("stdio");
        let direct_client = connect(node).await;
        let mut bridge = tokio::process::Command::new(osvm());
        bridge
            .arg("--state-dir")
            .arg(&state)
            .args(["mcp", "serve", "--as", "bench"]);
        let gw_client = connect(bridge).await;
        let sock_client = on_socket(&state.join("osvm.sock")).await;
        // The floor: the same server behind a process that only copies bytes.
        let mut relay_client = None;
        let mut probe_client = None;
        if let Some(probe) = &probe {
            let mut relay = tokio::process::Command::new(probe);
            relay
                .arg("relay")
                .arg("/usr/bin/node")
                .arg(&index)
                .arg("stdio");
            relay_client = Some(connect(relay).await);
            let mut direct = tokio::process::Command::new(probe);
            direct.args(["mcp", "probe"]);
            probe_client = Some(connect(direct).await);
        }
        // Interleaved halves, so drift affects all alike.
        let mut clients = vec![
            (&direct_client, "echo"),
            (&gw_client, "everything.echo"),
            (&sock_client, "everything.echo"),
        ];
        if let (Some(relay), Some(probe)) = (&relay_client, &probe_client) {
            clients.extend([
                (relay, "echo"),
                (probe, "echo"),
                (&gw_client, "probe.echo"),
                (&sock_client, "probe.echo"),
            ]);
        }
        let mut rows: Vec<(Vec<Duration>, f64)> = vec![(Vec::new(), 0.0); clients.len()];
        for _ in 0..2 {
            for (row, &(client, tool)) in rows.iter_mut().zip(&clients) {
                let (lat, rate) = measure(client, tool, calls / 2).await;
                row.0.extend(lat);
                row.1 += rate / 2.0;
            }
        }
        for row in &mut rows {
            row.0.sort();
        }
        let pings_direct = pings(&direct_client, calls / 2).await;
        let pings_gw = pings(&gw_client, calls / 2).await;
        for c in [direct_client, gw_client, sock_client]
            .into_iter()
            .chain(relay_client)
            .chain(probe_client)
        {
            let _ = c.cancel().await;
        }
        (rows, pings_direct, pings_gw)
    });
    // The same comparison from the official Python SDK (the venv the tests make), if present.
    let python = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mcp-fixtures/venv/bin/python");
    let mut python_rows = Vec::new();
    if python.exists() {
        let script = fake.join("mcp_bench_client.py");
        let node = [
            "/usr/bin/node".to_owned(),
            index.display().to_string(),
            "stdio".into(),
        ];
        let mut pairs = vec![("everything", "echo", "everything.echo", node.to_vec())];
        if let Some(probe) = &probe {
            pairs.push((
                "osvm-probe mcp",
                "echo",
                "probe.echo",
                vec![probe.display().to_string(), "mcp".into(), "probe".into()],
            ));
        }
        for (server, direct_tool, gw_tool, direct_cmd) in pairs {
            let o = Command::new(&python)
                .arg(&script)
                .arg(calls.min(1000).to_string())
                .args([direct_tool, gw_tool, "--"])
                .args(&direct_cmd)
                .arg("--")
                .arg(osvm())
                .arg("--state-dir")
                .arg(&state)
                .args(["mcp", "serve", "--as", "bench"])
                .stderr(Stdio::inherit())
                .output()
                .expect("run python");
            match serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                Ok(v) => python_rows.push((server, v)),
                Err(_) => println!(
                    "python bench client for {server} failed: {}",
                    String::from_utf8_lossy(&o.stdout)
                ),
            }
        }
    } else {
        println!(
            "(no Python MCP SDK at {}: `cargo test -p osvm --test mcp` makes it)",
            python.display()
        );
    }
    // The daemon's own share of each call: the audit log's latency, from the gateway receiving
    // the call to its answer (policy, rate, the confined server's round trip, the audit write).
    let mut inside: Vec<f64> = std::fs::read_to_string(state.join("mcp").join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["method"] == "tools/call")
        .filter_map(|v| v["latency_ms"].as_f64())
        .collect();
    inside.sort_by(f64::total_cmp);

    // 50 servers: the gateway's memory with 50 upstream sessions (the small Python fake server,
    // so the host holds 50 of them easily).
    let mut fifty = String::from(
        "[stack]\nname = \"fifty\"\n\n[[mcp_policy]]\nallow = { clients = [\"bench\"], tools = [\"*\"] }\n",
    );
    for i in 0..50 {
        fifty.push_str(&format!(
            "\n[[component]]\nname = \"s{i}\"\ntype = {{ kind = \"mcp_server\", name = \"s{i}\" }}\ncommand = \"/usr/bin/python3\"\nargs = [\"/fixtures/mcp_fake_server.py\"]\nmounts = [{{ source = \"{}\", target = \"/fixtures\" }}]\nresources = {{ memory = \"64M\" }}\n",
            fake.display()
        ));
    }
    let fifty_file = state.join("fifty.toml");
    std::fs::write(&fifty_file, fifty).unwrap();
    apply(&state, &fifty_file);
    wait_up(&state, first + 50);
    // One tools/list across all of them, so every session has been used.
    let o = Command::new(osvm())
        .arg("--state-dir")
        .arg(&state)
        .args(["-o", "json", "mcp", "tools", "--as", "bench"])
        .output()
        .unwrap();
    let listed = serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .ok()
        .and_then(|v| v["tools"].as_array().map(Vec::len))
        .unwrap_or(0);
    let rss_fifty = rss_kib(daemon.id());

    // Floods of large messages: 4 sessions at once, each 3 calls with 3 MiB arguments (the
    // limit is 4 MiB), in rounds; the daemon's RSS after each round (it should level off low).
    let rss_before_floods = rss_kib(daemon.id());
    let rss_floods: Vec<u64> = rt.block_on(async {
        let big = serde_json::json!({ "message": "A".repeat(3 << 20) })
            .as_object()
            .cloned()
            .unwrap();
        let mut after = Vec::new();
        for _ in 0..4 {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let socket = state.join("osvm.sock");
                let big = big.clone();
                tasks.push(tokio::spawn(async move {
                    let client = on_socket(&socket).await;
                    for _ in 0..3 {
                        let params = CallToolRequestParams::new("everything.echo")
                            .with_arguments(big.clone());
                        client.peer().call_tool(params).await.expect("a 3 MiB call");
                    }
                    let _ = client.cancel().await;
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            after.push(rss_kib(daemon.id()));
        }
        after
    });

    tear_down(&state, &[&fifty_file, &stack], daemon);

    println!(
        "\ntools/call `echo` of the reference `everything` server, rmcp client, {calls} calls each\n"
    );
    println!("| | p50 | p99 | calls/s (1 caller) | calls/s (8 callers) |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, v: &[Duration], rate: f64| {
        let total: Duration = v.iter().sum();
        println!(
            "| {name} | {:.3} ms | {:.3} ms | {:.0} | {:.0} |",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            v.len() as f64 / total.as_secs_f64(),
            rate
        );
    };
    let names = [
        "direct over stdio",
        "through the gateway (stdio bridge, daemon, confined server)",
        "through the gateway without the bridge (the client on the daemon's socket)",
        "direct, behind a byte relay (`osvm-probe relay`: any process in the middle)",
        "`osvm-probe mcp` (a trivial server), direct over stdio",
        "`osvm-probe mcp` through the gateway (stdio bridge, daemon, confined server)",
        "`osvm-probe mcp` through the gateway without the bridge",
    ];
    for (name, (v, rate)) in names.iter().zip(&rows) {
        row(name, v, *rate);
    }
    if probe.is_none() {
        println!("(the byte-relay row needs osvm-probe: cargo build --release -p osvm-testkit)");
    }
    let (direct, gw) = (&rows[0].0, &rows[1].0);
    println!(
        "\nratio p50 {:.2}x (+{:.3} ms), p99 {:.2}x, calls/s {:.2}x (1 caller), {:.2}x (8 callers)",
        ms(pct(gw, 0.5)) / ms(pct(direct, 0.5)),
        ms(pct(gw, 0.5)) - ms(pct(direct, 0.5)),
        ms(pct(gw, 0.99)) / ms(pct(direct, 0.99)),
        direct.iter().sum::<Duration>().as_secs_f64() / gw.iter().sum::<Duration>().as_secs_f64(),
        rows[1].1 / rows[0].1
    );
    let versus = |what: &str, base: usize, other: usize| {
        let ((b, b_rate), (o, o_rate)) = (&rows[base], &rows[other]);
        println!(
            "{what}: p50 +{:.3} ms ({:.2}x), calls/s {:.2}x (1 caller), {:.2}x (8 callers)",
            ms(pct(o, 0.5)) - ms(pct(b, 0.5)),
            ms(pct(o, 0.5)) / ms(pct(b, 0.5)),
            b.iter().sum::<Duration>().as_secs_f64() / o.iter().sum::<Duration>().as_secs_f64(),
            o_rate / b_rate
        );
    };
    if rows.len() > 3 {
        versus("everything, a byte relay in the middle", 0, 3);
        versus("trivial server, through the gateway (bridge)", 4, 5);
        versus("trivial server, through the gateway (socket)", 4, 6);
    }
    if !python_rows.is_empty() {
        println!(
            "\nthe same from the official Python SDK (mcp {PYTHON_SDK}), {} calls each, interleaved in blocks of 100\n",
            calls.min(1000)
        );
        println!("| server | | p50 | p99 | calls/s (1 caller) | calls/s (8 callers) |");
        println!("|---|---|---:|---:|---:|---:|");
        for (server, v) in &python_rows {
            for (name, label) in [
                ("direct", "direct over stdio"),
                ("gateway", "through the gateway (bridge)"),
            ] {
                let r = &v[name];
                println!(
                    "| {server} | {label} | {:.3} ms | {:.3} ms | {:.0} | {:.0} |",
                    r["p50_ms"].as_f64().unwrap_or(0.0),
                    r["p99_ms"].as_f64().unwrap_or(0.0),
                    r["calls_per_s_1"].as_f64().unwrap_or(0.0),
                    r["calls_per_s_8"].as_f64().unwrap_or(0.0),
                );
            }
            let f = |k: &str, n: &str| v[n][k].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {server} | gateway vs direct | +{:.3} ms | | {:.2}x | {:.2}x |",
                f("p50_ms", "gateway") - f("p50_ms", "direct"),
                f("calls_per_s_1", "gateway") / f("calls_per_s_1", "direct"),
                f("calls_per_s_8", "gateway") / f("calls_per_s_8", "direct"),
            );
        }
    }
    println!(
        "ping p50 (the transport alone): direct {:.3} ms, answered by the gateway {:.3} ms",
        ms(pct(&pings_direct, 0.5)),
        ms(pct(&pings_gw, 0.5))
    );
    if !inside.is_empty() {
        println!(
            "inside the daemon (audit latency of tools/call, all {} calls): p50 {:.3} ms",
            inside.len(),
            inside[inside.len() / 2]
        );
    }
    println!(
        "\ndaemon RSS before floods of 3 MiB calls {:.1} MiB, after each of 4 rounds (4 sessions x 3 calls): {}",
        rss_before_floods as f64 / 1024.0,
        rss_floods
            .iter()
            .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "\ndaemon RSS: {:.1} MiB with {first} MCP server(s), {:.1} MiB with {} ({} tools listed); {:.0} KiB per added server",
        rss_one as f64 / 1024.0,
        rss_fifty as f64 / 1024.0,
        first + 50,
        listed,
        (rss_fifty.saturating_sub(rss_one)) as f64 / 50.0
    );
}
