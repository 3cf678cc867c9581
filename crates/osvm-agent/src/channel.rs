//! Many connections between host and agent over one byte stream, for a guest without vsock.
//!
//! A VM that is snapshotted cannot have a vsock device on these hosts (QEMU refuses to save a
//! guest with the vhost-user vsock device; see docs/microvm.md), so its agent will talk to the
//! host over one virtio-serial port: a single stream of bytes, where vsock gave a connection per
//! request. A [`Channel`] carries connections over such a stream with yamux, which gives every
//! connection its own flow-control window, so a reader that does not keep up holds back its own
//! connection and never the others. Each connection starts with the port it is for (4 bytes,
//! big-endian), as a vsock connection names its port. Both ends get each connection as one end
//! of a Unix socket pair, an ordinary blocking stream with half-close, so code written for vsock
//! connections runs unchanged; a thread of the channel copies between the pair and yamux.
//!
//! When the byte stream ends (the host went away, or the guest was restored from a snapshot and
//! the host connects anew), every connection it carried ends with it and [`Channel::accept`]
//! and [`Channel::open`] fail; a new stream needs a new channel, as a new vsock transport needs
//! new connections.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// How long a new connection may take to name its port.
const PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which end of the byte stream this is (yamux numbers the two ends' connections apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The host (osvm).
    Host,
    /// The guest (the agent).
    Guest,
}

/// A request to open a connection to a port, and where its result goes.
type OpenRequest = (u32, mpsc::Sender<io::Result<UnixStream>>);

/// Connections over one byte stream; see the module documentation.
pub struct Channel {
    open: Mutex<Option<tokio::sync::mpsc::UnboundedSender<OpenRequest>>>,
    incoming: Mutex<mpsc::Receiver<(u32, UnixStream)>>,
    thread: Option<JoinHandle<()>>,
}

fn ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the channel's byte stream has ended",
    )
}

impl Channel {
    /// Starts carrying connections over the byte stream `make` returns (it runs on the
    /// channel's own thread, inside its async runtime, so it may create tokio objects).
    pub fn start<T, F>(make: F, side: Side) -> io::Result<Self>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        Self::start_with(make, side, None)
    }

    /// [`Channel::start`] after a session handshake (see [`handshake`]): for a byte stream
    /// that may hold what an earlier session left (a serial port whose host changed). The
    /// host keeps asking until `deadline` (`None`: forever); the guest waits for a host.
    pub fn start_session<T, F>(make: F, side: Side, deadline: Option<Instant>) -> io::Result<Self>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        Self::start_with(make, side, Some(deadline))
    }

    fn start_with<T, F>(make: F, side: Side, session: Option<Option<Instant>>) -> io::Result<Self>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let (open_tx, open_rx) = tokio::sync::mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::channel();
        let (started_tx, started_rx) = mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("channel".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut io = match make() {
                        Ok(io) => io,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    if let Some(deadline) = session
                        && let Err(e) = handshake(&mut io, side, deadline).await
                    {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                    let _ = started_tx.send(Ok(()));
                    let mode = match side {
                        Side::Host => yamux::Mode::Client,
                        Side::Guest => yamux::Mode::Server,
                    };
                    let connection =
                        yamux::Connection::new(io.compat(), yamux::Config::default(), mode);
                    drive(connection, open_rx, incoming_tx).await;
                });
            })?;
        started_rx.recv().map_err(|_| ended())??;
        Ok(Channel {
            open: Mutex::new(Some(open_tx)),
            incoming: Mutex::new(incoming_rx),
            thread: Some(thread),
        })
    }

    /// Opens a connection to `port` of the other end.
    pub fn open(&self, port: u32) -> io::Result<UnixStream> {
        let (tx, rx) = mpsc::channel();
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .ok_or_else(ended)?
            .send((port, tx))
            .map_err(|_| ended())?;
        rx.recv().map_err(|_| ended())?
    }

    /// Closes the byte stream: every connection on it ends, [`Channel::accept`] and
    /// [`Channel::open`] fail from now on. (Dropping the channel does this too, and waits for
    /// its thread.)
    pub fn close(&self) {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Waits for the next connection the other end opens; returns its port and stream. Fails
    /// once the byte stream has ended.
    pub fn accept(&self) -> io::Result<(u32, UnixStream)> {
        self.incoming
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recv()
            .map_err(|_| ended())
    }
}

impl Drop for Channel {
    /// Closes the byte stream (every connection on it ends) and waits for the thread.
    fn drop(&mut self) {
        self.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The host's ask for a session, its 16-byte id following.
const ASK: &[u8; 8] = b"OSVMLNK?";
/// The guest's answer, the id following.
const ANSWER: &[u8; 8] = b"OSVMLNK!";
/// The host's start of the session, the id following; yamux frames come right after.
const START: &[u8; 8] = b"OSVMLNK>";
/// How often the host asks again while no answer comes.
const ASK_EVERY: Duration = Duration::from_millis(50);

/// Agrees on a fresh session before yamux starts, so that neither end reads bytes of an
/// earlier session as its own: a guest restored from a snapshot, or one whose host was
/// replaced (a daemon restart) before it noticed, may still run the old session and send its
/// frames, and a serial port does not tell a guest reliably that its host changed.
///
/// The host sends `ASK id` (an id of this handshake's own) every [`ASK_EVERY`] until it reads
/// `ANSWER id`, skipping anything else, then sends `START id`. The guest skips everything
/// until an `ASK`, answers it once, and skips everything until `START` with that id; an old
/// session that reads the `ASK` stops at it, since it is no yamux frame. Both ends read one
/// byte at a time here, so nothing after the handshake is consumed by it.
pub async fn handshake<T>(io: &mut T, side: Side, deadline: Option<Instant>) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut window = Vec::with_capacity(64);
    match side {
        Side::Host => {
            let id = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
                .to_be_bytes();
            let ask = [&ASK[..], &id].concat();
            let answer = [&ANSWER[..], &id].concat();
            loop {
                io.write_all(&ask).await?;
                io.flush().await?;
                let next = Instant::now() + ASK_EVERY;
                let found = tokio::time::timeout_at(
                    tokio::time::Instant::from_std(next),
                    skip_until(io, &mut window, &answer),
                )
                .await;
                match found {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => return Err(e),
                    Err(_) if deadline.is_some_and(|d| Instant::now() > d) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the guest did not answer the link's handshake",
                        ));
                    }
                    Err(_) => {}
                }
            }
            io.write_all(&[&START[..], &id].concat()).await?;
            io.flush().await
        }
        Side::Guest => {
            skip_until(io, &mut window, ASK).await?;
            let mut id = [0u8; 16];
            io.read_exact(&mut id).await?;
            io.write_all(&[&ANSWER[..], &id].concat()).await?;
            io.flush().await?;
            window.clear();
            skip_until(io, &mut window, &[&START[..], &id].concat()).await
        }
    }
}

/// Reads one byte at a time until the last bytes read are `pattern` (`window` keeps what was
/// read across calls, so a timed-out call loses nothing).
async fn skip_until<T: AsyncRead + Unpin>(
    io: &mut T,
    window: &mut Vec<u8>,
    pattern: &[u8],
) -> io::Result<()> {
    loop {
        if window.ends_with(pattern) {
            window.clear();
            return Ok(());
        }
        let mut byte = [0u8; 1];
        if io.read(&mut byte).await? == 0 {
            return Err(ended());
        }
        if window.len() == 64 {
            window.remove(0);
        }
        window.push(byte[0]);
    }
}

/// Runs the yamux connection: opens what [`Channel::open`] asks for, hands over what the other
/// end opens, until the byte stream ends or the channel is dropped.
async fn drive<T>(
    mut connection: yamux::Connection<Compat<T>>,
    mut opens: tokio::sync::mpsc::UnboundedReceiver<OpenRequest>,
    incoming: mpsc::Sender<(u32, UnixStream)>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending: VecDeque<OpenRequest> = VecDeque::new();
    let mut dropped = false;
    poll_fn(|cx| {
        while !dropped {
            match opens.poll_recv(cx) {
                Poll::Ready(Some(request)) => pending.push_back(request),
                Poll::Ready(None) => dropped = true,
                Poll::Pending => break,
            }
        }
        if dropped {
            // The channel was dropped: close the connection, ending every stream.
            return connection.poll_close(cx).map(|_| ());
        }
        while !pending.is_empty() {
            match connection.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    if let Some((port, reply)) = pending.pop_front() {
                        tokio::spawn(outbound(stream, port, reply));
                    }
                }
                Poll::Ready(Err(e)) => {
                    for (_, reply) in pending.drain(..) {
                        let _ = reply.send(Err(io::Error::other(e.to_string())));
                    }
                    return Poll::Ready(());
                }
                Poll::Pending => break,
            }
        }
        loop {
            match connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    tokio::spawn(inbound(stream, incoming.clone()));
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    for (_, reply) in pending.drain(..) {
                        let _ = reply.send(Err(ended()));
                    }
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
}

/// A new connection to `port`: names the port, then carries the caller's end of a socket
/// pair.
async fn outbound(stream: yamux::Stream, port: u32, reply: mpsc::Sender<io::Result<UnixStream>>) {
    let mut stream = stream.compat();
    let paired = async {
        stream.write_all(&port.to_be_bytes()).await?;
        stream.flush().await?;
        pair()
    }
    .await;
    match paired {
        Ok((ours, theirs)) => {
            if reply.send(Ok(theirs)).is_ok() {
                bridge(ours, stream).await;
            }
        }
        Err(e) => {
            let _ = reply.send(Err(e));
        }
    }
}

/// A connection the other end opened: reads its port and hands it over.
async fn inbound(stream: yamux::Stream, incoming: mpsc::Sender<(u32, UnixStream)>) {
    let mut stream = stream.compat();
    let mut port = [0u8; 4];
    let named = tokio::time::timeout(PORT_TIMEOUT, stream.read_exact(&mut port)).await;
    if !matches!(named, Ok(Ok(_))) {
        return;
    }
    let Ok((ours, theirs)) = pair() else {
        return;
    };
    if incoming.send((u32::from_be_bytes(port), theirs)).is_ok() {
        bridge(ours, stream).await;
    }
}

/// A socket pair: the async end this thread copies, the blocking end the user gets.
fn pair() -> io::Result<(tokio::net::UnixStream, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    Ok((tokio::net::UnixStream::from_std(ours)?, theirs))
}

/// Copies both ways between the socket pair and the yamux stream until both directions have
/// ended; an end in one direction (a half-close) is passed on as one.
///
/// Once the user's end has sent its last byte, the copy also ends as soon as that end is gone
/// altogether (dropped, not half-closed): nothing would ever read what the other side sends, and
/// waiting for the other side to close would let it hold this end's descriptor (and the stream)
/// for as long as it likes. A user end dropped before it half-closed resets the stream, so the
/// other side learns of it at once.
async fn bridge<S>(ours: tokio::net::UnixStream, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut our_read, mut our_write) = ours.into_split();
    let (mut their_read, mut their_write) = tokio::io::split(stream);
    let (up_copied, down_ended) = (AtomicBool::new(false), AtomicBool::new(false));
    let up = pin!(async {
        let _ = tokio::io::copy(&mut our_read, &mut their_write).await;
        let Ok(watch) = our_read.as_ref().as_fd().try_clone_to_owned() else {
            return;
        };
        if hung_up_now(&watch) {
            return; // `their_write` is dropped open: the stream is reset.
        }
        let _ = their_write.shutdown().await;
        up_copied.store(true, Relaxed);
        hung_up(watch).await;
    });
    let down = pin!(async {
        let _ = tokio::io::copy(&mut their_read, &mut our_write).await;
        let _ = our_write.shutdown().await;
        down_ended.store(true, Relaxed);
    });
    let (mut up, mut down) = (up, down);
    poll_fn(|cx| {
        if up.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !down_ended.load(Relaxed) {
            let _ = down.as_mut().poll(cx);
        }
        if down_ended.load(Relaxed) && up_copied.load(Relaxed) {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
}

/// Whether the peer of this end of a socket pair has closed it entirely (POLLHUP; a half-close
/// is not a hang-up).
fn hung_up_now(fd: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| {
        n > 0
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
    })
}

/// Waits until the peer of this end of a socket pair has closed it entirely (forever if the
/// descriptor cannot be watched). Writability comes and goes while the peer reads; only the
/// hang-up ends the wait.
async fn hung_up(fd: OwnedFd) {
    let Ok(watch) = tokio::net::UnixStream::from_std(UnixStream::from(fd)) else {
        return std::future::pending().await;
    };
    loop {
        let Ok(ready) = watch.ready(Interest::WRITABLE).await else {
            return std::future::pending().await;
        };
        if ready.is_write_closed() || hung_up_now(&watch) {
            return;
        }
        // Forget this edge and wait for the next one (a hang-up is never forgotten).
        let _ = watch.try_io(Interest::WRITABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::thread;
    use std::time::Instant;

    use super::*;

    /// What a [`bridged`] test keeps open while the bridge is checked: the user end (the bridge
    /// must still run), or nothing (it must have ended).
    type Held = Option<UnixStream>;

    /// Runs `bridge` on a thread of its own between a fresh socket pair and one end of an
    /// in-memory duplex; `user` gets the pair's user end, a runtime for the test's side and the
    /// duplex's other end (the remote side), and returns what it keeps open (see [`Held`]).
    fn bridged(
        user: impl FnOnce(UnixStream, &tokio::runtime::Runtime, tokio::io::DuplexStream) -> Held,
    ) {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (near, far) = tokio::io::duplex(64 * 1024);
        let (done, ended) = mpsc::channel();
        thread::spawn(move || {
            runtime().block_on(async {
                ours.set_nonblocking(true).unwrap();
                bridge(tokio::net::UnixStream::from_std(ours).unwrap(), near).await;
            });
            let _ = done.send(());
        });
        let held = user(theirs, &runtime(), far);
        let must_end = held.is_none();
        // Long for an end that must come (a loaded host); short for one that must not (it
        // would come at once).
        let wait = if must_end { 20 } else { 2 };
        let ended = ended.recv_timeout(Duration::from_secs(wait)).is_ok();
        assert_eq!(
            ended, must_end,
            "the bridge ended: {ended}, expected {must_end}"
        );
        drop(held);
    }

    /// A user end dropped while the other side keeps its stream open and idle ends the bridge
    /// (and with it the descriptor it holds): before, it waited for the other side to close,
    /// which a hostile guest never does. The other side sees the stream end.
    #[test]
    fn a_dropped_end_ends_its_bridge_while_the_other_side_idles() {
        bridged(|user, rt, mut far| {
            drop(user);
            let mut buf = [0u8; 8];
            let n = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), far.read(&mut buf)).await
            });
            assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
            std::mem::forget(far); // never closed
            None
        });
    }

    /// Half-closed first, then dropped: the same.
    #[test]
    fn a_half_closed_end_dropped_later_ends_its_bridge() {
        bridged(|user, rt, mut far| {
            user.shutdown(Shutdown::Write).unwrap();
            rt.block_on(async {
                let mut buf = [0u8; 8];
                assert_eq!(
                    far.read(&mut buf).await.unwrap(),
                    0,
                    "the half-close arrives"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
            drop(user);
            std::mem::forget(far);
            None
        });
    }

    /// A half-closed end that is still there keeps receiving: the bridge must not end.
    #[test]
    fn a_half_closed_end_still_receives() {
        bridged(|mut user, rt, mut far| {
            user.shutdown(Shutdown::Write).unwrap();
            rt.block_on(async {
                let mut buf = [0u8; 8];
                assert_eq!(far.read(&mut buf).await.unwrap(), 0);
                tokio::time::sleep(Duration::from_millis(100)).await;
                far.write_all(b"late").await.unwrap();
            });
            let mut got = [0u8; 4];
            user.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"late");
            std::mem::forget(far);
            Some(user)
        });
    }

    /// A host and a guest channel over the two ends of one socket pair.
    fn linked() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        let over = |s: UnixStream| {
            move || {
                s.set_nonblocking(true)?;
                tokio::net::UnixStream::from_std(s)
            }
        };
        (
            Channel::start(over(a), Side::Host).unwrap(),
            Channel::start(over(b), Side::Guest).unwrap(),
        )
    }

    fn read_all(mut s: &UnixStream) -> Vec<u8> {
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn connections_carry_their_port_and_half_close_both_ways() {
        let (host, guest) = linked();
        let guest = std::sync::Arc::new(guest);
        let g = std::sync::Arc::clone(&guest);
        let server = thread::spawn(move || {
            let (port, conn) = g.accept().unwrap();
            assert_eq!(port, 1024);
            // The request ends with the host's half-close; the answer follows it.
            assert_eq!(read_all(&conn), b"ping");
            (&conn).write_all(b"pong").unwrap();
        });
        let conn = host.open(1024).unwrap();
        (&conn).write_all(b"ping").unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&conn), b"pong");
        server.join().unwrap();

        // The guest opens connections to the host's ports too (events, logs).
        // (The channel is kept until the host has read: dropping a channel ends its byte
        // stream, and with it whatever had not crossed yet.)
        let opened = thread::spawn(move || {
            let conn = guest.open(1025).unwrap();
            (&conn).write_all(b"hello").unwrap();
            guest
        });
        let (port, conn) = host.accept().unwrap();
        assert_eq!(port, 1025);
        assert_eq!(read_all(&conn), b"hello");
        drop(opened.join().unwrap());
    }

    #[test]
    fn a_reader_that_stalls_holds_back_only_its_own_connection() {
        let (host, guest) = linked();
        let stalled = host.open(1).unwrap();
        let (_, stalled_guest) = guest.accept().unwrap();
        // 8 MiB into a connection nobody reads: the writer blocks once the window is full.
        let writer = thread::spawn(move || {
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..128 {
                (&stalled).write_all(&chunk).unwrap();
            }
            stalled.shutdown(Shutdown::Write).unwrap();
        });
        thread::sleep(Duration::from_millis(200));
        // Meanwhile another connection moves 1 MiB each way.
        let started = Instant::now();
        let other = host.open(2).unwrap();
        let (port, other_guest) = guest.accept().unwrap();
        assert_eq!(port, 2);
        let echo = thread::spawn(move || {
            let data = read_all(&other_guest);
            (&other_guest).write_all(&data).unwrap();
        });
        let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let sender = {
            let other = other.try_clone().unwrap();
            let payload = payload.clone();
            thread::spawn(move || {
                (&other).write_all(&payload).unwrap();
                other.shutdown(Shutdown::Write).unwrap();
            })
        };
        assert_eq!(read_all(&other), payload);
        sender.join().unwrap();
        echo.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the second connection waited for the stalled one"
        );
        assert!(
            !writer.is_finished(),
            "the stalled writer should still be blocked"
        );
        // Once read, the stalled connection delivers everything.
        assert_eq!(read_all(&stalled_guest).len(), 8 << 20);
        writer.join().unwrap();
    }

    #[test]
    fn many_connections_at_once_each_deliver_their_own_bytes() {
        let (host, guest) = linked();
        let guest = std::sync::Arc::new(guest);
        let g = std::sync::Arc::clone(&guest);
        let server = thread::spawn(move || {
            let mut echoes = Vec::new();
            for _ in 0..64 {
                let (port, conn) = g.accept().unwrap();
                echoes.push(thread::spawn(move || {
                    let data = read_all(&conn);
                    assert!(data.iter().all(|b| *b == port as u8), "port {port}");
                    (&conn).write_all(&data).unwrap();
                }));
            }
            for e in echoes {
                e.join().unwrap();
            }
        });
        let host = std::sync::Arc::new(host);
        let clients: Vec<_> = (0..64u32)
            .map(|port| {
                let host = std::sync::Arc::clone(&host);
                thread::spawn(move || {
                    let conn = host.open(port).unwrap();
                    let data = vec![port as u8; 256 * 1024];
                    let writer = {
                        let conn = conn.try_clone().unwrap();
                        let data = data.clone();
                        thread::spawn(move || {
                            (&conn).write_all(&data).unwrap();
                            conn.shutdown(Shutdown::Write).unwrap();
                        })
                    };
                    assert_eq!(read_all(&conn), data);
                    writer.join().unwrap();
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        server.join().unwrap();
    }

    #[test]
    fn when_the_byte_stream_ends_everything_on_it_ends() {
        let (host, guest) = linked();
        let conn = host.open(1024).unwrap();
        let (_, _guest_conn) = guest.accept().unwrap();
        drop(guest);
        // The open connection ends, and the channel takes and makes no more.
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!((&conn).read(&mut buf), Ok(0) | Err(_)));
        assert!(host.accept().is_err());
        assert!(host.open(1025).is_err());
    }

    /// A channel over `s` with a session handshake.
    fn session(s: UnixStream, side: Side) -> io::Result<Channel> {
        Channel::start_session(
            move || {
                s.set_nonblocking(true)?;
                tokio::net::UnixStream::from_std(s)
            },
            side,
            Some(Instant::now() + Duration::from_secs(10)),
        )
    }

    /// The guest's port, with hosts taking it in turn: bytes flow between the guest and the
    /// current host only, and a host that is replaced is cut off without the guest seeing
    /// anything (as when QEMU's port hides that its host changed).
    struct Port {
        guest: UnixStream,
        host: std::sync::Arc<Mutex<Option<UnixStream>>>,
    }

    impl Port {
        fn new() -> (Port, UnixStream) {
            let (ours, guest) = UnixStream::pair().unwrap();
            let host: std::sync::Arc<Mutex<Option<UnixStream>>> = Default::default();
            let to_host = std::sync::Arc::clone(&host);
            let from_guest = ours.try_clone().unwrap();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = (&from_guest).read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Some(h) = to_host.lock().unwrap().as_ref() {
                        let _ = (&*h).write_all(&buf[..n]);
                    }
                }
            });
            (Port { guest: ours, host }, guest)
        }

        /// A new host takes the port; the previous one is cut off.
        fn take(&self) -> UnixStream {
            let (ours, theirs) = UnixStream::pair().unwrap();
            if let Some(old) = self.host.lock().unwrap().replace(ours.try_clone().unwrap()) {
                let _ = old.shutdown(Shutdown::Both);
            }
            let to_guest = self.guest.try_clone().unwrap();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = (&ours).read(&mut buf) {
                    if n == 0 || (&to_guest).write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            theirs
        }
    }

    #[test]
    fn a_new_host_gets_a_fresh_session_from_a_guest_still_in_an_old_one() {
        let (port, guest_end) = Port::new();
        let guest = thread::spawn(move || {
            // The agent's loop: a session until it ends, then the next.
            let mut served = Vec::new();
            for _ in 0..2 {
                let channel = session(guest_end.try_clone().unwrap(), Side::Guest).unwrap();
                while let Ok((port, conn)) = channel.accept() {
                    let mut request = Vec::new();
                    (&conn).read_to_end(&mut request).unwrap();
                    (&conn).write_all(&request).unwrap();
                    served.push(port);
                }
            }
            served
        });
        let echo = |ch: &Channel, port: u32| {
            let conn = ch.open(port).unwrap();
            // A session the guest does not serve fails here instead of hanging.
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            (&conn).write_all(b"ping").unwrap();
            conn.shutdown(Shutdown::Write).unwrap();
            read_all(&conn)
        };
        let first_end = port.take();
        // Bytes of nobody's session come first: skipped.
        (&first_end)
            .write_all(b"stale bytes \x00\x01 from before")
            .unwrap();
        let first = session(first_end, Side::Host).unwrap();
        assert_eq!(echo(&first, 1), b"ping");
        // A second host takes the port; the guest, still in the first session, is told
        // nothing but what the new host sends.
        let second = session(port.take(), Side::Host).unwrap();
        drop(first);
        assert_eq!(echo(&second, 2), b"ping");
        assert_eq!(echo(&second, 3), b"ping");
        drop(second);
        let _ = port.guest.shutdown(Shutdown::Both);
        assert_eq!(guest.join().unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn closing_a_channel_that_others_share_ends_its_byte_stream() {
        let (host, guest) = linked();
        let host = std::sync::Arc::new(host);
        // Another holder (a thread waiting for connections) keeps the channel alive...
        let waiting = {
            let host = std::sync::Arc::clone(&host);
            thread::spawn(move || host.accept().is_err())
        };
        // ...but close() ends the stream anyway: the other end sees it, the waiter stops.
        host.close();
        assert!(guest.accept().is_err(), "the guest saw the stream end");
        assert!(waiting.join().unwrap(), "the waiting accept ended");
    }
}
