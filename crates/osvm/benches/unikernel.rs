//! Unikernel start-up and memory, side by side with the microVM runtime and the process sandbox
//! running the same program built for Linux: `examples/hermit-app` (std only) is built once as
//! a Hermit image and once for the host, and each runtime runs it.
//!
//! Per round and runtime: start to the app's first line of output and start to its exit
//! (`hello`, exit 0), and the host memory of a running instance (`spin`, after its first
//! line): the launcher's cgroup for the unikernel, QEMU's and the vsock backend's cgroups for
//! the microVM, the sandbox's cgroup for the process. Output is found by reading each
//! instance's stdout log every 2 ms, the same way for all three. Rounds are interleaved.
//!
//! Run as root with `cargo bench -p osvm --bench unikernel`; the microVM rows need the guest
//! kernel and agent as for `--bench microvm` (skipped with the reason otherwise).
//! `OSVM_BENCH_RUNS` sets the rounds (default 10). Prints Markdown tables; docs/benchmarks.md
//! keeps one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use osvm_core::{Instance, LaunchSpec};
use osvm_microvm::kernel::Kernel;
use osvm_microvm::{MicroVmConfig, MicroVmRuntime};
use osvm_sandbox::{SandboxConfig, SandboxRuntime};
use osvm_unikernel::UnikernelRuntime;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn sorted<T: Ord + Copy>(v: &[T]) -> Vec<T> {
    let mut s = v.to_vec();
    s.sort();
    s
}

fn median<T: Ord + Copy>(v: &[T]) -> T {
    sorted(v)[v.len() / 2]
}

/// Waits until `log` holds `line`; the time since `start`.
fn first_line(log: &Path, line: &str, start: Instant) -> Duration {
    let deadline = start + Duration::from_secs(120);
    loop {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(line)) {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no `{line}` in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One run of `hello`: (start to first line, start to exit).
fn hello_run(start: Instant, inst: &dyn Instance) -> (Duration, Duration) {
    let first = first_line(&inst.log_paths().0, "hello from hermit-app", start);
    let status = inst.wait().expect("wait");
    assert_eq!(status.code, Some(0), "{status}");
    (first, start.elapsed())
}

#[derive(Default)]
struct Rows {
    first: Vec<Duration>,
    exit: Vec<Duration>,
    memory: Vec<u64>,
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIP unikernel bench: needs root");
        return;
    }
    let runs: usize = std::env::var("OSVM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/hermit-app")
        .canonicalize()
        .unwrap();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let shared = tmp.join("unikernel-build");
    std::fs::create_dir_all(&shared).unwrap();
    let image = match osvm_unikernel::image::build(&shared, &example, &mut |_| {}) {
        Ok(i) => i,
        Err(e) => {
            println!("SKIP unikernel bench: {e}");
            return;
        }
    };
    // The same program for Linux.
    let linux_target = tmp.join("hermit-app-linux");
    let o = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(example.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&linux_target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let linux = linux_target.join("release/hermit-app");

    let state = std::env::temp_dir().join(format!("osvm-bench-unikernel-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(shared.join("unikernel"), state.join("unikernel")).unwrap();
    let mut config = SandboxConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_osvm")));
    config.state_dir = state.clone();
    let sandbox = Arc::new(SandboxRuntime::new(config));
    let unikernels = UnikernelRuntime::new(sandbox.clone(), state.clone());

    // The microVM, if this host can run one (kernel shared with the microVM tests and bench).
    let kernels = tmp.join("microvm-kernel");
    std::fs::create_dir_all(&kernels).unwrap();
    let vms = MicroVmRuntime::new(sandbox.clone(), MicroVmConfig::new(state.clone()));
    let vm_kernel = match vms.unavailable_reason() {
        Some(why) => Err(why),
        None => Kernel::installed(&kernels)
            .or_else(|_| osvm_microvm::kernel::fetch(&kernels, false, &mut |_| {}))
            .map_err(|e| e.to_string()),
    };
    if vm_kernel.is_ok() {
        std::os::unix::fs::symlink(kernels.join("kernels"), state.join("kernels")).unwrap();
    }

    let spec = |runtime_args: &[&str]| {
        let mut s = LaunchSpec::new("bench", "", vec![]);
        s.args = runtime_args.iter().map(|a| (*a).to_owned()).collect();
        s.resources.memory_bytes = Some(128 << 20);
        s.resources.cpus = Some(1.0);
        s
    };
    let uk_spec = |args: &[&str]| {
        let mut s = spec(args);
        s.command = image.path.display().to_string();
        s.runtime = osvm_core::RuntimeSpec::unikernel();
        s
    };
    let linux_spec = |args: &[&str]| {
        let mut s = spec(args);
        s.command = linux.display().to_string();
        s.runtime = osvm_core::RuntimeSpec::microvm();
        s.binds.push(osvm_core::BindMount {
            source: linux.clone(),
            target: linux.clone(),
            writable: false,
        });
        s
    };
    let choice = unikernels.choose(&uk_spec(&[])).expect("a launcher");
    let vm_image = vm_kernel
        .as_ref()
        .ok()
        .map(|k| vms.image_for(&linux_spec(&[]), k).expect("microVM image"));

    let (mut uk, mut vm, mut pr) = (Rows::default(), Rows::default(), Rows::default());
    for round in 0..runs {
        let id = |what: &str| format!("bench-{what}-{round:03}-{:05}", std::process::id());

        let t = Instant::now();
        let u = unikernels
            .start_unikernel(&uk_spec(&["hello"]), &id("uk"))
            .expect("start the unikernel");
        let (f, e) = hello_run(t, &u);
        uk.first.push(f);
        uk.exit.push(e);
        let t = Instant::now();
        let u = unikernels
            .start_unikernel(&uk_spec(&["spin"]), &id("ukspin"))
            .unwrap();
        first_line(&u.log_paths().0, "spinning", t);
        uk.memory.push(u.stats().map_or(0, |s| s.memory_bytes));
        u.stop(Duration::ZERO).unwrap();

        if vm_kernel.is_ok() {
            let t = Instant::now();
            let v = vms.start_vm(&linux_spec(&["hello"]), &id("vm")).unwrap();
            let (f, e) = hello_run(t, &v);
            vm.first.push(f);
            vm.exit.push(e);
            let t = Instant::now();
            let v = vms.start_vm(&linux_spec(&["spin"]), &id("vmspin")).unwrap();
            first_line(&v.log_paths().0, "spinning", t);
            let backend = match sandbox.adopt(&format!("{}-vsock", id("vmspin"))) {
                Ok(osvm_sandbox::Adopted::Running(b)) => b.stats().map_or(0, |s| s.memory_bytes),
                _ => 0,
            };
            vm.memory
                .push(v.stats().map_or(0, |s| s.memory_bytes) + backend);
            v.stop(Duration::from_secs(2)).unwrap();
        }

        let t = Instant::now();
        let p = sandbox
            .start_sandbox(
                &linux_spec(&["hello"]),
                osvm_sandbox::StartOptions {
                    id: Some(id("proc")),
                    ..Default::default()
                },
            )
            .unwrap();
        let (f, e) = hello_run(t, &p);
        pr.first.push(f);
        pr.exit.push(e);
        let t = Instant::now();
        let p = sandbox
            .start_sandbox(
                &linux_spec(&["spin"]),
                osvm_sandbox::StartOptions {
                    id: Some(id("procspin")),
                    ..Default::default()
                },
            )
            .unwrap();
        first_line(&p.log_paths().0, "spinning", t);
        pr.memory.push(p.stats().map_or(0, |s| s.memory_bytes));
        p.stop(Duration::ZERO).unwrap();
        eprintln!(
            "round {}: unikernel {:.0}/{:.0} ms, microVM {}, process {:.1}/{:.1} ms",
            round + 1,
            ms(uk.first[round]),
            ms(uk.exit[round]),
            vm.first.get(round).map_or("-".into(), |f| format!(
                "{:.0}/{:.0} ms",
                ms(*f),
                ms(vm.exit[round])
            )),
            ms(pr.first[round]),
            ms(pr.exit[round]),
        );
    }

    println!(
        "\nexamples/hermit-app `hello`, {runs} rounds; unikernel under {} ({}), 1 vCPU, 128 MiB; \
         microVM {}; process sandbox\n",
        choice.launcher.as_str(),
        choice.accel.as_str(),
        match &vm_kernel {
            Ok(k) => format!(
                "{} ({}), kernel {}, 1 vCPU, 128 MiB",
                "QEMU microvm",
                osvm_guest::host::resolve_accel(osvm_core::AccelChoice::Auto, vms.kvm())
                    .map(|a| a.0.as_str())
                    .unwrap_or("?"),
                k.release
            ),
            Err(why) => format!("skipped: {why}"),
        }
    );
    println!("| | start to first output (median) | start to exit (median) | min-max to exit |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, r: &Rows| {
        if r.exit.is_empty() {
            return;
        }
        let s = sorted(&r.exit);
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1}-{:.1} ms |",
            ms(median(&r.first)),
            ms(median(&r.exit)),
            ms(s[0]),
            ms(s[s.len() - 1])
        );
    };
    row("unikernel (Hermit)", &uk);
    row("microVM (Linux guest)", &vm);
    row("process sandbox (Linux)", &pr);
    let ratio = |a: &Rows, b: &Rows| ms(median(&a.exit)) / ms(median(&b.exit));
    if !vm.exit.is_empty() {
        println!(
            "\nunikernel / microVM, start to exit: {:.2}x; to first output: {:.2}x",
            ratio(&uk, &vm),
            ms(median(&uk.first)) / ms(median(&vm.first))
        );
    }
    println!(
        "unikernel / process sandbox, start to exit: {:.1}x; to first output: {:.1}x",
        ratio(&uk, &pr),
        ms(median(&uk.first)) / ms(median(&pr.first))
    );

    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    println!("\nimage size and host memory per running instance (`spin`, median)\n");
    println!("| | image | host memory |\n|---|---:|---:|");
    println!(
        "| unikernel | {:.1} MiB (app + kernel in one ELF; loader {:.0} KiB) | {:.1} MiB (launcher cgroup) |",
        mib(image.size),
        loader_size(&state.join("unikernel/loaders")) as f64 / 1024.0,
        mib(median(&uk.memory))
    );
    if let (Ok(k), Some(img), false) = (&vm_kernel, &vm_image, vm.memory.is_empty()) {
        println!(
            "| microVM | {:.1} MiB (initramfs) + {:.1} MiB (kernel) | {:.1} MiB (QEMU + vsock backend cgroups) |",
            mib(img.size),
            mib(size(&k.image)),
            mib(median(&vm.memory))
        );
    }
    println!(
        "| process sandbox | {:.1} MiB (the Linux binary) | {:.1} MiB (sandbox cgroup) |",
        mib(size(&linux)),
        mib(median(&pr.memory))
    );
    let _ = std::fs::remove_dir_all(state.join("instances"));
    let _ = std::fs::remove_dir_all(&state);
}

/// The size of the (one) built loader under `dir`.
fn loader_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path().join("osvm-hermit-loader.elf32")).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}
