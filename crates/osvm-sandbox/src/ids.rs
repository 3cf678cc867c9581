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
//! state directory an osvm uses, so slots are recorded host-wide, under [`REGISTRY`]:
//!
//! - `slots/<n>`: slot `n` is held; the file names its holder, a state directory and
//!   `stacks/<stack>/<component>`, `run/<name>` or `instance/<id>`. It is made with
//!   `O_CREAT | O_EXCL`, so two starts never take one slot, with no lock and no table to
//!   rewrite: an unnamed `osvm run` (or a VM's helper sandbox) costs one file made and one
//!   removed.
//! - `keys/<hash>`: which slot a named holder keeps (a restart, a swap and a daemon restart
//!   find the same range), written under an exclusive `flock` of `lock` so a name never takes
//!   two slots.
//!
//! An instance's slot is given back when it ends (by its monitor). Slots of state directories
//! that are gone, and of instances that are over, are taken back when none is free. The
//! registry belongs in `/run`, forgotten at reboot: a range matters only while sandboxes run
//! under it. Nothing on disk depends on it: a data volume stores the sandbox's own ids (mapped
//! at mount time), files created through a `rw` bind belong to the bound directory's owner, and
//! identity files are handed to the range in force at each delivery.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::plan::IdMap;

/// Where the host-wide registry of ranges lives.
pub const REGISTRY: &str = "/run/osvm/ids";
/// The first host id of slot 0.
pub const BASE: u32 = 0x7000_0000;
/// Ids per slot (uid/gid 0..65535 inside).
pub const RANGE: u32 = 65_536;
/// Slots handed out: 1..=4095 (slot 0 is the range every sandbox shared before).
pub const SLOTS: u32 = 4095;

/// Why a range could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// The registry could not be read, locked or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Every slot is held.
    #[error(
        "all {SLOTS} uid ranges are in use (see {path}); remove the state of components that \
         are gone"
    )]
    Exhausted {
        /// The registry.
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
    /// The registry's name for this holder of `state_dir`.
    fn text(&self, state_dir: &Path) -> String {
        let what = match self {
            Self::Component { stack, name } => format!("stacks/{stack}/{name}"),
            Self::Run(name) => format!("run/{name}"),
            Self::Instance(id) => format!("instance/{id}"),
        };
        format!("{}\t{what}", state_dir.display())
    }
}

/// Whether the holder a slot file names is gone: its state directory was removed, or it was an
/// instance that is over.
fn stale(holder: &str) -> bool {
    let Some((state_dir, what)) = holder.split_once('\t') else {
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

/// The slot of an id map made by [`map_of`].
fn slot_of(map: &IdMap) -> Option<u32> {
    let slot = map.host_base.checked_sub(BASE)? / RANGE;
    (map.host_base == BASE + slot * RANGE && (1..=SLOTS).contains(&slot)).then_some(slot)
}

/// FNV-1a of a holder's name: the file name of its entry under `keys/`.
fn key_file(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The registry's directories, made root's alone if missing.
struct Registry {
    slots: PathBuf,
    keys: PathBuf,
    root: PathBuf,
}

impl Registry {
    fn open(root: &Path) -> Result<Self, IdError> {
        let slots = root.join("slots");
        let keys = root.join("keys");
        for dir in [&slots, &keys] {
            if !dir.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io("create", dir))?;
            }
        }
        Ok(Self {
            slots,
            keys,
            root: root.to_path_buf(),
        })
    }

    /// Who holds `slot`, if anyone.
    fn holder(&self, slot: u32) -> Option<String> {
        fs::read_to_string(self.slots.join(slot.to_string())).ok()
    }

    /// Takes a free slot for `holder`: the first one, from a point that differs from call to
    /// call, whose file this call creates.
    fn take(&self, holder: &str) -> Result<Option<u32>, IdError> {
        let start = (std::process::id() ^ nanos()) % SLOTS;
        for k in 0..SLOTS {
            let slot = 1 + (start + k) % SLOTS;
            let path = self.slots.join(slot.to_string());
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(holder.as_bytes()).map_err(io("write", &path))?;
                    return Ok(Some(slot));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("create", &path)(e)),
            }
        }
        Ok(None)
    }

    /// Frees the slots of holders that are gone (see [`stale`]; a monitor gives its instance's
    /// slot back itself, this catches one that was killed, and state directories that were
    /// removed). Called with the lock held.
    fn sweep(&self) {
        if let Ok(entries) = fs::read_dir(&self.slots) {
            for e in entries.flatten() {
                if let Ok(holder) = fs::read_to_string(e.path())
                    && stale(&holder)
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        // Entries of named holders whose slot went (or went to someone else).
        if let Ok(entries) = fs::read_dir(&self.keys) {
            for e in entries.flatten() {
                let kept = fs::read_to_string(e.path()).ok().and_then(|entry| {
                    let (slot, name) = entry.split_once('\n')?;
                    let slot: u32 = slot.parse().ok()?;
                    (self.holder(slot).as_deref() == Some(name)).then_some(())
                });
                if kept.is_none() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>, IdError> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io("lock", &path)(e.into()))
    }

    /// A free slot for `holder`, sweeping once if none is free.
    fn take_or_sweep(&self, holder: &str) -> Result<u32, IdError> {
        if let Some(slot) = self.take(holder)? {
            return Ok(slot);
        }
        {
            let _lock = self.lock()?;
            self.sweep();
        }
        self.take(holder)?.ok_or_else(|| IdError::Exhausted {
            path: self.root.clone(),
        })
    }

    /// The slot the named holder `text` keeps, if its entry and its slot still agree.
    fn kept(&self, text: &str) -> Option<u32> {
        let entry = fs::read_to_string(self.keys.join(key_file(text))).ok()?;
        let (slot, name) = entry.split_once('\n')?;
        let slot: u32 = slot.parse().ok()?;
        (name == text && self.holder(slot).as_deref() == Some(text)).then_some(slot)
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// The range `key` of `state_dir` holds, or a free one, recorded in `registry` before this
/// returns.
pub fn allocate(registry: &Path, state_dir: &Path, key: &IdKey) -> Result<IdMap, IdError> {
    let reg = Registry::open(registry)?;
    let text = key.text(state_dir);
    if let IdKey::Instance(_) = key {
        return reg.take_or_sweep(&text).map(map_of);
    }
    if let Some(slot) = reg.kept(&text) {
        return Ok(map_of(slot));
    }
    let _lock = reg.lock()?;
    if let Some(slot) = reg.kept(&text) {
        return Ok(map_of(slot));
    }
    let slot = match reg.take(&text)? {
        Some(slot) => slot,
        None => {
            reg.sweep();
            reg.take(&text)?.ok_or_else(|| IdError::Exhausted {
                path: reg.root.clone(),
            })?
        }
    };
    let entry = reg.keys.join(key_file(&text));
    let tmp = entry.with_extension("new");
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{slot}\n{text}").as_bytes()))
        .map_err(io("write", &tmp))?;
    fs::rename(&tmp, &entry).map_err(io("write", &entry))?;
    Ok(map_of(slot))
}

/// The range `key` of `state_dir` holds, if it keeps one (instances keep none).
pub fn lookup(registry: &Path, state_dir: &Path, key: &IdKey) -> Result<Option<IdMap>, IdError> {
    let reg = Registry::open(registry)?;
    Ok(reg.kept(&key.text(state_dir)).map(map_of))
}

/// Gives back `map`, the range `key` of `state_dir` holds (if it still holds it).
pub fn release(registry: &Path, state_dir: &Path, key: &IdKey, map: &IdMap) -> Result<(), IdError> {
    let reg = Registry::open(registry)?;
    let text = key.text(state_dir);
    let Some(slot) = slot_of(map) else {
        return Ok(());
    };
    if reg.holder(slot).as_deref() == Some(text.as_str()) {
        let path = reg.slots.join(slot.to_string());
        fs::remove_file(&path).map_err(io("remove", &path))?;
    }
    if !matches!(key, IdKey::Instance(_)) {
        let _ = fs::remove_file(reg.keys.join(key_file(&text)));
    }
    Ok(())
}

/// How many slots are held in `registry` (0 when it does not exist yet).
pub fn usage(registry: &Path) -> Result<usize, IdError> {
    let slots = registry.join("slots");
    match fs::read_dir(&slots) {
        Ok(entries) => Ok(entries.count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io("read", &slots)(e)),
    }
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
        assert!(a.host_base >= 0x7001_0000, "slot 0 is never handed out");
        assert_eq!(a.count, 65_536);
        // The same names in another state directory are other components.
        let other = d.join("other");
        fs::create_dir_all(&other).unwrap();
        let c = allocate(&reg, &other, &web).unwrap();
        assert!(c != a && c != b);
        // Instances get ranges of their own, never a kept one, and give them back.
        let i1 = allocate(&reg, &state, &IdKey::Instance("x-1".into())).unwrap();
        let i2 = allocate(&reg, &state, &IdKey::Instance("x-2".into())).unwrap();
        assert!(![a, b, c, i2].contains(&i1));
        assert_eq!(usage(&reg).unwrap(), 5);
        release(&reg, &state, &IdKey::Instance("x-1".into()), &i1).unwrap();
        assert_eq!(usage(&reg).unwrap(), 4);
        release(&reg, &state, &web, &a).unwrap();
        assert_eq!(lookup(&reg, &state, &web).unwrap(), None);
        assert_eq!(lookup(&reg, &state, &db).unwrap(), Some(b));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn slots_of_finished_instances_and_removed_state_come_back_when_none_is_free() {
        let d = dir("sweep");
        let (reg, state) = (d.join("registry"), d.join("state"));
        let r = Registry::open(&reg).unwrap();
        for slot in 1..=SLOTS {
            let holder = match slot % 3 {
                0 => IdKey::Instance(format!("gone-{slot}")).text(&state),
                1 => IdKey::Run(format!("r{slot}")).text(&d.join("removed")),
                _ => {
                    let id = format!("done-{slot}");
                    let dir = state.join("instances").join(&id);
                    fs::create_dir_all(&dir).unwrap();
                    fs::write(dir.join("exit.json"), "{}").unwrap();
                    IdKey::Instance(id).text(&state)
                }
            };
            fs::write(r.slots.join(slot.to_string()), holder).unwrap();
        }
        // A named holder's entry whose slot is gone.
        fs::write(r.keys.join("0123456789abcdef"), "7\nsomewhere\trun/old").unwrap();
        // Every holder is gone or over: a sweep frees them all.
        allocate(&reg, &state, &IdKey::Run("next".into())).unwrap();
        assert_eq!(usage(&reg).unwrap(), 1);
        assert_eq!(
            fs::read_dir(&r.keys).unwrap().count(),
            1,
            "only the new holder's entry is left"
        );
        // Now every slot held by a live instance: nothing can be swept.
        for slot in 1..=SLOTS {
            let id = format!("live-{slot}");
            fs::create_dir_all(state.join("instances").join(&id)).unwrap();
            let _ = fs::write(
                r.slots.join(slot.to_string()),
                IdKey::Instance(id).text(&state),
            );
        }
        assert!(matches!(
            allocate(&reg, &state, &IdKey::Instance("more".into())),
            Err(IdError::Exhausted { .. })
        ));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_kept_slot_taken_over_by_someone_else_is_not_trusted() {
        let d = dir("trust");
        let (reg, state) = (d.join("registry"), d.join("state"));
        let web = IdKey::Run("web".into());
        let a = allocate(&reg, &state, &web).unwrap();
        let slot = slot_of(&a).unwrap();
        // The slot file now names another holder (a sweep freed it and someone took it).
        fs::write(
            Registry::open(&reg).unwrap().slots.join(slot.to_string()),
            "elsewhere\trun/x",
        )
        .unwrap();
        let b = allocate(&reg, &state, &web).unwrap();
        assert_ne!(a, b, "a new range, not the other holder's");
        fs::remove_dir_all(&d).unwrap();
    }
}
