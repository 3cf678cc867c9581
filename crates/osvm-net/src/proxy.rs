//! The mTLS proxies.
//!
//! *Ingress*: for a component marked `mtls = true`, a proxy in the hub listens on the
//! component's service address and port, terminates TLS with the component's own identity,
//! requires a client certificate of the osvm CA (chain, validity, CRL, trust domain; see
//! `osvm_pki::tls`), asks policy whether that client's SPIFFE ID may reach the component, and
//! only then opens a plain TCP connection to the component and copies bytes both ways. Every
//! decision (refused handshakes included) goes to the audit log.
//!
//! *Egress*: a local listener that takes plain TCP from a component and originates mTLS with
//! the component's identity, so software that cannot speak TLS still reaches an mTLS peer.
//!
//! All proxies of a [`ProxyHost`] run on one thread that entered the host's network namespace
//! (the hub) before its tokio runtime started: every socket the proxies create, listening or
//! connecting, lives in that namespace, whatever thread asked for it. TLS material is read
//! from files and rebuilt when they change ([`Reloading`]), so renewed certificates and a
//! reissued CRL apply from the next connection on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osvm_policy::{AuditLog, AuditRecord};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::NetError;

/// The copy buffer of each direction of a proxied connection: several TLS records (16 KiB of
/// plaintext each) per read and write, instead of tokio's 8 KiB default (bulk 0.58-0.77x the
/// plain hub instead of 0.46x; 64 KiB gave 0.53-0.58x). Allocated zeroed above malloc's mmap
/// threshold, its pages become resident only as far as data has filled them: an idle
/// connection costs little, a busy one up to 512 KiB.
const COPY_BUF: usize = 256 << 10;

/// What the TLS side of a connection reads from its socket at once. rustls asks for at most
/// 4 KiB more than it holds, up to one record (16 KiB): several reads per record, each a
/// syscall, when it reads the socket itself. Behind this buffer one read syscall brings many
/// records. Allocated zeroed above malloc's mmap threshold, like [`COPY_BUF`].
const TLS_READ_BUF: usize = 256 << 10;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What policy says about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether it may pass.
    pub allowed: bool,
    /// The rule that decided, as the audit log shows it.
    pub rule: String,
}

/// Judges the SPIFFE ID a client proved it holds.
pub trait Authorize: Send + Sync {
    /// Whether the peer `spiffe_id` may reach this proxy's destination.
    fn authorize(&self, spiffe_id: &str) -> Decision;
}

/// Why a value built from files (a proxy's TLS configuration) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The files do not make a TLS configuration.
    #[error(transparent)]
    Tls(#[from] osvm_pki::tls::TlsError),
    /// A fixed value is never rebuilt.
    #[error("a fixed value is never rebuilt")]
    Fixed,
}

type Build<T> = Box<dyn Fn() -> Result<T, ReloadError> + Send + Sync>;

/// What identifies a file's content without reading it: inode, size, modification time.
type Stamp = Option<(u64, u64, i64, i64)>;

/// A value built from files, rebuilt when any of them changes (inode, size or modification
/// time), reused otherwise.
pub struct Reloading<T> {
    watch: Vec<PathBuf>,
    build: Build<T>,
    cache: Mutex<Option<(Vec<Stamp>, Arc<T>)>>,
}

impl<T> Reloading<T> {
    /// Builds with `build`, again whenever a file in `watch` changes.
    pub fn new(
        watch: Vec<PathBuf>,
        build: impl Fn() -> Result<T, ReloadError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            watch,
            build: Box::new(build),
            cache: Mutex::new(None),
        }
    }

    /// A value that never changes.
    pub fn fixed(value: T) -> Self
    where
        T: Send + Sync + 'static,
    {
        let value = Arc::new(value);
        Self {
            watch: Vec::new(),
            build: Box::new(|| Err(ReloadError::Fixed)),
            cache: Mutex::new(Some((Vec::new(), value))),
        }
    }

    /// The current value: the cached one if no watched file changed since it was built.
    pub fn get(&self) -> Result<Arc<T>, ReloadError> {
        let stamps: Vec<_> = self
            .watch
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
            })
            .collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, value)) = cache.as_ref()
            && *seen == stamps
        {
            return Ok(value.clone());
        }
        let value = Arc::new((self.build)()?);
        *cache = Some((stamps, value.clone()));
        Ok(value)
    }
}

/// Where an ingress proxy forwards; changed in place when a hot-swap moves the component.
#[derive(Debug, Clone)]
pub struct Upstream(Arc<std::sync::RwLock<SocketAddr>>);

impl Upstream {
    /// Forwarding to `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self(Arc::new(std::sync::RwLock::new(addr)))
    }

    /// Where new connections go.
    pub fn get(&self) -> SocketAddr {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends new connections to `addr`; live ones keep theirs.
    pub fn set(&self, addr: SocketAddr) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = addr;
    }
}

/// An mTLS ingress proxy.
pub struct Ingress {
    /// Who decides, in the audit log (`mtls-ingress web.shop:8080`).
    pub decider: String,
    /// What clients reach, in the audit log (`web tcp/8080`).
    pub resource: String,
    /// Where it listens (the service address and port).
    pub listen: SocketAddr,
    /// Where it forwards (the component's address and port).
    pub upstream: Upstream,
    /// The server side of TLS: the component's identity and the trust it checks clients with.
    pub tls: Arc<Reloading<ServerConfig>>,
    /// Policy on the client's SPIFFE ID.
    pub authorize: Arc<dyn Authorize>,
    /// Where decisions are recorded.
    pub audit: Option<Arc<AuditLog>>,
}

/// An mTLS egress proxy.
pub struct Egress {
    /// Where it listens for plain TCP.
    pub listen: SocketAddr,
    /// The mTLS server it connects to.
    pub upstream: SocketAddr,
    /// The name the server's certificate must carry (`db.shop.osvm`).
    pub server_name: String,
    /// The client side of TLS: the component's identity and the trust it checks servers with.
    pub tls: Arc<Reloading<ClientConfig>>,
}

/// What a proxy has done since it started.
#[derive(Debug, Default)]
pub struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    upstream_failed: AtomicU64,
}

/// A copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CountersSnapshot {
    /// Connections let through.
    pub accepted: u64,
    /// Connections refused (handshake failed, or policy said no).
    pub refused: u64,
    /// Connections let through whose destination could not be reached.
    pub upstream_failed: u64,
}

impl Counters {
    fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            upstream_failed: self.upstream_failed.load(Ordering::Relaxed),
        }
    }
}

/// A thread in a network namespace running proxies.
pub struct ProxyHost {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    listeners: BTreeMap<SocketAddr, (tokio::task::AbortHandle, Arc<Counters>)>,
}

type Started = Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), ThreadError>;

/// Why the proxy thread did not start.
#[derive(Debug, thiserror::Error)]
enum ThreadError {
    /// Its network namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// Its async runtime could not be made.
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
}

fn enter_netns(path: &Path) -> Result<(), ThreadError> {
    Ok(crate::netns::open(path).and_then(crate::netns::enter)?)
}

impl ProxyHost {
    /// Starts the proxy thread in the network namespace at `netns` (the caller's own when
    /// `None`).
    pub fn start(netns: Option<&Path>) -> Result<Self, NetError> {
        let fail = |detail: String| NetError::Command {
            command: "start the proxy thread".into(),
            detail,
        };
        let netns = netns.map(Path::to_path_buf);
        let (tx, rx) = std::sync::mpsc::channel::<Started>();
        let thread = std::thread::Builder::new()
            .name("osvm-proxy".into())
            .spawn(move || {
                let runtime = netns.as_deref().map_or(Ok(()), enter_netns).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(ThreadError::Runtime)
                });
                match runtime {
                    Ok(runtime) => {
                        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
                        let _ = tx.send(Ok((runtime.handle().clone(), stop_tx)));
                        runtime.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| fail(e.to_string()))?;
        let (handle, stop) = rx
            .recv()
            .map_err(|_| fail("the thread ended before starting".into()))?
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
            listeners: BTreeMap::new(),
        })
    }

    /// Binds `addr` on the proxy thread, so the socket is in the host's namespace.
    fn bind(&self, addr: SocketAddr) -> Result<TcpListener, NetError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(TcpListener::bind(addr).await);
        });
        rx.recv()
            .map_err(|_| std::io::Error::other("the proxy thread has stopped"))
            .and_then(|r| r)
            .map_err(|e| NetError::Command {
                command: format!("listen on {addr}"),
                detail: e.to_string(),
            })
    }

    fn insert(
        &mut self,
        listen: SocketAddr,
        serve: impl FnOnce(TcpListener, Arc<Counters>) -> tokio::task::JoinHandle<()>,
    ) -> Result<(), NetError> {
        self.remove(listen);
        let listener = self.bind(listen)?;
        let counters = Arc::new(Counters::default());
        let task = serve(listener, counters.clone());
        self.listeners
            .insert(listen, (task.abort_handle(), counters));
        Ok(())
    }

    /// Starts an ingress proxy (replacing any proxy on the same address).
    pub fn add_ingress(&mut self, spec: Ingress) -> Result<(), NetError> {
        let handle = self.handle.clone();
        let spec = Arc::new(spec);
        self.insert(spec.listen, move |listener, counters| {
            handle.spawn(accept_loop(listener, move |tcp, peer| {
                ingress(tcp, peer, spec.clone(), counters.clone())
            }))
        })
    }

    /// Starts an egress proxy (replacing any proxy on the same address).
    pub fn add_egress(&mut self, spec: Egress) -> Result<(), NetError> {
        let handle = self.handle.clone();
        let spec = Arc::new(spec);
        self.insert(spec.listen, move |listener, counters| {
            handle.spawn(accept_loop(listener, move |tcp, _| {
                egress(tcp, spec.clone(), counters.clone())
            }))
        })
    }

    /// Stops the proxy listening on `listen` (its live connections go on); whether there was one.
    pub fn remove(&mut self, listen: SocketAddr) -> bool {
        match self.listeners.remove(&listen) {
            Some((task, _)) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Every listening address with its counters.
    pub fn counters(&self) -> Vec<(SocketAddr, CountersSnapshot)> {
        self.listeners
            .iter()
            .map(|(addr, (_, c))| (*addr, c.snapshot()))
            .collect()
    }
}

impl Drop for ProxyHost {
    /// Stops every proxy and their connections, and the thread.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp, peer));
            }
            // Out of file descriptors and the like: let some connections finish.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn ingress(tcp: TcpStream, peer: SocketAddr, spec: Arc<Ingress>, counters: Arc<Counters>) {
    let record = |subject: &str, allowed: bool, rule: &str| {
        if !allowed {
            counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(audit) = &spec.audit {
            let _ = audit.append(&AuditRecord::new(
                &spec.decider,
                subject,
                &spec.resource,
                "connect",
                allowed,
                rule,
            ));
        }
    };
    let from = peer.to_string();
    let config = match spec.tls.get() {
        Ok(c) => c,
        Err(e) => return record(&from, false, &format!("no identity to present: {e}")),
    };
    let mut tls = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsAcceptor::from(config).accept(BufReader::with_capacity(TLS_READ_BUF, tcp)),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return record(&from, false, &format!("TLS handshake failed: {e}")),
        Err(_) => return record(&from, false, "TLS handshake timed out"),
    };
    let Some(id) = osvm_pki::tls::peer_spiffe_id(tls.get_ref().1.peer_certificates()) else {
        return record(&from, false, "the client certificate has no SPIFFE ID");
    };
    let subject = format!("{id} from {from}");
    let decision = spec.authorize.authorize(&id);
    record(&subject, decision.allowed, &decision.rule);
    if !decision.allowed {
        let _ = tls.shutdown().await;
        return;
    }
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    let Ok(mut upstream) = TcpStream::connect(spec.upstream.get()).await else {
        counters.upstream_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let _ =
        tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut upstream, COPY_BUF, COPY_BUF).await;
}

async fn egress(mut tcp: TcpStream, spec: Arc<Egress>, counters: Arc<Counters>) {
    let Ok(config) = spec.tls.get() else {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Ok(name) = ServerName::try_from(spec.server_name.clone()) else {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Ok(upstream) = TcpStream::connect(spec.upstream).await else {
        counters.upstream_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let mut tls = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(config).connect(name, BufReader::with_capacity(TLS_READ_BUF, upstream)),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        _ => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut tls, COPY_BUF, COPY_BUF).await;
}

/// Server-side TLS for a component whose identity files (`cert.pem`, `key.pem`, `bundle.pem`)
/// are in `identity_dir`, checking clients against the CRLs in `crls` (PEM files; the first
/// must exist, later ones may not) and the trust domain; rebuilt when any of them changes.
pub fn server_tls(
    identity_dir: &Path,
    crls: &[PathBuf],
    trust_domain: &str,
) -> Reloading<ServerConfig> {
    from_files(
        identity_dir,
        crls,
        trust_domain,
        osvm_pki::tls::server_config,
    )
}

/// Client-side TLS from the same files as [`server_tls`].
pub fn client_tls(
    identity_dir: &Path,
    crls: &[PathBuf],
    trust_domain: &str,
) -> Reloading<ClientConfig> {
    from_files(
        identity_dir,
        crls,
        trust_domain,
        osvm_pki::tls::client_config,
    )
}

fn from_files<T: 'static>(
    identity_dir: &Path,
    crls: &[PathBuf],
    trust_domain: &str,
    make: fn(&osvm_pki::tls::Material) -> Result<T, osvm_pki::tls::TlsError>,
) -> Reloading<T> {
    let (dir, crls, domain) = (
        identity_dir.to_path_buf(),
        crls.to_vec(),
        trust_domain.to_owned(),
    );
    let watch = ["cert.pem", "key.pem", "bundle.pem"]
        .iter()
        .map(|f| dir.join(f))
        .chain(crls.iter().cloned())
        .collect();
    Reloading::new(watch, move || {
        Ok(make(&read_material(&dir, &crls, &domain)?)?)
    })
}

fn read_material(
    dir: &Path,
    crls: &[PathBuf],
    trust_domain: &str,
) -> Result<osvm_pki::tls::Material, ReloadError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| ReloadError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut crl_pem = String::new();
    for (i, path) in crls.iter().enumerate() {
        match read(path) {
            Ok(text) => crl_pem.push_str(&text),
            Err(_) if i > 0 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(osvm_pki::tls::Material {
        cert_pem: read(&dir.join("cert.pem"))?,
        key_pem: read(&dir.join("key.pem"))?,
        bundle_pem: read(&dir.join("bundle.pem"))?,
        crl_pem,
        trust_domain: trust_domain.to_owned(),
    })
}
