//! Snapshots of booted guests (`microvm = { snapshot = true }`).
//!
//! A snapshot is a guest saved right after its agent said hello, before any workload: its RAM
//! (`ram`, the file QEMU kept guest memory in, mapped shared) and its device state (`state`,
//! QEMU's migration stream without the RAM, `x-ignore-shared`), in
//! `<state>/snapshots/<key>/`. The key is the SHA-256 of everything the saved guest depends on:
//! kernel, image, QEMU's version and the machine (memory, vCPUs, accelerator, TSC, devices), so
//! a change of any of them makes a new snapshot instead of restoring a stale one.
//!
//! A start restores a *private copy* of the RAM (mapped copy-on-write by its QEMU and unlinked
//! once mapped): QEMU 7.2 opens a RAM file for writing even when it maps it privately, so the
//! snapshot's own file is never given to a guest's QEMU, and a guest that took over its QEMU
//! could not change what the next copies restore. A snapshot that fails to restore is set
//! aside (`<key>.failed`, with the reason); starts then boot cold, and say why.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::image::Image;
use crate::kernel::Kernel;
use crate::qemu::{LinkArgs, QemuArgs};

/// The snapshot's guest memory.
pub const RAM: &str = "ram";
/// The snapshot's device state.
pub const STATE: &str = "state";

/// The version of QEMU (`--version`'s first line), read once.
fn qemu_version() -> io::Result<String> {
    static VERSION: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            let out = std::process::Command::new("qemu-system-x86_64")
                .arg("--version")
                .output()
                .map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned())
        })
        .clone()
        .map_err(io::Error::other)
}

/// What a snapshot depends on; its key is their digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inputs {
    /// Kernel release, file, size and time.
    pub kernel: String,
    /// The image's digest.
    pub image: String,
    /// QEMU's version.
    pub qemu: String,
    /// Accelerator, vCPUs, memory, TSC, devices.
    pub machine: String,
}

impl Inputs {
    /// What of `self` differs from `before`, in words.
    pub fn changed_since(&self, before: &Inputs) -> String {
        let mut what = Vec::new();
        if self.kernel != before.kernel {
            what.push("the kernel");
        }
        if self.image != before.image {
            what.push("the image");
        }
        if self.qemu != before.qemu {
            what.push("QEMU's version");
        }
        if self.machine != before.machine {
            what.push("the machine (memory, vCPUs, accelerator, devices)");
        }
        if what.is_empty() {
            "nothing it records".into()
        } else {
            what.join(", ")
        }
    }
}

/// The snapshot key of a guest booted with `args` from `kernel` and `image`, and what it
/// depends on.
pub fn key(kernel: &Kernel, image: &Image, args: &QemuArgs) -> io::Result<(String, Inputs)> {
    let kernel_file = fs::metadata(&kernel.image)?;
    let inputs = Inputs {
        kernel: format!(
            "{} {} {} {:?}",
            kernel.release,
            kernel.image.display(),
            kernel_file.len(),
            kernel_file.modified().ok()
        ),
        image: image.digest.clone(),
        qemu: qemu_version()?,
        machine: format!(
            "{:?} {} {} {} net={} link={}",
            args.accel,
            args.vcpus,
            args.memory_mib,
            args.tsc_khz,
            args.net_mac.is_some(),
            matches!(args.link, LinkArgs::Serial { .. })
        ),
    };
    let mut h = osvm_guest::digest::Hasher::default();
    for p in [
        "osvm-snapshot-v1",
        &inputs.kernel,
        &inputs.image,
        &inputs.qemu,
        &inputs.machine,
    ] {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    Ok((h.finish(), inputs))
}

/// The snapshot a component used before the one it starts from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// Its key.
    pub key: String,
    /// Why it no longer fits (which input changed).
    pub why: String,
}

/// Notes that component `user` (`<stack>.<name>`, or a name alone) now starts from snapshot
/// `key` (in the file `<snapshots>/used-by-<user>`) and returns the one it used before, with
/// why that no longer fits, if it used another (also when it had left its stack since: see
/// [`release`]).
pub fn note_use(snapshots: &Path, user: &str, key: &str, inputs: &Inputs) -> Option<Stale> {
    let _ = fs::create_dir_all(snapshots);
    let file = snapshots.join(format!("{USED_BY}{user}"));
    let left = snapshots.join(format!("{LEFT_BY}{user}"));
    let before = fs::read_to_string(&file)
        .or_else(|_| fs::read_to_string(&left))
        .ok();
    let stale = before
        .as_deref()
        .map(str::trim)
        .filter(|b| *b != key)
        .map(|before| {
            // Read while this component still holds the old snapshot (its mark is written
            // below): another start's collection cannot remove it, and its meta, meanwhile.
            let old: Option<Inputs> = is_key(before)
                .then(|| fs::read(snapshots.join(before).join("meta.json")).ok())
                .flatten()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| serde_json::from_value(v["inputs"].clone()).ok());
            let short = before.get(..16).unwrap_or(before);
            let why = match old {
                Some(old) => format!(
                    "the snapshot it used before ({short}) no longer fits: {} changed",
                    inputs.changed_since(&old)
                ),
                None => format!("the snapshot it used before ({short}) no longer fits"),
            };
            Stale {
                key: before.to_owned(),
                why,
            }
        });
    let _ = fs::write(&file, key);
    let _ = fs::remove_file(&left);
    stale
}

/// The prefix of the files that say which snapshot a component starts from.
const USED_BY: &str = "used-by-";
/// The prefix of the files that say which snapshot a component that left its stack started
/// from: it no longer holds the snapshot, but if it comes back on another snapshot, its start
/// can still say what changed.
const LEFT_BY: &str = "left-by-";

/// Component `user` has left its stack (removed from it, or the stack taken down): it no longer
/// holds the snapshot it started from, which stays on disk, so that the same component brought
/// up again restores from it, until [`prune`] removes it.
pub fn release(snapshots: &Path, user: &str) -> io::Result<()> {
    match fs::rename(
        snapshots.join(format!("{USED_BY}{user}")),
        snapshots.join(format!("{LEFT_BY}{user}")),
    ) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One stored snapshot, as [`list`] finds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stored {
    /// Its key (a SHA-256 in hex).
    pub key: String,
    /// The bytes it holds on disk (its RAM file is sparse: less than the guest's memory).
    pub bytes: u64,
    /// The components that start from it (`<stack>.<name>`).
    pub users: Vec<String>,
    /// Why it is set aside (it failed to restore), if it is; its directory is gone then.
    pub set_aside: Option<String>,
    /// When it was made (seconds since the Unix epoch).
    pub made: Option<u64>,
}

/// The snapshots in `snapshots` (those made, and those set aside), by key, with their users.
pub fn list(snapshots: &Path) -> io::Result<Vec<Stored>> {
    let entries = match fs::read_dir(snapshots) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut keys = std::collections::BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(user) = name.strip_prefix(USED_BY) {
            if let Ok(key) = fs::read_to_string(entry.path()) {
                users
                    .entry(key.trim().to_owned())
                    .or_default()
                    .push(user.to_owned());
            }
            continue;
        }
        let key = name.strip_suffix(".failed").unwrap_or(&name);
        if is_key(key) && (key != name || entry.path().is_dir()) {
            keys.insert(key.to_owned());
        }
    }
    Ok(keys
        .into_iter()
        .map(|key| {
            let snap = snapshots.join(&key);
            let bytes = held_bytes(&snap).unwrap_or(0);
            let made = fs::metadata(snap.join(STATE))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            Stored {
                users: users.remove(&key).unwrap_or_default(),
                set_aside: set_aside_reason(&snap),
                bytes,
                made,
                key,
            }
        })
        .collect())
}

/// Removes every snapshot no component starts from (those left by components that left their
/// stacks included), and the marks of those set aside that none starts from; returns what
/// went, with the bytes each held. Each snapshot's empty `.lock` file stays: removing it could
/// let two starts that waited on it make the same snapshot at once.
pub fn prune(snapshots: &Path) -> io::Result<Vec<(String, u64)>> {
    let mut removed = Vec::new();
    for stored in list(snapshots)? {
        if !stored.users.is_empty() {
            continue;
        }
        let snap = snapshots.join(&stored.key);
        if let Some(bytes) = remove_unless_named(snapshots, &stored.key, &[USED_BY])? {
            removed.push((stored.key, bytes));
        } else if stored.set_aside.is_some() {
            let _held = lock(&snap)?;
            if !named_by(snapshots, &stored.key, &[USED_BY])? {
                fs::remove_file(snap.with_extension("failed"))?;
                removed.push((stored.key, 0));
            }
        }
    }
    // Marks of components that left on a removed snapshot point at nothing now.
    for entry in fs::read_dir(snapshots)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(LEFT_BY)
            && fs::read_to_string(entry.path())
                .is_ok_and(|k| removed.iter().any(|(key, _)| *key == k.trim()))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(removed)
}

/// Whether a file of `snapshots` whose name starts with one of `holders` names snapshot `key`.
fn named_by(snapshots: &Path, key: &str, holders: &[&str]) -> io::Result<bool> {
    for entry in fs::read_dir(snapshots)?.flatten() {
        let name = entry.file_name();
        if holders
            .iter()
            .any(|h| name.to_string_lossy().starts_with(h))
            && fs::read_to_string(entry.path()).is_ok_and(|k| k.trim() == key)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The bytes the files of snapshot directory `snap` hold on disk, if it exists.
fn held_bytes(snap: &Path) -> Option<u64> {
    let files = fs::read_dir(snap).ok()?;
    Some(
        files
            .flatten()
            .filter_map(|f| f.metadata().ok())
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .sum(),
    )
}

/// Whether `key` has the form of a snapshot's key (hex): anything else read from a file in the
/// snapshots' directory is never taken for a path.
fn is_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes snapshot `key` when no component starts from it any more, nor left its stack on it
/// (no `used-by-` or `left-by-` file names it: the last of those to come back on another
/// snapshot removes it, having said what changed), under the snapshot's lock so that no start
/// copies it meanwhile; returns the bytes it held on disk, or `None` when it is kept (or was
/// gone). A component that later asks for it again (a rollback) makes it anew. Its `.lock`
/// and `.failed` files (empty or a line) stay.
pub fn collect(snapshots: &Path, key: &str) -> io::Result<Option<u64>> {
    remove_unless_named(snapshots, key, &[USED_BY, LEFT_BY])
}

/// Removes snapshot `key` (see [`collect`]) unless a file whose name starts with one of
/// `holders` names it.
fn remove_unless_named(snapshots: &Path, key: &str, holders: &[&str]) -> io::Result<Option<u64>> {
    if !is_key(key) {
        return Ok(None);
    }
    let snap = snapshots.join(key);
    let _held = lock(&snap)?;
    if named_by(snapshots, key, holders)? {
        return Ok(None);
    }
    let Some(held) = held_bytes(&snap) else {
        return Ok(None);
    };
    fs::remove_dir_all(&snap)?;
    Ok(Some(held))
}

/// Where an instance's private copy of the RAM lives until its QEMU has mapped it: its run
/// directory (`run`), which only root can reach on the host and which QEMU's sandbox already
/// holds (a world-writable place such as `/dev/shm` would let any local user plant or hold
/// the name first).
pub fn ram_copy_path(run: &Path) -> PathBuf {
    run.join(RAM)
}

/// Copies the snapshot's RAM file to `to`, only its data (the guest never touched the holes,
/// which stay holes).
pub fn copy_ram(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link: the template's QEMU could write in the snapshot's directory.
    let mut src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nofollow())
        .open(from)?;
    let meta = src.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            from.display()
        )));
    }
    let len = meta.len();
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc_o_nofollow())
        .mode(0o600)
        .open(to)?;
    dst.set_len(len)?;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < len {
        let data = match seek(&src, pos, nix::unistd::Whence::SeekData) {
            Some(d) => d,
            None => break,
        };
        let hole = seek(&src, data, nix::unistd::Whence::SeekHole).unwrap_or(len);
        src.seek(SeekFrom::Start(data))?;
        dst.seek(SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            src.read_exact(&mut buf[..n])?;
            dst.write_all(&buf[..n])?;
            left -= n as u64;
        }
        pos = hole;
    }
    Ok(())
}

/// `O_NOFOLLOW`.
pub fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// `lseek(SEEK_DATA | SEEK_HOLE)` from `from`; `None` past the last data.
fn seek(file: &File, from: u64, how: nix::unistd::Whence) -> Option<u64> {
    nix::unistd::lseek(file.as_fd(), from as i64, how)
        .ok()
        .map(|o| o as u64)
}

/// Loads the snapshot's device state (file `state`) into the QEMU listening on `qmp` (started
/// with `-incoming defer`) and lets the guest run; `failed` says why to stop waiting for QMP.
pub fn restore(
    qmp: &Path,
    state: &Path,
    deadline: Instant,
    failed: impl Fn() -> Option<String>,
) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let state = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nofollow())
        .open(state)
        .map_err(|e| format!("open {}: {e}", state.display()))?;
    let connected = osvm_guest::until_ready(deadline, Duration::from_millis(2), failed, || {
        crate::qmp::Qmp::connect(qmp)
    });
    let mut client = connected.map_err(|gave| match gave {
        osvm_guest::Gave::Failed(why) | osvm_guest::Gave::Late(why) => why,
    })?;
    client.restore(state.as_fd())
}

/// The agent's console line saying its host left the serial port (see the agent's link).
pub const HOST_LEFT: &str = "the host left the serial port";

/// Waits until the guest's console (`console`, QEMU's serial log) has a line containing
/// `what`, until `deadline`; `failed` says why to stop waiting.
pub fn wait_for_console(
    console: &Path,
    what: &str,
    deadline: Instant,
    failed: impl Fn() -> Option<String>,
) -> Result<(), String> {
    loop {
        if fs::read_to_string(console).is_ok_and(|c| c.contains(what)) {
            return Ok(());
        }
        if let Some(why) = failed() {
            return Err(why);
        }
        if Instant::now() > deadline {
            return Err(format!("the guest's console never said {what:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An exclusive lock on snapshot `snap` (on `<key>.lock`), held while it is made or checked.
pub fn lock(snap: &Path) -> io::Result<nix::fcntl::Flock<File>> {
    if let Some(dir) = snap.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(snap.with_extension("lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))
}

/// Sets a snapshot that did not restore aside, with the reason, so that starts boot cold.
pub fn set_aside(snap: &Path, why: &str) {
    let _ = fs::write(snap.with_extension("failed"), format!("{why}\n"));
    let _ = fs::remove_dir_all(snap);
}

/// Why snapshot `snap` is not used (it failed to restore before), if it is set aside.
pub fn set_aside_reason(snap: &Path) -> Option<String> {
    fs::read_to_string(snap.with_extension("failed"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Records how the snapshot was made (for people: `meta.json`).
pub fn write_meta(
    dir: &Path,
    inputs: &Inputs,
    hello_uptime_ms: u64,
    took: Duration,
) -> io::Result<()> {
    let meta = serde_json::json!({
        "inputs": inputs,
        "guest_uptime_ms_at_save": hello_uptime_ms,
        "boot_and_save_ms": took.as_millis() as u64,
    });
    fs::write(
        dir.join("meta.json"),
        serde_json::to_vec_pretty(&meta).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inputs of a snapshot of `image` (the rest fixed).
    fn inputs(image: &str) -> Inputs {
        Inputs {
            kernel: "k".into(),
            image: image.into(),
            qemu: "q".into(),
            machine: "m".into(),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("osvm-snap-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_ram_copy_keeps_data_and_holes() {
        let d = dir("copy");
        let from = d.join("ram");
        let f = File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        let mut f = f;
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"the end of the guest's memory").unwrap();
        drop(f);
        let to = d.join("copy");
        copy_ram(&from, &to).unwrap();
        assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
        // Sparse: far less allocated than the 64 MiB it spans.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&to).unwrap());
        assert!(blocks * 512 < 8 << 20, "{blocks} blocks allocated");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn the_ram_copy_follows_no_link_and_takes_no_planted_name() {
        let d = dir("links");
        let secret = d.join("secret");
        fs::write(&secret, b"a host file").unwrap();
        // A snapshot whose `ram` was replaced by a link to a host file is refused...
        let linked = d.join("ram");
        std::os::unix::fs::symlink(&secret, &linked).unwrap();
        assert!(copy_ram(&linked, &d.join("copy")).is_err());
        assert!(!d.join("copy").exists());
        // ...and so is a destination someone made first, link or file.
        let real = d.join("real");
        fs::write(&real, b"guest memory").unwrap();
        let planted = d.join("planted");
        std::os::unix::fs::symlink(&secret, &planted).unwrap();
        assert!(copy_ram(&real, &planted).is_err());
        assert_eq!(fs::read(&secret).unwrap(), b"a host file");
        let _ = fs::remove_dir_all(&d);
    }

    /// An old snapshot stays while any component starts from it and goes with the last; a
    /// key that is not a digest is never taken for a path.
    #[test]
    fn a_snapshot_goes_when_the_last_component_moves_off_it() {
        let top = dir("collect");
        let d = top.join("snapshots");
        let (k1, k2) = ("aaaa1111", "bbbb2222");
        for key in [k1, k2] {
            fs::create_dir_all(d.join(key)).unwrap();
            fs::write(d.join(key).join(RAM), vec![1u8; 64 << 10]).unwrap();
        }
        let meta = serde_json::json!({ "inputs": inputs("one") });
        fs::write(d.join(k1).join("meta.json"), meta.to_string()).unwrap();
        assert_eq!(note_use(&d, "s.web1", k1, &inputs("one")), None);
        assert_eq!(note_use(&d, "t.web1", k1, &inputs("one")), None);
        // s.web1 moves to the new image: t.web1 (another stack's web1) still uses k1.
        let stale = note_use(&d, "s.web1", k2, &inputs("two")).expect("it used k1");
        assert_eq!(stale.key, k1);
        assert!(stale.why.ends_with("the image changed"), "{}", stale.why);
        assert_eq!(collect(&d, k1).unwrap(), None);
        assert!(d.join(k1).join(RAM).exists());
        // The last user moves: k1 goes, k2 stays.
        let stale = note_use(&d, "t.web1", k2, &inputs("two")).unwrap();
        let freed = collect(&d, &stale.key).unwrap().expect("removed");
        assert!(freed >= 64 << 10, "{freed}");
        assert!(!d.join(k1).exists() && d.join(k2).join(RAM).exists());
        assert_eq!(collect(&d, k1).unwrap(), None, "gone already");
        // A use-file that names a path outside: nothing is removed.
        let outside = top.join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(d.join("used-by-evil"), "../outside").unwrap();
        let stale = note_use(&d, "evil", k2, &inputs("two")).unwrap();
        assert_eq!(stale.key, "../outside");
        assert_eq!(collect(&d, &stale.key).unwrap(), None);
        assert!(outside.exists());
        let _ = fs::remove_dir_all(&top);
    }

    /// A component that leaves its stack lets go of its snapshot, which stays until pruned; one
    /// that comes back on a new image still hears why; prune spares what is in use.
    #[test]
    fn a_snapshot_left_by_its_components_stays_until_pruned() {
        let top = dir("prune");
        let d = top.join("snapshots");
        let (k1, k2, k3) = ("aaaa1111", "bbbb2222", "cccc3333");
        for key in [k1, k2] {
            fs::create_dir_all(d.join(key)).unwrap();
            fs::write(d.join(key).join(RAM), vec![1u8; 64 << 10]).unwrap();
            fs::write(d.join(key).join(STATE), b"QEVM").unwrap();
        }
        let meta = serde_json::json!({ "inputs": inputs("one") });
        fs::write(d.join(k1).join("meta.json"), meta.to_string()).unwrap();
        note_use(&d, "s.web1", k1, &inputs("one"));
        note_use(&d, "s.web2", k2, &inputs("two"));
        // k3 failed to restore and was set aside; nothing starts from it.
        set_aside(&d.join(k3), "a test");
        lock(&d.join(k1)).unwrap();

        let listed = list(&d).unwrap();
        let keys: Vec<&str> = listed.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, [k1, k2, k3]);
        assert_eq!(listed[0].users, ["s.web1"]);
        assert!(listed[0].bytes >= 64 << 10 && listed[0].made.is_some());
        assert_eq!(listed[2].set_aside.as_deref(), Some("a test"));

        // s.web1 leaves its stack: k1 stays (a later `up` restores from it) but has no user.
        release(&d, "s.web1").unwrap();
        release(&d, "s.never-started").unwrap();
        assert!(list(&d).unwrap()[0].users.is_empty());
        // Another component moving off k1 does not remove it: s.web1 may come back and should
        // hear what changed.
        assert_eq!(collect(&d, k1).unwrap(), None);
        assert!(d.join(k1).join(RAM).exists());
        // It comes back on another image: its start says what changed since k1.
        let stale = note_use(&d, "s.web1", k2, &inputs("two")).expect("it used k1");
        assert!(stale.why.ends_with("the image changed"), "{}", stale.why);
        release(&d, "s.web1").unwrap();

        // Prune: k1 (no user) and k3's mark go; k2 (s.web2 starts from it) stays.
        let removed = prune(&d).unwrap();
        let gone: Vec<&str> = removed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(gone, [k1, k3]);
        assert!(removed[0].1 >= 64 << 10);
        assert!(!d.join(k1).exists() && !d.join(k3).with_extension("failed").exists());
        assert!(d.join(k2).join(RAM).exists());
        let listed = list(&d).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].users, ["s.web2"]);
        // s.web1's mark names k2, which stays: kept, so that its next start can still tell.
        assert!(d.join("left-by-s.web1").exists());
        assert!(prune(&d).unwrap().is_empty());
        let _ = fs::remove_dir_all(&top);
    }
}
