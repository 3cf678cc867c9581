//! The `process` runtime: starts sandboxes from the (possibly multi-threaded) caller.
//!
//! The caller never forks into code that allocates. It prepares everything that needs only
//! file writes (the component's uid range, its data volume, the instance directory, log files,
//! cgroup with limits, `plan.json`), then spawns a fresh exec of the launcher binary
//! (`osvm __sandbox-monitor <instance id>`) with the log files as stdout/stderr, one end of a
//! `SOCK_SEQPACKET` socket as fd 3, the open plan as fd 4, and nothing else: every other
//! descriptor the caller holds, inherited or not, is closed before the exec. The monitor builds
//! the sandbox and answers `Started` (with a pidfd of the sandbox's init) or `Failed`.
//!
//! The state directory and everything in it are root's alone (directories 0700, files 0600):
//! plans hold the workload's environment, logs whatever it prints. The sandbox never walks a
//! path in there; what it mounts from there reaches it as detached mounts.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use osvm_core::{
    Adoption, DataKind, Endpoint, ExecResult, ExitStatus, Instance, InstanceStats, LaunchSpec,
    Runtime, RuntimeError, RuntimeKind, Wiring,
};

use crate::cgroup::{self, CgroupManager, Hierarchy};
use crate::ids::{self, IdKey};
use crate::launcher::exec::{EXEC_ARG, SETUP_FAILED as EXEC_SETUP_FAILED};
use crate::launcher::protocol::{
    Confinement, ExitRecord, MONITOR_FD, MonitorMsg, PLAN_FD, RunningRecord, process_start_time,
    recv_msg,
};
use crate::launcher::{MONITOR_ARG, PROCESS_NAME, pidfd_open};
use crate::plan::{DataPlan, IdMap, Plan};
use crate::volume::{self, VolumeError};

/// How long the sandbox may take to come up before the start is abandoned.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how the runtime works.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The binary that handles `__sandbox-monitor` (normally `osvm` itself).
    pub launcher: PathBuf,
    /// osvm's state directory: instances (plans, logs, exit records), component data volumes,
    /// the table of uid ranges.
    pub state_dir: PathBuf,
}

impl SandboxConfig {
    /// The default state directory: `/var/lib/osvm` as root, `$XDG_STATE_HOME/osvm` (or
    /// `~/.local/state/osvm`) otherwise.
    pub fn default_state_dir() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/osvm");
        }
        if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("osvm");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        PathBuf::from(home).join(".local/state/osvm")
    }

    /// A config using the default state directory and, as launcher, the small
    /// [`LAUNCHER_NAME`] binary beside `exe` if there is one, else `exe` itself (which must
    /// call [`crate::run_if_requested`] first thing, as `osvm` does). Both run the same code;
    /// the small binary starts about 0.8 ms sooner, and every sandbox start and `exec` pays
    /// that start.
    pub fn new(exe: PathBuf) -> Self {
        let beside = exe.parent().map(|dir| dir.join(LAUNCHER_NAME));
        let launcher = match beside {
            Some(small) if small.is_file() => small,
            _ => exe,
        };
        Self {
            launcher,
            state_dir: Self::default_state_dir(),
        }
    }
}

/// The file name of the dedicated launcher binary (built with `osvm`, installed beside it).
pub const LAUNCHER_NAME: &str = "osvm-launcher";

/// How to start a sandbox, beyond its launch spec. The default: a fresh instance id, stdin
/// `/dev/null`, stdout and stderr into the instance's logs, no descriptors handed over.
#[derive(Default)]
pub struct StartOptions<'a> {
    /// The instance id, `<name>-<suffix>` (see [`new_instance_id`]): chosen by the caller so
    /// that a control plane can record it durably before the sandbox exists.
    pub id: Option<String>,
    /// What the workload reads on stdin (`osvm run -i`, an MCP server's stdio channel).
    pub stdin: Option<Stdio>,
    /// Where the workload writes its stdout itself (a pipe the caller reads: an MCP server's
    /// channel, a unikernel's serial port) instead of `stdout.log`; its stderr is still logged.
    pub stdout: Option<Stdio>,
    /// Where the workload (and the sandbox's setup, if it fails) writes its stderr instead of
    /// `stderr.log`: a container's stream that containerd reads.
    pub stderr: Option<File>,
    /// Descriptors the workload gets as fds 3, 4, ..., systemd style (`LISTEN_FDS`,
    /// `LISTEN_PID`): listening sockets (socket activation, kept by the caller so another
    /// instance can be given the same ones), a VM's TAP device.
    pub fds: &'a [std::os::fd::BorrowedFd<'a>],
    /// Keep `CAP_SETPCAP` and `CAP_SYS_CHROOT` of the sandbox's own user namespace (ambient,
    /// so they survive the exec) and nothing else, and allow `chroot`: for a helper of osvm's
    /// that confines itself further and then sets its own capabilities before it serves
    /// (virtiofsd running as root chroots into the directory it shares, then drops both). With
    /// it the helper can only narrow its view and drop what it has, over nothing outside its
    /// namespaces. Never for a component's workload.
    pub helper_caps: bool,
    /// The sandbox's control group, relative to each hierarchy's root (a container's
    /// `linux.cgroupsPath` under kubelet's pod group), instead of `osvm/<id>`: made with its
    /// missing parents, the controllers osvm needs enabled down to it.
    pub cgroup: Option<PathBuf>,
}

/// What an exec'd command gets instead of the workload's, where set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProcess {
    /// Its whole environment.
    #[serde(default)]
    pub env: Option<Vec<(String, String)>>,
    /// Its working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Its user.
    #[serde(default)]
    pub user: Option<osvm_core::RunAs>,
}

/// A fresh instance id for component `name`: `<name>-<8 hex digits>`.
pub fn new_instance_id(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// The `process` runtime.
pub struct SandboxRuntime {
    config: SandboxConfig,
    hierarchy: Result<Hierarchy, String>,
}

impl SandboxRuntime {
    /// Creates the runtime and detects the host's cgroup layout.
    pub fn new(config: SandboxConfig) -> Self {
        let hierarchy = Hierarchy::detect().map_err(|e| e.to_string());
        Self { config, hierarchy }
    }

    /// Where and how this runtime works.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Why this runtime cannot work here, if it cannot.
    pub fn unavailable_reason(&self) -> Option<String> {
        if let Err(e) = &self.hierarchy {
            return Some(e.clone());
        }
        if !nix::unistd::geteuid().is_root() {
            return Some(
                "osvm must run as root to create cgroups and map a uid range for sandboxes".into(),
            );
        }
        if !self.config.launcher.exists() {
            return Some(format!(
                "launcher {} does not exist",
                self.config.launcher.display()
            ));
        }
        None
    }

    fn unavailable(&self, reason: String) -> RuntimeError {
        RuntimeError::Unavailable {
            kind: RuntimeKind::Process,
            reason,
        }
    }

    /// Starts a sandbox for `spec` as `options` say, and returns its concrete handle.
    pub fn start_sandbox(
        &self,
        spec: &LaunchSpec,
        options: StartOptions<'_>,
    ) -> Result<SandboxInstance, RuntimeError> {
        let StartOptions {
            id,
            stdin,
            stdout,
            stderr: stderr_channel,
            fds: listen,
            helper_caps,
            cgroup: group,
        } = options;
        if let Some(group) = &group {
            let plain = !group.as_os_str().is_empty()
                && group
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(RuntimeError::InvalidSpec(format!(
                    "cgroup {}: a path below the hierarchy's root, without `.` or `..`, expected",
                    group.display()
                )));
            }
        }
        let id = id.unwrap_or_else(|| new_instance_id(&spec.name));
        let stdin = stdin.unwrap_or_else(Stdio::null);
        let channel = stdout;
        if listen.len() > crate::plan::MAX_LISTEN_FDS {
            return Err(RuntimeError::InvalidSpec(format!(
                "at most {} listening sockets can be handed over, not {}",
                crate::plan::MAX_LISTEN_FDS,
                listen.len()
            )));
        }
        if let Some(reason) = self.unavailable_reason() {
            return Err(self.unavailable(reason));
        }
        let hierarchy = *self
            .hierarchy
            .as_ref()
            .map_err(|e| self.unavailable(e.clone()))?;
        check_spec(spec)?;

        if !id.starts_with(&format!("{}-", spec.name)) || id.contains('/') || id.contains("..") {
            return Err(RuntimeError::InvalidSpec(format!(
                "instance id `{id}` must be `{}-<suffix>`",
                spec.name
            )));
        }
        let instances = self.config.state_dir.join("instances");
        let instance_dir = instances.join(&id);
        for dir in [&self.config.state_dir, &instances] {
            make_dir(dir)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&instance_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::InvalidSpec(format!(
                    "instance {id} exists already"
                )));
            }
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("create {}", instance_dir.display()),
                    e,
                ));
            }
        }
        let (key, release_ids) = self.id_key(spec, &id);
        let registry = Path::new(ids::REGISTRY);
        let id_map = ids::allocate(registry, &self.state_dir_abs(), &key)
            .map_err(|e| RuntimeError::Setup(format!("allocate a uid range: {e}")))?;
        let released = |e: RuntimeError| {
            if release_ids {
                let _ = ids::release(registry, &self.state_dir_abs(), &key, &id_map);
            }
            e
        };
        let data = self.data_plan(spec).map_err(released)?;
        let stdout_path = instance_dir.join("stdout.log");
        let stderr_path = instance_dir.join("stderr.log");
        let stdout_channel = channel.is_some();
        let stdout = match channel {
            Some(channel) => channel,
            None => Stdio::from(open_log(&stdout_path).map_err(released)?),
        };
        let stderr = match stderr_channel {
            Some(channel) => channel,
            None => open_log(&stderr_path).map_err(released)?,
        };

        let group = group.unwrap_or_else(|| Path::new(cgroup::OSVM_PARENT).join(&id));
        let cgroup = cgroup::create(hierarchy, &group, &spec.resources)
            .map_err(|e| released(RuntimeError::Setup(format!("create the cgroup: {e}"))))?;
        let plan = Plan {
            instance_id: id.clone(),
            launch: spec.clone(),
            instance_dir: instance_dir.clone(),
            data,
            cgroup: cgroup.paths(),
            id_map,
            release_ids,
            host_root: true,
            listen_fds: listen.len(),
            stdout_channel,
            helper_caps,
            build: crate::plan::BUILD.into(),
        };
        let plan_path = instance_dir.join("plan.json");
        let written = serde_json::to_vec_pretty(&plan)
            .map_err(|e| RuntimeError::Setup(format!("serialize the plan: {e}")))
            .and_then(|b| {
                write_private(&plan_path, &b).map_err(|e| RuntimeError::io("write plan.json", e))
            });
        if let Err(e) = written {
            let _ = cgroup.remove();
            return Err(released(e));
        }

        let listen: Vec<i32> = listen.iter().map(|fd| fd.as_raw_fd()).collect();
        match spawn_monitor(
            &self.config.launcher,
            &id,
            &plan_path,
            stdin,
            stdout,
            stderr,
            &listen,
        ) {
            Ok((child, socket)) => {
                let started = receive_start(&socket, START_TIMEOUT);
                match started {
                    Ok((confinement, init_pidfd)) => {
                        let monitor_pidfd = pidfd_open(child.id() as i32)
                            .map_err(|e| RuntimeError::io("pidfd_open of the monitor", e))?;
                        Ok(SandboxInstance {
                            id,
                            name: spec.name.clone(),
                            instance_dir,
                            stdout: stdout_path,
                            stderr: stderr_path,
                            launcher: self.config.launcher.clone(),
                            monitor: Mutex::new(Some(child)),
                            monitor_pidfd,
                            init_pidfd,
                            confinement,
                            readonly_root: spec.readonly_root,
                            memory_limit: spec.resources.memory_bytes,
                            rootfs: root_name(spec),
                            cgroup,
                            exit: Mutex::new(None),
                        })
                    }
                    Err(e) => {
                        let mut child = child;
                        // After `Failed` the monitor has cleaned up and is exiting; after a
                        // timeout it must go (its init follows through PR_SET_PDEATHSIG).
                        let _ = child.kill();
                        let _ = child.wait();
                        let _ = cgroup.kill_all();
                        let _ = cgroup.remove();
                        Err(released(e))
                    }
                }
            }
            Err(e) => {
                let _ = cgroup.remove();
                Err(released(e))
            }
        }
    }

    /// The state directory as an absolute path: what names it in the host-wide registry of uid
    /// ranges.
    fn state_dir_abs(&self) -> PathBuf {
        fs::canonicalize(&self.config.state_dir).unwrap_or_else(|_| self.config.state_dir.clone())
    }

    /// What holds the uid range of an instance of `spec`, and whether the range is the
    /// instance's alone (given back when it ends).
    fn id_key(&self, spec: &LaunchSpec, id: &str) -> (IdKey, bool) {
        match (spec.data, &spec.stack) {
            (DataKind::Ephemeral, _) => (IdKey::Instance(id.to_string()), true),
            (DataKind::Persistent, Some(stack)) => (
                IdKey::Component {
                    stack: stack.clone(),
                    name: spec.name.clone(),
                },
                false,
            ),
            (DataKind::Persistent, None) => (IdKey::Run(spec.name.clone()), false),
        }
    }

    /// The host uid range component `name` of `stack` runs under (allocated now if it has
    /// none yet): the owner of its user namespace, and of files delivered into it.
    pub fn component_ids(&self, stack: &str, name: &str) -> Result<IdMap, RuntimeError> {
        make_dir(&self.config.state_dir)?;
        ids::allocate(
            Path::new(ids::REGISTRY),
            &self.state_dir_abs(),
            &IdKey::Component {
                stack: stack.into(),
                name: name.into(),
            },
        )
        .map_err(|e| RuntimeError::Setup(format!("allocate a uid range: {e}")))
    }

    /// Where a persistent component's data volume lives:
    /// `data/stacks/<stack>/<component>.img` for a stack's components, `data/run/<name>.img`
    /// for `osvm run --name`.
    pub fn volume_path(&self, spec: &LaunchSpec) -> PathBuf {
        let data_root = self.config.state_dir.join("data");
        let parent = match &spec.stack {
            Some(stack) => data_root.join("stacks").join(stack),
            None => data_root.join("run"),
        };
        parent.join(format!("{}.img", spec.name))
    }

    /// What the instance gets at `/data`, its volume made if it is the first start.
    fn data_plan(&self, spec: &LaunchSpec) -> Result<DataPlan, RuntimeError> {
        let bytes = spec.resources.disk();
        if spec.data == DataKind::Ephemeral {
            return Ok(DataPlan::Scratch { bytes });
        }
        let image = self.volume_path(spec);
        let mut dir = self.config.state_dir.clone();
        for part in image
            .strip_prefix(&self.config.state_dir)
            .unwrap_or(&image)
            .parent()
            .into_iter()
            .flat_map(Path::components)
        {
            dir.push(part);
            make_dir(&dir)?;
        }
        volume::ensure_image(&image, bytes).map_err(|e| match e {
            VolumeError::Unavailable(reason) => RuntimeError::Unavailable {
                kind: RuntimeKind::Process,
                reason,
            },
            other => RuntimeError::Setup(format!("the data volume: {other}")),
        })?;
        Ok(DataPlan::Volume { image, bytes })
    }
}

/// What a command run with [`SandboxInstance::exec`] did.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Its exit code (128 + N when killed by signal N); `None` when it timed out.
    pub code: Option<i32>,
    /// It ran past its timeout and was killed.
    pub timed_out: bool,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
}

/// The pid of a live monitor of instance `id`, found through `/proc/*/cmdline`.
fn monitor_of(id: &str) -> Option<i32> {
    let want = id.as_bytes();
    fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0);
            let _exe = args.next()?;
            (args.next()? == MONITOR_ARG.as_bytes() && args.next()? == want).then_some(pid)
        })
}

/// What [`SandboxRuntime::adopt`] finds in an instance directory.
pub enum Adopted {
    /// The sandbox still runs; here is a handle to it.
    Running(Box<SandboxInstance>),
    /// The sandbox has ended; this is how.
    Ended(ExitRecord),
}

impl SandboxRuntime {
    /// Finds instance `instance_id` again after the process that started it has gone (a daemon
    /// restart): through `running.json` and pidfds of its monitor and init, each checked against
    /// its recorded start time so that a recycled pid is never taken for the sandbox. A sandbox
    /// whose monitor died without recording an end is cleaned up (its init died with the monitor)
    /// and reported ended with an unknown status.
    pub fn adopt(&self, instance_id: &str) -> Result<Adopted, RuntimeError> {
        let dir = self.config.state_dir.join("instances").join(instance_id);
        let read = |name: &str| {
            fs::read(dir.join(name))
                .map_err(|e| RuntimeError::io(format!("read {}", dir.join(name).display()), e))
        };
        let parse_err = |name: &str, e: serde_json::Error| {
            RuntimeError::Setup(format!("{} is malformed: {e}", dir.join(name).display()))
        };
        if let Ok(bytes) = fs::read(dir.join("exit.json")) {
            return Ok(Adopted::Ended(
                serde_json::from_slice(&bytes).map_err(|e| parse_err("exit.json", e))?,
            ));
        }
        // The starter died before its plan was whole, so no monitor was started; the empty
        // groups it may have made already are all that is left.
        let never_started = |why: &str| {
            cgroup::remove_unrecorded(instance_id);
            RuntimeError::Setup(format!("instance {instance_id} never started ({why})"))
        };
        let plan_bytes = match fs::read(dir.join("plan.json")) {
            Ok(bytes) => bytes,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && monitor_of(instance_id).is_none() =>
            {
                return Err(never_started("its starter stopped before the launch plan"));
            }
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("read {}", dir.join("plan.json").display()),
                    e,
                ));
            }
        };
        let plan: Plan = match serde_json::from_slice(&plan_bytes) {
            Ok(plan) => plan,
            // Written by an osvm that wrote plans in place and died halfway.
            Err(e) if monitor_of(instance_id).is_none() => {
                return Err(never_started(&format!(
                    "its starter stopped while it wrote the launch plan: {e}"
                )));
            }
            Err(e) => return Err(parse_err("plan.json", e)),
        };
        if !dir.join("running.json").exists() {
            // The starter died while the sandbox was being set up. If its monitor still
            // runs, the sandbox is on its way: wait for it to come up (or fail). If no monitor
            // exists, it never started: clean up, and say so.
            if monitor_of(instance_id).is_some() {
                let deadline = std::time::Instant::now() + START_TIMEOUT;
                while !dir.join("running.json").exists()
                    && !dir.join("exit.json").exists()
                    && std::time::Instant::now() < deadline
                    && monitor_of(instance_id).is_some()
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return self.adopt(instance_id);
            }
            let cgroup = cgroup::open(&plan.cgroup);
            let _ = cgroup.kill_all();
            let _ = cgroup.remove();
            return Err(RuntimeError::Setup(format!(
                "instance {instance_id} never started (no monitor and no running record)"
            )));
        }
        let running: RunningRecord = serde_json::from_slice(&read("running.json")?)
            .map_err(|e| parse_err("running.json", e))?;
        let same_process = |pid: i32, start: u64| -> Option<OwnedFd> {
            let fd = pidfd_open(pid).ok()?;
            // Checked after the pidfd exists: if the start time matches now, the pidfd refers to
            // the recorded process, whatever happens to the pid later.
            (process_start_time(pid) == Some(start)).then_some(fd)
        };
        let monitor = same_process(running.monitor_pid, running.monitor_start);
        let init = same_process(running.confinement.init_pid, running.init_start);
        let cgroup = cgroup::open(&plan.cgroup);
        match (monitor, init) {
            (Some(monitor_pidfd), Some(init_pidfd)) => {
                Ok(Adopted::Running(Box::new(SandboxInstance {
                    id: plan.instance_id.clone(),
                    name: plan.launch.name.clone(),
                    stdout: dir.join("stdout.log"),
                    stderr: dir.join("stderr.log"),
                    instance_dir: dir,
                    launcher: self.config.launcher.clone(),
                    monitor: Mutex::new(None),
                    monitor_pidfd,
                    init_pidfd,
                    confinement: running.confinement,
                    readonly_root: plan.launch.readonly_root,
                    memory_limit: plan.launch.resources.memory_bytes,
                    rootfs: root_name(&plan.launch),
                    cgroup,
                    exit: Mutex::new(None),
                })))
            }
            _ => {
                // The monitor may have finished between our two looks.
                if let Ok(bytes) = fs::read(dir.join("exit.json")) {
                    return Ok(Adopted::Ended(
                        serde_json::from_slice(&bytes).map_err(|e| parse_err("exit.json", e))?,
                    ));
                }
                let _ = cgroup.kill_all();
                let _ = cgroup.remove();
                let record = ExitRecord {
                    status: ExitStatus {
                        code: None,
                        signal: None,
                        oom_killed: false,
                    },
                    stats: None,
                    finished_at_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                };
                let bytes = serde_json::to_vec_pretty(&record)
                    .map_err(|e| RuntimeError::Setup(format!("serialize the exit record: {e}")))?;
                fs::write(dir.join("exit.json"), bytes)
                    .map_err(|e| RuntimeError::io("write exit.json", e))?;
                Ok(Adopted::Ended(record))
            }
        }
    }
}

impl Runtime for SandboxRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn start(&self, spec: &LaunchSpec, wiring: Wiring) -> Result<Box<dyn Instance>, RuntimeError> {
        let fds: Vec<_> = wiring.fds.iter().map(AsFd::as_fd).collect();
        let options = StartOptions {
            id: Some(wiring.id),
            stdin: wiring.stdin.map(Stdio::from),
            stdout: wiring.stdout.map(Stdio::from),
            stderr: None,
            fds: &fds,
            // A component's workload never keeps a capability.
            helper_caps: false,
            cgroup: None,
        };
        Ok(Box::new(self.start_sandbox(spec, options)?))
    }

    fn adopt(&self, id: &str) -> Result<Adoption, RuntimeError> {
        Ok(match SandboxRuntime::adopt(self, id)? {
            Adopted::Running(inst) => Adoption::Running(inst),
            Adopted::Ended(record) => Adoption::Ended(record.status),
        })
    }

    fn stop_leftovers(&self, id: &str) {
        if let Ok(Adopted::Running(inst)) = SandboxRuntime::adopt(self, id) {
            let _ = inst.stop(Duration::from_secs(10));
        }
    }
}

fn check_spec(spec: &LaunchSpec) -> Result<(), RuntimeError> {
    // Names become host paths (instance and state directories): keep them to a safe alphabet.
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    for (what, name) in [("name", Some(&spec.name)), ("stack", spec.stack.as_ref())] {
        if let Some(name) = name
            && !name_ok(name)
        {
            return Err(RuntimeError::InvalidSpec(format!(
                "{what} `{name}` must be 1-63 characters of a-z, 0-9 and '-'"
            )));
        }
    }
    if spec.command.is_empty() {
        return Err(RuntimeError::InvalidSpec("the command is empty".into()));
    }
    for b in &spec.binds {
        b.check().map_err(RuntimeError::InvalidSpec)?;
        if !b.source.exists() {
            return Err(RuntimeError::InvalidSpec(format!(
                "bind source {} does not exist",
                b.source.display()
            )));
        }
    }
    if let Some(user) = &spec.user {
        let mut ids = std::iter::once(user.uid)
            .chain(std::iter::once(user.gid))
            .chain(user.groups.iter().copied());
        if let Some(id) = ids.find(|id| *id >= crate::ids::RANGE) {
            return Err(RuntimeError::InvalidSpec(format!(
                "user or group id {id} is outside the sandbox's ids (0-{})",
                crate::ids::RANGE - 1
            )));
        }
    }
    if let Some(overlay) = &spec.rootfs_overlay {
        if spec.rootfs.is_some() {
            return Err(RuntimeError::InvalidSpec(
                "a root is a directory (rootfs) or an overlay (rootfs_overlay), not both".into(),
            ));
        }
        overlay.check().map_err(RuntimeError::InvalidSpec)?;
        let mut layers = overlay
            .lower
            .iter()
            .chain(&overlay.upper)
            .chain(&overlay.work);
        if let Some(layer) = layers.find(|l| !l.is_dir()) {
            return Err(RuntimeError::InvalidSpec(format!(
                "overlay layer {} is not a directory",
                layer.display()
            )));
        }
    }
    if let Some(root) = &spec.rootfs
        && !root.is_dir()
    {
        return Err(RuntimeError::InvalidSpec(format!(
            "rootfs {} is not a directory",
            root.display()
        )));
    }
    Ok(())
}

/// What names a custom root: its directory, or an overlay root's upper (else top) layer.
fn root_name(spec: &LaunchSpec) -> Option<PathBuf> {
    spec.rootfs
        .clone()
        .or_else(|| spec.rootfs_overlay.as_ref().map(|o| o.name().to_path_buf()))
}

/// Makes `path` a directory only root may enter (0700), or makes an existing one so.
fn make_dir(path: &Path) -> Result<(), RuntimeError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A state directory made by an older osvm was 0711 or 0755.
            let meta = fs::symlink_metadata(path)
                .map_err(|e| RuntimeError::io(format!("stat {}", path.display()), e))?;
            if !meta.is_dir() {
                return Err(RuntimeError::InvalidSpec(format!(
                    "{} is not a directory",
                    path.display()
                )));
            }
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                    .map_err(|e| RuntimeError::io(format!("chmod 700 {}", path.display()), e))?;
            }
            Ok(())
        }
        Err(e) => Err(RuntimeError::io(format!("create {}", path.display()), e)),
    }
}

/// Writes `bytes` to `path` (0600) whole or not at all: beside it first, then renamed over it,
/// so that a starter killed halfway leaves no half-written file (an empty `plan.json` once made
/// adoption fail without removing the groups the starter had made).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut beside = path.as_os_str().to_owned();
    beside.push(".new");
    let beside = PathBuf::from(beside);
    let _ = fs::remove_file(&beside);
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&beside)?
        .write_all(bytes)?;
    fs::rename(&beside, path)
}

fn open_log(path: &Path) -> Result<File, RuntimeError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| RuntimeError::io(format!("open {}", path.display()), e))
}

/// `close_range(first, last, 0)`, async-signal-safe (for the child between fork and exec).
///
/// # Safety
/// Closes descriptors by number: the caller must own every descriptor in the range, which is
/// the case in a child about to exec.
unsafe fn close_range(first: u32, last: u32) -> std::io::Result<()> {
    // SAFETY: integer arguments only; see the function's contract.
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn spawn_monitor(
    launcher: &Path,
    id: &str,
    plan_path: &Path,
    stdin: Stdio,
    stdout: Stdio,
    stderr: File,
    listen: &[i32],
) -> Result<(Child, OwnedFd), RuntimeError> {
    // Fixed-size, filled before the fork: the pre-exec code must not allocate.
    let mut sources = [-1i32; crate::plan::MAX_LISTEN_FDS];
    sources[..listen.len()].copy_from_slice(listen);
    let count = listen.len();
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| RuntimeError::io("socketpair", e.into()))?;
    let plan = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(plan_path)
        .map_err(|e| RuntimeError::io("open plan.json", e))?;
    let theirs_raw = theirs.as_raw_fd();
    let plan_raw = plan.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(launcher);
    cmd.arg0(PROCESS_NAME)
        .arg(MONITOR_ARG)
        .arg(id)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (fcntl, dup2, close_range, setsid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Until the monitor runs (and can be found by its command line), it dies with the
            // thread that is starting it: a daemon killed between this fork and the exec must
            // not leave a monitor that a restarted daemon cannot see, takes for never started,
            // and starts the component a second time beside. The monitor clears this first.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Every descriptor that goes somewhere is first parked above every slot (a source
            // may sit where another one goes), then put in place; dup2 clears close-on-exec.
            let base = crate::plan::LISTEN_FD_BASE;
            let park = base + crate::plan::MAX_LISTEN_FDS as i32;
            let dup_high = |fd: i32| {
                let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, park);
                if high < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(high)
                }
            };
            let socket = dup_high(theirs_raw)?;
            let plan = dup_high(plan_raw)?;
            let mut parked = [-1i32; crate::plan::MAX_LISTEN_FDS];
            for k in 0..count {
                parked[k] = dup_high(sources[k])?;
            }
            for (from, to) in [(socket, MONITOR_FD), (plan, PLAN_FD)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (k, fd) in parked.iter().enumerate().take(count) {
                if libc::dup2(*fd, base + k as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Nothing else reaches the monitor, hence the sandbox: not the parked copies, not
            // what the caller's own caller left open (a shell's `exec 7<secret`).
            close_range(PLAN_FD as u32 + 1, base as u32 - 1)?;
            close_range((base + count as i32) as u32, u32::MAX)?;
            // A new session: the terminal's Ctrl-C reaches osvm, which stops the sandbox in
            // order, instead of reaching the sandbox directly.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| RuntimeError::io(format!("start the launcher {}", launcher.display()), e))?;
    drop(theirs);
    drop(plan);
    Ok((child, ours))
}

/// Waits until `fd` is readable (a pidfd: the process ended), up to `timeout` (`None`: forever).
fn poll_readable(fd: &OwnedFd, timeout: Option<Duration>) -> std::io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(rc > 0);
    }
}

fn receive_start(
    socket: &OwnedFd,
    timeout: Duration,
) -> Result<(Confinement, OwnedFd), RuntimeError> {
    if !poll_readable(socket, Some(timeout))
        .map_err(|e| RuntimeError::io("wait for the launcher", e))?
    {
        return Err(RuntimeError::Setup(format!(
            "the sandbox did not come up within {}s",
            timeout.as_secs()
        )));
    }
    let (parsed, fd) = recv_msg::<MonitorMsg>(socket.as_fd())
        .map_err(|e| RuntimeError::Setup(format!("read the launcher's report: {e}")))?
        .ok_or_else(|| {
            RuntimeError::Setup(
                "the launcher exited without reporting (see the instance's stderr.log)".into(),
            )
        })?;
    match parsed {
        MonitorMsg::Started(c) => {
            let fd = fd.ok_or_else(|| RuntimeError::Setup("the launcher sent no pidfd".into()))?;
            Ok((c, fd))
        }
        MonitorMsg::Failed { message } => Err(RuntimeError::Setup(message)),
    }
}

/// A running sandbox.
pub struct SandboxInstance {
    /// `<component>-<8 hex>`.
    id: String,
    /// The component's name.
    name: String,
    /// The instance directory (plan, logs, exit record).
    instance_dir: PathBuf,
    /// The workload's stdout log.
    stdout: PathBuf,
    /// The workload's stderr log.
    stderr: PathBuf,
    /// The binary that handles `__sandbox-exec` (for [`SandboxInstance::exec`]).
    launcher: PathBuf,
    /// The monitor process when it is our child (to reap); `None` for an adopted sandbox,
    /// whose monitor was started by an earlier process.
    monitor: Mutex<Option<Child>>,
    /// Readable when the monitor has exited.
    monitor_pidfd: OwnedFd,
    /// The sandbox's init, for race-free signalling.
    init_pidfd: OwnedFd,
    /// What confines the workload, as reported by the launcher.
    confinement: Confinement,
    /// Whether the root is read-only.
    readonly_root: bool,
    /// The memory limit of its cgroup.
    memory_limit: Option<u64>,
    /// The custom root directory, if any.
    rootfs: Option<PathBuf>,
    /// The sandbox's control group(s).
    cgroup: Box<dyn CgroupManager>,
    /// Cached once the instance has ended.
    exit: Mutex<Option<ExitStatus>>,
}

impl SandboxInstance {
    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host pids of every process in the sandbox's control group (its init, the workload and
    /// what it started, exec'd commands).
    pub fn pids(&self) -> Result<Vec<i32>, RuntimeError> {
        self.cgroup
            .pids()
            .map_err(|e| RuntimeError::Setup(format!("read the processes: {e}")))
    }

    /// Host pid of the sandbox's init (pid 1 inside); `/proc/<pid>/ns/*` are its namespaces.
    pub fn init_pid(&self) -> i32 {
        self.confinement.init_pid
    }

    /// Copies of the `count` listening sockets this sandbox was started with (its init keeps
    /// them at [`crate::plan::LISTEN_FD_BASE`] onwards), taken with `pidfd_getfd`: how a
    /// restarted daemon gets back the sockets it handed over.
    pub fn listening_sockets(&self, count: usize) -> Result<Vec<OwnedFd>, RuntimeError> {
        (0..count as i32)
            .map(|k| {
                // SAFETY: pidfd_getfd with a pidfd this instance owns; the result is a new fd
                // of this process, owned below.
                let fd = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_getfd,
                        self.init_pidfd.as_raw_fd(),
                        crate::plan::LISTEN_FD_BASE + k,
                        0,
                    )
                };
                if fd < 0 {
                    return Err(RuntimeError::io(
                        format!("take listening socket {k} back from {}", self.id),
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: fd was just returned by pidfd_getfd and nothing else owns it.
                Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
            })
            .collect()
    }

    /// Replaces the identity files the sandbox sees at `/run/osvm/identity` with the files of
    /// `from` (each atomically), through the monitor's descriptor of that file system (see
    /// [`crate::files`]). Fails for a sandbox started without identity files.
    pub fn refresh_identity(&self, from: &Path) -> Result<(), RuntimeError> {
        // SAFETY: pidfd_getfd with a pidfd this instance owns; the result is a new descriptor
        // of this process, owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                self.monitor_pidfd.as_raw_fd(),
                crate::files::IDENTITY_FD,
                0,
            )
        };
        if fd < 0 {
            return Err(RuntimeError::io(
                format!("reach the identity files of {}", self.id),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd was just returned by pidfd_getfd and nothing else owns it.
        let dir = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let is_dir = rustix::fs::fstat(&dir)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .unwrap_or(false);
        if !is_dir {
            return Err(RuntimeError::InvalidSpec(format!(
                "instance {} was started without identity files",
                self.id
            )));
        }
        crate::files::copy_into(dir.as_fd(), from).map_err(|e| {
            RuntimeError::io(
                format!(
                    "renew the identity files of {} from {}",
                    self.id,
                    from.display()
                ),
                e,
            )
        })
    }

    /// Opens one of the sandbox's namespaces (`net`, `mnt`, `pid`, ...) for `setns`, e.g. to
    /// probe its health from inside its network namespace. Fails once the sandbox has ended,
    /// so the file never belongs to a process that merely reused the pid.
    pub fn open_namespace(&self, ns: &str) -> Result<File, RuntimeError> {
        let path = format!("/proc/{}/ns/{ns}", self.confinement.init_pid);
        let file = File::open(&path).map_err(|e| RuntimeError::io(format!("open {path}"), e))?;
        // The pidfd refers to init itself: if it is not yet readable, init is alive, so the
        // pid we opened through is still init's.
        let ended = poll_readable(&self.init_pidfd, Some(Duration::ZERO))
            .map_err(|e| RuntimeError::io("poll the sandbox's init", e))?;
        if ended {
            return Err(RuntimeError::Setup("the sandbox has ended".into()));
        }
        Ok(file)
    }

    /// The instance directory.
    pub fn instance_dir(&self) -> &Path {
        &self.instance_dir
    }

    /// The raw confinement report.
    pub fn confinement_report(&self) -> &Confinement {
        &self.confinement
    }

    /// Waits up to `timeout` (`None`: forever) for the instance to end.
    pub fn wait_timeout(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<ExitStatus>, RuntimeError> {
        if let Some(s) = *self.exit.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(Some(s));
        }
        let ended = poll_readable(&self.monitor_pidfd, timeout)
            .map_err(|e| RuntimeError::io("wait for the sandbox", e))?;
        if !ended {
            return Ok(None);
        }
        let mut exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = *exit {
            return Ok(Some(s));
        }
        let monitor_status = match self
            .monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            Some(child) => child
                .wait()
                .map_err(|e| RuntimeError::io("reap the monitor", e))?
                .to_string(),
            None => "not a child of this process".to_string(),
        };
        let record: ExitRecord = fs::read(self.instance_dir.join("exit.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                RuntimeError::Setup(format!(
                    "the sandbox's monitor ended ({monitor_status}) without recording an exit status"
                ))
            })?;
        *exit = Some(record.status);
        Ok(Some(record.status))
    }

    /// Starts `command` inside this sandbox, confined like its workload (same namespaces,
    /// cgroup, Landlock rules, seccomp filter, no capabilities), with the given stdio. The child
    /// is the exec helper: it exits with the command's exit code (128 + the signal that ended
    /// it), or the helper's setup-failure code after writing `osvm exec: <reason>` to its stderr; killed,
    /// it takes the command with it. It is in a process group of its own.
    pub fn spawn_exec(
        &self,
        command: &[String],
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<std::process::Child, RuntimeError> {
        self.spawn_exec_as(command, &ExecProcess::default(), stdin, stdout, stderr)
    }

    /// [`Self::spawn_exec`] with the command's own environment, working directory or user
    /// instead of the workload's (a container's exec process, `ctr task exec --cwd`).
    pub fn spawn_exec_as(
        &self,
        command: &[String],
        process: &ExecProcess,
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<std::process::Child, RuntimeError> {
        if command.is_empty() {
            return Err(RuntimeError::InvalidSpec("the command is empty".into()));
        }
        if let Some(user) = &process.user
            && [user.uid, user.gid]
                .iter()
                .chain(&user.groups)
                .any(|id| *id >= crate::ids::RANGE)
        {
            return Err(RuntimeError::InvalidSpec(format!(
                "the exec's user or group ids are outside the sandbox's ids (0-{})",
                crate::ids::RANGE - 1
            )));
        }
        let process = serde_json::to_string(process)
            .map_err(|e| RuntimeError::InvalidSpec(format!("the exec's process: {e}")))?;
        let pidfd = self.init_pidfd.as_raw_fd();
        let plan_path = self.instance_dir.join("plan.json");
        let plan = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&plan_path)
            .map_err(|e| RuntimeError::io(format!("open {}", plan_path.display()), e))?;
        let plan_raw = plan.as_raw_fd();
        let mut cmd = Command::new(&self.launcher);
        cmd.arg0(PROCESS_NAME)
            .arg(EXEC_ARG)
            .arg(&self.id)
            .arg(crate::launcher::exec::PROCESS_ARG)
            .arg(process)
            .arg("--")
            .args(command)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe fcntl/dup2/close_range run.
        unsafe {
            cmd.pre_exec(move || {
                // Parked above the slots first: either may sit where the other goes.
                let park = |fd: i32| {
                    let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                    if high < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(high)
                    }
                };
                let (init, plan) = (park(pidfd)?, park(plan_raw)?);
                for (from, to) in [(init, MONITOR_FD), (plan, PLAN_FD)] {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                close_range(PLAN_FD as u32 + 1, u32::MAX)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| RuntimeError::io(format!("start {}", self.launcher.display()), e))?;
        drop(plan);
        Ok(child)
    }

    /// Runs `command` inside this sandbox, confined like its workload (same namespaces, cgroup,
    /// Landlock rules, seccomp filter, no capabilities), with its stdout and stderr captured.
    /// After `timeout` the command is killed and the output says so.
    pub fn exec(&self, command: &[String], timeout: Duration) -> Result<ExecOutput, RuntimeError> {
        let child = self.spawn_exec(command, Stdio::null(), Stdio::piped(), Stdio::piped())?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let (output, timed_out) = match rx.recv_timeout(timeout) {
            Ok(output) => (output, false),
            Err(_) => {
                // Still our unreaped child (the thread is waiting for it): the pid is its own.
                // Its child inside the sandbox follows through PR_SET_PDEATHSIG.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let output = rx.recv().map_err(|_| {
                    RuntimeError::Setup("the exec helper's waiter went away".into())
                })?;
                (output, true)
            }
        };
        let output = output.map_err(|e| RuntimeError::io("wait for the exec helper", e))?;
        if !timed_out && output.status.code() == Some(EXEC_SETUP_FAILED) {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if let Some(reason) = stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("osvm exec: "))
            {
                return Err(RuntimeError::Setup(reason.to_string()));
            }
        }
        Ok(ExecOutput {
            code: if timed_out {
                None
            } else {
                output.status.code()
            },
            timed_out,
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }

    /// The final record written when the sandbox ended (exit status and last usage).
    pub fn exit_record(&self) -> Option<ExitRecord> {
        fs::read(self.instance_dir.join("exit.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }
}

impl Instance for SandboxInstance {
    fn id(&self) -> &str {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        Some(self.confinement.init_pid as u32)
    }

    fn log_paths(&self) -> (PathBuf, PathBuf) {
        (self.stdout.clone(), self.stderr.clone())
    }

    fn wait(&self) -> Result<ExitStatus, RuntimeError> {
        self.wait_timeout(None)?
            .ok_or_else(|| RuntimeError::Setup("wait returned without an exit status".into()))
    }

    fn try_wait(&self) -> Result<Option<ExitStatus>, RuntimeError> {
        self.wait_timeout(Some(Duration::ZERO))
    }

    fn signal(&self, signal: i32) -> Result<(), RuntimeError> {
        // SAFETY: plain syscall on a pidfd we own; no memory is passed (siginfo is NULL).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.init_pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            // ESRCH: the sandbox already ended, which is what the caller wanted to know.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(RuntimeError::io(format!("send signal {signal}"), e));
            }
        }
        Ok(())
    }

    fn stop(&self, grace: Duration) -> Result<ExitStatus, RuntimeError> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        self.signal(libc::SIGTERM)?;
        if let Some(s) = self.wait_timeout(Some(grace))? {
            return Ok(s);
        }
        // SIGKILL to a pid namespace's init kills every process in it.
        self.signal(libc::SIGKILL)?;
        let _ = self.cgroup.kill_all();
        self.wait()
    }

    fn stats(&self) -> Result<InstanceStats, RuntimeError> {
        if self.try_wait()?.is_some()
            && let Some(record) = self.exit_record()
            && let Some(stats) = record.stats
        {
            return Ok(stats);
        }
        self.cgroup
            .stats()
            .map_err(|e| RuntimeError::Setup(format!("read usage: {e}")))
    }

    fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    fn set_cpu_weight(&self, weight: Option<u32>) -> Result<(), RuntimeError> {
        self.cgroup
            .set_cpu_weight(weight.unwrap_or(100))
            .map_err(|e| RuntimeError::Setup(format!("set the CPU weight: {e}")))
    }

    fn init_pid(&self) -> i32 {
        self.confinement.init_pid
    }

    fn instance_dir(&self) -> PathBuf {
        self.instance_dir.clone()
    }

    fn kill(&self) -> Result<(), RuntimeError> {
        // SIGKILL to a pid namespace's init kills every process in it.
        self.signal(libc::SIGKILL)
    }

    fn endpoint(&self) -> Result<Endpoint, RuntimeError> {
        self.open_namespace("net").map(Endpoint::Namespace)
    }

    fn reach(&self, port: u16) -> String {
        format!(
            "port {port} is in the component's own network namespace: nsenter -t {} -n curl http://127.0.0.1:{port}/",
            self.confinement.init_pid
        )
    }

    fn exec(&self, command: &[String], timeout: Duration) -> Result<ExecResult, RuntimeError> {
        SandboxInstance::exec(self, command, timeout).map(|o| ExecResult {
            code: o.code,
            stdout: o.stdout,
            stderr: o.stderr,
        })
    }

    fn refresh_identity(&self, dir: &Path) -> Result<(), RuntimeError> {
        SandboxInstance::refresh_identity(self, dir)
    }

    fn listening_sockets(&self, count: usize) -> Result<Vec<OwnedFd>, RuntimeError> {
        SandboxInstance::listening_sockets(self, count)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn confinement(&self) -> osvm_core::Confinement {
        let c = &self.confinement;
        osvm_core::Confinement::Sandbox(osvm_core::SandboxConfinement {
            id_map: c.id_map.clone(),
            cgroup: c.cgroup.clone(),
            seccomp_allowed: c.seccomp_allowed,
            landlock: c.landlock.status.clone(),
            tcp_bind_restricted: c.landlock.tcp_bind_restricted,
            root: match (&self.rootfs, self.readonly_root) {
                (Some(d), ro) => format!("{}{}", d.display(), if ro { " (read-only)" } else { "" }),
                (None, true) => "host /usr, /lib*, /bin, /sbin read-only; root read-only".into(),
                (None, false) => "host /usr, /lib*, /bin, /sbin read-only; root tmpfs".into(),
            },
        })
    }
}
