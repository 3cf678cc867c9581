//! A private containerd for the shim's tests and bench: its own root, state and socket under a
//! temp directory, the shim on its PATH, a busybox image built with umoci and imported.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod cri;

pub const IMAGE: &str = "osvm.test/busybox:latest";
/// The pod sandbox image CRI runs as each pod's first container: busybox sleeping.
pub const PAUSE_IMAGE: &str = "osvm.test/pause:latest";
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
    /// The CNI bridge of this containerd's pods (CRI only), removed at drop.
    bridge: Option<String>,
}

/// containerd's configuration: CRI off, or on with the `osvm` and `runc` runtime handlers, the
/// default (overlayfs) snapshotter, [`PAUSE_IMAGE`] as the pod sandbox and pods on a bridge of their own
/// (no IP on the host side, no masquerade: nothing leaves the pods' namespaces).
fn config(d: &Path, cri: Option<&str>) -> String {
    let head = format!(
        "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
         [grpc]\n  address = \"{d}/state/containerd.sock\"\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
        d = d.display()
    );
    let Some(bridge) = cri else {
        return format!("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n{head}");
    };
    std::fs::create_dir_all(d.join("cni")).unwrap();
    std::fs::write(
        d.join("cni/10-pods.conflist"),
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": bridge,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": "10.252.0.0/24" }]],
                    "dataDir": d.join("ipam"),
                },
            }],
        })
        .to_string(),
    )
    .unwrap();
    let cri = r#"[plugins."io.containerd.grpc.v1.cri"]"#;
    format!(
        "{head}{cri}\n  sandbox_image = \"{PAUSE_IMAGE}\"\n  stream_server_address = \"127.0.0.1\"\n  \
         stream_server_port = \"0\"\n  \
         restrict_oom_score_adj = true\n\
         {c}.containerd]\n  snapshotter = \"overlayfs\"\n\
         {c}.containerd.runtimes.osvm]\n  runtime_type = \"{RUNTIME}\"\n\
         {c}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
         {c}.cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{d}/cni\"\n",
        c = cri.trim_end_matches(']'),
        d = d.display()
    )
}

impl Containerd {
    /// containerd without CRI, driven with `ctr` in a namespace of the test's own.
    pub fn start(test: &str) -> Self {
        Self::launch(test, false)
    }

    /// containerd with CRI (namespace `k8s.io`), driven as kubelet would (see [`cri`]).
    pub fn start_cri(test: &str) -> Self {
        Self::launch(test, true)
    }

    fn launch(test: &str, cri: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("osvm-ctr-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let images = build_image(&dir);
        let config_file = dir.join("config.toml");
        // Bridge names are at most 15 bytes: a digest of this containerd's directory.
        let bridge = cri.then(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            dir.hash(&mut h);
            format!("osvmcri{:08x}", h.finish() as u32)
        });
        std::fs::write(&config_file, config(&dir, bridge.as_deref())).unwrap();
        let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-osvm-v1"));
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config_file)
            .env("PATH", path)
            .env("OSVM_STATE_DIR", dir.join("osvm"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("start containerd");
        let namespace = if cri {
            "k8s.io".to_owned()
        } else {
            format!("osvm-test-{}-{test}", std::process::id()).replace('_', "-")
        };
        let c = Self {
            namespace,
            dir,
            daemon,
            bridge,
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
        for image in images {
            ok(c.ctr().args(["image", "import"]).arg(&image));
        }
        c
    }

    /// The control group this containerd's containers are made under: `ctr`'s namespace (its
    /// default cgroupsPath is `/<namespace>/<id>`); for CRI, a name the pods' cgroup parents
    /// start with (CRI's namespace is shared by every CRI test).
    pub fn cgroup_parent(&self) -> String {
        if self.namespace == "k8s.io" {
            format!(
                "osvm-test-{}-{}",
                std::process::id(),
                self.dir
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .rsplit('-')
                    .next()
                    .unwrap()
            )
        } else {
            self.namespace.clone()
        }
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

    /// `ctr run` with osvm's runtime, the native snapshotter (the overlay one, containerd's
    /// default, has a test of its own and CRI uses it) and `args`.
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
        // Containers a failed test left (this containerd's tasks; CRI's namespace is shared by
        // every CRI test): their roots are unmounted (innermost first), directories removed.
        let mounts = Path::new("/run/osvm-shim").join(&self.namespace);
        let ours: Vec<PathBuf> = std::fs::read_dir(
            self.dir
                .join("state/io.containerd.runtime.v2.task")
                .join(&self.namespace),
        )
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| mounts.join(e.file_name()))
        .collect();
        let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .filter(|p| ours.iter().any(|dir| Path::new(p).starts_with(dir)))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for dir in &ours {
            let _ = std::fs::remove_dir_all(dir);
        }
        // `ctr`'s namespace directory is this test's own (CRI's k8s.io is every CRI test's).
        if self.namespace != "k8s.io" {
            let _ = std::fs::remove_dir(&mounts);
        }
        if let Some(bridge) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", bridge]).output();
        }
        // The groups the containers were made under, in every hierarchy, innermost first
        // (each container's own group went with its sandbox; a group still busy stays).
        let parent = self.cgroup_parent();
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")));
        for h in hierarchies {
            let top = h.join(&parent);
            let mut dirs: Vec<PathBuf> = Vec::new();
            let mut stack = vec![top.clone()];
            while let Some(d) = stack.pop() {
                if let Ok(entries) = std::fs::read_dir(&d) {
                    for e in entries.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                    dirs.push(d);
                }
            }
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
        if std::env::var_os("OSVM_KEEP_CTR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A busybox image made with umoci (no registry), and the pause image (the same, sleeping), as
/// docker archives for `ctr image import`.
fn build_image(dir: &Path) -> [PathBuf; 2] {
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
    for applet in [
        "sh", "echo", "true", "sleep", "cat", "grep", "id", "mkdir", "httpd", "wget", "hostname",
        "ls",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    ok(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    ok(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "/bin/sh"]));
    let pause = format!("{}:pause", layout.display());
    ok(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--tag",
        "pause",
        "--config.cmd",
        "/bin/sleep",
        "--config.cmd",
        "2147483647",
    ]));
    let archive = |from: &str, name: &str, file: &str| {
        let archive = dir.join(file);
        ok(Command::new("skopeo").args([
            "copy",
            &format!("oci:{from}"),
            &format!("docker-archive:{}:{name}", archive.display()),
        ]));
        archive
    };
    [
        archive(&image, IMAGE, "busybox.tar"),
        archive(&pause, PAUSE_IMAGE, "pause.tar"),
    ]
}

pub fn started(test: &str) -> Option<Containerd> {
    if let Some((feature, why)) = missing() {
        osvm_testkit::skip(feature, test, &why);
        return None;
    }
    Some(Containerd::start(test))
}

/// A private containerd with CRI, or why this host cannot run one.
pub fn started_cri(test: &str) -> Option<Containerd> {
    let missing = missing().or_else(|| {
        if let Some(why) = cri::missing() {
            return Some(("containerd", why));
        }
        ["bridge", "host-local", "loopback"]
            .iter()
            .find(|p| !Path::new("/usr/lib/cni").join(p).exists())
            .map(|p| {
                (
                    "containerd",
                    format!(
                        "the CNI plugin /usr/lib/cni/{p} is missing \
                         (apt-get install containernetworking-plugins)"
                    ),
                )
            })
    });
    if let Some((feature, why)) = missing {
        osvm_testkit::skip(feature, test, &why);
        return None;
    }
    Some(Containerd::start_cri(test))
}

/// Prints the bench table of `times` (one row per `(runtime, label)`, osvm's first, runc's
/// second) and osvm's median against runc's, as `label_ratio` names the comparison.
pub fn print_runs(rows: &[(&str, &str)], times: &mut [Vec<Duration>], label_ratio: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| runtime | median | p90 | min |");
    println!("|---|---:|---:|---:|");
    let mut medians = Vec::new();
    for ((_, name), v) in rows.iter().zip(times.iter_mut()) {
        v.sort();
        let median = v[v.len() / 2];
        medians.push(median);
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(median),
            ms(v[(v.len() * 9) / 10]),
            ms(v[0])
        );
    }
    println!(
        "\n{label_ratio}: median {:.2}x ({:+.1} ms)",
        ms(medians[0]) / ms(medians[1]),
        ms(medians[0]) - ms(medians[1])
    );
}
