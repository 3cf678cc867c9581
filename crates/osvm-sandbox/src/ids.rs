//! Host uid/gid ranges: every component runs under a range of its own.
//!
//! A sandbox's user namespace maps its ids 0..65535 onto 65,536 host ids, and it is *owned* by
//! the first of them: the kernel charges per-user counters (inotify instances and watches,
//! queued signals, user namespaces, pipe buffers) to that host uid, never to root, and files a
//! sandbox creates on a shared host file system belong to its own range. Two components never
//! share a range, so neither can touch the other's files nor spend the other's counters.
//!
//! Ranges are slots in `0x7001_0000..0x8000_0000` (4,095 slots of 65,536 ids; `0x7000_0000`,
//! which every sandbox shared before, is never handed out). Host uids are the host's, whatever
//! state directory an osvm uses, so the ranges are recorded host-wide, in
//! [`REGISTRY`]`/ids.json`, under a key naming what holds them: the state directory plus
//! `stacks/<stack>/<component>` or `run/<name>` keep their slot (a restart, a swap and a daemon
//! restart find the same range), `instance/<id>` (an unnamed `osvm run`, the helper sandboxes
//! of VMs) gives it back when the instance ends. Slots of state directories that are gone, and
//! of instances that are over, are taken back when no slot is free. The file is read and
//! rewritten under an exclusive `flock` on `ids.lock`, through a temporary file and a rename,
//! so concurrent `osvm run`s and daemons never hand out one slot twice and a crash never leaves
//! half a table.
//!
//! The registry lives in `/run`, so a reboot forgets it: a range matters only while sandboxes
//! run under it. Nothing on disk depends on it: a data volume stores the sandbox's own ids
//! (mapped at mount time), files created through a `rw` bind belong to the bound directory's
//! owner, and identity files are handed to the range in force at each delivery.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::IdMap;

/// Where the host-wide registry of ranges lives.
pub const REGISTRY: &str = "/run/osvm";
/// The first host id of slot 0.
pub const BASE: u32 = 0x7000_0000;
/// Ids per slot (uid/gid 0..65535 inside).
pub const RANGE: u32 = 65_536;
/// Slots handed out: 1..=4095 (slot 0 is the range every sandbox shared before).
pub const SLOTS: u32 = 4095;

/// Why a range could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// The table could not be read, locked or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The table is not what osvm writes.
    #[error("{path} is malformed ({source}); move it away to start a fresh table")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// Every slot is held.
    #[error(
        "all {SLOTS} uid ranges are in use (see {path}); remove the state of components that \
         are gone"
    )]
    Exhausted {
        /// The table.
        path: PathBuf,
    },
}

/// What holds a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdKey {
    /// Component `name` of stack `stack`: kept for good.
    Component {
        /// The stack.
        stack: String,
        /// The component.
        name: String,
    },
    /// `osvm run --name NAME`: kept for good.
    Run(String),
    /// One instance that keeps nothing (an unnamed `osvm run`, a VM's helper sandbox): given
    /// back when it ends.
    Instance(String),
}

impl IdKey {
    /// The registry's key for this holder of `state_dir`.
    fn text(&self, state_dir: &Path) -> String {
        let what = match self {
            Self::Component { stack, name } => format!("stacks/{stack}/{name}"),
            Self::Run(name) => format!("run/{name}"),
            Self::Instance(id) => format!("instance/{id}"),
        };
        format!("{}\t{what}", state_dir.display())
    }
}

/// Whether the holder behind a registry key is gone: its state directory was removed, or it
/// was an instance that is over.
fn stale(key: &str) -> bool {
    let Some((state_dir, what)) = key.split_once('\t') else {
        return true;
    };
    let state_dir = Path::new(state_dir);
    if !state_dir.is_dir() {
        return true;
    }
    match what.strip_prefix("instance/") {
        Some(id) => {
            let dir = state_dir.join("instances").join(id);
            !dir.is_dir() || dir.join("exit.json").exists()
        }
        None => false,
    }
}

/// The table on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    /// Key -> slot.
    slots: BTreeMap<String, u32>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IdError + 'a {
    move |source| IdError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The id map of `slot`.
fn map_of(slot: u32) -> IdMap {
    IdMap {
        host_base: BASE + slot * RANGE,
        count: RANGE,
    }
}

/// Holds the table's lock while it lives.
struct Locked {
    _lock: nix::fcntl::Flock<File>,
    path: PathBuf,
    table: Table,
}

fn lock(registry: &Path) -> Result<Locked, IdError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(registry)
        .map_err(io("create", registry))?;
    let lock_path = registry.join("ids.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io("lock", &lock_path)(e.into()))?;
    let path = registry.join("ids.json");
    let table = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| IdError::Malformed {
            path: path.clone(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::default(),
        Err(e) => return Err(io("read", &path)(e)),
    };
    Ok(Locked {
        _lock: lock,
        path,
        table,
    })
}

impl Locked {
    fn save(&self) -> Result<(), IdError> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.table).expect("a map of strings to numbers");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("write", &tmp))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io("write", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(io("replace", &self.path))
    }

    /// Frees the slots of holders that are gone (see [`stale`]; the monitor gives an
    /// instance's slot back itself, this catches a monitor that was killed and a state
    /// directory that was removed).
    fn sweep(&mut self) {
        self.table.slots.retain(|key, _| !stale(key));
    }
}

/// The range `key` of `state_dir` holds, or a free one, recorded in `registry` before this
/// returns.
pub fn allocate(registry: &Path, state_dir: &Path, key: &IdKey) -> Result<IdMap, IdError> {
    let mut locked = lock(registry)?;
    let text = key.text(state_dir);
    if let Some(slot) = locked.table.slots.get(&text) {
        return Ok(map_of(*slot));
    }
    let mut free = free_slot(&locked.table);
    if free.is_none() {
        locked.sweep();
        free = free_slot(&locked.table);
    }
    let slot = free.ok_or_else(|| IdError::Exhausted {
        path: locked.path.clone(),
    })?;
    locked.table.slots.insert(text, slot);
    locked.save()?;
    Ok(map_of(slot))
}

/// The range `key` of `state_dir` holds, if it holds one.
pub fn lookup(registry: &Path, state_dir: &Path, key: &IdKey) -> Result<Option<IdMap>, IdError> {
    let locked = lock(registry)?;
    Ok(locked
        .table
        .slots
        .get(&key.text(state_dir))
        .map(|s| map_of(*s)))
}

/// Gives `key`'s range back.
pub fn release(registry: &Path, state_dir: &Path, key: &IdKey) -> Result<(), IdError> {
    let mut locked = lock(registry)?;
    if locked.table.slots.remove(&key.text(state_dir)).is_some() {
        locked.save()?;
    }
    Ok(())
}

/// How many slots are held in `registry` (0 when it does not exist yet).
pub fn usage(registry: &Path) -> Result<usize, IdError> {
    if !registry.join("ids.json").exists() {
        return Ok(0);
    }
    Ok(lock(registry)?.table.slots.len())
}

fn free_slot(table: &Table) -> Option<u32> {
    let used: std::collections::BTreeSet<u32> = table.slots.values().copied().collect();
    (1..=SLOTS).find(|s| !used.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry and a state directory of the test's own, inside one scratch directory.
    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("osvm-ids-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("state/instances")).unwrap();
        d
    }

    #[test]
    fn keys_keep_their_range_and_never_share_one() {
        let d = dir("keep");
        let web = IdKey::Component {
            stack: "s".into(),
            name: "web".into(),
        };
        let db = IdKey::Component {
            stack: "s".into(),
            name: "db".into(),
        };
        let (reg, state) = (d.join("registry"), d.join("state"));
        let a = allocate(&reg, &state, &web).unwrap();
        let b = allocate(&reg, &state, &db).unwrap();
        assert_ne!(a.host_base, b.host_base);
        assert_eq!(
            allocate(&reg, &state, &web).unwrap(),
            a,
            "the same range again"
        );
        assert_eq!(a.host_base, 0x7001_0000, "slot 0 is never handed out");
        assert_eq!(a.count, 65_536);
        // The same names in another state directory are other components.
        let other = d.join("other");
        fs::create_dir_all(&other).unwrap();
        let c = allocate(&reg, &other, &web).unwrap();
        assert!(c != a && c != b);
        release(&reg, &state, &web).unwrap();
        assert_eq!(lookup(&reg, &state, &web).unwrap(), None);
        assert_eq!(lookup(&reg, &state, &db).unwrap(), Some(b));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn ranges_of_finished_instances_and_removed_state_come_back_when_the_slots_run_out() {
        let d = dir("sweep");
        let (reg, state) = (d.join("registry"), d.join("state"));
        let instance = |id: &str| IdKey::Instance(id.into()).text(&state);
        let mut locked = lock(&reg).unwrap();
        for slot in 1..=SLOTS {
            let key = match slot % 3 {
                0 => instance(&format!("x-{slot}")),
                1 => IdKey::Run(format!("r{slot}")).text(&d.join("removed")),
                _ => {
                    let id = format!("done-{slot}");
                    fs::create_dir_all(state.join("instances").join(&id)).unwrap();
                    fs::write(state.join("instances").join(&id).join("exit.json"), "{}").unwrap();
                    instance(&id)
                }
            };
            locked.table.slots.insert(key, slot);
        }
        locked.save().unwrap();
        drop(locked);
        // Instance directories gone or finished, a state directory removed: all stale.
        let got = allocate(&reg, &state, &IdKey::Run("next".into())).unwrap();
        assert_eq!(got.host_base, BASE + RANGE);
        // Now fill the table with live holders: nothing can be swept.
        let mut locked = lock(&reg).unwrap();
        locked.table.slots.clear();
        for slot in 1..=SLOTS {
            let id = format!("live-{slot}");
            fs::create_dir_all(state.join("instances").join(&id)).unwrap();
            locked.table.slots.insert(instance(&id), slot);
        }
        locked.save().unwrap();
        drop(locked);
        assert!(matches!(
            allocate(&reg, &state, &IdKey::Run("more".into())),
            Err(IdError::Exhausted { .. })
        ));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_malformed_table_is_an_error_not_a_fresh_start() {
        let d = dir("bad");
        let (reg, state) = (d.join("registry"), d.join("state"));
        fs::create_dir_all(&reg).unwrap();
        fs::write(reg.join("ids.json"), "{not json").unwrap();
        assert!(matches!(
            allocate(&reg, &state, &IdKey::Run("x".into())),
            Err(IdError::Malformed { .. })
        ));
        fs::remove_dir_all(&d).unwrap();
    }
}
