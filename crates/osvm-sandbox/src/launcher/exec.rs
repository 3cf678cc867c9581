//! `__sandbox-exec`: runs one command inside a running sandbox, confined exactly like its
//! workload (for exec health checks, and `osvm exec`).
//!
//! The caller passes a pidfd of the sandbox's init as fd 3 and the instance directory. This
//! process (a fresh exec, single-threaded, host root) joins the sandbox's cgroups, then joins
//! all its namespaces at once with `setns(pidfd, ...)` — race-free: the pidfd is init itself,
//! never a recycled pid — becomes uid/gid 0 of the sandbox's user namespace, and forks (so the
//! child is inside the pid namespace). The child sets `no_new_privs`, enforces the sandbox's
//! Landlock rules, drops every capability, installs the seccomp allowlist and execs the
//! command; it dies with this process (`PR_SET_PDEATHSIG`). This process exits with the
//! command's exit code, or 128 + the signal that ended it.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, fork};

use super::confine::{Confiner, Exec};
use super::protocol::MONITOR_FD;
use crate::cgroup;
use crate::plan::Plan;

/// The argument that makes a binary act as the exec helper.
pub const EXEC_ARG: &str = "__sandbox-exec";

/// Exit code when the helper itself could not get the command running.
pub const SETUP_FAILED: i32 = 125;

/// The helper's entry point; never returns.
pub fn main(instance_dir: &Path, command: &[String]) -> ! {
    // SAFETY: fd 3 is the pidfd the caller handed over; nothing else in this fresh process
    // owns it.
    let init = unsafe { OwnedFd::from_raw_fd(MONITOR_FD) };
    let code = match run(instance_dir, command, &init) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "osvm exec: {message}");
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

fn run(instance_dir: &Path, command: &[String], init: &OwnedFd) -> Result<i32, String> {
    let plan_path = instance_dir.join("plan.json");
    let plan: Plan = std::fs::read(&plan_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("read {}: {e}", plan_path.display()))?;
    cgroup::open(&plan.cgroup)
        .add_process(std::process::id() as i32, false)
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
    let confiner = Confiner::prepare(&plan.launch)?;
    // SAFETY: this process is single-threaded, so the child may run ordinary code.
    match unsafe { fork() }.map_err(|e| format!("fork into the sandbox: {e}"))? {
        ForkResult::Child => {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            let error: Result<std::convert::Infallible, String> = confiner.apply().and_then(|_| {
                nix::unistd::chdir(&exec.workdir)
                    .map_err(|e| format!("working directory {}: {e}", exec.workdir.display()))?;
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
