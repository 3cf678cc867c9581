//! Vsock sockets as `Read`/`Write` streams, without `unsafe`.
//!
//! std has no vsock types, and nix's `accept` hands back a bare `RawFd` that only `unsafe` code
//! could turn into an `OwnedFd` (std's own listeners cannot be reused: their `accept` rejects a
//! peer address that is not of their family, closing the connection). So a [`VsockConn`] owns
//! its descriptor as a `RawFd`, talks through nix's `recv`/`send`/`shutdown`, which take one,
//! and closes it exactly once, on drop.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, Shutdown, SockFlag, SockType, VsockAddr, accept4, bind,
    connect, listen, recv, send, shutdown, socket,
};

/// How often [`retry`] tries again.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// A connected vsock stream socket. Read and write it through `&VsockConn`, so that two
/// threads can pump the two directions of one connection.
#[derive(Debug)]
pub struct VsockConn {
    /// Owned: closed on drop, never handed out.
    fd: RawFd,
}

impl VsockConn {
    /// Connects to `port` of the vsock peer `cid`.
    pub fn connect(cid: u32, port: u32) -> nix::Result<Self> {
        let fd = new_socket()?;
        connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
        Ok(VsockConn {
            fd: fd.into_raw_fd(),
        })
    }

    /// Shuts down one or both directions; errors (such as a peer that is already gone) are
    /// of no interest to any caller, so they are dropped.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = shutdown(self.fd, how);
    }
}

impl Read for &VsockConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(recv(self.fd, buf, MsgFlags::empty())?)
    }
}

impl Write for &VsockConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // MSG_NOSIGNAL: a host that went away must be an error, not a signal.
        Ok(send(self.fd, buf, MsgFlags::MSG_NOSIGNAL)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for VsockConn {
    fn drop(&mut self) {
        let _ = nix::unistd::close(self.fd);
    }
}

/// A vsock stream socket listening on a port, for any CID.
#[derive(Debug)]
pub struct VsockListener {
    fd: OwnedFd,
}

impl VsockListener {
    /// Listens on `port`.
    pub fn bind(port: u32) -> nix::Result<Self> {
        let fd = new_socket()?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
        listen(&fd, Backlog::MAXCONN)?;
        Ok(VsockListener { fd })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> nix::Result<VsockConn> {
        let fd = accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        Ok(VsockConn { fd })
    }
}

/// A new vsock stream socket; close-on-exec, so that workload and exec children do not hold
/// host connections open.
fn new_socket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Calls `attempt` every [`RETRY_EVERY`] until it succeeds or `limit` has passed, returning its
/// last error then.
///
/// Needed at boot: until the vsock modules are in and the virtio transport has probed its
/// device (which may be a moment after its module loaded), sockets fail (`EAFNOSUPPORT`,
/// `ENODEV`, ...).
pub fn retry<T>(
    what: &str,
    limit: Duration,
    mut attempt: impl FnMut() -> nix::Result<T>,
) -> nix::Result<T> {
    let started = Instant::now();
    let mut failures = 0u32;
    loop {
        match attempt() {
            Ok(value) => {
                if failures > 0 {
                    say!(
                        "{what}: succeeded after {failures} failed attempts ({} ms)",
                        started.elapsed().as_millis()
                    );
                }
                return Ok(value);
            }
            Err(error) => {
                if failures == 0 {
                    say!("{what}: {error}; retrying for up to {} s", limit.as_secs());
                }
                failures += 1;
                if started.elapsed() >= limit {
                    return Err(error);
                }
                thread::sleep(RETRY_EVERY);
            }
        }
    }
}
