//! Container start through containerd: `ctr run --rm` of `/bin/true` with osvm's shim and with
//! runc (containerd's default runtime, the natural peer), side by side, interleaved, on the
//! same image and snapshotter (overlayfs, containerd's default, then native), from `ctr`'s start
//! to its exit: containerd's task create, the runtime's start and the process's exit.
//!
//! `cargo bench -p osvm-shim --bench start` as root, with containerd, runc, umoci and skopeo.
//! `OSVM_BENCH_RUNS` sets the runs per runtime (default 30).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Containerd, IMAGE, RUNTIME, missing, ok};

fn main() {
    if let Some((_, why)) = missing() {
        println!("SKIP start bench: {why}");
        return;
    }
    let runs: usize = std::env::var("OSVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let c = Containerd::start("bench");
    let runtimes = [
        (RUNTIME, "osvm (containerd-shim-osvm-v1)"),
        ("io.containerd.runc.v2", "runc (containerd-shim-runc-v2)"),
    ];
    for snapshotter in ["overlayfs", "native"] {
        let run = |runtime: &str, id: String| {
            let mut cmd = c.ctr();
            cmd.args([
                "run",
                "--rm",
                "--snapshotter",
                snapshotter,
                "--runtime",
                runtime,
                IMAGE,
            ])
            .arg(id)
            .arg("/bin/true");
            let t = Instant::now();
            ok(&mut cmd);
            t.elapsed()
        };
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); runtimes.len()];
        // Warm-up: the snapshot is unpacked, both shims' binaries are in the page cache.
        for (n, (runtime, _)) in runtimes.iter().enumerate() {
            run(runtime, format!("warm-{snapshotter}-{n}"));
        }
        for i in 0..runs {
            for (n, (runtime, _)) in runtimes.iter().enumerate() {
                times[n].push(run(runtime, format!("b-{snapshotter}-{n}-{i}")));
            }
        }
        println!(
            "\n`ctr run --rm` of /bin/true through containerd 1.6, {snapshotter} snapshotter, \
             {runs} runs each, interleaved\n"
        );
        support::print_runs(
            &runtimes,
            &mut times,
            &format!("osvm vs runc ({snapshotter})"),
        );
    }
}
