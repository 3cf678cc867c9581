//! The monitor: the host-side keeper of one sandbox.
//!
//! The runtime starts it as `<osvm> __sandbox-monitor PLAN` (a fresh exec, so it is
//! single-threaded and may safely `clone`). It stays outside the sandbox, as root on the
//! host, and outside the sandbox's cgroup, so the sandbox's limits never touch it. It:
//! 1. applies the rlimits (raising a hard limit needs host privilege);
//! 2. clones init into new user, pid, mount, network, ipc and uts namespaces;
//! 3. writes init's uid/gid maps and moves it into the cgroup, then lets it go on;
//! 4. reports `Started` (with a pidfd of init) or `Failed` to the runtime;
//! 5. waits for the sandbox to end, records how in `exit.json` (with the final usage and
//!    whether the memory limit's OOM killer fired), removes the cgroup, and exits.
//!
//! The monitor ignores the terminal's and the daemon's death signals: a sandbox outlives the
//! process that started it, and its end is always recorded.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use osvm_core::ExitStatus;

use super::protocol::{
    Confinement, ExitRecord, InitMsg, MONITOR_FD, MonitorMsg, RunningRecord, process_start_time,
};
use super::{init, pidfd_open};
use crate::cgroup::{self, CgroupManager};
use crate::plan::Plan;

/// The monitor's entry point; never returns.
pub fn main(plan_path: &Path) -> ! {
    // SAFETY: fd 3 is the runtime's socket, handed over by the runtime's spawn; nothing else
    // in this fresh process owns it.
    let report = unsafe { OwnedFd::from_raw_fd(MONITOR_FD) };
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    let plan: Plan = match fs::read(plan_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            report_msg(
                &report,
                &MonitorMsg::Failed {
                    message: format!("read launch plan {}: {e}", plan_path.display()),
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

fn report_msg(sock: &OwnedFd, msg: &MonitorMsg, fd: Option<RawFd>) {
    let Ok(bytes) = serde_json::to_vec(msg) else {
        return;
    };
    let iov = [IoSlice::new(&bytes)];
    let fds;
    let cmsgs: &[ControlMessage] = match fd {
        Some(f) => {
            fds = [f];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    // The runtime may be gone (daemon restarting); the exit record on disk still tells.
    let _ = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None);
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
/// into this process's stdout and stderr (the instance's log files) as stamped records (see
/// [`crate::output`]), until the pipes end.
fn pump_output(out: Option<OwnedFd>, err: OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::io::Read;

    // SAFETY: fds 1 and 2 are this process's log files; dup gives owned copies.
    let (log_out, log_err) = unsafe { (libc::dup(1), libc::dup(2)) };
    if log_out < 0 || log_err < 0 {
        return;
    }
    // SAFETY: fresh descriptors from dup, owned from here on.
    let mut logs = unsafe { [File::from_raw_fd(log_out), File::from_raw_fd(log_err)] };
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

fn run(plan: &Plan, report: &OwnedFd) -> Result<(), String> {
    apply_rlimits(plan)?;
    let (go_r, go_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
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
    let (pid, in_v2) = match v2_fd
        .as_ref()
        .map(|fd| clone_into_cgroup(flags, fd.as_raw_fd()))
    {
        Some(Ok(pid)) => (pid, true),
        Some(Err(e)) if !matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::E2BIG)) => {
            return Err(format!(
                "create the sandbox's namespaces in its cgroup: {e}"
            ));
        }
        _ => (
            clone_fork(flags).map_err(|e| format!("create the sandbox's namespaces: {e}"))?,
            false,
        ),
    };
    if pid == 0 {
        drop(go_w);
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
        let code = init::run(plan, go_r, msg_w);
        // SAFETY: end the child without running anything the parent set up to run at exit.
        unsafe { libc::_exit(code) }
    }
    drop(go_r);
    drop(msg_w);
    drop(out_w);
    drop(err_w);
    drop(v2_fd);

    let init_pid = Pid::from_raw(pid);

    let mut go = File::from(go_w);
    let release = |go: &mut File, what: u8| {
        go.write_all(&[what])
            .map_err(|e| format!("release the sandbox's init: {e}"))
    };
    // Init builds its root while this process moves it into the cgroup (see init.rs).
    let prepared = write_id_maps(plan, pid)
        .and_then(|()| release(&mut go, init::MAPS_WRITTEN))
        .and_then(|()| {
            cgroup
                .add_process(pid, in_v2)
                .map_err(|e| format!("move the sandbox into its cgroup: {e}"))
        })
        .and_then(|()| release(&mut go, init::CGROUP_JOINED));
    drop(go);
    // The clone and the cgroup move are done: this process may have threads from now on.
    let pump = std::thread::spawn(move || pump_output(out_r, err_r));
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

/// Writes `name` in `dir` as JSON through a temporary file and a rename, so a reader never
/// sees half a record.
fn write_atomically<T: serde::Serialize>(dir: &Path, name: &str, value: &T) {
    let tmp = dir.join(format!("{name}.tmp"));
    if let Ok(bytes) = serde_json::to_vec_pretty(value)
        && fs::write(&tmp, bytes).is_ok()
    {
        let _ = fs::rename(&tmp, dir.join(name));
    }
}

/// Kills anything left in the cgroup, removes it, and removes the (empty) root mount point.
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
    let _ = fs::remove_dir(&plan.root_dir);
}
