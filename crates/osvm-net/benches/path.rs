//! TCP between two namespaces through the hub (routed, nftables policy) against a direct veth
//! pair, in one run: request/response latency on one connection, connection set-up latency
//! (each new connection is looked up in the allow set), and bulk throughput.
//!
//! Run as root: `cargo bench -p osvm-net --bench path` (`OSVM_NET_ROUNDS` sets the number of
//! round trips). Creates its namespaces with unique names and removes them. Prints a Markdown
//! table; docs/benchmarks.md keeps one.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use osvm_core::model::{ComponentKind, NetworkAccess};
use osvm_core::stack::{PolicyAction, PolicyRule, Protocol};
use osvm_net::enforce::Enforcer;
use osvm_net::hub::Hub;
use osvm_net::ipam::Ipam;
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

fn measure(ns: &str, target: SocketAddr, rounds: usize) -> Figures {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        let mut s = TcpStream::connect(target).unwrap();
        s.set_nodelay(true).unwrap();
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
            let c = TcpStream::connect(target).unwrap();
            connects.push(t.elapsed());
            drop(c);
        }
        let chunk = vec![7u8; 1 << 20];
        let total = 512usize;
        let mut bulk = TcpStream::connect(target).unwrap();
        let t = Instant::now();
        for _ in 0..total {
            bulk.write_all(&chunk).unwrap();
        }
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
    let names: Vec<String> = ["hub", "a", "b", "c", "d"]
        .iter()
        .map(|n| format!("osvmb-{n}-{tag}"))
        .collect();
    let _guard = Namespaces(names.clone());
    let (hub_ns, a, b, c, d) = (&names[0], &names[1], &names[2], &names[3], &names[4]);

    // Through the hub, with policy.
    let dir = std::env::temp_dir().join(format!("osvm-net-bench-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ipam = Ipam::open(&dir.join("ipam.json"), Ipv4Addr::new(10, 213, 0, 0), 16).unwrap();
    let hub = Hub::create(hub_ns).unwrap();
    let mut members = Vec::new();
    for (name, ns) in [("a", a), ("b", b)] {
        ip(&["netns", "add", ns]);
        let block = ipam.allocate(name).unwrap();
        hub.attach(ns, &block).unwrap();
        members.push(Member {
            endpoint: Endpoint::component(name, ComponentKind::Service, NetworkAccess::Internal),
            block,
            listen: vec![7000],
            service: None,
            mtls: false,
        });
    }
    let policy = PolicySet::new(vec![PolicyRule {
        action: PolicyAction::Allow,
        from: "a".parse().unwrap(),
        to: "b".parse().unwrap(),
        ports: vec![7000],
        protocol: Protocol::Tcp,
    }]);
    let mut enforcer = Enforcer::new(hub);
    enforcer.apply(allowed(&policy, &members)).unwrap();
    serve(b, 7000);

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

    let direct = measure(c, SocketAddr::from(([10, 214, 0, 2], 7000)), rounds);
    let via_hub = measure(
        a,
        SocketAddr::from((members[1].block.component_addr(), 7000)),
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
    enforcer.into_hub().destroy().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
