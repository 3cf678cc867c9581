//! The shim and its task service: one shim process per pod (the crate's `spawn` groups by
//! CRI's `io.kubernetes.cri.sandbox-id`; a container outside a pod gets a shim of its own),
//! each container's process a sandbox of osvm's.
//!
//! Pods: the pod's sandbox container (CRI's pause process) runs in the network namespace
//! containerd made for the pod (CNI's), or, when containerd gives none (a host-network pod), in
//! a fresh one of its own: never the host's. Once it runs, the shim holds its network
//! namespace open, and each application container of the pod joins that namespace (its
//! sandbox's monitor joins it as host root before creating the container's user namespace, so
//! the container cannot reconfigure it). A spec naming another network namespace is refused.
//! Containers of one pod reach each other on localhost; a container of another pod does not.
//!
//! A container's root: containerd mounts nothing itself; the task's `rootfs` mounts (the
//! image's snapshot, overlay) are mounted here at `/run/osvm-shim/<namespace>/<id>/rootfs`,
//! under directories of mode 0711 (containerd makes the bundle 0700, which the sandbox's
//! mapped uid cannot cross), and unmounted at delete. Its stdout and stderr go to the FIFOs
//! containerd gives; stdin likewise when given.
//!
//! Exits: a thread per running container waits for the sandbox (its monitor is this process's
//! child; the crate's reaper is off so that the wait gets the status), records the exit code
//! in the shell's convention (128 + signal), wakes `wait` callers and publishes `TaskExit`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::api;
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    Config, DeleteResponse, Error, ExitSignal, Flags, Shim, StartOpts, Task, TtrpcContext,
    TtrpcResult,
};
use osvm_core::{Instance, LaunchSpec, OverlayRoot};
use osvm_sandbox::{SandboxConfig, SandboxInstance, SandboxRuntime, StartOptions};

use crate::process::{Life, Proc, now};
use crate::spec::Role;

/// Where container roots are mounted.
const MOUNTS: &str = "/run/osvm-shim";

/// The shim process.
pub struct Service {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

/// `<MOUNTS>/<namespace>/<id>`: the directory holding a container's root, if both names are
/// plain (containerd's identifiers are; anything else is refused rather than joined).
fn container_dir(namespace: &str, id: &str) -> Result<PathBuf, Error> {
    let plain = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !plain(namespace) || !plain(id) {
        return Err(Error::InvalidArgument(format!(
            "namespace {namespace:?} or container id {id:?} is not a plain name"
        )));
    }
    Ok(Path::new(MOUNTS).join(namespace).join(id))
}

/// The file in a container's directory that names its sandbox's instance.
const INSTANCE_FILE: &str = "instance";

/// The sandbox runtime: this binary is its launcher; its state under `$OSVM_STATE_DIR` as
/// containerd's environment sets it, else `/var/lib/osvm/containerd`.
fn sandbox_runtime() -> SandboxRuntime {
    let launcher = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let state_dir = std::env::var_os("OSVM_STATE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| SandboxConfig::default_state_dir().join("containerd"));
    SandboxRuntime::new(SandboxConfig {
        launcher,
        state_dir,
    })
}

/// Unmounts and removes a container's directory (what a shim that died may have left).
fn clean(dir: &Path) {
    if let Some(d) = dir.to_str() {
        let _ = containerd_shim::mount::umount_recursive(Some(d), libc::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(dir);
}

impl Shim for Service {
    type T = Tasks;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim per pod: containerd starts this in the container's bundle; CRI's annotation
        // names the pod (for its sandbox container, the container itself).
        let spec = containerd_shim::synchronous::util::read_spec_from_file("")?;
        let grouping = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(crate::spec::SANDBOX_ID))
            .cloned()
            .unwrap_or_else(|| opts.id.clone());
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::synchronous::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // The serving shim is gone (killed, crashed); its container's sandbox is not (its
        // monitor outlives whoever started it). Stop it, found by the instance id the shim
        // recorded, then undo the root's mount.
        if let Ok(dir) = container_dir(&self.namespace, &self.id) {
            if let Ok(instance) = std::fs::read_to_string(dir.join(INSTANCE_FILE)) {
                let runtime = sandbox_runtime();
                if let Ok(osvm_sandbox::Adopted::Running(sandbox)) = runtime.adopt(instance.trim())
                {
                    if let Err(e) = sandbox.kill() {
                        log::warn!("stop the sandbox of {}: {e}", self.id);
                    }
                    let _ = sandbox.wait();
                }
            }
            clean(&dir);
        }
        let mut r = DeleteResponse::new();
        r.set_exit_status(137);
        r.set_exited_at(now());
        Ok(r)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Tasks {
        Tasks {
            namespace: self.namespace.clone(),
            publisher: Arc::new(publisher),
            exit: self.exit.clone(),
            runtime: Arc::new(sandbox_runtime()),
            containers: Mutex::default(),
        }
    }
}

/// A container: its root, its launch, its init and its execs.
struct Container {
    id: String,
    bundle: String,
    dir: PathBuf,
    launch: LaunchSpec,
    /// Its control group (`linux.cgroupsPath`), else osvm's own.
    cgroup: Option<PathBuf>,
    role: Role,
    /// A pod sandbox's network namespace, held open from its start to its delete: the one its
    /// pod's containers join.
    netns: Mutex<Option<Arc<File>>>,
    init: Proc<Arc<SandboxInstance>>,
    /// Processes added with `exec` (`ctr task exec`, `kubectl exec`, exec probes).
    execs: Mutex<HashMap<String, Arc<Exec>>>,
}

/// An exec'd process: the sandbox's exec helper, which joins the container's namespaces,
/// cgroup and confinement and runs the command; its exit code is the command's. Its handle is
/// the helper's pid (its process group).
struct Exec {
    args: Vec<String>,
    /// Its own environment, working directory and user (containerd's exec process spec).
    process: osvm_sandbox::ExecProcess,
    proc: Proc<u32>,
}

impl Container {
    fn exec(&self, exec_id: &str) -> Result<Arc<Exec>, Error> {
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFoundError(format!("exec {exec_id} in {}", self.id)))
    }

    /// The running init's sandbox, or why there is none.
    fn sandbox(&self) -> Result<Arc<SandboxInstance>, Error> {
        self.init.running().ok_or_else(|| {
            Error::FailedPreconditionError(format!("container {} is not running", self.id))
        })
    }
}

/// The task service of one shim.
pub struct Tasks {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    runtime: Arc<SandboxRuntime>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

/// Publishes `event` to containerd, logging a failure (the task goes on).
fn publish(publisher: &RemotePublisher, namespace: &str, event: impl Event + 'static) {
    let ctx = containerd_shim::protos::ttrpc::context::with_duration(Duration::from_secs(5));
    let topic = event.topic();
    if let Err(e) = publisher.publish(ctx, &topic, namespace, Box::new(event)) {
        log::warn!("publish {topic}: {e}");
    }
}

/// Publishes that process `id` (the container's own id for its init, else an exec id) of
/// container `container` ended.
fn publish_exit(
    publisher: &RemotePublisher,
    namespace: &str,
    container: &str,
    id: &str,
    pid: u32,
    code: u32,
    at: containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp,
) {
    publish(
        publisher,
        namespace,
        TaskExit {
            container_id: container.to_owned(),
            id: id.to_owned(),
            pid,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        },
    );
}

/// Opens a FIFO containerd gave for the container's stdout or stderr (read-write, so the
/// open does not wait for containerd's reader).
fn open_out(path: &str) -> Result<Option<File>, Error> {
    if path.is_empty() {
        return Ok(None);
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(Some)
        .map_err(|err| Error::IoError {
            context: format!("open {path}"),
            err,
        })
}

/// Opens the container's stdin FIFO without waiting for its writer.
fn open_in(path: &str) -> Result<Option<File>, Error> {
    if path.is_empty() {
        return Ok(None);
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| Error::IoError {
            context: format!("open {path}"),
            err,
        })?;
    // Blocking again for the workload's reads.
    let blocking = || -> nix::Result<()> {
        let flags = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(flags)).map(drop)
    };
    blocking().map_err(|e| Error::IoError {
        context: format!("make {path} blocking"),
        err: e.into(),
    })?;
    Ok(Some(f))
}

impl Tasks {
    fn get(&self, id: &str) -> Result<Arc<Container>, Error> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFoundError(format!("container {id}")))
    }

    /// The running sandbox container of pod `sandbox` in this shim, and its network namespace.
    fn pod(&self, sandbox: &str) -> Result<Arc<File>, Error> {
        let pod = self.get(sandbox).map_err(|_| {
            Error::FailedPreconditionError(format!(
                "pod sandbox {sandbox} is not served by this shim (not created, or deleted)"
            ))
        })?;
        if pod.role != Role::PodSandbox {
            return Err(Error::InvalidArgument(format!(
                "{SANDBOX_ID} {sandbox} is not a pod sandbox",
                SANDBOX_ID = crate::spec::SANDBOX_ID
            )));
        }
        pod.netns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|_| pod.init.running().is_some())
            .ok_or_else(|| {
                Error::FailedPreconditionError(format!("pod sandbox {sandbox} is not running"))
            })
    }

    /// Starts the container's init in a sandbox; returns its pid.
    fn start_init(&self, c: &Arc<Container>) -> Result<u32, Error> {
        let mut life = c.init.life();
        if !matches!(*life, Life::Created) {
            return Err(Error::FailedPreconditionError(format!(
                "container {} was started already",
                c.id
            )));
        }
        // A pod's container joins the pod's network namespace, held open by this shim for the
        // whole start (the monitor opens it by this path).
        let mut launch = std::borrow::Cow::Borrowed(&c.launch);
        let _pod_netns = match &c.role {
            Role::InPod { sandbox } => {
                let netns = self.pod(sandbox)?;
                launch.to_mut().netns = Some(PathBuf::from(format!(
                    "/proc/{}/fd/{}",
                    std::process::id(),
                    netns.as_raw_fd()
                )));
                Some(netns)
            }
            _ => None,
        };
        let instance = self
            .runtime
            .start_sandbox(
                &launch,
                StartOptions {
                    stdin: open_in(&c.init.stdin)?.map(std::process::Stdio::from),
                    stdout: open_out(&c.init.stdout)?.map(std::process::Stdio::from),
                    stderr: open_out(&c.init.stderr)?,
                    cgroup: c.cgroup.clone(),
                    ..Default::default()
                },
            )
            .map_err(|e| Error::Other(format!("start container {}: {e}", c.id)))?;
        let pid = instance.init_pid() as u32;
        if c.role == Role::PodSandbox {
            let netns = instance.open_namespace("net").map_err(|e| {
                let _ = instance.kill();
                Error::Other(format!("open the network namespace of pod {}: {e}", c.id))
            })?;
            *c.netns.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(netns));
        }
        // For `delete_shim`, should this shim die: which sandbox to stop.
        if let Err(err) = std::fs::write(c.dir.join(INSTANCE_FILE), instance.id()) {
            log::warn!("record the instance of {}: {err}", c.id);
        }
        let instance = Arc::new(instance);
        *life = Life::Running {
            handle: instance.clone(),
            pid,
        };
        drop(life);
        log::info!("started {} as pid {pid}", c.id);
        let (publisher, namespace, container) =
            (self.publisher.clone(), self.namespace.clone(), c.clone());
        std::thread::spawn(move || {
            let code = match instance.wait() {
                Ok(status) => status.shell_code() as u32,
                Err(e) => {
                    log::error!("wait for container {}: {e}", container.id);
                    255
                }
            };
            let at = container.init.stopped(pid, code);
            publish_exit(
                &publisher,
                &namespace,
                &container.id,
                &container.id,
                pid,
                code,
                at,
            );
        });
        publish(
            &self.publisher,
            &self.namespace,
            TaskStart {
                container_id: c.id.clone(),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// Starts exec `exec_id` of `c`; returns the helper's pid.
    fn start_exec(&self, c: &Arc<Container>, exec_id: &str) -> Result<u32, Error> {
        let e = c.exec(exec_id)?;
        let instance = c.sandbox()?;
        let mut life = e.proc.life();
        if !matches!(*life, Life::Created) {
            return Err(Error::FailedPreconditionError(format!(
                "exec {exec_id} was started already"
            )));
        }
        let stdio = |f: Option<File>| f.map_or_else(std::process::Stdio::null, Into::into);
        let mut child = instance
            .spawn_exec_as(
                &e.args,
                &e.process,
                stdio(open_in(&e.proc.stdin)?),
                stdio(open_out(&e.proc.stdout)?),
                stdio(open_out(&e.proc.stderr)?),
            )
            .map_err(|err| Error::Other(format!("exec in {}: {err}", c.id)))?;
        let pid = child.id();
        *life = Life::Running { handle: pid, pid };
        drop(life);
        let (publisher, namespace, container, id) = (
            self.publisher.clone(),
            self.namespace.clone(),
            c.id.clone(),
            exec_id.to_owned(),
        );
        std::thread::spawn(move || {
            use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
            // The crate's reaper is off, so the helper is this wait's. It is recorded stopped
            // before it is reaped: until then its pid (and process group) cannot be reused, so
            // a `kill` that saw it running signals the helper and nothing else.
            let status = waitid(
                Id::Pid(nix::unistd::Pid::from_raw(pid as i32)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            );
            let code = match status {
                Ok(WaitStatus::Exited(_, code)) => code as u32,
                Ok(WaitStatus::Signaled(_, signal, _)) => 128 + signal as u32,
                _ => 255,
            };
            let at = e.proc.stopped(pid, code);
            let _ = child.wait();
            publish_exit(&publisher, &namespace, &container, &id, pid, code, at);
        });
        publish(
            &self.publisher,
            &self.namespace,
            TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: exec_id.to_owned(),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// Mounts the task's root (the snapshot's mounts) at `dir/rootfs`.
    fn mount_root(
        dir: &Path,
        mounts: &[containerd_shim::protos::types::mount::Mount],
    ) -> Result<PathBuf, Error> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |err| Error::IoError { context: what, err }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(io(&format!("create {}", dir.display())))?;
        let rootfs = dir.join("rootfs");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&rootfs)
            .map_err(io(&format!("create {}", rootfs.display())))?;
        if mounts.is_empty() {
            return Err(Error::InvalidArgument(
                "the task has no rootfs mounts (a bundle with its own root is not supported yet)"
                    .into(),
            ));
        }
        for m in mounts {
            mount_one(&m.type_, &m.source, &m.options, &rootfs)?;
        }
        mount_points(&rootfs)?;
        Ok(rootfs)
    }
}

/// The snapshot as an overlay root the sandbox mounts itself (over its id-mapped layers: the
/// kernel id-maps layers, not an overlay mount), if it is one overlay mount.
fn overlay_root(
    mounts: &[containerd_shim::protos::types::mount::Mount],
) -> Result<Option<OverlayRoot>, Error> {
    let Some(m) = mounts.iter().find(|m| m.type_ == "overlay") else {
        return Ok(None);
    };
    if mounts.len() != 1 {
        return Err(Error::InvalidArgument(format!(
            "the root's mounts: an overlay and {} more (one overlay, or binds, expected)",
            mounts.len() - 1
        )));
    }
    let mut root = OverlayRoot {
        lower: Vec::new(),
        upper: None,
        work: None,
    };
    for o in &m.options {
        match o.split_once('=') {
            Some(("lowerdir", dirs)) => root.lower = dirs.split(':').map(PathBuf::from).collect(),
            Some(("upperdir", dir)) => root.upper = Some(PathBuf::from(dir)),
            Some(("workdir", dir)) => root.work = Some(PathBuf::from(dir)),
            // containerd's; the sandbox mounts with index=off.
            Some(("index", "off")) => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "the root's overlay option {o:?} is not supported"
                )));
            }
        }
    }
    root.check().map_err(Error::InvalidArgument)?;
    if let Some(upper) = &root.upper {
        mount_points(upper)?;
    }
    Ok(Some(root))
}

/// The directories the sandbox mounts on; an image need not have them (runc makes them too).
/// They go into the container's own layer. One that exists as something else than a directory
/// is left for the sandbox to refuse, by name.
fn mount_points(root: &Path) -> Result<(), Error> {
    for name in ["proc", "dev", "tmp", "data"] {
        match std::fs::DirBuilder::new()
            .mode(0o755)
            .create(root.join(name))
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(Error::IoError {
                    context: format!("create /{name} in the container's root"),
                    err,
                });
            }
        }
    }
    Ok(())
}

/// The (device, inode) of a namespace file.
fn ns_identity(path: &Path) -> Result<(u64, u64), Error> {
    let m = std::fs::metadata(path).map_err(|err| Error::IoError {
        context: format!("stat {}", path.display()),
        err,
    })?;
    Ok((m.dev(), m.ino()))
}

/// Refuses a pod network namespace that is the host's (this shim's, containerd's, and init's
/// where this shim may look at init: a confined host may not let it).
fn not_the_hosts(path: &Path) -> Result<(), Error> {
    let asked = ns_identity(path)?;
    let init = ns_identity(Path::new("/proc/1/ns/net")).ok();
    for host in [Some(ns_identity(Path::new("/proc/self/ns/net"))?), init] {
        if host == Some(asked) {
            return Err(Error::InvalidArgument(format!(
                "linux.namespaces (Network).path {}: the host's network namespace (a pod \
                 sandbox gets its own)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Refuses a network namespace other than the pod's.
fn same_namespace(path: &Path, pod: &File, sandbox: &str) -> Result<(), Error> {
    let held = pod.metadata().map_err(|err| Error::IoError {
        context: format!("stat the network namespace of pod {sandbox}"),
        err,
    })?;
    if ns_identity(path)? != (held.dev(), held.ino()) {
        return Err(Error::InvalidArgument(format!(
            "linux.namespaces (Network).path {}: not the network namespace of pod {sandbox}",
            path.display()
        )));
    }
    Ok(())
}

/// Mounts one of a snapshot's mounts (overlay, bind) at `target`, in this process (the
/// crate's `mount_rootfs` forks and waits through its reaper, which is off here).
fn mount_one(fs_type: &str, source: &str, options: &[String], target: &Path) -> Result<(), Error> {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            other => data.push(other),
        }
    }
    // A container's root never carries set-uid files or devices into the sandbox.
    flags |= MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let data = data.join(",");
    let fs_type = (!fs_type.is_empty() && fs_type != "bind").then_some(fs_type);
    nix::mount::mount(
        Some(source),
        target,
        fs_type,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| Error::IoError {
        context: format!(
            "mount {source} ({}) at {}",
            fs_type.unwrap_or("bind"),
            target.display()
        ),
        err: e.into(),
    })
}

impl Task for Tasks {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if req.terminal {
            return Err(Error::InvalidArgument("a terminal is not supported yet".into()).into());
        }
        if self.get(&req.id).is_ok() {
            return Err(Error::FailedPreconditionError(format!(
                "container {} exists already",
                req.id
            ))
            .into());
        }
        let spec = containerd_shim::synchronous::util::read_spec_from_file(&req.bundle)?;
        let dir = container_dir(&self.namespace, &req.id)?;
        let rootfs = dir.join("rootfs");
        let mapped =
            crate::spec::launch(&req.id, &spec, &rootfs).map_err(Error::InvalidArgument)?;
        let cgroup = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| crate::spec::cgroup_of(&p.to_string_lossy()))
            .transpose()
            .map_err(Error::InvalidArgument)?
            .flatten();
        for ns in &mapped.unshared {
            log::info!("{}: not shared, the container's own: {ns}", req.id);
        }
        let mut launch = mapped.launch;
        match (&mapped.role, &mapped.netns) {
            (Role::Plain, None) => {}
            (Role::Plain, Some(path)) => {
                return Err(Error::InvalidArgument(format!(
                    "linux.namespaces (Network).path {}: only a pod's containers join a network \
                     namespace (its sandbox's)",
                    path.display()
                ))
                .into());
            }
            (Role::PodSandbox, None) => {}
            (Role::PodSandbox, Some(path)) => {
                not_the_hosts(path)?;
                launch.netns = Some(path.clone());
            }
            (Role::InPod { sandbox }, asked) => {
                let pod = self.pod(sandbox)?;
                if let Some(path) = asked {
                    same_namespace(path, &pod, sandbox)?;
                }
            }
        }
        match overlay_root(&req.rootfs)? {
            Some(overlay) => {
                launch.rootfs = None;
                launch.rootfs_overlay = Some(overlay);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o711)
                    .create(&dir)
                    .map_err(|err| Error::IoError {
                        context: format!("create {}", dir.display()),
                        err,
                    })?;
            }
            None => {
                if let Err(e) = Self::mount_root(&dir, &req.rootfs) {
                    clean(&dir);
                    return Err(e.into());
                }
            }
        }
        let container = Arc::new(Container {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            dir,
            launch,
            cgroup,
            role: mapped.role,
            netns: Mutex::default(),
            init: Proc::new(&req.stdin, &req.stdout, &req.stderr),
            execs: Mutex::default(),
        });
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.id.clone(), container);
        log::info!("created {} from {}", req.id, req.bundle);
        publish(
            &self.publisher,
            &self.namespace,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        Ok(api::CreateTaskResponse::new())
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let c = self.get(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            self.start_init(&c)?
        } else {
            self.start_exec(&c, &req.exec_id)?
        };
        let mut r = api::StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let c = self.get(&req.id)?;
        let mut r = api::StateResponse::new();
        r.id = c.id.clone();
        r.bundle = c.bundle.clone();
        if req.exec_id.is_empty() {
            c.init.report(&mut r);
        } else {
            c.exec(&req.exec_id)?.proc.report(&mut r);
            r.exec_id = req.exec_id.clone();
        }
        Ok(r)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let c = self.get(&req.id)?;
        Ok(if req.exec_id.is_empty() {
            c.init.wait()
        } else {
            c.exec(&req.exec_id)?.proc.wait()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let signal = nix::sys::signal::Signal::try_from(req.signal as i32)
                .map_err(|e| Error::InvalidArgument(format!("signal {}: {e}", req.signal)))?;
            // The helper's process group: the helper and the command (which would follow the
            // helper anyway, by PR_SET_PDEATHSIG); sent while the helper is known unreaped.
            c.exec(&req.exec_id)?.proc.with_running(|pid| {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*pid as i32), signal);
            });
            return Ok(api::Empty::new());
        }
        if matches!(*c.init.life(), Life::Created) {
            return Err(
                Error::NotFoundError(format!("container {} has no process yet", c.id)).into(),
            );
        }
        if let Some(instance) = c.init.running() {
            // The sandbox's init passes the signal to the workload; `all` is the same here
            // (the container's processes are the sandbox's).
            instance
                .signal(req.signal as i32)
                .map_err(|e| Error::Other(format!("signal {} to {}: {e}", req.signal, c.id)))?;
        }
        Ok(api::Empty::new())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let ended = c
                .exec(&req.exec_id)?
                .proc
                .end(&format!("exec {}", req.exec_id))?;
            c.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.exec_id);
            return Ok(Proc::<u32>::deleted(ended));
        }
        let (pid, code, at) = c.init.end(&format!("container {}", c.id))?;
        clean(&c.dir);
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        log::info!("deleted {}", c.id);
        publish(
            &self.publisher,
            &self.namespace,
            TaskDelete {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid,
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                ..Default::default()
            },
        );
        Ok(Proc::<Arc<SandboxInstance>>::deleted((pid, code, at)))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let c = self.get(&req.id)?;
        let mut r = api::PidsResponse::new();
        if let Some(instance) = c.init.running() {
            // Every process of the container (its cgroup's), as the host sees them.
            let pids = instance
                .pids()
                .map_err(|e| Error::Other(format!("the processes of {}: {e}", c.id)))?;
            for pid in pids {
                let mut p = containerd_shim::protos::types::task::ProcessInfo::new();
                p.pid = pid as u32;
                r.processes.push(p);
            }
        }
        Ok(r)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let c = self.get(&req.id)?;
        c.sandbox()?;
        if req.terminal {
            return Err(Error::InvalidArgument("a terminal is not supported yet".into()).into());
        }
        // The process spec travels as JSON in the Any (containerd's typeurl for specs.Process).
        let process: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| Error::InvalidArgument(format!("the exec's process spec: {e}")))?;
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(Error::InvalidArgument("the exec's process.args is empty".into()).into());
        }
        let exec = Arc::new(Exec {
            args,
            process: osvm_sandbox::ExecProcess {
                env: Some(crate::spec::env_of(&process)),
                cwd: Some(process.cwd().clone()),
                user: Some(crate::spec::run_as(&process)),
            },
            proc: Proc::new(&req.stdin, &req.stdout, &req.stderr),
        });
        {
            let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(Error::FailedPreconditionError(format!(
                    "exec {} exists already",
                    req.exec_id
                ))
                .into());
            }
            execs.insert(req.exec_id.clone(), exec);
        }
        publish(
            &self.publisher,
            &self.namespace,
            TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(api::Empty::new())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim::protos::cgroups_v2::metrics::{
            CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
        };
        let c = self.get(&req.id)?;
        let instance = c
            .init
            .running()
            .ok_or_else(|| Error::NotFoundError(format!("container {} is not running", c.id)))?;
        let s = instance
            .stats()
            .map_err(|e| Error::Other(format!("read the cgroup of {}: {e}", c.id)))?;
        let limits = &c.launch.resources;
        // containerd's cgroup v2 metrics, whatever the host's hierarchy (osvm reads v1 and v2).
        let metrics = Metrics {
            pids: MessageField::some(PidsStat {
                current: s.pids,
                limit: limits.pids.unwrap_or(0),
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage_usec: s.cpu_usage_usec,
                nr_throttled: s.cpu_throttled_periods,
                throttled_usec: s.cpu_throttled_usec,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: s.memory_bytes,
                usage_limit: limits.memory_bytes.unwrap_or(0),
                max_usage: s.memory_peak_bytes.unwrap_or(0),
                ..Default::default()
            }),
            memory_events: MessageField::some(MemoryEvents {
                oom_kill: s.oom_kills,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut r = api::StatsResponse::new();
        r.stats = MessageField::some(containerd_shim::util::convert_to_any(Box::new(metrics))?);
        Ok(r)
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        if let Ok(c) = self.get(&req.id)
            && let Some(pid) = c.init.pid()
        {
            r.task_pid = pid;
        }
        r.version = env!("CARGO_PKG_VERSION").to_owned();
        Ok(r)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
