//! The hub's way out of the host, created only when some component may reach an external
//! network (`cidr:` rules with `network_access = "restricted"`, or `full` access).
//!
//! A veth pair joins the hub (`uplink`) to the host namespace (`osvu<tag>`) on a link-local
//! /30; the hub routes by default through it and masquerades what leaves, so the host sees one
//! address per hub and needs no route back to the component pool. The host forwards and
//! masquerades that address on its way out (`table ip osvm_<tag>`), and IPv4 forwarding is
//! turned on in the host namespace; both are undone by [`Uplink::remove`]. What may leave is
//! decided in the hub's `egress` chain (see `ruleset`), not here.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::hub::Hub;
use crate::{NetError, run};

/// The hub's end of the uplink.
pub const UPLINK_IF: &str = "uplink";

/// A hub's uplink, as recorded in its state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    /// The host's end of the veth pair.
    pub host_if: String,
    /// The /30: `.1` on the host, `.2` in the hub.
    pub net: Ipv4Addr,
    /// The host's nftables table (family `ip`) that masquerades the hub's traffic.
    pub table: String,
    /// `net.ipv4.ip_forward` in the host namespace before the uplink turned it on (restored
    /// by [`Uplink::remove`] unless another osvm uplink still needs it), or `None` if it was on
    /// already.
    pub forwarding_was: Option<String>,
}

fn host_addr(net: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net) + 1)
}

/// Every IPv4 address on the host namespace's links.
fn host_ipv4_addrs() -> Result<Vec<Ipv4Addr>, NetError> {
    let out = run("ip", &["-o", "-4", "addr", "show"], None)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// `planned`, or the next link-local /30 after it (wrapping within `169.254.1.0` to
/// `169.254.253.255`, as [`Uplink::planned`] chooses) that holds none of `taken`.
fn free_net(planned: Ipv4Addr, taken: &[Ipv4Addr]) -> Result<Ipv4Addr, NetError> {
    let (first, last) = (
        u32::from(Ipv4Addr::new(169, 254, 1, 0)),
        u32::from(Ipv4Addr::new(169, 254, 253, 252)),
    );
    let taken: std::collections::HashSet<u32> = taken.iter().map(|a| u32::from(*a) & !3).collect();
    let mut net = u32::from(planned) & !3;
    for _ in 0..=(last - first) / 4 {
        if !taken.contains(&net) {
            return Ok(Ipv4Addr::from(net));
        }
        net = if net >= last { first } else { net + 4 };
    }
    Err(NetError::Command {
        command: "ip -o -4 addr show".into(),
        detail: "no free link-local /30 for an uplink in 169.254.1.0/24-169.254.253.0/24".into(),
    })
}

fn hub_addr(net: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net) + 2)
}

const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";

/// A component's port published on the host: connections to `host` (`0.0.0.0`: every local
/// address) go to `service:port`, the component's service address on the hub.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Published {
    /// The host address and port.
    pub host: std::net::SocketAddrV4,
    /// The component's service address.
    pub service: Ipv4Addr,
    /// The component's port.
    pub port: u16,
}

/// The host table's rules, as an `nft -f` script that changes the table in place (declared,
/// its chains emptied and refilled in one transaction; with `fresh`, any older table of that
/// name is deleted first): the hub's masquerade on its way out, then for each published port
/// a DNAT to its service address, both for traffic arriving from elsewhere (prerouting) and for
/// the host's own (output). Connections from the host's loopback leave through the uplink
/// masqueraded as the host's uplink address, which the hub sees as their source. The base
/// chains stay registered across updates: re-creating a NAT chain lets a new connection slip
/// through untranslated (see `ruleset::update_script`).
fn host_table(
    table: &str,
    net: Ipv4Addr,
    dev: &str,
    published: &[Published],
    fresh: bool,
) -> String {
    let mut s = String::new();
    if fresh {
        s.push_str(&format!("table ip {table} {{}}\ndelete table ip {table}\n"));
    }
    s.push_str(&format!(
        "table ip {table} {{\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         \tchain output {{ type nat hook output priority -100; policy accept; }}\n}}\n"
    ));
    for chain in ["postrouting", "prerouting", "output"] {
        s.push_str(&format!("flush chain ip {table} {chain}\n"));
    }
    s.push_str(&format!(
        "add rule ip {table} postrouting ip saddr {net}/30 oifname != \"{dev}\" masquerade\n\
         add rule ip {table} postrouting oifname \"{dev}\" ip saddr 127.0.0.0/8 masquerade\n"
    ));
    for p in published {
        let matches = if p.host.ip().is_unspecified() {
            "fib daddr type local".to_owned()
        } else {
            format!("ip daddr {}", p.host.ip())
        };
        for chain in ["prerouting", "output"] {
            s.push_str(&format!(
                "add rule ip {table} {chain} {matches} tcp dport {} counter dnat to {}:{}\n",
                p.host.port(),
                p.service,
                p.port
            ));
        }
    }
    s
}

impl Uplink {
    /// The uplink a hub tagged `tag` (8 hex digits) would get: its names and a link-local /30
    /// derived from the tag.
    pub fn planned(tag: &str) -> Self {
        let h = u32::from_str_radix(tag, 16).unwrap_or(0);
        let net = Ipv4Addr::new(169, 254, 1 + ((h >> 8) % 253) as u8, (h & 0xfc) as u8);
        Self {
            host_if: format!("osvu{tag}"),
            net,
            table: format!("osvm_{tag}"),
            forwarding_was: None,
        }
    }

    /// Builds it for `hub`: the veth pair, addresses, the hub's default route, the host's NAT
    /// table, and forwarding in the host namespace. Undone as far as it got when a step fails.
    pub fn create(mut self, hub: &Hub) -> Result<Self, NetError> {
        // Another hub's uplink (another state directory) may hold the planned /30: two links
        // on one /30 would send one hub's replies into the other. The /30 taken is recorded
        // with the rest of the uplink.
        self.net = free_net(self.net, &host_ipv4_addrs()?)?;
        let (host_cidr, hub_cidr) = (
            format!("{}/30", host_addr(self.net)),
            format!("{}/30", hub_addr(self.net)),
        );
        run(
            "ip",
            &[
                "link",
                "add",
                &self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                UPLINK_IF,
                "netns",
                hub.name(),
            ],
            None,
        )?;
        let steps = || -> Result<(), NetError> {
            run(
                "ip",
                &["addr", "add", &host_cidr, "dev", &self.host_if],
                None,
            )?;
            run("ip", &["link", "set", &self.host_if, "up"], None)?;
            let n = hub.name();
            run(
                "ip",
                &["-n", n, "addr", "add", &hub_cidr, "dev", UPLINK_IF],
                None,
            )?;
            run("ip", &["-n", n, "link", "set", UPLINK_IF, "up"], None)?;
            let via = host_addr(self.net).to_string();
            run(
                "ip",
                &["-n", n, "route", "add", "default", "via", &via],
                None,
            )?;
            let script = host_table(&self.table, self.net, &self.host_if, &[], true);
            run("nft", &["-f", "-"], Some(&script))?;
            Ok(())
        };
        if let Err(e) = steps() {
            let _ = self.clone().remove();
            return Err(e);
        }
        let before = std::fs::read_to_string(FORWARDING)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if before != "1" {
            if let Err(e) = std::fs::write(FORWARDING, "1") {
                let _ = self.clone().remove();
                return Err(NetError::Command {
                    command: format!("write 1 to {FORWARDING}"),
                    detail: e.to_string(),
                });
            }
            self.forwarding_was = Some(before);
        }
        Ok(self)
    }

    /// Publishes exactly `published` on the host (replacing what was published): the host
    /// routes `pools` (the hub's service addresses) through the uplink, accepts loopback
    /// sources on it (`route_localnet`, so `127.0.0.1:P` works from the host), and DNATs each
    /// published address to its service address. Who may connect is the hub's `ingress` chain's
    /// decision (see `ruleset::ingress`), not the host's.
    pub fn publish(
        &self,
        published: &[Published],
        pools: &[(Ipv4Addr, u8)],
    ) -> Result<(), NetError> {
        let via = hub_addr(self.net).to_string();
        for (net, len) in pools {
            // Replacing another hub's route would send its published traffic into this hub,
            // to whatever has the same service address here.
            let pool = format!("{net}/{len}");
            let holder = route_device(&pool)?;
            match holder.as_deref() {
                Some(dev) if dev != self.host_if && dev.starts_with("osvu") => {
                    return Err(NetError::Taken(format!(
                        "the service pool {pool} is routed to another osvm hub on this host \
                         (through {dev}: the daemon of another state directory publishes \
                         ports); publishing here too would take that hub's traffic. One daemon \
                         per host can publish ports: unpublish the other's, or stop it"
                    )));
                }
                Some(dev) if dev != self.host_if => {
                    return Err(NetError::Taken(format!(
                        "the host already routes {pool} through {dev}, which is not osvm's; \
                         publishing would take that route over"
                    )));
                }
                _ => {}
            }
            // `add` when the route is free: of two hubs publishing at once, one gets it and the
            // other's `add` fails (the route exists) instead of replacing it.
            let verb = if holder.is_some() { "replace" } else { "add" };
            run(
                "ip",
                &["route", verb, &pool, "via", &via, "dev", &self.host_if],
                None,
            )?;
        }
        let localnet = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", self.host_if);
        std::fs::write(&localnet, "1").map_err(|e| NetError::Command {
            command: format!("write 1 to {localnet}"),
            detail: e.to_string(),
        })?;
        let script = host_table(&self.table, self.net, &self.host_if, published, false);
        run("nft", &["-f", "-"], Some(&script))?;
        Ok(())
    }

    /// Removes the host's end (the hub's goes with it), the NAT table, and restores forwarding;
    /// parts already gone are fine.
    pub fn remove(self) -> Result<(), NetError> {
        if Path::new("/sys/class/net").join(&self.host_if).exists() {
            run("ip", &["link", "del", &self.host_if], None)?;
        }
        let script = format!("table ip {t} {{}}\ndelete table ip {t}\n", t = self.table);
        run("nft", &["-f", "-"], Some(&script))?;
        // Another hub's uplink (another osvm state directory on this host) still routes through
        // the host: turning forwarding off under it would black-hole its published ports. Then
        // forwarding stays on; the last uplink that turned it on restores it only when alone.
        let others = std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.filter_map(Result::ok).any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("osvu") && name != self.host_if.as_str()
                })
            })
            .unwrap_or(false);
        if let Some(before) = self.forwarding_was.as_ref().filter(|_| !others) {
            std::fs::write(FORWARDING, before).map_err(|e| NetError::Command {
                command: format!("write {before} to {FORWARDING}"),
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// Host NAT tables of uplinks that no longer exist: `table ip osvm_<tag>` whose host end
/// `osvu<tag>` is gone. The veth pair ends with the hub's namespace, so such a table belongs to
/// a hub that was torn down without its daemon (`kill -9`, a crash) and can only send traffic
/// nowhere: its output chain still DNATs the host's own connections to published ports (to
/// 127.0.0.1 too) towards service addresses no hub answers for.
pub fn stale_tables() -> Result<Vec<String>, NetError> {
    let listed = run("nft", &["list", "tables", "ip"], None)?;
    Ok(listed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table ip "))
        .filter_map(|name| {
            let tag = name.strip_prefix("osvm_")?;
            let ours = tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit());
            let gone = !Path::new("/sys/class/net")
                .join(format!("osvu{tag}"))
                .exists();
            (ours && gone).then(|| name.to_owned())
        })
        .collect())
}

/// Deletes the tables [`stale_tables`] finds; returns their names.
pub fn remove_stale_tables() -> Result<Vec<String>, NetError> {
    let stale = stale_tables()?;
    for name in &stale {
        // Gone already is fine (its own daemon may be removing it right now).
        let script = format!("table ip {name} {{}}\ndelete table ip {name}\n");
        run("nft", &["-f", "-"], Some(&script))?;
    }
    Ok(stale)
}

/// The device of the host's route for exactly `pool` (`a.b.c.d/len`), if there is one.
fn route_device(pool: &str) -> Result<Option<String>, NetError> {
    let out = run("ip", &["-o", "route", "show", "exact", pool], None)?;
    Ok(out.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "dev")?;
        words.next().map(str::to_owned)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_takes_the_first_free_link_local_net_from_the_planned_one_on() {
        let planned = Ipv4Addr::new(169, 254, 7, 8);
        assert_eq!(free_net(planned, &[]).unwrap(), planned);
        // Any address of a /30 takes it: the host's .1 of another uplink, or a stray .3.
        let taken = [
            Ipv4Addr::new(169, 254, 7, 9),
            Ipv4Addr::new(169, 254, 7, 15),
        ];
        assert_eq!(
            free_net(planned, &taken).unwrap(),
            Ipv4Addr::new(169, 254, 7, 16)
        );
        // The last /30 wraps to the first.
        let last = Ipv4Addr::new(169, 254, 253, 252);
        assert_eq!(
            free_net(last, &[Ipv4Addr::new(169, 254, 253, 253)]).unwrap(),
            Ipv4Addr::new(169, 254, 1, 0)
        );
        // None free: an error, not a shared /30.
        let all: Vec<Ipv4Addr> = (u32::from(Ipv4Addr::new(169, 254, 1, 0))
            ..=u32::from(Ipv4Addr::new(169, 254, 253, 252)))
            .step_by(4)
            .map(|n| Ipv4Addr::from(n + 1))
            .collect();
        assert!(free_net(planned, &all).is_err());
    }
}
