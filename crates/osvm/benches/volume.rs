//! Storage behind `/data`: what a component's ext4 volume (an image on a loop device, id-mapped)
//! costs against a plain host directory bound `rw` (what `/data` was before volumes) and the
//! scratch tmpfs of unnamed runs, side by side in one run.
//!
//! Run with `cargo bench -p osvm --bench volume` as root. Each round runs `osvm-probe throughput`
//! once per storage, interleaved: 256 MiB written in 1 MiB blocks and fsync'ed, then 2,000
//! files of 4 KiB and an fsync of their directory. Prints a Markdown table of medians and the
//! ratio to the host directory. `OSVM_BENCH_RUNS` sets the rounds (default 5).

use std::path::Path;
use std::process::{Command, Stdio};

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP volume bench: osvm's sandbox needs root (cgroups, uid range, loop devices)");
        return;
    }
    if let Some(reason) = osvm_sandbox::volume::unavailable_reason() {
        println!("SKIP volume bench: {reason}");
        return;
    }
    let runs: usize = std::env::var("OSVM_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let osvm = env!("CARGO_BIN_EXE_osvm");
    let bin_dir = Path::new(osvm).parent().unwrap().to_path_buf();
    let probe = bin_dir.join("osvm-probe");
    if !probe.exists() {
        println!(
            "SKIP volume bench: {} is missing (cargo build -p osvm-testkit)",
            probe.display()
        );
        return;
    }
    // On the file system the state (and so the volume's image) lives on.
    let state = std::env::temp_dir().join(format!("osvm-bench-volume-{}", std::process::id()));
    let host_dir = std::env::temp_dir().join(format!("osvm-bench-hostdir-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&host_dir).unwrap();

    let probe_bind = format!("{}:/probe", bin_dir.display());
    let host_bind = format!("{}:/hostdir:rw", host_dir.display());
    let kinds: [(&str, Vec<&str>, &str); 3] = [
        (
            "/data volume (ext4 image, loop, id-mapped)",
            vec!["--name", "vol", "--disk", "2G"],
            "/data",
        ),
        (
            "host directory, rw bind (id-mapped)",
            vec!["--bind", &host_bind],
            "/hostdir",
        ),
        (
            "scratch /data (tmpfs, unnamed run)",
            vec!["--memory", "1G", "--disk", "1G"],
            "/data",
        ),
    ];
    let mut write: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut files: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for _ in 0..runs {
        for (k, (_, flags, dir)) in kinds.iter().enumerate() {
            let out = Command::new(osvm)
                .arg("--state-dir")
                .arg(&state)
                .args(["run", "-q", "--rm", "--bind", &probe_bind])
                .args(flags)
                .args(["--", "/probe/osvm-probe", "throughput", dir, "256"])
                .stdin(Stdio::null())
                .output()
                .expect("run osvm");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
            assert_eq!(v["ok"], true, "{v}");
            write[k].push(v["write_mib_s"].as_f64().unwrap());
            files[k].push(v["files_per_s"].as_f64().unwrap());
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (base_w, base_f) = (median(&write[1]), median(&files[1]));
    println!("\n/data storage, {runs} interleaved rounds, medians:\n");
    println!(
        "| storage | write 256 MiB + fsync (MiB/s) | / host dir | 2,000 x 4 KiB files (files/s) | / host dir |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (k, (name, _, _)) in kinds.iter().enumerate() {
        let (w, f) = (median(&write[k]), median(&files[k]));
        println!(
            "| {name} | {w:.0} | {:.2} | {f:.0} | {:.2} |",
            w / base_w,
            f / base_f
        );
    }
    let image = state.join("data/run/vol.img");
    if let Ok(m) = std::fs::metadata(&image) {
        use std::os::unix::fs::MetadataExt;
        println!(
            "\nThe 2 GiB volume's image takes {:.1} MiB of the host's disk after the runs.",
            (m.blocks() * 512) as f64 / (1 << 20) as f64
        );
    }
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&host_dir);
}
