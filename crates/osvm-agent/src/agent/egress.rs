//! `mtls_egress` inside the guest.
//!
//! A process reaches osvm's egress proxy on its namespace's loopback; a guest has a loopback of
//! its own, and the namespace's address is the guest's. So the agent is the proxy: it listens
//! on the guest's `127.0.0.1:<listen>`, connects to the target's service address on the hub and
//! speaks mutual TLS there with the component's identity from [`IDENTITY_DIR`] (rustls, the
//! same verification as osvm-net's `client_tls`: chain to the bundle, CRL, the server's DNS
//! name and trust domain). The configuration is built from the files once and again after
//! every rewrite of them ([`identity_rewritten`]), so a renewed identity or CA applies to the
//! next connection without each connection reading and parsing four files. The connection leaves from the guest's own address, which policy
//! knows as the component's.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use osvm_agent::proto::{IDENTITY_DIR, TlsEgress};
use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use super::spawn_thread;

/// How long a connection to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TLS handshake may take, as osvm-net's proxies allow.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Plaintext from the server held for a local client that does not read, before the agent
/// stops reading from the server (backpressure instead of memory).
const HELD_MAX: usize = 256 * 1024;

/// Listens on the guest's `127.0.0.1:<listen>` and serves each connection on a thread.
pub fn listen(egress: &TlsEgress) -> io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, egress.listen))?;
    say!(
        "mtls_egress: 127.0.0.1:{} -> {} ({})",
        egress.listen,
        egress.server_name,
        egress.upstream
    );
    let egress = Arc::new(egress.clone());
    spawn_thread("egress", move || {
        for local in listener.incoming() {
            let Ok(local) = local else {
                continue;
            };
            let egress = Arc::clone(&egress);
            spawn_thread("egress-conn", move || {
                if let Err(error) = serve(local, &egress) {
                    say!("mtls_egress to {}: {error}", egress.server_name);
                }
            });
        }
    });
    Ok(())
}

/// How often the identity files were rewritten; a configuration built before the latest
/// rewrite is built again.
static IDENTITY_GENERATION: AtomicU64 = AtomicU64::new(0);
/// The configuration in use: the generation of the files it was built from, their trust
/// domain, itself.
type Cached = Option<(u64, String, Arc<rustls::ClientConfig>)>;
static CONFIG: Mutex<Cached> = Mutex::new(None);

/// Called once the identity files were rewritten (all of them): the next connection builds its
/// configuration from the new ones.
pub fn identity_rewritten() {
    IDENTITY_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The configuration for a new connection: the cached one, or one built from the files when
/// they changed since.
fn current_config(trust_domain: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    // Read before the files: a rewrite during the build leaves a newer generation behind.
    let generation = IDENTITY_GENERATION.load(Ordering::SeqCst);
    let mut cached = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((g, td, config)) = cached.as_ref()
        && *g == generation
        && td == trust_domain
    {
        return Ok(Arc::clone(config));
    }
    let config = Arc::new(client_config(Path::new(IDENTITY_DIR), trust_domain)?);
    *cached = Some((generation, trust_domain.to_owned(), Arc::clone(&config)));
    Ok(config)
}

/// The client configuration from the identity files as they are now.
fn client_config(dir: &Path, trust_domain: &str) -> Result<rustls::ClientConfig, String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let material = osvm_pki::tls::Material {
        cert_pem: read("cert.pem")?,
        key_pem: read("key.pem")?,
        bundle_pem: read("bundle.pem")?,
        crl_pem: read("crl.pem")?,
        trust_domain: trust_domain.to_owned(),
    };
    osvm_pki::tls::client_config(&material).map_err(|e| e.to_string())
}

/// Carries one local connection to the server over mutual TLS.
fn serve(local: TcpStream, egress: &TlsEgress) -> Result<(), String> {
    carry(local, egress, current_config(&egress.trust_domain)?)
}

/// [`serve`] with `config`.
fn carry(
    local: TcpStream,
    egress: &TlsEgress,
    config: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let name = ServerName::try_from(egress.server_name.clone())
        .map_err(|e| format!("server name {:?}: {e}", egress.server_name))?;
    let tls = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let upstream = TcpStream::connect_timeout(&egress.upstream, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect to {}: {e}", egress.upstream))?;
    let _ = upstream.set_nodelay(true);
    let _ = local.set_nodelay(true);
    Pump::new(local, upstream, tls)
        .and_then(Pump::run)
        .map_err(|e| e.to_string())
}

/// Both directions of one connection on one thread: non-blocking sockets and `poll`, so
/// neither direction can block the other.
struct Pump {
    local: TcpStream,
    upstream: TcpStream,
    tls: ClientConnection,
    /// Plaintext from the server not yet written to the local client.
    held: Vec<u8>,
    /// The local client finished sending (its end is then closed toward the server).
    local_done: bool,
    /// The server finished sending (close_notify or EOF).
    upstream_done: bool,
    /// The local client was told the server finished.
    local_shut: bool,
    /// The server was told the local client finished.
    upstream_shut: bool,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Pump {
    fn new(local: TcpStream, upstream: TcpStream, tls: ClientConnection) -> io::Result<Self> {
        local.set_nonblocking(true)?;
        upstream.set_nonblocking(true)?;
        Ok(Pump {
            local,
            upstream,
            tls,
            held: Vec::new(),
            local_done: false,
            upstream_done: false,
            local_shut: false,
            upstream_shut: false,
        })
    }

    fn run(mut self) -> io::Result<()> {
        let started = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            self.flush()?;
            if self.local_shut && self.local_done && !self.tls.wants_write() {
                return Ok(());
            }
            if self.tls.is_handshaking() && started.elapsed() > HANDSHAKE_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake timed out",
                ));
            }
            // What each side is waited for; a side with nothing to wait for is left out, so a
            // hung-up socket that is not read cannot make poll return at once forever.
            let read_local =
                !self.local_done && !self.tls.is_handshaking() && !self.tls.wants_write();
            let read_upstream = !self.upstream_done && self.held.len() < HELD_MAX;
            let local_events = flags(read_local, !self.held.is_empty());
            let upstream_events = flags(read_upstream, self.tls.wants_write());
            let mut fds = Vec::with_capacity(2);
            if !local_events.is_empty() {
                fds.push(PollFd::new(self.local.as_fd(), local_events));
            }
            if !upstream_events.is_empty() {
                fds.push(PollFd::new(self.upstream.as_fd(), upstream_events));
            }
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            drop(fds);
            if read_upstream {
                self.read_upstream_side(&mut buf)?;
            }
            if read_local {
                self.read_local_side(&mut buf)?;
            }
        }
    }

    /// Writes what can be written without blocking: TLS records to the server, held
    /// plaintext to the local client, and the local client's end once the server's came.
    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut &self.upstream) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if self.local_done && !self.tls.wants_write() && !self.upstream_shut {
            let _ = self.upstream.shutdown(Shutdown::Write);
            self.upstream_shut = true;
        }
        while !self.held.is_empty() {
            match (&self.local).write(&self.held) {
                Ok(n) => {
                    self.held.drain(..n);
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if self.upstream_done && self.held.is_empty() && !self.local_shut {
            let _ = self.local.shutdown(Shutdown::Write);
            self.local_shut = true;
        }
        Ok(())
    }

    /// Reads TLS records from the server and the plaintext in them.
    fn read_upstream_side(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self.tls.read_tls(&mut &self.upstream) {
            Ok(0) => {
                self.upstream_done = true;
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Err(error) = self.tls.process_new_packets() {
            // rustls queued an alert saying why: let the server have it.
            let _ = self.tls.write_tls(&mut &self.upstream);
            return Err(io::Error::other(error));
        }
        loop {
            match self.tls.reader().read(buf) {
                Ok(0) => {
                    self.upstream_done = true;
                    return Ok(());
                }
                Ok(n) => self.held.extend_from_slice(&buf[..n]),
                Err(e) if would_block(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads plaintext from the local client into TLS.
    fn read_local_side(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match (&self.local).read(buf) {
            Ok(0) => {
                self.local_done = true;
                self.tls.send_close_notify();
                Ok(())
            }
            Ok(n) => self.tls.writer().write_all(&buf[..n]),
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn flags(read: bool, write: bool) -> PollFlags {
    let mut f = PollFlags::empty();
    if read {
        f |= PollFlags::POLLIN;
    }
    if write {
        f |= PollFlags::POLLOUT;
    }
    f
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use osvm_pki::Pki;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A CA in a temp directory, with identities for `db` and `vm` of stack `s`.
    struct Fixture {
        root: PathBuf,
        pki: Pki,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let root = std::env::temp_dir()
                .join(format!("osvm-agent-egress-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            let pki = Pki::new(&root.join("pki"), "osvm.local").unwrap();
            pki.init_ca(DAY).unwrap();
            let f = Fixture { root, pki };
            for c in ["db", "vm", "web"] {
                f.pki.issue_into("s", c, DAY, &f.root).unwrap();
                f.write_crl(c);
            }
            f
        }

        fn write_crl(&self, component: &str) {
            let crl = self.pki.crl_bundle_pem().unwrap();
            fs::write(self.root.join(component).join("crl.pem"), crl).unwrap();
        }

        fn material(&self, component: &str) -> osvm_pki::tls::Material {
            let read = |f: &str| fs::read_to_string(self.root.join(component).join(f)).unwrap();
            osvm_pki::tls::Material {
                cert_pem: read("cert.pem"),
                key_pem: read("key.pem"),
                bundle_pem: read("bundle.pem"),
                crl_pem: read("crl.pem"),
                trust_domain: "osvm.local".into(),
            }
        }

        /// An mTLS echo server with `component`'s identity; returns its address. It echoes
        /// every byte, then ends with close_notify when the client ends.
        fn echo_server(&self, component: &str) -> std::net::SocketAddr {
            let config = Arc::new(osvm_pki::tls::server_config(&self.material(component)).unwrap());
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                let (tcp, _) = listener.accept().unwrap();
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
            addr
        }

        /// A local connection carried by the agent's egress (as `vm`) to `upstream`, which
        /// must be `db`.
        fn connect(&self, upstream: std::net::SocketAddr) -> TcpStream {
            let egress = TlsEgress {
                listen: 0,
                upstream,
                server_name: "db.s.osvm".into(),
                trust_domain: "osvm.local".into(),
            };
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let local = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            let config = client_config(&self.root.join("vm"), "osvm.local").unwrap();
            std::thread::spawn(move || carry(accepted, &egress, Arc::new(config)));
            local
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            local
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    /// Both directions at once, more than any buffer on the way holds: a pump that blocked on
    /// one direction would never finish. The client's end reaches the server, and the
    /// server's end reaches the client after every byte.
    #[test]
    fn a_connection_carries_megabytes_both_ways_and_both_ends() {
        let f = Fixture::new("bulk");
        let mut local = f.connect(f.echo_server("db"));
        let sent: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut writer = local.try_clone().unwrap();
        let to_send = sent.clone();
        let writing = std::thread::spawn(move || {
            writer.write_all(&to_send).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        local.read_to_end(&mut got).unwrap();
        writing.join().unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the echo differs");
    }

    /// The server must be the one the entry names: a certificate of the same CA for another
    /// component is refused, and so is the right one once revoked. The client gets its
    /// connection closed with nothing.
    #[test]
    fn a_server_with_the_wrong_name_or_a_revoked_certificate_gets_nothing() {
        let f = Fixture::new("impostor");
        let mut local = f.connect(f.echo_server("web"));
        local.write_all(b"secret").unwrap();
        let mut got = Vec::new();
        let _ = local.read_to_end(&mut got);
        assert!(got.is_empty(), "{got:?}");

        f.pki.revoke("s/db").unwrap();
        f.write_crl("vm");
        let mut local = f.connect(f.echo_server("db"));
        local.write_all(b"secret").unwrap();
        let mut got = Vec::new();
        let _ = local.read_to_end(&mut got);
        assert!(got.is_empty(), "{got:?}");
    }
}
