//! vsock between the host and a guest, Firecracker's hybrid way, through a per-VM
//! vhost-user-vsock backend (`vhost-device-vsock`).
//!
//! The backend serves the guest's virtio-vsock device and maps it onto unix sockets in the VM's
//! run directory:
//! - host -> guest: connect to `vm.vsock`, write `CONNECT <port>\n`, read `OK <n>\n`; the unix
//!   stream is then the guest's connection on that vsock port ([`connect`]);
//! - guest -> host: a guest connecting to CID 2 port P reaches a listener the host bound at
//!   `vm.vsock_P` ([`listener_path`]).
//!
//! Context ids are unique among running VMs: [`CidLease`] holds an exclusive `flock` on
//! `<state>/cids/<cid>.lock`, the first free from 3 upward, for the VM's lifetime. The lock
//! belongs to the open file, so it lasts while anyone holds it open: the VM's vsock backend
//! inherits a copy at its start, which keeps the id claimed while the VM runs even when the
//! daemon that claimed it is gone (a restarted daemon adopts the VM with its id). The id is
//! free again once the daemon's copy is dropped and the backend has ended.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::os::fd::{AsFd, BorrowedFd};

/// The first context id a guest may have (0-2 are reserved: hypervisor, local, host).
pub const FIRST_CID: u32 = 3;
/// How many ids are tried before giving up.
const MAX_CIDS: u32 = 65_536;
/// The longest reply line the backend sends to `CONNECT`.
const MAX_REPLY: usize = 64;

/// An exclusive claim on a guest context id.
#[derive(Debug)]
pub struct CidLease {
    /// The context id.
    cid: u32,
    /// The locked file; the lock is the claim. Dropping it only closes this copy: the lock
    /// ends with the last open copy (see the module docs).
    file: File,
}

impl CidLease {
    /// Claims the lowest free id of `state_dir`.
    pub fn acquire(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join("cids");
        fs::create_dir_all(&dir)?;
        for cid in FIRST_CID..FIRST_CID + MAX_CIDS {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{cid}.lock")))?;
            match file.try_lock() {
                Ok(()) => return Ok(Self { cid, file }),
                Err(fs::TryLockError::WouldBlock) => continue,
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "all {MAX_CIDS} guest context ids are in use"
        )))
    }

    /// The claimed id.
    pub fn cid(&self) -> u32 {
        self.cid
    }
}

impl AsFd for CidLease {
    /// The locked file, for a process that is to hold the claim too.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The host-side unix socket a guest's connections to host port `port` arrive on.
pub fn listener_path(uds: &Path, port: u32) -> PathBuf {
    let mut name = uds.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Connects to guest port `port` through the backend's socket `uds`.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte: whatever follows the newline belongs to the guest's stream.
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "vsock port {port}: the backend closed the connection (nothing listens there in the guest)"
                ),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "vsock backend reply line too long",
            ));
        }
    }
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("vsock port {port}: backend answered `{line}`"),
        ));
    }
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_start_at_three_are_unique_and_reused_after_release() {
        let dir = std::env::temp_dir().join(format!("osvm-cid-test-{}", std::process::id()));
        let a = CidLease::acquire(&dir).unwrap();
        let b = CidLease::acquire(&dir).unwrap();
        assert_eq!(a.cid(), FIRST_CID);
        assert_eq!(b.cid(), FIRST_CID + 1);
        drop(a);
        let c = CidLease::acquire(&dir).unwrap();
        assert_eq!(c.cid(), FIRST_CID, "a released id is handed out again");
        drop((b, c));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// What keeps a VM's id claimed after the daemon that claimed it died: a copy of the
    /// locked file in another process (the VM's vsock backend).
    #[test]
    fn a_claim_lasts_while_another_process_holds_the_file() {
        use std::process::{Command, Stdio};
        let dir = std::env::temp_dir().join(format!("osvm-cid-hold-{}", std::process::id()));
        let lease = CidLease::acquire(&dir).unwrap();
        // A child holding a copy of the locked file (as its stdin), as the backend does.
        let copy = lease.file.try_clone().unwrap();
        let mut child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::from(copy))
            .spawn()
            .unwrap();
        drop(lease);
        let next = CidLease::acquire(&dir).unwrap();
        assert_eq!(
            next.cid(),
            FIRST_CID + 1,
            "the child still holds {FIRST_CID}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        drop(next);
        assert_eq!(CidLease::acquire(&dir).unwrap().cid(), FIRST_CID);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn listener_paths_follow_the_backend_convention() {
        assert_eq!(
            listener_path(Path::new("/run/x/vm.vsock"), 1025),
            PathBuf::from("/run/x/vm.vsock_1025")
        );
    }
}
