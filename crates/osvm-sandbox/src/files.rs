//! Files the host keeps current inside a sandbox, without mounting a host path into it: the
//! component's identity (certificate, key, trust bundle, CRL) at `/run/osvm/identity`.
//!
//! The monitor makes a small tmpfs, copies the host directory's files into it, and hands it to
//! init, which mounts it and covers it with a read-only view of itself. The monitor keeps a
//! descriptor of the writable root at [`IDENTITY_FD`] for the sandbox's whole life; to renew
//! the files, the runtime takes a copy of that descriptor with `pidfd_getfd` (from a pidfd of
//! the monitor, so never from a process that merely reused its pid) and replaces each file
//! through a temporary name and a rename, so the workload never reads half a file. A restarted
//! daemon does the same for an adopted sandbox. Mode and owner are copied from the host's
//! files (the key belongs to the component's own host uid, mode 0400).

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

pub use crate::launcher::protocol::IDENTITY_FD;

/// Copies every regular file of `from` (names starting with `.` aside: a writer's temporary
/// files) into the directory `dir`, each replaced atomically.
pub fn copy_into(dir: BorrowedFd<'_>, from: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path())?;
        if !meta.is_file() {
            continue;
        }
        let content = std::fs::read(entry.path())?;
        let tmp = format!(".{name}.new");
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), rustix::fs::AtFlags::empty());
        let fd = rustix::fs::openat(
            dir,
            tmp.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut written = 0;
        while written < content.len() {
            written += rustix::io::write(&fd, &content[written..])?;
        }
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(meta.uid())),
            Some(rustix::fs::Gid::from_raw(meta.gid())),
        )?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode() & 0o7777))?;
        rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_copied_with_their_modes_and_replaced_whole() {
        let base = std::env::temp_dir().join(format!("osvm-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("cert.pem"), "one").unwrap();
        std::fs::write(from.join("key.pem"), "secret").unwrap();
        std::fs::set_permissions(from.join("key.pem"), std::fs::Permissions::from_mode(0o400))
            .unwrap();
        std::fs::write(from.join(".cert.pem.new"), "half").unwrap();
        let dir = std::fs::File::open(&to).unwrap();
        copy_into(dir.as_fd(), &from).unwrap();
        assert_eq!(std::fs::read_to_string(to.join("cert.pem")).unwrap(), "one");
        let mode = std::fs::metadata(to.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        assert!(
            !to.join(".cert.pem.new").exists(),
            "a writer's temporary file is skipped"
        );
        std::fs::write(from.join("cert.pem"), "two").unwrap();
        copy_into(dir.as_fd(), &from).unwrap();
        assert_eq!(std::fs::read_to_string(to.join("cert.pem")).unwrap(), "two");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
