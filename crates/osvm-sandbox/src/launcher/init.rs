//! The sandbox's pid 1.
//!
//! Born by `clone` into fresh user, pid, mount, network, ipc and uts namespaces (the user
//! namespace owned by the component's own host uid) and, where the kernel can, into its v2
//! group, it first moves itself into its v1 groups, receives from the monitor the detached
//! mounts prepared on the host and waits until its id maps are written, then, in this order:
//! becomes uid/gid 0 of its namespace, makes itself undumpable (the workload runs under the
//! same ids and must not read init's memory, environment or executable through `/proc/1`),
//! sets the hostname, builds and pivots into the root file system, waits until the monitor has
//! moved it into its v2 group if the clone could not, enters a new cgroup namespace, sets `no_new_privs`, applies
//! Landlock, drops every capability, installs the seccomp filters, and forks the workload,
//! which closes every descriptor but stdio and its listening sockets and execs the component's
//! command. Everything the workload inherits is therefore already confined.
//!
//! As init it then forwards the usual termination signals to the workload, reaps every
//! zombie, and when the workload ends kills what is left in the namespace and reports the
//! exit status to the monitor. Init never installs signal handlers: it blocks the signals it
//! cares about and takes them synchronously with `sigwait`, so it needs nothing beyond the
//! seccomp allowlist.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, pipe2};

use super::confine::{Confiner, Exec};
use super::protocol::{InitMsg, ToInit, recv_msg};
use super::rootfs::{self, Given};
use crate::plan::{LISTEN_FD_BASE, MAX_LISTEN_FDS, Plan};

/// Signals init takes synchronously; all but SIGCHLD are forwarded to the workload.
const FORWARDED: [Signal; 9] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
];

fn send(out: &mut File, msg: &InitMsg) {
    if let Ok(mut line) = serde_json::to_vec(msg) {
        line.push(b'\n');
        // If the monitor is gone there is no one left to tell.
        let _ = out.write_all(&line);
    }
}

/// Runs init; returns its exit code. `ctl` is its end of the monitor's control socket.
pub fn run(plan: &Plan, ctl: OwnedFd, to_monitor: OwnedFd, cgroup_tasks: Vec<File>) -> i32 {
    let mut out = File::from(to_monitor);
    match setup(plan, ctl, cgroup_tasks) {
        Ok((workload, ready)) => {
            send(&mut out, &ready);
            supervise(workload, &mut out)
        }
        Err(message) => {
            send(&mut out, &InitMsg::Failed { message });
            1
        }
    }
}

/// Takes the monitor's messages up to `until`, keeping the mounts it sends.
fn receive(ctl: &OwnedFd, until: ToInit, given: &mut Given) -> Result<(), String> {
    let gone = || "the monitor went away before the sandbox was ready".to_string();
    loop {
        let (msg, fd) = recv_msg::<ToInit>(ctl.as_fd())
            .map_err(|e| format!("read the monitor's message: {e}"))?
            .ok_or_else(gone)?;
        if msg == until {
            return Ok(());
        }
        let fd = fd.ok_or_else(|| format!("the monitor sent {msg:?} without its mount"));
        match msg {
            ToInit::Data => given.data = Some(fd?),
            ToInit::Rootfs => given.rootfs = Some(fd?),
            ToInit::Identity => given.identity = Some(fd?),
            ToInit::Bind(n) => {
                if given.binds.len() <= n {
                    given.binds.resize_with(n + 1, || None);
                }
                given.binds[n] = Some(fd?);
            }
            other => return Err(format!("unexpected message from the monitor: {other:?}")),
        }
    }
}

fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

fn setup(plan: &Plan, ctl: OwnedFd, cgroup_tasks: Vec<File>) -> Result<(Pid, InitMsg), String> {
    // First of all, into the v1 groups (the v2 group, if any, it was born in): from here on
    // everything the sandbox does is charged to and limited by its own groups.
    step(
        "move into the sandbox's cgroup",
        crate::cgroup::move_self(cgroup_tasks),
    )?;
    // The monitor ignores the terminal's signals; a workload must start with the defaults.
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_DFL installs no handler code.
        step("reset signal dispositions", unsafe {
            nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl)
        })?;
    }
    // If the monitor dies, nobody could record how this sandbox ends: end it too. (Becoming
    // root of the namespace below keeps this: the effective ids stay the same host ids.)
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let mut given = Given::default();
    receive(&ctl, ToInit::MapsWritten, &mut given)?;

    step(
        "become gid 0 in the user namespace",
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)),
    )?;
    if plan.host_root {
        step("clear supplementary groups", nix::unistd::setgroups(&[]))?;
    }
    step(
        "become uid 0 in the user namespace",
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)),
    )?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(format!(
            "make init undumpable: {}",
            std::io::Error::last_os_error()
        ));
    }
    step(
        "set the hostname",
        nix::unistd::sethostname(&plan.launch.name),
    )?;
    if plan.launch.netns.is_none() {
        // A joined namespace was set up by the host, loopback included.
        step("bring up the loopback interface", loopback_up())?;
    }
    step("build the root file system", rootfs::build(plan, given))?;

    let spec = &plan.launch;
    let command: Vec<String> = std::iter::once(spec.command.clone())
        .chain(spec.args.iter().cloned())
        .collect();
    let exec = Exec::new(spec, &command)?;
    let confiner = Confiner::prepare(spec, plan.helper_caps)?;

    // On kernels without CLONE_INTO_CGROUP the monitor moves this process into the v2 group
    // (a kernel wait of milliseconds) while it builds the root and its filters.
    receive(&ctl, ToInit::CgroupJoined, &mut Given::default())?;
    drop(ctl);
    step(
        "enter a new cgroup namespace",
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP),
    )?;

    let set = signal_set();
    step("block signals", set.thread_block())?;

    super::confine::become_user(spec, plan.host_root)?;
    let landlock = confiner.apply()?;

    let (err_r, err_w) = step(
        "create the exec-error pipe",
        pipe2(nix::fcntl::OFlag::O_CLOEXEC),
    )?;
    // SAFETY: this process is single-threaded (the launcher never starts threads), so the
    // child may allocate and run ordinary code before it execs.
    match step("fork the workload", unsafe { fork() })? {
        ForkResult::Child => {
            drop(err_r);
            let mut err_w = err_w;
            let error = match hand_over_listeners(plan.listen_fds, &mut err_w)
                .and_then(|extra| close_the_rest(3 + plan.listen_fds as u32).map(|()| extra))
            {
                Ok(extra) => exec_workload(&set, &exec, extra),
                Err(e) => e,
            };
            let _ = File::from(err_w).write_all(error.as_bytes());
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(err_w);
            let mut error = String::new();
            let _ = File::from(err_r).read_to_string(&mut error);
            if !error.is_empty() {
                let _ = waitpid(child, None);
                return Err(error);
            }
            Ok((
                child,
                InitMsg::Ready {
                    workload_pid: child.as_raw(),
                    landlock,
                    seccomp_allowed: super::seccomp::allowed_count(
                        plan.launch.native_aio,
                        plan.helper_caps,
                    ),
                },
            ))
        }
    }
}

/// Sets `lo` up in the sandbox's fresh network namespace, where it starts down: services
/// reach themselves (and health checks reach them) on 127.0.0.1.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain datagram socket; the fd is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq that lives across the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCSIFFLAGS,
            &req,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In the workload's process, before exec: puts the `count` listening sockets the runtime
/// handed over (at [`LISTEN_FD_BASE`] onwards) at fds 3 onwards, closes the originals, and
/// returns the environment with `LISTEN_FDS` and `LISTEN_PID` (this process's pid in the
/// sandbox) added, systemd style. `err_w` (the exec-error pipe) is moved out of the way first.
/// With no sockets, nothing changes.
fn hand_over_listeners(
    count: usize,
    err_w: &mut OwnedFd,
) -> Result<Option<Vec<std::ffi::CString>>, String> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if count == 0 {
        return Ok(None);
    }
    let top = LISTEN_FD_BASE + MAX_LISTEN_FDS as i32;
    // SAFETY: fcntl duplicates an fd this process owns; the copy is owned below.
    let moved = unsafe { libc::fcntl(err_w.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
    if moved < 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("move the exec-error pipe: {e}"));
    }
    // SAFETY: `moved` was just returned by fcntl and nothing else owns it; the old fd closes.
    *err_w = unsafe { OwnedFd::from_raw_fd(moved) };
    for k in 0..count as i32 {
        // SAFETY: dup2 and close on fds of this process: the handed-over sockets and the
        // slots 3.. they go to (only the exec-error pipe, moved above, mattered there).
        if unsafe { libc::dup2(LISTEN_FD_BASE + k, 3 + k) } < 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("hand over listening socket {k}: {e}"));
        }
        // SAFETY: the original was just copied to its slot; this process owns it and nothing
        // else refers to it.
        unsafe { libc::close(LISTEN_FD_BASE + k) };
    }
    Ok(Some(vec![
        std::ffi::CString::new(format!("LISTEN_FDS={count}")).unwrap_or_default(),
        std::ffi::CString::new(format!("LISTEN_PID={}", std::process::id())).unwrap_or_default(),
    ]))
}

/// In the workload's process: marks every descriptor from `first` on close-on-exec, so the
/// workload starts with stdio and its listening sockets only, whatever the launcher's caller
/// left open (runc's "Leaky Vessels" lesson).
fn close_the_rest(first: u32) -> Result<(), String> {
    close_rest(first).map_err(|e| format!("close inherited descriptors: {e}"))
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: every descriptor from `first` on closes at
/// the next exec.
pub fn close_rest(first: u32) -> std::io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range takes integers only.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In the workload's process: restore signals, enter the working directory, exec (with
/// `extra` added to the environment). Returns only on failure, with the reason.
fn exec_workload(set: &SigSet, exec: &Exec, extra: Option<Vec<std::ffi::CString>>) -> String {
    if let Err(e) = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(set), None) {
        return format!("unblock signals: {e}");
    }
    if let Err(e) = nix::unistd::chdir(&exec.workdir) {
        return format!("working directory {}: {e}", exec.workdir.display());
    }
    let envp = match extra {
        Some(extra) => exec.envp.iter().cloned().chain(extra).collect(),
        None => exec.envp.clone(),
    };
    match nix::unistd::execve(&exec.program, &exec.argv, &envp) {
        Err(e) => format!("exec {}: {e}", exec.program.to_string_lossy()),
    }
}

/// Waits for the workload, forwarding signals and reaping orphans; returns init's exit code.
fn supervise(workload: Pid, out: &mut File) -> i32 {
    let set = signal_set();
    let mut status: Option<(Option<i32>, Option<i32>)> = None;
    while status.is_none() {
        let Ok(sig) = set.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = kill(workload, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == workload => {
                    status = Some((Some(code), None));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == workload => {
                    status = Some((None, Some(sig as i32)));
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    // Whatever the workload left behind (daemons, grandchildren) ends with it.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), None).is_ok() {}
    let (code, signal) = status.unwrap_or((None, None));
    send(out, &InitMsg::Exited { code, signal });
    match (code, signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 255,
    }
}
