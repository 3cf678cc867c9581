//! kubelet's side of CRI for the tests: `osvm-cri-client` (crates/osvm-shim/cri-client, its
//! own workspace: k8s-cri's generated gRPC client needs protoc to build, which osvm's own build
//! does not), built here on first use, speaking JSON lines; its answers are the CRI responses
//! as JSON.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

/// CRI's enum values as the responses carry them.
pub const CONTAINER_RUNNING: i64 = 1;
pub const CONTAINER_EXITED: i64 = 2;
pub const SANDBOX_READY: i64 = 0;
pub const SANDBOX_NOTREADY: i64 = 1;

/// Why the client cannot be built here, if it cannot.
pub fn missing() -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v protoc"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!found).then(|| {
        "protoc is not installed (apt-get install protobuf-compiler): the CRI client \
         (k8s-cri) is generated with it"
            .to_owned()
    })
}

/// Builds the client once per test process; its path.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cri-client");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("cri-client/Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--locked", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "build osvm-cri-client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug/osvm-cri-client")
    })
}

pub struct Cri {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    /// Where pods' container logs go (kubelet's /var/log/pods).
    pub logs: PathBuf,
    /// The group the pods' groups are made in (kubelet's `kubepods`), one per containerd.
    pub cgroup_parent: String,
    /// The pods this client ran: a test that fails half-way still has them removed (their
    /// network namespaces, which containerd pins under /var/run/netns, go with them).
    ran: Vec<String>,
}

impl Drop for Cri {
    fn drop(&mut self) {
        for pod in std::mem::take(&mut self.ran) {
            let _ = self.call(json!({ "op": "stop_pod", "pod": pod }));
            let _ = self.call(json!({ "op": "remove_pod", "pod": pod }));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON string field.
pub fn text(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_owned()
}

impl Cri {
    pub fn connect(c: &super::Containerd) -> Self {
        let mut child = Command::new(binary())
            .arg(c.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start osvm-cri-client");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let logs = c.dir.join("pods");
        std::fs::create_dir_all(&logs).unwrap();
        Self {
            child,
            input,
            output,
            logs,
            cgroup_parent: c.cgroup_parent(),
            ran: Vec::new(),
        }
    }

    /// Sends `command`; the CRI response, or the gRPC error (or why the client did not
    /// answer: never a panic, so that `drop` may call it while a failed test unwinds).
    pub fn call(&mut self, command: Value) -> Result<Value, String> {
        writeln!(self.input, "{command}").map_err(|e| format!("write to osvm-cri-client: {e}"))?;
        let mut line = String::new();
        self.output
            .read_line(&mut line)
            .map_err(|e| format!("read from osvm-cri-client: {e}"))?;
        let mut answer: Value = serde_json::from_str(&line)
            .map_err(|e| format!("osvm-cri-client said {line:?}: {e}"))?;
        match answer.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_owned()),
            None => Ok(answer["ok"].take()),
        }
    }

    pub fn run_pod(&mut self, name: &str, handler: &str) -> Result<String, String> {
        let logs = self.logs.display().to_string();
        let cgroup = format!("/{}/{name}", self.cgroup_parent);
        let pod = self
            .call(json!({
                "op": "run_pod", "name": name, "logs": logs, "handler": handler,
                "cgroup_parent": cgroup,
            }))
            .map(|r| text(&r, "pod_sandbox_id"))?;
        self.ran.push(pod.clone());
        Ok(pod)
    }

    pub fn pod_status(&mut self, pod: &str) -> Value {
        self.call(json!({ "op": "pod_status", "pod": pod }))
            .unwrap()["status"]
            .take()
    }

    /// Creates and starts a container of [`super::IMAGE`] in `pod` running `command`, with
    /// volumes `(host, inside, readonly)`; returns its id.
    pub fn run(
        &mut self,
        pod: &str,
        name: &str,
        command: &[&str],
        mounts: &[(&Path, &str, bool)],
    ) -> Result<String, String> {
        self.run_as(pod, name, command, mounts, None)
    }

    /// [`Cri::run`] with runAsUser and runAsGroup.
    pub fn run_as(
        &mut self,
        pod: &str,
        name: &str,
        command: &[&str],
        mounts: &[(&Path, &str, bool)],
        user: Option<(i64, i64)>,
    ) -> Result<String, String> {
        let mounts: Vec<Value> = mounts
            .iter()
            .map(|(host, inside, readonly)| {
                json!({ "host": host, "inside": inside, "readonly": readonly })
            })
            .collect();
        let id = self
            .call(json!({
                "op": "create", "pod": pod, "name": name, "image": super::IMAGE,
                "command": command, "mounts": mounts, "run_as": user,
            }))
            .map(|r| text(&r, "container_id"))?;
        self.call(json!({ "op": "start", "id": id }))?;
        Ok(id)
    }

    pub fn status(&mut self, id: &str) -> Value {
        self.call(json!({ "op": "status", "id": id })).unwrap()["status"].take()
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> (i64, String, String) {
        let r = self
            .call(json!({ "op": "exec_sync", "id": id, "cmd": cmd, "timeout": 10 }))
            .unwrap();
        let bytes = |field: &str| {
            let b: Vec<u8> = serde_json::from_value(r[field].clone()).unwrap_or_default();
            String::from_utf8_lossy(&b).into_owned()
        };
        (
            r["exit_code"].as_i64().unwrap_or(-1),
            bytes("stdout"),
            bytes("stderr"),
        )
    }

    pub fn stats(&mut self, id: &str) -> Value {
        self.call(json!({ "op": "stats", "id": id })).unwrap()["stats"].take()
    }

    pub fn stop_container(&mut self, id: &str, timeout: i64) {
        self.call(json!({ "op": "stop_container", "id": id, "timeout": timeout }))
            .unwrap();
    }

    pub fn stop_pod(&mut self, pod: &str) {
        self.call(json!({ "op": "stop_pod", "pod": pod })).unwrap();
    }

    pub fn remove_pod(&mut self, pod: &str) {
        self.call(json!({ "op": "remove_pod", "pod": pod }))
            .unwrap();
    }

    /// The pod sandboxes containerd knows.
    pub fn pods(&mut self) -> Vec<Value> {
        let mut r = self.call(json!({ "op": "list_pods" })).unwrap();
        serde_json::from_value(r["items"].take()).unwrap_or_default()
    }
}
