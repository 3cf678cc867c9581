//! Finding mount targets inside the sandbox's new root, and only there.
//!
//! A target such as `/data/cfg/shared` is walked one component at a time from a descriptor of
//! the new root, each step an `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS` and `O_NOFOLLOW`: a component that is a symbolic link is never
//! followed but reported, naming it, so a link a component planted in its own `/data` (to `/`,
//! to a host file, to another component's data) stops its next start instead of redirecting a
//! mount out of the sandbox. Missing directories (and, for a file mount, the file) are created
//! relative to the descriptor of their parent, never by path. The result is a descriptor the
//! mount is then attached onto, so nothing can be swapped between the check and the mount.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// What the target must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory (made if missing).
    Dir,
    /// A file (made empty if missing): the mount point of a file or a device node.
    File,
}

/// Why a target could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A component on the way is a symbolic link.
    #[error(
        "mount target {target}: {at} is a symbolic link, which osvm does not follow in mount \
         targets; remove it (it lies in what the component can write) and start again"
    )]
    Symlink {
        /// The whole target.
        target: PathBuf,
        /// The link.
        at: PathBuf,
    },
    /// A component on the way (or the target) is the wrong kind of file.
    #[error("mount target {target}: {at} is not a {expected}")]
    WrongKind {
        /// The whole target.
        target: PathBuf,
        /// The offending component.
        at: PathBuf,
        /// What it should have been.
        expected: &'static str,
    },
    /// The target is not a plain absolute path.
    #[error("mount target {0} must be absolute, without `.` or `..`")]
    NotPlain(PathBuf),
    /// The kernel said no.
    #[error("mount target {target}: {what} {at}: {source}")]
    Io {
        /// The whole target.
        target: PathBuf,
        /// What was done.
        what: &'static str,
        /// Where.
        at: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn step_flags() -> (OFlags, ResolveFlags) {
    (
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Opens one component beneath `dir` without following it.
fn open_one(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let (oflags, resolve) = step_flags();
    Ok(rustix::fs::openat2(
        dir,
        name,
        oflags,
        Mode::empty(),
        resolve,
    )?)
}

fn file_type(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(rustix::fs::fstat(fd)?.st_mode & libc::S_IFMT)
}

/// A descriptor of `target` (absolute, inside the sandbox) beneath `root`, created as `kind`
/// where missing, with every directory on the way made `0755`.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    target: &Path,
    kind: Kind,
) -> Result<OwnedFd, ResolveError> {
    let names: Vec<&OsStr> = target
        .components()
        .filter_map(|c| match c {
            Component::RootDir => None,
            Component::Normal(n) => Some(Ok(n)),
            _ => Some(Err(())),
        })
        .collect::<Result<_, _>>()
        .map_err(|()| ResolveError::NotPlain(target.to_path_buf()))?;
    if !target.is_absolute() {
        return Err(ResolveError::NotPlain(target.to_path_buf()));
    }
    let mut current: OwnedFd = rustix::io::dup(root).map_err(|e| ResolveError::Io {
        target: target.into(),
        what: "open",
        at: "/".into(),
        source: e.into(),
    })?;
    let mut at = PathBuf::from("/");
    for (i, name) in names.iter().enumerate() {
        at.push(name);
        let last = i + 1 == names.len();
        let want_dir = !last || kind == Kind::Dir;
        let io_err = |what: &'static str, at: &Path, source: io::Error| ResolveError::Io {
            target: target.into(),
            what,
            at: at.into(),
            source,
        };
        let fd = match open_one(current.as_fd(), name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if want_dir {
                    match rustix::fs::mkdirat(&current, *name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => {}
                        Err(e) if e == rustix::io::Errno::EXIST => {}
                        Err(e) => return Err(io_err("create directory", &at, e.into())),
                    }
                } else {
                    match rustix::fs::openat(
                        &current,
                        *name,
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::WRONLY
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    ) {
                        Ok(_) => {}
                        Err(e) if e == rustix::io::Errno::EXIST => {}
                        Err(e) => return Err(io_err("create file", &at, e.into())),
                    }
                }
                open_one(current.as_fd(), name).map_err(|e| io_err("open", &at, e))?
            }
            // ELOOP: a link the kernel refused to cross (it would be reported below anyway).
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(ResolveError::Symlink {
                    target: target.into(),
                    at,
                });
            }
            Err(e) => return Err(io_err("open", &at, e)),
        };
        let ty = file_type(fd.as_fd()).map_err(|e| io_err("stat", &at, e))?;
        if ty == libc::S_IFLNK {
            return Err(ResolveError::Symlink {
                target: target.into(),
                at,
            });
        }
        if want_dir && ty != libc::S_IFDIR {
            return Err(ResolveError::WrongKind {
                target: target.into(),
                at,
                expected: "directory",
            });
        }
        if !want_dir && ty == libc::S_IFDIR {
            return Err(ResolveError::WrongKind {
                target: target.into(),
                at,
                expected: "file (the source is one)",
            });
        }
        current = fd;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("osvm-resolve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn open_dir(p: &Path) -> OwnedFd {
        std::fs::File::open(p).unwrap().into()
    }

    #[test]
    fn missing_directories_and_files_are_made_beneath_the_root() {
        let d = scratch("make");
        let root = open_dir(&d);
        open_beneath(root.as_fd(), Path::new("/a/b/c"), Kind::Dir).unwrap();
        assert!(d.join("a/b/c").is_dir());
        open_beneath(root.as_fd(), Path::new("/a/f.conf"), Kind::File).unwrap();
        assert!(d.join("a/f.conf").is_file());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_anywhere_on_the_way_is_refused_and_named() {
        let d = scratch("links");
        let outside = scratch("links-outside");
        let root = open_dir(&d);
        std::fs::create_dir_all(d.join("data/x")).unwrap();
        symlink("/", d.join("data/x/shared")).unwrap();
        symlink("x", d.join("data/cfg")).unwrap();
        symlink(outside.join("victim"), d.join("data/file")).unwrap();
        for (target, kind, at) in [
            ("/data/cfg/shared", Kind::Dir, "/data/cfg"),
            ("/data/x/shared", Kind::Dir, "/data/x/shared"),
            ("/data/x/shared/etc", Kind::Dir, "/data/x/shared"),
            ("/data/file", Kind::File, "/data/file"),
        ] {
            match open_beneath(root.as_fd(), Path::new(target), kind) {
                Err(ResolveError::Symlink { at: got, .. }) => assert_eq!(got, Path::new(at)),
                other => panic!("{target}: {other:?}"),
            }
        }
        assert!(
            !outside.join("victim").exists(),
            "nothing made through a link"
        );
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn dot_dot_and_wrong_kinds_are_refused() {
        let d = scratch("kinds");
        let root = open_dir(&d);
        std::fs::write(d.join("file"), "").unwrap();
        assert!(matches!(
            open_beneath(root.as_fd(), Path::new("/a/../../etc"), Kind::Dir),
            Err(ResolveError::NotPlain(_))
        ));
        assert!(matches!(
            open_beneath(root.as_fd(), Path::new("/file/x"), Kind::Dir),
            Err(ResolveError::WrongKind { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
