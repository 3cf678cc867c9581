//! cgroup v1 (legacy and hybrid hosts): one group per controller hierarchy.
//!
//! On hybrid hosts the controller-less v2 tree at `/sys/fs/cgroup/unified` gets a companion
//! group too: its `cgroup.kill` kills the whole sandbox in one write.

use std::path::{Path, PathBuf};

use osvm_core::{InstanceStats, Resources};

use super::{
    CGROUP_ROOT, CPU_PERIOD_US, CgroupError, CgroupManager, CgroupPaths, Hierarchy, OSVM_PARENT,
    kill_procs, read_keyed, read_procs, read_u64, rmdir, write,
};

/// One sandbox's v1 groups.
pub struct V1Group {
    hierarchy: Hierarchy,
    /// `/sys/fs/cgroup/memory/osvm/<id>`.
    memory: PathBuf,
    /// `/sys/fs/cgroup/cpu/osvm/<id>` (cpu and cpuacct may share one hierarchy).
    cpu: PathBuf,
    /// `/sys/fs/cgroup/cpuacct/osvm/<id>`.
    cpuacct: PathBuf,
    /// `/sys/fs/cgroup/pids/osvm/<id>`.
    pids: PathBuf,
    /// `/sys/fs/cgroup/unified/osvm/<id>` on hybrid hosts.
    unified: Option<PathBuf>,
}

fn controller_dir(name: &'static str) -> Result<PathBuf, CgroupError> {
    let dir = Path::new(CGROUP_ROOT).join(name);
    if dir.join("cgroup.procs").exists() {
        Ok(dir)
    } else {
        Err(CgroupError::MissingController(name))
    }
}

/// Every directory [`V1Group::create`] may have made for sandbox `id` (some may not exist).
pub(super) fn dirs_of(id: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["memory", "cpu", "cpuacct", "pids"]
        .into_iter()
        .filter_map(|c| controller_dir(c).ok())
        .map(|d| d.join(OSVM_PARENT).join(id))
        .collect();
    dirs.push(
        Path::new(CGROUP_ROOT)
            .join("unified")
            .join(OSVM_PARENT)
            .join(id),
    );
    dirs
}

impl V1Group {
    /// Creates the sandbox's group in the memory, cpu, cpuacct and pids hierarchies.
    pub fn create(
        hierarchy: Hierarchy,
        group: &Path,
        limits: &Resources,
    ) -> Result<Self, CgroupError> {
        let mut made = Vec::new();
        let mut make = |controller: &'static str| -> Result<PathBuf, CgroupError> {
            // Where cpu and cpuacct are one hierarchy, both names lead to it (the group is
            // made once, and recorded under each name).
            let root = controller_dir(controller)?;
            let real = std::fs::canonicalize(&root)
                .unwrap_or(root.clone())
                .join(group);
            if !made.contains(&real) {
                super::make_under(&root, group, |_| Ok(()))?;
                made.push(real);
            }
            Ok(root.join(group))
        };
        let result = (|| {
            let memory = make("memory")?;
            let cpu = make("cpu")?;
            let cpuacct = make("cpuacct")?;
            let pids = make("pids")?;
            Ok((memory, cpu, cpuacct, pids))
        })();
        let unified = match (&result, hierarchy) {
            (Ok(_), Hierarchy::Hybrid) => {
                let unified = Path::new(CGROUP_ROOT).join("unified");
                match super::make_under(&unified, group, |_| Ok(())) {
                    Ok(dir) => Some(dir),
                    Err(e) => {
                        made.iter().for_each(|d| drop(rmdir(d)));
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let (memory, cpu, cpuacct, pids) = match result {
            Ok(dirs) => dirs,
            Err(e) => {
                made.iter().for_each(|d| drop(rmdir(d)));
                return Err(e);
            }
        };
        let group = Self {
            hierarchy,
            memory,
            cpu,
            cpuacct,
            pids,
            unified,
        };
        if let Err(e) = group.apply(limits) {
            let _ = group.remove();
            return Err(e);
        }
        Ok(group)
    }

    /// Re-opens groups recorded by [`CgroupManager::paths`].
    pub fn open(paths: &CgroupPaths) -> Self {
        let find = |controller: &str| {
            let prefix = Path::new(CGROUP_ROOT).join(controller);
            paths
                .dirs
                .iter()
                .find(|d| d.starts_with(&prefix))
                .cloned()
                // Never fall back to the hierarchy's root (writes there would move processes
                // out of their sandbox): a path that does not exist makes every access fail.
                .unwrap_or_else(|| prefix.join(OSVM_PARENT).join("not-recorded"))
        };
        let unified_prefix = Path::new(CGROUP_ROOT).join("unified");
        Self {
            hierarchy: paths.hierarchy,
            memory: find("memory"),
            cpu: find("cpu"),
            cpuacct: find("cpuacct"),
            pids: find("pids"),
            unified: paths
                .dirs
                .iter()
                .find(|d| d.starts_with(&unified_prefix))
                .cloned(),
        }
    }

    fn apply(&self, limits: &Resources) -> Result<(), CgroupError> {
        if let Some(bytes) = limits.memory_bytes {
            write(
                &self.memory.join("memory.limit_in_bytes"),
                &bytes.to_string(),
            )?;
            // Without the memsw limit a workload could push its pages to swap and go on.
            let memsw = self.memory.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
        }
        if let Some(cpus) = limits.cpus {
            let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
            write(
                &self.cpu.join("cpu.cfs_period_us"),
                &CPU_PERIOD_US.to_string(),
            )?;
            write(&self.cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(pids) = limits.pids {
            write(&self.pids.join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    fn all_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.memory.clone()];
        for d in [&self.cpu, &self.cpuacct, &self.pids] {
            if !dirs.contains(d) {
                dirs.push(d.clone());
            }
        }
        dirs.extend(self.unified.clone());
        dirs
    }
}

impl CgroupManager for V1Group {
    fn paths(&self) -> CgroupPaths {
        CgroupPaths {
            hierarchy: self.hierarchy,
            dirs: self.all_dirs(),
        }
    }

    fn v2_dir(&self) -> Option<PathBuf> {
        self.unified.clone()
    }

    fn add_process(&self, pid: i32, skip_v2: bool) -> Result<(), CgroupError> {
        for dir in self.all_dirs() {
            if skip_v2 && Some(&dir) == self.unified.as_ref() {
                continue;
            }
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn add_process_v2(&self, pid: i32) -> Result<(), CgroupError> {
        match &self.unified {
            Some(dir) => write(&dir.join("cgroup.procs"), &pid.to_string()),
            None => Ok(()),
        }
    }

    fn v1_task_files(&self) -> Result<Vec<std::fs::File>, CgroupError> {
        self.all_dirs()
            .into_iter()
            .filter(|d| Some(d) != self.unified.as_ref())
            .map(|d| super::open_for_write(&d.join("tasks")))
            .collect()
    }

    fn stats(&self) -> Result<InstanceStats, CgroupError> {
        let cpu_stat = self.cpu.join("cpu.stat");
        Ok(InstanceStats {
            memory_bytes: read_u64(&self.memory.join("memory.usage_in_bytes"))?,
            memory_peak_bytes: Some(read_u64(&self.memory.join("memory.max_usage_in_bytes"))?),
            cpu_usage_usec: read_u64(&self.cpuacct.join("cpuacct.usage"))? / 1000,
            cpu_throttled_periods: read_keyed(&cpu_stat, "nr_throttled")?.unwrap_or(0),
            cpu_throttled_usec: read_keyed(&cpu_stat, "throttled_time")?.unwrap_or(0) / 1000,
            pids: read_u64(&self.pids.join("pids.current"))?,
            oom_kills: read_keyed(&self.memory.join("memory.oom_control"), "oom_kill")?
                .unwrap_or(0),
        })
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut all = Vec::new();
        for dir in self.all_dirs() {
            for pid in read_procs(&dir)? {
                if !all.contains(&pid) {
                    all.push(pid);
                }
            }
        }
        Ok(all)
    }

    fn set_cpu_weight(&self, weight: u32) -> Result<(), CgroupError> {
        let shares = (u64::from(weight.clamp(1, 10_000)) * 1024 / 100).max(2);
        write(&self.cpu.join("cpu.shares"), &shares.to_string())
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        if let Some(unified) = &self.unified {
            let kill = unified.join("cgroup.kill");
            if kill.exists() {
                return write(&kill, "1");
            }
        }
        kill_procs(&self.pids)
    }

    fn remove(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for dir in self.all_dirs() {
            if let Err(e) = rmdir(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
