//! `__sandbox-exec`: runs one command inside a running sandbox, confined exactly like its
//! workload (for exec health checks, and `osvm exec`).
//!
//! The caller passes a pidfd of the sandbox's init as fd 3 and the open `plan.json` as fd 4
//! (no host path on the command line, which the child shows inside until it execs). This
//! process (a fresh exec, single-threaded, host root) joins the sandbox's cgroups, then joins
//! all its namespaces at once with `setns(pidfd, ...)` — race-free: the pidfd is init itself,
//! never a recycled pid — becomes uid/gid 0 of the sandbox's user namespace, and forks (so the
//! child is inside the pid namespace). The child sets `no_new_privs`, enforces the sandbox's
//! Landlock rules, drops every capability, installs the seccomp allowlist, closes every
//! descriptor but stdio and execs the command; it dies with this process (`PR_SET_PDEATHSIG`). This process exits with the
//! command's exit code, or 128 + the signal that ended it.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, fork};

use super::confine::{Confiner, Exec};
use super::protocol::{MONITOR_FD, PLAN_FD};
use crate::cgroup;
use crate::plan::Plan;

/// The argument that makes a binary act as the exec helper.
pub const EXEC_ARG: &str = "__sandbox-exec";

/// The argument before the JSON of the command's own process settings
/// ([`crate::ExecProcess`]).
pub const PROCESS_ARG: &str = "--process";

/// Exit code when the helper itself could not get the command running.
pub const SETUP_FAILED: i32 = 125;

/// The helper's entry point; never returns.
pub fn main(command: &[String], process: Option<&str>) -> ! {
    // SAFETY: fd 3 is the pidfd and fd 4 the open plan the caller handed over; nothing else in
    // this fresh process owns them.
    let (init, plan) = unsafe {
        (
            OwnedFd::from_raw_fd(MONITOR_FD),
            std::fs::File::from_raw_fd(PLAN_FD),
        )
    };
    let code = match super::monitor::read_plan(plan)
        .map_err(|e| format!("read the launch plan: {e}"))
        .and_then(|mut plan| {
            // The command's own environment, working directory and user, where given.
            if let Some(json) = process {
                let p: crate::ExecProcess = serde_json::from_str(json)
                    .map_err(|e| format!("the exec's process settings: {e}"))?;
                if let Some(env) = p.env {
                    plan.launch.env = env;
                }
                if let Some(cwd) = p.cwd {
                    plan.launch.working_dir = Some(cwd);
                }
                if let Some(user) = p.user {
                    plan.launch.user = Some(user);
                }
            }
            run(&plan, command, &init)
        }) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "osvm exec: {message}");
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

fn run(plan: &Plan, command: &[String], init: &OwnedFd) -> Result<i32, String> {
    // This process is single-threaded: it moves itself into the v1 groups without the
    // kernel's grace-period wait (see cgroup::move_self).
    let group = cgroup::open(&plan.cgroup);
    group
        .v1_task_files()
        .map_err(|e| e.to_string())
        .and_then(|files| cgroup::move_self(files).map_err(|e| e.to_string()))
        .and_then(|()| {
            group
                .add_process_v2(std::process::id() as i32)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| format!("join the sandbox's cgroup: {e}"))?;
    let all = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    // SAFETY: setns with a pidfd we own and namespace flags; no memory is passed.
    if unsafe { libc::setns(init.as_raw_fd(), all) } != 0 {
        return Err(format!(
            "join the sandbox's namespaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|e| format!("become gid 0 in the sandbox: {e}"))?;
    if plan.host_root {
        nix::unistd::setgroups(&[]).map_err(|e| format!("clear supplementary groups: {e}"))?;
    }
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| format!("become uid 0 in the sandbox: {e}"))?;

    let exec = Exec::new(&plan.launch, command)?;
    let confiner = Confiner::prepare(&plan.launch, false)?;
    // SAFETY: this process is single-threaded, so the child may run ordinary code.
    match unsafe { fork() }.map_err(|e| format!("fork into the sandbox: {e}"))? {
        ForkResult::Child => {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            let error: Result<std::convert::Infallible, String> =
                super::confine::become_user(&plan.launch, plan.host_root)
                    .and_then(|()| confiner.apply())
                    .and_then(|_| {
                        super::init::close_rest(3)
                            .map_err(|e| format!("close inherited descriptors: {e}"))?;
                        nix::unistd::chdir(&exec.workdir).map_err(|e| {
                            format!("working directory {}: {e}", exec.workdir.display())
                        })?;
                        match nix::unistd::execve(&exec.program, &exec.argv, &exec.envp) {
                            Err(e) => Err(format!("exec {}: {e}", exec.program.to_string_lossy())),
                        }
                    });
            let Err(message) = error;
            let _ = writeln!(std::io::stderr(), "osvm exec: {message}");
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
                Err(e) => return Err(format!("wait for the command: {e}")),
            }
        },
    }
}
