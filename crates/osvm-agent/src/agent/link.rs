//! How the agent reaches the host: vsock, or one virtio-serial port.
//!
//! By default the agent talks to the host over vsock, a connection per request or stream. A VM
//! whose kernel command line says `osvm.link=serial` has no vsock device (QEMU cannot snapshot
//! the vhost-user one) and a virtio-serial port named [`PORT_NAME`] instead, over which
//! [`osvm_agent::channel`] carries the same connections. Everything above this module sees a
//! [`Conn`] either way.
//!
//! A serial port has one host at a time and reads end at once while none is connected: the
//! host went away (a daemon restart), or the VM was restored from a snapshot and the new host
//! has not connected yet. So the serial link is a loop: wait for a host, carry connections for
//! it until its byte stream ends, and wait again. Connections of a host that left end with it,
//! as vsock connections end when their host does.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, ready};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::Shutdown;
use osvm_agent::channel::{Channel, Side};
use osvm_agent::proto;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::vsock::{self, VsockConn, VsockListener};
use super::{Agent, lock, spawn_thread};

/// The name of the agent's virtio-serial port.
pub const PORT_NAME: &str = "osvm.agent";
/// What the agent prints on its console when the host it served has left (and it waits for
/// the next).
pub const HOST_LEFT: &str = "the host left the serial port";
/// How often the serial link looks for a host while none is connected.
const HOST_POLL: Duration = Duration::from_millis(10);

/// A connection to the host, over either link.
#[derive(Debug)]
pub enum Conn {
    /// A vsock connection.
    Vsock(VsockConn),
    /// A connection carried over the serial port.
    Serial(UnixStream),
}

impl Conn {
    /// Shuts down one or both directions; errors (a host already gone) are dropped.
    pub fn shutdown(&self, how: Shutdown) {
        match self {
            Conn::Vsock(c) => c.shutdown(how),
            Conn::Serial(s) => {
                let _ = s.shutdown(match how {
                    Shutdown::Read => std::net::Shutdown::Read,
                    Shutdown::Write => std::net::Shutdown::Write,
                    Shutdown::Both => std::net::Shutdown::Both,
                });
            }
        }
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Vsock(c) => (&*c).read(buf),
            Conn::Serial(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Vsock(c) => (&*c).write(buf),
            Conn::Serial(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The link the kernel command line asks for.
pub enum Link {
    /// vsock to the host's CID.
    Vsock,
    /// The virtio-serial port, and the channel of the host connected to it, if any.
    Serial(Arc<Serial>),
}

impl Link {
    /// `osvm.link=serial` on the kernel command line, or vsock.
    pub fn from_cmdline() -> Link {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if cmdline.split_whitespace().any(|w| w == "osvm.link=serial") {
            Link::Serial(Arc::new(Serial::default()))
        } else {
            Link::Vsock
        }
    }

    /// Whether the host can come and go (and a snapshot be restored under a new one).
    pub fn is_serial(&self) -> bool {
        matches!(self, Link::Serial(_))
    }

    /// Serves the control port: every connection the host opens to it gets a thread.
    pub fn serve(&self, agent: &Arc<Agent>) {
        match self {
            Link::Vsock => {
                match vsock::retry("listen on the control port", RETRY_FOR, || {
                    VsockListener::bind(proto::CONTROL_PORT)
                }) {
                    Ok(listener) => {
                        say!("listening on vsock port {}", proto::CONTROL_PORT);
                        super::control::spawn_server(listener, Arc::clone(agent));
                    }
                    // Without control the workload still runs and is reported; the host just
                    // cannot ask for anything.
                    Err(error) => {
                        say!("cannot listen on the control port, serving no requests: {error}")
                    }
                }
            }
            Link::Serial(serial) => {
                let serial = Arc::clone(serial);
                let agent = Arc::clone(agent);
                spawn_thread("serial-link", move || serial.run(&agent));
            }
        }
    }

    /// Connects to `port` of the host, trying for up to `limit` while the link comes up (the
    /// vsock transport probing, or no host connected to the serial port yet).
    pub fn connect(&self, what: &str, port: u32, limit: Duration) -> io::Result<Conn> {
        match self {
            Link::Vsock => vsock::retry(what, limit, || VsockConn::connect(proto::HOST_CID, port))
                .map(Conn::Vsock)
                .map_err(io::Error::from),
            Link::Serial(serial) => serial.connect(port, limit).map(Conn::Serial),
        }
    }
}

/// How long the agent keeps trying while its link comes up.
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// The serial link's state: the channel of the host connected now.
#[derive(Default)]
pub struct Serial {
    current: Mutex<Option<Arc<Channel>>>,
    changed: Condvar,
}

impl Serial {
    /// Waits for a host and opens a connection to its `port`.
    fn connect(&self, port: u32, limit: Duration) -> io::Result<UnixStream> {
        let deadline = Instant::now() + limit;
        let mut guard = lock(&self.current);
        loop {
            if let Some(channel) = guard.clone() {
                drop(guard);
                match channel.open(port) {
                    Ok(conn) => return Ok(conn),
                    // That host just left; wait for the next one.
                    Err(_) if Instant::now() < deadline => {
                        thread::sleep(HOST_POLL);
                        guard = lock(&self.current);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no host connected to the serial port",
                ));
            }
            guard = self
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Carries connections for one host after another, forever.
    fn run(&self, agent: &Arc<Agent>) {
        let mut said = false;
        loop {
            let port = match find_port(PORT_NAME) {
                Some(p) => p,
                None => {
                    if !said {
                        say!("waiting for the virtio-serial port {PORT_NAME}");
                        said = true;
                    }
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if let Err(error) = wait_for_host(&port) {
                say!("cannot watch {}: {error}", port.display());
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            let opened = port.clone();
            let channel = match Channel::start_session(
                move || SerialPort::open(&opened),
                Side::Guest,
                None,
            ) {
                Ok(c) => Arc::new(c),
                Err(error) => {
                    say!("cannot start the serial link: {error}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            say!("a host connected to the serial port");
            *lock(&self.current) = Some(Arc::clone(&channel));
            self.changed.notify_all();
            while let Ok((port, conn)) = channel.accept() {
                if port == proto::CONTROL_PORT {
                    let agent = Arc::clone(agent);
                    spawn_thread("control-conn", move || {
                        super::control::serve(Conn::Serial(conn), &agent)
                    });
                }
            }
            lock(&self.current).take();
            // The host that makes a snapshot waits for this line before it saves the guest.
            say!("{HOST_LEFT}");
        }
    }
}

/// The device node of the virtio-serial port named `name` (`/dev/vportNpM`: no udev in the
/// guest to make `/dev/virtio-ports/<name>` links).
fn find_port(name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let named = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if named.trim() == name {
            return Some(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    None
}

/// Waits until a host is connected to the port: while none is, `poll` reports a hang-up at
/// once (and reads end), so this looks again every [`HOST_POLL`].
fn wait_for_host(port: &PathBuf) -> io::Result<()> {
    let file = File::options().read(true).open(port)?;
    loop {
        let mut fds = [nix::poll::PollFd::new(
            file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).map_err(io::Error::from)?;
        let hung_up = fds[0]
            .revents()
            .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP));
        if !hung_up {
            return Ok(());
        }
        thread::sleep(HOST_POLL);
    }
}

/// The port as an async byte stream for the channel. A read that finds no host connected
/// ends the stream (the kernel returns 0), which ends the channel.
struct SerialPort {
    fd: AsyncFd<File>,
}

impl SerialPort {
    fn open(path: &PathBuf) -> io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        // AsyncFd::new is deprecated because a bare `AsRawFd` need not own its descriptor; a
        // `File` does, and lives exactly as long as the registration.
        #[allow(deprecated)]
        let fd = AsyncFd::new(file)?;
        Ok(SerialPort { fd })
    }
}

impl AsyncRead for SerialPort {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            match guard.try_io(|fd| {
                let n = nix::unistd::read(fd.get_ref(), buf.initialize_unfilled())
                    .map_err(io::Error::from)?;
                buf.advance(n);
                Ok(())
            }) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
