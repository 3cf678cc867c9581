//! cgroup probes: the hierarchy mode, its controllers, swap accounting, whether osvm may create
//! cgroups here, and whether moving a task into one is fast.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};

use super::parse::{
    CgroupMembership, MountEntry, parse_controller_list, parse_mountinfo, parse_proc_cgroup,
};
use super::{AREA_CGROUPS, Check, ProbeError, name_list, read_text};

/// The host's cgroup layout, detected by the same code the sandbox uses.
use osvm_sandbox::cgroup::Hierarchy as CgroupMode;

/// Where cgroup file systems are mounted on every mainstream distribution.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where systemd mounts the v2 tree in hybrid mode.
const CGROUP_UNIFIED: &str = "/sys/fs/cgroup/unified";
/// Controllers the process sandbox limits components with.
const REQUIRED_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// v1 controllers worth naming in the report (the required ones plus accounting and freezing).
const V1_REPORTED_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];
/// Every cgroup v1 controller name the kernel knows; other mount options (`rw`, `name=systemd`,
/// `clone_children`, ...) are not controllers.
const V1_CONTROLLER_NAMES: [&str; 14] = [
    "cpuset",
    "cpu",
    "cpuacct",
    "io",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
];

/// v1 controller name -> the directory its hierarchy is mounted at (first mount wins).
fn v1_controller_mounts(entries: &[MountEntry]) -> BTreeMap<String, PathBuf> {
    let mut mounts = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.fs_type == "cgroup") {
        for option in &entry.super_options {
            if V1_CONTROLLER_NAMES.contains(&option.as_str()) {
                mounts
                    .entry(option.clone())
                    .or_insert_with(|| entry.mount_point.clone());
            }
        }
    }
    mounts
}

/// Where the controllers osvm would use live.
#[derive(Debug)]
enum Hierarchy {
    /// The v2 tree at `/sys/fs/cgroup`, with the controllers of its root.
    V2 {
        /// Names listed in the root's `cgroup.controllers`.
        controllers: BTreeSet<String>,
    },
    /// v1 hierarchies (legacy or hybrid).
    V1 {
        /// Controller -> mount point.
        mounts: BTreeMap<String, PathBuf>,
        /// Controllers of the hybrid v2 tree, if there is one and it could be read.
        unified_controllers: Option<BTreeSet<String>>,
    },
}

/// Reads the controllers available for `mode`.
fn read_hierarchy(mode: CgroupMode) -> Result<Hierarchy, ProbeError> {
    match mode {
        CgroupMode::Unified => {
            let text = read_text(Path::new(CGROUP_ROOT).join("cgroup.controllers"))?;
            Ok(Hierarchy::V2 {
                controllers: parse_controller_list(&text),
            })
        }
        CgroupMode::Hybrid | CgroupMode::Legacy => {
            let mountinfo = read_text("/proc/self/mountinfo")?;
            let mounts = v1_controller_mounts(&parse_mountinfo(&mountinfo));
            let unified_controllers = (mode == CgroupMode::Hybrid)
                .then(|| read_text(Path::new(CGROUP_UNIFIED).join("cgroup.controllers")).ok())
                .flatten()
                .map(|text| parse_controller_list(&text));
            Ok(Hierarchy::V1 {
                mounts,
                unified_controllers,
            })
        }
    }
}

/// Joins a cgroup path from `/proc/self/cgroup` onto a hierarchy's mount point.
fn cgroup_dir(mount_point: &Path, cgroup_path: &str) -> PathBuf {
    match cgroup_path.trim_start_matches('/') {
        "" => mount_point.to_path_buf(),
        relative => mount_point.join(relative),
    }
}

/// Rows for the cgroup mode, controllers, swap accounting and write access.
pub(super) fn cgroup_checks(is_root: bool) -> Vec<Check> {
    let mode = match CgroupMode::detect() {
        Ok(mode) => mode,
        Err(e) => {
            let why = format!("no cgroup hierarchy: {e}");
            return vec![
                Check::no(AREA_CGROUPS, "mode", format!("unavailable: {e}")),
                Check::no(AREA_CGROUPS, "controllers", why.clone()),
                Check::no(AREA_CGROUPS, "swap accounting", why.clone()),
                Check::no(AREA_CGROUPS, "write access", why),
            ];
        }
    };
    let mut checks = vec![Check::yes(AREA_CGROUPS, "mode", mode.name())];
    let hierarchy = match read_hierarchy(mode) {
        Ok(h) => h,
        Err(e) => {
            let why = format!("controllers unknown: {e}");
            checks.push(Check::no(AREA_CGROUPS, "controllers", why.clone()));
            checks.push(Check::no(AREA_CGROUPS, "swap accounting", why.clone()));
            checks.push(Check::no(AREA_CGROUPS, "write access", why));
            return checks;
        }
    };
    let membership = fs::read_to_string("/proc/self/cgroup")
        .map(|text| parse_proc_cgroup(&text))
        .unwrap_or_default();
    checks.push(controllers_check(&hierarchy));
    checks.push(swap_check(&hierarchy, &membership));
    checks.push(write_access_check(is_root, &hierarchy, &membership));
    checks.push(fast_moves_check());
    checks
}

/// Whether moving a process into a cgroup is fast. Without `favordynmods` on a cgroup
/// mount, the kernel waits for an RCU grace period on every move (5-10 ms on these hosts), and
/// every sandbox start pays it once. Informational: nothing fails without it.
fn fast_moves_check() -> Check {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let favored = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[2].starts_with("cgroup") && f[3].split(',').any(|o| o == "favordynmods")
    });
    if favored {
        Check::yes(
            AREA_CGROUPS,
            "fast task moves",
            "a cgroup mount has favordynmods",
        )
    } else {
        Check::no(
            AREA_CGROUPS,
            "fast task moves",
            "no cgroup mount has favordynmods: each sandbox start waits for an RCU grace period \
             (several ms) when it joins its cgroup; informational, nothing fails",
        )
    }
}

impl Hierarchy {
    /// Whether `controller` can be used in this hierarchy.
    fn has_controller(&self, controller: &str) -> bool {
        match self {
            Self::V2 { controllers } => controllers.contains(controller),
            Self::V1 { mounts, .. } => mounts.contains_key(controller),
        }
    }

    /// Which controllers are there, in words.
    fn describe_controllers(&self) -> String {
        match self {
            Self::V2 { controllers } => format!(
                "cgroup.controllers: {} (freezing is built into v2)",
                name_list(controllers.iter().map(String::as_str))
            ),
            Self::V1 {
                mounts,
                unified_controllers,
            } => {
                let (mounted, missing): (Vec<&str>, Vec<&str>) = V1_REPORTED_CONTROLLERS
                    .iter()
                    .partition(|c| mounts.contains_key(**c));
                let others: Vec<&str> = mounts
                    .keys()
                    .map(String::as_str)
                    .filter(|c| !V1_REPORTED_CONTROLLERS.contains(c))
                    .collect();
                let mut detail = format!("v1 mounted: {}", name_list(mounted));
                if !missing.is_empty() {
                    detail.push_str(&format!("; not mounted: {}", name_list(missing)));
                }
                if !others.is_empty() {
                    detail.push_str(&format!("; also: {}", name_list(others)));
                }
                if let Some(unified) = unified_controllers {
                    detail.push_str(&format!(
                        "; v2 tree at {CGROUP_UNIFIED}: {}",
                        name_list(unified.iter().map(String::as_str))
                    ));
                }
                detail
            }
        }
    }
}

/// Whether memory, cpu and pids are all there, and which controllers are.
fn controllers_check(hierarchy: &Hierarchy) -> Check {
    let detail = hierarchy.describe_controllers();
    let missing: Vec<&str> = REQUIRED_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !hierarchy.has_controller(c))
        .collect();
    if missing.is_empty() {
        Check::yes(AREA_CGROUPS, "controllers", detail)
    } else {
        Check::no(
            AREA_CGROUPS,
            "controllers",
            format!(
                "unavailable: missing {} (needed: memory cpu pids); {detail}",
                name_list(missing)
            ),
        )
    }
}

/// Whether memory limits can include swap.
fn swap_check(hierarchy: &Hierarchy, membership: &[CgroupMembership]) -> Check {
    const NAME: &str = "swap accounting";
    match hierarchy {
        Hierarchy::V1 { mounts, .. } => {
            let Some(memory) = mounts.get("memory") else {
                return Check::no(AREA_CGROUPS, NAME, "no v1 memory controller mounted");
            };
            let file = memory.join("memory.memsw.limit_in_bytes");
            if file.exists() {
                Check::yes(
                    AREA_CGROUPS,
                    NAME,
                    format!("{} present: limits cover memory + swap", file.display()),
                )
            } else {
                Check::no(
                    AREA_CGROUPS,
                    NAME,
                    format!(
                        "{} absent: swap is not accounted (boot with swapaccount=1)",
                        file.display()
                    ),
                )
            }
        }
        Hierarchy::V2 { controllers } => {
            if !controllers.contains("memory") {
                return Check::no(AREA_CGROUPS, NAME, "no memory controller in the v2 tree");
            }
            // The root cgroup has no memory.* limit files, so look in this process's cgroup and
            // then in the root's children.
            let own = membership
                .iter()
                .find(|m| m.hierarchy_id == 0)
                .map(|m| cgroup_dir(Path::new(CGROUP_ROOT), &m.path));
            let children = fs::read_dir(CGROUP_ROOT)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|entry| entry.path());
            let found = own
                .into_iter()
                .chain(children)
                .map(|dir| dir.join("memory.swap.max"))
                .find(|file| file.exists());
            match found {
                Some(file) => Check::yes(
                    AREA_CGROUPS,
                    NAME,
                    format!("{} present: swap can be limited", file.display()),
                ),
                None => Check::no(
                    AREA_CGROUPS,
                    NAME,
                    "no memory.swap.max in any cgroup looked at: swap is not accounted \
                     (kernel without CONFIG_MEMCG_SWAP, or swapaccount=0)",
                ),
            }
        }
    }
}

/// Whether osvm may create cgroups: as root, or in a subtree delegated to this user.
fn write_access_check(
    is_root: bool,
    hierarchy: &Hierarchy,
    membership: &[CgroupMembership],
) -> Check {
    const NAME: &str = "write access";
    if is_root {
        return Check::yes(
            AREA_CGROUPS,
            NAME,
            "running as root: may create cgroups under every controller",
        );
    }
    let writable = |dir: &Path| access(dir, AccessFlags::W_OK).is_ok();
    match hierarchy {
        Hierarchy::V2 { .. } => {
            let Some(own) = membership.iter().find(|m| m.hierarchy_id == 0) else {
                return Check::no(AREA_CGROUPS, NAME, "not root, and not in any v2 cgroup");
            };
            let dir = cgroup_dir(Path::new(CGROUP_ROOT), &own.path);
            if !writable(&dir) {
                return Check::no(
                    AREA_CGROUPS,
                    NAME,
                    format!(
                        "not root, and {} is not delegated to this user \
                         (run as root, or under a systemd unit with Delegate=yes)",
                        dir.display()
                    ),
                );
            }
            let delegated = fs::read_to_string(dir.join("cgroup.controllers"))
                .map(|t| parse_controller_list(&t))
                .unwrap_or_default();
            let missing: Vec<&str> = REQUIRED_CONTROLLERS
                .iter()
                .copied()
                .filter(|c| !delegated.contains(*c))
                .collect();
            if missing.is_empty() {
                Check::yes(
                    AREA_CGROUPS,
                    NAME,
                    format!("delegated: {} is writable by this user", dir.display()),
                )
            } else {
                Check::no(
                    AREA_CGROUPS,
                    NAME,
                    format!(
                        "{} is writable, but its parent does not delegate {}",
                        dir.display(),
                        name_list(missing)
                    ),
                )
            }
        }
        Hierarchy::V1 { mounts, .. } => {
            let mut not_writable = Vec::new();
            for controller in REQUIRED_CONTROLLERS {
                let dir = mounts.get(controller).and_then(|mount| {
                    membership
                        .iter()
                        .find(|m| m.controllers.iter().any(|c| c == controller))
                        .map(|m| cgroup_dir(mount, &m.path))
                });
                match dir {
                    Some(dir) if writable(&dir) => {}
                    Some(dir) => not_writable.push(dir.display().to_string()),
                    None => not_writable.push(format!("{controller} (not mounted)")),
                }
            }
            if not_writable.is_empty() {
                Check::yes(
                    AREA_CGROUPS,
                    NAME,
                    "delegated: this user's memory, cpu and pids cgroups are writable",
                )
            } else {
                Check::no(
                    AREA_CGROUPS,
                    NAME,
                    format!(
                        "not root, and not writable by this user: {}",
                        not_writable.join(", ")
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_gives_v1_controllers_and_their_mount_points() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[5].fs_type, "cgroup2");
        let mounts = v1_controller_mounts(&entries);
        let names: Vec<&str> = mounts.keys().map(String::as_str).collect();
        assert_eq!(names, ["cpu", "cpuacct", "memory", "pids"]);
        assert_eq!(mounts["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
    }
}
