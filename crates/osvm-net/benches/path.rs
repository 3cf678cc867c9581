//! TCP between two namespaces through the hub (routed, nftables policy) against a direct veth
//! pair and against the mTLS ingress path (client TLS with an osvm identity, the proxy in the
//! hub terminating it, checking the certificate and policy, forwarding in plain TCP), in one
//! run: request/response latency on one connection, connection set-up latency (each new
//! connection is looked up in the allow set; for mTLS, until the client's handshake is done),
//! and bulk throughput.
//!
//! Run as root: `cargo bench -p osvm-net --bench path` (`OSVM_NET_ROUNDS` sets the number of
//! round trips). Creates its namespaces with unique names and removes them. Prints a Markdown
//! table; docs/benchmarks.md keeps one.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use osvm_core::model::{ComponentKind, NetworkAccess};
use osvm_core::stack::{PolicyAction, PolicyRule, Protocol};
use osvm_net::enforce::Enforcer;
use osvm_net::hub::Hub;
use osvm_net::ipam::Ipam;
use osvm_net::proxy::{Authorize, Decision, Ingress, ProxyHost, server_tls};
use osvm_net::ruleset::{Member, allowed};
use osvm_policy::{Endpoint, PolicySet};

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().unwrap().success();
    assert!(ok, "ip {}", args.join(" "));
}

fn enter(ns: &str) {
    let fd = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// An echo server for 1-byte pings and a sink for bulk data, on `port` in `ns`.
fn serve(ns: &str, port: u16) {
    let ns = ns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match (&s).read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(1) => {
                            if (&s).write_all(&buf[..1]).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    rx.recv().unwrap();
}

struct Figures {
    rtt_p50: Duration,
    rtt_p99: Duration,
    connect_p50: Duration,
    mib_s: f64,
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// A connection the client measures: plain TCP or TLS over it.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

type Connect = Box<dyn Fn() -> Box<dyn Conn> + Send>;

fn tcp(target: SocketAddr) -> Connect {
    Box::new(move || {
        let s = TcpStream::connect(target).unwrap();
        s.set_nodelay(true).unwrap();
        Box::new(s)
    })
}

/// TLS to `target` as the identity in `config`, the server named `server`; returns once the
/// client's side of the handshake is done.
fn tls(target: SocketAddr, config: Arc<rustls::ClientConfig>, server: &'static str) -> Connect {
    Box::new(move || {
        let mut sock = TcpStream::connect(target).unwrap();
        sock.set_nodelay(true).unwrap();
        let mut conn =
            rustls::ClientConnection::new(config.clone(), server.try_into().unwrap()).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        Box::new(rustls::StreamOwned::new(conn, sock))
    })
}

fn measure(ns: &str, connect: Connect, rounds: usize) -> Figures {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        let mut s = connect();
        let mut b = [0u8; 1];
        for _ in 0..200 {
            s.write_all(b"x").unwrap();
            s.read_exact(&mut b).unwrap();
        }
        let mut rtts = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            s.write_all(b"x").unwrap();
            s.read_exact(&mut b).unwrap();
            rtts.push(t.elapsed());
        }
        let mut connects = Vec::with_capacity(500);
        for _ in 0..500 {
            let t = Instant::now();
            let c = connect();
            connects.push(t.elapsed());
            drop(c);
        }
        let chunk = vec![7u8; 1 << 20];
        let total = 512usize;
        let mut bulk = connect();
        let t = Instant::now();
        for _ in 0..total {
            bulk.write_all(&chunk).unwrap();
        }
        bulk.flush().unwrap();
        let mib_s = total as f64 / t.elapsed().as_secs_f64();
        Figures {
            rtt_p50: pct(&mut rtts, 0.5),
            rtt_p99: pct(&mut rtts, 0.99),
            connect_p50: pct(&mut connects, 0.5),
            mib_s,
        }
    })
    .join()
    .unwrap()
}

/// Lets every identity of the CA through: the bench measures the path, not the policy.
struct Everyone;

impl Authorize for Everyone {
    fn authorize(&self, _: &str) -> Decision {
        Decision {
            allowed: true,
            rule: "bench".into(),
        }
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: the network bench needs root");
        return;
    }
    let rounds: usize = std::env::var("OSVM_NET_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let tag = std::process::id();
    let names: Vec<String> = ["hub", "a", "b", "c", "d", "s"]
        .iter()
        .map(|n| format!("osvmb-{n}-{tag}"))
        .collect();
    let _guard = Namespaces(names.clone());
    let (hub_ns, a, b, c, d, s) = (
        &names[0], &names[1], &names[2], &names[3], &names[4], &names[5],
    );

    // Through the hub, with policy.
    let dir = std::env::temp_dir().join(format!("osvm-net-bench-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ipam = Ipam::open(&dir.join("ipam.json"), Ipv4Addr::new(10, 213, 0, 0), 16).unwrap();
    let hub = Hub::create(hub_ns).unwrap();
    let mut members = Vec::new();
    // `s` is reached only through the mTLS proxy, on its service address.
    let service = Ipv4Addr::new(10, 215, 0, 1);
    for (name, ns) in [("a", a), ("b", b), ("s", s)] {
        ip(&["netns", "add", ns]);
        let block = ipam.allocate(name).unwrap();
        hub.attach(ns, &block).unwrap();
        members.push(Member {
            endpoint: Endpoint::component(name, ComponentKind::Service, NetworkAccess::Internal),
            block,
            listen: vec![7000],
            service: (name == "s").then_some(service),
            mtls: name == "s",
        });
    }
    let rule = |to: &str| PolicyRule {
        action: PolicyAction::Allow,
        from: "a".parse().unwrap(),
        to: to.parse().unwrap(),
        ports: vec![7000],
        protocol: Protocol::Tcp,
    };
    let policy = PolicySet::new(vec![rule("b"), rule("s")]);
    hub.add_local(service).unwrap();
    let hub_path = hub.path();
    let mut enforcer = Enforcer::new(hub);
    enforcer.apply(allowed(&policy, &members)).unwrap();
    serve(b, 7000);
    serve(s, 7000);

    let pki = osvm_pki::Pki::new(&dir.join("pki"), "bench.osvm").unwrap();
    pki.init_ca(Duration::from_secs(86_400)).unwrap();
    let server_id = pki
        .issue_into("b", "s", Duration::from_secs(3600), &dir.join("identities"))
        .unwrap();
    let client_id = pki
        .issue_into("b", "a", Duration::from_secs(3600), &dir.join("identities"))
        .unwrap();
    let mut proxies = ProxyHost::start(Some(&hub_path)).unwrap();
    proxies
        .add_ingress(Ingress {
            decider: "bench".into(),
            resource: "s tcp/7000".into(),
            listen: SocketAddr::from((service, 7000)),
            upstream: osvm_net::proxy::Upstream::new(SocketAddr::from((
                members[2].block.component_addr(),
                7000,
            ))),
            tls: Arc::new(server_tls(&server_id, &pki.crl_paths(), "bench.osvm")),
            authorize: Arc::new(Everyone),
            audit: None,
        })
        .unwrap();
    let read = |f: &str| std::fs::read_to_string(client_id.join(f)).unwrap();
    let client_config = Arc::new(
        osvm_pki::tls::client_config(&osvm_pki::tls::Material {
            cert_pem: read("cert.pem"),
            key_pem: read("key.pem"),
            bundle_pem: read("bundle.pem"),
            crl_pem: pki.crl_bundle_pem().unwrap(),
            trust_domain: "bench.osvm".into(),
        })
        .unwrap(),
    );

    // Direct veth pair, no hub, no rules.
    ip(&["netns", "add", c]);
    ip(&["netns", "add", d]);
    ip(&[
        "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", d,
    ]);
    ip(&["-n", c, "addr", "add", "10.214.0.1/30", "dev", "eth0"]);
    ip(&["-n", d, "addr", "add", "10.214.0.2/30", "dev", "eth0"]);
    for ns in [c, d] {
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    serve(d, 7000);

    let direct = measure(c, tcp(SocketAddr::from(([10, 214, 0, 2], 7000))), rounds);
    let via_hub = measure(
        a,
        tcp(SocketAddr::from((members[1].block.component_addr(), 7000))),
        rounds,
    );
    let via_mtls = measure(
        a,
        tls(SocketAddr::from((service, 7000)), client_config, "s.b.osvm"),
        rounds,
    );

    println!(
        "TCP between two namespaces, {rounds} 1-byte round trips on one connection, 500 new connections, 512 MiB bulk\n"
    );
    println!("| path | RTT p50 | RTT p99 | connect p50 | throughput |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in [
        ("direct veth pair", &direct),
        ("through the hub (nftables policy)", &via_hub),
        ("mTLS ingress proxy in the hub", &via_mtls),
    ] {
        println!(
            "| {name} | {:.1?} | {:.1?} | {:.1?} | {:.0} MiB/s |",
            f.rtt_p50, f.rtt_p99, f.connect_p50, f.mib_s
        );
    }
    println!(
        "\nhub / direct: RTT p50 {:.2}x, connect p50 {:.2}x, throughput {:.2}x",
        via_hub.rtt_p50.as_secs_f64() / direct.rtt_p50.as_secs_f64(),
        via_hub.connect_p50.as_secs_f64() / direct.connect_p50.as_secs_f64(),
        via_hub.mib_s / direct.mib_s
    );
    println!(
        "mTLS ingress vs plain hub: RTT p50 +{:.1?} ({:.2}x), connect+handshake p50 {:.2}x, throughput {:.2}x",
        via_mtls.rtt_p50.saturating_sub(via_hub.rtt_p50),
        via_mtls.rtt_p50.as_secs_f64() / via_hub.rtt_p50.as_secs_f64(),
        via_mtls.connect_p50.as_secs_f64() / via_hub.connect_p50.as_secs_f64(),
        via_mtls.mib_s / via_hub.mib_s
    );
    drop(proxies);
    enforcer.into_hub().destroy().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
