//! microVM start-up, memory and vsock latency, side by side with the floor: a plain QEMU boot of
//! the same kernel with a bare busybox initramfs (no agent, no sandbox, no vsock, no modules).
//!
//! Run with `cargo bench -p osvm --bench microvm` as root, after `cargo build --release -p
//! osvm-agent --target x86_64-unknown-linux-gnu` with `RUSTFLAGS="-C target-feature=+crt-static"`
//! (the guest agent). The guest kernel is fetched once into cargo's target tmp directory (shared
//! with the tests). Rounds are interleaved (floor, osvm, floor, osvm, ...) so drift on the
//! machine affects both alike. Prints Markdown tables; docs/benchmarks.md keeps one.
//!
//! `OSVM_BENCH_RUNS` sets the rounds (default 5), `OSVM_BENCH_RTT` the round trips per VM for
//! the latency table (default 2000).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use osvm_agent::proto::{Request, Response};
use osvm_core::{Instance, LaunchSpec};
use osvm_microvm::image::CpioWriter;
use osvm_microvm::{MicroVmConfig, MicroVmRuntime};
use osvm_sandbox::{SandboxConfig, SandboxRuntime};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    pct(&s, 0.5)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The floor's initramfs: static busybox as `/init`'s shell, which says READY on the console
/// and powers off.
fn floor_initrd(dir: &Path) -> PathBuf {
    let path = dir.join("floor.cpio");
    let mut w = CpioWriter::new(std::fs::File::create(&path).unwrap());
    let busybox = std::fs::read("/bin/busybox").unwrap();
    w.entry("bin", 1, 0o040755, &[]).unwrap();
    w.entry("bin/busybox", 2, 0o100755, &busybox).unwrap();
    w.entry("bin/sh", 3, 0o120777, b"busybox").unwrap();
    w.entry("dev", 4, 0o040755, &[]).unwrap();
    w.entry(
        "init",
        5,
        0o100755,
        b"#!/bin/sh\n/bin/busybox echo READY\n/bin/busybox poweroff -f\n",
    )
    .unwrap();
    w.finish().unwrap();
    path
}

/// One plain QEMU boot to the floor's READY line; (time to READY, QEMU's RSS then).
fn floor_boot(kernel: &Path, initrd: &Path, tsc_khz: u64) -> (Duration, u64) {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,pit=on,pic=on,rtc=on,memory-backend=mem",
            "-accel",
            "tcg,tb-size=64",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "256M",
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz={tsc_khz}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        match lines.next() {
            Some(Ok(line)) if line.trim() == "READY" => break start.elapsed(),
            Some(_) => {}
            None => panic!("the floor VM ended without READY"),
        }
    };
    let rss = rss_of(pid);
    for _ in lines {}
    child.wait().unwrap();
    (ready, rss)
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn http_ok(s: UnixStream) -> bool {
    let mut s = s;
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.") && out.contains(" 200 ")
}

/// Round trips of 64 bytes on one stream, echoed by the other side.
fn round_trips(s: &mut (impl Read + Write), n: usize) -> Vec<Duration> {
    let msg = [0x5au8; 64];
    let mut back = [0u8; 64];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        out.push(t.elapsed());
    }
    out
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP microvm bench: needs root");
        return;
    }
    let runs: usize = std::env::var("OSVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rtts: usize = std::env::var("OSVM_BENCH_RTT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (kernel, state, www) = support::microvm_state("microvm", None);

    let mut sandbox = SandboxConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_osvm")));
    sandbox.state_dir = state.clone();
    let sandbox = Arc::new(SandboxRuntime::new(sandbox));
    let vms = MicroVmRuntime::new(sandbox, MicroVmConfig::new(state.clone()));
    if let Some(why) = vms.unavailable_reason() {
        println!("SKIP microvm bench: {why}");
        return;
    }
    let (accel, _) =
        osvm_guest::host::resolve_accel(osvm_core::AccelChoice::Auto, vms.kvm()).unwrap();
    let (tsc_khz, _) = osvm_guest::host::tsc_khz().unwrap();
    let floor_img = floor_initrd(&state);

    let mut spec = LaunchSpec::new(
        "bench",
        "/bin/sh",
        vec![
            "-c".into(),
            format!(
                "busybox nc -ll -p 7000 -e /bin/cat & exec busybox httpd -f -p 8080 -h {}",
                www.display()
            ),
        ],
    );
    spec.resources.memory_bytes = Some(256 << 20);
    spec.resources.cpus = Some(2.0);
    spec.runtime = osvm_core::RuntimeSpec::MicroVm {
        microvm: osvm_core::VmOptions {
            include: vec![www.clone()],
            ..Default::default()
        },
    };
    // Build the image once outside the timed runs (a first start builds it, later ones find it).
    let image = vms.image_for(&spec, &kernel).unwrap();

    let mut floor = Vec::new();
    let mut floor_rss = Vec::new();
    let (mut ready, mut boot, mut http) = (Vec::new(), Vec::new(), Vec::new());
    let (mut mem_vmm, mut mem_backend) = (Vec::new(), Vec::new());
    let (mut control, mut stream_rtt) = (Vec::new(), Vec::new());
    for round in 0..runs {
        let (t, rss) = floor_boot(&kernel.image, &floor_img, tsc_khz);
        floor.push(t);
        floor_rss.push(rss);

        let id = format!("bench-{round:04x}{:04x}", std::process::id() & 0xffff);
        let start = Instant::now();
        let vm = vms.start_vm(&spec, &id).expect("start the VM");
        ready.push(start.elapsed());
        boot.push(Duration::from_millis(vm.facts().boot_ms));
        loop {
            if let Ok(s) = vm.connect_tcp(8080, Duration::from_secs(5))
                && http_ok(s)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        http.push(start.elapsed());
        mem_vmm.push(vm.stats().map(|s| s.memory_bytes).unwrap_or(0));
        mem_backend.push(backend_memory(&state, &id));

        // Control round trips: a new hybrid connection, Ping, Pong (what health checks pay).
        for _ in 0..50 {
            let t = Instant::now();
            match vm.request(&Request::Ping, Duration::from_secs(5)).unwrap() {
                Response::Pong { .. } => control.push(t.elapsed()),
                other => panic!("{other:?}"),
            }
        }
        // Stream round trips on one forwarded connection to the guest's echo server.
        let mut s = loop {
            if let Ok(s) = vm.connect_tcp(7000, Duration::from_secs(5)) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        round_trips(&mut s, 50);
        stream_rtt.extend(round_trips(&mut s, rtts));
        drop(s);
        vm.stop(Duration::from_secs(5)).unwrap();
        eprintln!(
            "round {}: floor {:.0} ms, osvm ready {:.0} ms, http {:.0} ms",
            round + 1,
            ms(floor[round]),
            ms(ready[round]),
            ms(http[round])
        );
    }

    // The peer for the latency table: a unix socket pair echoing in a thread.
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while b.read_exact(&mut buf).is_ok() {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    round_trips(&mut a, 50);
    let unix = round_trips(&mut a, rtts);
    drop(a);
    let _ = echo.join();

    let fl = median(&floor);
    println!(
        "\nmicroVM start-up, accelerator {} ({} rounds, 2 vCPUs, 256 MiB, kernel {}, image {:.1} MiB)\n",
        accel.as_str(),
        runs,
        kernel.release,
        mib(image.size)
    );
    println!("| | median | min | max | vs floor |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, v: &[Duration]| {
        let mut s = v.to_vec();
        s.sort();
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {:.0} ms | {:.2}x |",
            ms(pct(&s, 0.5)),
            ms(s[0]),
            ms(s[s.len() - 1]),
            ms(pct(&s, 0.5)) / ms(fl)
        );
    };
    row(
        "floor: plain QEMU, busybox initramfs, to its first line",
        &floor,
    );
    row("osvm: QEMU spawn to the agent's hello", &boot);
    row("osvm: start to agent ready (workload started)", &ready);
    row("osvm: start to first HTTP response (over vsock)", &http);
    let med = |v: &[u64]| {
        let mut s = v.to_vec();
        s.sort();
        s[s.len() / 2]
    };
    println!("\nhost memory per VM (median at first response)\n");
    println!("| | MiB |\n|---|---:|");
    println!(
        "| floor: plain QEMU RSS at its first line | {:.1} |",
        mib(med(&floor_rss))
    );
    println!(
        "| osvm: QEMU's cgroup (RSS + page cache it caused) | {:.1} |",
        mib(med(&mem_vmm))
    );
    println!(
        "| osvm: vsock backend's cgroup | {:.1} |",
        mib(med(&mem_backend))
    );
    println!(
        "| osvm: total | {:.1} |",
        mib(med(&mem_vmm) + med(&mem_backend))
    );
    println!("\nround trips, 64 bytes\n");
    println!("| | p50 | p99 | vs unix socket (p50) |\n|---|---:|---:|---:|");
    let lat = |name: &str, v: &[Duration]| {
        let mut s = v.to_vec();
        s.sort();
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.0}x |",
            pct(&s, 0.5).as_secs_f64() * 1e6,
            pct(&s, 0.99).as_secs_f64() * 1e6,
            pct(&s, 0.5).as_secs_f64() / median(&unix).as_secs_f64()
        );
    };
    lat("unix socket pair (host, echo thread)", &unix);
    lat(
        "vsock stream: host -> backend -> guest agent -> guest TCP echo",
        &stream_rtt,
    );
    lat(
        "vsock control request: connect + CONNECT/OK + ping/pong",
        &control,
    );
    data_disk(&vms, &state, runs.min(3));
    let _ = std::fs::remove_dir_all(&state);
}

/// The guest's `/data` (the component's ext4 image on a virtio-blk disk) against the host's
/// own file system, with `osvm-probe throughput` (256 MiB written and fsynced, then 2,000
/// small files) in both; skipped without the probe (`cargo build --release -p osvm-testkit`).
fn data_disk(vms: &MicroVmRuntime, state: &Path, runs: usize) {
    let probe = Path::new(env!("CARGO_BIN_EXE_osvm")).with_file_name("osvm-probe");
    if !probe.exists() {
        println!("\nSKIP data disk table: {} is missing", probe.display());
        return;
    }
    let host_dir = state.join("host-data");
    std::fs::create_dir_all(&host_dir).unwrap();
    let parse = |text: &str| -> (f64, f64) {
        let v: serde_json::Value = text
            .lines()
            .rev()
            .find_map(|l| l.find('{').and_then(|i| serde_json::from_str(&l[i..]).ok()))
            .unwrap_or_else(|| panic!("no result in: {text}"));
        (
            v["write_mib_s"].as_f64().unwrap(),
            v["files_per_s"].as_f64().unwrap(),
        )
    };
    let mut spec = LaunchSpec::new(
        "benchdata",
        probe.display().to_string(),
        vec!["throughput".into(), "/data".into(), "256".into()],
    );
    spec.resources.memory_bytes = Some(256 << 20);
    spec.resources.cpus = Some(2.0);
    spec.resources.disk_bytes = Some(1 << 30);
    spec.runtime = osvm_core::RuntimeSpec::MicroVm {
        microvm: osvm_core::VmOptions::default(),
    };
    // The same workload on a host directory shared into the guest over virtio-fs (a `mounts`
    // entry, `rw`): the other way a VM could keep its data.
    let shared_dir = state.join("shared-data");
    std::fs::create_dir_all(&shared_dir).unwrap();
    let mut shared_spec = spec.clone();
    shared_spec.args = vec!["throughput".into(), "/shared".into(), "256".into()];
    shared_spec.resources.disk_bytes = None;
    shared_spec.runtime = osvm_core::RuntimeSpec::MicroVm {
        microvm: osvm_core::VmOptions {
            no_data_disk: true,
            ..Default::default()
        },
    };
    shared_spec.binds.push(osvm_core::BindMount {
        source: shared_dir.clone(),
        target: "/shared".into(),
        writable: true,
    });
    let mut shared = Vec::new();
    let (mut host, mut guest) = (Vec::new(), Vec::new());
    for round in 0..runs {
        let out = Command::new(&probe)
            .arg("throughput")
            .arg(&host_dir)
            .arg("256")
            .output()
            .unwrap();
        host.push(parse(&String::from_utf8_lossy(&out.stdout)));
        let vm = vms
            .start_vm(&spec, &format!("benchdata-{round}"))
            .expect("start the data VM");
        vm.wait().unwrap();
        let text = std::fs::read_to_string(vm.log_paths().0).unwrap_or_default();
        guest.push(parse(&text));
        match vms.start_vm(&shared_spec, &format!("benchdata-shared{round}")) {
            Ok(vm) => {
                vm.wait().unwrap();
                let text = std::fs::read_to_string(vm.log_paths().0).unwrap_or_default();
                shared.push(parse(&text));
            }
            Err(e) => println!("SKIP the virtio-fs row: {e}"),
        }
    }
    let median = |v: &[(f64, f64)], k: usize| {
        let mut v: Vec<f64> = v.iter().map(|p| if k == 0 { p.0 } else { p.1 }).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\n/data in a microVM vs the host's file system ({runs} rounds, medians)\n");
    println!("| | write 256 MiB + fsync (MiB/s) | 2,000 x 4 KiB files (files/s) |");
    println!("|---|---:|---:|");
    println!(
        "| host directory (no sandbox) | {:.0} | {:.0} |",
        median(&host, 0),
        median(&host, 1)
    );
    println!(
        "| microVM /data (ext4 image, virtio-blk) | {:.0} ({:.2}x) | {:.0} ({:.2}x) |",
        median(&guest, 0),
        median(&guest, 0) / median(&host, 0),
        median(&guest, 1),
        median(&guest, 1) / median(&host, 1)
    );
    if !shared.is_empty() {
        println!(
            "| microVM mount (host directory, virtio-fs) | {:.0} ({:.2}x) | {:.0} ({:.2}x) |",
            median(&shared, 0),
            median(&shared, 0) / median(&host, 0),
            median(&shared, 1),
            median(&shared, 1) / median(&host, 1)
        );
    }
}

/// The memory of the vsock backend's sandbox cgroup, read through the sandbox runtime.
fn backend_memory(state: &Path, id: &str) -> u64 {
    let mut config = SandboxConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_osvm")));
    config.state_dir = state.to_path_buf();
    let rt = SandboxRuntime::new(config);
    match rt.adopt(&format!("{id}-vsock")) {
        Ok(osvm_sandbox::Adopted::Running(inst)) => inst.stats().map_or(0, |s| s.memory_bytes),
        _ => 0,
    }
}
