//! A private containerd for the shim's tests and bench: its own root, state and socket under a
//! temp directory, the shim on its PATH, a busybox image built with umoci and imported.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "osvm.test/busybox:latest";
pub const RUNTIME: &str = "io.containerd.osvm.v1";

/// What the host lacks for these tests: (feature, why).
pub fn missing() -> Option<(&'static str, String)> {
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

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

pub fn ok(cmd: &mut Command) -> String {
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
pub struct Containerd {
    pub dir: PathBuf,
    pub namespace: String,
    daemon: Child,
}

impl Containerd {
    pub fn start(test: &str) -> Self {
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

    pub fn socket(&self) -> PathBuf {
        self.dir.join("state/containerd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(&self.namespace);
        c
    }

    /// `ctr run` with osvm's runtime (and the snapshotter it needs) and `args`.
    pub fn run(&self, extra: &[&str], id: &str, command: &[&str]) -> Command {
        let mut c = self.ctr();
        c.args(["run", "--snapshotter", "native", "--runtime", RUNTIME])
            .args(extra)
            .arg(IMAGE)
            .arg(id)
            .args(command);
        c
    }

    /// The shims serving this containerd, by their command line.
    pub fn shims(&self) -> Vec<i32> {
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
        // Sandboxes a failed test left running (their monitors outlive the shims).
        let runtime = osvm_sandbox::SandboxRuntime::new(osvm_sandbox::SandboxConfig {
            launcher: PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-osvm-v1")),
            state_dir: self.dir.join("osvm"),
        });
        for entry in std::fs::read_dir(self.dir.join("osvm/instances"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            if let Ok(osvm_sandbox::Adopted::Running(sandbox)) = runtime.adopt(&id) {
                use osvm_core::Instance;
                let _ = sandbox.kill();
                let _ = sandbox.wait();
            }
        }
        // Containers a failed test left: their roots are unmounted (innermost first) and
        // their directories removed.
        let mounts = Path::new("/run/osvm-shim").join(&self.namespace);
        let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .filter(|p| Path::new(p).starts_with(&mounts))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&mounts);
        if std::env::var_os("OSVM_KEEP_CTR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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

pub fn started(test: &str) -> Option<Containerd> {
    if let Some((feature, why)) = missing() {
        osvm_testkit::skip(feature, test, &why);
        return None;
    }
    Some(Containerd::start(test))
}
