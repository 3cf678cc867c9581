//! Network policy rules as written in a stack file's `[[policy]]` tables.
//!
//! A rule says that traffic *from* one set of endpoints *to* another, on some ports and one
//! protocol, is allowed or denied. Endpoints are chosen by a [`Selector`]: one component by
//! name, every component of a kind (`type:validator`), everything (`*`), or, as a destination
//! only, an external network (`cidr:10.0.0.0/8`). This module parses and represents rules;
//! enforcement lives in the network crate.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{ComponentKind, UnknownKind};

/// One validated `[[policy]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// Whether matching traffic is allowed or denied.
    pub action: PolicyAction,
    /// Where the traffic comes from.
    pub from: Selector,
    /// Where it goes.
    pub to: Selector,
    /// Destination ports; empty means every port.
    pub ports: Vec<u16>,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// What a rule does with the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    /// Let it through.
    Allow,
    /// Drop it (deny overrides allow).
    Deny,
}

impl PolicyAction {
    /// `allow` or `deny`, as the stack file writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyAction::Allow => "allow",
            PolicyAction::Deny => "deny",
        }
    }
}

/// Transport protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Which endpoints a rule's `from` or `to` matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// `*`: every component (and, as a destination, every address).
    Any,
    /// A component of the stack, by name.
    Component(String),
    /// `type:<kind>`: every component of that kind.
    Kind(ComponentKind),
    /// `cidr:<network>`: addresses outside the stack (destinations only).
    Cidr(Cidr),
    /// `spiffe://<trust domain>/<path>`, or a prefix of one ending in `*`: a peer known by the
    /// SPIFFE ID of its osvm-issued certificate (a client of a published mTLS component, say).
    /// Sources only; only mTLS ingress can judge it (the kernel sees addresses, not identities).
    Identity(String),
}

/// Why a selector string is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Nothing was given.
    #[error(
        "empty selector; expected a component name, \"type:<kind>\", \"cidr:<network>\" or \"*\""
    )]
    Empty,
    /// `type:` names no component kind.
    #[error(transparent)]
    UnknownKind(#[from] UnknownKind),
    /// `cidr:` is not a network.
    #[error(transparent)]
    Cidr(#[from] CidrError),
    /// A `spiffe://` selector that is not a SPIFFE ID (or a prefix of one ending in `*`).
    #[error(
        "`{0}` is not a SPIFFE ID; expected spiffe://<trust domain>/<path>, optionally ending in `*` (spiffe://osvm.local/clients/*)"
    )]
    Identity(String),
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// Parses the syntax only; whether a named component exists is the stack's concern.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            Err(SelectorError::Empty)
        } else if s == "*" {
            Ok(Selector::Any)
        } else if s == Selector::WORLD {
            Ok(Selector::world())
        } else if let Some(kind) = s.strip_prefix("type:") {
            Ok(Selector::Kind(kind.parse()?))
        } else if let Some(net) = s.strip_prefix("cidr:") {
            Ok(Selector::Cidr(net.parse()?))
        } else if let Some(rest) = s.strip_prefix("spiffe://") {
            let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
            let stem = path.strip_suffix('*').unwrap_or(path);
            let fine = |c: char| c.is_ascii_alphanumeric() || "-._/".contains(c);
            if domain.is_empty()
                || path.is_empty()
                || !domain.chars().all(fine)
                || !stem.chars().all(fine)
                || path.starts_with('/')
                || stem.contains("//")
            {
                return Err(SelectorError::Identity(s.to_owned()));
            }
            Ok(Selector::Identity(s.to_owned()))
        } else {
            Ok(Selector::Component(s.to_owned()))
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Component(name) => f.write_str(name),
            Selector::Kind(kind) => write!(f, "type:{kind}"),
            Selector::Cidr(cidr) if *cidr == Selector::world_cidr() => f.write_str(Selector::WORLD),
            Selector::Cidr(cidr) => write!(f, "cidr:{cidr}"),
            Selector::Identity(id) => f.write_str(id),
        }
    }
}

impl Selector {
    /// The name of every IPv4 address outside the stack, as a source (`from = "world"`).
    pub const WORLD: &'static str = "world";

    /// `world`: `cidr:0.0.0.0/0`.
    pub fn world() -> Self {
        Selector::Cidr(Self::world_cidr())
    }

    /// Whether `id` (a SPIFFE ID) is one this `spiffe://` pattern names: equal, or starting
    /// with its part before a trailing `*`.
    pub fn names_identity(pattern: &str, id: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(prefix) => id.starts_with(prefix),
            None => pattern == id,
        }
    }

    fn world_cidr() -> Cidr {
        Cidr {
            addr: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            prefix_len: 0,
        }
    }
}

/// An IP network: an address whose bits past the prefix are zero, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// Number of leading bits that identify the network.
    pub prefix_len: u8,
}

impl Cidr {
    /// True when `ip` is inside this network (always false across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask32(self.prefix_len);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix_len);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A 32-bit mask with the top `len` bits set.
fn mask32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

/// A 128-bit mask with the top `len` bits set.
fn mask128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

/// Why a CIDR string is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/prefix` part.
    #[error("`{0}` has no prefix length; expected a network such as 10.0.0.0/8 or fd00::/8")]
    MissingPrefix(String),
    /// The address part is not an IP address.
    #[error("`{0}` is not an IP address; expected a network such as 10.0.0.0/8 or fd00::/8")]
    BadAddress(String),
    /// The prefix is not a number or is longer than the address.
    #[error("prefix length `{prefix}` is invalid for `{addr}`; expected 0 to {max}")]
    BadPrefix {
        /// The address part.
        addr: String,
        /// The prefix part as written.
        prefix: String,
        /// The longest prefix for the address family.
        max: u8,
    },
    /// Bits past the prefix are set, which usually means a typo.
    #[error("`{input}` has host bits set; did you mean {network}?")]
    HostBits {
        /// The network as written.
        input: String,
        /// The network with the host bits cleared.
        network: String,
    },
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = s
            .split_once('/')
            .ok_or_else(|| CidrError::MissingPrefix(s.to_owned()))?;
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::BadAddress(addr_text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = prefix_text
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max && prefix_text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| CidrError::BadPrefix {
                addr: addr_text.to_owned(),
                prefix: prefix_text.to_owned(),
                max,
            })?;
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix_len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix_len)).into()),
        };
        if network != addr {
            return Err(CidrError::HostBits {
                input: s.to_owned(),
                network: format!("{network}/{prefix_len}"),
            });
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_display_back() {
        for text in [
            "*",
            "web",
            "type:validator",
            "type:mcp_server",
            "cidr:10.0.0.0/8",
            "cidr:fd00::/8",
        ] {
            let sel: Selector = text.parse().unwrap();
            assert_eq!(sel.to_string(), text);
        }
        assert_eq!(
            "type:rpc_node".parse(),
            Ok(Selector::Kind(ComponentKind::RpcNode))
        );
        assert!(matches!(
            "type:vm".parse::<Selector>(),
            Err(SelectorError::UnknownKind(_))
        ));
        assert!(matches!("".parse::<Selector>(), Err(SelectorError::Empty)));
    }

    #[test]
    fn cidrs_are_checked() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(matches!(
            "10.0.0.0".parse::<Cidr>(),
            Err(CidrError::MissingPrefix(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::BadAddress(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::BadPrefix { .. })
        ));
        assert!(matches!(
            "10.0.0.0/+8".parse::<Cidr>(),
            Err(CidrError::BadPrefix { .. })
        ));
        let err = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`10.0.0.1/8` has host bits set; did you mean 10.0.0.0/8?"
        );
    }
}
