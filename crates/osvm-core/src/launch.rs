//! What a runtime needs to start one instance of a component.
//!
//! A [`LaunchSpec`] is the runtime-neutral description: the stack file's component after
//! validation, or the flags of `osvm run`. Each runtime turns it into its own confinement
//! (a sandboxed process, a microVM, a unikernel).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything a runtime needs to start an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    /// The component's name; also the hostname inside the sandbox.
    pub name: String,
    /// The stack the component belongs to, if any; it scopes the component's persistent state
    /// so that two stacks may each have a component of the same name.
    #[serde(default)]
    pub stack: Option<String>,
    /// The program to run, an absolute path or a name looked up in `PATH` inside the sandbox.
    pub command: String,
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    /// The workload's whole environment; nothing leaks in from the host.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (default: the component's state directory).
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Limits enforced by the runtime.
    #[serde(default)]
    pub resources: Resources,
    /// TCP ports the component listens on; where the runtime can, binding any other is denied.
    #[serde(default)]
    pub listen: Vec<u16>,
    /// Make the root file system read-only; only `/tmp`, the state directory and writable
    /// binds can be written.
    #[serde(default)]
    pub readonly_root: bool,
    /// Host paths bound into the sandbox.
    #[serde(default)]
    pub binds: Vec<BindMount>,
    /// A directory to use as the root file system instead of the default read-only view of the
    /// host's `/usr`, `/lib*`, `/bin`, `/sbin` and a minimal `/etc`.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// The root file system as an overlay of host directories instead (a container image's
    /// layers, as containerd's overlay snapshotter makes them); exclusive with `rootfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_overlay: Option<OverlayRoot>,
    /// The user the workload runs as inside its user namespace instead of its root (a
    /// container image's `USER`, Kubernetes' `runAsUser`): ids of the sandbox's own range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<RunAs>,
    /// A network namespace to join (such as `/run/netns/<name>`, set up by the host with its
    /// interfaces and routes) instead of a fresh one with only loopback. The namespace belongs
    /// to the host's user namespace, so the workload cannot reconfigure it.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Extra `/etc/hosts` lines inside the sandbox, as (address, names).
    #[serde(default)]
    pub hosts: Vec<(String, String)>,
    /// The component's `mtls_egress`, resolved, for a runtime whose guest is its own proxy
    /// (a microVM): a process reaches osvm's egress proxy on its namespace's loopback instead,
    /// and this stays empty.
    #[serde(default)]
    pub tls_egress: Vec<TlsEgress>,
    /// A host directory whose files the instance sees, read-only, at `/run/osvm/identity`
    /// (certificate, key, trust bundle, CRL): copied in at start and again whenever the
    /// instance is asked to refresh them, so no host path is mounted into it.
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// What the instance gets at `/data`.
    #[serde(default)]
    pub data: DataKind,
    /// Allow native AIO (`io_setup` and friends). Off by default: every AIO context counts
    /// against the host-wide `fs.aio-max-nr`, which one sandbox could otherwise exhaust.
    #[serde(default)]
    pub native_aio: bool,
    /// How big the instance's stdout and stderr logs may grow before they rotate.
    #[serde(default)]
    pub logs: LogLimits,
    /// Which runtime runs it, with that runtime's settings (a nested table here: the launch
    /// plan refuses unknown fields, which a flattened enum cannot).
    #[serde(default)]
    pub runtime: RuntimeSpec,
}

/// One `mtls_egress` entry resolved on the hub: plain TCP on the guest's `127.0.0.1:listen`
/// leaves as mutual TLS to `upstream`, whose certificate must name `server_name` and belong to
/// `trust_domain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsEgress {
    /// The port on the guest's loopback.
    pub listen: u16,
    /// The target's service address and port.
    pub upstream: std::net::SocketAddr,
    /// The DNS name in the target's certificate (`db.shop.osvm`).
    pub server_name: String,
    /// The stack's trust domain.
    pub trust_domain: String,
}

/// Which runtime isolates a component, with that runtime's own settings: a component cannot
/// carry the settings of a runtime it does not use.
///
/// Serialized as `runtime = "<kind>"` beside the settings table of that runtime (`microvm` or
/// `unikernel`), the stack file's own shape.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "runtime", rename_all = "snake_case")]
pub enum RuntimeSpec {
    /// A confined Linux process.
    #[default]
    Process,
    /// A QEMU `microvm` virtual machine.
    #[serde(rename = "microvm")]
    MicroVm {
        /// Its accelerator, guest kernel and files in its image.
        #[serde(default)]
        microvm: VmOptions,
    },
    /// A Hermit unikernel.
    Unikernel {
        /// Its launcher, accelerator, boot timeout and deadline.
        #[serde(default)]
        unikernel: UnikernelOptions,
    },
}

impl RuntimeSpec {
    /// Which runtime this is.
    pub fn kind(&self) -> crate::RuntimeKind {
        match self {
            RuntimeSpec::Process => crate::RuntimeKind::Process,
            RuntimeSpec::MicroVm { .. } => crate::RuntimeKind::MicroVm,
            RuntimeSpec::Unikernel { .. } => crate::RuntimeKind::Unikernel,
        }
    }

    /// A microVM with default settings.
    pub fn microvm() -> Self {
        RuntimeSpec::MicroVm {
            microvm: VmOptions::default(),
        }
    }

    /// A unikernel with default settings.
    pub fn unikernel() -> Self {
        RuntimeSpec::Unikernel {
            unikernel: UnikernelOptions::default(),
        }
    }

    /// The microVM settings, when this is a microVM.
    pub fn vm_options(&self) -> Option<&VmOptions> {
        match self {
            RuntimeSpec::MicroVm { microvm } => Some(microvm),
            _ => None,
        }
    }

    /// The error of component `name`'s spec of this kind handed to the `runtime` runtime.
    pub fn given_to(&self, name: &str, runtime: crate::RuntimeKind) -> crate::RuntimeError {
        crate::RuntimeError::InvalidSpec(format!(
            "{name}: a {} spec given to the {runtime} runtime",
            self.kind()
        ))
    }

    /// The unikernel settings, when this is a unikernel.
    pub fn unikernel_options(&self) -> Option<&UnikernelOptions> {
        match self {
            RuntimeSpec::Unikernel { unikernel } => Some(unikernel),
            _ => None,
        }
    }
}

/// What an instance finds at `/data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// The component's own volume, kept across restarts, swaps and daemon restarts, at most
    /// `resources.disk` big.
    #[default]
    Persistent,
    /// A private scratch space of at most `resources.disk`, gone when the instance ends (an
    /// `osvm run` without `--name`, the helper sandboxes of VMs).
    Ephemeral,
}

/// Size-based rotation of an instance's `stdout.log` and `stderr.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLimits {
    /// A log that grows past this many bytes moves to `<log>.1` (older copies shift up) and
    /// starts again empty.
    pub max_bytes: u64,
    /// How many rotated copies of each log are kept.
    pub files: u32,
}

impl LogLimits {
    /// The default size at which a log rotates: 10 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
    /// The default number of rotated copies kept: 3.
    pub const DEFAULT_FILES: u32 = 3;
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            files: Self::DEFAULT_FILES,
        }
    }
}

/// The accelerator a microVM asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelChoice {
    /// KVM where the host has VMX/SVM, QEMU TCG (software emulation, with a warning) elsewhere.
    #[default]
    Auto,
    /// KVM, or an error naming why the host cannot.
    Kvm,
    /// QEMU TCG even where KVM exists.
    Tcg,
}

/// How a microVM's agent and osvm reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkChoice {
    /// vsock, through a vhost-device-vsock backend in its own sandbox.
    #[default]
    Vsock,
    /// One virtio-serial port carrying every connection (no vsock backend; the link a
    /// snapshotted VM needs, since QEMU cannot save the vhost-user vsock device).
    Serial,
}

/// A confidential-computing technology a microVM may ask for: its memory encrypted and
/// integrity-protected from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfidentialChoice {
    /// AMD SEV-SNP.
    SevSnp,
    /// Intel TDX.
    Tdx,
}

impl ConfidentialChoice {
    /// The name in stack files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SevSnp => "sev-snp",
            Self::Tdx => "tdx",
        }
    }
}

/// Settings of the `microvm` runtime; guest memory and vCPUs come from [`Resources`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmOptions {
    /// Which accelerator.
    #[serde(default)]
    pub accel: AccelChoice,
    /// A guest kernel image instead of the one `osvm kernel fetch` stored.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// The `lib/modules/<release>` tree of that kernel (for its virtio and vsock modules).
    #[serde(default)]
    pub kernel_modules: Option<PathBuf>,
    /// Host files or directory trees copied into the guest image at the same path.
    #[serde(default)]
    pub include: Vec<PathBuf>,
    /// How long the guest may take to boot until its agent answers, in milliseconds
    /// (default 60 s).
    #[serde(default)]
    pub boot_timeout_ms: Option<u64>,
    /// A confidential guest: refused at start unless the host can give it, never run without.
    #[serde(default)]
    pub confidential: Option<ConfidentialChoice>,
    /// No data disk: the guest's `/data` is part of its image's memory file system, gone with
    /// the instance, and the component can be hot-swapped (a disk cannot be in two guests).
    #[serde(default)]
    pub no_data_disk: bool,
    /// The component's volume reaches the guest's `/data` over virtio-fs (a virtiofsd whose
    /// sandbox mounts it) instead of as a disk: slower for small files, but two instances can
    /// share it, so a stateful VM can be hot-swapped.
    #[serde(default)]
    pub shared_data: bool,
    /// The agent's link.
    #[serde(default)]
    pub link: LinkChoice,
    /// Start from a snapshot of a guest booted once until its agent was ready (made at the
    /// first start); needs the serial link, no data disk and no mounts.
    #[serde(default)]
    pub snapshot: bool,
}

/// Which program boots a Hermit image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LauncherChoice {
    /// uhyve where the host has hardware KVM and uhyve is installed, QEMU otherwise.
    #[default]
    Auto,
    /// uhyve, or an error naming why it cannot run here.
    Uhyve,
    /// QEMU booting osvm's Hermit loader (KVM where usable, TCG elsewhere).
    Qemu,
}

/// Settings of the `unikernel` runtime; the image is the spec's `command` (a Hermit ELF file,
/// or a crate directory osvm builds), guest memory and vCPUs come from [`Resources`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnikernelOptions {
    /// Which launcher.
    #[serde(default)]
    pub launcher: LauncherChoice,
    /// QEMU's accelerator.
    #[serde(default)]
    pub accel: AccelChoice,
    /// How long the kernel may take to reach the app's `main`, in milliseconds (default 30 s).
    #[serde(default)]
    pub boot_timeout_ms: Option<u64>,
    /// Wall-clock limit of one run in milliseconds: a guest still running then is stopped and
    /// reported as over its deadline.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

impl LaunchSpec {
    /// A spec with no limits beyond the defaults, for `command args...`.
    pub fn new(name: impl Into<String>, command: impl Into<String>, args: Vec<String>) -> Self {
        Self {
            name: name.into(),
            stack: None,
            command: command.into(),
            args,
            env: Vec::new(),
            working_dir: None,
            netns: None,
            hosts: Vec::new(),
            tls_egress: Vec::new(),
            identity: None,
            resources: Resources::default(),
            listen: Vec::new(),
            readonly_root: false,
            binds: Vec::new(),
            rootfs: None,
            rootfs_overlay: None,
            user: None,
            data: DataKind::default(),
            native_aio: false,
            logs: LogLimits::default(),
            runtime: RuntimeSpec::Process,
        }
    }
}

/// Resource limits of one instance. `None` means "no limit beyond the host's", except for
/// `disk_bytes`, where it means [`Resources::DEFAULT_DISK`]: a sandbox's writable storage is
/// always capped. [`Resources::defaults`] are what both `osvm run` and stack components get
/// when they say nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in bytes (swap included where the host accounts it).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU quota in CPUs (0.5 = half of one CPU's time).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads.
    #[serde(default)]
    pub pids: Option<u64>,
    /// Maximum number of open file descriptors (`RLIMIT_NOFILE`).
    #[serde(default)]
    pub open_files: Option<u64>,
    /// How much the instance may store: the size of its `/data` volume, and of each of its
    /// writable in-memory file systems (`/tmp`, `/dev/shm`, a writable root) at most.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
}

impl Resources {
    /// Default memory limit: 512 MiB.
    pub const DEFAULT_MEMORY: u64 = 512 << 20;
    /// Default CPU quota: 2 CPUs.
    pub const DEFAULT_CPUS: f64 = 2.0;
    /// Default process and thread limit.
    pub const DEFAULT_PIDS: u64 = 4096;
    /// Default open file descriptor limit.
    pub const DEFAULT_OPEN_FILES: u64 = 1024;
    /// Default storage cap: 1 GiB.
    pub const DEFAULT_DISK: u64 = 1 << 30;
    /// The smallest storage cap: 16 MiB.
    pub const MIN_DISK: u64 = 16 << 20;

    /// The limits a component or an `osvm run` gets for every key it leaves out.
    pub fn defaults() -> Self {
        Self {
            memory_bytes: Some(Self::DEFAULT_MEMORY),
            cpus: Some(Self::DEFAULT_CPUS),
            pids: Some(Self::DEFAULT_PIDS),
            open_files: Some(Self::DEFAULT_OPEN_FILES),
            disk_bytes: Some(Self::DEFAULT_DISK),
        }
    }

    /// The storage cap in bytes.
    pub fn disk(&self) -> u64 {
        self.disk_bytes.unwrap_or(Self::DEFAULT_DISK)
    }
}

/// A user and its groups inside a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// A root file system made of host directories by overlayfs: read-only `lower` layers, topmost
/// first, and, for a writable root, an `upper` directory with overlayfs's `work` directory
/// beside it (the same parent directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayRoot {
    pub lower: Vec<PathBuf>,
    #[serde(default)]
    pub upper: Option<PathBuf>,
    #[serde(default)]
    pub work: Option<PathBuf>,
}

impl OverlayRoot {
    /// Checks the shape: at least one lower layer, absolute paths, upper and work together and
    /// side by side.
    pub fn check(&self) -> Result<(), String> {
        if self.lower.is_empty() {
            return Err("an overlay root needs at least one lower layer".into());
        }
        let all = self.lower.iter().chain(&self.upper).chain(&self.work);
        if let Some(p) = all.clone().find(|p| !p.is_absolute()) {
            return Err(format!(
                "overlay layer {} is not an absolute path",
                p.display()
            ));
        }
        match (&self.upper, &self.work) {
            (None, None) => Ok(()),
            (Some(upper), Some(work))
                if upper.parent().is_some() && upper.parent() == work.parent() =>
            {
                Ok(())
            }
            (Some(upper), Some(work)) => Err(format!(
                "overlay upper {} and work {} must be in the same directory",
                upper.display(),
                work.display()
            )),
            _ => Err("an overlay root's upper and work directories come together".into()),
        }
    }

    /// The directory that names this root in messages: its upper layer, else its top layer.
    pub fn name(&self) -> &std::path::Path {
        self.upper
            .as_deref()
            .or(self.lower.first().map(PathBuf::as_path))
            .unwrap_or(std::path::Path::new("overlay"))
    }
}

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindMount {
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
    /// Whether the component may write through it (default: read-only).
    #[serde(default)]
    pub writable: bool,
}

impl BindMount {
    /// Parses `SRC:DST[:ro|:rw]` as given to `osvm run --bind`; the default is read-only.
    pub fn parse_flag(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, writable) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, false),
            [src, dst, "rw"] => (*src, *dst, true),
            [_, _, mode] => {
                return Err(format!("bind mode must be `ro` or `rw`, got `{mode}`"));
            }
            _ => return Err(format!("expected SRC:DST[:ro|:rw], got `{s}`")),
        };
        let bind = Self {
            source: PathBuf::from(source),
            target: PathBuf::from(target),
            writable,
        };
        bind.check()?;
        Ok(bind)
    }

    /// Both paths must be absolute and the target must not contain `..`.
    pub fn check(&self) -> Result<(), String> {
        if !self.source.is_absolute() {
            return Err(format!(
                "bind source `{}` must be an absolute path",
                self.source.display()
            ));
        }
        if !self.target.is_absolute() {
            return Err(format!(
                "bind target `{}` must be an absolute path",
                self.target.display()
            ));
        }
        if self
            .target
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!(
                "bind target `{}` must not contain `..`",
                self.target.display()
            ));
        }
        if self.target == std::path::Path::new("/") {
            return Err("bind target must not be `/`".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_spec_with_each_runtime_round_trips_through_the_launch_plans_json() {
        for runtime in [
            RuntimeSpec::Process,
            RuntimeSpec::microvm(),
            RuntimeSpec::Unikernel {
                unikernel: UnikernelOptions {
                    deadline_ms: Some(5),
                    ..UnikernelOptions::default()
                },
            },
        ] {
            let mut spec = LaunchSpec::new("a", "/bin/true", vec![]);
            spec.runtime = runtime;
            let json = serde_json::to_string(&spec).unwrap();
            let back: LaunchSpec = serde_json::from_str(&json).unwrap();
            assert_eq!(back.runtime, spec.runtime, "{json}");
        }
    }

    #[test]
    fn bind_flag_defaults_to_read_only() {
        let b = BindMount::parse_flag("/srv/www:/www").unwrap();
        assert!(!b.writable);
        assert!(BindMount::parse_flag("/srv:/srv:rw").unwrap().writable);
        assert!(BindMount::parse_flag("/srv:/srv:xx").is_err());
        assert!(BindMount::parse_flag("srv:/srv").is_err());
        assert!(BindMount::parse_flag("/srv:/a/../b").is_err());
    }
}
