//! Landlock: a second, kernel-enforced fence around the file system and TCP ports, applied
//! after `pivot_root` so the rules name paths inside the sandbox.
//!
//! Rules: the whole tree is readable and executable (`/` may be written too when the root is
//! not read-only); `/tmp`, `/data`, `/dev/shm` and writable binds get every right; the device
//! nodes can be read and written. With `listen` ports declared (and ABI 4+), binding any other
//! TCP port is denied. On ABI 6+ the sandbox is also scoped: it cannot signal processes or reach
//! abstract unix sockets outside its own domain. The crate's best-effort mode applies whatever
//! the running kernel supports; what was applied is reported, never assumed.

use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};
use serde::{Deserialize, Serialize};

/// The newest ABI osvm knows how to use; older kernels get the subset they support.
const TARGET_ABI: ABI = ABI::V6;

/// What Landlock enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockReport {
    /// `fully enforced`, `partially enforced` (older kernel ABI) or `not enforced`.
    pub status: String,
    /// Whether TCP bind was restricted to the declared listen ports.
    pub tcp_bind_restricted: bool,
}

/// Errors while building or applying the ruleset.
#[derive(Debug, thiserror::Error)]
#[error("landlock: {0}")]
pub struct LandlockError(String);

fn err(e: impl std::fmt::Display) -> LandlockError {
    LandlockError(e.to_string())
}

/// A ruleset built and ready to be enforced with [`Prepared::enforce`].
pub struct Prepared {
    ruleset: RulesetCreated,
    listen: bool,
}

/// Builds the ruleset (paths are resolved now, in the sandbox's root).
pub fn prepare(
    readonly_root: bool,
    writable: &[&Path],
    listen: &[u16],
) -> Result<Prepared, LandlockError> {
    let all = AccessFs::from_all(TARGET_ABI);
    let read = AccessFs::from_read(TARGET_ABI);
    // Rights that only make sense on directories (ReadDir, MakeReg, ...) must not be asked for
    // on files: Landlock would drop them and report the ruleset as only partly enforced.
    let file_rights = AccessFs::from_file(TARGET_ABI);
    let device = (read | AccessFs::WriteFile | AccessFs::IoctlDev) & file_rights;

    let mut ruleset = Ruleset::default().handle_access(all).map_err(err)?;
    if !listen.is_empty() {
        ruleset = ruleset.handle_access(AccessNet::BindTcp).map_err(err)?;
    }
    ruleset = ruleset.scope(Scope::from_all(TARGET_ABI)).map_err(err)?;
    let mut created = ruleset.create().map_err(err)?;

    let root_access = if readonly_root { read } else { all };
    created = created
        .add_rule(PathBeneath::new(
            PathFd::new("/").map_err(err)?,
            root_access,
        ))
        .map_err(err)?;
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let path = Path::new("/dev").join(dev);
        if let Ok(fd) = PathFd::new(&path) {
            created = created
                .add_rule(PathBeneath::new(fd, device))
                .map_err(err)?;
        }
    }
    for path in writable {
        let rights = if path.is_dir() {
            all
        } else {
            all & file_rights
        };
        let fd = PathFd::new(path).map_err(err)?;
        created = created
            .add_rule(PathBeneath::new(fd, rights))
            .map_err(err)?;
    }
    for port in listen {
        created = created
            .add_rule(NetPort::new(*port, AccessNet::BindTcp))
            .map_err(err)?;
    }
    Ok(Prepared {
        ruleset: created,
        listen: !listen.is_empty(),
    })
}

impl Prepared {
    /// Restricts the calling process (and everything it starts from now on).
    pub fn enforce(self) -> Result<LandlockReport, LandlockError> {
        let status = self.ruleset.restrict_self().map_err(err)?;
        let tcp_bind_restricted = self.listen && status.ruleset != RulesetStatus::NotEnforced;
        Ok(report(status.ruleset, tcp_bind_restricted))
    }
}

fn report(ruleset: RulesetStatus, tcp_bind_restricted: bool) -> LandlockReport {
    LandlockReport {
        status: match ruleset {
            RulesetStatus::FullyEnforced => "fully enforced".into(),
            RulesetStatus::PartiallyEnforced => {
                "partially enforced (the kernel's Landlock ABI is older than osvm's)".into()
            }
            RulesetStatus::NotEnforced => {
                "not enforced (Landlock unavailable in this kernel)".into()
            }
        },
        tcp_bind_restricted,
    }
}
