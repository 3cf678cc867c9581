//! The new mount API, as the launcher uses it: every mount is a descriptor before it is
//! anywhere in a tree.
//!
//! - a *detached tree* is a copy of part of a mount tree (`open_tree(OPEN_TREE_CLONE)`) or a
//!   fresh file system (`fsopen` + `fsmount`) that belongs to no mount namespace yet;
//! - its attributes (read-only, nosuid, nodev, an id mapping) are set on the descriptor
//!   (`mount_setattr`), which for an id mapping must happen while it is still detached;
//! - it is attached onto a directory or file that is itself held as a descriptor
//!   (`move_mount` with both paths empty), so no path is resolved at the moment of mounting and
//!   a symlink swapped in meanwhile changes nothing (the lesson of runc's CVE-2021-30465).
//!
//! The monitor (host root, in the host's mount namespace) prepares the trees that come from the
//! host's file systems; the sandbox's init attaches them inside its own namespace.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
    fsconfig_set_fd, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    open_tree,
};

/// `MOUNT_ATTR_*` bits for [`set_attrs`].
pub const RDONLY: u64 = 0x1;
/// No setuid/setgid/file capabilities.
pub const NOSUID: u64 = 0x2;
/// No device nodes.
pub const NODEV: u64 = 0x4;
/// No execution.
pub const NOEXEC: u64 = 0x8;
/// The mount carries an id mapping (`userns_fd`).
const IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A copy of the tree at `path` (relative to `dir`; `""` for `dir` itself), detached. The last
/// component of `path` is followed if it is a symlink only when `follow` (host system paths);
/// with `recursive` the mounts below it come along.
pub fn clone_tree(
    dir: BorrowedFd<'_>,
    path: &Path,
    recursive: bool,
    follow: bool,
) -> io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    if !follow {
        flags |= OpenTreeFlags::AT_SYMLINK_NOFOLLOW;
    }
    if path.as_os_str().is_empty() {
        flags |= OpenTreeFlags::AT_EMPTY_PATH;
    }
    Ok(open_tree(dir, path, flags)?)
}

/// A fresh, detached mount of a new `fstype` file system with `options` (key, value) and
/// `flags` (keys without a value), mounted with `attrs` (`MOUNT_ATTR_*`).
pub fn new_fs(
    fstype: &str,
    options: &[(&str, String)],
    flags: &[&str],
    attrs: u64,
) -> io::Result<OwnedFd> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    for (key, value) in options {
        fsconfig_set_string(&fs, *key, value.as_str())?;
    }
    for key in flags {
        fsconfig_set_flag(&fs, *key)?;
    }
    fsconfig_create(&fs)?;
    Ok(fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::from_bits_retain(attrs as u32),
    )?)
}

/// A detached overlay of `lower` (topmost first) and, for a writable one, `upper` with its
/// `work` directory: each a directory descriptor (layers given by descriptor, kernel 6.13+;
/// id-mapped detached trees work), mounted with `attrs`.
///
/// overlayfs does its work in the upper layer (its work directory, copy-ups, whiteouts) with
/// the credentials of whoever created it. An id-mapped upper layer maps only the sandbox's ids,
/// so the file system is created with the file-system ids set to `owner` (the sandbox root's
/// host id) while this process keeps its capabilities (SECBIT_NO_SETUID_FIXUP): its writes land
/// on disk as the sandbox's root, id 0. Only for a single-threaded caller (the monitor): the
/// ids are per thread, and are restored before returning.
pub fn overlay(
    lower: &[BorrowedFd<'_>],
    upper: Option<(BorrowedFd<'_>, BorrowedFd<'_>)>,
    owner: u32,
    attrs: u64,
) -> io::Result<OwnedFd> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    // No inodes index (containerd's choice too): layers are shared between containers.
    fsconfig_set_string(&fs, "index", "off")?;
    for layer in lower {
        fsconfig_set_fd(&fs, "lowerdir+", layer)?;
    }
    if let Some((upper, work)) = upper {
        fsconfig_set_fd(&fs, "upperdir", upper)?;
        fsconfig_set_fd(&fs, "workdir", work)?;
    }
    let set_ids = |id: u32| {
        // SAFETY: setfsgid/setfsuid take integers and cannot fail in a way that matters here:
        // the ids are checked by reading them back.
        unsafe {
            libc::setfsgid(id);
            libc::setfsuid(id);
            (libc::setfsuid(u32::MAX) as u32 == id && libc::setfsgid(u32::MAX) as u32 == id)
                .then_some(())
                .ok_or_else(|| io::Error::other(format!("set the file-system ids to {id}")))
        }
    };
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let created = set_ids(owner).and_then(|()| Ok(fsconfig_create(&fs)?));
    let restored = set_ids(0);
    // SAFETY: as above.
    let bits = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, 0, 0, 0, 0) };
    if restored.is_err() || bits != 0 {
        // Going on with another identity than root's would be worse than stopping.
        let _ = writeln!(io::stderr(), "osvm monitor: cannot become root again");
        // SAFETY: ends this process at once.
        unsafe { libc::_exit(1) };
    }
    created?;
    Ok(fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::from_bits_retain(attrs as u32),
    )?)
}

/// Sets (`set`) and clears (`clear`) `MOUNT_ATTR_*` bits of the mount `tree` refers to (and of
/// every mount below it with `recursive`); with `idmap`, also maps its ids through that user
/// namespace (the tree must still be detached).
pub fn set_attrs(
    tree: BorrowedFd<'_>,
    set: u64,
    clear: u64,
    recursive: bool,
    idmap: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set | if idmap.is_some() { IDMAP } else { 0 },
        attr_clr: clear,
        propagation: 0,
        userns_fd: idmap.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: mount_setattr reads `attr` (size passed) and an empty path string; both live
    // across the call, and the descriptor is borrowed for its duration.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attaches the detached (or attached, which moves it) mount `tree` onto `target`, a directory
/// or file held open (`O_PATH` is enough).
pub fn attach(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    Ok(move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?)
}

/// Whether the root of `tree` is a directory (else it is a file or a device node).
pub fn is_dir(tree: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::fs::fstat(tree)?.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// Whether the root of `tree` is a character or block device node.
pub fn is_device(tree: BorrowedFd<'_>) -> io::Result<bool> {
    let kind = rustix::fs::fstat(tree)?.st_mode & libc::S_IFMT;
    Ok(kind == libc::S_IFCHR || kind == libc::S_IFBLK)
}

/// A user namespace made only to carry an id mapping for [`set_attrs`]: on-disk uid `uid` and
/// gid `gid` appear as host ids `host` (`count` consecutive ids each). The process that made it
/// has ended by the time this returns; the descriptor keeps the namespace alive.
pub fn mapping_userns(uid: u32, gid: u32, host: u32, count: u32) -> io::Result<OwnedFd> {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `pipe`.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned from here on.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: clone without CLONE_VM and without a stack behaves like fork(2); the caller is
    // single-threaded. The child only blocks in read(2) and exits with _exit(2).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(write);
        let mut byte = 0u8;
        // SAFETY: a one-byte read into a local; returns at EOF when the parent is done.
        unsafe {
            libc::read(read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0)
        }
    }
    drop(read);
    let pid = pid as libc::pid_t;
    let proc = Path::new("/proc").join(pid.to_string());
    let result = std::fs::write(proc.join("uid_map"), format!("{uid} {host} {count}\n"))
        .and_then(|()| std::fs::write(proc.join("gid_map"), format!("{gid} {host} {count}\n")))
        .and_then(|()| std::fs::File::open(proc.join("ns/user")).map(OwnedFd::from));
    drop(write);
    let mut status = 0;
    // SAFETY: reaps the child made above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}
