//! Sandbox start-up: time from spawning `osvm run -- /bin/true` to its exit, side by side with
//! bubblewrap and util-linux `unshare` in the same run.
//!
//! Run with `cargo bench -p osvm --bench startup` as root (osvm needs cgroups). Runs are
//! interleaved, each round in a fresh random order, so that drift on the machine and the cold
//! cgroup migration after a tool that makes no cgroup affect every tool alike. Prints a
//! Markdown table of medians, 90th percentiles and ratios to bwrap; docs/benchmarks.md keeps one.
//!
//! `OSVM_BENCH_RUNS` sets the runs per tool (default 30). `OSVM_BENCH_BASELINE=/path/to/osvm`
//! adds a row for another osvm binary (an earlier build), run the same way with its own state
//! directory, so a change is measured before and after in one run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Tool {
    name: &'static str,
    what: &'static str,
    argv: Vec<String>,
    samples: Vec<Duration>,
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn time_once(argv: &[String]) -> Duration {
    let start = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let elapsed = start.elapsed();
    assert!(status.success(), "{argv:?} failed: {status}");
    elapsed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Times only the write that moves a fresh process into a fresh sandbox cgroup, with osvm's
/// own cgroup code. On this host a cold move takes milliseconds: the kernel waits for a
/// grace period before it lets a task change cgroups.
fn cgroup_migration(runs: usize) -> Option<Vec<Duration>> {
    let hierarchy = osvm_sandbox::cgroup::Hierarchy::detect().ok()?;
    let mut samples = Vec::new();
    for i in 0..runs {
        let id = format!("bench-migrate-{}-{i}", std::process::id());
        let group = osvm_sandbox::cgroup::create(
            hierarchy,
            &std::path::Path::new(osvm_sandbox::cgroup::OSVM_PARENT).join(&id),
            &osvm_core::Resources::default(),
        )
        .ok()?;
        let mut child = Command::new("sleep").arg("10").spawn().ok()?;
        // A move right after another one is fast (the kernel's lock is still in its writer
        // state); a sandbox start is a cold move, so let the previous one settle first.
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        let moved = group.add_process(child.id() as i32, false);
        samples.push(start.elapsed());
        let _ = child.kill();
        let _ = child.wait();
        while group.remove().is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        moved.ok()?;
    }
    Some(samples)
}

/// `<osvm> --state-dir <state> run -q <extra> <the limits every osvm row uses> -- /bin/true`.
fn run_argv(osvm: &str, state: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut argv = vec![
        osvm.to_owned(),
        "--state-dir".into(),
        state.display().to_string(),
        "run".into(),
        "-q".into(),
    ];
    argv.extend(extra.iter().map(|x| x.to_string()));
    argv.extend(
        [
            "--memory",
            "256M",
            "--cpus",
            "1",
            "--pids",
            "64",
            "--",
            "/bin/true",
        ]
        .map(String::from),
    );
    argv
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP startup bench: osvm's sandbox needs root (cgroups, uid range)");
        return;
    }
    let runs: usize = std::env::var("OSVM_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let state = std::env::temp_dir().join(format!("osvm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let osvm = env!("CARGO_BIN_EXE_osvm").to_string();

    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut tools = vec![Tool {
        name: "osvm run",
        what: "user+pid+mount+net+ipc+uts+cgroup ns, cgroup limits, pivot_root, Landlock, caps dropped, seccomp",
        argv: run_argv(&osvm, &state, &[]),
        samples: Vec::new(),
    }];
    // The same with --name: /data is the component's ext4 volume (loop device, id-mapped mount)
    // instead of a scratch tmpfs.
    tools.push(Tool {
        name: "osvm run --name (data volume)",
        what: "as above, plus the component's ext4 volume mounted at /data",
        argv: run_argv(&osvm, &state, &["--name", "bench"]),
        samples: Vec::new(),
    });
    let baseline_state =
        std::env::temp_dir().join(format!("osvm-bench-baseline-{}", std::process::id()));
    if let Ok(baseline) = std::env::var("OSVM_BENCH_BASELINE") {
        std::fs::create_dir_all(&baseline_state).unwrap();
        tools.push(Tool {
            name: "osvm run (baseline binary)",
            what: "OSVM_BENCH_BASELINE, same flags",
            argv: run_argv(&baseline, &baseline_state, &[]),
            samples: Vec::new(),
        });
    }
    if found("bwrap") {
        tools.push(Tool {
            name: "bwrap",
            what: "--unshare-all --die-with-parent --ro-bind / / --proc /proc --dev /dev",
            argv: s(&[
                "bwrap",
                "--unshare-all",
                "--die-with-parent",
                "--ro-bind",
                "/",
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "/bin/true",
            ]),
            samples: Vec::new(),
        });
    } else {
        println!("note: bwrap not found (Debian package bubblewrap); its row is missing");
    }
    if found("unshare") {
        tools.push(Tool {
            name: "unshare",
            what: "-pnmiuf --mount-proc",
            argv: s(&["unshare", "-pnmiuf", "--mount-proc", "/bin/true"]),
            samples: Vec::new(),
        });
    }

    for t in &tools {
        for _ in 0..3 {
            time_once(&t.argv);
        }
    }
    // Each round runs the tools in a fresh random order: a run right after one that moved a
    // process between cgroups finds the kernel's cgroup lock warm, a run after a tool that
    // makes no cgroup (bwrap, unshare) pays the cold migration (see the first row); in a fixed
    // order the same tool would always pay it.
    let mut order: Vec<usize> = (0..tools.len()).collect();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    for _ in 0..runs {
        for i in (1..order.len()).rev() {
            // xorshift64: enough randomness for an order.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &k in &order {
            let t = &mut tools[k];
            let d = time_once(&t.argv);
            t.samples.push(d);
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&baseline_state);
    let migration = cgroup_migration(runs);

    let median_of = |t: &Tool| {
        let mut v = t.samples.clone();
        v.sort();
        percentile(&v, 0.5)
    };
    let bwrap_median = tools.iter().find(|t| t.name == "bwrap").map(median_of);
    println!(
        "\nStart-up to exit of /bin/true, {runs} interleaved runs each (after 3 warm-up runs):\n"
    );
    println!("| tool | median (ms) | p90 (ms) | min (ms) | median / bwrap | isolation |");
    println!("|---|---:|---:|---:|---:|---|");
    if let Some(mut v) = migration {
        v.sort();
        println!(
            "| (kernel) cgroup task migration alone | {:.2} | {:.2} | {:.2} | {} | cold move of one process into a new cgroup ({}); part of osvm run's time, overlapped with building the root |",
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.9)),
            ms(v[0]),
            bwrap_median
                .map(|b| format!("{:.2}", ms(percentile(&v, 0.5)) / ms(b)))
                .unwrap_or_else(|| "-".into()),
            osvm_sandbox::cgroup::Hierarchy::detect()
                .map(|h| h.name())
                .unwrap_or("?"),
        );
    }
    for t in &tools {
        let mut v = t.samples.clone();
        v.sort();
        let median = percentile(&v, 0.5);
        let ratio = bwrap_median
            .map(|b| format!("{:.2}", ms(median) / ms(b)))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {} | {} |",
            t.name,
            ms(median),
            ms(percentile(&v, 0.9)),
            ms(v[0]),
            ratio,
            t.what
        );
    }
}
