//! The last steps of confinement and the workload's command line, shared by the sandbox's init
//! (for the workload) and by `__sandbox-exec` (for a command run later inside a running
//! sandbox, such as an exec health check): both end up equally confined.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use osvm_core::LaunchSpec;
use seccompiler::BpfProgram;

use super::landlock::{self, LandlockReport};
use super::{caps, rootfs, seccomp};
use crate::plan::DATA_DIR_INSIDE;

/// `PATH` inside the sandbox when the component does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A program ready for `execve` inside the sandbox.
pub struct Exec {
    /// The resolved program path.
    pub program: CString,
    /// `argv`, starting with the command as written.
    pub argv: Vec<CString>,
    /// The whole environment.
    pub envp: Vec<CString>,
    /// Where it starts.
    pub workdir: PathBuf,
}

impl Exec {
    /// `command` (program and arguments) with the component's environment and working
    /// directory, resolved against the sandbox's own file system (call it inside the root).
    pub fn new(spec: &LaunchSpec, command: &[String]) -> Result<Self, String> {
        let (first, rest) = command.split_first().ok_or("the command is empty")?;
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), DATA_DIR_INSIDE.into()),
            ("HOSTNAME".into(), spec.name.clone()),
        ];
        for (k, v) in &spec.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let to_c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
        Ok(Self {
            program: rootfs::resolve_command(first, &path_var)?,
            argv: std::iter::once(first)
                .chain(rest)
                .map(|a| to_c(a))
                .collect::<Result<_, _>>()?,
            envp: env
                .iter()
                .map(|(k, v)| to_c(&format!("{k}={v}")))
                .collect::<Result<_, _>>()?,
            workdir: spec
                .working_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DATA_DIR_INSIDE)),
        })
    }
}

/// Becomes the spec's user, if it names one other than root, keeping the capabilities the
/// confinement still needs to drop (SECBIT_NO_SETUID_FIXUP; [`Confiner::apply`] then drops
/// them and locks the securebits). Call it in the sandbox's namespaces, before `apply`.
pub fn become_user(spec: &LaunchSpec, host_root: bool) -> Result<(), String> {
    use nix::unistd::{Gid, Uid};
    let Some(user) = spec
        .user
        .as_ref()
        .filter(|u| u.uid != 0 || u.gid != 0 || u.groups.iter().any(|g| *g != 0))
    else {
        return Ok(());
    };
    if !host_root {
        return Err(
            "running as another user than the sandbox's root needs osvm to run as root".into(),
        );
    }
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) } != 0 {
        return Err(format!(
            "keep capabilities across the user switch: {}",
            std::io::Error::last_os_error()
        ));
    }
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).map_err(|e| format!("set groups {:?}: {e}", user.groups))?;
    let gid = Gid::from_raw(user.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("become gid {gid}: {e}"))?;
    let uid = Uid::from_raw(user.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("become uid {uid}: {e}"))
}

/// Landlock rules and seccomp filters, built and ready to be enforced.
pub struct Confiner {
    ruleset: landlock::Prepared,
    programs: Vec<BpfProgram>,
    helper_caps: bool,
}

impl Confiner {
    /// Builds the rules for `spec` (call it inside the sandbox's root: Landlock opens paths);
    /// `helper`: osvm's own helper (see `StartOptions::helper_caps`).
    pub fn prepare(spec: &LaunchSpec, helper: bool) -> Result<Self, String> {
        let mut writable: Vec<&Path> = vec![
            Path::new("/tmp"),
            Path::new(DATA_DIR_INSIDE),
            Path::new("/dev/shm"),
        ];
        writable.extend(
            spec.binds
                .iter()
                .filter(|b| b.writable)
                .map(|b| b.target.as_path()),
        );
        let ruleset = landlock::prepare(spec.readonly_root, &writable, &spec.listen)
            .map_err(|e| format!("prepare Landlock: {e}"))?;
        let programs =
            seccomp::build(spec.native_aio, helper).map_err(|e| format!("seccomp: {e}"))?;
        Ok(Self {
            ruleset,
            programs,
            helper_caps: helper,
        })
    }

    /// Sets `no_new_privs`, enforces Landlock, drops every capability and installs seccomp,
    /// in that order, for this process and everything it starts.
    pub fn apply(self) -> Result<LandlockReport, String> {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "set no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
        let report = self
            .ruleset
            .enforce()
            .map_err(|e| format!("apply Landlock: {e}"))?;
        if self.helper_caps {
            caps::drop_all_but_helper_caps()
        } else {
            caps::drop_all()
        }
        .map_err(|e| format!("drop capabilities: {e}"))?;
        seccomp::install(&self.programs).map_err(|e| format!("seccomp: {e}"))?;
        Ok(report)
    }
}
