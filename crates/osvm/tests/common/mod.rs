//! Shared helpers for osvm's integration tests: paths to the built binaries, a private state
//! directory per test, and the checks that decide whether a test can run on this host.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `osvm` binary under test.
pub fn osvm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_osvm"))
}

/// The directory holding the built binaries (bound into sandboxes as `/probe`).
pub fn bin_dir() -> PathBuf {
    osvm_bin()
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

/// `osvm-probe` from the `osvm-testkit` crate: next to `osvm` when the workspace was built with
/// all its targets (as `.ci/run` does), else built here once, into a target directory of its own
/// under `CARGO_TARGET_TMPDIR` (`cargo test` alone builds no other package's binaries, and the
/// build directory it uses stays locked while it runs).
pub fn probe_bin() -> PathBuf {
    let p = bin_dir().join("osvm-probe");
    if p.exists() {
        return p;
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("testkit-target");
            let release = bin_dir().ends_with("release");
            let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "osvm-testkit",
                "--bin",
                "osvm-probe",
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo to build osvm-probe");
            assert!(status.success(), "building osvm-probe failed: {status}");
            let built = target
                .join(if release { "release" } else { "debug" })
                .join("osvm-probe");
            assert!(
                built.exists(),
                "{} is missing after its build",
                built.display()
            );
            built
        })
        .clone()
}

/// The static guest agent the tests built, when `OSVM_AGENT` named none.
static BUILT_AGENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The static guest agent every microVM image holds as its init: the one `OSVM_AGENT` names
/// (`.ci/run` sets it to the one it built), or built here once per test process (a release
/// build for the host target with `+crt-static`, into a target directory of its own under
/// `CARGO_TARGET_TMPDIR`; cargo makes that quick when nothing changed), then handed to osvm
/// through `OSVM_AGENT`.
pub fn guest_agent() -> Result<PathBuf, String> {
    if let Some(built) = BUILT_AGENT.get() {
        return Ok(built.clone());
    }
    // Named by the caller (`.ci/run` names the one it built). Otherwise it is built here even
    // when a static osvm-agent lies where `find_agent` would look: that one may be older than
    // the source, and a stale agent fails tests in ways that have nothing to do with a change.
    if let Some(named) = std::env::var_os("OSVM_AGENT") {
        return Ok(PathBuf::from(named));
    }
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(built) = BUILT_AGENT.get() {
        return Ok(built.clone());
    }
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("agent-target");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "osvm-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .arg("--target-dir")
        .arg(&target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("run cargo to build the static guest agent: {e}"))?;
    if !status.success() {
        return Err(format!("building the static guest agent failed: {status}"));
    }
    let built = target.join("x86_64-unknown-linux-gnu/release/osvm-agent");
    let _ = BUILT_AGENT.set(built.clone());
    Ok(built)
}

/// The directory holding `osvm-probe`, bound into sandboxes as `/probe`.
pub fn probe_dir() -> PathBuf {
    probe_bin()
        .parent()
        .expect("the probe has a directory")
        .to_path_buf()
}

/// Test `test` cannot run for lack of `feature` (see `osvm_testkit::FEATURES`): prints a skip
/// line past the harness's output capture, or fails under `OSVM_REQUIRE`.
pub fn skip(feature: &str, test: &str, why: &str) {
    osvm_testkit::skip(feature, test, why);
}

/// Returns false, printing why, when the sandbox cannot run here (not root, no cgroups).
pub fn sandbox_available(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("root", test, "needs root (cgroups and a mapped uid range)");
        return false;
    }
    if let Err(e) = osvm_sandbox::cgroup::Hierarchy::detect() {
        skip("root", test, &e.to_string());
        return false;
    }
    true
}

/// The osvm binary linked (or copied) into a 0755 directory of its own, removed when dropped:
/// tests that run osvm as another user (nobody) need a path that user can reach, which the
/// build's is not when the clone lies in a 0700 directory (`mktemp -d`).
pub struct AnyoneBin {
    dir: PathBuf,
    /// The binary's path.
    pub path: PathBuf,
}

impl AnyoneBin {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("osvm-test-{test}-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("osvm");
        let _ = std::fs::remove_file(&path);
        std::fs::hard_link(osvm_bin(), &path)
            .or_else(|_| std::fs::copy(osvm_bin(), &path).map(|_| ()))
            .unwrap();
        Self { dir, path }
    }
}

impl Drop for AnyoneBin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A state directory private to one test, removed when dropped (pass or fail).
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "osvm-test-{test}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o711)).unwrap();
        Self { path }
    }

    /// `osvm --state-dir <dir> ARGS...` (with `OSVM_AGENT` set when the tests built the guest
    /// agent themselves, see [`guest_agent`]).
    pub fn osvm(&self) -> Command {
        self.osvm_at(&osvm_bin())
    }

    /// [`StateDir::osvm`] running the binary at `exe` (see [`AnyoneBin`]).
    pub fn osvm_at(&self, exe: &Path) -> Command {
        let mut c = Command::new(exe);
        c.arg("--state-dir").arg(&self.path);
        if let Some(agent) = BUILT_AGENT.get() {
            c.env("OSVM_AGENT", agent);
        }
        c
    }

    /// Instance ids started under this state dir.
    pub fn instances(&self) -> Vec<String> {
        std::fs::read_dir(self.path.join("instances"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for StateDir {
    /// Stops every sandbox still running from this directory (a test that failed half-way, or
    /// a daemon that was only told to exit, leaves them running by design), removes the hub
    /// namespaces and the uplink's host table an engine on this directory made (a daemon keeps
    /// them when it stops; a test that failed before its own guard existed would leak them),
    /// then removes the directory.
    fn drop(&mut self) {
        let mut config = osvm_sandbox::SandboxConfig::new(osvm_bin());
        config.state_dir = self.path.clone();
        let runtime = osvm_sandbox::SandboxRuntime::new(config);
        for id in self.instances() {
            if let Ok(osvm_sandbox::Adopted::Running(instance)) = runtime.adopt(&id) {
                let _ = osvm_core::Instance::stop(&*instance, std::time::Duration::from_secs(2));
            }
        }
        let prefix = osvm_daemon::network::netns_prefix(&self.path);
        drop(NetnsPrefixGuard(format!("{prefix}-")));
        let tag = prefix.trim_start_matches("osvm-");
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &format!("osvm_{tag}")])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Every cgroup directory osvm may have created for `instance`.
pub fn cgroup_dirs(instance: &str) -> Vec<PathBuf> {
    ["memory", "cpu", "cpuacct", "pids", "unified", ""]
        .iter()
        .map(|c| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join("osvm")
                .join(instance)
        })
        .collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `osvm run` with the build directory bound at /probe and returns the output.
pub fn run_probe(state: &StateDir, flags: &[&str], probe_args: &[&str]) -> Output {
    let _ = probe_bin();
    let mut cmd = state.osvm();
    cmd.arg("run")
        .arg("-q")
        .arg("--bind")
        .arg(format!("{}:/probe", probe_dir().display()));
    cmd.args(flags)
        .arg("--")
        .arg("/probe/osvm-probe")
        .args(probe_args);
    cmd.output().expect("run osvm")
}

/// Whether hub stacks can run here (root, python3, nft, conntrack); prints why not.
pub fn hub_available(test: &str) -> bool {
    if !sandbox_available(test) {
        return false;
    }
    let has = |tool: &str| {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok()
    };
    if !std::path::Path::new("/usr/bin/python3").exists() || !has("nft") || !has("conntrack") {
        skip("hub", test, "needs python3, nft and conntrack");
        return false;
    }
    true
}

/// A daemon on a test's state directory; stopped (SIGTERM) when dropped.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(state: &StateDir) -> Self {
        Self::start_with(state, &[])
    }

    /// `osvm daemon ARGS...`, once its API socket answers.
    ///
    /// Once *its* socket answers: the socket a killed daemon left can still accept for a moment
    /// (a child it was forking holds a copy of the listening descriptor until that child execs
    /// or dies), so a connection alone could come from the dead daemon's socket, and the next
    /// command would then find nothing listening (seen in CI: `Connection refused` right after
    /// this returned). The new daemon's socket is a new file.
    pub fn start_with(state: &StateDir, args: &[&str]) -> Self {
        use std::os::unix::fs::MetadataExt;
        let socket = state.path.join("osvm.sock");
        // Inode and change time: an inode number alone may be reused at once for the new file.
        let file_id = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
        };
        let stale = file_id(&socket);
        let mut child = state.osvm().arg("daemon").args(args).spawn().unwrap();
        // A daemon adopts what an earlier one left before it listens, which for microVMs means
        // a control connection into each guest: under TCG on a loaded host, seconds each.
        let deadline = Instant::now() + Duration::from_secs(60);
        while (stale.is_some() && file_id(&socket) == stale)
            || UnixStream::connect(&socket).is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the daemon ended before it listened: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not listen on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, socket }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

pub fn ps(state: &StateDir) -> Vec<Value> {
    let o = run(state.osvm().args(["-o", "json", "ps"]));
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Polls `osvm ps` until `ok` holds (bounded).
pub fn wait_ps(state: &StateDir, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views = ps(state);
        if ok(&views) {
            return views;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {views:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the network namespaces it names when dropped, pass or fail.
pub struct NetnsGuard(pub Vec<String>);

/// Removes every network namespace whose name starts with its prefix when dropped, pass or
/// fail (a hub's namespaces, including those made after the guard, e.g. by a hot-swap).
pub struct NetnsPrefixGuard(pub String);

impl Drop for NetnsPrefixGuard {
    fn drop(&mut self) {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(&self.0) {
                let _ = Command::new("ip")
                    .args(["netns", "del", name])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The view of component `name` in `osvm ps -o json` output.
pub fn view<'a>(views: &'a [Value], name: &str) -> &'a Value {
    views
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no component {name} in {views:?}"))
}

/// Polls `osvm ps` until `ok` holds, for as long as a few TCG boots in parallel may take.
pub fn wait_long(state: &StateDir, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let views = ps(state);
        if ok(&views) {
            return views;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what}: {views:?}\nevents:\n{}",
            stdout(&run(state.osvm().arg("events")))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn status(state: &StateDir, name: &str) -> Value {
    let o = run(state.osvm().args(["-o", "json", "status", name]));
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `GET /` over a TCP stream; the whole response.
pub fn http_get(mut s: impl Read + Write) -> std::io::Result<String> {
    s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// `GET /` to `addr` from inside network namespace `ns`.
pub fn http_get_in(ns: &str, addr: SocketAddr) -> std::io::Result<String> {
    let ns = std::fs::File::open(format!("/run/netns/{ns}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        http_get(s)
    })
    .join()
    .unwrap()
}

/// What `osvm net show` says about a hub stack: the hub's namespace, and per component its
/// namespace and service address.
pub struct HubView {
    pub hub: String,
    pub netns: std::collections::BTreeMap<String, String>,
    pub service: std::collections::BTreeMap<String, std::net::Ipv4Addr>,
}

pub fn hub_view(state: &StateDir) -> HubView {
    let o = run(state.osvm().args(["-o", "json", "net", "show"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let net: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut view = HubView {
        hub: net["hub"].as_str().unwrap().to_owned(),
        netns: Default::default(),
        service: Default::default(),
    };
    for c in net["components"].as_array().unwrap() {
        let name = c["component"].as_str().unwrap_or_default().to_owned();
        if let Some(ns) = c["netns"].as_str() {
            view.netns.insert(name.clone(), ns.to_owned());
        }
        if let Some(s) = c["service"].as_str() {
            view.service.insert(name, s.parse().unwrap());
        }
    }
    view
}

/// Another machine for a test: a namespace joined to the host by a veth on
/// 198.51.100.`block`/30 (TEST-NET-2; the host `.block+1`, the machine `.block+2`, routing by
/// default through the host). Removed when dropped. Each test takes its own block.
pub struct OtherMachine {
    /// The namespace (`/run/netns/<ns>`).
    pub ns: String,
    /// The host's address on the link, which the machine reaches.
    pub host_addr: std::net::Ipv4Addr,
    host_if: String,
}

impl OtherMachine {
    /// `None`, after a SKIP, when the host itself uses 198.51.100.0/24.
    pub fn new(test: &str, name: &str, block: u8) -> Option<Self> {
        let addrs = Command::new("ip").args(["-br", "addr"]).output().ok()?;
        if String::from_utf8_lossy(&addrs.stdout).contains(" 198.51.100.") {
            skip(
                "hub",
                test,
                "the host uses 198.51.100.0/24, the test's other machine's network",
            );
            return None;
        }
        let me = Self {
            ns: format!("osvmt-{name}-{}", std::process::id()),
            host_addr: std::net::Ipv4Addr::new(198, 51, 100, block + 1),
            host_if: format!("osv{name}{:05x}", std::process::id() & 0xfffff),
        };
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {}", args.join(" "));
        };
        let theirs = format!("198.51.100.{}/30", block + 2);
        ip(&["netns", "add", &me.ns]);
        ip(&[
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &me.ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", me.host_addr),
            "dev",
            &me.host_if,
        ]);
        ip(&["link", "set", &me.host_if, "up"]);
        ip(&["-n", &me.ns, "addr", "add", &theirs, "dev", "eth0"]);
        ip(&["-n", &me.ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &me.ns, "link", "set", "lo", "up"]);
        let via = me.host_addr.to_string();
        ip(&["-n", &me.ns, "route", "add", "default", "via", &via]);
        Some(me)
    }
}

impl Drop for OtherMachine {
    fn drop(&mut self) {
        for args in [
            vec!["link", "del", self.host_if.as_str()],
            vec!["netns", "del", self.ns.as_str()],
        ] {
            let _ = Command::new("ip")
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// A free TCP port on the host's loopback (free when asked; a test publishes on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET / on `127.0.0.1:port` from the host (a published port).
pub fn http_get_host(port: u16) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    http_get(s)
}

/// The reference MCP servers from the npm registry (pinned versions).
const REFERENCE_MCP_SERVERS: &[&str] = &[
    "@modelcontextprotocol/server-filesystem@2026.8.31",
    "@modelcontextprotocol/server-everything@2026.8.31",
];

/// The `node_modules` holding the reference MCP servers, installed once per target directory
/// with the machine's npm; why not, when the host lacks Node.js or npm or the registry.
#[allow(dead_code)]
pub fn reference_mcp_servers() -> Result<PathBuf, String> {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if !std::path::Path::new("/usr/bin/node").exists() {
        return Err("needs Node.js at /usr/bin/node".into());
    }
    let servers = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mcp-fixtures/servers");
    let node_modules = servers.join("node_modules");
    if !node_modules
        .join("@modelcontextprotocol/server-filesystem/dist/index.js")
        .exists()
    {
        std::fs::create_dir_all(&servers).map_err(|e| e.to_string())?;
        let o = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&servers)
            .args(REFERENCE_MCP_SERVERS)
            .output()
            .map_err(|e| format!("npm install of the reference MCP servers: cannot run: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "npm install of the reference MCP servers failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    Ok(node_modules)
}

/// Whether virtiofsd (guests' shared directories and a unikernel's identity) is here; prints
/// the skip of `test` (of `feature`) when not.
#[allow(dead_code)]
pub fn virtiofsd_available(feature: &str, test: &str) -> bool {
    let found = osvm_guest::find_program("virtiofsd").is_some();
    if !found {
        skip(
            feature,
            test,
            "needs virtiofsd (cargo install --locked virtiofsd@1.14.0, with libseccomp-dev and \
             libcap-ng-dev)",
        );
    }
    found
}

/// The official Python MCP SDK the tests drive osvm's gateway with (a third party's client).
pub const PYTHON_MCP_SDK: &str = "mcp==2.3.0";

/// A python with [`PYTHON_MCP_SDK`], in a venv made once per target directory; why not, when
/// the host lacks python3's venv or the package index.
#[allow(dead_code)]
pub fn python_mcp_sdk() -> Result<PathBuf, String> {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mcp-fixtures/venv");
    let python = venv.join("bin/python");
    let has_sdk = Command::new(&python)
        .args(["-c", "import mcp.client.streamable_http"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_sdk {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let o = cmd
            .output()
            .map_err(|e| format!("{what}: cannot run: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(&python).args(["-m", "pip", "install", "-q", PYTHON_MCP_SDK]),
        "pip install of the MCP Python SDK",
    )?;
    Ok(python)
}

/// Tests that reach a published port from the host take turns (see the testkit's).
#[allow(unused_imports)]
pub use osvm_testkit::host_route_turn;

/// A client's stdio session through the bridge (`osvm mcp serve --as <client>`), spoken in raw
/// JSON-RPC lines so the test controls ids, pipelining and cancellation.
pub struct RawSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    rx: std::sync::mpsc::Receiver<Value>,
}

impl RawSession {
    pub fn open(state: &StateDir, client: &str) -> Self {
        let mut child = state
            .osvm()
            .args(["mcp", "serve", "--as", client])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Value>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut s = Self { child, stdin, rx };
        s.send(r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#);
        let init = s
            .next(Duration::from_secs(10))
            .expect("initialize answered");
        assert_eq!(init["id"], 0, "{init}");
        s.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        s
    }

    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn call(&mut self, id: i64, tool: &str, args: Value) {
        let msg = serde_json::json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": { "name": tool, "arguments": args },
        });
        self.send(&msg.to_string());
    }

    pub fn next(&self, within: Duration) -> Option<Value> {
        self.rx.recv_timeout(within).ok()
    }

    /// The answer to `id`; any other message first is a failure.
    pub fn answer(&self, id: i64, within: Duration) -> Value {
        let v = self
            .next(within)
            .unwrap_or_else(|| panic!("no answer for id {id} within {within:?}"));
        assert_eq!(v["id"], id, "expected the answer to {id}, got {v}");
        v
    }
}

impl Drop for RawSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8 is this host).
pub fn connect_from(from: std::net::Ipv4Addr, to: &str) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::os::fd::AsRawFd;
    let to: std::net::SocketAddr = to.parse().map_err(std::io::Error::other)?;
    let std::net::SocketAddr::V4(to) = to else {
        return Err(std::io::Error::other("an IPv4 address"));
    };
    let s = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        s.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0)),
    )?;
    connect(s.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(s))
}

/// Idle connections to one of the daemon's HTTP fronts at `addr` (127.0.0.1) that send
/// nothing: 400 from one source hold at most `per_source` of the daemon's descriptors, and
/// meanwhile `answers` (from 127.0.0.1, another source) is true; 400 from many sources hold at
/// most `bound`; once they close, `answers` is true again.
pub fn assert_idle_connections_are_bounded(
    daemon: &Daemon,
    addr: &str,
    bound: usize,
    per_source: usize,
    answers: impl Fn() -> bool,
) {
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
            .unwrap()
            .count()
    };
    let held_after_accept = |before: usize, idle: &[TcpStream], most: usize, what: &str| {
        // The daemon accepts them in the background: wait until it has (or holds too many).
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && fds() < before + most {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        let during = fds();
        assert!(
            during <= before + most + 16,
            "{} idle connections {what}: {before} -> {during} descriptors",
            idle.len()
        );
    };
    let one = std::net::Ipv4Addr::new(127, 0, 0, 3);
    let before = fds();
    let from_one: Vec<TcpStream> = (0..400)
        .filter_map(|_| connect_from(one, addr).ok())
        .collect();
    held_after_accept(before, &from_one, per_source, "from one source");
    assert!(
        answers(),
        "another source is not served while one holds its share"
    );
    drop(from_one);
    // Closed connections leave the daemon as it notices them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fds() > before + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = fds();
    let from_many: Vec<TcpStream> = (0..400)
        .filter_map(|i| connect_from(std::net::Ipv4Addr::new(127, 0, 1, i as u8 / 4), addr).ok())
        .collect();
    held_after_accept(before, &from_many, bound, "from many sources");
    drop(from_many);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !answers() {
        assert!(Instant::now() < deadline, "the front did not answer again");
        std::thread::sleep(Duration::from_millis(200));
    }
}
