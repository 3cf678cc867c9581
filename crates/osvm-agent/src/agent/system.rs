//! PID 1 chores: file systems, kernel modules, facts about the kernel, powering off.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, sync};

/// Where the image builder puts the kernel modules to load, named so that sorting them gives a
/// valid load order (the kernel tree in the image has no `modules.dep` to work it out).
const MODULES_DIR: &str = "/lib/osvm/modules";

/// Makes every panic power the VM off: if PID 1 unwound to its end the kernel would panic, and
/// a panicking agent can no longer be trusted to report or stop the workload anyway.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        say!("panic: {info}");
        power_off();
    }));
}

/// Mounts the pseudo file systems the workload and the agent expect.
///
/// A failure is printed and skipped: a VM without, say, `/run` can still run most workloads,
/// and the host learns more from a started VM than from one that powered off at once.
pub fn mount_filesystems() {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 6] = [
        ("proc", "/proc", hardened, None),
        ("sysfs", "/sys", hardened, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        // /dev/pts after /dev: it lives on the devtmpfs just mounted.
        (
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/tmp",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    for (fstype, target, flags, data) in mounts {
        // The initramfs is itself a writable tmpfs: a fresh tmpfs on /tmp or /run would only
        // hide files the image put there (a stack may include a tree under /tmp).
        if fstype == "tmpfs"
            && fs::read_dir(target).is_ok_and(|mut entries| entries.next().is_some())
        {
            say!("{target} has files from the image: not mounting a tmpfs over it");
            continue;
        }
        if let Err(error) = fs::create_dir_all(target) {
            say!("cannot create {target}: {error}");
            continue;
        }
        match mount(Some(fstype), target, Some(fstype), flags, data) {
            // Already mounted (the kernel mounts devtmpfs itself with CONFIG_DEVTMPFS_MOUNT).
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(error) => say!("cannot mount {fstype} on {target}: {error}"),
        }
    }
    say!("file systems mounted (uptime {} ms)", uptime_ms());
    if image_mark().is_none() {
        say!(
            "the image did not unpack completely ({} is missing): the root file system the \
             kernel unpacked it into is too small; the host refuses to launch in this guest",
            osvm_agent::proto::IMAGE_MARK
        );
    }
}

/// The image's digest from [`osvm_agent::proto::IMAGE_MARK`], when the image unpacked completely.
pub fn image_mark() -> Option<String> {
    let text = fs::read_to_string(osvm_agent::proto::IMAGE_MARK).ok()?;
    let digest = text.trim();
    (!digest.is_empty()).then(|| digest.to_owned())
}

/// Loads every `*.ko` in [`MODULES_DIR`], in lexical order.
///
/// A module that fails is printed and skipped: the ones after it may not need it, and if vsock
/// ends up missing the host notices the missing hello anyway.
pub fn load_modules() {
    let mut paths: Vec<PathBuf> = match fs::read_dir(MODULES_DIR) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "ko"))
            .collect(),
        Err(error) => {
            say!("no modules loaded: cannot read {MODULES_DIR}: {error}");
            return;
        }
    };
    paths.sort();
    let started = Instant::now();
    let mut loaded = 0;
    for path in &paths {
        match load_module(path) {
            Ok(()) => loaded += 1,
            Err(error) => say!("cannot load {}: {error}", path.display()),
        }
    }
    say!(
        "loaded {loaded} of {} kernel modules in {} ms",
        paths.len(),
        started.elapsed().as_millis()
    );
}

/// Loads one module; one that is already loaded (or built in) counts as loaded.
fn load_module(path: &Path) -> Result<(), String> {
    let image = fs::read(path).map_err(|error| error.to_string())?;
    match nix::kmod::init_module(&image, c"") {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// Milliseconds since the kernel started, from `/proc/uptime` (0 if it cannot be read).
pub fn uptime_ms() -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |seconds| (seconds * 1000.0) as u64)
}

/// The kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Powers the VM off: kills what is left, flushes the file systems, and halts the machine
/// (QEMU runs with `-no-reboot`, so the VM ends either way).
pub fn power_off() -> ! {
    say!("powering off");
    // -1 from PID 1 means every process but PID 1 itself.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    sync();
    // A data volume is left clean where it can be (its journal covers the rest).
    if std::path::Path::new("/data").exists() {
        let _ = nix::mount::umount("/data");
        sync();
    }
    let error = match reboot(RebootMode::RB_POWER_OFF) {
        Ok(never) => match never {},
        Err(error) => error,
    };
    // Only possible without CAP_SYS_BOOT; PID 1 must not return, so wait for the host to kill
    // the VM.
    say!("cannot power off: {error}");
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

nix::ioctl_none!(
    /// `RNDRESEEDCRNG`: reseed the kernel's random number generator from its pool now.
    rnd_reseed_crng,
    b'R',
    0x07
);

/// Mixes `bytes` into the kernel's entropy pool (a write to `/dev/urandom`) and reseeds its
/// random number generator from the pool at once (`RNDRESEEDCRNG`), so that what it hands out
/// from now on depends on them: guests restored from one snapshot wake with the same generator
/// state, and would otherwise draw the same numbers until its next scheduled reseed.
pub fn reseed_random(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut urandom = fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    urandom.write_all(bytes)?;
    // SAFETY: RNDRESEEDCRNG takes no argument; the descriptor is open for the whole call.
    #[allow(unsafe_code)]
    unsafe { rnd_reseed_crng(urandom.as_raw_fd()) }.map_err(std::io::Error::from)?;
    Ok(())
}
