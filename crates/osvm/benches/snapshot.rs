//! microVM snapshot start against a cold boot, side by side: the same component started cold
//! over vsock (the default), cold over the serial link, and restored from a snapshot
//! (`microvm = { snapshot = true }`), rounds interleaved so drift on the machine affects all
//! three alike.
//!
//! Run as root with `cargo bench -p osvm --bench snapshot`, after building the static guest
//! agent (`RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p osvm-agent
//! --target x86_64-unknown-linux-gnu`). The guest kernel is shared with the tests (fetched once
//! into cargo's target tmp directory; it must have `virtio_console.ko`: `osvm kernel fetch
//! --force` stores one). `OSVM_BENCH_RUNS` sets the rounds (default 5). Prints Markdown tables.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use osvm_core::{Instance, LaunchSpec, LinkChoice};
use osvm_microvm::{MicroVmConfig, MicroVmRuntime};
use osvm_sandbox::{SandboxConfig, SandboxRuntime};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median<T: Copy + PartialOrd>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("ordered"));
    s[s.len() / 2]
}

/// `MemTotal - MemAvailable` in bytes.
fn host_in_use() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

struct Sample {
    hello: Duration,
    ready: Duration,
    http: Duration,
    qemu_mib: f64,
    host_mib: f64,
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP snapshot bench: needs root");
        return;
    }
    let runs: usize = std::env::var("OSVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (kernel, state, www) = support::microvm_state("snapshot", Some("virtio_console.ko"));
    let mut sandbox = SandboxConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_osvm")));
    sandbox.state_dir = state.clone();
    let vms = MicroVmRuntime::new(
        Arc::new(SandboxRuntime::new(sandbox)),
        MicroVmConfig::new(state.clone()),
    );
    if let Some(why) = vms.unavailable_reason() {
        println!("SKIP snapshot bench: {why}");
        return;
    }
    let spec = |link: LinkChoice, snapshot: bool| {
        let mut spec = LaunchSpec::new(
            "bench",
            "/bin/busybox",
            vec![
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                "8080".into(),
                "-h".into(),
                www.display().to_string(),
            ],
        );
        spec.resources.memory_bytes = Some(256 << 20);
        spec.resources.cpus = Some(1.0);
        spec.runtime = osvm_core::RuntimeSpec::MicroVm {
            microvm: osvm_core::VmOptions {
                include: vec![www.clone()],
                no_data_disk: true,
                link,
                snapshot,
                ..Default::default()
            },
        };
        spec
    };
    let kinds = [
        (
            "cold boot, vsock link (the default)",
            spec(LinkChoice::Vsock, false),
        ),
        ("cold boot, serial link", spec(LinkChoice::Serial, false)),
        (
            "restored from a snapshot (serial link)",
            spec(LinkChoice::Serial, true),
        ),
    ];
    let image = vms.image_for(&kinds[0].1, &kernel).unwrap();
    // The snapshot is made once, outside the timed rounds (its first start: a cold boot and a
    // save, reported apart).
    let made = Instant::now();
    let first = vms
        .start_vm(&kinds[2].1, "bench-make")
        .expect("make the snapshot");
    let make_ms = ms(made.elapsed());
    first.stop(Duration::from_secs(5)).unwrap();

    let mut samples: Vec<Vec<Sample>> = (0..kinds.len()).map(|_| Vec::new()).collect();
    for round in 0..runs {
        for (k, (name, spec)) in kinds.iter().enumerate() {
            let id = format!("bench-{round}{k}{:04x}", std::process::id() & 0xffff);
            let before = host_in_use();
            let start = Instant::now();
            let vm = vms.start_vm(spec, &id).expect("start");
            let ready = start.elapsed();
            loop {
                if let Ok(s) = vm.connect_tcp(8080, Duration::from_secs(5)) {
                    use std::io::{Read, Write};
                    let mut s = s;
                    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                    let mut out = String::new();
                    let _ = s.read_to_string(&mut out);
                    if out.contains("200") {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let http = start.elapsed();
            let qemu = vm.stats().map(|s| s.memory_bytes).unwrap_or(0) as f64 / 1048576.0;
            let host = host_in_use().saturating_sub(before) as f64 / 1048576.0;
            samples[k].push(Sample {
                hello: Duration::from_millis(vm.facts().boot_ms),
                ready,
                http,
                qemu_mib: qemu,
                host_mib: host,
            });
            vm.stop(Duration::from_secs(5)).unwrap();
            eprintln!(
                "round {}: {name}: ready {:.0} ms, http {:.0} ms",
                round + 1,
                ms(ready),
                ms(http)
            );
        }
    }
    println!(
        "\nmicroVM snapshot start ({runs} rounds interleaved, 1 vCPU, 256 MiB, kernel {}, image \
         {:.1} MiB; the snapshot was made once beforehand in {make_ms:.0} ms)\n",
        kernel.release,
        image.size as f64 / 1048576.0
    );
    println!(
        "| start | QEMU spawn to agent hello (ms) | start to ready (ms) | start to first HTTP \
         (ms) | ready / cold vsock | QEMU cgroup (MiB) | host memory in use (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let cold = median(&samples[0].iter().map(|s| ms(s.ready)).collect::<Vec<_>>());
    for (k, (name, _)) in kinds.iter().enumerate() {
        let v = &samples[k];
        let col = |f: &dyn Fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        let ready = col(&|s| ms(s.ready));
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} |",
            col(&|s| ms(s.hello)),
            ready,
            col(&|s| ms(s.http)),
            ready / cold,
            col(&|s| s.qemu_mib),
            col(&|s| s.host_mib),
        );
    }
    let _ = std::fs::remove_dir_all(&state);
}
