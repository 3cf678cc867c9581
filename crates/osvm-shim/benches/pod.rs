//! Pod start through containerd's CRI, as kubelet starts a pod: RunPodSandbox (CNI's network
//! namespace and address, the pause container), then CreateContainer and StartContainer of one
//! container (`sleep`), until StartContainer returns (the container runs). osvm's shim
//! (`runtime_handler = "osvm"`) and runc (`"runc"`, the natural peer), side by side,
//! interleaved, same image, snapshotter and CNI bridge. Teardown (StopPodSandbox,
//! RemovePodSandbox) is not timed.
//!
//! `cargo bench -p osvm-shim --bench pod` as root, with containerd, runc, umoci, skopeo, the
//! CNI plugins and protoc. `OSVM_BENCH_RUNS` sets the runs per runtime (default 20).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::cri::Cri;

fn main() {
    let missing = support::missing()
        .map(|(_, why)| why)
        .or_else(support::cri::missing);
    if let Some(why) = missing {
        println!("SKIP pod bench: {why}");
        return;
    }
    let runs: usize = std::env::var("OSVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let c = support::Containerd::start_cri("pod-bench");
    let mut cri = Cri::connect(&c);
    let handlers = [
        ("osvm", "osvm (containerd-shim-osvm-v1)"),
        ("runc", "runc (containerd-shim-runc-v2)"),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); handlers.len()];
    let one = |cri: &mut Cri, handler: &str, name: &str| -> Duration {
        let t = Instant::now();
        let pod = cri
            .run_pod(name, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", c.log()));
        cri.run(&pod, "app", &["sleep", "600"], &[])
            .unwrap_or_else(|e| panic!("start a container ({handler}): {e}"));
        let took = t.elapsed();
        cri.stop_pod(&pod);
        cri.remove_pod(&pod);
        took
    };
    // Warm-up: the snapshots are unpacked, the shims' binaries in the page cache.
    for (handler, _) in handlers {
        one(&mut cri, handler, &format!("warm-{handler}"));
    }
    for i in 0..runs {
        for (n, (handler, _)) in handlers.iter().enumerate() {
            times[n].push(one(&mut cri, handler, &format!("b-{handler}-{i}")));
        }
    }
    println!(
        "\nPod start through containerd 1.6's CRI (RunPodSandbox with a CNI bridge, then \
         CreateContainer + StartContainer of one container), {runs} runs each, interleaved\n"
    );
    support::print_runs(&handlers, &mut times, "osvm vs runc");
}
