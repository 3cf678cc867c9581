//! Building the sandbox's root file system inside its own mount namespace.
//!
//! The default root is a fresh tmpfs holding read-only binds of the host's `/usr`, `/lib*`,
//! `/bin` and `/sbin` (or the same symlinks on merged-/usr hosts), a minimal generated `/etc`
//! with a few read-only host files the dynamic loader and TLS need, a fresh `/proc`, a minimal
//! `/dev` made of bind-mounted host nodes (a user namespace cannot `mknod`), a private `/tmp`,
//! and the component's `/data`. A stack may name its own root directory instead; it is bound
//! (id-mapped, read-only when asked) and must already hold `/proc`, `/dev`, `/tmp` and `/data`.
//!
//! Every mount is made with the new mount API (see [`super::mounts`]): the new root is a
//! detached tmpfs (or the component's tree) attached over `/` of this private namespace, each
//! mount point is found beneath it by [`super::resolve`] without following any symlink, and
//! each mount is attached onto that descriptor. Host system paths (`/usr`, `/etc/ssl`, device
//! nodes) are cloned by path; what lives in osvm's private state (the data volume, binds of
//! the stack's directories, a custom root) arrives from the monitor as detached trees, since
//! the sandbox's unprivileged ids cannot even see the state directory.
//!
//! Writable in-memory file systems (`/tmp`, `/dev/shm`, a writable tmpfs root, a scratch
//! `/data`) are each sized at most `resources.disk` and the memory limit. `/etc`, `/dev` and a
//! read-only root become read-only only once every bind is in place, so binds may add files
//! there. Then `pivot_root(".", ".")` and a lazy unmount of the old root: nothing of the host
//! stays reachable but what was bound on purpose.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{fchdir, pivot_root};
use rustix::fs::{Mode, OFlags};

use super::mounts::{self, NODEV, NOEXEC, NOSUID, RDONLY};
use super::resolve::{self, Kind};
use crate::plan::{DATA_DIR_INSIDE, DataPlan, IDENTITY_INSIDE, Plan};

/// Host directories bound read-only into the default root.
const HOST_DIRS: [&str; 7] = ["usr", "lib", "lib64", "lib32", "libx32", "bin", "sbin"];
/// Host files under `/etc` bound read-only when present: loader cache, alternatives, TLS roots,
/// time zone and the service/protocol/MIME tables ordinary programs read.
const HOST_ETC: [&str; 10] = [
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "localtime",
    "services",
    "protocols",
    "mime.types",
];
/// Device nodes bound from the host.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The mounts the monitor prepared on the host, by what they are for.
#[derive(Default)]
pub struct Given {
    /// The data volume (absent for a scratch `/data`).
    pub data: Option<OwnedFd>,
    /// The component's own root directory, id-mapped.
    pub rootfs: Option<OwnedFd>,
    /// The launch spec's binds, in its order.
    pub binds: Vec<Option<OwnedFd>>,
    /// The identity file system (writable: covered here with a read-only view of itself).
    pub identity: Option<OwnedFd>,
}

/// Errors while building the root, each naming the step.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A mount target was a symlink, the wrong kind of file, or could not be made.
    #[error(transparent)]
    Target(#[from] resolve::ResolveError),
    /// A step failed.
    #[error("{step}: {source}")]
    Step {
        /// The step, naming what it mounts where.
        step: String,
        /// What the system said.
        source: io::Error,
    },
    /// The custom root lacks a directory osvm mounts on.
    #[error("{0}")]
    Rootfs(String),
}

fn step<T, E: Into<io::Error>>(
    what: impl FnOnce() -> String,
    r: Result<T, E>,
) -> Result<T, RootfsError> {
    r.map_err(|e| RootfsError::Step {
        step: what(),
        source: e.into(),
    })
}

/// How big each writable in-memory file system may grow.
fn scratch_size(plan: &Plan) -> u64 {
    let r = &plan.launch.resources;
    r.disk().min(r.memory_bytes.unwrap_or(u64::MAX))
}

fn tmpfs(mode: &str, size: u64, attrs: u64) -> io::Result<OwnedFd> {
    mounts::new_fs(
        "tmpfs",
        &[("mode", mode.to_string()), ("size", size.to_string())],
        &[],
        attrs,
    )
}

/// Attaches `tree` at `target` beneath `root` (made as `kind` where missing).
fn attach_at(
    root: BorrowedFd<'_>,
    tree: BorrowedFd<'_>,
    target: &Path,
    kind: Kind,
) -> Result<(), RootfsError> {
    let at = resolve::open_beneath(root, target, kind)?;
    step(
        || format!("mount on {}", target.display()),
        mounts::attach(tree, at.as_fd()),
    )
}

/// Clones the host's `path` (a system path, followed if it is a link) read-only and attaches
/// it at `target`.
fn bind_host(
    root: BorrowedFd<'_>,
    path: &Path,
    target: &Path,
    attrs: u64,
) -> Result<(), RootfsError> {
    let tree = step(
        || format!("copy the mount of {}", path.display()),
        mounts::clone_tree(rustix::fs::CWD, path, true, true),
    )?;
    step(
        || format!("make {} read-only", path.display()),
        mounts::set_attrs(tree.as_fd(), attrs, 0, true, None),
    )?;
    let kind = if step(
        || format!("stat {}", path.display()),
        mounts::is_dir(tree.as_fd()),
    )? {
        Kind::Dir
    } else {
        Kind::File
    };
    attach_at(root, tree.as_fd(), target, kind)
}

fn write_file(dir: BorrowedFd<'_>, name: &str, content: &str) -> Result<(), RootfsError> {
    let fd = step(
        || format!("create /etc/{name}"),
        rustix::fs::openat(
            dir,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ),
    )?;
    step(
        || format!("write /etc/{name}"),
        rustix::io::write(&fd, content.as_bytes()).map(|_| ()),
    )
}

/// The generated `/etc`: a tmpfs (made read-only later) with passwd, group, hosts and friends,
/// plus the host files programs need to load libraries and check certificates.
fn minimal_etc(root: BorrowedFd<'_>, plan: &Plan) -> Result<OwnedFd, RootfsError> {
    let spec = &plan.launch;
    let etc = step(
        || "make /etc".into(),
        tmpfs("0755", 1 << 20, NOSUID | NODEV | NOEXEC),
    )?;
    let hostname = &spec.name;
    write_file(
        etc.as_fd(),
        "passwd",
        "root:x:0:0:root:/data:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    write_file(etc.as_fd(), "group", "root:x:0:\nnogroup:x:65534:\n")?;
    write_file(etc.as_fd(), "hostname", &format!("{hostname}\n"))?;
    write_file(
        etc.as_fd(),
        "hosts",
        &format!(
            "127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost\n{}",
            spec.hosts
                .iter()
                .map(|(addr, names)| format!("{addr}\t{names}\n"))
                .collect::<String>()
        ),
    )?;
    write_file(
        etc.as_fd(),
        "nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\n",
    )?;
    write_file(etc.as_fd(), "resolv.conf", "")?;
    attach_at(root, etc.as_fd(), Path::new("/etc"), Kind::Dir)?;
    for name in HOST_ETC {
        let source = Path::new("/etc").join(name);
        // A dangling link is "present" but cannot be bound.
        if source.exists() {
            bind_host(
                root,
                &source,
                &Path::new("/etc").join(name),
                RDONLY | NOSUID | NODEV,
            )?;
        }
    }
    Ok(etc)
}

/// A minimal `/dev` (made read-only later): the harmless host device nodes, the `fd` links, and
/// a private `/dev/shm`.
fn minimal_dev(root: BorrowedFd<'_>, size: u64) -> Result<OwnedFd, RootfsError> {
    let dev = step(
        || "make /dev".into(),
        tmpfs("0755", 64 << 10, NOSUID | NOEXEC),
    )?;
    attach_at(root, dev.as_fd(), Path::new("/dev"), Kind::Dir)?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        bind_host(root, &host, &host, NOSUID | NOEXEC)?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        step(
            || format!("symlink /dev/{link}"),
            rustix::fs::symlinkat(to, &dev, link),
        )?;
    }
    let shm = step(
        || "make /dev/shm".into(),
        tmpfs("1777", size, NOSUID | NODEV | NOEXEC),
    )?;
    attach_at(root, shm.as_fd(), Path::new("/dev/shm"), Kind::Dir)?;
    Ok(dev)
}

/// A fresh procfs (before `pivot_root`: the kernel only allows a new proc mount in a user
/// namespace while a fully visible one is still in the mount namespace), with the few files
/// that describe the host rather than the sandbox read-only or masked.
fn proc(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    let proc = step(
        || "mount a new /proc".into(),
        mounts::new_fs("proc", &[], &[], NOSUID | NODEV | NOEXEC),
    )?;
    attach_at(root, proc.as_fd(), Path::new("/proc"), Kind::Dir)?;
    let open = |name: &str| {
        rustix::fs::openat(
            &proc,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    for ro in ["sys", "sysrq-trigger", "irq", "bus"] {
        if open(ro).is_err() {
            continue;
        }
        let tree = step(
            || format!("copy /proc/{ro}"),
            mounts::clone_tree(proc.as_fd(), Path::new(ro), true, false),
        )?;
        step(
            || format!("make /proc/{ro} read-only"),
            mounts::set_attrs(tree.as_fd(), RDONLY, 0, true, None),
        )?;
        let at = step(|| format!("open /proc/{ro}"), open(ro))?;
        step(
            || format!("mount on /proc/{ro}"),
            mounts::attach(tree.as_fd(), at.as_fd()),
        )?;
    }
    for masked in ["kcore", "keys", "timer_list"] {
        let Ok(at) = open(masked) else { continue };
        let null = step(
            || "copy /dev/null".into(),
            mounts::clone_tree(rustix::fs::CWD, Path::new("/dev/null"), false, true),
        )?;
        step(
            || format!("mask /proc/{masked}"),
            mounts::attach(null.as_fd(), at.as_fd()),
        )?;
    }
    Ok(())
}

/// The default root's host directories (or their merged-/usr links) and empty mount points.
fn default_tree(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    for name in HOST_DIRS {
        let host = Path::new("/").join(name);
        match fs::read_link(&host) {
            Ok(link) => step(
                || format!("symlink /{name}"),
                rustix::fs::symlinkat(&link, root, name),
            )?,
            Err(_) if host.is_dir() => {
                bind_host(root, &host, &host, RDONLY | NOSUID | NODEV)?;
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// The custom root must already hold the directories osvm mounts on (a read-only one could not
/// get them, and osvm does not write into a tree it was lent).
fn check_rootfs(root: BorrowedFd<'_>, dir: &Path) -> Result<(), RootfsError> {
    for needed in ["proc", "dev", "tmp", "data"] {
        let found = rustix::fs::openat(
            root,
            needed,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .and_then(|fd| rustix::fs::fstat(&fd).ok())
        .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        if !found {
            return Err(RootfsError::Rootfs(format!(
                "check rootfs: {} has no /{needed} directory (a symlink does not count); create \
                 it (empty) first",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Builds the root and pivots into it. On return the process's root and working directory are
/// the sandbox's `/`.
pub fn build(plan: &Plan, mut given: Given) -> Result<(), RootfsError> {
    let spec = &plan.launch;
    let size = scratch_size(plan);

    // Nothing done here may propagate back to the host's mount namespace.
    step(
        || "make the mount namespace private".into(),
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;

    // A custom root: a directory's tree, or an overlay of layers (named by its upper layer).
    let custom = spec
        .rootfs
        .as_deref()
        .or(spec.rootfs_overlay.as_ref().map(|o| o.name()));
    let root = match (given.rootfs.take(), custom) {
        (Some(tree), Some(_)) => tree,
        (None, Some(dir)) => {
            return Err(RootfsError::Rootfs(format!(
                "the monitor sent no mount for rootfs {}",
                dir.display()
            )));
        }
        (_, None) => step(
            || "make the root tmpfs".into(),
            tmpfs("0755", size, NOSUID | NODEV),
        )?,
    };
    // Attached over `/` of this private namespace: a mount point pivot_root can use, reached
    // through its descriptor (a walk from `/` still finds the host's tree below it).
    let slash = step(
        || "open /".into(),
        rustix::fs::open(
            "/",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ),
    )?;
    step(
        || "attach the new root".into(),
        mounts::attach(root.as_fd(), slash.as_fd()),
    )?;
    let root = root.as_fd();

    let mut read_only_later: Vec<OwnedFd> = Vec::new();
    match custom {
        Some(dir) => check_rootfs(root, dir)?,
        None => {
            default_tree(root)?;
            read_only_later.push(minimal_etc(root, plan)?);
        }
    }
    proc(root)?;
    read_only_later.push(minimal_dev(root, size)?);
    let tmp = step(|| "make /tmp".into(), tmpfs("1777", size, NOSUID | NODEV))?;
    attach_at(root, tmp.as_fd(), Path::new("/tmp"), Kind::Dir)?;

    let data = match (&plan.data, given.data.take()) {
        (DataPlan::Volume { .. }, Some(volume)) => volume,
        (DataPlan::Volume { image, .. }, None) => {
            return Err(RootfsError::Rootfs(format!(
                "the monitor sent no mount for the data volume {}",
                image.display()
            )));
        }
        (DataPlan::Scratch { bytes }, _) => step(
            || "make the scratch /data".into(),
            tmpfs("0755", *bytes, NOSUID | NODEV),
        )?,
    };
    attach_at(root, data.as_fd(), Path::new(DATA_DIR_INSIDE), Kind::Dir)?;

    for (n, b) in spec.binds.iter().enumerate() {
        let tree = given
            .binds
            .get_mut(n)
            .and_then(Option::take)
            .ok_or_else(|| {
                RootfsError::Rootfs(format!(
                    "the monitor sent no mount for {}",
                    b.source.display()
                ))
            })?;
        let kind = if step(
            || format!("stat {}", b.source.display()),
            mounts::is_dir(tree.as_fd()),
        )? {
            Kind::Dir
        } else {
            Kind::File
        };
        attach_at(root, tree.as_fd(), &b.target, kind)?;
    }

    if let Some(identity) = given.identity.take() {
        let target = Path::new(IDENTITY_INSIDE);
        attach_at(root, identity.as_fd(), target, Kind::Dir)?;
        // The monitor writes renewals through the writable mount; the sandbox sees only a
        // read-only view of the same file system on top of it.
        let at = resolve::open_beneath(root, target, Kind::Dir)?;
        let view = step(
            || format!("copy the mount of {}", target.display()),
            mounts::clone_tree(at.as_fd(), Path::new(""), false, false),
        )?;
        step(
            || format!("make {} read-only", target.display()),
            mounts::set_attrs(view.as_fd(), RDONLY, 0, false, None),
        )?;
        step(
            || format!("mount on {}", target.display()),
            mounts::attach(view.as_fd(), at.as_fd()),
        )?;
    }

    for tree in &read_only_later {
        step(
            || "make /etc and /dev read-only".into(),
            mounts::set_attrs(tree.as_fd(), RDONLY, 0, false, None),
        )?;
    }
    if spec.readonly_root {
        step(
            || "make the root read-only".into(),
            mounts::set_attrs(root, RDONLY, 0, false, None),
        )?;
    }

    step(|| "enter the new root".into(), fchdir(root))?;
    step(|| "pivot_root".into(), pivot_root(".", "."))?;
    step(
        || "detach the old root".into(),
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    step(|| "chdir /".into(), nix::unistd::chdir("/"))?;
    Ok(())
}

/// Resolves `command` the way `execvp` would, but against the sandbox's own file system
/// (called after `pivot_root`).
pub fn resolve_command(command: &str, path_var: &str) -> Result<CString, String> {
    let to_c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{command:?} contains NUL"))
    };
    if command.contains('/') {
        return to_c(Path::new(command));
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(command);
        if let Ok(meta) = fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return to_c(&candidate);
            }
        }
    }
    Err(format!(
        "`{command}` was not found in the sandbox's PATH ({path_var})"
    ))
}
