//! The holes an outside red team found in the process sandbox (F1-F8 of the hardening issue)
//! and its weak points, each tried again as the attack it was, from inside a sandbox, and
//! checked from the host. Every test needs root and a cgroup hierarchy; without them it prints
//! SKIP and returns.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Debian's static busybox, which the attacks below script with.
const BUSYBOX: &str = "/bin/busybox";

fn busybox_available(test: &str) -> bool {
    if !sandbox_available(test) {
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        skip(
            "busybox",
            test,
            "needs /bin/busybox (apt-get install busybox-static)",
        );
        return false;
    }
    true
}

/// `osvm run -q ARGS...` with the build directory bound at /probe.
fn osvm_run(state: &StateDir, args: &[&str]) -> std::process::Output {
    let _ = probe_bin();
    state
        .osvm()
        .args(["run", "-q", "--bind"])
        .arg(format!("{}:/probe", probe_dir().display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run osvm")
}

/// A sandbox running in the background (`osvm run` as a child), whose first output line the
/// test waits for; stopped (SIGTERM to osvm, which stops the sandbox) when dropped.
struct Background {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Background {
    fn start(state: &StateDir, args: &[&str]) -> Self {
        let _ = probe_bin();
        let mut child = state
            .osvm()
            .args(["run", "-q", "--bind"])
            .arg(format!("{}:/probe", probe_dir().display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start osvm run");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line the workload printed, as JSON.
    fn json_line(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the workload reports within 60 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// The running instance of component `name` under `state` and its running record, once the
/// sandbox is up.
fn running(state: &StateDir, name: &str) -> (String, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for id in state.instances() {
            if id.starts_with(&format!("{name}-"))
                && let Ok(bytes) =
                    std::fs::read(state.path.join("instances").join(&id).join("running.json"))
                && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            {
                return (id, v);
            }
        }
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cmdline(pid: u64) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

/// The root directory's device and inode, as `stat -c '%d %i'` prints them.
fn host_root_id() -> String {
    let m = std::fs::metadata("/").unwrap();
    format!("{} {}", m.dev(), m.ino())
}

/// The start failed as osvm's setup (exit 125) and said which link it would not follow.
fn assert_refused_naming_the_link(out: &std::process::Output, link: &str, what: &str) {
    assert_eq!(out.status.code(), Some(125), "{what}: {}", stderr(out));
    assert!(
        stderr(out).contains(&format!("{link} is a symbolic link")),
        "{what}: the error names {link}: {}",
        stderr(out)
    );
}

// F1 ---------------------------------------------------------------------------------------

/// The red team's mount escape, verbatim: a component swaps a directory on its bind target's
/// path for a symlink chain to `/`. The next start must refuse to mount through it, naming
/// the link, instead of stacking the bind on the host's root.
#[test]
fn a_bind_target_behind_a_planted_symlink_is_refused_not_followed() {
    if !busybox_available("f1-nested") {
        return;
    }
    let state = StateDir::new("f1-nested");
    let src = state.path.join("src");
    std::fs::create_dir(&src).unwrap();
    let bind = format!("{}:/data/cfg/shared:rw", src.display());
    let plant = osvm_run(
        &state,
        &[
            "--rm",
            "--name",
            "app",
            "--bind",
            &bind,
            "--",
            BUSYBOX,
            "sh",
            "-c",
            "mv /data/cfg /data/cfg.old && mkdir /data/x && ln -s / /data/x/shared && ln -s x /data/cfg",
        ],
    );
    assert!(plant.status.success(), "planting: {}", stderr(&plant));
    let attack = osvm_run(
        &state,
        &[
            "--rm", "--name", "app", "--bind", &bind, "--", BUSYBOX, "stat", "-c", "%d %i", "/",
            "/..",
        ],
    );
    assert!(
        !stdout(&attack).contains(&host_root_id()),
        "the host's root is reachable from the sandbox: {}",
        stdout(&attack)
    );
    assert_refused_naming_the_link(&attack, "/data/cfg", "nested");
}

/// The single-level variant: one run without the mount plants `/data/shared -> /`.
#[test]
fn a_single_level_bind_target_that_is_a_symlink_is_refused() {
    if !busybox_available("f1-single") {
        return;
    }
    let state = StateDir::new("f1-single");
    let src = state.path.join("src");
    std::fs::create_dir(&src).unwrap();
    let plant = osvm_run(
        &state,
        &[
            "--rm",
            "--name",
            "app",
            "--",
            BUSYBOX,
            "ln",
            "-s",
            "/",
            "/data/shared",
        ],
    );
    assert!(plant.status.success(), "planting: {}", stderr(&plant));
    let bind = format!("{}:/data/shared:rw", src.display());
    let attack = osvm_run(
        &state,
        &[
            "--rm", "--name", "app", "--bind", &bind, "--", BUSYBOX, "stat", "-c", "%d %i", "/",
            "/..",
        ],
    );
    assert!(!stdout(&attack).contains(&host_root_id()));
    assert_refused_naming_the_link(&attack, "/data/shared", "single-level");
}

// F8 ---------------------------------------------------------------------------------------

/// The same root cause for files: a link planted where a file mount goes (single-level), or on
/// its way (nested), must not make the next start create anything on the host.
#[test]
fn a_file_mount_through_a_planted_symlink_creates_nothing_on_the_host() {
    if !busybox_available("f8") {
        return;
    }
    let state = StateDir::new("f8");
    // Writable by anyone, like /tmp: what keeps the sandbox out must be osvm, not its mode.
    let victim_dir = StateDir::new("f8-victim");
    std::fs::set_permissions(&victim_dir.path, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = victim_dir.path.join("planted.conf");
    let src = state.path.join("app.conf");
    std::fs::write(&src, "setting = 1\n").unwrap();
    for (name, link, to, target, at) in [
        (
            "single",
            "/data/app.conf",
            victim.display().to_string(),
            "/data/app.conf",
            "/data/app.conf",
        ),
        (
            "nested",
            "/data/etc",
            victim_dir.path.display().to_string(),
            "/data/etc/planted.conf",
            "/data/etc",
        ),
    ] {
        let plant = osvm_run(
            &state,
            &["--rm", "--name", name, "--", BUSYBOX, "ln", "-s", &to, link],
        );
        assert!(
            plant.status.success(),
            "{name}: planting: {}",
            stderr(&plant)
        );
        let bind = format!("{}:{target}", src.display());
        let attack = osvm_run(
            &state,
            &[
                "--rm", "--name", name, "--bind", &bind, "--", BUSYBOX, "true",
            ],
        );
        assert!(
            !victim.exists(),
            "{name}: the start created {} on the host",
            victim.display()
        );
        assert_refused_naming_the_link(&attack, at, name);
    }
}

/// A component that may write a shared directory plants a link where another component's
/// bind source lies: the other's next start must not follow it (osvm resolves sources as root).
#[test]
fn a_bind_source_redirected_by_another_component_is_refused() {
    if !busybox_available("source-link") {
        return;
    }
    let state = StateDir::new("source-link");
    let shared = state.path.join("shared");
    std::fs::create_dir_all(shared.join("conf")).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let writer = format!("{}:/shared:rw", shared.display());
    let plant = osvm_run(
        &state,
        &[
            "--rm",
            "--name",
            "writer",
            "--bind",
            &writer,
            "--",
            BUSYBOX,
            "sh",
            "-c",
            "rmdir /shared/conf && ln -s /etc /shared/conf",
        ],
    );
    assert!(plant.status.success(), "planting: {}", stderr(&plant));
    let reader = format!("{}:/conf", shared.join("conf").display());
    let attack = osvm_run(
        &state,
        &[
            "--rm", "--name", "reader", "--bind", &reader, "--", BUSYBOX, "ls", "/conf",
        ],
    );
    assert!(
        !stdout(&attack).contains("passwd"),
        "the host's /etc reached the other component: {}",
        stdout(&attack)
    );
    assert_eq!(attack.status.code(), Some(125), "{}", stderr(&attack));
    assert!(
        stderr(&attack).contains("symbolic link"),
        "{}",
        stderr(&attack)
    );
}

// F2 ---------------------------------------------------------------------------------------

/// Descriptors osvm inherits from its caller (a root-only file, a host file open for writing,
/// a directory, a socket) never reach the workload: it sees stdin, stdout and stderr only.
#[test]
fn inherited_descriptors_never_reach_the_workload() {
    if !sandbox_available("f2") {
        return;
    }
    let state = StateDir::new("f2");
    let secret = state.path.join("root-only.txt");
    std::fs::write(&secret, "osvm-f2-secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let appended = state.path.join("host-file.txt");
    std::fs::write(&appended, "").unwrap();
    let file = std::fs::File::open(&secret).unwrap();
    let writable = std::fs::OpenOptions::new()
        .append(true)
        .open(&appended)
        .unwrap();
    let dir = std::fs::File::open(&state.path).unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let sources = [
        file.as_raw_fd(),
        dir.as_raw_fd(),
        writable.as_raw_fd(),
        theirs.as_raw_fd(),
    ];
    let _ = probe_bin();
    let mut cmd = state.osvm();
    cmd.args(["run", "-q", "--bind"])
        .arg(format!("{}:/probe", probe_dir().display()))
        .args(["--", "/probe/osvm-probe", "fds"]);
    // SAFETY: fcntl and dup2 between fork and exec are async-signal-safe. The copies at 7..10
    // are not close-on-exec, exactly like descriptors a shell hands down (`exec 7<file`); each
    // source is parked above them first, since one of them may sit at 7..10 itself.
    unsafe {
        cmd.pre_exec(move || {
            let mut parked = [0i32; 4];
            for (k, fd) in sources.iter().enumerate() {
                parked[k] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if parked[k] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (k, fd) in parked.iter().enumerate() {
                if libc::dup2(*fd, 7 + k as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let fds: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let numbers: Vec<u64> = fds
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fd"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![0, 1, 2], "only stdio is open inside: {fds}");
    drop(theirs);
    ours.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    // End of stream once every copy of `theirs` is closed: another test's child between its
    // fork and its exec may hold one for a moment (close-on-exec), so wait a little for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let read = loop {
        match (&ours).read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other,
        }
    };
    assert!(
        matches!(read, Ok(0)),
        "nothing arrived on the host's socket: {read:?}"
    );
    assert_eq!(std::fs::read_to_string(&appended).unwrap(), "");
}

// F3 ---------------------------------------------------------------------------------------

/// Native AIO contexts count against a host-wide limit (`fs.aio-max-nr`): refused unless the
/// component opts in.
#[test]
fn native_aio_is_refused_unless_the_component_opts_in() {
    if !sandbox_available("f3") {
        return;
    }
    let state = StateDir::new("f3");
    let out = run_probe(&state, &[], &["aio"]);
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["ok"], false, "io_setup refused by default: {v}");
    let out = run_probe(&state, &["--allow-native-aio"], &["aio"]);
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["ok"], true, "io_setup allowed on request: {v}");
}

// F4 ---------------------------------------------------------------------------------------

/// While a sandbox holds every inotify instance it may have, host root can still make one:
/// the sandbox's user namespace belongs to its own host uid, which pays its counters.
#[test]
fn inotify_instances_are_charged_to_the_component_not_to_host_root() {
    if !sandbox_available("f4-inotify") {
        return;
    }
    let state = StateDir::new("f4-inotify");
    let bg = Background::start(
        &state,
        &["--", "/probe/osvm-probe", "inotify", "1000", "30"],
    );
    let v = bg.json_line();
    assert!(v["opened"].as_u64().unwrap() > 0, "{v}");
    assert!(!v["error"].as_str().unwrap().is_empty(), "hit a limit: {v}");
    // SAFETY: integer flags; the fd is closed right away.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    let e = std::io::Error::last_os_error();
    assert!(
        fd >= 0,
        "host root's inotify_init fails: {e} (sandbox: {v})"
    );
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

/// The same for inotify watches.
#[test]
fn inotify_watches_are_charged_to_the_component_not_to_host_root() {
    if !sandbox_available("f4-watches") {
        return;
    }
    let state = StateDir::new("f4-watches");
    let bg = Background::start(
        &state,
        &["--memory", "1G", "--", "/probe/osvm-probe", "watches", "30"],
    );
    let v = bg.json_line();
    assert!(v["watches"].as_u64().unwrap() > 0, "{v}");
    let file = state.path.join("watched");
    std::fs::write(&file, "").unwrap();
    // SAFETY: inotify calls with a live C string; the fd is closed below.
    let (fd, wd) = unsafe {
        let fd = libc::inotify_init1(libc::IN_CLOEXEC);
        let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        let wd = if fd >= 0 {
            libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MODIFY)
        } else {
            -1
        };
        (fd, wd)
    };
    let e = std::io::Error::last_os_error();
    if fd >= 0 {
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }
    assert!(
        fd >= 0 && wd >= 0,
        "host root cannot watch a file: {e} (sandbox: {v})"
    );
}

/// And for queued real-time signals: host root's `timer_create` (which reserves a queued
/// signal) works while a sandbox has queued all it may.
#[test]
fn queued_signals_are_charged_to_the_component_not_to_host_root() {
    if !sandbox_available("f4-signals") {
        return;
    }
    let state = StateDir::new("f4-signals");
    let bg = Background::start(&state, &["--", "/probe/osvm-probe", "sigqueue", "30"]);
    let v = bg.json_line();
    assert!(v["queued"].as_u64().unwrap() > 0, "{v}");
    assert!(!v["error"].as_str().unwrap().is_empty(), "hit a limit: {v}");
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: timer_create with a NULL sigevent (SIGALRM) writes the id into `timer`.
    let rc = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, std::ptr::null_mut(), &mut timer) };
    let e = std::io::Error::last_os_error();
    assert_eq!(rc, 0, "host root's timer_create fails: {e} (sandbox: {v})");
    // SAFETY: deletes the timer just made.
    unsafe { libc::timer_delete(timer) };
}

// F5 ---------------------------------------------------------------------------------------

/// The state directory and every file that may hold a secret are root's alone, and no
/// process's argv (the monitor's, the sandbox's init's) shows a host path or a secret.
#[test]
fn state_is_private_and_no_argv_shows_a_path_or_a_secret() {
    if !sandbox_available("f5") {
        return;
    }
    let state = StateDir::new("f5");
    let _bg = Background::start(
        &state,
        &[
            "--name",
            "secretive",
            "-e",
            "API_TOKEN=tok-4711-secret",
            "--",
            "/probe/osvm-probe",
            "inotify",
            "0",
            "30",
        ],
    );
    let (id, record) = running(&state, "secretive");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let instance = state.path.join("instances").join(&id);
    for dir in [&state.path, &state.path.join("instances"), &instance] {
        assert_eq!(mode(dir), 0o700, "{} is root's alone", dir.display());
    }
    for file in ["plan.json", "running.json", "stdout.log", "stderr.log"] {
        assert_eq!(mode(&instance.join(file)), 0o600, "{file} is root's alone");
    }
    let monitor = record["monitor_pid"].as_u64().unwrap();
    let init = record["confinement"]["init_pid"].as_u64().unwrap();
    for (who, pid) in [("monitor", monitor), ("init", init)] {
        let argv = cmdline(pid);
        assert!(
            !argv.contains(state.path.to_str().unwrap()) && !argv.contains("tok-4711"),
            "the {who}'s argv shows a path or the secret: {argv}"
        );
        assert!(
            !argv.contains(bin_dir().to_str().unwrap()),
            "the {who}'s argv shows where osvm is installed: {argv}"
        );
    }
}

// F6 ---------------------------------------------------------------------------------------

/// `osvm run`'s logs rotate at `--log-max-size`, keeping `--log-files` old copies, however
/// fast the workload writes.
#[test]
fn run_logs_are_capped_and_rotated() {
    if !sandbox_available("f6") {
        return;
    }
    let state = StateDir::new("f6");
    let _ = probe_bin();
    let out = state
        .osvm()
        .args([
            "-o",
            "json",
            "run",
            "-q",
            "--log-max-size",
            "1M",
            "--log-files",
            "2",
        ])
        .args(["--bind", &format!("{}:/probe", probe_dir().display())])
        .args(["--", "/probe/osvm-probe", "spew", "30"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = PathBuf::from(doc["logs"]["stdout"].as_str().unwrap());
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    assert!(size(&log) <= (1 << 20) + (64 << 10), "{} bytes", size(&log));
    assert!(
        size(&rotated(1)) > 0 && size(&rotated(2)) > 0,
        "two copies kept"
    );
    assert!(!rotated(3).exists(), "no third copy");
    let total: u64 = [log.clone(), rotated(1), rotated(2)]
        .iter()
        .map(|p| size(p))
        .sum();
    assert!(total < 4 << 20, "30 MiB written, {total} bytes kept");
}

// F7 ---------------------------------------------------------------------------------------

/// `/data` and the writable tmpfs mounts hold at most `--disk`; nothing spills onto the
/// host's disk.
#[test]
fn data_and_tmpfs_mounts_are_capped_by_disk() {
    if !sandbox_available("f7") {
        return;
    }
    let state = StateDir::new("f7");
    for (name, path) in [("filler", "/data/fill"), ("filler", "/tmp/fill")] {
        let out = osvm_run(
            &state,
            &[
                "--name",
                name,
                "--disk",
                "64M",
                "--",
                "/probe/osvm-probe",
                "fill",
                path,
                "3072",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(v["fallocate_ok"], false, "{path}: 3 GiB do not fit: {v}");
        assert!(v["written_mib"].as_u64().unwrap() <= 64, "{path}: {v}");
        assert!(
            v["write_error"].as_str().unwrap().contains("space"),
            "{path}: ENOSPC: {v}"
        );
    }
    let used = Command::new("du")
        .args(["-s", "-B1"])
        .arg(&state.path)
        .output()
        .unwrap();
    let bytes: u64 = stdout(&used)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes < 100 << 20, "the state dir holds {bytes} bytes");
}

// Weak points ------------------------------------------------------------------------------

/// Without flags `osvm run` gets the stack defaults (512M memory, 4096 pids) and its tmpfs
/// mounts are sized by the disk default (1G), not by the host's RAM.
#[test]
fn run_gets_the_documented_default_limits() {
    if !sandbox_available("defaults") {
        return;
    }
    let state = StateDir::new("defaults");
    let bg = Background::start(
        &state,
        &[
            "--name",
            "plain",
            "--",
            "/probe/osvm-probe",
            "inotify",
            "0",
            "30",
        ],
    );
    let _ = bg.json_line();
    let (id, _) = running(&state, "plain");
    let read = |controller: &str, file: &str| {
        [
            format!("/sys/fs/cgroup/{controller}/osvm/{id}/{file}"),
            format!("/sys/fs/cgroup/osvm/{id}/{file}"),
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
    };
    let memory = read("memory", "memory.limit_in_bytes").or_else(|| read("", "memory.max"));
    assert_eq!(memory.as_deref(), Some("536870912"), "512 MiB");
    let pids = read("pids", "pids.max");
    assert_eq!(pids.as_deref(), Some("4096"));
    drop(bg);
    let out = run_probe(&state, &[], &["statfs", "/tmp", "/dev/shm", "/"]);
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    for path in ["/tmp", "/dev/shm", "/"] {
        let size = v[path].as_u64().unwrap();
        assert!(size > 0 && size <= 512 << 20, "{path} is {size} bytes: {v}");
    }
}

/// Each component runs under its own host uid range, kept across runs; unnamed runs get a
/// range of their own, and share no `/data`.
#[test]
fn components_get_distinct_uid_ranges_kept_across_runs() {
    if !busybox_available("uids") {
        return;
    }
    let state = StateDir::new("uids");
    let host_uid = |name: Option<&str>| -> u64 {
        let mut args = vec![];
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        args.extend(["--", "/probe/osvm-probe", "status"]);
        let out = osvm_run(&state, &args);
        let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        v["uid_map"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let a = host_uid(Some("alpha"));
    let b = host_uid(Some("beta"));
    assert_ne!(a, b, "two components, two ranges");
    assert_eq!(host_uid(Some("alpha")), a, "the range is kept");
    let anonymous = host_uid(None);
    assert!(anonymous != a && anonymous != b);
    for uid in [a, b, anonymous] {
        assert!((0x7000_0000..0x8000_0000).contains(&uid), "{uid:#x}");
    }
    let write = osvm_run(
        &state,
        &["--", BUSYBOX, "sh", "-c", "echo left > /data/marker"],
    );
    assert!(write.status.success(), "{}", stderr(&write));
    let read = osvm_run(&state, &["--", BUSYBOX, "cat", "/data/marker"]);
    assert!(
        !read.status.success() && !stdout(&read).contains("left"),
        "an unnamed run sees no other's /data"
    );
}

/// A `rw` bind is writable from the sandbox without any chown on the host: files created
/// there belong to the directory's owner (root, or a login user).
#[test]
fn rw_binds_are_writable_without_chown() {
    if !busybox_available("rw-binds") {
        return;
    }
    let state = StateDir::new("rw-binds");
    for owner in [0u32, 1000] {
        let dir = state.path.join(format!("owned-by-{owner}"));
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bind = format!("{}:/shared:rw", dir.display());
        let out = osvm_run(
            &state,
            &[
                "--bind",
                &bind,
                "--",
                BUSYBOX,
                "sh",
                "-c",
                "echo hi > /shared/file && mkdir /shared/sub",
            ],
        );
        assert!(out.status.success(), "owner {owner}: {}", stderr(&out));
        let meta = std::fs::metadata(dir.join("file")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (owner, owner),
            "the directory's owner"
        );
        assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "hi\n");
    }
}

/// `osvm run -i` on a terminal gives the workload a terminal of its own: the modes and the
/// window size it sets, and what it writes to its stdin, never reach the operator's.
#[test]
fn interactive_run_gives_the_workload_its_own_terminal() {
    if !busybox_available("pty") {
        return;
    }
    let state = StateDir::new("pty");
    let pty = nix::pty::openpty(None, None).unwrap();
    let before = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    let size = |fd: &OwnedFd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        (ws.ws_row, ws.ws_col)
    };
    let size_before = size(&pty.slave);
    // SAFETY: dup of a live descriptor; the copy is owned below.
    let stdin = unsafe { OwnedFd::from_raw_fd(libc::dup(pty.slave.as_raw_fd())) };
    let out = state
        .osvm()
        .args(["run", "-q", "-i", "--rm", "--", BUSYBOX, "sh", "-c"])
        .arg(
            "stty raw -echo; stty rows 11 cols 13; printf '\\033]0;osvm-pwned\\007' >&0; echo done",
        )
        .stdin(Stdio::from(stdin))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("done"));
    let after = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    assert_eq!(
        before.local_flags, after.local_flags,
        "echo and canonical mode kept"
    );
    assert_eq!(before.input_flags, after.input_flags);
    assert_eq!(before.output_flags, after.output_flags);
    assert_eq!(
        size(&pty.slave),
        size_before,
        "the window size is the operator's"
    );
    nix::fcntl::fcntl(
        &pty.master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(&pty.master, &mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        !String::from_utf8_lossy(&seen).contains("osvm-pwned"),
        "the workload wrote to the operator's terminal: {:?}",
        String::from_utf8_lossy(&seen)
    );
}
