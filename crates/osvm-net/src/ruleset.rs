//! From policy to nftables: the allowed (ingress interface, source, destination, port) tuples,
//! computed with `osvm-policy`, and the `inet osvm` table that enforces them in the hub.
//!
//! The forward chain drops by default, accepts established and related traffic, accepts new
//! flows whose tuple is in the `allow_tcp` / `allow_udp` set, and rejects everything else with
//! ICMP admin-prohibited, so a refused client fails at once (EHOSTUNREACH) instead of timing
//! out. Keying on the ingress interface means a source address is only good on its own veth.
//! The whole table is replaced in one `nft -f` transaction: packets see the old rules or the
//! new, never none.

use std::fmt::Write;

use osvm_core::stack::Protocol;
use osvm_policy::{Endpoint, Flow, PolicySet};

use crate::hub::hub_ifname;
use crate::ipam::Block;

/// Name of osvm's table in the hub.
pub const TABLE: &str = "osvm";

/// A component as the network sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// The policy's view of it (name, kind, access).
    pub endpoint: Endpoint,
    /// Its address block.
    pub block: Block,
    /// Ports it listens on; a rule without ports allows these.
    pub listen: Vec<u16>,
    /// Its stable service address, if it has one.
    pub service: Option<std::net::Ipv4Addr>,
    /// Whether it is reached only through the mTLS ingress proxy, which listens in the hub on
    /// its service address: allowed TCP flows then end at the service address (the hub's input
    /// chain), never at the component itself, and UDP to it is not forwarded.
    pub mtls: bool,
}

impl Member {
    /// Where allowed flows to this member end: the service address for an mTLS member (the
    /// proxy in the hub), its own address otherwise.
    pub fn tcp_destination(&self) -> std::net::Ipv4Addr {
        match (self.mtls, self.service) {
            (true, Some(service)) => service,
            _ => self.block.component_addr(),
        }
    }
}

/// One allowed tuple.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allowed {
    /// Hub-side interface the traffic must arrive on.
    pub iifname: String,
    /// Source address.
    pub saddr: std::net::Ipv4Addr,
    /// Destination address.
    pub daddr: std::net::Ipv4Addr,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub udp: bool,
}

/// Every tuple the policy allows between `members`: for each ordered pair, each port named by a
/// rule or listened on by the destination, in both protocols (TCP only to an mTLS member),
/// judged by [`PolicySet::evaluate`].
pub fn allowed(policy: &PolicySet, members: &[Member]) -> Vec<Allowed> {
    let mut out: Vec<Allowed> = decided(policy, members)
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// [`allowed`], each tuple with the index of the rule that allowed it (`None` when it was
/// the source's full network access).
pub fn decided(policy: &PolicySet, members: &[Member]) -> Vec<(Allowed, Option<usize>)> {
    let rule_ports: std::collections::BTreeSet<u16> = policy
        .rules()
        .iter()
        .flat_map(|r| r.ports.iter().copied())
        .collect();
    let mut out = Vec::new();
    for from in members {
        for to in members {
            if std::ptr::eq(from, to) {
                continue;
            }
            let mut ports = rule_ports.clone();
            ports.extend(to.listen.iter().copied());
            for port in ports {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    if protocol == Protocol::Udp && to.mtls {
                        continue;
                    }
                    let flow = Flow {
                        from: from.endpoint.clone(),
                        to: to.endpoint.clone(),
                        port,
                        protocol,
                    };
                    let verdict = policy.evaluate(&flow);
                    if verdict.allowed {
                        let rule = match verdict.reason {
                            osvm_policy::Reason::Rule { index } => Some(index),
                            _ => None,
                        };
                        out.push((
                            Allowed {
                                iifname: hub_ifname(&from.block),
                                saddr: from.block.component_addr(),
                                daddr: to.tcp_destination(),
                                port,
                                udp: protocol == Protocol::Udp,
                            },
                            rule,
                        ));
                    }
                }
            }
        }
    }
    out
}

/// One rule of the hub's `egress` chain, for traffic from a member leaving through the uplink.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct External {
    /// Refuse (checked before every allowance) or accept.
    pub deny: bool,
    /// Hub-side interface the traffic must arrive on.
    pub iifname: String,
    /// Source address.
    pub saddr: std::net::Ipv4Addr,
    /// Destination network (`a.b.c.d/n`); `None` is every address.
    pub daddr: Option<String>,
    /// Destination ports; empty is every port.
    pub ports: Vec<u16>,
    /// Protocol.
    pub udp: bool,
    /// The policy rule it comes from (`None`: full network access).
    pub rule: Option<usize>,
}

/// The `egress` chain's rules for `members`, from [`PolicySet::external`]: denials first.
/// IPv6 networks are left out (the hub is IPv4 only), so nothing reaches them.
pub fn external(policy: &PolicySet, members: &[Member]) -> Vec<External> {
    let mut out: Vec<External> = members
        .iter()
        .flat_map(|m| {
            policy
                .external(&m.endpoint)
                .into_iter()
                .filter(|g| g.cidr.is_none_or(|c| c.addr.is_ipv4()))
                .map(|g| External {
                    deny: !g.allow,
                    iifname: hub_ifname(&m.block),
                    saddr: m.block.component_addr(),
                    daddr: g.cidr.map(|c| c.to_string()),
                    ports: g.ports,
                    udp: g.protocol == Protocol::Udp,
                    rule: g.rule,
                })
        })
        .collect();
    // Denials first (`deny: true` sorts after `false`, hence the reverse key).
    out.sort_by(|a, b| b.deny.cmp(&a.deny).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

fn external_rule(e: &External) -> String {
    let proto = if e.udp { "udp" } else { "tcp" };
    let mut r = format!("iifname \"{}\" ip saddr {}", e.iifname, e.saddr);
    if let Some(d) = &e.daddr {
        let _ = write!(r, " ip daddr {d}");
    }
    if e.ports.is_empty() {
        let _ = write!(r, " meta l4proto {proto}");
    } else {
        let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        let _ = write!(r, " {proto} dport {{ {} }}", ports.join(", "));
    }
    r.push_str(if e.deny {
        " counter reject with icmpx admin-prohibited"
    } else {
        " counter accept"
    });
    r
}

/// One rule of the hub's `ingress` chain, for traffic from outside the host's hub arriving
/// through the uplink to a published port (see `uplink::Published`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ingress {
    /// Refuse (checked before every allowance) or accept.
    pub deny: bool,
    /// Source network (`a.b.c.d/n`).
    pub saddr: String,
    /// The component's address (where the service address sends it); for an mTLS component,
    /// its service address (where its proxy listens).
    pub daddr: std::net::Ipv4Addr,
    /// The published port (the component's) the rule covers.
    pub port: u16,
    /// The policy rule it comes from; `None` for the default deny that ends each published
    /// port's rules (so refusals are counted per port).
    pub rule: Option<usize>,
}

/// The `ingress` chain's rules for `published` (each member with the TCP ports it publishes),
/// from [`PolicySet::inbound`]: one rule per policy rule and published port it covers, denials
/// first, then allowances, then a default deny per published port. Every rule counts what it
/// matched: the chain only sees a connection's first packet (established traffic is accepted
/// before it), so the counters count connection attempts. IPv6 sources are left out (the hub
/// is IPv4 only). An mTLS member's published traffic ends at its proxy (its service address,
/// in the hub's input chain), which then judges the client's certificate.
pub fn ingress(policy: &PolicySet, published: &[(Member, Vec<u16>)]) -> Vec<Ingress> {
    let mut out: Vec<Ingress> = published
        .iter()
        .flat_map(|(m, ports)| {
            policy
                .inbound(&m.endpoint)
                .into_iter()
                .filter(|g| g.cidr.addr.is_ipv4() && g.protocol == Protocol::Tcp)
                .flat_map(move |g| {
                    ports
                        .iter()
                        .copied()
                        .filter(move |p| g.ports.is_empty() || g.ports.contains(p))
                        .map(move |port| Ingress {
                            deny: !g.allow,
                            saddr: g.cidr.to_string(),
                            daddr: m.tcp_destination(),
                            port,
                            rule: Some(g.rule),
                        })
                })
        })
        .collect();
    out.sort_by(|a, b| b.deny.cmp(&a.deny).then_with(|| a.cmp(b)));
    out.dedup();
    let mut defaults: Vec<Ingress> = published
        .iter()
        .flat_map(|(m, ports)| {
            ports.iter().map(move |&port| Ingress {
                deny: true,
                saddr: "0.0.0.0/0".into(),
                daddr: m.tcp_destination(),
                port,
                rule: None,
            })
        })
        .collect();
    defaults.sort();
    defaults.dedup();
    out.extend(defaults);
    out
}

fn ingress_rule(i: &Ingress) -> String {
    format!(
        "ip saddr {} ip daddr {} tcp dport {} counter {}",
        i.saddr,
        i.daddr,
        i.port,
        if i.deny {
            "reject with icmpx admin-prohibited"
        } else {
            "accept"
        }
    )
}

/// A service address split between two instances during a canary: `weight` percent of new
/// connections go to `next`, the others to `current`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Split {
    /// The service address.
    pub service: std::net::Ipv4Addr,
    /// The new instance's address.
    pub next: std::net::Ipv4Addr,
    /// The old instance's address.
    pub current: std::net::Ipv4Addr,
    /// Percent of new connections to `next`, 1-99.
    pub weight: u8,
}

/// A stable service address and the instance address it currently sends to.
pub type Service = (std::net::Ipv4Addr, std::net::Ipv4Addr);

/// The service map of `members`: every member with a service address that is not behind the
/// mTLS proxy, to its own address.
pub fn services(members: &[Member]) -> Vec<Service> {
    members
        .iter()
        .filter(|m| !m.mtls)
        .filter_map(|m| Some((m.service?, m.block.component_addr())))
        .collect()
}

/// The elements of the `services` map, as nft syntax (empty when there are none).
fn service_elements(services: &[Service]) -> String {
    services
        .iter()
        .map(|(service, instance)| format!("{service} : {instance}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `nft -f` script that replaces the `services` map's contents in one transaction: new
/// connections to a service address go to the new instance from the next packet on, live ones
/// keep their translation (conntrack holds it).
pub fn services_script(services: &[Service]) -> String {
    let mut s = format!("flush map inet {TABLE} services\n");
    if !services.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {TABLE} services {{ {} }}",
            service_elements(services)
        );
    }
    s
}

/// The `nft -f` script that replaces the table with one enforcing `allowed` and sending each
/// service address to its instance (DNAT before the forward chain, so policy judges the
/// instance's address). The same sets guard the hub's own input chain, where the mTLS proxies
/// listen; anything else addressed to the hub is refused. Every set element counts its packets
/// and bytes, which is what `osvm net show` reports per rule.
pub fn script(allowed: &[Allowed], services: &[Service]) -> String {
    script_with(allowed, services, &[], &[], &[], &[])
}

/// [`script`] with the `egress` chain holding `external` (traffic leaving through the uplink;
/// with no uplink nothing leaves, whatever the chain says), and the service addresses in
/// `splits` divided by weight between two instances (`numgen random`, before the map), and
/// new connections to the service addresses in `waiting` (components with no ready instance,
/// each with the address its instance will have) refused at once (ECONNREFUSED) rather than
/// sent anywhere, for flows the policy allows. A flow it denies is refused as denied
/// (EHOSTUNREACH) whether its destination is ready or not, so a denied peer learns nothing of
/// its state. The table is deleted first: use it to create the table (or to replace one of an older layout);
/// [`update_script`] changes a table in place.
pub fn script_with(
    allowed: &[Allowed],
    services: &[Service],
    external: &[External],
    splits: &[Split],
    ingress: &[Ingress],
    waiting: &[Service],
) -> String {
    // Creating then deleting makes the delete safe when the table does not exist yet.
    format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{}",
        update_script(allowed, services, external, splits, ingress, waiting)
    )
}

/// The `nft -f` script that makes the table hold exactly what [`script_with`] describes
/// without deleting it: the chains and sets are declared (created if missing), emptied and
/// refilled in one transaction. The base chains stay registered throughout, which matters:
/// deleting and re-creating a NAT chain, even in one transaction, lets a new connection slip
/// through un-translated (measured: about one connection in 20,000 got ENETUNREACH while a
/// table was replaced 300 times).
pub fn update_script(
    allowed: &[Allowed],
    services: &[Service],
    external: &[External],
    splits: &[Split],
    ingress: &[Ingress],
    waiting: &[Service],
) -> String {
    let t = format!("inet {TABLE}");
    let uplink = crate::uplink::UPLINK_IF;
    let mut s = String::new();
    let _ = write!(
        s,
        "table {t} {{
\tset allow_tcp {{ type ifname . ipv4_addr . ipv4_addr . inet_service; counter; }}
\tset allow_udp {{ type ifname . ipv4_addr . ipv4_addr . inet_service; counter; }}
\tmap services {{ type ipv4_addr : ipv4_addr; }}
\tset waiting {{ type ipv4_addr; counter; }}
\tset wait_tcp {{ type ifname . ipv4_addr . ipv4_addr . inet_service; }}
\tset wait_udp {{ type ifname . ipv4_addr . ipv4_addr . inet_service; }}
\tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
\tchain forward {{ type filter hook forward priority filter; policy drop; }}
\tchain egress {{ }}
\tchain ingress {{ }}
\tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
\tchain input {{ type filter hook input priority filter; policy drop; }}
}}
"
    );
    for (kind, name) in [
        ("set", "allow_tcp"),
        ("set", "allow_udp"),
        ("map", "services"),
        ("set", "waiting"),
        ("set", "wait_tcp"),
        ("set", "wait_udp"),
    ] {
        let _ = writeln!(s, "flush {kind} {t} {name}");
    }
    for chain in [
        "prerouting",
        "forward",
        "egress",
        "ingress",
        "postrouting",
        "input",
    ] {
        let _ = writeln!(s, "flush chain {t} {chain}");
    }
    for udp in [false, true] {
        let items: Vec<String> = allowed
            .iter()
            .filter(|a| a.udp == udp)
            .map(|a| format!("\"{}\" . {} . {} . {}", a.iifname, a.saddr, a.daddr, a.port))
            .collect();
        if !items.is_empty() {
            let set = if udp { "allow_udp" } else { "allow_tcp" };
            let _ = writeln!(s, "add element {t} {set} {{ {} }}", items.join(", "));
        }
    }
    if !services.is_empty() {
        let _ = writeln!(
            s,
            "add element {t} services {{ {} }}",
            service_elements(services)
        );
    }
    if !waiting.is_empty() {
        let items: Vec<String> = waiting.iter().map(|(w, _)| w.to_string()).collect();
        let _ = writeln!(s, "add element {t} waiting {{ {} }}", items.join(", "));
    }
    // The allowed flows to a waiting component, addressed to its service address (which no
    // map entry translates while it waits). Looked up by instance address: a large stack
    // starting has many tuples and many waiting components at once, on every apply.
    let service_of: std::collections::HashMap<std::net::Ipv4Addr, std::net::Ipv4Addr> = waiting
        .iter()
        .map(|(service, instance)| (*instance, *service))
        .collect();
    for udp in [false, true] {
        let items: Vec<String> = allowed
            .iter()
            .filter(|a| a.udp == udp)
            .filter_map(|a| {
                let service = service_of.get(&a.daddr)?;
                Some(format!(
                    "\"{}\" . {} . {service} . {}",
                    a.iifname, a.saddr, a.port
                ))
            })
            .collect();
        if !items.is_empty() {
            let set = if udp { "wait_udp" } else { "wait_tcp" };
            let _ = writeln!(s, "add element {t} {set} {{ {} }}", items.join(", "));
        }
    }
    let mut rule = |chain: &str, text: &str| {
        let _ = writeln!(s, "add rule {t} {chain} {text}");
    };
    for p in splits {
        rule(
            "prerouting",
            &format!(
                "ip daddr {} dnat ip to numgen random mod 100 map {{ 0-{} : {}, {}-99 : {} }}",
                p.service,
                p.weight - 1,
                p.next,
                p.weight,
                p.current
            ),
        );
    }
    rule("prerouting", "dnat ip to ip daddr map @services");
    rule("forward", "ct state established,related accept");
    rule(
        "forward",
        "iifname . ip saddr . ip daddr . tcp dport @allow_tcp counter accept",
    );
    rule(
        "forward",
        "iifname . ip saddr . ip daddr . udp dport @allow_udp counter accept",
    );
    rule("forward", &format!("iifname \"{uplink}\" jump ingress"));
    rule("forward", &format!("oifname \"{uplink}\" jump egress"));
    rule("forward", "counter reject with icmpx admin-prohibited");
    for e in external {
        rule("egress", &external_rule(e));
    }
    for i in ingress {
        rule("ingress", &ingress_rule(i));
    }
    // Published traffic to a waiting component (untranslated: still addressed to its service
    // address): the same rules in the same order, an allowance refusing it as not listening.
    // Uncounted, so the counted rules stay one per `ingress` entry.
    for i in ingress {
        if let Some(service) = service_of.get(&i.daddr) {
            rule(
                "ingress",
                &format!(
                    "ip saddr {} ip daddr {service} tcp dport {} reject with icmpx {}",
                    i.saddr,
                    i.port,
                    if i.deny {
                        "admin-prohibited"
                    } else {
                        "port-unreachable"
                    }
                ),
            );
        }
    }
    rule("postrouting", &format!("oifname \"{uplink}\" masquerade"));
    rule("input", "iifname \"lo\" accept");
    rule("input", "ct state established,related accept");
    // A waiting component's service address is untranslated, so local to the hub (see
    // `Hub::own_services`): the flows policy allows are refused as not listening; the rest
    // fall to the refusal below, as when it is ready.
    rule(
        "input",
        "ip daddr @waiting iifname . ip saddr . ip daddr . tcp dport @wait_tcp reject with icmpx port-unreachable",
    );
    rule(
        "input",
        "ip daddr @waiting iifname . ip saddr . ip daddr . udp dport @wait_udp reject with icmpx port-unreachable",
    );
    rule(
        "input",
        "iifname . ip saddr . ip daddr . tcp dport @allow_tcp accept",
    );
    // Published ports of mTLS components end at their proxies, here.
    rule("input", &format!("iifname \"{uplink}\" jump ingress"));
    rule("input", "counter reject with icmpx admin-prohibited");
    s
}
