//! Density: start N confined idle components through `osvm up -d` on one daemon; report the
//! time until all are `running`, the daemon's and the host's memory per component, and the
//! latency of the `ps` API and of the `osvm ps` command.
//!
//! Run as root: `OSVM_DENSITY=200 cargo bench -p osvm --bench density` (default 200). Prints a
//! Markdown table; docs/benchmarks.md keeps one.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The host's memory in use (MemTotal - MemAvailable), KiB.
fn host_used_kib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

fn get(socket: &Path, path: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: osvm\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP density bench: the sandbox needs root");
        return;
    }
    let n: usize = std::env::var("OSVM_DENSITY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let osvm = env!("CARGO_BIN_EXE_osvm");
    let state = std::env::temp_dir().join(format!("osvm-density-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let socket = state.join("osvm.sock");
    let mut daemon = Command::new(osvm)
        .arg("--state-dir")
        .arg(&state)
        .arg("daemon")
        .spawn()
        .unwrap();
    while UnixStream::connect(&socket).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_kib(daemon.id());

    let mut text = String::from("[stack]\nname = \"density\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[[component]]\nname = \"c{i}\"\ncommand = \"sleep\"\nargs = [\"3600\"]\nresources = {{ memory = \"16M\", pids = 4 }}\n"
        ));
    }
    let file = state.join("density.toml");
    std::fs::write(&file, text).unwrap();
    let host_before = host_used_kib();
    let began = Instant::now();
    let ok = Command::new(osvm)
        .arg("--state-dir")
        .arg(&state)
        .args(["up", "-d"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(ok.success());
    let all_running = loop {
        let (_, body) = get(&socket, "/v1/stats");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["running"].as_u64() == Some(n as u64) {
            break began.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib(daemon.id());
    let host_after = host_used_kib();

    let mut lat = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let (status, _) = get(&socket, "/v1/components");
        lat.push(t.elapsed());
        assert_eq!(status, 200);
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    // `osvm ps` as a user runs it: the command's whole life (start, API call, table).
    let mut ps = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let out = Command::new(osvm)
            .arg("--state-dir")
            .arg(&state)
            .arg("ps")
            .output()
            .unwrap();
        ps.push(t.elapsed());
        assert!(out.status.success());
        assert!(
            out.stdout.split(|b| *b == b'\n').count() > n,
            "ps lists every component"
        );
    }
    ps.sort();
    let ps_ms = |q: f64| ps[((ps.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;

    let ok = Command::new(osvm)
        .arg("--state-dir")
        .arg(&state)
        .arg("down")
        .arg(&file)
        .status()
        .unwrap();
    assert!(ok.success());
    loop {
        let (_, body) = get(&socket, "/v1/components");
        if body.trim() == "[]" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&state);

    println!(
        "\nDensity: {n} idle confined components (`sleep 3600`, 16M, 4 pids) through `osvm up -d`:\n"
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| time until all `running` | {:.2} s |",
        all_running.as_secs_f64()
    );
    println!(
        "| per component | {:.1} ms |",
        all_running.as_secs_f64() * 1000.0 / n as f64
    );
    println!(
        "| daemon RSS before / after | {} / {} KiB |",
        rss_before, rss_after
    );
    println!(
        "| daemon memory per component | {:.1} KiB |",
        (rss_after.saturating_sub(rss_before)) as f64 / n as f64
    );
    println!(
        "| host memory in use per component (MemTotal - MemAvailable) | {:.0} KiB |",
        host_after.saturating_sub(host_before) as f64 / n as f64
    );
    println!(
        "| `GET /v1/components` ({n} entries) p50 / p99, 500 sequential | {:.2} / {:.2} ms |",
        p(0.5),
        p(0.99)
    );
    println!(
        "| `osvm ps` ({n} rows) p50 / p90, 30 runs | {:.2} / {:.2} ms |",
        ps_ms(0.5),
        ps_ms(0.9)
    );
}
