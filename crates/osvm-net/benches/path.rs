//! TCP between two namespaces through the hub (routed, nftables policy) against a direct veth
//! pair and against the mTLS ingress path (client TLS with an osvm identity, the proxy in the
//! hub terminating it, checking the certificate and policy, forwarding in plain TCP), in one
//! run: request/response latency on one connection, connection set-up latency (each new
//! connection is looked up in the allow set; for mTLS, until the client's handshake is done),
//! and bulk throughput. Then a published port (`publish`): the same server reached from the
//! host's loopback through the uplink (DNAT, `route_localnet`), from another machine (a
//! namespace joined to the host by a veth), through a small user-space proxy on the host (the
//! alternative to `route_localnet`), against the service address from inside the hub and a
//! server run directly on the host.
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
use osvm_net::ruleset::{Member, allowed, ingress, services};
use osvm_net::uplink::{Published, Uplink};
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

/// A host interface removed when dropped.
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
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
    serve_at(Some(ns), SocketAddr::from(([0, 0, 0, 0], port)));
}

/// [`serve`] on `addr` in `ns` (`None`: the host's namespace); returns the address bound.
fn serve_at(ns: Option<&str>, addr: SocketAddr) -> SocketAddr {
    let ns = ns.map(str::to_owned);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(ns) = &ns {
            enter(ns);
        }
        let l = TcpListener::bind(addr).unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
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
    rx.recv().unwrap()
}

/// A user-space TCP proxy in the host's namespace: accepts on 127.0.0.1 and copies each
/// connection to and from `upstream` on two threads (what Docker's userland proxy does).
fn user_proxy(upstream: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for down in l.incoming().flatten() {
            let Ok(up) = TcpStream::connect(upstream) else {
                continue;
            };
            let _ = (down.set_nodelay(true), up.set_nodelay(true));
            let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut d2, &mut u2);
                let _ = u2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut down, mut up) = (down, up);
                let _ = std::io::copy(&mut up, &mut down);
                let _ = down.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
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
    sample(Some(ns), connect, rounds, 500, 512).figures()
}

/// What one or more passes over a path measured.
#[derive(Default)]
struct Samples {
    rtts: Vec<Duration>,
    connects: Vec<Duration>,
    mib: f64,
    bulk_secs: f64,
}

impl Samples {
    fn add(&mut self, other: Samples) {
        self.rtts.extend(other.rtts);
        self.connects.extend(other.connects);
        self.mib += other.mib;
        self.bulk_secs += other.bulk_secs;
    }

    fn figures(mut self) -> Figures {
        Figures {
            rtt_p50: pct(&mut self.rtts, 0.5),
            rtt_p99: pct(&mut self.rtts, 0.99),
            connect_p50: pct(&mut self.connects, 0.5),
            mib_s: self.mib / self.bulk_secs,
        }
    }
}

/// From `ns` (`None`: the host's namespace): `rounds` 1-byte round trips on one connection,
/// `connects` new connections, `mib` MiB of bulk writes.
fn sample(
    ns: Option<&str>,
    connect: Connect,
    rounds: usize,
    connects: usize,
    mib: usize,
) -> Samples {
    let ns = ns.map(str::to_owned);
    std::thread::spawn(move || {
        if let Some(ns) = &ns {
            enter(ns);
        }
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
        let mut times = Vec::with_capacity(connects);
        for _ in 0..connects {
            let t = Instant::now();
            let c = connect();
            times.push(t.elapsed());
            drop(c);
        }
        let chunk = vec![7u8; 1 << 20];
        let mut bulk = connect();
        let t = Instant::now();
        for _ in 0..mib {
            bulk.write_all(&chunk).unwrap();
        }
        bulk.flush().unwrap();
        Samples {
            rtts,
            connects: times,
            mib: mib as f64,
            bulk_secs: t.elapsed().as_secs_f64(),
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
    let names: Vec<String> = ["hub", "a", "b", "c", "d", "s", "o"]
        .iter()
        .map(|n| format!("osvmb-{n}-{tag}"))
        .collect();
    let _guard = Namespaces(names.clone());
    let (hub_ns, a, b, c, d, s, o) = (
        &names[0], &names[1], &names[2], &names[3], &names[4], &names[5], &names[6],
    );

    // Through the hub, with policy.
    let dir = std::env::temp_dir().join(format!("osvm-net-bench-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ipam = Ipam::open(&dir.join("ipam.json"), Ipv4Addr::new(10, 213, 0, 0), 16).unwrap();
    let hub = Hub::create(hub_ns).unwrap();
    let mut members = Vec::new();
    // `s` is reached only through the mTLS proxy, on its service address.
    let service = Ipv4Addr::new(10, 215, 0, 1);
    // `b` has a plain service address, which the host's published port sends to.
    let published_service = Ipv4Addr::new(10, 216, 0, 1);
    for (name, ns) in [("a", a), ("b", b), ("s", s)] {
        ip(&["netns", "add", ns]);
        let block = ipam.allocate(name).unwrap();
        hub.attach(ns, &block).unwrap();
        members.push(Member {
            endpoint: Endpoint::component(name, ComponentKind::Service, NetworkAccess::Internal),
            block,
            listen: vec![7000],
            service: match name {
                "s" => Some(service),
                "b" => Some(published_service),
                _ => None,
            },
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
    let world = PolicyRule {
        from: "world".parse().unwrap(),
        ..rule("b")
    };
    let policy = PolicySet::new(vec![rule("b"), rule("s"), world]);
    hub.add_local(service).unwrap();
    let hub_path = hub.path();
    // The uplink, and b's port 7000 published on the host's loopback and on its address on the
    // other machine's link (below).
    let uplink = Uplink::planned(&format!("{tag:08x}")).create(&hub).unwrap();
    let mut enforcer = Enforcer::new(hub);
    enforcer.set_ingress(ingress(&policy, &[(members[1].clone(), vec![7000])]));
    enforcer
        .apply_all(
            allowed(&policy, &members),
            services(&members),
            vec![],
            vec![],
        )
        .unwrap();
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

    // Another machine: a namespace joined to the host by a veth, 198.51.100.28/30.
    let other_if = format!("osvbo{:05x}", tag & 0xfffff);
    let _link = Link(other_if.clone());
    let other_host = Ipv4Addr::new(198, 51, 100, 29);
    ip(&["netns", "add", o]);
    ip(&[
        "link", "add", &other_if, "type", "veth", "peer", "name", "eth0", "netns", o,
    ]);
    ip(&["addr", "add", "198.51.100.29/30", "dev", &other_if]);
    ip(&["link", "set", &other_if, "up"]);
    ip(&["-n", o, "addr", "add", "198.51.100.30/30", "dev", "eth0"]);
    ip(&["-n", o, "link", "set", "eth0", "up"]);
    ip(&["-n", o, "link", "set", "lo", "up"]);
    ip(&["-n", o, "route", "add", "default", "via", "198.51.100.29"]);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = |host: Ipv4Addr| Published {
        host: std::net::SocketAddrV4::new(host, port),
        service: published_service,
        port: 7000,
    };
    uplink
        .publish(
            &[publish(Ipv4Addr::LOCALHOST), publish(other_host)],
            &[(Ipv4Addr::new(10, 216, 0, 0), 16)],
        )
        .unwrap();
    let on_host = serve_at(None, SocketAddr::from(([127, 0, 0, 1], 0)));
    let proxied = user_proxy(SocketAddr::from((published_service, 7000)));

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
    // Five passes over the five paths in turn, so a slow moment of the machine is shared.
    let paths: [(Option<&str>, SocketAddr); 5] = [
        (None, on_host),
        (
            Some(a.as_str()),
            SocketAddr::from((published_service, 7000)),
        ),
        (None, SocketAddr::from(([127, 0, 0, 1], port))),
        (Some(o.as_str()), SocketAddr::from((other_host, port))),
        (None, proxied),
    ];
    let mut samples: Vec<Samples> = (0..paths.len()).map(|_| Samples::default()).collect();
    for _ in 0..5 {
        for (n, (ns, target)) in paths.iter().enumerate() {
            samples[n].add(sample(*ns, tcp(*target), rounds / 5, 100, 128));
        }
    }
    let mut figures = samples.into_iter().map(Samples::figures);
    let mut next = || figures.next().unwrap();
    let (host_direct, hub_service, published_lo, published_other, via_user_proxy) =
        (next(), next(), next(), next(), next());
    println!(
        "\nThe same kind of server on the host itself, and component b through its service address or its published port: five interleaved passes, {rounds} round trips, 500 new connections and 640 MiB per path\n"
    );
    println!("| path | RTT p50 | RTT p99 | connect p50 | throughput |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in [
        ("host -> server on the host's loopback", &host_direct),
        (
            "component a -> b's service address (inside the hub)",
            &hub_service,
        ),
        (
            "host -> published 127.0.0.1:P (DNAT, route_localnet)",
            &published_lo,
        ),
        (
            "other machine -> published host address:P (DNAT)",
            &published_other,
        ),
        (
            "host -> user-space proxy on 127.0.0.1 -> service address",
            &via_user_proxy,
        ),
    ] {
        println!(
            "| {name} | {:.1?} | {:.1?} | {:.1?} | {:.0} MiB/s |",
            f.rtt_p50, f.rtt_p99, f.connect_p50, f.mib_s
        );
    }
    let ratio = |a: &Figures, b: &Figures| {
        format!(
            "RTT p50 {:.2}x, connect p50 {:.2}x, throughput {:.2}x",
            a.rtt_p50.as_secs_f64() / b.rtt_p50.as_secs_f64(),
            a.connect_p50.as_secs_f64() / b.connect_p50.as_secs_f64(),
            a.mib_s / b.mib_s
        )
    };
    println!(
        "\npublished (loopback) / on the host: {}",
        ratio(&published_lo, &host_direct)
    );
    println!(
        "published (loopback) / service address in the hub: {}",
        ratio(&published_lo, &hub_service)
    );
    println!(
        "published (other machine) / service address in the hub: {}",
        ratio(&published_other, &hub_service)
    );
    println!(
        "user-space proxy / published (loopback): {}",
        ratio(&via_user_proxy, &published_lo)
    );

    drop(proxies);
    uplink.remove().unwrap();
    enforcer.into_hub().destroy().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
