//! The hub namespace and the veth pairs that join component namespaces to it.
//!
//! The hub routes between components (`net.ipv4.ip_forward = 1` in the hub only) and holds the
//! nftables table; components get a default route through their veth's hub end. Namespaces are
//! named `ip netns` namespaces (`/run/netns/<name>`), so `ip -n` and `nft` reach them.

use std::net::Ipv4Addr;

use crate::ipam::Block;
use crate::{NetError, run};

/// A routing hub namespace.
#[derive(Debug)]
pub struct Hub {
    name: String,
}

/// The hub-side interface name of block `index`: `osvm<index>` (fits IFNAMSIZ for any pool).
pub fn hub_ifname(block: &Block) -> String {
    format!("osvm{}", block.index)
}

impl Hub {
    /// Creates the hub namespace `name` with forwarding on and no ICMP rate limit; fails if it
    /// exists. A failed step removes the namespace again: a half-made hub (forwarding off) is
    /// never found and taken for a whole one later.
    pub fn create(name: &str) -> Result<Self, NetError> {
        run("ip", &["netns", "add", name], None)?;
        Self::configure(name).inspect_err(|_| {
            let _ = run("ip", &["netns", "del", name], None);
        })
    }

    fn configure(name: &str) -> Result<Self, NetError> {
        let hub = Self { name: name.into() };
        run("ip", &["-n", name, "link", "set", "lo", "up"], None)?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                // Refusals are ICMP admin-prohibited. The kernel's per-peer ICMP rate limit (a
                // burst of 6, then 1/s) would turn the 7th refusal to one component into a
                // 1 s wait (a SYN retransmission), and its per-namespace limit (a burst of 50)
                // the 51st refusal of a burst. The hub only sends ICMP to its own components;
                // what bounds it is the rate of their own SYNs.
                "net.ipv4.icmp_ratelimit=0",
                "net.ipv4.icmp_msgs_burst=10000",
                "net.ipv4.icmp_msgs_per_sec=100000",
            ],
            None,
        )?;

        Ok(hub)
    }

    /// Ends conntrack's TIME_WAIT and CLOSE states in the hub after a second. A new connection
    /// from a source port whose last connection's entry is still in one of them may reopen
    /// that entry in place, keeping its DNAT binding: after a hot-swap that sends it to the
    /// old instance, which is about to be stopped (seen once in about 30,000 requests at
    /// 700/s, which cycles the ephemeral ports in 40 s). The hub only routes, so nothing
    /// needs those states longer. Call it once the ruleset (which loads conntrack) is in.
    pub fn tune_conntrack(&self) -> Result<(), NetError> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sysctl",
                "-qw",
                "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
                "net.netfilter.nf_conntrack_tcp_timeout_close=1",
            ],
            None,
        )
        .map(|_| ())
    }

    /// The hub namespace `name`, which exists already (after a daemon restart).
    pub fn existing(name: &str) -> Self {
        Self { name: name.into() }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Joins the named namespace `netns` to the hub on `block`: veth `osvm<n>` in the hub
    /// (`.1/30`), `eth0` in the component (`.2/30`, default route via `.1`).
    pub fn attach(&self, netns: &str, block: &Block) -> Result<(), NetError> {
        let hub_if = hub_ifname(block);
        let hub_cidr = format!("{}/30", block.hub_addr());
        let comp_cidr = format!("{}/30", block.component_addr());
        let via = block.hub_addr().to_string();
        let hub = self.name.as_str();
        run(
            "ip",
            &[
                "-n", hub, "link", "add", &hub_if, "type", "veth", "peer", "name", "eth0", "netns",
                netns,
            ],
            None,
        )?;
        run(
            "ip",
            &["-n", hub, "addr", "add", &hub_cidr, "dev", &hub_if],
            None,
        )?;
        run("ip", &["-n", hub, "link", "set", &hub_if, "up"], None)?;
        run(
            "ip",
            &["-n", netns, "addr", "add", &comp_cidr, "dev", "eth0"],
            None,
        )?;
        run("ip", &["-n", netns, "link", "set", "eth0", "up"], None)?;
        run("ip", &["-n", netns, "link", "set", "lo", "up"], None)?;
        run(
            "ip",
            &["-n", netns, "route", "add", "default", "via", &via],
            None,
        )?;
        Ok(())
    }

    /// Removes block's veth pair (both ends go with either).
    pub fn detach(&self, block: &Block) -> Result<(), NetError> {
        run(
            "ip",
            &["-n", &self.name, "link", "del", &hub_ifname(block)],
            None,
        )
        .map(|_| ())
    }

    /// Puts `addr` on the hub's loopback (a service address a proxy in the hub listens on);
    /// already there is fine.
    pub fn add_local(&self, addr: Ipv4Addr) -> Result<(), NetError> {
        let cidr = format!("{addr}/32");
        match run(
            "ip",
            &["-n", &self.name, "addr", "add", &cidr, "dev", "lo"],
            None,
        ) {
            Err(NetError::Command { detail, .. }) if detail.contains("File exists") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Takes `addr` off the hub's loopback; absent is fine.
    pub fn del_local(&self, addr: Ipv4Addr) -> Result<(), NetError> {
        let cidr = format!("{addr}/32");
        match run(
            "ip",
            &["-n", &self.name, "addr", "del", &cidr, "dev", "lo"],
            None,
        ) {
            Err(NetError::Command { detail, .. })
                if detail.contains("Cannot assign") || detail.contains("not found") =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Makes every address of `pool` (the service addresses, `(network, prefix length)`)
    /// local to the hub. A service address the `services` map translates still goes to its
    /// instance (the translation comes before routing); one it does not (a component with no
    /// ready instance, or none at all) ends in the hub's input chain, where the ruleset
    /// refuses it as policy says, instead of failing in routing (ENETUNREACH, the same for
    /// every peer) or leaving by the default route. Idempotent.
    pub fn own_services(&self, pool: (Ipv4Addr, u8)) -> Result<(), NetError> {
        let cidr = format!("{}/{}", pool.0, pool.1);
        run(
            "ip",
            &[
                "-n", &self.name, "route", "replace", "local", &cidr, "dev", "lo",
            ],
            None,
        )
        .map(|_| ())
    }

    /// The path of the hub's namespace (for `setns`).
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.name)
    }

    /// Runs `nft` in the hub with `script` as its input (one transaction).
    pub fn nft(&self, args: &[&str], script: Option<&str>) -> Result<String, NetError> {
        let mut full = vec!["netns", "exec", self.name.as_str(), "nft"];
        full.extend_from_slice(args);
        run("ip", &full, script)
    }

    /// Deletes the conntrack entries of `protocol` flows from `src` to `dst:port`, so a revoked
    /// allow cuts the connections it let in; returns how many there were. Matched on the reply
    /// direction (`dst:port` answering `src`), which is the same for a flow addressed to `dst`
    /// itself and for one addressed to a service address that DNAT sent to `dst`. Needs
    /// `conntrack`.
    pub fn flush_conntrack(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: &str,
        port: u16,
    ) -> Result<usize, NetError> {
        let (s, d, p) = (src.to_string(), dst.to_string(), port.to_string());
        self.conntrack(&[
            "-D",
            "-p",
            protocol,
            "--reply-src",
            &d,
            "--reply-dst",
            &s,
            "--reply-port-src",
            &p,
        ])
    }

    /// Runs `conntrack ARGS` in the hub; returns how many entries it printed (one line each).
    fn conntrack(&self, args: &[&str]) -> Result<usize, NetError> {
        let mut full = vec!["netns", "exec", self.name.as_str(), "conntrack"];
        full.extend_from_slice(args);
        match run("ip", &full, None) {
            Ok(out) => Ok(out.lines().filter(|l| !l.trim().is_empty()).count()),
            // conntrack exits 1 when nothing matched ("0 flow entries have been deleted").
            Err(NetError::Command { detail, .. }) if detail.contains("0 flow entries") => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// How many established TCP connections the hub tracks whose reply comes from `addr` (an
    /// instance's connections, whether addressed to it or to its service address).
    pub fn count_conntrack(&self, addr: Ipv4Addr) -> Result<usize, NetError> {
        let a = addr.to_string();
        self.conntrack(&[
            "-L",
            "-p",
            "tcp",
            "--reply-src",
            &a,
            "--state",
            "ESTABLISHED",
        ])
    }

    /// Deletes the hub namespace (and every veth in it).
    pub fn destroy(self) -> Result<(), NetError> {
        run("ip", &["netns", "del", &self.name], None).map(|_| ())
    }
}
