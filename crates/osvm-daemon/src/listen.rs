//! TCP listeners for the daemon's HTTP fronts (the dashboard, the metrics endpoint) that hold
//! a bounded number of connections. Anyone who can reach such a port can connect before any
//! credential is asked for; without a bound, idle connections would take the descriptors the
//! daemon needs for its components, and without a bound per source one client could take every
//! connection and keep the page from everyone else. A connection on which nothing moves for the
//! front's idle time (no byte read or written: a client that connects and says nothing, sends
//! half a request, or stops reading its answer) is closed, so even many sources cannot hold the
//! slots for long.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The connections a front holds at once: at most `total`, and at most `per_source` from one
/// source (an IPv4 address, or an IPv6 /64: whoever has one address there has them all).
#[derive(Clone)]
pub struct Slots {
    total: Arc<tokio::sync::Semaphore>,
    per_source: usize,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    idle: Duration,
}

impl Slots {
    /// Room for `total` connections, `per_source` of them from one source, each closed once
    /// nothing has moved on it for `idle`.
    pub fn new(total: usize, per_source: usize, idle: Duration) -> Self {
        Self {
            total: Arc::new(tokio::sync::Semaphore::new(total)),
            per_source,
            held: Arc::default(),
            idle,
        }
    }

    /// A slot for a connection from `from`, if there is room.
    pub fn take(&self, from: IpAddr) -> Option<Slot> {
        let source = source_of(from);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        // Nothing is recorded for a connection refused (a refused source adds no entry).
        if held.get(&source).is_some_and(|n| *n >= self.per_source) {
            return None;
        }
        let permit = self.total.clone().try_acquire_owned().ok()?;
        *held.entry(source).or_insert(0) += 1;
        Some(Slot {
            _permit: permit,
            source,
            held: self.held.clone(),
            idle: self.idle,
        })
    }
}

/// What connections are counted by: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6
/// address's /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// One held connection's place in its [`Slots`], given back when dropped.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    source: IpAddr,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    idle: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.source);
            }
        }
    }
}

/// A TCP listener that holds connections only while its [`Slots`] have room; one beyond is
/// closed as soon as it is accepted.
pub struct Bounded {
    listener: tokio::net::TcpListener,
    slots: Slots,
}

impl Bounded {
    /// Bounds `listener` by `slots`.
    pub fn new(listener: tokio::net::TcpListener, slots: Slots) -> Self {
        Self { listener, slots }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Counted<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // Over the bound the connection is dropped: closed.
            if let Some(slot) = self.slots.take(addr.ip()) {
                return (Counted::new(tcp, slot), addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection that holds one slot of its listener until it is dropped, and fails with
/// `TimedOut` once nothing has moved on it for the slot's idle time.
pub struct Counted<S> {
    io: S,
    slot: Slot,
    /// When the connection counts as idle, unless a byte moves before.
    idle_at: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Counted<S> {
    /// `io`, holding `slot` for as long as it lives.
    pub fn new(io: S, slot: Slot) -> Self {
        let idle_at = Box::pin(tokio::time::sleep(slot.idle));
        Self { io, slot, idle_at }
    }

    /// Bytes moved: the idle time starts again.
    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.slot.idle;
        self.idle_at.as_mut().reset(next);
    }

    /// What a wait for the peer becomes: still pending, or `TimedOut` once the idle time is
    /// over (the timer wakes this task then).
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match self.idle_at.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing moved for {:?}", self.slot.idle),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.waiting(cx),
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.moved();
                Poll::Ready(Ok(()))
            }
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => this.waiting(cx),
            Poll::Ready(Ok(n)) if n > 0 => {
                this.moved();
                Poll::Ready(Ok(n))
            }
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.waiting(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Pending => this.waiting(cx),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_takes_at_most_its_share_and_gives_it_back() {
        let slots = Slots::new(5, 2, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let (a1, a2) = (slots.take(a).unwrap(), slots.take(a).unwrap());
        assert!(slots.take(a).is_none(), "a third from one source");
        // The same address as IPv4-mapped IPv6 is the same source.
        assert!(slots.take("::ffff:192.0.2.1".parse().unwrap()).is_none());
        // One IPv6 /64 is one source, whatever its low bits.
        let b1 = slots.take("2001:db8::1".parse().unwrap()).unwrap();
        let b2 = slots.take("2001:db8::ffff:2".parse().unwrap()).unwrap();
        assert!(slots.take("2001:db8::3".parse().unwrap()).is_none());
        // The total: 4 held, one left.
        let c = slots.take("192.0.2.9".parse().unwrap()).unwrap();
        assert!(
            slots.take("192.0.2.10".parse().unwrap()).is_none(),
            "total reached"
        );
        drop((a1, b1, c));
        assert!(slots.take(a).is_some());
        drop((a2, b2));
        assert_eq!(
            slots.held.lock().unwrap().len(),
            0,
            "counts are given back, and refusals leave none"
        );
    }

    // On a paused clock: time moves only when every task waits, so a descheduled test thread
    // cannot make the talker's next byte late.
    #[tokio::test(start_paused = true)]
    async fn a_connection_on_which_nothing_moves_is_closed_after_its_idle_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let idle = Duration::from_millis(300);
        let slots = Slots::new(2, 2, idle);
        let from: IpAddr = "192.0.2.1".parse().unwrap();

        // A byte every 100 ms keeps a connection open well past its idle time.
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Counted::new(server, slots.take(from).unwrap());
        let talker = tokio::spawn(async move {
            for _ in 0..8 {
                client.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client // kept open: silence, not the end of the stream
        });
        let mut byte = [0u8; 1];
        for _ in 0..8 {
            conn.read_exact(&mut byte).await.unwrap();
        }
        // Then silence: the next read fails once the idle time has passed since the last byte.
        let quiet = tokio::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte))
            .await
            .expect("still open 5 s later")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(quiet.elapsed() >= idle - Duration::from_millis(100));
        let _client = talker.await.unwrap();

        // A peer that stops reading: the writes that fill its buffer fail the same way.
        let (_reader, server) = tokio::io::duplex(64);
        let mut conn2 = Counted::new(server, slots.take(from).unwrap());
        let err = tokio::time::timeout(Duration::from_secs(5), conn2.write_all(&[0u8; 4096]))
            .await
            .expect("still open 5 s later")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");

        drop((conn, conn2));
        assert_eq!(slots.held.lock().unwrap().len(), 0, "both slots given back");
    }
}
