//! Building the sandbox's root file system inside its own mount namespace.
//!
//! The default root is a fresh tmpfs holding read-only binds of the host's `/usr`, `/lib*`,
//! `/bin` and `/sbin` (or the same symlinks on merged-/usr hosts), a minimal generated `/etc`
//! with a few read-only host files the dynamic loader and TLS need, a fresh `/proc`, a minimal
//! `/dev` made of bind-mounted host nodes (a user namespace cannot `mknod`), a private `/tmp`,
//! and the component's state directory at `/data`. A stack may name its own root directory
//! instead; it is bound (read-only when asked) and must already hold `/proc`, `/dev` and `/tmp`.
//!
//! Then `pivot_root(".", ".")` and a lazy unmount of the old root: nothing of the host stays
//! reachable but what was bound on purpose.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{chdir, pivot_root};

use crate::plan::{DATA_DIR_INSIDE, Plan};

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

/// Errors while building the root, each naming the step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct RootfsError {
    step: String,
    detail: String,
}

fn fail(step: impl Into<String>, detail: impl std::fmt::Display) -> RootfsError {
    RootfsError {
        step: step.into(),
        detail: detail.to_string(),
    }
}

fn do_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        fail(
            format!(
                "mount {} on {}",
                source
                    .map(|s| s.display().to_string())
                    .unwrap_or_else(|| fstype.unwrap_or("?").into()),
                target.display()
            ),
            e,
        )
    })
}

/// The flags a bind mount must keep when it is remounted inside a user namespace (the kernel
/// locks them), plus the ones osvm adds.
fn locked_flags(path: &Path) -> MsFlags {
    let mut flags = MsFlags::empty();
    if let Ok(st) = statvfs(path) {
        let f = st.flags();
        for (fs_flag, ms_flag) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(fs_flag) {
                flags |= ms_flag;
            }
        }
    }
    flags
}

/// Binds `source` on `target`, read-only unless `writable`, always nosuid and nodev.
fn bind(source: &Path, target: &Path, writable: bool) -> Result<(), RootfsError> {
    do_mount(
        Some(source),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let mut flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | locked_flags(target);
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    do_mount(None, target, None, flags, None)
}

fn mkdir_p(path: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(path).map_err(|e| fail(format!("create {}", path.display()), e))
}

/// Creates the mount point for `source` at `target`: a directory, or an empty file when the
/// source is not a directory.
fn mount_point(source: &Path, target: &Path) -> Result<(), RootfsError> {
    if source.is_dir() {
        mkdir_p(target)
    } else {
        if let Some(parent) = target.parent() {
            mkdir_p(parent)?;
        }
        if !target.exists() {
            fs::write(target, b"").map_err(|e| fail(format!("create {}", target.display()), e))?;
        }
        Ok(())
    }
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn tmpfs(target: &Path, mode: &str, extra: MsFlags) -> Result<(), RootfsError> {
    do_mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
        Some(&format!("mode={mode}")),
    )
}

fn remount_ro(target: &Path, extra: MsFlags) -> Result<(), RootfsError> {
    do_mount(
        None,
        target,
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
        None,
    )
}

fn write_file(path: &Path, content: &str) -> Result<(), RootfsError> {
    fs::write(path, content).map_err(|e| fail(format!("write {}", path.display()), e))
}

fn minimal_etc(root: &Path, hostname: &str, hosts: &[(String, String)]) -> Result<(), RootfsError> {
    let etc = root.join("etc");
    mkdir_p(&etc)?;
    tmpfs(&etc, "0755", MsFlags::MS_NOEXEC)?;
    write_file(
        &etc.join("passwd"),
        "root:x:0:0:root:/data:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    )?;
    write_file(&etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
    write_file(&etc.join("hostname"), &format!("{hostname}\n"))?;
    write_file(
        &etc.join("hosts"),
        &format!(
            "127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost\n{}",
            hosts
                .iter()
                .map(|(addr, names)| format!("{addr}\t{names}\n"))
                .collect::<String>()
        ),
    )?;
    write_file(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files\n",
    )?;
    write_file(&etc.join("resolv.conf"), "")?;
    for name in HOST_ETC {
        let source = Path::new("/etc").join(name);
        // symlink_metadata: a dangling link is still "present" but cannot be bound.
        if source.exists() {
            let target = etc.join(name);
            mount_point(&source, &target)?;
            bind(&source, &target, false)?;
        }
    }
    remount_ro(&etc, MsFlags::MS_NOEXEC)
}

fn minimal_dev(root: &Path) -> Result<(), RootfsError> {
    let dev = root.join("dev");
    mkdir_p(&dev)?;
    tmpfs(&dev, "0755", MsFlags::MS_NOEXEC)?;
    for name in DEVICES {
        let source = Path::new("/dev").join(name);
        let target = dev.join(name);
        write_file(&target, "")?;
        do_mount(Some(&source), &target, None, MsFlags::MS_BIND, None)?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(link)).map_err(|e| fail(format!("symlink /dev/{link}"), e))?;
    }
    let shm = dev.join("shm");
    mkdir_p(&shm)?;
    remount_ro(&dev, MsFlags::MS_NOEXEC)?;
    tmpfs(&shm, "1777", MsFlags::MS_NOEXEC)
}

/// Mounts a fresh procfs (before `pivot_root`: the kernel only allows a new proc mount in a
/// user namespace while a fully visible one is still in the mount namespace), then hides the
/// few files that describe the host rather than the sandbox.
fn proc(root: &Path) -> Result<(), RootfsError> {
    let proc = root.join("proc");
    mkdir_p(&proc)?;
    do_mount(
        Some(Path::new("proc")),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    for ro in ["sys", "sysrq-trigger", "irq", "bus"] {
        let p = proc.join(ro);
        if p.exists() {
            do_mount(Some(&p), &p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            remount_ro(&p, MsFlags::MS_BIND | MsFlags::MS_NOEXEC)?;
        }
    }
    for masked in ["kcore", "keys", "timer_list"] {
        let p = proc.join(masked);
        if p.exists() {
            do_mount(
                Some(Path::new("/dev/null")),
                &p,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
    }
    Ok(())
}

/// Builds the root at `plan.root_dir` and pivots into it. On return the process's root and
/// working directory are the sandbox's `/`.
pub fn build(plan: &Plan) -> Result<(), RootfsError> {
    let spec = &plan.launch;
    let root = plan.root_dir.as_path();

    // Nothing done here may propagate back to the host's mount namespace.
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    match &spec.rootfs {
        Some(dir) => {
            do_mount(
                Some(dir),
                root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            for needed in ["proc", "dev", "tmp", "data"] {
                if !root.join(needed).is_dir() {
                    return Err(fail(
                        "check rootfs",
                        format!(
                            "{} has no /{needed} directory; create it (empty) first",
                            dir.display()
                        ),
                    ));
                }
            }
        }
        None => {
            tmpfs(root, "0755", MsFlags::empty())?;
            for name in HOST_DIRS {
                let host = Path::new("/").join(name);
                let target = root.join(name);
                match fs::read_link(&host) {
                    Ok(link) => {
                        symlink(&link, &target).map_err(|e| fail(format!("symlink /{name}"), e))?
                    }
                    Err(_) if host.is_dir() => {
                        mkdir_p(&target)?;
                        bind(&host, &target, false)?;
                    }
                    Err(_) => {}
                }
            }
            minimal_etc(root, &spec.name, &spec.hosts)?;
            for dir in ["tmp", "data"] {
                mkdir_p(&root.join(dir))?;
            }
        }
    }

    proc(root)?;
    minimal_dev(root)?;
    tmpfs(&root.join("tmp"), "1777", MsFlags::empty())?;
    bind(
        &plan.data_dir,
        &inside(root, Path::new(DATA_DIR_INSIDE)),
        true,
    )?;

    for b in &spec.binds {
        let target = inside(root, &b.target);
        mount_point(&b.source, &target)?;
        bind(&b.source, &target, b.writable)?;
    }

    if spec.readonly_root {
        if spec.rootfs.is_some() {
            remount_ro(root, MsFlags::MS_BIND)?;
        } else {
            remount_ro(root, MsFlags::empty())?;
        }
    }

    chdir(root).map_err(|e| fail("chdir to the new root", e))?;
    pivot_root(".", ".").map_err(|e| fail("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach the old root", e))?;
    chdir("/").map_err(|e| fail("chdir /", e))?;
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
