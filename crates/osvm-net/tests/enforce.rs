//! Real TCP between namespaces this test creates, through a hub enforcing policy with nftables.
//! Needs root, `ip` and `nft`; skips with a printed reason otherwise.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use osvm_core::model::{ComponentKind, NetworkAccess};
use osvm_core::stack::{PolicyAction, PolicyRule, Protocol};
use osvm_net::hub::Hub;
use osvm_net::ipam::Ipam;
use osvm_net::ruleset::{Member, allowed, script};
use osvm_policy::{Endpoint, PolicySet};

fn can_run(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root")
    } else if Command::new("nft").arg("--version").output().is_err() {
        Some("needs nft (Debian package nftables)")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("needs ip (iproute2)")
    } else {
        None
    };
    if let Some(why) = why {
        let feature = if why == "needs root" { "root" } else { "hub" };
        osvm_testkit::skip(feature, test, why);
    }
    why.is_none()
}

/// Removes the namespaces it names when dropped, pass or fail.
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

/// Moves the calling thread into the network namespace `ns`.
fn enter(ns: &str) {
    let fd = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .unwrap()
}

/// Listens on `port` in `ns` and runs `handle` on a thread of its own for every connection,
/// forever (the threads die with the test process; the namespace goes with the guard).
/// Returns once the listener is bound.
fn serve(ns: &str, port: u16, handle: impl Fn(TcpStream) + Send + Sync + Copy + 'static) {
    let ns = ns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        for s in l.incoming().flatten() {
            std::thread::spawn(move || handle(s));
        }
    });
    rx.recv().unwrap();
}

/// Listens on `port` in `ns` and answers every connection with one byte, forever (the thread
/// dies with the test process; the namespace goes with the guard).
fn listen(ns: &str, port: u16) {
    serve(ns, port, |s| {
        use std::io::Write;
        let _ = (&s).write_all(b"!");
    });
}

/// Connects from `ns` to `addr`: Ok, or the errno and how long it took to fail.
fn connect(ns: &str, addr: SocketAddr) -> Result<(), (i32, Duration)> {
    in_netns(ns, move || {
        let t = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => Ok(()),
            Err(e) => Err((e.raw_os_error().unwrap_or(-1), t.elapsed())),
        }
    })
}

fn rule(action: PolicyAction, from: &str, to: &str, ports: &[u16]) -> PolicyRule {
    PolicyRule {
        action,
        from: from.parse().unwrap(),
        to: to.parse().unwrap(),
        ports: ports.to_vec(),
        protocol: Protocol::Tcp,
    }
}

/// A hub and one namespace per name, each joined by its veth and address block (`listen` are
/// the ports policy may open on it). The guard removes every namespace when dropped.
fn topology(
    test: &str,
    names: &[&str],
    listen: &[u16],
) -> (
    Namespaces,
    std::path::PathBuf,
    Vec<String>,
    Vec<Member>,
    Hub,
) {
    let tag = std::process::id();
    let hub_name = format!("osvmt-{test}hub-{tag}");
    let netns: Vec<String> = names
        .iter()
        .map(|n| format!("osvmt-{test}{n}-{tag}"))
        .collect();
    let mut guard = Namespaces(vec![hub_name.clone()]);
    guard.0.extend(netns.iter().cloned());
    let dir = std::env::temp_dir().join(format!("osvm-net-{test}-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ipam = Ipam::open(&dir.join("ipam.json"), Ipv4Addr::new(10, 213, 0, 0), 16).unwrap();
    let hub = Hub::create(&hub_name).unwrap();
    let mut members = Vec::new();
    for (name, ns) in names.iter().zip(&netns) {
        let added = Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap();
        assert!(added.success(), "ip netns add {ns}");
        let block = ipam.allocate(name).unwrap();
        hub.attach(ns, &block).unwrap();
        members.push(Member {
            endpoint: Endpoint::component(name, ComponentKind::Service, NetworkAccess::Internal),
            block,
            listen: listen.to_vec(),
            service: None,
            mtls: false,
        });
    }
    (guard, dir, netns, members, hub)
}

#[test]
fn the_hub_passes_what_policy_allows_and_rejects_the_rest_at_once() {
    if !can_run("hub enforcement") {
        return;
    }
    let (guard, dir, netns, members, hub) = topology("p", &["web", "db", "cache"], &[8080, 9090]);
    for ns in &netns {
        listen(ns, 8080);
        listen(ns, 9090);
    }
    let addr = |i: usize, port: u16| SocketAddr::from((members[i].block.component_addr(), port));

    let policy = PolicySet::new(vec![
        rule(PolicyAction::Allow, "web", "db", &[8080]),
        rule(PolicyAction::Allow, "web", "cache", &[]),
        rule(PolicyAction::Deny, "*", "cache", &[9090]),
        rule(PolicyAction::Allow, "db", "cache", &[7070]),
    ]);
    let tuples = allowed(&policy, &members);
    hub.nft(&["-f", "-"], Some(&script(&tuples, &[]))).unwrap();

    const EHOSTUNREACH: i32 = 113;
    const ECONNREFUSED: i32 = 111;
    // Allowed.
    assert_eq!(connect(&netns[0], addr(1, 8080)), Ok(()), "web -> db:8080");
    assert_eq!(
        connect(&netns[0], addr(2, 8080)),
        Ok(()),
        "web -> cache:8080 (all ports)"
    );
    // Denied: fast EHOSTUNREACH, not a timeout.
    for (from, to, port, why) in [
        (0, 1, 9090, "web -> db:9090, no rule"),
        (1, 0, 8080, "db -> web, the reverse of an allow"),
        (0, 2, 9090, "web -> cache:9090, deny overrides the allow"),
        (2, 1, 8080, "cache -> db, no rule"),
    ] {
        match connect(&netns[from], addr(to, port)) {
            Err((errno, took)) => {
                assert_eq!(errno, EHOSTUNREACH, "{why}");
                assert!(
                    took < Duration::from_secs(1),
                    "{why}: failed fast, took {took:?}"
                );
            }
            Ok(()) => panic!("{why}: connected"),
        }
    }
    // Allowed, nobody listening: refused by the peer, not by the hub.
    match connect(&netns[1], addr(2, 7070)) {
        Err((errno, _)) => assert_eq!(errno, ECONNREFUSED, "db -> cache:7070"),
        Ok(()) => panic!("nothing listens on 7070"),
    }

    // A component cannot use another's source address: cache takes web's address as its own and
    // tries web's allowed flow; its packets arrive on cache's veth and are dropped.
    let web_addr = members[0].block.component_addr();
    assert!(
        Command::new("ip")
            .args([
                "-n",
                &netns[2],
                "addr",
                "add",
                &format!("{web_addr}/32"),
                "dev",
                "eth0"
            ])
            .status()
            .unwrap()
            .success()
    );
    let spoofed = in_netns(&netns[2], {
        let target = addr(1, 8080);
        move || {
            use nix::sys::socket::{
                AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
                sockopt,
            };
            use std::os::fd::AsRawFd;
            let s = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::empty(),
                None,
            )
            .unwrap();
            setsockopt(
                &s,
                sockopt::SendTimeout,
                &nix::sys::time::TimeVal::new(2, 0),
            )
            .unwrap();
            bind(
                s.as_raw_fd(),
                &SockaddrIn::from(std::net::SocketAddrV4::new(web_addr, 0)),
            )
            .unwrap();
            let SocketAddr::V4(t) = target else {
                unreachable!()
            };
            connect(s.as_raw_fd(), &SockaddrIn::from(t)).map_err(|e| e as i32)
        }
    });
    assert!(spoofed.is_err(), "a spoofed source must not connect");

    let listed = hub
        .nft(&["list", "set", "inet", "osvm", "allow_tcp"], None)
        .unwrap();
    assert!(listed.contains("osvm0"), "{listed}");
    hub.destroy().unwrap();
    drop(guard);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `nft -j` output without the table's handle, which the kernel numbers per namespace and a
/// recreated table never gets back; everything else (sets, elements, rules and their handles)
/// must match.
fn without_table_handle(json: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    for item in v["nftables"].as_array_mut().unwrap() {
        if let Some(table) = item.get_mut("table") {
            table.as_object_mut().unwrap().remove("handle");
        }
    }
    v
}

/// An echo server on `port` in `ns`: echoes every byte back, per connection.
fn echo(ns: &str, port: u16) {
    serve(ns, port, |s| {
        use std::io::{Read, Write};
        let mut b = [0u8; 1];
        while (&s).read_exact(&mut b).is_ok() && (&s).write_all(&b).is_ok() {}
    });
}

#[test]
fn revoking_an_allow_cuts_a_live_connection_and_a_rebuild_is_identical() {
    if !can_run("revocation") {
        return;
    }
    if Command::new("conntrack").arg("--version").output().is_err() {
        osvm_testkit::skip(
            "hub",
            "revocation",
            "needs conntrack (Debian package conntrack)",
        );
        return;
    }
    let (guard, dir, netns, members, hub) = topology("r", &["a", "b"], &[7000]);
    echo(&netns[1], 7000);
    let policy = PolicySet::new(vec![rule(PolicyAction::Allow, "a", "b", &[7000])]);
    let mut enforcer = osvm_net::enforce::Enforcer::new(hub);
    let applied = enforcer.apply(allowed(&policy, &members)).unwrap();
    assert_eq!(applied.added, 1, "{applied:?}");
    let before = without_table_handle(&enforcer.kernel_ruleset().unwrap());

    // A client in `a` pings every 50 ms over one connection and reports when it breaks.
    let target = SocketAddr::from((members[1].block.component_addr(), 7000));
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let a_ns = netns[0].clone();
    std::thread::spawn(move || {
        enter(&a_ns);
        use std::io::{Read, Write};
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
        // Long enough that a loaded host's stall is not taken for a cut.
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        tx.send(Ok(())).unwrap();
        let mut b = [0u8; 1];
        loop {
            if let Err(e) = s.write_all(b"x").and_then(|()| s.read_exact(&mut b)) {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    rx.recv_timeout(Duration::from_secs(3)).unwrap().unwrap();
    // The connection is alive for a while.
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the connection works while allowed"
    );

    // A restarted daemon rebuilds from durable state: a fresh enforcer, the same tuples.
    let mut rebuilt = osvm_net::enforce::Enforcer::new(enforcer.into_hub());
    rebuilt.apply(allowed(&policy, &members)).unwrap();
    assert_eq!(
        without_table_handle(&rebuilt.kernel_ruleset().unwrap()),
        before,
        "identical ruleset after a rebuild"
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "rebuilding did not disturb the live connection"
    );

    // Revoke: the rule goes and the live connection with it, at once (the bound leaves room for
    // the client's 1 s read timeout on a loaded host; an uncut connection never breaks).
    let revoked_at = Instant::now();
    let applied = rebuilt
        .apply(allowed(&PolicySet::new(Vec::new()), &members))
        .unwrap();
    assert_eq!((applied.removed, applied.cut), (1, 1), "{applied:?}");
    let broke = rx.recv_timeout(Duration::from_secs(10));
    let took = revoked_at.elapsed();
    assert!(
        matches!(broke, Ok(Err(_))),
        "the connection broke: {broke:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "cut within 5 s, took {took:?}"
    );

    rebuilt.into_hub().destroy().unwrap();
    drop(guard);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Random allow sets over five components: every ordered pair and port is tried; what the set
/// allows connects (or, with no listener, is refused by the peer), everything else fails fast
/// with EHOSTUNREACH. The expectation is computed from the random triples directly, not by
/// osvm-policy, so the test checks the model and the kernel together.
#[test]
fn a_random_matrix_of_allows_and_denies_is_enforced_exactly() {
    if !can_run("random matrix") {
        return;
    }
    let tag = std::process::id();
    let names = ["m0", "m1", "m2", "m3", "m4"];
    let listening = [8080u16, 9090];
    let ports = [8080u16, 9090, 7070]; // nothing listens on 7070
    let (guard, dir, netns, members, hub) = topology("m", &names, &listening);
    for ns in &netns {
        for p in listening {
            listen(ns, p);
        }
    }
    let mut enforcer = osvm_net::enforce::Enforcer::new(hub);

    let mut seed = u64::from(tag) | 1;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..2 {
        let mut rules = Vec::new();
        let mut allow = std::collections::BTreeSet::new();
        let mut deny = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let (a, b, p) = (next(5), next(5), ports[next(3)]);
            if a == b {
                continue;
            }
            let action = if next(4) == 0 {
                deny.insert((a, b, p));
                PolicyAction::Deny
            } else {
                allow.insert((a, b, p));
                PolicyAction::Allow
            };
            rules.push(rule(action, names[a], names[b], &[p]));
        }
        let policy = PolicySet::new(rules);
        enforcer.apply(allowed(&policy, &members)).unwrap();
        for a in 0..5 {
            for b in (0..5).filter(|&b| b != a) {
                for p in ports {
                    let expected = allow.contains(&(a, b, p)) && !deny.contains(&(a, b, p));
                    let target = SocketAddr::from((members[b].block.component_addr(), p));
                    let got = connect(&netns[a], target);
                    let case = format!(
                        "round {round}: {} -> {}:{p} ({allow:?} minus {deny:?})",
                        names[a], names[b]
                    );
                    match (expected, listening.contains(&p), got) {
                        (true, true, Ok(())) => {}
                        (true, false, Err((111, _))) => {}
                        (false, _, Err((113, took))) => {
                            assert!(took < Duration::from_secs(1), "{case}: took {took:?}")
                        }
                        (_, _, got) => panic!("{case}: expected allowed={expected}, got {got:?}"),
                    }
                }
            }
        }
    }
    enforcer.into_hub().destroy().unwrap();
    drop(guard);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A server in `ns` on `port` that answers every line with `name`.
fn named_server(ns: &str, port: u16, name: &'static str) {
    serve(ns, port, move |s| {
        use std::io::{BufRead, Write};
        let mut r = std::io::BufReader::new(&s);
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            if (&s).write_all(format!("{name}\n").as_bytes()).is_err() {
                return;
            }
            line.clear();
        }
    });
}

/// A stable service address follows the map: new connections go to the instance the map names
/// from the moment it changes; a live connection keeps its instance.
#[test]
fn a_service_address_moves_atomically_and_live_connections_keep_their_instance() {
    if !can_run("service map") {
        return;
    }
    let (guard, dir, netns, members, hub) = topology("v", &["client", "v1", "v2"], &[7000]);
    named_server(&netns[1], 7000, "v1");
    named_server(&netns[2], 7000, "v2");
    let policy = PolicySet::new(vec![
        rule(PolicyAction::Allow, "client", "v1", &[7000]),
        rule(PolicyAction::Allow, "client", "v2", &[7000]),
    ]);
    let mut enforcer = osvm_net::enforce::Enforcer::new(hub);
    enforcer.apply(allowed(&policy, &members)).unwrap();
    let service = Ipv4Addr::new(10, 215, 0, 1);
    let (v1, v2) = (
        members[1].block.component_addr(),
        members[2].block.component_addr(),
    );
    enforcer.set_services(vec![(service, v1)]).unwrap();

    // One request on a fresh connection, or on a given one.
    fn ask(s: &TcpStream) -> String {
        use std::io::{BufRead, Write};
        (&*s).write_all(b"who\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
    let client = netns[0].clone();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        enter(&client);
        let target = SocketAddr::from((service, 7000));
        let live = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
        tx.send(ask(&live)).unwrap();
        let fresh = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
        tx.send(ask(&fresh)).unwrap();
        go_rx.recv().unwrap(); // the map changes here
        let fresh = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap();
        tx.send(ask(&fresh)).unwrap();
        tx.send(ask(&live)).unwrap();
    });
    let next = || rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(next(), "v1", "the service address goes to v1");
    assert_eq!(next(), "v1");
    enforcer.set_services(vec![(service, v2)]).unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(
        next(),
        "v2",
        "new connections go to v2 once the map says so"
    );
    assert_eq!(next(), "v1", "the live connection keeps v1");

    let map = enforcer
        .hub()
        .nft(&["list", "map", "inet", "osvm", "services"], None)
        .unwrap();
    assert!(map.contains(&format!("{service} : {v2}")), "{map}");
    enforcer.into_hub().destroy().unwrap();
    drop(guard);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A component with no ready instance: its service address refuses the peers the policy allows
/// at once (ECONNREFUSED, as a port nobody listens on), and the ones it denies exactly as
/// when it is ready (EHOSTUNREACH), so a denied peer cannot tell whether it is up.
#[test]
fn a_waiting_component_refuses_allowed_peers_and_denies_the_rest_as_when_ready() {
    if !can_run("waiting service") {
        return;
    }
    const ECONNREFUSED: i32 = 111;
    const EHOSTUNREACH: i32 = 113;
    let (guard, dir, netns, members, hub) = topology("w", &["client", "intruder", "web"], &[7000]);
    listen(&netns[2], 7000);
    let policy = PolicySet::new(vec![rule(PolicyAction::Allow, "client", "web", &[7000])]);
    let tuples = allowed(&policy, &members);
    let service = Ipv4Addr::new(10, 215, 0, 1);
    let web = members[2].block.component_addr();
    let target = SocketAddr::from((service, 7000));
    hub.own_services((Ipv4Addr::new(10, 215, 0, 0), 16))
        .unwrap();
    let mut enforcer = osvm_net::enforce::Enforcer::new(hub);

    // Waiting: no map entry sends the service address anywhere.
    enforcer.set_waiting(vec![(service, web)]);
    enforcer.apply(tuples.clone()).unwrap();
    assert_eq!(enforcer.waiting(), vec![service]);
    let refused = connect(&netns[0], target);
    assert!(
        matches!(refused, Err((ECONNREFUSED, _))),
        "the allowed client while web waits: {refused:?}"
    );
    let denied = connect(&netns[1], target);
    assert!(
        matches!(denied, Err((EHOSTUNREACH, _))),
        "the intruder while web waits (not ECONNREFUSED, which would tell it web is there \
         and not ready): {denied:?}"
    );

    // Ready: the service address sends to web.
    enforcer.set_waiting(Vec::new());
    enforcer
        .apply_all(tuples, vec![(service, web)], Vec::new(), Vec::new())
        .unwrap();
    assert_eq!(
        connect(&netns[0], target),
        Ok(()),
        "the client once web is ready"
    );
    let denied = connect(&netns[1], target);
    assert!(
        matches!(denied, Err((EHOSTUNREACH, _))),
        "the intruder once web is ready: {denied:?}"
    );
    enforcer.into_hub().destroy().unwrap();
    drop(guard);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Only one SPIFFE ID may pass.
struct Only(String);

impl osvm_net::proxy::Authorize for Only {
    fn authorize(&self, spiffe_id: &str) -> osvm_net::proxy::Decision {
        let allowed = spiffe_id == self.0;
        osvm_net::proxy::Decision {
            allowed,
            rule: if allowed { "allow cli" } else { "default deny" }.into(),
        }
    }
}

/// From `ns`, a TLS connection to `addr` (server name `srv.t.osvm`) that presents the identity
/// in `client` (none when `None`) and trusts `bundle`; sends `ping` and returns what comes back.
fn tls_ping(
    ns: &str,
    addr: SocketAddr,
    bundle: std::path::PathBuf,
    client: Option<std::path::PathBuf>,
) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    in_netns(ns, move || {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&bundle).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some(dir) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(dir.join("cert.pem"))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let tcp =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            "srv.t.osvm".try_into().unwrap(),
        )
        .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).map_err(|e| e.to_string())?;
        Ok(back.to_vec())
    })
}

#[test]
fn mtls_ingress_admits_the_allowed_identity_refuses_the_rest_and_audits_each() {
    use osvm_net::proxy::{Ingress, ProxyHost, server_tls};
    use osvm_policy::AuditLog;
    use std::sync::Arc;
    if !can_run("mtls ingress") {
        return;
    }
    let (_guard, dir, netns, mut members, hub) = topology("tls", &["cli", "srv"], &[8443]);
    let service = Ipv4Addr::new(10, 214, 0, 1);
    members[1].service = Some(service);
    members[1].mtls = true;
    hub.add_local(service).unwrap();
    let policy = PolicySet::new(vec![rule(PolicyAction::Allow, "cli", "srv", &[8443])]);
    hub.nft(
        &["-f", "-"],
        Some(&script(&allowed(&policy, &members), &[])),
    )
    .unwrap();
    serve(&netns[1], 8443, |s| {
        use std::io::{Read, Write};
        let mut b = [0u8; 4];
        if (&s).read_exact(&mut b).is_ok() {
            let _ = (&s).write_all(&b);
        }
    });

    let pki = osvm_pki::Pki::new(&dir.join("pki"), "test.osvm").unwrap();
    pki.init_ca(Duration::from_secs(86_400)).unwrap();
    let ids = dir.join("identities");
    let srv = pki
        .issue_into("t", "srv", Duration::from_secs(3600), &ids)
        .unwrap();
    let cli = pki
        .issue_into("t", "cli", Duration::from_secs(3600), &ids)
        .unwrap();
    let other = pki
        .issue_into("t", "other", Duration::from_secs(3600), &ids)
        .unwrap();
    let stranger_ca = osvm_pki::Pki::new(&dir.join("pki2"), "test.osvm").unwrap();
    stranger_ca.init_ca(Duration::from_secs(86_400)).unwrap();
    let stranger = stranger_ca
        .issue_into(
            "t",
            "cli",
            Duration::from_secs(3600),
            &dir.join("identities2"),
        )
        .unwrap();

    let audit_path = dir.join("audit.log");
    let mut host = ProxyHost::start(Some(&hub.path())).unwrap();
    let upstream = SocketAddr::from((members[1].block.component_addr(), 8443));
    host.add_ingress(Ingress {
        decider: "mtls-ingress srv.t:8443".into(),
        resource: "srv tcp/8443".into(),
        listen: SocketAddr::from((service, 8443)),
        upstream: osvm_net::proxy::Upstream::new(upstream),
        tls: Arc::new(server_tls(&srv, &pki.crl_paths(), "test.osvm")),
        authorize: Arc::new(Only("spiffe://test.osvm/t/cli".into())),
        audit: Some(Arc::new(AuditLog::open(&audit_path).unwrap())),
    })
    .unwrap();
    let front = SocketAddr::from((service, 8443));
    let bundle = srv.join("bundle.pem");

    assert_eq!(
        tls_ping(&netns[0], front, bundle.clone(), Some(cli.clone())),
        Ok(b"ping".to_vec()),
        "the allowed identity passes"
    );
    let refused = |who: Option<std::path::PathBuf>, what: &str| {
        let r = tls_ping(&netns[0], front, bundle.clone(), who);
        assert!(r.is_err(), "{what} must be refused, got {r:?}");
    };
    refused(Some(other.clone()), "an identity policy does not allow");
    refused(None, "a client without a certificate");
    refused(Some(stranger), "a certificate of another CA");
    // The proxy is the only way in: the component's own address is closed to the client.
    assert_eq!(
        connect(&netns[0], upstream).map_err(|(errno, _)| errno),
        Err(113),
        "a direct connection to the mTLS component must be rejected (EHOSTUNREACH)"
    );
    assert_eq!(pki.revoke("cli").unwrap().len(), 1);
    refused(Some(cli), "a revoked certificate");

    // The proxy records a refused handshake after the client has seen its alert: wait for the
    // last one (bounded) before reading the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let records = AuditLog::read(&audit_path).unwrap();
        if records.len() >= 5 || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let find = |pred: &dyn Fn(&osvm_policy::AuditRecord) -> bool, what: &str| {
        assert!(
            records.iter().any(pred),
            "no audit record of {what}: {records:#?}"
        );
    };
    find(
        &|r| {
            r.allowed
                && r.subject.starts_with("spiffe://test.osvm/t/cli from ")
                && r.rule == "allow cli"
        },
        "the allowed client",
    );
    find(
        &|r| {
            !r.allowed
                && r.subject.starts_with("spiffe://test.osvm/t/other ")
                && r.rule == "default deny"
        },
        "the identity policy refused",
    );
    find(
        &|r| !r.allowed && r.rule.contains("handshake failed") && r.rule.contains("certificate"),
        "the missing certificate",
    );
    find(
        &|r| !r.allowed && r.rule.contains("UnknownIssuer"),
        "the other CA",
    );
    find(
        &|r| !r.allowed && r.rule.contains("Revoked"),
        "the revoked certificate",
    );
    assert!(
        records
            .iter()
            .all(|r| r.decider == "mtls-ingress srv.t:8443" && r.resource == "srv tcp/8443"),
        "{records:#?}"
    );
    assert_eq!(host.counters()[0].1.accepted, 1, "{:?}", host.counters());
    assert_eq!(host.counters()[0].1.refused, 4, "{:?}", host.counters());
    drop(host);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Deletes a host interface when dropped, pass or fail.
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Undoes the uplink (host NAT table, forwarding) when dropped, pass or fail.
struct UplinkGuard(Option<osvm_net::uplink::Uplink>);

/// Two hubs on one host (the daemons of two state directories) cannot both route the service
/// pool: the second's publish is refused with the reason, and the first keeps its route (it
/// was replaced, and the first hub's published traffic went into the second hub). Their tags
/// plan the same link-local /30; the second takes the next free one.
#[test]
fn a_second_hub_cannot_take_the_service_pool_of_another() {
    use osvm_net::uplink::Uplink;
    if !can_run("pool") {
        return;
    }
    let _turn = osvm_testkit::host_route_turn();
    let (_ga, dir_a, _, _, hub_a) = topology("pa", &[], &[]);
    let (_gb, dir_b, _, _, hub_b) = topology("pq", &[], &[]);
    let pid = std::process::id();
    // Tags that differ in their lowest bit only: the same /30 planned for both.
    let (tag_a, tag_b) = (
        format!("{:08x}", pid.wrapping_add(0x100) & !1),
        format!("{:08x}", pid.wrapping_add(0x100) | 1),
    );
    assert_eq!(Uplink::planned(&tag_a).net, Uplink::planned(&tag_b).net);
    let mut a = UplinkGuard(Some(Uplink::planned(&tag_a).create(&hub_a).unwrap()));
    let b = UplinkGuard(Some(Uplink::planned(&tag_b).create(&hub_b).unwrap()));
    let (a_net, b_net) = (a.0.as_ref().unwrap().net, b.0.as_ref().unwrap().net);
    assert_eq!(a_net, Uplink::planned(&tag_a).net);
    assert_ne!(a_net, b_net, "two uplinks on one /30");
    let (a_if, b_if) = (
        Uplink::planned(&tag_a).host_if,
        Uplink::planned(&tag_b).host_if,
    );
    let pool = (Ipv4Addr::new(10, 214, 0, 0), 16);
    let route = || {
        let out = Command::new("ip")
            .args(["-o", "route", "show", "exact", "10.214.0.0/16"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    a.0.as_ref().unwrap().publish(&[], &[pool]).unwrap();
    let refused =
        b.0.as_ref()
            .unwrap()
            .publish(&[], &[pool])
            .unwrap_err()
            .to_string();
    assert!(
        refused.contains("routed to another osvm hub") && refused.contains(&a_if),
        "{refused}"
    );
    assert!(route().contains(&format!("dev {a_if} ")), "{}", route());
    // Its own route is the first hub's to publish again.
    a.0.as_ref().unwrap().publish(&[], &[pool]).unwrap();
    // Once the first hub is gone (its route goes with its uplink), the second may.
    drop(a.0.take().map(Uplink::remove));
    b.0.as_ref().unwrap().publish(&[], &[pool]).unwrap();
    assert!(route().contains(&format!("dev {b_if} ")), "{}", route());
    drop(b);
    assert!(route().is_empty(), "{}", route());
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}

impl Drop for UplinkGuard {
    fn drop(&mut self) {
        if let Some(u) = self.0.take() {
            let _ = u.remove();
        }
    }
}

/// Another machine for a test: a namespace joined to the host by a veth on 198.51.100.`block`/30
/// (TEST-NET-2; the host `.block+1`, the machine `.block+2` routing by default through the host),
/// removed with `guard` and the returned link. `None`, after a SKIP, when the host itself uses
/// that network. Each test takes its own block: tests run side by side.
fn outside_machine(
    test: &str,
    guard: &mut Namespaces,
    name: &str,
    block: u8,
) -> Option<(String, LinkGuard)> {
    let host_addrs = Command::new("ip").args(["-br", "addr"]).output().unwrap();
    if String::from_utf8_lossy(&host_addrs.stdout).contains(" 198.51.100.") {
        osvm_testkit::skip(
            test,
            test,
            "the host uses 198.51.100.0/24, the test's outside network",
        );
        return None;
    }
    let outside = format!("osvmt-{name}-{}", std::process::id());
    guard.0.push(outside.clone());
    let host_if = format!("osv{name}{:05x}", std::process::id() & 0xfffff);
    let ip = |args: &[&str]| {
        let ok = Command::new("ip").args(args).status().unwrap().success();
        assert!(ok, "ip {}", args.join(" "));
    };
    let (host_addr, addr) = (
        format!("198.51.100.{}", block + 1),
        format!("198.51.100.{}", block + 2),
    );
    ip(&["netns", "add", &outside]);
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &outside,
    ]);
    let link = LinkGuard(host_if.clone());
    ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
    ip(&["link", "set", &host_if, "up"]);
    ip(&[
        "-n",
        &outside,
        "addr",
        "add",
        &format!("{addr}/30"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", &outside, "link", "set", "eth0", "up"]);
    ip(&["-n", &outside, "route", "add", "default", "via", &host_addr]);
    Some((outside, link))
}

#[test]
fn traffic_leaves_the_host_only_as_cidr_rules_and_network_access_allow() {
    use osvm_net::ruleset::{external, script_with};
    use osvm_net::uplink::Uplink;
    if !can_run("uplink") {
        return;
    }
    let (mut guard, dir, netns, mut members, hub) = topology("up", &["web", "db"], &[8080]);
    // `web` may leave the host as rules say; `db` stays inside whatever they say.
    let web_access = NetworkAccess::Restricted;
    members[0].endpoint = Endpoint::component("web", ComponentKind::Service, web_access);

    // The outside world: another machine at 198.51.100.2.
    let tag = format!("{:08x}", std::process::id());
    let Some((outside, _link)) = outside_machine("uplink", &mut guard, "out", 0) else {
        return;
    };
    listen(&outside, 8080);
    listen(&outside, 9090);

    let uplink = UplinkGuard(Some(Uplink::planned(&tag).create(&hub).unwrap()));
    let policy = PolicySet::new(vec![
        rule(PolicyAction::Allow, "web", "cidr:198.51.100.2/32", &[8080]),
        rule(PolicyAction::Allow, "web", "cidr:198.51.100.0/24", &[]),
        rule(PolicyAction::Deny, "*", "cidr:198.51.100.0/30", &[9090]),
        rule(PolicyAction::Allow, "db", "cidr:198.51.100.0/30", &[8080]),
    ]);
    let leaving = external(&policy, &members);
    hub.nft(
        &["-f", "-"],
        Some(&script_with(
            &allowed(&policy, &members),
            &[],
            &leaving,
            &[],
            &[],
            &[],
        )),
    )
    .unwrap();

    let out = |port: u16| SocketAddr::from(([198, 51, 100, 2], port));
    const EHOSTUNREACH: i32 = 113;
    const ECONNREFUSED: i32 = 111;
    let errno = |ns: &str, port: u16| connect(ns, out(port)).map_err(|(e, _)| e);
    assert_eq!(
        errno(&netns[0], 8080),
        Ok(()),
        "web -> outside:8080 is allowed"
    );
    assert_eq!(
        errno(&netns[0], 9090),
        Err(EHOSTUNREACH),
        "the deny rule overrides web's allow of the whole /24"
    );
    assert_eq!(
        errno(&netns[0], 7070),
        Err(ECONNREFUSED),
        "allowed (every port of the /24) but nothing listens"
    );
    assert_eq!(
        errno(&netns[1], 8080),
        Err(EHOSTUNREACH),
        "db's network access is internal: no rule sends it out"
    );
    // Every decision agrees with the policy model.
    for (i, m) in members.iter().enumerate() {
        for port in [7070, 8080, 9090] {
            let flow = osvm_policy::Flow {
                from: m.endpoint.clone(),
                to: Endpoint::External(out(port).ip()),
                port,
                protocol: Protocol::Tcp,
            };
            let kernel = errno(&netns[i], port);
            assert_eq!(
                kernel != Err(EHOSTUNREACH),
                policy.evaluate(&flow).allowed,
                "{flow}: kernel {kernel:?}"
            );
        }
    }
    drop(uplink);
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(Uplink::planned(&tag).host_if)
            .exists(),
        "the uplink's host end is gone"
    );
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains(&Uplink::planned(&tag).table),
        "the host NAT table is gone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_published_port_is_reached_from_the_host_and_from_outside_exactly_as_policy_allows() {
    use osvm_net::ruleset::{ingress, script_with, services};
    use osvm_net::uplink::{Published, Uplink};
    if !can_run("publish") {
        return;
    }
    let _turn = osvm_testkit::host_route_turn();
    let (mut guard, dir, netns, mut members, hub) = topology("pb", &["web"], &[8080]);
    let service = Ipv4Addr::new(10, 214, 0, 1);
    members[0].service = Some(service);
    listen(&netns[0], 8080);

    // Another machine at 198.51.100.6 (the host is .5 on that link).
    // Not pid + 1: the uplink's /30 comes from the tag's bits above the lowest two, so that
    // would plan the traffic test's /30, and two creates at the same moment may both find it
    // free.
    let tag = format!("{:08x}", std::process::id().wrapping_add(0x300));
    let Some((outside, _link)) = outside_machine("publish", &mut guard, "pb", 4) else {
        return;
    };

    let uplink = UplinkGuard(Some(Uplink::planned(&tag).create(&hub).unwrap()));
    // Free ports on the host for the two published addresses.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (local_port, any_port) = (free(), free());
    let published = [
        Published {
            host: std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, local_port),
            service,
            port: 8080,
        },
        Published {
            host: std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, any_port),
            service,
            port: 8080,
        },
    ];
    uplink
        .0
        .as_ref()
        .unwrap()
        .publish(&published, &[(Ipv4Addr::new(10, 214, 0, 0), 16)])
        .unwrap();
    // With `ready` false, web waits: no map entry, its service address refused.
    let enforce_ready = |rules: Vec<PolicyRule>, ready: bool| {
        let policy = PolicySet::new(rules);
        let to_publish = vec![(members[0].clone(), vec![8080])];
        let (map, waiting) = if ready {
            (services(&members), vec![])
        } else {
            (vec![], vec![(service, members[0].block.component_addr())])
        };
        hub.nft(
            &["-f", "-"],
            Some(&script_with(
                &allowed(&policy, &members),
                &map,
                &[],
                &[],
                &ingress(&policy, &to_publish),
                &waiting,
            )),
        )
        .unwrap();
    };
    let enforce = |rules: Vec<PolicyRule>| enforce_ready(rules, true);
    hub.own_services((Ipv4Addr::new(10, 214, 0, 0), 16))
        .unwrap();
    const EHOSTUNREACH: i32 = 113;
    let from_host = |port: u16| {
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(3),
        )
        .map(|_| ())
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
    };
    let from_outside =
        |port: u16| connect(&outside, SocketAddr::from(([198, 51, 100, 5], port))).map_err(|e| e.0);

    // Default deny: published, but no rule lets anyone in.
    enforce(vec![]);
    assert_eq!(from_outside(any_port), Err(EHOSTUNREACH), "default deny");
    assert_eq!(from_host(local_port), Err(EHOSTUNREACH), "default deny");

    // Only the other machine's address.
    enforce(vec![rule(
        PolicyAction::Allow,
        "cidr:198.51.100.6/32",
        "web",
        &[8080],
    )]);
    assert_eq!(
        from_outside(any_port),
        Ok(()),
        "the allowed network gets in"
    );
    assert_eq!(
        from_host(local_port),
        Err(EHOSTUNREACH),
        "the host's own connections come from its uplink address, which no rule allows"
    );
    assert!(
        from_outside(local_port).is_err(),
        "127.0.0.1:{local_port} is published on the host's loopback only"
    );

    // The world, except a denied network; `*` as a source is components only.
    enforce(vec![
        rule(PolicyAction::Allow, "cidr:0.0.0.0/0", "web", &[8080]),
        rule(PolicyAction::Deny, "cidr:198.51.100.4/30", "web", &[]),
    ]);
    assert_eq!(from_host(local_port), Ok(()), "the world includes the host");
    assert_eq!(
        from_host(any_port),
        Ok(()),
        "0.0.0.0 covers the host's loopback too"
    );
    assert_eq!(
        from_outside(any_port),
        Err(EHOSTUNREACH),
        "a deny overrides the world's allow"
    );
    // The same while web is not ready: the world is refused as by a closed port, the denied
    // network as denied (it must not learn that web is there and starting).
    enforce_ready(
        vec![
            rule(PolicyAction::Allow, "cidr:0.0.0.0/0", "web", &[8080]),
            rule(PolicyAction::Deny, "cidr:198.51.100.4/30", "web", &[]),
        ],
        false,
    );
    assert_eq!(from_host(local_port), Err(111), "waiting: ECONNREFUSED");
    assert_eq!(
        from_outside(any_port),
        Err(EHOSTUNREACH),
        "a denied network while web waits"
    );
    enforce(vec![rule(PolicyAction::Allow, "*", "web", &[8080])]);
    assert_eq!(
        from_outside(any_port),
        Err(EHOSTUNREACH),
        "allow * -> web lets components in, not the world"
    );
    drop(uplink);
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains(&format!("osvm_{tag}")),
        "the host table goes with the uplink"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A host NAT table left by a hub that died with its daemon (its `osvu<tag>` link gone with the
/// hub's namespace) is swept; one whose uplink still exists is left alone. The stale one holds
/// the kind of rule that did harm: output DNAT of a 127.0.0.1 port to a dead service address.
#[test]
fn the_host_tables_of_ended_hubs_are_swept_and_live_ones_kept() {
    if !can_run("uplink_sweep") {
        return;
    }
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    let (dead, live) = (
        format!("{:08x}", seed),
        format!("{:08x}", seed ^ 0x5a5a_5a5a),
    );
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for t in [&self.0, &self.1] {
                let script = format!("table ip osvm_{t} {{}}\ndelete table ip osvm_{t}\n");
                let _ = nft(&script);
            }
            let _ = Command::new("ip")
                .args(["link", "del", &format!("osvu{}", self.1)])
                .output();
        }
    }
    let _cleanup = Cleanup(dead.clone(), live.clone());
    for t in [&dead, &live] {
        nft(&format!(
            "table ip osvm_{t} {{\n chain output {{ type nat hook output priority -100; policy accept; }}\n}}\n\
             add rule ip osvm_{t} output ip daddr 127.0.0.1 tcp dport 1 counter dnat to 10.214.255.254:1\n"
        ))
        .unwrap();
    }
    let o = Command::new("ip")
        .args([
            "link",
            "add",
            &format!("osvu{live}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("osvq{live}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let stale = osvm_net::uplink::stale_tables().unwrap();
    assert!(stale.contains(&format!("osvm_{dead}")), "{stale:?}");
    assert!(!stale.contains(&format!("osvm_{live}")), "{stale:?}");
    let swept = osvm_net::uplink::remove_stale_tables().unwrap();
    assert!(swept.contains(&format!("osvm_{dead}")), "{swept:?}");
    let tables = String::from_utf8(
        Command::new("nft")
            .args(["list", "tables", "ip"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!tables.contains(&format!("osvm_{dead}")), "{tables}");
    assert!(tables.contains(&format!("osvm_{live}")), "{tables}");
}

fn nft(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}
