//! Control groups: limits and accounting for one sandbox.
//!
//! Hosts come in three shapes, detected once in [`Hierarchy::detect`]:
//! - **unified** (cgroup v2 only): one tree at `/sys/fs/cgroup`, controllers enabled through
//!   `cgroup.subtree_control`;
//! - **hybrid**: v1 controllers under `/sys/fs/cgroup/<controller>` plus a v2 tree at
//!   `/sys/fs/cgroup/unified` that carries no controllers but still offers `cgroup.kill`;
//! - **legacy** (v1 only).
//!
//! Each backend implements [`CgroupManager`] for one sandbox: it creates the sandbox's group
//! under an `osvm/` parent, writes the limits, moves the sandbox's init into it, reads usage,
//! kills everything inside and removes the group. osvm only ever touches groups it created.

pub mod v1;
pub mod v2;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use osvm_core::{InstanceStats, Resources};
use serde::{Deserialize, Serialize};

/// The mount point of the cgroup file systems.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent group under which osvm creates one group per sandbox.
pub const OSVM_PARENT: &str = "osvm";

/// The CFS period osvm uses for CPU quotas, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Errors while managing control groups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The host has no usable cgroup hierarchy.
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    /// A controller osvm needs is not mounted or not enabled.
    #[error("cgroup controller `{0}` is not available on this host")]
    MissingController(&'static str),
    /// Reading or writing a cgroup file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`write`, `read`, `mkdir`, `rmdir`).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A cgroup file held something osvm could not parse.
    #[error("unexpected content in {path}: {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
}

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hierarchy {
    /// cgroup v2 only.
    Unified,
    /// v1 controllers plus a controller-less v2 tree at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// cgroup v1 only.
    Legacy,
}

impl Hierarchy {
    /// Detects the host's layout from the file system types under `/sys/fs/cgroup`.
    pub fn detect() -> Result<Self, CgroupError> {
        let root = Path::new(CGROUP_ROOT);
        match fs_type(root) {
            Some(FsType::Cgroup2) => Ok(Hierarchy::Unified),
            Some(FsType::Tmpfs) => {
                if fs_type(&root.join("unified")) == Some(FsType::Cgroup2) {
                    Ok(Hierarchy::Hybrid)
                } else {
                    Ok(Hierarchy::Legacy)
                }
            }
            Some(FsType::Other) => Err(CgroupError::Unavailable(format!(
                "{CGROUP_ROOT} is neither cgroup2 nor a tmpfs holding v1 hierarchies"
            ))),
            None => Err(CgroupError::Unavailable(format!(
                "{CGROUP_ROOT} is not mounted"
            ))),
        }
    }

    /// Short name for display.
    pub fn name(self) -> &'static str {
        match self {
            Hierarchy::Unified => "v2 (unified)",
            Hierarchy::Hybrid => "hybrid (v1 controllers + v2 tree)",
            Hierarchy::Legacy => "v1 (legacy)",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum FsType {
    Cgroup2,
    Tmpfs,
    Other,
}

fn fs_type(path: &Path) -> Option<FsType> {
    let st = nix::sys::statfs::statfs(path).ok()?;
    let t = st.filesystem_type();
    Some(if t == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        FsType::Cgroup2
    } else if t == nix::sys::statfs::TMPFS_MAGIC {
        FsType::Tmpfs
    } else {
        FsType::Other
    })
}

/// The paths of one sandbox's groups, recorded in the launch plan so that the launcher and
/// later the daemon (after a restart) can find them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPaths {
    /// The layout the paths belong to.
    pub hierarchy: Hierarchy,
    /// Every group directory the sandbox's processes must join (one per v1 controller, or
    /// the single v2 group), plus the v2 companion group on hybrid hosts.
    pub dirs: Vec<PathBuf>,
}

/// One sandbox's control group(s).
pub trait CgroupManager: Send + Sync {
    /// Every directory whose `cgroup.procs` the sandbox's init must be written to.
    fn paths(&self) -> CgroupPaths;
    /// The v2 group a process can be created in directly (`clone3` with `CLONE_INTO_CGROUP`):
    /// the group itself on unified hosts, the companion group on hybrid hosts, none on legacy.
    fn v2_dir(&self) -> Option<PathBuf>;
    /// Moves a process into the group(s); with `skip_v2`, into all but [`Self::v2_dir`], which
    /// it was created in.
    fn add_process(&self, pid: i32, skip_v2: bool) -> Result<(), CgroupError>;
    /// Moves a process into the v2 group only ([`Self::v2_dir`]; nothing on legacy hosts):
    /// for a process that moves itself into the v1 groups with [`move_self`].
    fn add_process_v2(&self, pid: i32) -> Result<(), CgroupError>;
    /// The v1 groups' `tasks` files, opened for writing (none on unified hosts): a
    /// single-threaded process given them moves itself with [`move_self`], even after it has
    /// lost the privilege to open them.
    fn v1_task_files(&self) -> Result<Vec<File>, CgroupError>;
    /// Current usage.
    fn stats(&self) -> Result<InstanceStats, CgroupError>;
    /// Processes still in the group.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// Kills every process in the group.
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// Sets the group's CPU weight on v2's scale (1-10000, default 100; v1: `cpu.shares`,
    /// 1024 for 100).
    fn set_cpu_weight(&self, weight: u32) -> Result<(), CgroupError>;
    /// Removes the group(s); fails with EBUSY while processes remain.
    fn remove(&self) -> Result<(), CgroupError>;
}

/// Creates the group `group` (relative to each hierarchy's root: `osvm/<id>` for a sandbox of
/// osvm's) with `limits` on the detected hierarchy, and its missing parents.
pub fn create(
    hierarchy: Hierarchy,
    group: &Path,
    limits: &Resources,
) -> Result<Box<dyn CgroupManager>, CgroupError> {
    match hierarchy {
        Hierarchy::Unified => Ok(Box::new(v2::V2Group::create(
            Path::new(CGROUP_ROOT),
            group,
            limits,
        )?)),
        Hierarchy::Hybrid | Hierarchy::Legacy => {
            Ok(Box::new(v1::V1Group::create(hierarchy, group, limits)?))
        }
    }
}

/// Makes the parents of `group` below `root` that are missing (each with `prepare` run on it,
/// top down), then `group` itself, which must not exist yet: a sandbox never shares a group
/// (joining another's would share its limits, and its end would kill the other's processes),
/// nor nests in one that has processes of its own (another sandbox's: it would be charged to
/// that one's limits and end with it).
pub(crate) fn make_under(
    root: &Path,
    group: &Path,
    mut prepare: impl FnMut(&Path) -> Result<(), CgroupError>,
) -> Result<PathBuf, CgroupError> {
    let mut dir = root.to_path_buf();
    let mut parts = group.components().peekable();
    while let Some(part) = parts.next() {
        dir.push(part);
        if parts.peek().is_some() {
            mkdir(&dir)?;
            let procs = dir.join("cgroup.procs");
            if procs.exists() && !read(&procs)?.trim().is_empty() {
                return Err(CgroupError::Io {
                    op: "nest a sandbox's group in",
                    path: dir,
                    source: io::Error::other("that group has processes (another's)"),
                });
            }
            prepare(&dir)?;
        } else {
            fs::create_dir(&dir).map_err(|source| CgroupError::Io {
                op: "mkdir (a sandbox's group must be new)",
                path: dir.clone(),
                source,
            })?;
        }
    }
    Ok(dir)
}

/// Removes the groups a starter that died before it recorded them may have made for sandbox
/// `id`, as long as they are empty (`rmdir` refuses a group with processes): nothing else
/// knows they exist.
pub fn remove_unrecorded(id: &str) {
    let mut dirs = v1::dirs_of(id);
    dirs.push(Path::new(CGROUP_ROOT).join(OSVM_PARENT).join(id));
    for dir in dirs {
        let _ = fs::remove_dir(dir);
    }
}

/// Re-opens the groups recorded in `paths` (used by the launcher and after a restart).
pub fn open(paths: &CgroupPaths) -> Box<dyn CgroupManager> {
    match paths.hierarchy {
        Hierarchy::Unified => Box::new(v2::V2Group::open(paths.dirs[0].clone())),
        Hierarchy::Hybrid | Hierarchy::Legacy => Box::new(v1::V1Group::open(paths)),
    }
}

/// Moves the calling thread into the groups whose `tasks` files are `files` (from
/// [`CgroupManager::v1_task_files`]), then closes them. The caller must be single-threaded:
/// only the thread moves.
///
/// Writing `0` (the calling thread itself) to `tasks` is the one move the kernel makes without
/// taking its global threadgroup lock, whose write side waits for an RCU grace period (about
/// 5 ms on this project's hosts when no other move happened just before, 0.06 ms this way).
/// The kernel checks the permission of whoever opened the file, so a process that has entered
/// its user namespace can still do it.
pub fn move_self(files: Vec<File>) -> std::io::Result<()> {
    use std::io::Write;
    for mut f in files {
        f.write_all(b"0")?;
    }
    Ok(())
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn open_for_write(path: &Path) -> Result<File, CgroupError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| CgroupError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let s = read(path)?;
    s.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: s,
    })
}

/// Reads `key value` lines (cpu.stat, memory.events, memory.oom_control) and returns `key`.
pub(crate) fn read_keyed(path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    let s = read(path)?;
    Ok(parse_keyed(&s, key))
}

pub(crate) fn parse_keyed(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
    })
}

pub(crate) fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Io {
            op: "mkdir",
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn rmdir(path: &Path) -> Result<(), CgroupError> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Io {
            op: "rmdir",
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn read_procs(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

pub(crate) fn kill_procs(dir: &Path) -> Result<(), CgroupError> {
    for pid in read_procs(dir)? {
        // A process may exit between listing and killing; ESRCH is fine.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_are_parsed_by_key() {
        let s = "usage_usec 1200\nnr_throttled 7\nthrottled_usec 90\n";
        assert_eq!(parse_keyed(s, "nr_throttled"), Some(7));
        assert_eq!(parse_keyed(s, "usage_usec"), Some(1200));
        assert_eq!(parse_keyed(s, "missing"), None);
        assert_eq!(
            parse_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            Some(2)
        );
    }
}
