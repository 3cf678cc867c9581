//! TCP listeners for the daemon's HTTP fronts (the dashboard, the metrics endpoint) that hold
//! a bounded number of connections. Anyone who can reach such a port can connect before any
//! credential is asked for; without a bound, idle connections would take the descriptors the
//! daemon needs for its components, and without a bound per source one client could take every
//! connection and keep the page from everyone else.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The connections a front holds at once: at most `total`, and at most `per_source` from one
/// source (an IPv4 address, or an IPv6 /64: whoever has one address there has them all).
#[derive(Clone)]
pub struct Slots {
    total: Arc<tokio::sync::Semaphore>,
    per_source: usize,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Slots {
    /// Room for `total` connections, `per_source` of them from one source.
    pub fn new(total: usize, per_source: usize) -> Self {
        Self {
            total: Arc::new(tokio::sync::Semaphore::new(total)),
            per_source,
            held: Arc::default(),
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

/// A connection that holds one slot of its listener until it is dropped.
pub struct Counted<S> {
    io: S,
    _slot: Slot,
}

impl<S> Counted<S> {
    /// `io`, holding `slot` for as long as it lives.
    pub fn new(io: S, slot: Slot) -> Self {
        Self { io, _slot: slot }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_takes_at_most_its_share_and_gives_it_back() {
        let slots = Slots::new(5, 2);
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
}
