//! The `unikernel` runtime: one Hermit guest per instance, its launcher (QEMU or uhyve)
//! confined by the process sandbox.
//!
//! Starting an instance, in order (each step undone if a later one fails):
//! 1. choose the launcher and accelerator ([`crate::launcher`]); find or build the image (the
//!    spec's `command`: a Hermit ELF file, or a crate directory) and, for QEMU, the loader;
//! 2. in a hub stack, attach a TAP in the component's network namespace (the microVM's
//!    [`osvm_guest::net`]); the guest gets the component's address on its command line;
//! 3. start the launcher in a process sandbox (namespaces, cgroup sized for guest memory plus
//!    [`LAUNCHER_OVERHEAD`], seccomp, no capabilities, read-only root with only the loader and
//!    image bound), its stdout (the guest's serial port) on a pipe osvm reads;
//! 4. wait, up to the boot timeout, for the kernel's "Jumping into application".
//!
//! Under QEMU, before step 3, the component's identity files are copied to
//! `<instance>/share/osvm/identity/` and served read-only by a virtiofsd in a sandbox of its
//! own; the kernel (built with `fuse`) mounts the device, tagged `run`, at `/run`, so the app
//! reads `/run/osvm/identity/cert.pem` as a process does. Renewals rewrite the copies.
//!
//! The serial reader writes the boot output and the kernel's lines to `console.log` and the
//! app's lines to `stdout.log`, and keeps the `exit status N` line: the app's exit code. A deadline, if set, ends the guest
//! when it passes; stopping ends the launcher (SIGTERM, then SIGKILL after the grace period):
//! a Hermit app has no way to be told to shut down.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use osvm_core::{
    Adoption, Endpoint, ExitStatus, Instance, LaunchSpec, Runtime, RuntimeError, RuntimeKind,
    Wiring,
};
use osvm_guest::emulator::{EmulatorSpec, ro, rw};
use osvm_guest::host::Accel;
use osvm_guest::net::{self, Attached};
use osvm_guest::tail;
use osvm_guest::{GuestBase, setup};
use osvm_sandbox::output::Stamper;
use osvm_sandbox::{SandboxInstance, SandboxRuntime, StartOptions};
use serde::{Deserialize, Serialize};

use crate::image::{self, Image};
use crate::launcher::{Choice, Host, Launcher};
use crate::serial::{self, Line};
use crate::steps::Progress;
use crate::toolchain::Toolchain;

/// Guest memory when the stack sets none (Hermit apps boot in 64 MiB; 32 MiB panics).
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// The smallest guest osvm starts.
const MIN_MEMORY_MIB: u64 = 64;
/// Memory the launcher itself needs besides guest RAM (QEMU's code and TCG cache).
pub const LAUNCHER_OVERHEAD: u64 = 192 << 20;
/// How long the kernel may take to reach the app by default.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Facts about a running guest, shown by `osvm status` and kept in `unikernel.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnikernelFacts {
    /// uhyve or QEMU.
    pub launcher: Launcher,
    /// The accelerator.
    pub accel: Accel,
    /// Why this launcher.
    pub reason: String,
    /// Why it is TCG, if it is.
    pub warning: Option<String>,
    /// The image's SHA-256.
    pub image: String,
    /// The image's size in bytes.
    pub image_size: u64,
    /// The app's name.
    pub app: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Milliseconds from spawning the launcher to the kernel calling the app.
    pub boot_ms: u64,
    /// Milliseconds from the start request to the app running (builds included).
    pub ready_ms: u64,
    /// The guest's address, if it has a network.
    pub address: Option<String>,
    /// The wall-clock limit of the run, if any, in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Where the app finds its identity (`/run/osvm/identity`, over virtio-fs), or why it has
    /// none.
    #[serde(default)]
    pub identity: String,
}

/// The `unikernel` runtime.
pub struct UnikernelRuntime {
    sandbox: Arc<SandboxRuntime>,
    state_dir: PathBuf,
    host: Host,
}

/// The unikernel runtime cannot work here, because of `reason`.
fn unavailable(reason: impl Into<String>) -> RuntimeError {
    osvm_guest::unavailable(RuntimeKind::Unikernel, reason)
}

/// The id of unikernel instance `id`'s launcher sandbox (QEMU or uhyve).
fn launcher_instance(id: &str) -> String {
    format!("{id}-qemu")
}

/// The id of the sandbox of the virtiofsd serving unikernel instance `id`'s identity.
fn share_instance(id: &str) -> String {
    format!("{id}-fs")
}

/// Where the app finds its identity: the virtio-fs device's tag is its mount point (`/run`),
/// and the share holds `osvm/identity/`.
const IDENTITY_IN_GUEST: &str = "/run/osvm/identity";
/// The virtio-fs device's tag.
const SHARE_TAG: &str = "run";

/// The identity files as the guest sees them: written beside and renamed into place in
/// `staging` (`<instance>/share/osvm/identity`), with a process sandbox's modes.
fn write_identity_copy(identity: &Path, staging: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let files = osvm_guest::share::identity_files(identity)?;
    fs::create_dir_all(staging)
        .map_err(|e| RuntimeError::io(format!("create {}", staging.display()), e))?;
    for f in files {
        let path = staging.join(&f.name);
        let partial = staging.join(format!(".{}.partial", f.name));
        let _ = fs::remove_file(&partial);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&partial)
            .and_then(|mut file| {
                file.write_all(f.text.as_bytes())?;
                file.set_permissions(fs::Permissions::from_mode(f.mode))
            })
            .and_then(|()| fs::rename(&partial, &path))
            .map_err(|e| RuntimeError::io(format!("write {}", path.display()), e))?;
    }
    Ok(())
}

impl UnikernelRuntime {
    /// Stops what is left of unikernel instance `id` that an earlier process started (its
    /// serial port was a pipe into that process): its launcher, in its sandbox.
    pub fn stop_leftovers(&self, id: &str) {
        for sandbox in [launcher_instance(id), share_instance(id)] {
            if let Ok(osvm_sandbox::Adopted::Running(inst)) = self.sandbox.adopt(&sandbox) {
                let _ = inst.stop(Duration::ZERO);
            }
        }
    }

    /// Starts the virtiofsd that serves the component's identity to instance `id` (QEMU
    /// only; a spec without identity, as `osvm run` makes, gets none). Returns the sandbox
    /// and its socket, or why there is none.
    fn identity_share(
        &self,
        spec: &LaunchSpec,
        plan: &Plan<'_>,
    ) -> Result<Result<IdentityShare, String>, RuntimeError> {
        let Some(identity) = &spec.identity else {
            return Ok(Err(
                "not delivered: the instance was given no identity".into()
            ));
        };
        if plan.choice.launcher != Launcher::Qemu {
            return Ok(Err(
                "not delivered: osvm shares it over virtio-fs, which it wires only under QEMU"
                    .into(),
            ));
        }
        let program = match osvm_guest::share::virtiofsd() {
            Ok(p) => p,
            Err(why) => return Ok(Err(format!("not delivered: {why}"))),
        };
        let root = plan.dir.join("share");
        let staging = root.join("osvm").join("identity");
        write_identity_copy(identity, &staging)?;
        let run = plan.dir.join("run");
        fs::create_dir_all(&run)
            .map_err(|e| RuntimeError::io(format!("create {}", run.display()), e))?;
        let socket = run.join("fs.sock");
        let _ = fs::remove_file(&socket);
        let share_spec = EmulatorSpec {
            component: spec,
            program: &program,
            args: osvm_guest::share::virtiofsd_args(&socket, &root, false),
            memory: osvm_guest::share::VIRTIOFSD_MEMORY,
            accel: None,
        }
        .build(vec![rw(&run), ro(&root)]);
        let virtiofsd = self
            .sandbox
            .start_sandbox(
                &share_spec,
                StartOptions {
                    id: Some(share_instance(plan.id)),
                    helper_caps: true,
                    ..Default::default()
                },
            )
            .map_err(|e| setup(format!("start virtiofsd for the identity: {e}")))?;
        if let Err(e) = osvm_guest::share::wait_for_socket(&virtiofsd, &socket, "the identity") {
            let _ = virtiofsd.stop(Duration::ZERO);
            return Err(setup(e));
        }
        Ok(Ok(IdentityShare {
            virtiofsd,
            socket,
            staging,
        }))
    }

    /// A runtime whose launchers run in `sandbox`'s sandboxes; images, kernels and the loader
    /// are kept under `state_dir/unikernel`.
    pub fn new(sandbox: Arc<SandboxRuntime>, state_dir: PathBuf) -> Self {
        Self {
            sandbox,
            state_dir,
            host: Host::probe(),
        }
    }

    /// What the host offers.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The launcher `spec` would get, or why it cannot get one.
    pub fn choose(&self, spec: &LaunchSpec) -> Result<Choice, RuntimeError> {
        if let Some(r) = self.sandbox.unavailable_reason() {
            return Err(unavailable(format!(
                "the process sandbox that confines the launcher: {r}"
            )));
        }
        let options = options(spec)?;
        self.host
            .choose(options.launcher, options.accel)
            .map_err(unavailable)
    }

    /// The image path or crate directory `spec` names.
    fn source_of(spec: &LaunchSpec) -> Result<PathBuf, RuntimeError> {
        let path = PathBuf::from(&spec.command);
        if !path.is_absolute() {
            return Err(RuntimeError::InvalidSpec(format!(
                "a unikernel's command names its Hermit image or crate by path (absolute, or \
                 relative to the stack file): `{}`",
                spec.command
            )));
        }
        if !path.exists() {
            return Err(RuntimeError::InvalidSpec(format!(
                "{} does not exist: a unikernel's command is a Hermit image (ELF file) or the \
                 directory of a Rust crate osvm builds into one",
                path.display()
            )));
        }
        Ok(path)
    }

    /// The image for `spec` (built if it names a crate whose build is not stored) and, for
    /// QEMU, the loader: also what `osvm up` checks before it starts anything.
    pub fn prepare_image(
        &self,
        spec: &LaunchSpec,
        launcher: Launcher,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Image, Option<PathBuf>), RuntimeError> {
        let source = Self::source_of(spec)?;
        let built = |e: crate::BuildError| match e {
            crate::BuildError::Missing(m) => unavailable(m.to_string()),
            crate::BuildError::Input(m) => RuntimeError::InvalidSpec(m),
            other => setup(format!("build the Hermit image: {other}")),
        };
        // The tools are found once: a crate needs them to build, QEMU for the loader.
        let is_crate = image::is_crate(&source);
        let tc = if is_crate || launcher == Launcher::Qemu {
            progress(Progress::Step(image::CHECKING_TOOLS.into()));
            Some(Toolchain::probe().map_err(|e| unavailable(e.to_string()))?)
        } else {
            None
        };
        let image = match &tc {
            Some(tc) if is_crate => image::build_with(&self.state_dir, &source, tc, progress),
            _ => image::existing(&source),
        }
        .map_err(built)?;
        let loader = match (&tc, launcher) {
            (Some(tc), Launcher::Qemu) => {
                Some(crate::loader::ensure_locked(&self.state_dir, tc, progress).map_err(built)?)
            }
            _ => None,
        };
        Ok((image, loader))
    }

    /// Starts an instance under the id `id` (`<name>-<suffix>`).
    pub fn start_unikernel(
        &self,
        spec: &LaunchSpec,
        id: &str,
    ) -> Result<UnikernelInstance, RuntimeError> {
        let t0 = Instant::now();
        let choice = self.choose(spec)?;
        let (image, loader) = self.prepare_image(spec, choice.launcher, &mut |p| match p {
            Progress::Step(s) => tracing::debug!(instance = id, "{s}"),
            Progress::Tool(s) => tracing::debug!(instance = id, "{s}"),
        })?;
        let memory_mib =
            (spec.resources.memory_bytes.unwrap_or(DEFAULT_MEMORY) >> 20).max(MIN_MEMORY_MIB);
        // The kernel is built without `smp` (its build needs llvm-tools): one vCPU. The
        // stack's `cpus` still limits the launcher's CPU time through its cgroup.
        let vcpus = 1;
        let dir = self.state_dir.join("instances").join(id);
        fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("create {}", dir.display()), e))?;
        let mut attached: Option<Attached> = None;
        if let Some(ns) = &spec.netns {
            if choice.launcher == Launcher::Uhyve {
                return Err(unavailable(
                    "osvm does not give uhyve guests a network yet (its TAP is opened by name \
                     inside the launcher); use launcher = \"qemu\" for a networked unikernel",
                ));
            }
            attached = Some(
                net::attach(&self.state_dir, ns)
                    .map_err(|e| setup(format!("attach the guest to its network: {e}")))?,
            );
        }
        let plan = Plan {
            id,
            dir: &dir,
            choice: &choice,
            image: &image,
            loader: loader.as_deref(),
            memory_mib,
            vcpus,
            t0,
        };
        match self.launch(spec, &plan, attached.as_ref()) {
            Ok(inst) => {
                if let Some(a) = &attached
                    && let Some(ip) = a
                        .guest
                        .address
                        .split('/')
                        .next()
                        .and_then(|i| i.parse().ok())
                    && let Err(e) = net::announce(a.tap.as_fd(), &a.mac, ip)
                {
                    tracing::warn!(instance = id, "announce the guest's address: {e}");
                }
                inst.base.hold_network(attached.map(|a| (a.netns, a.guest)));
                Ok(inst)
            }
            Err(e) => {
                if let Some(a) = attached {
                    drop(a.tap);
                    let _ = net::detach(&a.netns, &a.guest);
                }
                Err(e)
            }
        }
    }

    fn launch(
        &self,
        spec: &LaunchSpec,
        plan: &Plan<'_>,
        net: Option<&Attached>,
    ) -> Result<UnikernelInstance, RuntimeError> {
        let Plan {
            id,
            dir,
            choice,
            image,
            ..
        } = *plan;
        let share = self.identity_share(spec, plan)?;
        // The virtiofsd goes with the launcher if it does not start.
        let stop_share = |share: &Result<IdentityShare, String>| {
            if let Ok(s) = share {
                let _ = s.virtiofsd.stop(Duration::ZERO);
            }
        };
        let socket = share.as_ref().ok().map(|s| s.socket.as_path());
        let args = match choice.launcher {
            Launcher::Qemu => qemu_args(spec, plan, net, socket),
            Launcher::Uhyve => uhyve_args(spec, plan.memory_mib, plan.vcpus, &image.path),
        };
        let mut binds = vec![ro(&image.path)];
        binds.extend(plan.loader.map(ro));
        binds.extend(socket.and_then(Path::parent).map(rw));
        let launcher = EmulatorSpec {
            component: spec,
            program: &choice.program,
            args,
            memory: (plan.memory_mib << 20) + LAUNCHER_OVERHEAD,
            accel: Some(choice.accel),
        }
        .build(binds);
        let (reader, writer) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => {
                stop_share(&share);
                return Err(RuntimeError::io("make the serial pipe", e));
            }
        };
        let fds: Vec<_> = net.iter().map(|n| n.tap.as_fd()).collect();
        let spawned = Instant::now();
        let sandbox = match self.sandbox.start_sandbox(
            &launcher,
            StartOptions {
                id: Some(launcher_instance(id)),
                stdout: Some(Stdio::from(writer)),
                fds: &fds,
                ..StartOptions::default()
            },
        ) {
            Ok(s) => s,
            Err(e) => {
                stop_share(&share);
                return Err(setup(format!("start {}: {e}", choice.launcher.as_str())));
            }
        };
        let qemu = Arc::new(sandbox);
        let serial = Arc::new(SerialState::default());
        let stdout = dir.join("stdout.log");
        let stderr = dir.join("stderr.log");
        let console = dir.join("console.log");
        for p in [&stdout, &stderr, &console] {
            let _ = fs::write(p, b"");
        }
        spawn_reader(reader, serial.clone(), console.clone(), stdout.clone());

        let boot_timeout = options(spec)?
            .boot_timeout_ms
            .map_or(DEFAULT_BOOT_TIMEOUT, Duration::from_millis);
        let boot = serial.wait_boot(spawned + boot_timeout);
        let boot_ms = match boot {
            Boot::Started(at) => at.duration_since(spawned).as_millis() as u64,
            Boot::Ended => {
                let _ = qemu.stop(Duration::ZERO);
                stop_share(&share);
                return Err(setup(format!(
                    "{} ended before the Hermit kernel reached the app; console: {}; its \
                     stderr: {}",
                    choice.launcher.as_str(),
                    tail(&console),
                    tail(&qemu.log_paths().1)
                )));
            }
            Boot::TimedOut => {
                let _ = qemu.stop(Duration::ZERO);
                stop_share(&share);
                return Err(setup(format!(
                    "boot: the Hermit kernel did not reach the app within {:?} (boot_timeout); \
                     console: {}",
                    boot_timeout,
                    tail(&console)
                )));
            }
        };
        let facts = UnikernelFacts {
            launcher: choice.launcher,
            accel: choice.accel,
            reason: choice.reason.clone(),
            warning: choice.warning.clone(),
            image: image.digest.clone(),
            image_size: image.size,
            app: image.name.clone(),
            vcpus: plan.vcpus,
            memory_mib: plan.memory_mib,
            boot_ms,
            ready_ms: plan.t0.elapsed().as_millis() as u64,
            address: net.map(|n| n.guest.address.clone()),
            deadline_ms: options(spec)?.deadline_ms,
            identity: match &share {
                Ok(_) => format!("{IDENTITY_IN_GUEST} (virtio-fs, read-only)"),
                Err(why) => why.clone(),
            },
        };
        let _ = fs::write(
            dir.join("unikernel.json"),
            serde_json::to_vec_pretty(&facts).expect("serializes"),
        );
        let deadline_hit = Arc::new(AtomicBool::new(false));
        if let Some(ms) = options(spec)?.deadline_ms {
            spawn_deadline(
                qemu.clone(),
                serial.clone(),
                deadline_hit.clone(),
                spawned + Duration::from_millis(ms),
            );
        }
        let (share, staging) = match share {
            Ok(s) => (Some(s.virtiofsd), Some(s.staging)),
            Err(_) => (None, None),
        };
        Ok(UnikernelInstance {
            base: GuestBase::new(id, dir.to_path_buf(), qemu, None),
            facts,
            serial,
            deadline_hit,
            stop_signal: AtomicI32::new(0),
            share: Mutex::new(share),
            staging,
        })
    }
}

/// The virtiofsd serving an instance's identity, its vhost-user socket, and the directory the
/// guest sees as `/run/osvm/identity`.
struct IdentityShare {
    virtiofsd: SandboxInstance,
    socket: PathBuf,
    staging: PathBuf,
}

/// What a start has decided before it launches anything.
#[derive(Clone, Copy)]
struct Plan<'a> {
    id: &'a str,
    dir: &'a Path,
    choice: &'a Choice,
    image: &'a Image,
    loader: Option<&'a Path>,
    memory_mib: u64,
    vcpus: u32,
    t0: Instant,
}

/// Quotes a word for the kernel's command line (split like a shell would).
fn quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,@%+".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The kernel command line: network settings, the environment, then `--` and the app's
/// arguments.
fn command_line(spec: &LaunchSpec, net: Option<&Attached>) -> String {
    let mut words = Vec::new();
    if let Some(n) = net {
        let (addr, prefix) = n
            .guest
            .address
            .split_once('/')
            .unwrap_or((&n.guest.address, "32"));
        let mask = hermit_mask(prefix.parse().unwrap_or(32));
        words.extend([
            "-ip".to_owned(),
            addr.to_owned(),
            "-gateway".to_owned(),
            n.guest.gateway.clone(),
            "-mask".to_owned(),
            mask.to_string(),
        ]);
    }
    for (k, v) in &spec.env {
        words.push(quote(&format!("env={k}={v}")));
    }
    words.push("--".into());
    words.extend(spec.args.iter().map(|a| quote(a)));
    words.join(" ")
}

/// The `-mask` that makes hermit-kernel 0.11 use prefix length `prefix`.
///
/// The kernel counts a mask's bits as 8 per `255` octet plus the *trailing zeros of the
/// inverted* first other octet, which is right only for whole octets (it reads
/// 255.255.255.252 as /24). So the partial octet is written with its bits at the low end:
/// `/30` is `255.255.255.63`, which the kernel counts as 24 + 6.
fn hermit_mask(prefix: u32) -> String {
    let prefix = prefix.min(32);
    let mut octets = [0u8; 4];
    for (i, o) in octets.iter_mut().enumerate() {
        let bits = prefix.saturating_sub(8 * i as u32).min(8);
        *o = ((1u16 << bits) - 1) as u8;
    }
    std::net::Ipv4Addr::from(octets).to_string()
}

/// What [`hermit_mask`]'s output means to the kernel (its own computation), for the tests.
#[cfg(test)]
fn kernel_prefix(mask: &str) -> u32 {
    let o: std::net::Ipv4Addr = mask.parse().unwrap();
    let o = o.octets();
    let mut p = (!o[0]).trailing_zeros();
    if p == 8 {
        p += (!o[1]).trailing_zeros();
    }
    if p == 16 {
        p += (!o[2]).trailing_zeros();
    }
    if p == 24 {
        p += (!o[3]).trailing_zeros();
    }
    p
}

fn qemu_args(
    spec: &LaunchSpec,
    plan: &Plan<'_>,
    net: Option<&Attached>,
    share: Option<&Path>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    match plan.choice.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // `max` has FSGSBASE, which the kernel needs; a bounded translation cache keeps
        // QEMU within its cgroup.
        Accel::Tcg => push(&["-accel", "tcg,tb-size=64", "-cpu", "max"]),
    }
    let smp = plan.vcpus.to_string();
    let mem = format!("{}M", plan.memory_mib);
    push(&[
        "-smp",
        &smp,
        "-m",
        &mem,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        // The kernel's shutdown writes here; QEMU then exits.
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]);
    if let Some(n) = net {
        push(&[
            "-netdev",
            "tap,id=net0,fd=3",
            "-device",
            // Hermit drives only modern (non-transitional) virtio devices. With checksum
            // offload negotiated its driver marks every frame "needs checksum" with an offset
            // QEMU cannot apply, and nothing reaches the TAP: the offloads are left off.
            &format!(
                "virtio-net-pci,disable-legacy=on,csum=off,host_tso4=off,host_tso6=off,\
                 host_ecn=off,host_ufo=off,netdev=net0,mac={}",
                n.mac
            ),
        ]);
    }
    if let Some(socket) = share {
        // vhost-user needs the guest's memory shared with virtiofsd: a memfd backend.
        let memory = format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            plan.memory_mib
        );
        let chardev = format!("socket,id=fs0,path={}", socket.display());
        let device = format!("vhost-user-fs-pci,chardev=fs0,tag={SHARE_TAG}");
        push(&[
            "-object",
            &memory,
            "-machine",
            "memory-backend=mem",
            "-chardev",
            &chardev,
            "-device",
            &device,
        ]);
    }
    let loader = plan
        .loader
        .expect("QEMU has a loader")
        .display()
        .to_string();
    let image = plan.image.path.display().to_string();
    push(&["-kernel", &loader, "-initrd", &image]);
    a.push("-append".into());
    a.push(command_line(spec, net));
    a
}

/// uhyve 0.10's command line (written against its argument parser; not run here, see
/// docs/unikernel.md): memory, vCPUs, each variable, the image, `--`, the app's arguments.
fn uhyve_args(spec: &LaunchSpec, memory_mib: u64, vcpus: u32, image: &Path) -> Vec<String> {
    let mut a = vec![
        "--memory-size".to_owned(),
        format!("{memory_mib}MiB"),
        "--cpu-count".to_owned(),
        vcpus.to_string(),
    ];
    for (k, v) in &spec.env {
        a.push("--env-vars".into());
        a.push(format!("{k}={v}"));
    }
    a.push(image.display().to_string());
    a.push("--".into());
    a.extend(spec.args.iter().cloned());
    a
}

/// What the serial reader has seen.
#[derive(Default)]
struct Serial {
    /// When the kernel called the app.
    app_started: Option<Instant>,
    /// When the app printed its first line.
    first_output: Option<Instant>,
    /// The `exit status N` line.
    exit: Option<i32>,
    /// The app printed a panic message.
    panicked: bool,
    /// The launcher's stdout has closed (it ended).
    eof: bool,
}

#[derive(Default)]
struct SerialState {
    serial: Mutex<Serial>,
    changed: Condvar,
}

enum Boot {
    Started(Instant),
    Ended,
    TimedOut,
}

impl SerialState {
    fn update(&self, f: impl FnOnce(&mut Serial)) {
        f(&mut self.serial.lock().expect("serial"));
        self.changed.notify_all();
    }

    /// Waits until `done` says what it waited for, or `deadline` passes (`None`).
    fn wait_until<R>(&self, deadline: Instant, done: impl Fn(&Serial) -> Option<R>) -> Option<R> {
        let mut s = self.serial.lock().expect("serial");
        loop {
            if let Some(r) = done(&s) {
                return Some(r);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .expect("serial")
                .0;
        }
    }

    fn wait_boot(&self, deadline: Instant) -> Boot {
        self.wait_until(deadline, |s| match (s.app_started, s.eof) {
            (Some(at), _) => Some(Boot::Started(at)),
            (None, true) => Some(Boot::Ended),
            (None, false) => None,
        })
        .unwrap_or(Boot::TimedOut)
    }

    /// Waits until the launcher's output ends or `deadline` passes; true if it ended.
    fn wait_eof(&self, deadline: Instant) -> bool {
        self.wait_until(deadline, |s| s.eof.then_some(())).is_some()
    }
}

fn spawn_reader(
    pipe: std::io::PipeReader,
    state: Arc<SerialState>,
    console: PathBuf,
    stdout: PathBuf,
) {
    let _ = std::thread::Builder::new()
        .name("unikernel-serial".into())
        .spawn(move || {
            let open = |p: &Path| fs::OpenOptions::new().create(true).append(true).open(p);
            let (Ok(mut console), Ok(mut out)) = (open(&console), open(&stdout)) else {
                state.update(|s| s.eof = true);
                return;
            };
            let mut stamper = Stamper::default();
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            let mut booted = false;
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches('\n');
                // The console keeps what is not the app's: it stays small however long the
                // app runs (the app's output is rotated with its logs).
                match serial::classify(line, booted) {
                    Line::Kernel => {
                        let _ = console.write_all(&buf);
                    }
                    Line::AppStarts => {
                        let _ = console.write_all(&buf);
                        booted = true;
                        state.update(|s| s.app_started = Some(Instant::now()));
                    }
                    Line::Exit(code) => {
                        let _ = console.write_all(&buf);
                        state.update(|s| s.exit = Some(code));
                    }
                    Line::App(app) => {
                        let panicked = serial::is_panic(app);
                        state.update(|s| {
                            s.first_output.get_or_insert_with(Instant::now);
                            s.panicked |= panicked;
                        });
                        let _ = stamper.feed(app.as_bytes(), &mut out);
                        let _ = stamper.feed(b"\n", &mut out);
                    }
                }
            }
            let _ = stamper.flush(&mut out);
            state.update(|s| s.eof = true);
        });
}

fn spawn_deadline(
    launcher: Arc<SandboxInstance>,
    state: Arc<SerialState>,
    hit: Arc<AtomicBool>,
    deadline: Instant,
) {
    let _ = std::thread::Builder::new()
        .name("unikernel-deadline".into())
        .spawn(move || {
            if state.wait_eof(deadline) {
                return;
            }
            hit.store(true, Ordering::SeqCst);
            let _ = launcher.stop(Duration::ZERO);
        });
}

/// A running (or ended) Hermit guest.
pub struct UnikernelInstance {
    /// Id, files, the launcher's sandbox, the borrowed network, the end.
    base: GuestBase,
    facts: UnikernelFacts,
    serial: Arc<SerialState>,
    deadline_hit: Arc<AtomicBool>,
    /// The signal a stop sent to the launcher (0: none).
    stop_signal: AtomicI32,
    /// The virtiofsd serving the identity, until the guest ends.
    share: Mutex<Option<SandboxInstance>>,
    /// The identity files the guest sees, rewritten by [`Instance::refresh_identity`].
    staging: Option<PathBuf>,
}

impl UnikernelInstance {
    /// Facts about the guest.
    pub fn facts(&self) -> &UnikernelFacts {
        &self.facts
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.base.dir
    }

    /// The serial console (kernel log and app output).
    pub fn console_path(&self) -> PathBuf {
        self.base.dir.join("console.log")
    }

    /// The sandbox the launcher runs in.
    pub fn launcher(&self) -> &SandboxInstance {
        &self.base.emulator
    }

    /// The deadline, if this run was ended because it passed.
    pub fn deadline_exceeded(&self) -> Option<Duration> {
        self.deadline_hit
            .load(Ordering::SeqCst)
            .then(|| Duration::from_millis(self.facts.deadline_ms.unwrap_or(0)))
    }

    /// Whether the app printed a panic message.
    pub fn panicked(&self) -> bool {
        self.serial.serial.lock().expect("serial").panicked
    }

    /// Milliseconds from the kernel calling the app to its first line of output, if any.
    pub fn first_output_ms(&self) -> Option<u64> {
        let s = self.serial.serial.lock().expect("serial");
        Some(s.first_output?.duration_since(s.app_started?).as_millis() as u64)
    }

    /// Releases what the guest held once the launcher has ended, and works out the status.
    fn finish(&self, launcher_status: ExitStatus) -> ExitStatus {
        if let Some(share) = self.share.lock().expect("share").take() {
            let _ = share.stop(Duration::ZERO);
        }
        self.base.finish(|| {
            // The reader may still be draining the last lines (it ends at the end of the
            // launcher's output, which has ended; a loaded host can keep it from running for a
            // while, and the exit code is in those lines).
            self.serial
                .wait_eof(Instant::now() + Duration::from_secs(5));
            let exit = self.serial.serial.lock().expect("serial").exit;
            let sent = self.stop_signal.load(Ordering::SeqCst);
            match exit {
                Some(code) => ExitStatus {
                    code: Some(code),
                    signal: None,
                    oom_killed: false,
                },
                // uhyve exits with the guest's code.
                None if self.facts.launcher == Launcher::Uhyve
                    && launcher_status.code.is_some() =>
                {
                    launcher_status
                }
                None if self.deadline_hit.load(Ordering::SeqCst) => ExitStatus {
                    code: None,
                    signal: Some(libc::SIGKILL),
                    oom_killed: false,
                },
                None if sent != 0 => ExitStatus {
                    code: None,
                    signal: Some(sent),
                    oom_killed: launcher_status.oom_killed,
                },
                // The launcher died without the kernel's exit line (killed, or the guest
                // crashed).
                None => ExitStatus {
                    code: None,
                    signal: launcher_status.signal,
                    oom_killed: launcher_status.oom_killed,
                },
            }
        })
    }
}

impl Instance for UnikernelInstance {
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

    fn signal(&self, signal: i32) -> Result<(), RuntimeError> {
        match signal {
            libc::SIGTERM | libc::SIGINT | libc::SIGKILL => {
                self.stop_signal.store(signal, Ordering::SeqCst);
                self.base.emulator.signal(signal)
            }
            other => Err(RuntimeError::InvalidSpec(format!(
                "a Hermit guest has no signals: osvm can only end it (SIGTERM, SIGINT or \
                 SIGKILL end the launcher), not deliver signal {other}"
            ))),
        }
    }

    fn stop(&self, grace: Duration) -> Result<ExitStatus, RuntimeError> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        self.stop_signal.store(libc::SIGTERM, Ordering::SeqCst);
        let s = self.base.emulator.stop(grace)?;
        Ok(self.finish(s))
    }

    fn kill(&self) -> Result<(), RuntimeError> {
        self.signal(libc::SIGKILL)
    }

    fn refresh_identity(&self, dir: &Path) -> Result<(), RuntimeError> {
        match &self.staging {
            Some(staging) => write_identity_copy(dir, staging),
            None => Ok(()),
        }
    }

    fn endpoint(&self) -> Result<Endpoint, RuntimeError> {
        // The guest took the component's hub address; it is reached from the hub.
        Ok(self
            .facts
            .address
            .as_deref()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .map_or(Endpoint::Unreachable, Endpoint::Address))
    }

    fn reach(&self, port: u16) -> String {
        match &self.facts.address {
            Some(addr) => format!(
                "port {port} is on the unikernel at {}",
                addr.split('/').next().unwrap_or(addr)
            ),
            None => {
                format!("port {port} is in the unikernel, which has no network outside a hub stack")
            }
        }
    }

    fn exec(
        &self,
        _command: &[String],
        _timeout: Duration,
    ) -> Result<osvm_core::ExecResult, RuntimeError> {
        Err(RuntimeError::InvalidSpec(
            "a unikernel runs one program and nothing else: nothing can be executed in it".into(),
        ))
    }

    fn ended_how(&self) -> Option<String> {
        match self.deadline_exceeded() {
            Some(d) => Some(format!(
                "stopped: its deadline of {} passed",
                osvm_core::quantity::format_duration(d)
            )),
            None => self.panicked().then(|| "the app panicked".to_owned()),
        }
    }

    fn confinement(&self) -> osvm_core::Confinement {
        let f = &self.facts;
        osvm_core::Confinement::Guest(osvm_core::GuestConfinement {
            kind: osvm_core::RuntimeKind::Unikernel,
            driver: format!("Hermit under {}", f.launcher.as_str()),
            accelerator: f.accel.as_str().into(),
            launcher_reason: Some(f.reason.clone()),
            vcpus: f.vcpus,
            memory_mib: f.memory_mib,
            kernel: None,
            image: format!("{} {}", f.app, &f.image[..12]),
            image_size: f.image_size,
            vsock_cid: None,
            warning: f.warning.clone(),
            emulator: self.base.emulator.confinement().sandbox().clone(),
        })
    }
}

impl Runtime for UnikernelRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Unikernel
    }

    fn start(&self, spec: &LaunchSpec, wiring: Wiring) -> Result<Box<dyn Instance>, RuntimeError> {
        if wiring.has_io() {
            return Err(RuntimeError::InvalidSpec(
                "a unikernel gets no stdio channel and no listening sockets from the host (its \
                 serial port is its console; its ports are reached at its hub address)"
                    .into(),
            ));
        }
        Ok(Box::new(self.start_unikernel(spec, &wiring.id)?))
    }

    fn adopt(&self, id: &str) -> Result<Adoption, RuntimeError> {
        // The guest's serial port was a pipe into the previous daemon: its output and exit
        // status cannot be read any more.
        self.stop_leftovers(id);
        Ok(Adoption::Stopped(
            "a restarted daemon does not re-adopt unikernels (their serial port was the \
             previous daemon's pipe); it was stopped and starts again"
                .into(),
        ))
    }

    fn stop_leftovers(&self, id: &str) {
        UnikernelRuntime::stop_leftovers(self, id);
    }

    fn prepare(
        &self,
        spec: &LaunchSpec,
        progress: &mut dyn FnMut(osvm_core::Progress),
    ) -> Result<(), RuntimeError> {
        let choice = self.choose(spec)?;
        self.prepare_image(spec, choice.launcher, progress)
            .map(|_| ())
    }
}

/// The unikernel settings of `spec`, which must be a unikernel's.
fn options(spec: &LaunchSpec) -> Result<&osvm_core::UnikernelOptions, RuntimeError> {
    spec.runtime
        .unikernel_options()
        .ok_or_else(|| spec.runtime.given_to(&spec.name, RuntimeKind::Unikernel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_what_the_kernel_would_split() {
        let mut spec = LaunchSpec::new("u", "/img", vec!["hello".into(), "two words".into()]);
        spec.env = vec![
            ("APP_GREETING".into(), "it's here".into()),
            ("APP_EXIT".into(), "7".into()),
        ];
        assert_eq!(
            command_line(&spec, None),
            "'env=APP_GREETING=it'\\''s here' env=APP_EXIT=7 -- hello 'two words'"
        );
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn uhyve_gets_memory_cpus_env_image_then_the_args() {
        let mut spec = LaunchSpec::new("u", "/img", vec!["-x".into(), "two words".into()]);
        spec.env = vec![("APP_EXIT".into(), "5".into())];
        assert_eq!(
            uhyve_args(&spec, 64, 1, Path::new("/i/a.elf")),
            [
                "--memory-size",
                "64MiB",
                "--cpu-count",
                "1",
                "--env-vars",
                "APP_EXIT=5",
                "/i/a.elf",
                "--",
                "-x",
                "two words"
            ]
        );
    }

    #[test]
    fn masks_are_written_so_the_kernel_reads_the_real_prefix() {
        assert_eq!(hermit_mask(30), "255.255.255.63");
        assert_eq!(hermit_mask(24), "255.255.255.0");
        assert_eq!(hermit_mask(32), "255.255.255.255");
        assert_eq!(hermit_mask(0), "0.0.0.0");
        for p in 0..=32 {
            assert_eq!(kernel_prefix(&hermit_mask(p)), p, "/{p}");
        }
    }
}
