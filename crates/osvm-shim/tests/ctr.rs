//! `containerd-shim-osvm-v1` under a real containerd (Debian's 1.6), driven with `ctr` as a
//! user would: a private containerd (its own root, state and socket under a temp directory,
//! the shim on its PATH), a busybox image built locally with umoci and imported, and
//! containers run with `--runtime io.containerd.osvm.v1`.
//!
//! Needs root, containerd, ctr, umoci, skopeo and a static /bin/busybox (`.ci/run` installs
//! them); without them each test says why it skips.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "osvm.test/busybox:latest";
const RUNTIME: &str = "io.containerd.osvm.v1";

/// What the host lacks for these tests: (feature, why).
fn missing() -> Option<(&'static str, String)> {
    if !nix::unistd::geteuid().is_root() {
        return Some(("root", "needs root (containerd and the sandbox)".into()));
    }
    if !Path::new("/bin/busybox").exists() {
        return Some((
            "busybox",
            "/bin/busybox is missing (apt-get install busybox-static)".into(),
        ));
    }
    for tool in ["containerd", "ctr", "umoci", "skopeo"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some((
                "containerd",
                format!("{tool} is not installed (apt-get install containerd umoci skopeo)"),
            ));
        }
    }
    None
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A private containerd with the shim on its PATH and the busybox image imported.
struct Containerd {
    dir: PathBuf,
    namespace: String,
    daemon: Child,
}

impl Containerd {
    fn start(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("osvm-ctr-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let image = build_image(&dir);
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/state/containerd.sock\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-osvm-v1"));
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("OSVM_STATE_DIR", dir.join("osvm"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("start containerd");
        let c = Self {
            namespace: format!("osvm-test-{}-{test}", std::process::id()).replace('_', "-"),
            dir,
            daemon,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ok(c.ctr().args(["image", "import"]).arg(&image));
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("state/containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(&self.namespace);
        c
    }

    /// `ctr run` with osvm's runtime (and the snapshotter it needs) and `args`.
    fn run(&self, extra: &[&str], id: &str, command: &[&str]) -> Command {
        let mut c = self.ctr();
        c.args(["run", "--snapshotter", "native", "--runtime", RUNTIME])
            .args(extra)
            .arg(IMAGE)
            .arg(id)
            .args(command);
        c
    }

    /// The shims serving this containerd, by their command line.
    fn shims(&self) -> Vec<i32> {
        let needle = self.socket().display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("containerd-shim-osvm-v1") && c.contains(&needle)
                })
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for pid in self.shims() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let mounts = Path::new("/run/osvm-shim").join(&self.namespace);
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(&mounts)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&mounts);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A busybox image made with umoci (no registry), as a docker archive for `ctr image import`.
fn build_image(dir: &Path) -> PathBuf {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let image = format!("{}:latest", layout.display());
    ok(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    ok(Command::new("umoci").args(["new", "--image", &image]));
    ok(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &image])
        .arg(&bundle));
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "echo", "true", "sleep", "cat", "grep", "id"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    ok(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    ok(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "/bin/sh"]));
    let archive = dir.join("busybox.tar");
    ok(Command::new("skopeo").args([
        "copy",
        &format!("oci:{image}"),
        &format!("docker-archive:{}:{IMAGE}", archive.display()),
    ]));
    archive
}

fn started(test: &str) -> Option<Containerd> {
    if let Some((feature, why)) = missing() {
        osvm_testkit::skip(feature, test, &why);
        return None;
    }
    Some(Containerd::start(test))
}

/// A container runs in osvm's sandbox: its output reaches `ctr`, its exit code is ctr's, and
/// inside it has no capabilities, no_new_privs and a seccomp filter; nothing is left after.
#[test]
fn a_container_runs_confined_and_its_exit_code_comes_back() {
    let Some(c) = started("confined") else {
        return;
    };
    let o = run(&mut c.run(
        &["--rm"],
        "confined",
        &[
            "/bin/sh",
            "-c",
            "echo hello from osvm; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; id -u; exit 4",
        ],
    ));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("hello from osvm"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // Nothing left: no task, no container, no shim, no mount.
    assert!(ok(c.ctr().args(["task", "ls", "-q"])).trim().is_empty());
    assert!(
        ok(c.ctr().args(["container", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.shims().is_empty() {
        assert!(Instant::now() < deadline, "shims left: {:?}", c.shims());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/run/osvm-shim/{}", c.namespace)),
        "{mounts}"
    );
}

/// `ctr task kill` with TERM, KILL and HUP: the foreground `ctr run` ends with 143, 137 and
/// 129; meanwhile `task ls` says RUNNING; `ctr events` saw create, start, exit and delete.
#[test]
fn signals_end_a_container_with_the_shells_codes_and_events_are_published() {
    let Some(c) = started("signals") else {
        return;
    };
    let mut events = c
        .ctr()
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for (signal, code) in [("TERM", 143), ("KILL", 137), ("HUP", 129)] {
        let id = format!("sig-{}", signal.to_lowercase());
        let mut fg = c
            .run(&["--rm"], &id, &["/bin/sleep", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ls = ok(c.ctr().args(["task", "ls"]));
            if ls
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("RUNNING"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never ran: {ls}\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ok(c.ctr().args(["task", "kill", "--signal", signal, &id]));
        let status = fg.wait().unwrap();
        let mut err = String::new();
        fg.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {err}");
    }
    // The events of the last container, in order.
    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let mut text = String::new();
    let out = events.stdout.take().unwrap();
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        text.push_str(&line);
        text.push('\n');
    }
    let _ = events.wait();
    let topics: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sig-hup"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
    let order = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let mut at = 0;
    for t in &topics {
        if at < order.len() && *t == order[at] {
            at += 1;
        }
    }
    assert_eq!(at, order.len(), "events of sig-hup: {topics:?}\n{text}");
}

/// What osvm cannot give is refused with a reason: an overlay snapshot (the default
/// snapshotter) and a command that does not exist.
#[test]
fn what_osvm_cannot_run_is_refused_with_a_reason() {
    let Some(c) = started("refused") else {
        return;
    };
    let mut overlay = c.ctr();
    overlay.args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "overlay",
        "/bin/true",
    ]);
    let o = run(&mut overlay);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("native snapshotter"), "{err}");
    let o = run(&mut c.run(&["--rm"], "nonexistent", &["/no/such/command"]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/command"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.shims().is_empty() {
        assert!(Instant::now() < deadline, "shims left: {:?}", c.shims());
        std::thread::sleep(Duration::from_millis(100));
    }
}
