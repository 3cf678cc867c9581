//! A component's `/data`: its own ext4 file system in an image file, on a loop device.
//!
//! Why an image and not a directory: the size of the image *is* the cap (`resources.disk`),
//! enforced by the kernel on every host file system, where project quotas need an ext4 or xfs
//! host mounted with `prjquota`; the sandbox sees a file system whose root is `/`, never a host
//! path; and the files inside carry the sandbox's own ids (0..65535), mapped onto its host range
//! by an id-mapped mount, so the volume does not care which range the component holds.
//!
//! - [`ensure_image`] (the runtime, before the monitor starts): creates
//!   `<state>/data/.../<name>.img` sparse at the cap with `mkfs.ext4` the first time (under a
//!   temporary name, renamed into place), and refuses a cap below the image's size: a volume
//!   only grows.
//! - [`mount`] (the monitor, host root): under an exclusive `flock` of the image, finds the loop
//!   device already backing it (recorded in `<image>.loop`, checked against the image's device
//!   and inode: a recycled number is never trusted) or binds a free one (`LOOP_CONFIGURE`,
//!   autoclear, direct I/O), grows the file system online when the cap was raised, and returns
//!   a detached mount of it (`nosuid`, `nodev`). Two instances of one component (a hot-swap)
//!   share one loop device, hence one superblock: ext4 is never mounted twice from one image.
//!   The mount lives only in the sandbox's mount namespace; when the last instance ends the
//!   file system is unmounted and the loop device freed by the kernel.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::launcher::mounts;

/// Why the volume could not be had.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Something the volume needs is missing on this host.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The cap is below what the volume already holds.
    #[error(
        "the data volume {path} is {have} bytes, more than disk = {want} bytes: volumes only \
         grow; raise `disk` again, or move the image away to start with an empty /data"
    )]
    Shrink {
        /// The image.
        path: PathBuf,
        /// Its size.
        have: u64,
        /// The cap asked for.
        want: u64,
    },
    /// A microVM has the image attached as its disk: mounting it too would put two file
    /// system drivers on one ext4.
    #[error(
        "the data volume {0} is attached as a disk to a running microVM of the component; it \
         cannot be mounted while that VM runs (stop it first; a VM whose /data is to be shared \
         between instances says microvm = {{ shared_data = true }})"
    )]
    AttachedToVm(PathBuf),
    /// A step failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The file or device.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `mkfs.ext4`, where the host has it.
pub fn mkfs() -> Result<PathBuf, VolumeError> {
    [
        "/usr/sbin/mkfs.ext4",
        "/sbin/mkfs.ext4",
        "/usr/bin/mkfs.ext4",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| {
        VolumeError::Unavailable(
            "mkfs.ext4 was not found (install e2fsprogs); osvm makes each component's /data \
                 an ext4 volume of its own"
                .into(),
        )
    })
}

/// Why volumes cannot be mounted here, if they cannot (for `osvm doctor`).
pub fn unavailable_reason() -> Option<String> {
    if let Err(e) = mkfs() {
        return Some(e.to_string());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some(
            "/dev/loop-control is missing (the loop driver is not loaded, or /dev is not the \
             host's); osvm mounts each component's /data from an image on a loop device"
                .into(),
        );
    }
    None
}

/// Makes sure the image at `path` exists and can hold `bytes`; a new one is formatted empty.
pub fn ensure_image(path: &Path, bytes: u64) -> Result<(), VolumeError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > bytes / BLOCK * BLOCK => Err(VolumeError::Shrink {
            path: path.into(),
            have: m.len(),
            want: bytes,
        }),
        // Smaller: the monitor grows it when it mounts it.
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path, bytes),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

fn create(path: &Path, bytes: u64) -> Result<(), VolumeError> {
    let mkfs = mkfs()?;
    let tmp = path.with_extension(format!("img.new-{}", std::process::id()));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.set_len(bytes / BLOCK * BLOCK)
        .map_err(io_err("size", &tmp))?;
    drop(file);
    // No reserved blocks (they are for the host's root, which the sandbox never is), and no
    // zeroing of the inode tables and journal now: the image is a fresh sparse file, which
    // reads as zeros anyway, so it stays small on the host until the component writes.
    let out = Command::new(&mkfs)
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-m",
            "0",
            "-L",
            "osvm-data",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(&tmp)
        .output()
        .map_err(io_err("run mkfs.ext4 on", &tmp))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(VolumeError::Io {
            what: "format",
            path: tmp,
            source: io::Error::other(format!(
                "mkfs.ext4 {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    // Another start may have made it meanwhile: keep theirs.
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        &tmp,
        rustix::fs::CWD,
        path,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::EXIST => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(io_err("rename into", path)(e.into()))
        }
    }
}

// The loop driver's ioctls (linux/loop.h).
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
/// `EXT4_IOC_RESIZE_FS`: `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
/// The block size osvm formats and exposes volumes with.
const BLOCK: u64 = 4096;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn zeroed_info() -> LoopInfo64 {
    // SAFETY: loop_info64 is plain old data; all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

fn ioctl_ptr<T>(fd: &impl AsRawFd, request: libc::c_ulong, arg: *mut T) -> io::Result<i32> {
    // SAFETY: every caller passes a pointer to a live value of the type the request expects.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn loop_path(n: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{n}"))
}

/// The loop device recorded for the image, if it still backs exactly this image.
fn recorded_loop(record: &Path, image: &std::fs::Metadata) -> Option<(u32, File)> {
    let n: u32 = std::fs::read_to_string(record).ok()?.trim().parse().ok()?;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(loop_path(n))
        .ok()?;
    let mut info = zeroed_info();
    ioctl_ptr(&dev, LOOP_GET_STATUS64, &mut info).ok()?;
    (info.lo_device == image.dev() && info.lo_inode == image.ino()).then_some((n, dev))
}

/// Binds a free loop device to `image`.
fn bind_loop(image: &File, path: &Path) -> Result<(u32, File), VolumeError> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(io_err("open", Path::new("/dev/loop-control")))?;
    let mut last = None;
    // Another process (losetup, another start) may take the free device first: try again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io_err(
                "find a free loop device through",
                Path::new("/dev/loop-control"),
            )(io::Error::last_os_error()));
        }
        let n = n as u32;
        let dev = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(loop_path(n))
        {
            Ok(d) => d,
            Err(e) => {
                last = Some(io_err("open", &loop_path(n))(e));
                continue;
            }
        };
        let mut info = zeroed_info();
        info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        let name = path.as_os_str().as_encoded_bytes();
        let len = name.len().min(63);
        info.lo_file_name[..len].copy_from_slice(&name[name.len() - len..]);
        let mut config = LoopConfig {
            fd: image.as_raw_fd() as u32,
            block_size: BLOCK as u32,
            info,
            reserved: [0; 8],
        };
        match ioctl_ptr(&dev, LOOP_CONFIGURE, &mut config) {
            Ok(_) => return Ok((n, dev)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(io_err("bind", &loop_path(n))(e));
            }
            Err(e) => return Err(io_err("bind the image to", &loop_path(n))(e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        io_err("bind", path)(io::Error::other("no free loop device after 16 tries"))
    }))
}

/// Records which loop device backs the image (mode 0600, like everything in the state).
fn write_record(record: &Path, n: u32) -> io::Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(record)?
        .write_all(format!("{n}\n").as_bytes())
}

/// Whether a running QEMU has `image` open as a disk (QEMU takes OFD locks on the images it
/// opens): would a write lock over the whole file conflict with anyone's?
pub fn attached_to_vm(image: &Path) -> io::Result<bool> {
    write_locked(&File::open(image)?)
}

/// Whether a write lock over the whole of `file` would conflict with anyone's OFD lock.
fn write_locked(file: &File) -> io::Result<bool> {
    use nix::fcntl::{FcntlArg, fcntl};
    let mut probe = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe)).map_err(io::Error::from)?;
    Ok(probe.l_type != libc::F_UNLCK as i16)
}

/// Whether `image` is bound to a loop device (mounted for an instance of its component, or
/// about to be): a microVM must not attach it as a disk then.
pub fn loop_backed(image: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(image) else {
        return false;
    };
    recorded_loop(&image.with_extension("img.loop"), &meta).is_some()
}

/// A detached mount of the volume at `image`, grown to `bytes` first if it is smaller.
pub fn mount(image: &Path, bytes: u64) -> Result<OwnedFd, VolumeError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(image)
        .map_err(io_err("open", image))?;
    if write_locked(&file).map_err(io_err("check the locks of", image))? {
        return Err(VolumeError::AttachedToVm(image.to_path_buf()));
    }
    // Starts of one component (a hot-swap, a restart racing its predecessor's end) take turns.
    let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_err("lock", image)(e.into()))?;
    let meta = file.metadata().map_err(io_err("stat", image))?;
    let record = image.with_extension("img.loop");
    let bytes = bytes / BLOCK * BLOCK;
    let grow = meta.len() < bytes;
    if grow {
        file.set_len(bytes).map_err(io_err("grow", image))?;
    }
    let (n, dev) = match recorded_loop(&record, &meta) {
        Some(found) => found,
        None => {
            let bound = bind_loop(&file, image)?;
            write_record(&record, bound.0).map_err(io_err("write", &record))?;
            bound
        }
    };
    if grow {
        ioctl_ptr(&dev, LOOP_SET_CAPACITY, std::ptr::null_mut::<u8>())
            .map_err(io_err("grow", &loop_path(n)))?;
    }
    let tree = mounts::new_fs(
        "ext4",
        &[("source", loop_path(n).display().to_string())],
        &["noinit_itable", "discard"],
        mounts::NOSUID | mounts::NODEV,
    )
    .map_err(io_err("mount the volume on", &loop_path(n)))?;
    if grow {
        let root = rustix::fs::openat(
            &tree,
            ".",
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io_err("open the volume", image)(e.into()))?;
        let mut blocks: u64 = bytes / BLOCK;
        ioctl_ptr(&root, EXT4_IOC_RESIZE_FS, &mut blocks)
            .map_err(io_err("grow the file system of", image))?;
    }
    // The mount holds the device open now; the loop device goes when the last mount does.
    drop(dev);
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A volume a microVM holds as its disk (QEMU's OFD lock on the image) is never mounted
    /// for another instance: two file system drivers on one ext4 would corrupt it.
    #[test]
    fn a_volume_attached_to_a_vm_is_not_mounted() {
        use nix::fcntl::{FcntlArg, fcntl};
        let path = std::env::temp_dir().join(format!("osvm-vol-lock-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        assert!(!attached_to_vm(&path).unwrap());
        assert!(!loop_backed(&path), "no loop device backs a fresh image");
        // What QEMU does on the images it opens: OFD locks on a few bytes.
        let qemu = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let lock = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 100,
            l_len: 1,
            l_pid: 0,
        };
        fcntl(&qemu, FcntlArg::F_OFD_SETLK(&lock)).unwrap();
        assert!(attached_to_vm(&path).unwrap());
        match mount(&path, 4096) {
            Err(VolumeError::AttachedToVm(p)) => assert_eq!(p, path),
            other => panic!("mounted a volume a VM holds: {:?}", other.map(|_| ())),
        }
        drop(qemu);
        assert!(!attached_to_vm(&path).unwrap());
        let _ = std::fs::remove_file(&path);
    }
}
