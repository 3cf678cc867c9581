use super::*;

fn rule(action: PolicyAction, from: &str, to: &str, ports: &[u16]) -> PolicyRule {
    PolicyRule {
        action,
        from: from.parse().unwrap(),
        to: to.parse().unwrap(),
        ports: ports.to_vec(),
        protocol: Protocol::Tcp,
    }
}

fn comp(name: &str, kind: ComponentKind) -> Endpoint {
    Endpoint::component(name, kind, NetworkAccess::Internal)
}

fn flow(from: Endpoint, to: Endpoint, port: u16) -> Flow {
    Flow {
        from,
        to,
        port,
        protocol: Protocol::Tcp,
    }
}

use ComponentKind::{RpcNode, Service, Validator};
use PolicyAction::{Allow, Deny};

#[test]
fn nothing_passes_that_no_rule_allows() {
    let set = PolicySet::new(vec![rule(Allow, "web", "db", &[5432])]);
    let v = set.evaluate(&flow(comp("web", Service), comp("db", Service), 5432));
    assert_eq!(v, Verdict::allow(Reason::Rule { index: 0 }));
    for f in [
        flow(comp("web", Service), comp("db", Service), 5433),
        flow(comp("db", Service), comp("web", Service), 5432),
        flow(comp("other", Service), comp("db", Service), 5432),
    ] {
        assert_eq!(set.evaluate(&f), Verdict::deny(Reason::DefaultDeny), "{f}");
    }
    let udp = Flow {
        protocol: Protocol::Udp,
        ..flow(comp("web", Service), comp("db", Service), 5432)
    };
    assert!(!set.evaluate(&udp).allowed, "tcp rules do not allow udp");
}

#[test]
fn a_deny_overrides_any_allow_whatever_the_order() {
    let set = PolicySet::new(vec![
        rule(Allow, "*", "*", &[]),
        rule(Allow, "rpc", "type:validator", &[8899]),
        rule(Deny, "*", "type:validator", &[]),
    ]);
    let v = set.evaluate(&flow(comp("rpc", RpcNode), comp("val", Validator), 8899));
    assert_eq!(v, Verdict::deny(Reason::Rule { index: 2 }));
    let v = set.evaluate(&flow(comp("rpc", RpcNode), comp("web", Service), 80));
    assert_eq!(v, Verdict::allow(Reason::Rule { index: 0 }));
    assert_eq!(set.describe(2).unwrap(), "deny * -> type:validator tcp/all");
}

#[test]
fn a_star_destination_is_every_component_but_never_the_outside_world() {
    let set = PolicySet::new(vec![rule(Allow, "*", "*", &[])]);
    let out = flow(
        Endpoint::component("web", Service, NetworkAccess::Restricted),
        Endpoint::External("192.0.2.7".parse().unwrap()),
        443,
    );
    assert_eq!(set.evaluate(&out), Verdict::deny(Reason::DefaultDeny));

    let set = PolicySet::new(vec![rule(Allow, "web", "cidr:192.0.2.0/24", &[443])]);
    assert!(set.evaluate(&out).allowed, "a cidr rule lets it out");
    let elsewhere = Flow {
        to: Endpoint::External("198.51.100.1".parse().unwrap()),
        ..out.clone()
    };
    assert!(!set.evaluate(&elsewhere).allowed);
}

#[test]
fn network_access_bounds_what_rules_can_grant() {
    let set = PolicySet::new(vec![
        rule(Allow, "*", "*", &[]),
        rule(Allow, "*", "cidr:0.0.0.0/0", &[]),
        rule(Deny, "*", "cidr:10.0.0.0/8", &[]),
    ]);
    let ext = Endpoint::External("203.0.113.9".parse().unwrap());
    let with = |access| Endpoint::component("a", Service, access);
    // none / vsock_only: no flow at all, in either direction.
    for access in [NetworkAccess::None, NetworkAccess::VsockOnly] {
        let v = set.evaluate(&flow(with(access), comp("b", Service), 80));
        assert_eq!(
            v,
            Verdict::deny(Reason::Access {
                endpoint: "a".into(),
                access
            })
        );
        assert!(
            !set.evaluate(&flow(comp("b", Service), with(access), 80))
                .allowed
        );
    }
    // internal: components only.
    let v = set.evaluate(&flow(with(NetworkAccess::Internal), ext.clone(), 443));
    assert!(
        !v.allowed && matches!(v.reason, Reason::Access { .. }),
        "{v:?}"
    );
    // restricted: what cidr rules allow.
    assert!(
        set.evaluate(&flow(with(NetworkAccess::Restricted), ext.clone(), 443))
            .allowed
    );
    // full: everything outside no rule denies; deny still wins.
    let bare = PolicySet::new(vec![rule(Deny, "*", "cidr:10.0.0.0/8", &[])]);
    let v = bare.evaluate(&flow(with(NetworkAccess::Full), ext, 443));
    assert_eq!(v, Verdict::allow(Reason::FullAccess));
    let private = Endpoint::External("10.1.2.3".parse().unwrap());
    let v = bare.evaluate(&flow(with(NetworkAccess::Full), private, 443));
    assert_eq!(v, Verdict::deny(Reason::Rule { index: 0 }));
}

#[test]
fn rules_from_a_stack_file_are_judged_as_written() {
    let stack = osvm_core::stack::parse(
        r#"
[stack]
name = "demo"

[[component]]
name = "web"
command = "/bin/true"

[[component]]
name = "db"
command = "/bin/true"

[[policy]]
allow = { from = "web", to = "db", ports = [5432] }

[[policy]]
deny = { from = "*", to = "db", ports = [22] }
"#,
        "stack.toml",
    )
    .unwrap();
    let set = PolicySet::new(stack.policies.clone());
    assert!(
        set.evaluate(&flow(comp("web", Service), comp("db", Service), 5432))
            .allowed
    );
    assert!(
        !set.evaluate(&flow(comp("web", Service), comp("db", Service), 22))
            .allowed
    );
}

/// The index and a plain scan of every rule agree on thousands of random rule sets and flows.
#[test]
fn the_compiled_table_and_the_index_decide_exactly_as_a_scan_of_every_rule() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let kinds = [Service, RpcNode, Validator];
    let names = ["a", "b", "c", "d", "e"];
    let kind_of = |n: &str| kinds[n.as_bytes()[0] as usize % kinds.len()];
    let accesses = [
        NetworkAccess::None,
        NetworkAccess::Internal,
        NetworkAccess::Restricted,
        NetworkAccess::Full,
    ];
    for _ in 0..300 {
        let mut rules = Vec::new();
        for _ in 0..next(12) {
            let sel = |k: u64, j: u64, dest: bool| -> String {
                match k {
                    0 => "*".into(),
                    1 => format!("type:{}", kinds[j as usize % kinds.len()]),
                    2 if dest => "cidr:10.0.0.0/8".into(),
                    _ => names[j as usize % names.len()].into(),
                }
            };
            let from = sel(next(4), next(5), false);
            let to = sel(next(4), next(5), true);
            let ports: Vec<u16> = (0..next(3)).map(|_| 80 + next(3) as u16).collect();
            let action = if next(3) == 0 { Deny } else { Allow };
            let mut r = rule(action, &from, &to, &ports);
            if next(4) == 0 {
                r.protocol = Protocol::Udp;
            }
            rules.push(r);
        }
        let set = PolicySet::new(rules);
        for _ in 0..40 {
            let a = names[next(5) as usize];
            let from = Endpoint::component(a, kind_of(a), accesses[next(4) as usize]);
            let to = if next(4) == 0 {
                Endpoint::External(
                    if next(2) == 0 {
                        "10.9.8.7"
                    } else {
                        "192.0.2.1"
                    }
                    .parse()
                    .unwrap(),
                )
            } else {
                let b = names[next(5) as usize];
                Endpoint::component(b, kind_of(b), accesses[next(4) as usize])
            };
            let mut f = flow(from, to, 80 + next(3) as u16);
            if next(4) == 0 {
                f.protocol = Protocol::Udp;
            }
            assert_eq!(
                set.evaluate_by_source_index(&f),
                set.evaluate_by_scan(&f),
                "{f} under {:?}",
                set.rules()
            );
            assert_eq!(
                set.evaluate(&f),
                set.evaluate_by_scan(&f),
                "{f} under {:?}",
                set.rules()
            );
        }
    }
}

#[test]
fn the_audit_log_keeps_one_line_per_decision_naming_the_rule() {
    let dir = std::env::temp_dir().join(format!("osvm-policy-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let set = PolicySet::new(vec![rule(Allow, "web", "db", &[5432])]);
    let log = AuditLog::open(&path).unwrap();
    for port in [5432, 22] {
        let f = flow(comp("web", Service), comp("db", Service), port);
        let v = set.evaluate(&f);
        log.append(&AuditRecord::for_flow("policy", &set, &f, &v))
            .unwrap();
    }
    let records = AuditLog::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(records.len(), 2);
    assert!(records[0].allowed);
    assert_eq!(records[0].rule, "#0 allow web -> db tcp/5432");
    assert_eq!(records[0].resource, "db tcp/5432");
    assert!(!records[1].allowed);
    assert_eq!(records[1].rule, "default deny");
}

/// Judges an external flow the way the kernel does with [`PolicySet::external`]: a matching
/// denial refuses, then a matching allowance passes, else refused.
fn by_grants(set: &PolicySet, from: &Endpoint, ip: IpAddr, port: u16) -> bool {
    let grants = set.external(from);
    let hit = |g: &&ExternalGrant| {
        g.protocol == Protocol::Tcp
            && g.cidr.is_none_or(|c| c.contains(ip))
            && (g.ports.is_empty() || g.ports.contains(&port))
    };
    !grants.iter().filter(|g| !g.allow).any(|g| hit(&g))
        && grants.iter().filter(|g| g.allow).any(|g| hit(&g))
}

#[test]
fn external_grants_decide_exactly_as_evaluate_for_every_access_level() {
    let set = PolicySet::new(vec![
        rule(Allow, "web", "cidr:192.0.2.0/24", &[443]),
        rule(Deny, "*", "cidr:192.0.2.128/25", &[443]),
        rule(Allow, "type:service", "cidr:198.51.100.7/32", &[]),
        rule(Allow, "web", "*", &[80]),
        rule(Deny, "web", "cidr:203.0.113.0/24", &[22]),
    ]);
    let addrs: Vec<IpAddr> = [
        "192.0.2.1",
        "192.0.2.200",
        "198.51.100.7",
        "198.51.100.8",
        "203.0.113.5",
        "10.0.0.1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    for access in [
        NetworkAccess::None,
        NetworkAccess::VsockOnly,
        NetworkAccess::Internal,
        NetworkAccess::Restricted,
        NetworkAccess::Full,
    ] {
        for from in [
            Endpoint::component("web", Service, access),
            Endpoint::component("node", RpcNode, access),
        ] {
            for &ip in &addrs {
                for port in [22, 80, 443, 8080] {
                    let f = flow(from.clone(), Endpoint::External(ip), port);
                    assert_eq!(
                        by_grants(&set, &from, ip, port),
                        set.evaluate(&f).allowed,
                        "{f} with {access:?}: {:?}",
                        set.external(&from)
                    );
                }
            }
        }
    }
}

/// Whether the inbound grants of `to` let `ip` reach `port` (denials first).
fn by_inbound(set: &PolicySet, to: &Endpoint, ip: IpAddr, port: u16) -> bool {
    let grants = set.inbound(to);
    let hits = |g: &&InboundGrant| {
        g.cidr.contains(ip)
            && g.protocol == Protocol::Tcp
            && (g.ports.is_empty() || g.ports.contains(&port))
    };
    !grants.iter().filter(|g| !g.allow).any(|g| hits(&g))
        && grants.iter().filter(|g| g.allow).any(|g| hits(&g))
}

#[test]
fn inbound_grants_decide_exactly_as_evaluate_and_star_is_not_the_world() {
    let set = PolicySet::new(vec![
        rule(Allow, "cidr:0.0.0.0/0", "web", &[8080]),
        rule(Deny, "cidr:203.0.113.0/24", "web", &[]),
        rule(Allow, "cidr:192.0.2.0/24", "type:rpc_node", &[]),
        rule(Allow, "*", "web", &[9090]),
        rule(Allow, "cidr:198.51.100.7/32", "*", &[22]),
    ]);
    let addrs: Vec<IpAddr> = ["192.0.2.1", "198.51.100.7", "203.0.113.5", "10.0.0.1"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    for access in [
        NetworkAccess::None,
        NetworkAccess::VsockOnly,
        NetworkAccess::Internal,
        NetworkAccess::Restricted,
        NetworkAccess::Full,
    ] {
        for to in [
            Endpoint::component("web", Service, access),
            Endpoint::component("node", RpcNode, access),
        ] {
            for &ip in &addrs {
                for port in [22, 80, 8080, 9090] {
                    let f = flow(Endpoint::External(ip), to.clone(), port);
                    assert_eq!(
                        by_inbound(&set, &to, ip, port),
                        set.evaluate(&f).allowed,
                        "{f} with {access:?}: {:?}",
                        set.inbound(&to)
                    );
                    assert_eq!(
                        set.evaluate(&f).allowed,
                        set.evaluate_by_scan(&f).allowed,
                        "{f}"
                    );
                }
            }
        }
    }
    let web = Endpoint::component("web", Service, NetworkAccess::Internal);
    let outside = Endpoint::External("10.0.0.1".parse().unwrap());
    assert!(
        !set.evaluate(&flow(outside, web.clone(), 9090)).allowed,
        "allow * -> web does not open web to the world"
    );
    assert!(set.evaluate(&flow(comp("cli", Service), web, 9090)).allowed);
}

#[test]
fn a_spiffe_source_names_peers_by_identity_exactly_or_by_prefix_and_nothing_else() {
    let set = PolicySet::new(vec![
        rule(Allow, "spiffe://osvm.local/clients/alice", "api", &[8443]),
        rule(Allow, "spiffe://osvm.local/ops/*", "api", &[]),
        rule(Deny, "spiffe://osvm.local/ops/intern", "api", &[]),
        rule(Allow, "*", "api", &[9999]),
        rule(Allow, "world", "api", &[7777]),
    ]);
    let api = comp("api", Service);
    let id = |s: &str| Endpoint::Identity(s.into());
    let cases = [
        (id("spiffe://osvm.local/clients/alice"), 8443, true),
        (id("spiffe://osvm.local/clients/alice"), 8444, false),
        (id("spiffe://osvm.local/clients/alice2"), 8443, false),
        (id("spiffe://osvm.local/clients/bob"), 8443, false),
        (id("spiffe://other.domain/clients/alice"), 8443, false),
        (id("spiffe://osvm.local/ops/carol"), 1, true),
        (id("spiffe://osvm.local/ops/intern"), 1, false),
        // `*` is the stack's components and `world` is addresses: neither names an identity.
        (id("spiffe://osvm.local/clients/bob"), 9999, false),
        (id("spiffe://osvm.local/clients/bob"), 7777, false),
    ];
    for (from, port, allowed) in cases {
        let f = flow(from, api.clone(), port);
        assert_eq!(set.evaluate(&f).allowed, allowed, "{f}");
        assert_eq!(set.evaluate_by_scan(&f), set.evaluate(&f), "{f}");
    }
    // An identity rule opens nothing to components or addresses.
    assert!(
        !set.evaluate(&flow(comp("web", Service), api.clone(), 8443))
            .allowed
    );
    assert!(
        set.inbound(&api).iter().all(|g| g.rule == 4),
        "only world is inbound"
    );
}

#[test]
fn spiffe_selectors_are_checked_for_shape() {
    for good in [
        "spiffe://osvm.local/clients/alice",
        "spiffe://osvm.local/clients/*",
        "spiffe://example.org/a/b-c_d.e",
    ] {
        assert!(
            matches!(good.parse::<Selector>(), Ok(Selector::Identity(_))),
            "{good}"
        );
    }
    for bad in [
        "spiffe://",
        "spiffe://osvm.local",
        "spiffe://osvm.local/",
        "spiffe:///clients/a",
        "spiffe://osvm.local/a*b",
        "spiffe://osvm.local/a b",
        "spiffe://osvm.local//a",
    ] {
        assert!(bad.parse::<Selector>().is_err(), "{bad}");
    }
}
