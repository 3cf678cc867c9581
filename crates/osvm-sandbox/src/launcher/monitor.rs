//! The monitor: the host-side keeper of one sandbox.
//!
//! The runtime starts it as `osvm __sandbox-monitor <instance id>` (a fresh exec, so it is
//! single-threaded and may safely `clone`) with the plan on descriptor 4 and nothing else open
//! but stdio, its report socket and the listening sockets it hands on. It stays outside the
//! sandbox, as root on the host, and outside the sandbox's cgroup, so the sandbox's limits never
//! touch it. It:
//! 1. applies the rlimits (raising a hard limit needs host privilege);
//! 2. prepares, in the host's mount namespace, what the sandbox mounts from osvm's private state
//!    (the data volume, binds of host directories, a custom root) as detached trees;
//! 3. clones init into new user, pid, mount, network, ipc and uts namespaces, with its effective
//!    ids set to the component's own host uid for the moment of the clone, so that this uid,
//!    not root, owns the user namespace and pays its per-user counters;
//! 4. writes init's uid/gid maps, id-maps the trees that need the sandbox's own ids, hands all
//!    of them to init and lets it go on (init is born in its v2 group and moves itself into
//!    the v1 groups through files opened here: see [`crate::cgroup::move_self`]);
//! 5. reports `Started` (with a pidfd of init) or `Failed` to the runtime;
//! 6. drains the workload's output into its logs, rotating them by size, waits for the sandbox
//!    to end, records how in `exit.json` (with the final usage and whether the memory limit's
//!    OOM killer fired), removes the cgroup, gives back a range that was the instance's alone,
//!    and exits.
//!
//! The monitor ignores the terminal's and the daemon's death signals: a sandbox outlives the
//! process that started it, and its end is always recorded.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use osvm_core::ExitStatus;

use super::mounts::{self, NODEV, NOSUID, RDONLY};
use super::protocol::{
    Confinement, ExitRecord, IDENTITY_FD, InitMsg, MONITOR_FD, MonitorMsg, PLAN_FD, RunningRecord,
    ToInit, process_start_time, send_msg,
};
use super::{init, pidfd_open};
use crate::cgroup::{self, CgroupManager};
use crate::ids::{self, IdKey};
use crate::output::RotatingLog;
use crate::plan::{DataPlan, Plan};
use crate::volume;

/// The monitor's entry point; never returns.
pub fn main() -> ! {
    // Found by its command line from now on, it outlives whoever started it (see
    // `spawn_monitor`, which made it die with its starter until here).
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    // SAFETY: fd 3 is the runtime's socket and fd 4 the open plan, both handed over by the
    // runtime's spawn; nothing else in this fresh process owns them.
    let (report, plan_file) =
        unsafe { (OwnedFd::from_raw_fd(MONITOR_FD), File::from_raw_fd(PLAN_FD)) };
    // Hold IDENTITY_FD (free: the runtime closed everything above the plan) from the start, so
    // nothing opened later lands there; the identity file system takes its place.
    if let Ok(reserved) = File::open("/dev/null") {
        if reserved.as_raw_fd() == IDENTITY_FD {
            let _ = std::os::fd::IntoRawFd::into_raw_fd(reserved);
        } else {
            let _ = dup_to(reserved.as_raw_fd(), IDENTITY_FD);
        }
    }
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    let plan: Plan = match read_plan(plan_file) {
        Ok(p) => p,
        Err(e) => {
            report_msg(
                &report,
                &MonitorMsg::Failed {
                    message: format!("read the launch plan: {e}"),
                },
                None,
            );
            std::process::exit(1);
        }
    };
    let code = match run(&plan, &report) {
        Ok(()) => 0,
        Err(message) => {
            report_msg(&report, &MonitorMsg::Failed { message }, None);
            1
        }
    };
    std::process::exit(code)
}

/// Makes descriptor `to` (close-on-exec) a copy of `fd`, closing what was at `to`. Used only for
/// [`IDENTITY_FD`], which this process reserves at its start for exactly this.
fn dup_to(fd: RawFd, to: RawFd) -> std::io::Result<()> {
    // SAFETY: dup3 on descriptors of this process; `to` holds nothing but the monitor's own
    // /dev/null reservation or the identity descriptor, which this replaces on purpose.
    if unsafe { libc::dup3(fd, to, libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the plan from its descriptor (then closed), refusing one written by another version
/// of osvm (the launcher may be a binary of its own, installed separately).
pub(crate) fn read_plan(mut file: File) -> Result<Plan, String> {
    let other_build = || {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        format!(
            "the launcher {exe} is version {}: install it from the same build as osvm",
            crate::plan::BUILD
        )
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let plan: Plan =
        serde_json::from_slice(&bytes).map_err(|e| format!("{e} ({})", other_build()))?;
    if plan.build != crate::plan::BUILD {
        return Err(format!(
            "the plan comes from osvm version {:?}; {}",
            plan.build,
            other_build()
        ));
    }
    Ok(plan)
}

fn report_msg(sock: &OwnedFd, msg: &MonitorMsg, fd: Option<RawFd>) {
    // SAFETY: `fd`, when given, is a descriptor the caller owns and keeps open for the call.
    let fd = fd.map(|f| unsafe { std::os::fd::BorrowedFd::borrow_raw(f) });
    // The runtime may be gone (daemon restarting); the exit record on disk still tells.
    let _ = send_msg(sock.as_fd(), msg, fd);
}

/// `clone(2)` used like `fork(2)`, with namespace flags.
fn clone_fork(flags: libc::c_int) -> std::io::Result<libc::pid_t> {
    // SAFETY: without CLONE_VM and with a null stack the child gets a copy-on-write copy of
    // this single-threaded process and returns from the syscall on the same stack, exactly as
    // with fork(2).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as libc::pid_t)
    }
}

/// Drains the workload's stdout (unless it is a channel the runtime reads, `None`) and stderr
/// into the instance's log files (this process's stdout and stderr to begin with) as stamped
/// records (see [`crate::output`]), rotating them by size, until the pipes end.
fn pump_output(plan: &Plan, out: Option<OwnedFd>, err: OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    // SAFETY: fds 1 and 2 are this process's log files; dup gives owned copies.
    let (log_out, log_err) = unsafe { (libc::dup(1), libc::dup(2)) };
    if log_out < 0 || log_err < 0 {
        return;
    }
    let log = |fd: RawFd, name: &str| {
        RotatingLog::new(
            plan.instance_dir.join(name),
            // SAFETY: a fresh descriptor from dup, owned from here on.
            unsafe { File::from_raw_fd(fd) },
            plan.launch.logs,
        )
    };
    let mut logs = [log(log_out, "stdout.log"), log(log_err, "stderr.log")];
    let mut pipes = [out.map(File::from), Some(File::from(err))];
    let mut stampers = [
        crate::output::Stamper::default(),
        crate::output::Stamper::default(),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    while pipes.iter().any(Option::is_some) {
        let open: Vec<usize> = (0..2).filter(|i| pipes[*i].is_some()).collect();
        let mut fds: Vec<PollFd<'_>> = open
            .iter()
            .map(|i| {
                PollFd::new(
                    pipes[*i]
                        .as_ref()
                        .map(|p| p.as_fd())
                        .unwrap_or_else(|| unreachable!()),
                    PollFlags::POLLIN,
                )
            })
            .collect();
        let ready = match poll(
            &mut fds,
            PollTimeout::from(crate::output::PARTIAL_AFTER_MS as u16),
        ) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let revents: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready == 0 {
            // The workload paused mid-line: write out what it has so far.
            for i in 0..2 {
                let _ = stampers[i].flush(&mut logs[i]);
            }
            continue;
        }
        for (k, i) in open.into_iter().enumerate() {
            if !revents[k] {
                continue;
            }
            let n = match pipes[i].as_mut().map(|p| p.read(&mut buf)) {
                Some(Ok(n)) => n,
                Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                _ => 0,
            };
            if n == 0 {
                let _ = stampers[i].flush(&mut logs[i]);
                pipes[i] = None;
            } else {
                let _ = stampers[i].feed(&buf[..n], &mut logs[i]);
            }
        }
    }
}

/// `struct clone_args` of `clone3(2)` (glibc's headers do not export it).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP`: the child starts in the cgroup v2 directory `cgroup` refers to.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3(2)` used like `fork(2)`, with namespace flags, creating the child in a v2 cgroup.
fn clone_into_cgroup(flags: libc::c_int, cgroup_fd: RawFd) -> std::io::Result<libc::pid_t> {
    let args = CloneArgs {
        flags: flags as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_fd as u64,
        ..CloneArgs::default()
    };
    // SAFETY: as clone_fork: no CLONE_VM and no stack, so the child continues on a copy-on-write
    // copy of this single-threaded process; `args` lives across the call and its size is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as libc::pid_t)
    }
}

fn apply_rlimits(plan: &Plan) -> Result<(), String> {
    if let Some(n) = plan.launch.resources.open_files {
        setrlimit(Resource::RLIMIT_NOFILE, n, n)
            .map_err(|e| format!("set the open-files limit to {n}: {e}"))?;
    }
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("disable core dumps: {e}"))
}

fn write_id_maps(plan: &Plan, pid: libc::pid_t) -> Result<(), String> {
    let proc = Path::new("/proc").join(pid.to_string());
    let write = |file: &str, content: &str| {
        fs::write(proc.join(file), content).map_err(|e| format!("write {file} of the sandbox: {e}"))
    };
    if plan.host_root {
        write("uid_map", &plan.id_map.map_line())?;
        write("gid_map", &plan.id_map.map_line())
    } else {
        write("setgroups", "deny")?;
        write("uid_map", &format!("0 {} 1\n", nix::unistd::getuid()))?;
        write("gid_map", &format!("0 {} 1\n", nix::unistd::getgid()))
    }
}

/// A detached copy of the host's tree at `path` (a bind source, a custom root), found without
/// following any symbolic link: a directory a component may write (a shared `rw` bind) could
/// otherwise point another component's source anywhere on the host, and this process resolves
/// it as root.
fn host_tree(what: &str, path: &Path) -> Result<OwnedFd, String> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let at = rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            let real = fs::canonicalize(path)
                .map(|p| format!(" ({})", p.display()))
                .unwrap_or_default();
            format!(
                "{what} {}: the path goes through a symbolic link, which osvm does not follow in \
                 mount sources (where a component can write, a link could point anywhere); name \
                 the real path{real}",
                path.display()
            )
        } else {
            format!("{what} {}: {e}", path.display())
        }
    })?;
    mounts::clone_tree(at.as_fd(), Path::new(""), true, false)
        .map_err(|e| format!("copy the mount of {what} {}: {e}", path.display()))
}

/// An overlay root's layers: the lower ones' copies, and the copy of the directory holding the
/// upper and work directories with their names.
struct OverlayLayers {
    lower: Vec<OwnedFd>,
    upper: Option<(OwnedFd, PathBuf, PathBuf)>,
}

/// What the sandbox mounts from the host, prepared here as detached trees.
struct Sources {
    /// The data volume's mount (id-mapped once the sandbox's user namespace exists).
    data: Option<OwnedFd>,
    /// The custom root's copy (likewise).
    rootfs: Option<OwnedFd>,
    /// An overlay root's layers (id-mapped likewise, then overlaid).
    overlay: Option<OverlayLayers>,
    /// The binds' copies, in the spec's order.
    binds: Vec<OwnedFd>,
    /// The identity file system and a descriptor of its writable root.
    identity: Option<(OwnedFd, OwnedFd)>,
}

impl Sources {
    /// Mounts the data volume and copies every bind and the custom root, with their final
    /// attributes except the id mappings that need the sandbox's user namespace.
    fn prepare(plan: &Plan) -> Result<Self, String> {
        let spec = &plan.launch;
        let data = match &plan.data {
            DataPlan::Volume { image, bytes } => Some(
                volume::mount(image, *bytes).map_err(|e| format!("mount the data volume: {e}"))?,
            ),
            DataPlan::Scratch { .. } => None,
        };
        let rootfs = spec
            .rootfs
            .as_ref()
            .map(|dir| host_tree("rootfs", dir))
            .transpose()?;
        let overlay = spec
            .rootfs_overlay
            .as_ref()
            .map(|o| -> Result<_, String> {
                if !plan.host_root {
                    return Err("an overlay root needs osvm to run as root".into());
                }
                let lower = o
                    .lower
                    .iter()
                    .map(|l| host_tree("overlay layer", l))
                    .collect::<Result<Vec<_>, _>>()?;
                let upper = match (&o.upper, &o.work) {
                    (Some(upper), Some(work)) => {
                        let parent = upper.parent().unwrap_or(Path::new("/"));
                        let name = |p: &Path| PathBuf::from(p.file_name().unwrap_or_default());
                        Some((
                            host_tree("overlay upper layer", parent)?,
                            name(upper),
                            name(work),
                        ))
                    }
                    _ => None,
                };
                Ok(OverlayLayers { lower, upper })
            })
            .transpose()?;
        let mut owners: Vec<((u32, u32), OwnedFd)> = Vec::new();
        let mut binds = Vec::new();
        for b in &spec.binds {
            let what = |e: std::io::Error| format!("bind {}: {e}", b.source.display());
            let tree = host_tree("bind", &b.source)?;
            let device = mounts::is_device(tree.as_fd()).map_err(what)?;
            // An explicitly bound device node stays usable; nothing else carries devices.
            let mut attrs = NOSUID | if device { 0 } else { NODEV };
            if !b.writable {
                attrs |= RDONLY;
            }
            let idmap = if b.writable && !device && plan.host_root {
                // The sandbox's root acts as the owner of the directory (or file) bound:
                // what it creates there belongs to that owner on the host, with no chown.
                let st = rustix::fs::fstat(&tree).map_err(|e| what(e.into()))?;
                let owner = (st.st_uid, st.st_gid);
                match owners.iter().find(|(o, _)| *o == owner) {
                    Some((_, ns)) => Some(ns.try_clone().map_err(what)?),
                    None => {
                        let ns = mounts::mapping_userns(owner.0, owner.1, plan.id_map.host_base, 1)
                            .map_err(|e| {
                                format!("bind {}: make its id mapping: {e}", b.source.display())
                            })?;
                        owners.push((owner, ns.try_clone().map_err(what)?));
                        Some(ns)
                    }
                }
            } else {
                None
            };
            mounts::set_attrs(
                tree.as_fd(),
                attrs,
                0,
                true,
                idmap.as_ref().map(|f| f.as_fd()),
            )
            .map_err(|e| {
                if idmap.is_some() && e.raw_os_error() == Some(libc::EINVAL) {
                    format!(
                        "bind {}: its file system cannot be id-mapped (kernel 5.12+ and a \
                             file system that supports id-mapped mounts, such as ext4, xfs, btrfs \
                             or tmpfs, are needed for `rw`): {e}",
                        b.source.display()
                    )
                } else {
                    what(e)
                }
            })?;
            binds.push(tree);
        }
        let identity = spec
            .identity
            .as_ref()
            .map(|from| -> Result<(OwnedFd, OwnedFd), String> {
                let what = |e: std::io::Error| format!("copy the identity files: {e}");
                let fs = mounts::new_fs(
                    "tmpfs",
                    &[("mode", "0755".into()), ("size", (1u64 << 20).to_string())],
                    &[],
                    NOSUID | NODEV | mounts::NOEXEC,
                )
                .map_err(what)?;
                let root = rustix::fs::openat(
                    &fs,
                    ".",
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| what(e.into()))?;
                crate::files::copy_into(root.as_fd(), from).map_err(what)?;
                Ok((fs, root))
            })
            .transpose()?;
        Ok(Self {
            data,
            rootfs,
            overlay,
            binds,
            identity,
        })
    }

    /// Id-maps the data volume and the custom root through the sandbox's user namespace (ids
    /// on disk are the sandbox's own ids) and hands everything to init.
    fn hand_over(self, plan: &Plan, userns: &OwnedFd, ctl: &OwnedFd) -> Result<(), String> {
        let map = |tree: &OwnedFd, what: &str, attrs: u64| {
            mounts::set_attrs(tree.as_fd(), attrs, 0, true, Some(userns.as_fd()))
                .map_err(|e| format!("id-map {what}: {e}"))
        };
        let send = |msg: ToInit, fd: &OwnedFd| {
            send_msg(ctl.as_fd(), &msg, Some(fd.as_fd()))
                .map_err(|e| format!("hand {msg:?} to the sandbox: {e}"))
        };
        if let Some(data) = &self.data {
            map(data, "the data volume", NOSUID | NODEV)?;
            send(ToInit::Data, data)?;
        }
        if let Some(rootfs) = &self.rootfs {
            map(rootfs, "the rootfs", NOSUID | NODEV)?;
            send(ToInit::Rootfs, rootfs)?;
        }
        if let Some(OverlayLayers { lower, upper }) = &self.overlay {
            // Each layer id-mapped (the sandbox's root owns what root owns on disk), then
            // overlaid: the kernel id-maps layers, not an overlay mount itself.
            for layer in lower {
                map(layer, "an overlay layer", NOSUID | NODEV)?;
            }
            let dirs = upper
                .as_ref()
                .map(
                    |(parent, upper, work)| -> Result<(OwnedFd, OwnedFd), String> {
                        map(parent, "the overlay's upper layer", NOSUID | NODEV)?;
                        let open = |name: &Path| {
                            use rustix::fs::{Mode, OFlags, ResolveFlags};
                            rustix::fs::openat2(
                                parent,
                                name,
                                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                                Mode::empty(),
                                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                            )
                            .map_err(|e| format!("open the overlay's {}: {e}", name.display()))
                        };
                        Ok((open(upper)?, open(work)?))
                    },
                )
                .transpose()?;
            let lower: Vec<_> = lower.iter().map(|l| l.as_fd()).collect();
            let root = mounts::overlay(
                &lower,
                dirs.as_ref().map(|(u, w)| (u.as_fd(), w.as_fd())),
                plan.id_map.host_base,
                NOSUID | NODEV,
            )
            .map_err(|e| {
                format!("mount the overlay root (kernel 6.13+ takes layers by descriptor): {e}")
            })?;
            send(ToInit::Rootfs, &root)?;
        }
        for (n, tree) in self.binds.iter().enumerate() {
            send(ToInit::Bind(n), tree)?;
        }
        if let Some((fs, root)) = &self.identity {
            send(ToInit::Identity, fs)?;
            // Kept for the sandbox's life: the runtime renews the files through it.
            dup_to(root.as_raw_fd(), IDENTITY_FD)
                .map_err(|e| format!("keep the identity file system: {e}"))?;
        }
        Ok(())
    }
}

/// Runs `clone` with this process's effective uid and gid set to `owner` (keeping its
/// capabilities), so that a user namespace the clone creates is owned by `owner`: the kernel
/// charges the namespace's per-user counters to its owner.
fn clone_as_owner<T>(
    owner: u32,
    clone: impl FnOnce() -> std::io::Result<(libc::pid_t, T)>,
) -> std::io::Result<(libc::pid_t, T)> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    let switch = |uid: u32, gid: u32, bits: libc::c_ulong| -> std::io::Result<()> {
        // SAFETY: raw syscalls with integer arguments; the process is single-threaded, so the
        // credential change needs none of glibc's cross-thread signalling.
        unsafe {
            if bits != 0 && libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_setresgid, -1i64, gid as i64, -1i64) != 0
                || libc::syscall(libc::SYS_setresuid, -1i64, uid as i64, -1i64) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if bits == 0 && libc::prctl(libc::PR_SET_SECUREBITS, 0, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // With SECBIT_NO_SETUID_FIXUP the capabilities stay while the effective uid is not 0.
    switch(owner, owner, SECBIT_NO_SETUID_FIXUP)?;
    let result = clone();
    if matches!(result, Ok((0, _))) {
        // The child: it is in its new user namespace, with fresh credentials there.
        return result;
    }
    // SAFETY: as above. Setting the uid back first restores what setting the gid needs.
    unsafe {
        if libc::syscall(libc::SYS_setresuid, -1i64, 0i64, -1i64) != 0
            || libc::syscall(libc::SYS_setresgid, -1i64, 0i64, -1i64) != 0
            || libc::prctl(libc::PR_SET_SECUREBITS, 0, 0, 0, 0) != 0
        {
            // Running on as another user would be worse than stopping here.
            let _ = writeln!(std::io::stderr(), "osvm monitor: cannot become root again");
            libc::_exit(1);
        }
    }
    result
}

fn run(plan: &Plan, report: &OwnedFd) -> Result<(), String> {
    apply_rlimits(plan)?;
    let sources = Sources::prepare(plan)?;
    let (ctl, ctl_init) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    let (msg_r, msg_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // The workload's stdout and stderr: pipes this process drains into the log files (for a
    // stdout channel, the workload writes to this process's own stdout instead).
    let (out_r, out_w) = if plan.stdout_channel {
        (None, None)
    } else {
        let (r, w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        (Some(r), Some(w))
    };
    let (err_r, err_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if let Some(netns) = &plan.launch.netns {
        // Join the given namespace here, as host root, and let the sandbox inherit it: from
        // inside its own user namespace it could not (and must not) own it.
        let ns = fs::File::open(netns)
            .map_err(|e| format!("open network namespace {}: {e}", netns.display()))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("join network namespace {}: {e}", netns.display()))?;
        flags &= !libc::CLONE_NEWNET;
    }
    let cgroup = cgroup::open(&plan.cgroup);
    // Init moves itself into the v1 groups through these (see cgroup::move_self): the one
    // move the kernel makes without waiting for an RCU grace period.
    let task_files = cgroup
        .v1_task_files()
        .map_err(|e| format!("open the sandbox's cgroup: {e}"))?;
    // Creating init straight inside its v2 group spares a cgroup move (a kernel wait of
    // milliseconds); kernels before 5.7 lack CLONE_INTO_CGROUP and get the move instead.
    let v2_fd = cgroup.v2_dir().and_then(|d| {
        nix::fcntl::open(
            &d,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    });
    let spawn = || -> std::io::Result<(libc::pid_t, bool)> {
        if let Some(fd) = v2_fd.as_ref() {
            match clone_into_cgroup(flags, fd.as_raw_fd()) {
                Ok(pid) => return Ok((pid, true)),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::E2BIG)) => {}
                Err(e) => return Err(e),
            }
        }
        clone_fork(flags).map(|pid| (pid, false))
    };
    let (pid, in_v2) = if plan.host_root {
        clone_as_owner(plan.id_map.host_base, spawn)
    } else {
        spawn()
    }
    .map_err(|e| format!("create the sandbox's namespaces: {e}"))?;
    if pid == 0 {
        drop(ctl);
        drop(sources);
        drop(msg_r);
        drop(out_r);
        drop(err_r);
        // SAFETY: dup2 onto this process's own stdout and stderr, which it then uses.
        unsafe {
            if let Some(out_w) = &out_w {
                libc::dup2(out_w.as_raw_fd(), 1);
            }
            libc::dup2(err_w.as_raw_fd(), 2);
        }
        drop(out_w);
        drop(err_w);
        // SAFETY: the child's copy of the runtime socket must not keep the runtime's end open.
        unsafe { libc::close(MONITOR_FD) };
        let code = init::run(plan, ctl_init, msg_w, task_files);
        // SAFETY: end the child without running anything the parent set up to run at exit.
        unsafe { libc::_exit(code) }
    }
    drop(ctl_init);
    drop(msg_w);
    drop(out_w);
    drop(err_w);
    drop(v2_fd);
    drop(task_files);

    let init_pid = Pid::from_raw(pid);

    let release = |what: ToInit| {
        send_msg(ctl.as_fd(), &what, None).map_err(|e| format!("release the sandbox's init: {e}"))
    };
    // Init builds its root while this process writes its maps and hands over its mounts.
    let prepared = write_id_maps(plan, pid)
        .and_then(|()| {
            let userns = File::open(format!("/proc/{pid}/ns/user"))
                .map(OwnedFd::from)
                .map_err(|e| format!("open the sandbox's user namespace: {e}"))?;
            sources.hand_over(plan, &userns, &ctl)
        })
        .and_then(|()| release(ToInit::MapsWritten))
        .and_then(|()| {
            if in_v2 {
                return Ok(());
            }
            cgroup
                .add_process_v2(pid)
                .map_err(|e| format!("move the sandbox into its cgroup: {e}"))
        })
        .and_then(|()| release(ToInit::CgroupJoined));
    if prepared.is_err() {
        // Before init sees its channel close: it would report "the monitor went away", and
        // that would be read below in place of what failed here. An init that failed first has
        // already written its own reason.
        let _ = nix::sys::signal::kill(init_pid, Signal::SIGKILL);
    }
    drop(ctl);
    // The clones and the cgroup move are done: this process may have threads from now on.
    let pump_plan = plan.clone();
    let pump = std::thread::spawn(move || pump_output(&pump_plan, out_r, err_r));
    let mut lines = BufReader::new(File::from(msg_r)).lines();
    if let Err(e) = prepared {
        let _ = nix::sys::signal::kill(init_pid, Signal::SIGKILL);
        let _ = waitpid(init_pid, None);
        cleanup(plan, cgroup.as_ref());
        // If init failed first (the usual reason a release finds a closed pipe), its own
        // message says what went wrong.
        return Err(
            match lines
                .next()
                .and_then(|l| l.ok())
                .and_then(|l| serde_json::from_str::<InitMsg>(&l).ok())
            {
                Some(InitMsg::Failed { message }) => message,
                _ => e,
            },
        );
    }

    let first = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| serde_json::from_str::<InitMsg>(&l).ok());
    match first {
        Some(InitMsg::Ready {
            workload_pid: _,
            landlock,
            seccomp_allowed,
        }) => {
            let pidfd =
                pidfd_open(pid).map_err(|e| format!("pidfd_open of the sandbox's init: {e}"))?;
            let confinement = Confinement {
                init_pid: pid,
                workload_pid: first_child(pid),
                id_map: if plan.host_root {
                    plan.id_map.map_line().trim().to_string()
                } else {
                    "0 <caller> 1".into()
                },
                cgroup: format!(
                    "{} {}",
                    plan.cgroup.hierarchy.name(),
                    plan.cgroup
                        .dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                landlock,
                seccomp_allowed,
            };
            let running = RunningRecord {
                monitor_pid: std::process::id() as i32,
                monitor_start: process_start_time(std::process::id() as i32).unwrap_or(0),
                init_start: process_start_time(pid).unwrap_or(0),
                confinement: confinement.clone(),
            };
            write_atomically(&plan.instance_dir, "running.json", &running);
            report_msg(
                report,
                &MonitorMsg::Started(confinement),
                Some(pidfd.as_raw_fd()),
            );
        }
        other => {
            let message = match other {
                Some(InitMsg::Failed { message }) => message,
                _ => "the sandbox's init ended before reporting".into(),
            };
            let _ = waitpid(init_pid, None);
            cleanup(plan, cgroup.as_ref());
            return Err(message);
        }
    }

    let exited = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| serde_json::from_str::<InitMsg>(&l).ok());
    let init_status = loop {
        match waitpid(init_pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    // Everything in the sandbox has ended, so the pipes are at their end: the logs are
    // complete before the exit record says the sandbox is over.
    let _ = pump.join();
    let mut status = match exited {
        Some(InitMsg::Exited { code, signal }) => ExitStatus {
            code,
            signal,
            oom_killed: false,
        },
        _ => match init_status {
            Ok(WaitStatus::Exited(_, c)) => ExitStatus {
                code: Some(c),
                signal: None,
                oom_killed: false,
            },
            Ok(WaitStatus::Signaled(_, s, _)) => ExitStatus {
                code: None,
                signal: Some(s as i32),
                oom_killed: false,
            },
            _ => ExitStatus {
                code: None,
                signal: None,
                oom_killed: false,
            },
        },
    };
    let stats = cgroup.stats().ok();
    if status.signal == Some(libc::SIGKILL) && stats.as_ref().is_some_and(|s| s.oom_kills > 0) {
        status.oom_killed = true;
    }
    let record = ExitRecord {
        status,
        stats,
        finished_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    write_atomically(&plan.instance_dir, "exit.json", &record);
    cleanup(plan, cgroup.as_ref());
    Ok(())
}

/// The host pid of init's first child (the workload), from `/proc/<pid>/task/<pid>/children`.
fn first_child(pid: libc::pid_t) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Writes `name` in `dir` as JSON (mode 0600) through a temporary file and a rename, so a
/// reader never sees half a record.
fn write_atomically<T: serde::Serialize>(dir: &Path, name: &str, value: &T) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{name}.tmp"));
    let written = serde_json::to_vec_pretty(value).ok().and_then(|bytes| {
        fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .ok()
    });
    if written.is_some() {
        let _ = fs::rename(&tmp, dir.join(name));
    }
}

/// Kills anything left in the cgroup, removes it, and gives back a uid range that was the
/// instance's alone.
fn cleanup(plan: &Plan, cgroup: &dyn CgroupManager) {
    // The kernel empties a group asynchronously after its last process dies; wait for it
    // (bounded) so the directory can be removed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let _ = cgroup.kill_all();
        if cgroup.remove().is_ok() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if plan.release_ids
        && let Some(state_dir) = plan.instance_dir.parent().and_then(Path::parent)
    {
        let state_dir = fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let _ = ids::release(
            Path::new(ids::REGISTRY),
            &state_dir,
            &IdKey::Instance(plan.instance_id.clone()),
            &plan.id_map,
        );
    }
}
