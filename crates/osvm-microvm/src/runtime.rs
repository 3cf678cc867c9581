//! The `microvm` runtime: one QEMU `microvm` per instance, confined by the process sandbox.
//!
//! Starting an instance, in order (each step undone if a later one fails):
//! 1. choose the accelerator (KVM only with VMX/SVM; `accel = "kvm"` elsewhere is an error,
//!    TCG carries a warning), find the guest kernel and build or find the image;
//! 2. claim a vsock context id and make the run directory, then bind the host listeners the
//!    agent will connect to (events, logs) *before* the guest exists;
//! 3. in a hub stack, attach a TAP in the component's network namespace (see [`osvm_guest::net`]);
//! 4. start the vsock backend, then QEMU, each in its own process sandbox (namespaces, cgroup,
//!    seccomp, no capabilities, read-only root with only the run directory writable), QEMU's
//!    cgroup sized for guest memory plus [`QEMU_OVERHEAD`];
//! 5. wait (up to the boot timeout, watching QEMU) for the agent's hello, send the [`Launch`],
//!    read `Started`.
//!
//! Stopping: `Shutdown` through the agent (SIGTERM to the workload, its exit reported, then
//! power-off, which ends QEMU); if QEMU still runs after the grace period, QMP `quit`; then
//! SIGKILL through the sandbox. The exit status reported is the workload's, from the agent.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use osvm_agent::proto::{
    self, CONTROL_PORT, EVENTS_PORT, Event, LOGS_PORT, Launch, Request, Response, Stream,
};
use osvm_core::{
    Adoption, Conn, Endpoint, ExecResult, ExitStatus, Instance, LaunchSpec, Runtime, RuntimeError,
    RuntimeKind, Wiring,
};
use osvm_sandbox::output::Stamper;
use osvm_sandbox::{SandboxInstance, SandboxRuntime};
use serde::{Deserialize, Serialize};

use osvm_guest::emulator::{EmulatorSpec, ro, rw};
use osvm_guest::host::{self, Accel, KvmProbe};
use osvm_guest::net::{self, Attached};
use osvm_guest::{GuestBase, setup, tail};

use crate::image::{self, Image, ImageInputs};
use crate::kernel::Kernel;
use crate::link::{HostLink, SerialHost};
use crate::qemu::{self, LinkArgs, QemuArgs};
use crate::snapshot;
use crate::vsock::{self, CidLease};

pub use osvm_guest::find_program;

/// The microvm runtime cannot work here, because of `reason`.
impl MicroVmRuntime {
    /// The component's `/data` volume, the same ext4 image a process instance of it would
    /// mount (`data/stacks/<stack>/<name>.img`), made at the first start, sized by
    /// `resources.disk`; it outlives instances, restarts and the daemon.
    fn data_volume(&self, spec: &LaunchSpec) -> Result<PathBuf, RuntimeError> {
        use std::os::unix::fs::DirBuilderExt;
        let image = self.sandbox.volume_path(spec);
        if let Some(parent) = image.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| RuntimeError::io(format!("create {}", parent.display()), e))?;
        }
        osvm_sandbox::volume::ensure_image(&image, spec.resources.disk()).map_err(|e| match e {
            osvm_sandbox::volume::VolumeError::Unavailable(reason) => unavailable(reason),
            other => setup(format!("the data volume: {other}")),
        })?;
        if osvm_sandbox::volume::loop_backed(&image) {
            return Err(setup(format!(
                "the data volume {} is mounted for another instance of `{}` (a process, or a VM \
                 with shared_data); a disk cannot be attached while it is: stop that instance \
                 first, or give this VM microvm = {{ shared_data = true }}",
                image.display(),
                spec.name
            )));
        }
        if osvm_sandbox::volume::attached_to_vm(&image)
            .map_err(|e| RuntimeError::io(format!("check {}", image.display()), e))?
        {
            return Err(setup(format!(
                "the data volume {} is in use by another VM of `{}`: a disk cannot be shared by \
                 two guests, so a microVM with a data disk cannot be hot-swapped; stop it first \
                 (`osvm restart` does), or give a stateless VM `microvm = {{ data_disk = false }}`",
                image.display(),
                spec.name
            )));
        }
        Ok(image)
    }
}

/// Refuses a start whose fetched kernel lacks module `name` (needed for `purpose`): a kernel
/// fetched before osvm used the module was stored without it. A kernel of one's own
/// (`microvm.kernel`) may have it built in, and is taken as it is.
fn require_module(
    spec: &LaunchSpec,
    kernel: &Kernel,
    name: &str,
    purpose: &str,
) -> Result<(), RuntimeError> {
    let file = format!("{name}.ko");
    if options(spec)?.kernel.is_some()
        || kernel
            .modules
            .iter()
            .any(|m| m.file_name().is_some_and(|n| *n == *file))
    {
        return Ok(());
    }
    Err(setup(format!(
        "the guest kernel {} has no {name} module for {purpose}; `osvm kernel fetch --force` \
         stores one that has",
        kernel.release
    )))
}

/// What `spec`'s link needs: the vsock backend for vsock (the serial link needs nothing more).
fn link_available(spec: &LaunchSpec) -> Result<(), RuntimeError> {
    if options(spec)?.link == osvm_core::LinkChoice::Vsock
        && find_program("vhost-device-vsock").is_none()
    {
        return Err(unavailable(
            "vhost-device-vsock is not installed (cargo install --locked \
             vhost-device-vsock@0.3.0 --root /usr/local), which the vsock link needs; or give \
             the VM microvm = { link = \"serial\" }",
        ));
    }
    Ok(())
}

fn unavailable(reason: impl Into<String>) -> RuntimeError {
    osvm_guest::unavailable(RuntimeKind::MicroVm, reason)
}

/// Memory QEMU itself needs besides guest RAM (its code, the TCG translation cache, device
/// state); the cgroup limit is guest memory plus this.
pub const QEMU_OVERHEAD: u64 = 256 << 20;
/// Guest memory when the stack sets none.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// The vsock backend's memory limit.
const BACKEND_MEMORY: u64 = 128 << 20;
/// How long a guest may take to boot by default.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one control request (besides an exec's own timeout).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the runtime finds its tools.
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    /// osvm's state directory (kernels, images, cids, instances).
    pub state_dir: PathBuf,
    /// The static guest agent; `None` searches (see [`find_agent`]).
    pub agent: Option<PathBuf>,
    /// busybox-static.
    pub busybox: PathBuf,
}

impl MicroVmConfig {
    /// Defaults for `state_dir`.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            agent: None,
            busybox: PathBuf::from("/bin/busybox"),
        }
    }
}

/// The static `osvm-agent`: `$OSVM_AGENT`, else beside the running executable, else where
/// `cargo build --target x86_64-unknown-linux-gnu` puts it next to this build.
pub fn find_agent() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("OSVM_AGENT") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("find the running executable: {e}"))?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("osvm-agent"));
        // target/<profile>/osvm or target/<profile>/deps/<test>
        for up in [dir.parent(), dir.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            for profile in ["release", "debug"] {
                candidates.push(
                    up.join("x86_64-unknown-linux-gnu")
                        .join(profile)
                        .join("osvm-agent"),
                );
            }
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file() && image::is_static_elf(p).unwrap_or(false))
        .cloned()
        .ok_or_else(|| {
            format!(
                "no static osvm-agent found (looked at {}); build it with RUSTFLAGS=\"-C \
                 target-feature=+crt-static\" cargo build -p osvm-agent --release --target \
                 x86_64-unknown-linux-gnu, or set OSVM_AGENT",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Facts about a VM, shown by `osvm status` and written to `vm.json` in its directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmFacts {
    /// The accelerator.
    pub accel: Accel,
    /// Why it is TCG, if it is.
    pub warning: Option<String>,
    /// vsock context id.
    pub cid: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Guest kernel release.
    pub kernel: String,
    /// Image content address.
    pub image: String,
    /// Image size in bytes.
    pub image_size: u64,
    /// Milliseconds from spawning QEMU to the agent's hello.
    pub boot_ms: u64,
    /// Milliseconds from the start request to the workload running.
    pub ready_ms: u64,
    /// The guest's address, if it has a network.
    pub address: Option<String>,
    /// How a `snapshot = true` VM started: restored from which snapshot, or why it booted
    /// cold.
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// The `microvm` runtime.
pub struct MicroVmRuntime {
    sandbox: Arc<SandboxRuntime>,
    config: MicroVmConfig,
    kvm: KvmProbe,
}

/// The id of VM instance `id`'s QEMU sandbox.
fn qemu_instance(id: &str) -> String {
    format!("{id}-qemu")
}

/// The id of VM instance `id`'s vsock backend sandbox.
fn vsock_instance(id: &str) -> String {
    format!("{id}-vsock")
}

/// The id of the sandbox of the virtiofsd serving VM instance `id`'s shared directory `i`.
fn share_instance(id: &str, i: usize) -> String {
    format!("{id}-fs{i}")
}

impl MicroVmRuntime {
    /// Stops what is left of VM instance `id` that an earlier process started (a daemon that
    /// restarted cannot drive it: the vsock connections were its own): its QEMU and its vsock
    /// backend, each in its sandbox.
    pub fn stop_leftovers(&self, id: &str) {
        for sub in [qemu_instance(id), vsock_instance(id)] {
            if let Ok(osvm_sandbox::Adopted::Running(inst)) = self.sandbox.adopt(&sub) {
                let _ = inst.stop(Duration::ZERO);
            }
        }
        // The virtiofsd of each shared directory, numbered from 0 without gaps.
        for i in 0.. {
            match self.sandbox.adopt(&share_instance(id, i)) {
                Ok(osvm_sandbox::Adopted::Running(inst)) => {
                    let _ = inst.stop(Duration::ZERO);
                }
                Ok(osvm_sandbox::Adopted::Ended(_)) => {}
                Err(_) => break,
            }
        }
    }

    /// A runtime whose QEMU and vsock backend run in `sandbox`'s sandboxes.
    pub fn new(sandbox: Arc<SandboxRuntime>, config: MicroVmConfig) -> Self {
        Self {
            sandbox,
            config,
            kvm: KvmProbe::probe(),
        }
    }

    /// Where the runtime keeps things.
    pub fn config(&self) -> &MicroVmConfig {
        &self.config
    }

    /// What KVM the host has.
    pub fn kvm(&self) -> &KvmProbe {
        &self.kvm
    }

    /// Why no VM can start here at all, if none can (tools missing); the per-spec reasons
    /// (accelerator, kernel) come from [`MicroVmRuntime::start_vm`].
    pub fn unavailable_reason(&self) -> Option<String> {
        if let Some(r) = self.sandbox.unavailable_reason() {
            return Some(format!("the process sandbox that confines QEMU: {r}"));
        }
        if find_program("qemu-system-x86_64").is_none() {
            return Some(
                "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)".into(),
            );
        }
        if let Err(e) = image::is_static_elf(&self.config.busybox).and_then(|s| {
            s.then_some(()).ok_or_else(|| {
                image::ImageError::Input(format!(
                    "{} is not static: install busybox-static",
                    self.config.busybox.display()
                ))
            })
        }) {
            return Some(e.to_string());
        }
        None
    }

    /// The vsock backend's binary, where the sandbox's unprivileged user can read it: one
    /// installed outside `/usr` (cargo's `~/.cargo/bin` under a 0700 home) is copied into the
    /// state directory first.
    fn backend_program(&self) -> Result<PathBuf, RuntimeError> {
        let found = find_program("vhost-device-vsock")
            .ok_or_else(|| unavailable("vhost-device-vsock is not installed"))?;
        if found.starts_with("/usr") {
            return Ok(found);
        }
        let tools = self.config.state_dir.join("tools");
        let copy = tools.join("vhost-device-vsock");
        let same = |a: &Path, b: &Path| match (fs::metadata(a), fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.len() == y.len() && x.modified().ok() <= y.modified().ok(),
            _ => false,
        };
        if !same(&found, &copy) {
            fs::create_dir_all(&tools)
                .and_then(|()| fs::set_permissions(&tools, fs::Permissions::from_mode(0o755)))
                .map_err(|e| RuntimeError::io(format!("create {}", tools.display()), e))?;
            let partial = tools.join(".vhost-device-vsock.partial");
            fs::copy(&found, &partial)
                .and_then(|_| fs::set_permissions(&partial, fs::Permissions::from_mode(0o755)))
                .and_then(|()| fs::rename(&partial, &copy))
                .map_err(|e| RuntimeError::io(format!("copy {}", found.display()), e))?;
        }
        Ok(copy)
    }

    /// A confidential guest is refused, with the reason, before anything starts: osvm never
    /// runs it unprotected (see [`host::confidential_refusal`]).
    fn refuse_confidential(&self, spec: &LaunchSpec) -> Result<(), RuntimeError> {
        match options(spec)?.confidential {
            Some(choice) => Err(unavailable(host::confidential_refusal(
                choice,
                &host::ConfidentialProbe::probe(&self.kvm),
            ))),
            None => Ok(()),
        }
    }

    /// Whether `spec` could start here, checked before anything is started: the tools, the
    /// accelerator it asks for, its guest kernel, its agent.
    pub fn preflight(&self, spec: &LaunchSpec) -> Result<(), RuntimeError> {
        self.refuse_confidential(spec)?;
        if !shares_of(spec)?.is_empty() {
            osvm_guest::share::virtiofsd().map_err(unavailable)?;
        }
        host::resolve_accel(options(spec)?.accel, &self.kvm).map_err(unavailable)?;
        if let Some(r) = self.unavailable_reason() {
            return Err(unavailable(r));
        }
        link_available(spec)?;
        host::tsc_khz().map_err(unavailable)?;
        self.kernel_for(spec)?;
        if self.config.agent.is_none() {
            find_agent().map_err(unavailable)?;
        }
        Self::program_of(spec).map(|_| ())
    }

    /// The guest kernel `spec` boots.
    pub fn kernel_for(&self, spec: &LaunchSpec) -> Result<Kernel, RuntimeError> {
        let options = options(spec)?;
        match &options.kernel {
            Some(k) => Kernel::configured(k, options.kernel_modules.as_deref()),
            None => Kernel::installed(&self.config.state_dir),
        }
        .map_err(|e| unavailable(e.to_string()))
    }

    /// The host path of `spec`'s program (absolute, or found in the host's `PATH`).
    fn program_of(spec: &LaunchSpec) -> Result<PathBuf, RuntimeError> {
        if spec.command.starts_with('/') {
            return Ok(PathBuf::from(&spec.command));
        }
        find_program(&spec.command).ok_or_else(|| {
            RuntimeError::InvalidSpec(format!(
                "program `{}` is not on the host's PATH; a microVM's image is built from host \
                 files (name it by absolute path, or add it with microvm.include)",
                spec.command
            ))
        })
    }

    /// Builds (or finds) the image for `spec` with `kernel`'s modules.
    pub fn image_for(&self, spec: &LaunchSpec, kernel: &Kernel) -> Result<Image, RuntimeError> {
        let agent = match &self.config.agent {
            Some(a) => a.clone(),
            None => find_agent().map_err(unavailable)?,
        };
        let program = Self::program_of(spec)?;
        let mut programs = Vec::new();
        // busybox is in every image; its applets are links to it.
        if program.exists() && program != self.config.busybox {
            programs.push(program.clone());
        } else if !program.exists() && !program.starts_with("/bin") {
            return Err(RuntimeError::InvalidSpec(format!(
                "program {} does not exist on the host",
                program.display()
            )));
        }
        let inputs = ImageInputs {
            agent,
            busybox: self.config.busybox.clone(),
            modules: kernel.modules.clone(),
            programs,
            include: options(spec)?.include.clone(),
        };
        let dir = image::images_dir(&self.config.state_dir);
        fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("create {}", dir.display()), e))?;
        image::build(&dir, &inputs).map_err(|e| RuntimeError::InvalidSpec(e.to_string()))
    }

    /// Starts an instance under the id `id` (`<name>-<suffix>`).
    pub fn start_vm(&self, spec: &LaunchSpec, id: &str) -> Result<MicroVmInstance, RuntimeError> {
        self.start_vm_with(spec, id, None)
    }

    /// [`MicroVmRuntime::start_vm`], with the workload's stdin and stdout carried to `stdio`
    /// (what it reads, where it writes: an MCP server's channel) over vsock.
    pub fn start_vm_with(
        &self,
        spec: &LaunchSpec,
        id: &str,
        stdio: Option<Stdio>,
    ) -> Result<MicroVmInstance, RuntimeError> {
        let t0 = Instant::now();
        self.refuse_confidential(spec)?;
        if let Some(r) = self.unavailable_reason() {
            return Err(unavailable(r));
        }
        link_available(spec)?;
        let (accel, warning) =
            host::resolve_accel(options(spec)?.accel, &self.kvm).map_err(unavailable)?;
        let (tsc_khz, _) = host::tsc_khz().map_err(unavailable)?;
        let kernel = self.kernel_for(spec)?;
        let image = self.image_for(spec, &kernel)?;
        let program = Self::program_of(spec)?;
        let memory = spec.resources.memory_bytes.unwrap_or(DEFAULT_MEMORY);
        let memory_mib = (memory >> 20).max(64);
        // The image's archive and the files unpacked from it are both in guest memory at
        // once, and the root file system may fill at most half of what the archive leaves:
        // below three times the image nothing can fit, whatever the kernel keeps for itself.
        // Above that the agent's mark decides (`check_unpacked`).
        if memory_mib << 20 < 3 * image.size {
            return Err(too_small(&image, memory_mib, false));
        }
        let vcpus = spec
            .resources
            .cpus
            .map_or(1, |c| c.ceil().clamp(1.0, 64.0) as u32);

        let serial = options(spec)?.link == osvm_core::LinkChoice::Serial;
        // A VM on the serial link has no vsock device, so no context id.
        let lease = if serial {
            None
        } else {
            Some(
                CidLease::acquire(&self.config.state_dir)
                    .map_err(|e| RuntimeError::io("claim a vsock context id", e))?,
            )
        };
        let dir = self.config.state_dir.join("instances").join(id);
        let run = dir.join("run");
        fs::create_dir_all(&run)
            .map_err(|e| RuntimeError::io(format!("create {}", run.display()), e))?;
        let uds = run.join("vm.vsock");
        // The run directory reaches the sandboxed backend and QEMU as an id-mapped `rw` bind:
        // what root owns here, their sandboxes' root owns there, with no chown.
        let listeners = if serial {
            None
        } else {
            Some((
                bind_listener(&vsock::listener_path(&uds, EVENTS_PORT))?,
                bind_listener(&vsock::listener_path(&uds, LOGS_PORT))?,
            ))
        };
        let console = dir.join("console.log");
        let _ = fs::remove_file(&console);

        let mut vm = Starting {
            lease,
            net: None,
            backend: None,
            shares: Vec::new(),
            qemu: None,
        };
        let plan = Plan {
            id: id.to_owned(),
            dir,
            run,
            uds,
            accel,
            warning,
            tsc_khz,
            kernel,
            image,
            program,
            vcpus,
            memory_mib,
            t0,
        };
        let result = self.boot(spec, &plan, &mut vm, listeners, stdio);
        match result {
            Ok(instance) => Ok(instance),
            Err(e) => {
                vm.undo();
                Err(e)
            }
        }
    }

    fn boot(
        &self,
        spec: &LaunchSpec,
        plan: &Plan,
        vm: &mut Starting,
        listeners: Option<(UnixListener, UnixListener)>,
        stdio: Option<Stdio>,
    ) -> Result<MicroVmInstance, RuntimeError> {
        let (id, dir, run, uds) = (plan.id.as_str(), &plan.dir, &plan.run, &plan.uds);
        let (accel, warning, tsc_khz) = (plan.accel, &plan.warning, plan.tsc_khz);
        let (kernel, image, program) = (&plan.kernel, &plan.image, &plan.program);
        let (vcpus, memory_mib, t0) = (plan.vcpus, plan.memory_mib, plan.t0);
        if let Some(ns) = &spec.netns {
            vm.net = Some(
                net::attach(&self.config.state_dir, ns)
                    .map_err(|e| setup(format!("attach the VM to its network namespace: {e}")))?,
            );
        }
        // 0: no vsock (the serial link).
        let cid = vm.lease.as_ref().map_or(0, CidLease::cid);
        let run_bind = rw(run);
        let link_args = if vm.lease.is_some() {
            LinkArgs::Vsock {
                vhost_socket: self.start_backend(spec, id, run, uds, vm)?,
            }
        } else {
            LinkArgs::Serial {
                socket: run.join("agent.sock"),
            }
        };

        let shares = shares_of(spec)?;
        if !shares.is_empty() {
            require_module(spec, kernel, "virtiofs", "the shared directories")?;
        }
        if matches!(link_args, LinkArgs::Serial { .. }) {
            require_module(spec, kernel, "virtio_console", "the serial link")?;
        }
        let shared = self.start_shares(spec, &shares, plan, vm)?;

        let data = match spec.data {
            osvm_core::DataKind::Persistent
                if !options(spec)?.no_data_disk && !options(spec)?.shared_data =>
            {
                require_module(spec, kernel, "virtio_blk", "the /data volume")?;
                Some(self.data_volume(spec)?)
            }
            _ => None,
        };
        let qmp = run.join("qmp.sock");
        let boot_timeout = options(spec)?
            .boot_timeout_ms
            .map_or(DEFAULT_BOOT_TIMEOUT, Duration::from_millis);
        let mut args = QemuArgs {
            accel,
            vcpus,
            memory_mib,
            kernel: kernel.image.clone(),
            initrd: image.path.clone(),
            tsc_khz,
            console: dir.join("console.log"),
            link: link_args.clone(),
            qmp: qmp.clone(),
            net_mac: vm.net.as_ref().map(|n| n.mac.clone()),
            ram_file: None,
            incoming: false,
            data: data.clone(),
            shared,
        };
        // The console log lives in the instance directory; QEMU writes it through an
        // id-mapped `rw` bind of the file.
        let _ = fs::write(dir.join("console.log"), b"");
        let binds: Vec<osvm_core::BindMount> = [
            run_bind,
            rw(&dir.join("console.log")),
            ro(&kernel.image),
            ro(&image.path),
        ]
        .into_iter()
        .chain(data.as_deref().map(rw))
        .collect();
        let fds: Vec<_> = vm.net.iter().map(|n| n.tap.as_fd()).collect();
        // A snapshot start: the guest's RAM is a private copy of the snapshot's, its device
        // state loaded through QMP once QEMU runs.
        let mut restore: Option<(PathBuf, PathBuf)> = None;
        let mut snapshot_fact: Option<String> = None;
        if options(spec)?.snapshot {
            let snapshots = self.config.state_dir.join("snapshots");
            let (key, inputs) = snapshot::key(kernel, image, &args)
                .map_err(|e| setup(format!("the snapshot's key: {e}")))?;
            let user = match &spec.stack {
                Some(stack) => format!("{stack}.{}", spec.name),
                None => spec.name.clone(),
            };
            let stale = snapshot::note_use(&snapshots, &user, &key, &inputs);
            if let Some(old) = &stale {
                tracing::warn!(
                    instance = id,
                    "a new snapshot for `{}`: {}",
                    spec.name,
                    old.why
                );
                // The old one goes once no component starts from it: a snapshot is as large as
                // the guest's memory, and every new image would leave one behind.
                match snapshot::collect(&snapshots, &old.key) {
                    Ok(Some(bytes)) => tracing::info!(
                        instance = id,
                        "removed snapshot {} ({} MiB): no component starts from it now",
                        &old.key[..old.key.len().min(16)],
                        bytes >> 20
                    ),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        instance = id,
                        "could not remove the unused snapshot {}: {e}",
                        old.key
                    ),
                }
            }
            let snap = snapshots.join(&key);
            if let Some(why) = snapshot::set_aside_reason(&snap) {
                tracing::warn!(
                    instance = id,
                    "booting cold: the snapshot {key} failed to restore before: {why}"
                );
                snapshot_fact = Some(format!(
                    "cold boot: the snapshot failed to restore before ({why})"
                ));
            } else {
                // One start makes a snapshot; others of the same key wait for it.
                let _making = snapshot::lock(&snap)
                    .map_err(|e| setup(format!("lock the snapshot {}: {e}", snap.display())))?;
                let made = !snap.join(snapshot::STATE).exists();
                if made {
                    self.make_snapshot(
                        spec,
                        id,
                        &args,
                        &inputs,
                        &binds,
                        &fds,
                        &snap,
                        run,
                        boot_timeout,
                    )?;
                }
                let copy = snapshot::ram_copy_path(run);
                let _ = fs::remove_file(&copy);
                snapshot::copy_ram(&snap.join(snapshot::RAM), &copy)
                    .map_err(|e| setup(format!("copy the snapshot's memory: {e}")))?;
                args.ram_file = Some((copy.clone(), false));
                args.incoming = true;
                restore = Some((copy, snap));
                snapshot_fact = Some(format!(
                    "restored from snapshot {}{}{}",
                    &key[..16],
                    if made { " (made by this start)" } else { "" },
                    stale
                        .map(|old| format!("; {}", old.why))
                        .unwrap_or_default()
                ));
            }
        }
        let mut spawned = Instant::now();
        let started = self.spawn_qemu(spec, &args, binds.clone(), qemu_instance(id), &fds);
        vm.qemu = Some(started.inspect_err(|_| {
            if let Some((copy, _)) = &restore {
                let _ = fs::remove_file(copy);
            }
        })?);
        let mut snapshot_warning = None;
        if let Some((copy, snap)) = restore.take() {
            let restored = {
                let q = vm.qemu.as_ref().expect("just set");
                let failed = || match q.try_wait() {
                    Ok(Some(status)) => Some(format!(
                        "QEMU {status} while restoring; QEMU's stderr: {}",
                        tail(&q.log_paths().1)
                    )),
                    _ => None,
                };
                snapshot::restore(
                    &qmp,
                    &snap.join(snapshot::STATE),
                    spawned + boot_timeout,
                    failed,
                )
            };
            // QEMU maps the copy; its name is no longer needed.
            let _ = fs::remove_file(&copy);
            if let Err(e) = restored {
                // Set aside, said out loud, and this start boots cold instead: never a loop
                // of failed restores.
                snapshot::set_aside(&snap, &e);
                let why = format!(
                    "the snapshot {} failed to restore ({e}); it was set aside and this start \
                     booted cold",
                    snap.display()
                );
                tracing::warn!(instance = id, "{why}");
                snapshot_fact = Some(format!("cold boot: {why}"));
                snapshot_warning = Some(why);
                if let Some(failed) = vm.qemu.take() {
                    let _ = failed.stop(Duration::ZERO);
                    let _ = fs::remove_dir_all(failed.instance_dir());
                }
                let _ = fs::remove_file(run.join("agent.sock"));
                let _ = fs::remove_file(&qmp);
                let _ = fs::write(dir.join("console.log"), b"");
                args.ram_file = None;
                args.incoming = false;
                spawned = Instant::now();
                vm.qemu = Some(self.spawn_qemu(spec, &args, binds, qemu_instance(id), &fds)?);
            }
        }
        let qemu_inst = vm.qemu.as_ref().expect("just set");
        let qemu_ended = || match qemu_inst.try_wait() {
            Ok(Some(status)) => Some(format!(
                "QEMU {status} before the guest agent said hello; console: {}; QEMU's \
                 stderr: {}",
                tail(&dir.join("console.log")),
                tail(&qemu_inst.log_paths().1)
            )),
            _ => None,
        };
        let deadline = spawned + boot_timeout;
        let boot = |e: String| setup(format!("boot: {e}"));
        type LogsSource = Box<dyn FnMut() -> Option<UnixStream> + Send>;
        let (link, mut conn, logs_source): (HostLink, UnixStream, LogsSource) =
            match (listeners, &link_args) {
                (Some((events, logs)), _) => {
                    // The agent connects out once vsock works in the guest.
                    let conn = accept_while(&events, deadline, qemu_ended).map_err(boot)?;
                    (
                        HostLink::Vsock {
                            uds: uds.to_path_buf(),
                        },
                        conn,
                        Box::new(move || logs.accept().ok().map(|(conn, _)| conn)),
                    )
                }
                (None, LinkArgs::Serial { socket }) => {
                    let serial = SerialHost::connect(socket, deadline, qemu_ended).map_err(boot)?;
                    let conn = serial.accept_events(deadline, qemu_ended).map_err(boot)?;
                    let logs = Arc::clone(&serial);
                    (
                        HostLink::Serial(serial),
                        conn,
                        Box::new(move || logs.accept_logs()),
                    )
                }
                (None, LinkArgs::Vsock { .. }) => {
                    return Err(setup("a vsock link without its listeners"));
                }
            };

        let boot_ms = spawned.elapsed().as_millis() as u64;
        conn.set_read_timeout(Some(CONTROL_TIMEOUT))
            .map_err(|e| RuntimeError::io("set a timeout", e))?;
        let hello: Event = proto::read_msg(&mut conn)
            .map_err(|e| setup(format!("read the agent's hello: {e}")))?;
        let Event::Hello {
            image: unpacked, ..
        } = hello
        else {
            return Err(setup(format!("the agent sent {hello:?} instead of hello")));
        };
        check_unpacked(unpacked.as_deref(), image, memory_mib)?;
        let launch = Launch {
            hostname: spec.name.clone(),
            command: program.display().to_string(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            working_dir: spec.working_dir.as_ref().map(|p| p.display().to_string()),
            network: vm.net.as_ref().map(|n| n.guest.clone()),
            hosts: spec.hosts.clone(),
            data_device: data.as_ref().map(|_| "/dev/vda".to_owned()),
            identity: match &spec.identity {
                Some(dir) => osvm_guest::share::identity_files(dir)?,
                None => Vec::new(),
            },
            stdio: stdio.is_some(),
            tls_egress: spec
                .tls_egress
                .iter()
                .map(|e| osvm_agent::proto::TlsEgress {
                    listen: e.listen,
                    upstream: e.upstream,
                    server_name: e.server_name.clone(),
                    trust_domain: e.trust_domain.clone(),
                })
                .collect(),
            mounts: shares
                .iter()
                .enumerate()
                .map(|(i, share)| osvm_agent::proto::GuestMount {
                    tag: qemu::share_tag(i),
                    target: share.target.display().to_string(),
                    read_only: !share.writable,
                })
                .collect(),
            mac: vm.net.as_ref().map(|n| n.mac.clone()),
            time_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_nanos() as u64),
            entropy: {
                let mut bytes = vec![0u8; 64];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| setup("draw entropy for the guest"))?;
                bytes
            },
        };
        proto::write_msg(&mut conn, &launch).map_err(|e| setup(format!("send the launch: {e}")))?;
        let started: Event = proto::read_msg(&mut conn)
            .map_err(|e| setup(format!("read the workload's start: {e}")))?;
        let pid = match started {
            Event::Started { pid } => pid,
            Event::StartFailed { error } => {
                return Err(RuntimeError::InvalidSpec(format!(
                    "the guest could not start {}: {error}",
                    program.display()
                )));
            }
            other => {
                return Err(setup(format!(
                    "the agent sent {other:?} instead of started"
                )));
            }
        };
        let _ = conn.set_read_timeout(None);
        if let Some(stdio) = stdio {
            connect_stdio(&link, stdio)?;
        }

        let facts = VmFacts {
            accel,
            // What went wrong with a snapshot is said where the TCG warning is (an event).
            warning: match (warning.clone(), snapshot_warning) {
                (Some(w), Some(s)) => Some(format!("{w}; {s}")),
                (w, s) => w.or(s),
            },
            cid,
            vcpus,
            memory_mib,
            kernel: kernel.release.clone(),
            image: image.digest.clone(),
            image_size: image.size,
            boot_ms,
            ready_ms: t0.elapsed().as_millis() as u64,
            snapshot: snapshot_fact,
            address: vm.net.as_ref().map(|n| n.guest.address.clone()),
        };
        let _ = fs::write(
            dir.join("vm.json"),
            serde_json::to_vec_pretty(&facts).expect("serializes"),
        );
        let net = vm.net.take().map(|n| (n.netns, n.guest));
        // What a restarted daemon needs to take the VM back (see `adopt_vm`).
        let record = AdoptRecord {
            facts: facts.clone(),
            net: net.clone(),
            shares: vm.shares.len(),
            serial: matches!(link, HostLink::Serial(_)),
        };
        write_atomic(
            &dir.join(ADOPT_RECORD),
            &serde_json::to_vec_pretty(&record).expect("serializes"),
        )
        .map_err(|e| RuntimeError::io("record the VM for adoption", e))?;
        let state = Arc::new(Mutex::new(Guest {
            pid: Some(pid),
            ..Guest::default()
        }));
        spawn_events(conn, state.clone());
        spawn_logs(
            logs_source,
            dir.join("stdout.log"),
            dir.join("stderr.log"),
            &state,
        );

        Ok(MicroVmInstance {
            base: GuestBase::new(
                id,
                dir.to_path_buf(),
                Arc::new(vm.qemu.take().expect("started")),
                net,
            ),
            link,
            qmp,
            facts,
            backend: Mutex::new(vm.backend.take()),
            shares: Mutex::new(std::mem::take(&mut vm.shares)),
            lease: Mutex::new(vm.lease.take()),
            guest: state,
        })
    }

    /// Starts QEMU with `args` in a sandbox of its own (`sandbox_id`) holding `binds`, with
    /// `fds` (the TAP) handed over.
    fn spawn_qemu(
        &self,
        spec: &LaunchSpec,
        args: &QemuArgs,
        binds: Vec<osvm_core::BindMount>,
        sandbox_id: String,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<SandboxInstance, RuntimeError> {
        let qemu_bin = find_program("qemu-system-x86_64").expect("checked available");
        let qemu_spec = EmulatorSpec {
            component: spec,
            program: &qemu_bin,
            args: args.to_args(),
            memory: (args.memory_mib << 20) + QEMU_OVERHEAD,
            accel: Some(args.accel),
        }
        .build(binds);
        self.sandbox
            .start_sandbox(
                &qemu_spec,
                osvm_sandbox::StartOptions {
                    id: Some(sandbox_id),
                    fds,
                    ..Default::default()
                },
            )
            .map_err(|e| setup(format!("start QEMU: {e}")))
    }

    /// Boots the snapshot's template guest (QEMU `args`, its RAM in a shared file in the
    /// snapshot's directory) until its agent says hello, saves its device state, ends it, and
    /// moves the finished snapshot to `snap`.
    #[allow(clippy::too_many_arguments)]
    fn make_snapshot(
        &self,
        spec: &LaunchSpec,
        id: &str,
        args: &QemuArgs,
        inputs: &snapshot::Inputs,
        binds: &[osvm_core::BindMount],
        fds: &[std::os::fd::BorrowedFd<'_>],
        snap: &Path,
        run: &Path,
        boot_timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let partial = snap.with_extension("partial");
        let _ = fs::remove_dir_all(&partial);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&partial)
            .map_err(|e| RuntimeError::io(format!("create {}", partial.display()), e))?;
        let mut template_args = args.clone();
        template_args.ram_file = Some((partial.join(snapshot::RAM), true));
        let mut template_binds = binds.to_vec();
        template_binds.push(rw(&partial));
        let spawned = Instant::now();
        let template = self.spawn_qemu(
            spec,
            &template_args,
            template_binds,
            format!("{id}-template"),
            fds,
        )?;
        let ended = || match template.try_wait() {
            Ok(Some(status)) => Some(format!(
                "the snapshot's template QEMU {status} before its agent said hello; QEMU's \
                 stderr: {}",
                tail(&template.log_paths().1)
            )),
            _ => None,
        };
        let made = (|| -> Result<(), String> {
            let deadline = spawned + boot_timeout;
            let LinkArgs::Serial { socket } = &args.link else {
                return Err("a snapshot needs the serial link".into());
            };
            let serial = SerialHost::connect(socket, deadline, ended)?;
            let mut hello = serial.accept_events(deadline, ended)?;
            hello
                .set_read_timeout(Some(CONTROL_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let Event::Hello { uptime_ms, .. } = proto::read_msg::<Event>(&mut hello)
                .map_err(|e| format!("read the template agent's hello: {e}"))?
            else {
                return Err("the template's agent did not say hello".into());
            };
            // Leave the port before the save: the saved guest then holds no session with a
            // host, and a restored copy starts a fresh one with whichever host connects (a
            // guest saved mid-session could not tell the new host from the old).
            drop(hello);
            serial.close();
            drop(serial);
            snapshot::wait_for_console(
                &args.console,
                snapshot::HOST_LEFT,
                Instant::now() + CONTROL_TIMEOUT,
                ended,
            )?;
            let state = {
                use std::os::unix::fs::OpenOptionsExt;
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(snapshot::libc_o_nofollow())
                    .mode(0o600)
                    .open(partial.join(snapshot::STATE))
                    .map_err(|e| format!("create the snapshot's state file: {e}"))?
            };
            let mut qmp = crate::qmp::Qmp::connect(&args.qmp)?;
            qmp.save(state.as_fd())?;
            state.sync_all().map_err(|e| e.to_string())?;
            let _ = qmp.execute("quit", serde_json::json!({}));
            snapshot::write_meta(&partial, inputs, uptime_ms, spawned.elapsed())
                .map_err(|e| e.to_string())?;
            Ok(())
        })();
        let _ = template.stop(Duration::from_secs(5));
        // The template's sockets go with it; the restored QEMU makes its own.
        let _ = fs::remove_file(run.join("agent.sock"));
        let _ = fs::remove_file(run.join("qmp.sock"));
        match made {
            Ok(()) => fs::rename(&partial, snap)
                .map_err(|e| RuntimeError::io(format!("keep the snapshot {}", snap.display()), e)),
            Err(e) => {
                let _ = fs::remove_dir_all(&partial);
                Err(setup(format!("make the snapshot: {e}")))
            }
        }
    }

    /// Starts the VM's vsock backend in its sandbox (holding the context id's claim) and
    /// returns its vhost-user socket once it exists.
    fn start_backend(
        &self,
        spec: &LaunchSpec,
        id: &str,
        run: &Path,
        uds: &Path,
        vm: &mut Starting,
    ) -> Result<PathBuf, RuntimeError> {
        let lease = vm
            .lease
            .as_ref()
            .ok_or_else(|| setup("a vsock backend without a context id"))?;
        let cid = lease.cid();
        let backend_bin = self.backend_program()?;
        let vhost_socket = run.join("vhost.sock");
        let backend_spec = EmulatorSpec {
            component: spec,
            program: &backend_bin,
            args: vec![
                "--guest-cid".into(),
                cid.to_string(),
                "--socket".into(),
                vhost_socket.display().to_string(),
                "--uds-path".into(),
                uds.display().to_string(),
            ],
            memory: BACKEND_MEMORY,
            accel: None,
        }
        .build(vec![rw(run)]);
        let started = self.sandbox.start_sandbox(
            &backend_spec,
            osvm_sandbox::StartOptions {
                id: Some(vsock_instance(id)),
                // The backend holds the context id's claim as long as it runs, so the id stays
                // the VM's when the daemon is gone (see `vsock::CidLease`).
                fds: &[lease.as_fd()],
                ..Default::default()
            },
        );
        vm.backend = Some(started.map_err(|e| setup(format!("start the vsock backend: {e}")))?);
        let deadline = Instant::now() + Duration::from_secs(10);
        let ended = || {
            let b = vm.backend.as_ref()?;
            let status = b.try_wait().ok().flatten()?;
            Some(format!(
                "the vsock backend {status} before it made its socket; see {}",
                b.log_paths().1.display()
            ))
        };
        let made = || vhost_socket.exists().then_some(()).ok_or(());
        osvm_guest::until_ready(deadline, Duration::from_millis(5), ended, made).map_err(
            |gave| match gave {
                osvm_guest::Gave::Failed(why) => setup(why),
                osvm_guest::Gave::Late(()) => setup("the vsock backend made no socket within 10s"),
            },
        )?;
        Ok(vhost_socket)
    }

    /// Starts a virtiofsd for each of `spec`'s mounts, each in its own sandbox that holds
    /// only its directory (writable or not, as the mount says) and the run directory; returns
    /// their vhost-user sockets in order.
    fn start_shares(
        &self,
        spec: &LaunchSpec,
        shares: &[Share],
        plan: &Plan,
        vm: &mut Starting,
    ) -> Result<Vec<PathBuf>, RuntimeError> {
        if shares.is_empty() {
            return Ok(Vec::new());
        }
        let program = osvm_guest::share::virtiofsd().map_err(unavailable)?;
        let mut sockets = Vec::new();
        for (i, share) in shares.iter().enumerate() {
            let socket = plan.run.join(format!("fs{i}.sock"));
            // The component's volume is mounted by the sandbox at its /data (one mounted file
            // system for every instance of the component, so two VMs can share it in a swap).
            let (dir, what) = match &share.source {
                Some(source) => (source.clone(), source.display().to_string()),
                None => (
                    PathBuf::from(osvm_sandbox::plan::DATA_DIR_INSIDE),
                    "the data volume".to_owned(),
                ),
            };
            let args = osvm_guest::share::virtiofsd_args(&socket, &dir, share.writable);
            let mut binds = vec![rw(&plan.run)];
            match &share.source {
                Some(source) if share.writable => binds.push(rw(source)),
                Some(source) => binds.push(ro(source)),
                None => {}
            }
            let mut share_spec = EmulatorSpec {
                component: spec,
                program: &program,
                args,
                memory: osvm_guest::share::VIRTIOFSD_MEMORY,
                accel: None,
            }
            .build(binds);
            if share.source.is_none() {
                share_spec.data = osvm_core::DataKind::Persistent;
                share_spec.resources.disk_bytes = spec.resources.disk_bytes;
            }
            let inst = self
                .sandbox
                .start_sandbox(
                    &share_spec,
                    osvm_sandbox::StartOptions {
                        id: Some(share_instance(&plan.id, i)),
                        helper_caps: true,
                        ..Default::default()
                    },
                )
                .map_err(|e| setup(format!("start virtiofsd for {what}: {e}")))?;
            vm.shares.push(inst);
            let started = vm.shares.last().expect("just pushed");
            osvm_guest::share::wait_for_socket(started, &socket, &what).map_err(setup)?;
            sockets.push(socket);
        }
        Ok(sockets)
    }

    /// Takes back VM instance `id` that a previous daemon started: its QEMU and vsock backend
    /// still run in their sandboxes, and the agent hands the events and logs over to new
    /// connections (`Reattach`, `Logs`). The context id stays claimed by the backend. A VM that
    /// cannot be driven again (no record, a part gone, an agent that does not answer) is
    /// stopped, and the reason given.
    fn adopt_vm(&self, id: &str) -> Result<Adoption, RuntimeError> {
        let dir = self.config.state_dir.join("instances").join(id);
        let record: AdoptRecord = match fs::read(dir.join(ADOPT_RECORD)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                setup(format!(
                    "{} is malformed: {e}",
                    dir.join(ADOPT_RECORD).display()
                ))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Started by an osvm that did not record VMs, or stopped while booting.
                self.stop_leftovers(id);
                return Ok(Adoption::Stopped(
                    "it has no adoption record (it had not finished booting, or an older osvm \
                     started it); it was stopped and starts again"
                        .into(),
                ));
            }
            Err(e) => return Err(RuntimeError::io(format!("read {}", dir.display()), e)),
        };
        let adopt = |sub: String| match self.sandbox.adopt(&sub) {
            Ok(osvm_sandbox::Adopted::Running(inst)) => Some(*inst),
            _ => None,
        };
        // What is left of a VM that cannot be driven again goes, its address back to the
        // component's namespace.
        let give_up = || {
            self.stop_leftovers(id);
            if let Some((netns, guest)) = &record.net {
                let _ = net::detach(netns, guest);
            }
        };
        let backend = if record.serial {
            None
        } else {
            adopt(vsock_instance(id))
        };
        let (Some(qemu), true) = (adopt(qemu_instance(id)), record.serial || backend.is_some())
        else {
            give_up();
            return Ok(Adoption::Ended(ExitStatus {
                code: None,
                signal: None,
                oom_killed: false,
            }));
        };
        let shares: Option<Vec<_>> = (0..record.shares)
            .map(|i| adopt(share_instance(id, i)))
            .collect();
        let Some(shares) = shares else {
            give_up();
            return Ok(Adoption::Stopped(
                "the virtiofsd of one of its shared directories is gone; it was stopped and \
                 starts again"
                    .into(),
            ));
        };
        let run = dir.join("run");
        let link = if record.serial {
            // The previous daemon's end of the port closed with it; QEMU takes a new one.
            match SerialHost::connect(
                &run.join("agent.sock"),
                Instant::now() + CONTROL_TIMEOUT,
                || None,
            ) {
                Ok(serial) => HostLink::Serial(serial),
                Err(e) => {
                    let _ = qemu.stop(Duration::ZERO);
                    give_up();
                    return Ok(Adoption::Stopped(format!(
                        "its serial link could not be reconnected ({e}); it was stopped and \
                         starts again"
                    )));
                }
            }
        } else {
            HostLink::Vsock {
                uds: run.join("vm.vsock"),
            }
        };
        let instance = MicroVmInstance {
            base: GuestBase::new(id, dir.clone(), Arc::new(qemu), record.net),
            link,
            qmp: run.join("qmp.sock"),
            facts: record.facts,
            backend: Mutex::new(backend),
            shares: Mutex::new(shares),
            lease: Mutex::new(None),
            guest: Arc::new(Mutex::new(Guest::default())),
        };
        match instance.reattach() {
            Ok(()) => Ok(Adoption::Running(Box::new(instance))),
            Err(e) => {
                let _ = instance.stop(Duration::ZERO);
                Ok(Adoption::Stopped(format!(
                    "its guest agent could not be reattached ({e}); it was stopped and starts \
                     again"
                )))
            }
        }
    }
}

/// The instance file that lets a restarted daemon adopt a VM.
const ADOPT_RECORD: &str = "adopt.json";

/// What a restarted daemon needs to take a running VM back.
#[derive(Debug, Serialize, Deserialize)]
struct AdoptRecord {
    /// The VM's facts (also in `vm.json`, for people).
    facts: VmFacts,
    /// The component's namespace and the address the guest took from it.
    net: Option<(String, osvm_agent::proto::GuestNetwork)>,
    /// How many shared directories (virtiofsd sandboxes) it has.
    #[serde(default)]
    shares: usize,
    /// Its agent's link is the serial port (no vsock backend to adopt).
    #[serde(default)]
    serial: bool,
}

/// A directory shared into the guest over virtio-fs.
struct Share {
    /// The host directory; `None`: the component's data volume.
    source: Option<PathBuf>,
    /// Where the guest mounts it.
    target: PathBuf,
    /// Whether the guest may write.
    writable: bool,
}

/// Refuses a guest whose image did not unpack completely: the agent found no mark, or another
/// image's. Such a guest lacks files, or has some cut short (the kernel stops at the first write
/// its root file system refuses), and would fail in ways that name the wrong cause.
fn check_unpacked(mark: Option<&str>, image: &Image, memory_mib: u64) -> Result<(), RuntimeError> {
    match mark {
        Some(mark) if mark == image.digest => Ok(()),
        Some(mark) => Err(setup(format!(
            "the guest booted image {mark}, not {}",
            image.digest
        ))),
        None => Err(too_small(image, memory_mib, true)),
    }
}

/// The error for an image that does not fit in a guest of `memory_mib`.
/// `booted`: the guest booted and its agent found the image incomplete (else it was refused
/// before a boot).
fn too_small(image: &Image, memory_mib: u64, booted: bool) -> RuntimeError {
    RuntimeError::InvalidSpec(format!(
        "the guest's image does not fit in its memory{}: the image holds {:.1} MiB of files and \
         the guest has {memory_mib} MiB of memory, but the kernel unpacks the image into a root \
         file system of about half the memory left beside the image. Give the component about \
         {} MiB (resources.memory), or make its files smaller (a release build, fewer \
         microvm.include paths)",
        if booted {
            " (the guest booted and found it incomplete)"
        } else {
            " (not booted)"
        },
        image.size as f64 / f64::from(1 << 20),
        image::memory_for(image.size)
    ))
}

/// What `spec` shares into its guest: its mounts, then its `/data` when `shared_data` asks
/// for the volume over virtio-fs.
fn shares_of(spec: &LaunchSpec) -> Result<Vec<Share>, RuntimeError> {
    let mut shares: Vec<Share> = spec
        .binds
        .iter()
        .map(|b| Share {
            source: Some(b.source.clone()),
            target: b.target.clone(),
            writable: b.writable,
        })
        .collect();
    if spec.data == osvm_core::DataKind::Persistent && options(spec)?.shared_data {
        shares.push(Share {
            source: None,
            target: PathBuf::from("/data"),
            writable: true,
        });
    }
    Ok(shares)
}

/// Writes `path` whole or not at all.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let partial = path.with_extension("partial");
    fs::write(&partial, bytes)?;
    fs::rename(&partial, path)
}

/// Sends `request` on a new control connection whose use it changes (stdio, reattach, logs)
/// and reads the answer; returns the connection, now without a read timeout, and the answer
/// (an error answer is an error).
fn take_over(link: &HostLink, request: &Request) -> Result<(UnixStream, Response), RuntimeError> {
    let mut conn = link
        .connect(CONTROL_PORT, CONTROL_TIMEOUT)
        .map_err(|e| RuntimeError::io("connect to the guest agent", e))?;
    conn.set_read_timeout(Some(CONTROL_TIMEOUT))
        .map_err(|e| RuntimeError::io("set a timeout", e))?;
    proto::write_msg(&mut conn, request).map_err(|e| setup(format!("send to the agent: {e}")))?;
    let answer = proto::read_msg::<Response>(&mut conn)
        .map_err(|e| setup(format!("read the agent's answer: {e}")))?;
    if let Response::Error { message } = answer {
        return Err(setup(message));
    }
    conn.set_read_timeout(None)
        .map_err(|e| RuntimeError::io("clear the timeout", e))?;
    Ok((conn, answer))
}

/// An instance's stdio channel on the host: what the workload reads, where it writes.
pub struct Stdio {
    /// The read end of the workload's stdin.
    pub stdin: std::os::fd::OwnedFd,
    /// The write end of its stdout.
    pub stdout: std::os::fd::OwnedFd,
}

/// Opens the workload's stdio channel (a control connection taken over) and copies between
/// it and the host's pipes, one thread each way: the host's stdin to the guest (its end shuts
/// the channel's write side), the guest's stdout to the host (its end closes the host's pipe,
/// so the reader sees EOF when the guest's stdout ends or the VM does).
fn connect_stdio(link: &HostLink, stdio: Stdio) -> Result<(), RuntimeError> {
    let (mut channel, answer) =
        take_over(link, &Request::Stdio).map_err(|e| setup(format!("the stdio channel: {e}")))?;
    if answer != Response::Ok {
        return Err(setup(format!("unexpected answer {answer:?}")));
    }
    let mut to_guest = channel
        .try_clone()
        .map_err(|e| RuntimeError::io("clone the stdio channel", e))?;
    let mut from_host = fs::File::from(stdio.stdin);
    let mut to_host = fs::File::from(stdio.stdout);
    let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map(|_| ())
            .map_err(|e| RuntimeError::io("start a stdio thread", e))
    };
    spawn(
        "vm-stdin",
        Box::new(move || {
            let _ = pump(&mut from_host, &mut to_guest);
            let _ = to_guest.shutdown(std::net::Shutdown::Write);
        }),
    )?;
    spawn(
        "vm-stdout",
        Box::new(move || {
            let _ = pump(&mut channel, &mut to_host);
        }),
    )
}

/// Copies `from` to `to` until `from` ends, through a buffer.
///
/// Not `io::copy`: between a socket and a pipe it uses `splice`, and a splice from a socket
/// into a pipe holds the pipe's lock while it waits for the socket, so a reader of the pipe's
/// other end blocks in the kernel however non-blocking its descriptor is. The gateway reads
/// that end on its async runtime, which would stall whenever the guest has nothing to say.
fn pump(from: &mut impl io::Read, to: &mut impl io::Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What a start has decided before it boots anything.
struct Plan {
    /// The instance id.
    id: String,
    /// The instance directory.
    dir: PathBuf,
    /// Its run directory (sockets), bound into both sandboxes.
    run: PathBuf,
    /// The backend's host-side socket.
    uds: PathBuf,
    /// The accelerator.
    accel: Accel,
    /// The TCG warning, if it is TCG.
    warning: Option<String>,
    /// The host's TSC frequency.
    tsc_khz: u64,
    /// The guest kernel.
    kernel: Kernel,
    /// The guest image.
    image: Image,
    /// The program's path (in the guest as on the host).
    program: PathBuf,
    /// vCPUs.
    vcpus: u32,
    /// Guest memory in MiB.
    memory_mib: u64,
    /// When the start was asked for.
    t0: Instant,
}

/// What a half-started VM holds, released in reverse order when a step fails.
struct Starting {
    lease: Option<CidLease>,
    net: Option<Attached>,
    backend: Option<SandboxInstance>,
    shares: Vec<SandboxInstance>,
    qemu: Option<SandboxInstance>,
}

impl Starting {
    fn undo(&mut self) {
        if let Some(q) = self.qemu.take() {
            let _ = q.stop(Duration::ZERO);
        }
        for share in self.shares.drain(..) {
            let _ = share.stop(Duration::ZERO);
        }
        if let Some(b) = self.backend.take() {
            let _ = b.stop(Duration::ZERO);
        }
        if let Some(n) = self.net.take() {
            drop(n.tap);
            let _ = net::detach(&n.netns, &n.guest);
        }
        self.lease.take();
    }
}

fn bind_listener(path: &Path) -> Result<UnixListener, RuntimeError> {
    let _ = fs::remove_file(path);
    UnixListener::bind(path).map_err(|e| RuntimeError::io(format!("bind {}", path.display()), e))
}

/// Accepts one connection before `deadline`, asking `failed` between polls whether to give up.
fn accept_while(
    listener: &UnixListener,
    deadline: Instant,
    failed: impl Fn() -> Option<String>,
) -> Result<UnixStream, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("poll the listener: {e}"))?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("accept: {e}")),
        }
        if let Some(why) = failed() {
            return Err(why);
        }
        if Instant::now() > deadline {
            return Err("the guest agent did not say hello within the boot timeout".into());
        }
        let fd = listener.as_fd();
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u16));
    }
}

/// What the events connection has told about the guest.
#[derive(Debug, Default)]
struct Guest {
    /// The workload's pid in the guest while it runs.
    pid: Option<u32>,
    /// Its exit, once reported.
    exit: Option<ExitStatus>,
    /// Threads still reading the agent's events or logs: once the VM has ended they read
    /// what it sent last, then end.
    readers: usize,
}

/// Counts a reader thread in [`Guest::readers`] until it ends.
struct Reading(Arc<Mutex<Guest>>);

impl Reading {
    fn new(state: &Arc<Mutex<Guest>>) -> Self {
        state.lock().expect("guest state").readers += 1;
        Self(state.clone())
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.readers = s.readers.saturating_sub(1);
    }
}

fn spawn_events(mut conn: UnixStream, state: Arc<Mutex<Guest>>) {
    let reading = Reading::new(&state);
    let _ = std::thread::Builder::new()
        .name("vm-events".into())
        .spawn(move || {
            let _reading = reading;
            loop {
                match proto::read_msg::<Event>(&mut conn) {
                    Ok(Event::Exited { code, signal }) => {
                        let mut s = state.lock().expect("guest state");
                        s.pid = None;
                        s.exit = Some(ExitStatus {
                            code,
                            signal,
                            oom_killed: false,
                        });
                    }
                    Ok(other) => tracing::debug!(?other, "guest event"),
                    Err(_) => break,
                }
            }
        });
}

/// Appends the log chunks of the connection `connect` makes (the agent's, accepted once per
/// boot; or one asked for after an adoption) to the logs.
fn spawn_logs(
    connect: impl FnOnce() -> Option<UnixStream> + Send + 'static,
    stdout: PathBuf,
    stderr: PathBuf,
    state: &Arc<Mutex<Guest>>,
) {
    let reading = Reading::new(state);
    let _ = std::thread::Builder::new()
        .name("vm-logs".into())
        .spawn(move || {
            let _reading = reading;
            let open = |p: &Path| fs::OpenOptions::new().create(true).append(true).open(p);
            let (Ok(mut out), Ok(mut err)) = (open(&stdout), open(&stderr)) else {
                return;
            };
            let Some(mut conn) = connect() else {
                return;
            };
            // The same stamped-line format as a sandboxed process's logs.
            let (mut so, mut se) = (Stamper::default(), Stamper::default());
            while let Ok(Some(chunk)) = proto::read_log(&mut conn) {
                let _ = match chunk.stream {
                    Stream::Stdout => so.feed(&chunk.data, &mut out),
                    Stream::Stderr => se.feed(&chunk.data, &mut err),
                };
            }
            let _ = so.flush(&mut out);
            let _ = se.flush(&mut err);
        });
}

/// What an exec inside the guest printed and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestExec {
    /// Exit code; `None` when killed or timed out.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether the timeout ended it.
    pub timed_out: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// A running (or ended) microVM.
pub struct MicroVmInstance {
    /// Id, files (logs, console, vm.json, run/), QEMU's sandbox, the borrowed network, the end.
    base: GuestBase,
    /// The link to the agent.
    link: HostLink,
    /// QEMU's QMP socket.
    qmp: PathBuf,
    facts: VmFacts,
    /// The vsock backend in its sandbox, until the VM ends.
    backend: Mutex<Option<SandboxInstance>>,
    /// The virtiofsd of each shared directory, until the VM ends.
    shares: Mutex<Vec<SandboxInstance>>,
    /// The context id, until the VM ends.
    lease: Mutex<Option<CidLease>>,
    guest: Arc<Mutex<Guest>>,
}

impl MicroVmInstance {
    /// Facts about the VM.
    pub fn facts(&self) -> &VmFacts {
        &self.facts
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.base.dir
    }

    /// The guest's serial console log.
    pub fn console_path(&self) -> PathBuf {
        self.base.dir.join("console.log")
    }

    /// The sandbox QEMU runs in.
    pub fn qemu(&self) -> &SandboxInstance {
        &self.base.emulator
    }

    /// The vsock context id (while the VM runs).
    pub fn cid(&self) -> u32 {
        self.facts.cid
    }

    /// Opens a connection to guest port `port` (over vsock or the serial link).
    pub fn vsock_connect(&self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        self.link.connect(port, timeout)
    }

    /// Sends one control request and reads the answer.
    pub fn request(&self, req: &Request, timeout: Duration) -> Result<Response, RuntimeError> {
        let mut s = self
            .vsock_connect(CONTROL_PORT, timeout)
            .map_err(|e| RuntimeError::io("connect to the guest agent", e))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| RuntimeError::io("set a timeout", e))?;
        proto::write_msg(&mut s, req).map_err(|e| setup(format!("send to the agent: {e}")))?;
        proto::read_msg(&mut s).map_err(|e| setup(format!("read the agent's answer: {e}")))
    }

    /// Runs a command in the guest.
    pub fn exec(&self, argv: &[String], timeout: Duration) -> Result<GuestExec, RuntimeError> {
        let req = Request::Exec {
            argv: argv.to_vec(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.request(&req, timeout + CONTROL_TIMEOUT)? {
            Response::ExecResult {
                code,
                signal,
                timed_out,
                stdout,
                stderr,
            } => Ok(GuestExec {
                code,
                signal,
                timed_out,
                stdout,
                stderr,
            }),
            Response::Error { message } => Err(setup(format!("exec in the guest: {message}"))),
            other => Err(setup(format!("unexpected answer {other:?}"))),
        }
    }

    /// A byte stream to TCP `port` on the guest's loopback, carried over vsock.
    pub fn connect_tcp(&self, port: u16, timeout: Duration) -> Result<UnixStream, RuntimeError> {
        let mut s = self
            .vsock_connect(CONTROL_PORT, timeout)
            .map_err(|e| RuntimeError::io("connect to the guest agent", e))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| RuntimeError::io("set a timeout", e))?;
        proto::write_msg(&mut s, &Request::Forward { port })
            .map_err(|e| setup(format!("send to the agent: {e}")))?;
        match proto::read_msg::<Response>(&mut s) {
            Ok(Response::Ok) => Ok(s),
            Ok(Response::Error { message }) => Err(RuntimeError::io(
                format!("guest port {port}"),
                io::Error::new(io::ErrorKind::ConnectionRefused, message),
            )),
            Ok(other) => Err(setup(format!("unexpected answer {other:?}"))),
            Err(e) => Err(setup(format!("read the agent's answer: {e}"))),
        }
    }

    /// Takes the events and logs over from a previous daemon's connections (after an adoption).
    fn reattach(&self) -> Result<(), RuntimeError> {
        let (events, answer) = take_over(&self.link, &Request::Reattach)?;
        match answer {
            Response::Attached {
                pid,
                exited,
                code,
                signal,
            } => {
                let mut guest = self.guest.lock().expect("guest");
                guest.pid = pid;
                guest.exit = exited.then_some(ExitStatus {
                    code,
                    signal,
                    oom_killed: false,
                });
            }
            other => return Err(setup(format!("unexpected answer {other:?}"))),
        }
        spawn_events(events, self.guest.clone());
        let (logs, answer) = take_over(&self.link, &Request::Logs)?;
        if answer != Response::Ok {
            return Err(setup(format!("unexpected answer {answer:?}")));
        }
        spawn_logs(
            move || Some(logs),
            self.base.stdout.clone(),
            self.base.stderr.clone(),
            &self.guest,
        );
        Ok(())
    }

    /// Releases what the VM held once QEMU has ended, and works out the exit status.
    fn finish(&self, qemu_status: ExitStatus) -> ExitStatus {
        self.base.finish(|| {
            if let Some(b) = self.backend.lock().expect("backend").take() {
                let _ = b.stop(Duration::ZERO);
            }
            for share in self.shares.lock().expect("shares").drain(..) {
                let _ = share.stop(Duration::ZERO);
            }
            self.lease.lock().expect("lease").take();
            // The reader threads may still be reading the last events and log lines the agent
            // sent; with the backend gone they end at the end of what it passed on. Once they
            // have, the exit is known and the logs are whole, as a caller who saw the exit
            // expects (a loaded host can keep them from running for a good while).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (exit, readers) = {
                    let guest = self.guest.lock().expect("guest");
                    (guest.exit, guest.readers)
                };
                if readers == 0 || Instant::now() > deadline {
                    break exit.unwrap_or(ExitStatus {
                        code: None,
                        // QEMU killed: report its signal; QEMU ended by itself without an exit
                        // report (guest crash, power-off without a workload): unknown.
                        signal: qemu_status.signal,
                        oom_killed: qemu_status.oom_killed,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }
}

impl Instance for MicroVmInstance {
    osvm_guest::guest_instance_basics!(base);

    fn wait(&self) -> Result<ExitStatus, RuntimeError> {
        let s = self.base.emulator.wait()?;
        Ok(self.finish(s))
    }

    fn try_wait(&self) -> Result<Option<ExitStatus>, RuntimeError> {
        if let Some(s) = self.base.ended() {
            return Ok(Some(s));
        }
        Ok(self.base.emulator.try_wait()?.map(|s| self.finish(s)))
    }

    /// Sends the renewed files to the agent, which replaces its copies.
    fn refresh_identity(&self, dir: &Path) -> Result<(), RuntimeError> {
        let files = osvm_guest::share::identity_files(dir)?;
        match self.request(&Request::Identity { files }, CONTROL_TIMEOUT)? {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(setup(format!("identity in the guest: {message}"))),
            other => Err(setup(format!("unexpected answer {other:?}"))),
        }
    }

    fn signal(&self, signal: i32) -> Result<(), RuntimeError> {
        match self.request(&Request::Signal { signal }, CONTROL_TIMEOUT)? {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(setup(format!("signal in the guest: {message}"))),
            other => Err(setup(format!("unexpected answer {other:?}"))),
        }
    }

    fn stop(&self, grace: Duration) -> Result<ExitStatus, RuntimeError> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        let asked = self.request(
            &Request::Shutdown {
                grace_ms: grace.as_millis() as u64,
            },
            CONTROL_TIMEOUT,
        );
        if let Err(e) = &asked {
            tracing::warn!(instance = %self.base.id, "graceful shutdown through the agent failed: {e}");
        }
        let wait = |d: Duration| -> Result<Option<ExitStatus>, RuntimeError> {
            let deadline = Instant::now() + d;
            loop {
                if let Some(s) = self.base.emulator.try_wait()? {
                    return Ok(Some(s));
                }
                if Instant::now() > deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        if asked.is_ok()
            && let Some(s) = wait(grace + Duration::from_secs(5))?
        {
            return Ok(self.finish(s));
        }
        if qemu::quit(&self.qmp, Duration::from_secs(2)).is_ok()
            && let Some(s) = wait(Duration::from_secs(3))?
        {
            return Ok(self.finish(s));
        }
        let s = self.base.emulator.stop(Duration::ZERO)?;
        Ok(self.finish(s))
    }

    fn kill(&self) -> Result<(), RuntimeError> {
        self.base.emulator.stop(Duration::ZERO).map(|_| ())
    }

    fn endpoint(&self) -> Result<Endpoint, RuntimeError> {
        Ok(Endpoint::Runtime)
    }

    fn connect(&self, port: u16, timeout: Duration) -> Result<Box<dyn Conn>, RuntimeError> {
        let s = self.connect_tcp(port, timeout)?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| RuntimeError::io("set a timeout", e))?;
        Ok(Box::new(s))
    }

    fn reach(&self, port: u16) -> String {
        match &self.facts.address {
            Some(addr) => format!(
                "port {port} is on the guest at {}",
                addr.split('/').next().unwrap_or(addr)
            ),
            None => format!("port {port} is in the guest; it has no network (only vsock)"),
        }
    }

    fn exec(&self, command: &[String], timeout: Duration) -> Result<ExecResult, RuntimeError> {
        // The sandbox's convention: 128 + N when signal N killed it, `None` on timeout.
        MicroVmInstance::exec(self, command, timeout).map(|o| ExecResult {
            code: match (o.timed_out, o.code, o.signal) {
                (true, _, _) => None,
                (false, Some(c), _) => Some(c),
                (false, None, Some(s)) => Some(128 + s),
                (false, None, None) => None,
            },
            stdout: o.stdout.into_bytes(),
            stderr: o.stderr.into_bytes(),
        })
    }

    fn confinement(&self) -> osvm_core::Confinement {
        let f = &self.facts;
        osvm_core::Confinement::Guest(osvm_core::GuestConfinement {
            kind: osvm_core::RuntimeKind::MicroVm,
            driver: "QEMU microvm".into(),
            accelerator: f.accel.as_str().into(),
            launcher_reason: None,
            vcpus: f.vcpus,
            memory_mib: f.memory_mib,
            kernel: Some(f.kernel.clone()),
            image: f.image[..12].to_owned(),
            image_size: f.image_size,
            vsock_cid: Some(f.cid),
            warning: f.warning.clone(),
            emulator: self.base.emulator.confinement().sandbox().clone(),
        })
    }
}

impl Runtime for MicroVmRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::MicroVm
    }

    fn start(&self, spec: &LaunchSpec, wiring: Wiring) -> Result<Box<dyn Instance>, RuntimeError> {
        if !wiring.fds.is_empty() {
            return Err(RuntimeError::InvalidSpec(
                "a microVM's workload gets no listening sockets from the host (its ports are \
                 reached over vsock or its hub address)"
                    .into(),
            ));
        }
        let stdio = match (wiring.stdin, wiring.stdout) {
            (Some(stdin), Some(stdout)) => Some(Stdio { stdin, stdout }),
            (None, None) => None,
            _ => {
                return Err(RuntimeError::InvalidSpec(
                    "a microVM's stdio channel needs both its stdin and its stdout".into(),
                ));
            }
        };
        Ok(Box::new(self.start_vm_with(spec, &wiring.id, stdio)?))
    }

    fn adopt(&self, id: &str) -> Result<Adoption, RuntimeError> {
        self.adopt_vm(id)
    }

    fn stop_leftovers(&self, id: &str) {
        MicroVmRuntime::stop_leftovers(self, id);
    }

    /// The component no longer holds the snapshot it started from (which stays, for the same
    /// component brought up again, until `osvm snapshot prune`).
    fn released(&self, stack: &str, name: &str) -> Option<String> {
        let snapshots = self.config.state_dir.join("snapshots");
        snapshot::release(&snapshots, &format!("{stack}.{name}"))
            .err()
            .map(|e| format!("could not release {stack}.{name}'s snapshot: {e}"))
    }

    fn prepare(
        &self,
        spec: &LaunchSpec,
        _progress: &mut dyn FnMut(osvm_core::Progress),
    ) -> Result<(), RuntimeError> {
        self.preflight(spec)
    }
}

/// The microVM settings of `spec`, which must be a microVM's.
fn options(spec: &LaunchSpec) -> Result<&osvm_core::VmOptions, RuntimeError> {
    spec.runtime
        .vm_options()
        .ok_or_else(|| spec.runtime.given_to(&spec.name, RuntimeKind::MicroVm))
}
