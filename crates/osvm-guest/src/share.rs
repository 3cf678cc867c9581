//! Host directories shared into guests over virtio-fs: a virtiofsd per directory, each in a
//! sandbox of its own, and the component's identity files as a guest sees them.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use osvm_agent::proto::IdentityFile;
use osvm_core::{Instance, RuntimeError};
use osvm_sandbox::SandboxInstance;

use crate::{find_program, tail};

/// A virtiofsd's memory limit.
pub const VIRTIOFSD_MEMORY: u64 = 256 << 20;

/// virtiofsd (the Rust one, from crates.io: it can run unprivileged with its own sandbox off).
pub fn virtiofsd() -> Result<PathBuf, String> {
    find_program("virtiofsd").ok_or_else(|| {
        "shared directories of guests need virtiofsd (cargo install --locked virtiofsd@1.14.0 \
         --root /usr/local; it builds against libseccomp-dev and libcap-ng-dev)"
            .to_owned()
    })
}

/// virtiofsd's arguments for serving `dir` on the vhost-user socket `socket`, confined by
/// osvm's sandbox rather than its own.
pub fn virtiofsd_args(socket: &Path, dir: &Path, writable: bool) -> Vec<String> {
    let mut args = vec![
        "--socket-path".into(),
        socket.display().to_string(),
        "--shared-dir".into(),
        dir.display().to_string(),
        // osvm's sandbox confines it (namespaces, seccomp, Landlock, only this directory and
        // the system's files); within it, virtiofsd chroots into the directory, so no name a
        // guest sends (absolute, or climbing with `..`) resolves outside it. osvm's seccomp
        // answers openat2 (whose RESOLVE_IN_ROOT would do that) with ENOSYS, and its own
        // namespace sandbox needs privileges osvm's does not give.
        "--sandbox".into(),
        "chroot".into(),
        "--seccomp".into(),
        "none".into(),
        // Running as root in its namespace, it sets its own capabilities before it serves: to
        // none at all (the sandbox left it CAP_SETPCAP and CAP_SYS_CHROOT only, for that).
        "--modcaps=-chown:-dac_override:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap".into(),
        // File handles need CAP_DAC_READ_SEARCH; O_PATH descriptors do not.
        "--inode-file-handles=never".into(),
        "--cache".into(),
        "auto".into(),
        "--rlimit-nofile".into(),
        "0".into(),
    ];
    if !writable {
        args.push("--readonly".into());
    }
    args
}

/// Waits (up to 10 s) for the virtiofsd `started` serving `what` to make its socket.
pub fn wait_for_socket(started: &SandboxInstance, socket: &Path, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = || {
        let status = started.try_wait().ok().flatten()?;
        Some(format!(
            "virtiofsd for {what} {status} before it made its socket: {}",
            tail(&started.log_paths().1)
        ))
    };
    let made = || socket.exists().then_some(()).ok_or(());
    crate::until_ready(deadline, Duration::from_millis(5), ended, made).map_err(|gave| match gave {
        crate::Gave::Failed(why) => why,
        crate::Gave::Late(()) => format!("virtiofsd for {what} made no socket within 10s"),
    })
}

/// The identity files osvm wrote for the component (see osvm-daemon's identity module), with
/// the modes a process sandbox shows them with. Only these names are read, never through a
/// symbolic link, each at most 256 KiB.
pub fn identity_files(dir: &Path) -> Result<Vec<IdentityFile>, RuntimeError> {
    const FILES: [(&str, u32); 4] = [
        ("cert.pem", 0o444),
        ("key.pem", 0o400),
        ("bundle.pem", 0o444),
        ("crl.pem", 0o444),
    ];
    let mut files = Vec::new();
    for (name, mode) in FILES {
        let path = dir.join(name);
        let mut text = String::new();
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|f| f.take(256 << 10).read_to_string(&mut text))
            .map_err(|e| RuntimeError::io(format!("read {}", path.display()), e))?;
        files.push(IdentityFile {
            name: name.to_owned(),
            mode,
            text,
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identity directory is osvm's, but a link planted in it must not make the guest
    /// receive another host file as its key.
    #[test]
    fn identity_files_are_never_read_through_a_link() {
        let dir = std::env::temp_dir().join(format!("osvm-guest-id-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for n in ["cert.pem", "bundle.pem", "crl.pem", "key.pem"] {
            fs::write(dir.join(n), n).unwrap();
        }
        let files = identity_files(&dir).unwrap();
        assert_eq!(files.len(), 4);
        assert_eq!(
            files.iter().find(|f| f.name == "key.pem").unwrap().mode,
            0o400
        );
        fs::remove_file(dir.join("key.pem")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("key.pem")).unwrap();
        let err = identity_files(&dir).unwrap_err().to_string();
        assert!(err.contains("key.pem"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
