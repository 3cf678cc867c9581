//! cgroup v2: one group per sandbox under `<root>/osvm/`, controllers enabled top-down.

use std::path::{Path, PathBuf};

use osvm_core::{InstanceStats, Resources};

use super::{
    CPU_PERIOD_US, CgroupError, CgroupManager, CgroupPaths, Hierarchy, kill_procs, read,
    read_keyed, read_procs, read_u64, rmdir, write,
};

/// The controllers osvm needs from a v2 hierarchy.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// One sandbox's v2 group.
pub struct V2Group {
    /// `<root>/osvm/<id>`.
    dir: PathBuf,
}

impl V2Group {
    /// Creates `<root>/osvm/<id>`, enabling the memory, cpu and pids controllers on the way.
    pub fn create(root: &Path, group: &Path, limits: &Resources) -> Result<Self, CgroupError> {
        let available = read(&root.join("cgroup.controllers"))?;
        for c in CONTROLLERS {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(CgroupError::MissingController(c));
            }
        }
        enable_controllers(root)?;
        let dir = super::make_under(root, group, enable_controllers)?;
        let group = Self { dir };
        if let Err(e) = group.apply(limits) {
            let _ = rmdir(&group.dir);
            return Err(e);
        }
        Ok(group)
    }

    /// Re-opens an existing group.
    pub fn open(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn apply(&self, limits: &Resources) -> Result<(), CgroupError> {
        if let Some(bytes) = limits.memory_bytes {
            write(&self.dir.join("memory.max"), &bytes.to_string())?;
            let swap = self.dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        if let Some(cpus) = limits.cpus {
            let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
            write(
                &self.dir.join("cpu.max"),
                &format!("{quota} {CPU_PERIOD_US}"),
            )?;
        }
        if let Some(pids) = limits.pids {
            write(&self.dir.join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = read(&path)?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if !missing.is_empty() {
        write(&path, &missing.join(" "))?;
    }
    Ok(())
}

impl CgroupManager for V2Group {
    fn paths(&self) -> CgroupPaths {
        CgroupPaths {
            hierarchy: Hierarchy::Unified,
            dirs: vec![self.dir.clone()],
        }
    }

    fn v2_dir(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }

    fn add_process(&self, pid: i32, skip_v2: bool) -> Result<(), CgroupError> {
        if skip_v2 {
            return Ok(());
        }
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    fn add_process_v2(&self, pid: i32) -> Result<(), CgroupError> {
        self.add_process(pid, false)
    }

    fn v1_task_files(&self) -> Result<Vec<std::fs::File>, CgroupError> {
        Ok(Vec::new())
    }

    fn stats(&self) -> Result<InstanceStats, CgroupError> {
        let cpu = self.dir.join("cpu.stat");
        let peak = self.dir.join("memory.peak");
        Ok(InstanceStats {
            memory_bytes: read_u64(&self.dir.join("memory.current"))?,
            memory_peak_bytes: if peak.exists() {
                Some(read_u64(&peak)?)
            } else {
                None
            },
            cpu_usage_usec: read_keyed(&cpu, "usage_usec")?.unwrap_or(0),
            cpu_throttled_periods: read_keyed(&cpu, "nr_throttled")?.unwrap_or(0),
            cpu_throttled_usec: read_keyed(&cpu, "throttled_usec")?.unwrap_or(0),
            pids: read_u64(&self.dir.join("pids.current"))?,
            oom_kills: read_keyed(&self.dir.join("memory.events"), "oom_kill")?.unwrap_or(0),
        })
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_procs(&self.dir)
    }

    fn set_cpu_weight(&self, weight: u32) -> Result<(), CgroupError> {
        write(
            &self.dir.join("cpu.weight"),
            &weight.clamp(1, 10_000).to_string(),
        )
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            write(&kill, "1")
        } else {
            kill_procs(&self.dir)
        }
    }

    fn remove(&self) -> Result<(), CgroupError> {
        rmdir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a cgroup2 root (plain files stand in for the kernel's).
    fn cgroup_tree_in_tmp(controllers: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "osvm-v2-test-{}-{}",
            std::process::id(),
            controllers.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    #[test]
    fn limits_are_written_in_v2_syntax_and_controllers_enabled() {
        let root = cgroup_tree_in_tmp("cpuset cpu io memory pids");
        // The kernel makes a group's files; here the parents' are made first.
        for parent in ["osvm", "kubepods", "kubepods/pod1"] {
            std::fs::create_dir_all(root.join(parent)).unwrap();
            std::fs::write(root.join(parent).join("cgroup.subtree_control"), "").unwrap();
        }
        let limits = Resources {
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(16),
            open_files: None,
            disk_bytes: None,
        };
        let group = V2Group::create(&root, Path::new("osvm/web-1"), &limits).unwrap();
        let dir = root.join("osvm/web-1");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "16");
        assert_eq!(
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        assert_eq!(group.paths().dirs, vec![dir.clone()]);
        // A CPU weight (a swap's new instance, low until it serves), clamped to v2's range.
        group.set_cpu_weight(10).unwrap();
        assert_eq!(read("cpu.weight"), "10");
        group.set_cpu_weight(0).unwrap();
        assert_eq!(read("cpu.weight"), "1");
        // A group further down (a pod's): the controllers enabled in each parent.
        let group = V2Group::create(&root, Path::new("kubepods/pod1/c1"), &limits).unwrap();
        assert_eq!(group.paths().dirs, vec![root.join("kubepods/pod1/c1")]);
        for parent in ["kubepods", "kubepods/pod1"] {
            assert_eq!(
                std::fs::read_to_string(root.join(parent).join("cgroup.subtree_control")).unwrap(),
                "+memory +cpu +pids"
            );
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_controller_is_named() {
        let root = cgroup_tree_in_tmp("cpu io");
        let err = V2Group::create(&root, Path::new("osvm/x"), &Resources::default())
            .err()
            .unwrap();
        assert!(
            matches!(err, CgroupError::MissingController("memory")),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
