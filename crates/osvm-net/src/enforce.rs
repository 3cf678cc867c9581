//! Keeps the hub's ruleset equal to what policy allows, and cuts what it stops allowing.

use crate::NetError;
use crate::hub::Hub;
use crate::ruleset::{
    Allowed, External, Ingress, Service, Split, script_with, services_script, update_script,
};

/// What one [`Enforcer::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Tuples newly allowed.
    pub added: usize,
    /// Tuples no longer allowed.
    pub removed: usize,
    /// Live connections cut because their tuple was removed.
    pub cut: usize,
}

/// What an nftables counter counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The hub's ruleset and the tuples it holds.
#[derive(Debug)]
pub struct Enforcer {
    hub: Hub,
    current: Vec<Allowed>,
    services: Vec<Service>,
    external: Vec<External>,
    splits: Vec<Split>,
    ingress: Vec<Ingress>,
    waiting: Vec<Service>,
    /// Whether this enforcer has written the table yet: the first apply replaces it whole
    /// (whatever layout an older osvm left), later ones change it in place.
    written: bool,
}

impl Enforcer {
    /// Enforces on `hub`, which holds no osvm ruleset yet (or one to be replaced wholesale).
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            current: Vec::new(),
            services: Vec::new(),
            external: Vec::new(),
            splits: Vec::new(),
            ingress: Vec::new(),
            waiting: Vec::new(),
            written: false,
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The tuples enforced now.
    pub fn current(&self) -> &[Allowed] {
        &self.current
    }

    /// Replaces the ruleset with one allowing exactly `allowed` (one transaction), then flushes
    /// the conntrack entries of every tuple that was allowed and is not any more, so its
    /// established connections stop passing too.
    pub fn apply(&mut self, mut allowed: Vec<Allowed>) -> Result<Applied, NetError> {
        allowed.sort();
        allowed.dedup();
        let make = if self.written {
            update_script
        } else {
            script_with
        };
        self.hub.nft(
            &["-f", "-"],
            Some(&make(
                &allowed,
                &self.services,
                &self.external,
                &self.splits,
                &self.ingress,
                &self.waiting,
            )),
        )?;
        if !self.written {
            self.hub.tune_conntrack()?;
        }
        self.written = true;
        let removed: Vec<Allowed> = self
            .current
            .iter()
            .filter(|a| allowed.binary_search(a).is_err())
            .cloned()
            .collect();
        let added = allowed
            .iter()
            .filter(|a| self.current.binary_search(a).is_err())
            .count();
        self.current = allowed;
        let mut cut = 0;
        for r in &removed {
            let protocol = if r.udp { "udp" } else { "tcp" };
            cut += self
                .hub
                .flush_conntrack(r.saddr, r.daddr, protocol, r.port)?;
        }
        Ok(Applied {
            added,
            removed: removed.len(),
            cut,
        })
    }

    /// [`Enforcer::apply`] with the service map and the `egress` chain replaced too, in the
    /// same transaction.
    pub fn apply_all(
        &mut self,
        allowed: Vec<Allowed>,
        mut services: Vec<Service>,
        external: Vec<External>,
        splits: Vec<Split>,
    ) -> Result<Applied, NetError> {
        services.retain(|(service, _)| !splits.iter().any(|p| p.service == *service));
        services.sort();
        services.dedup_by_key(|(service, _)| *service);
        self.services = services;
        self.external = external;
        self.splits = splits;
        self.apply(allowed)
    }

    /// Sets what the `ingress` chain holds (published ports; see `uplink::Published`) from the
    /// next [`Enforcer::apply`] on.
    pub fn set_ingress(&mut self, ingress: Vec<Ingress>) {
        self.ingress = ingress;
    }

    /// Sets the service addresses whose component has no ready instance, each with the address
    /// its instance will have (new connections the policy allows to them are refused), from
    /// the next [`Enforcer::apply`] on.
    pub fn set_waiting(&mut self, mut waiting: Vec<Service>) {
        waiting.sort();
        waiting.dedup();
        self.waiting = waiting;
    }

    /// The service addresses refused for want of a ready instance.
    pub fn waiting(&self) -> Vec<std::net::Ipv4Addr> {
        self.waiting.iter().map(|(service, _)| *service).collect()
    }

    /// The `ingress` chain's rules enforced (or to be enforced by the next apply).
    pub fn ingress(&self) -> &[Ingress] {
        &self.ingress
    }

    /// The `egress` chain's rules enforced now.
    pub fn external(&self) -> &[External] {
        &self.external
    }

    /// Points every service address at its instance (one transaction; see
    /// [`services_script`]). Live connections keep the instance they had.
    pub fn set_services(&mut self, mut services: Vec<Service>) -> Result<(), NetError> {
        services.sort();
        services.dedup_by_key(|(service, _)| *service);
        self.hub
            .nft(&["-f", "-"], Some(&services_script(&services)))?;
        self.services = services;
        Ok(())
    }

    /// The service map enforced now.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The ruleset as the kernel holds it (`nft -j -s list table inet osvm`: no counters), for comparisons.
    pub fn kernel_ruleset(&self) -> Result<String, NetError> {
        self.hub.nft(
            &["-j", "-s", "list", "table", "inet", crate::ruleset::TABLE],
            None,
        )
    }

    /// `nft -j ARGS` in the hub, parsed.
    fn nft_json(&self, args: &[&str]) -> Result<serde_json::Value, NetError> {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.hub.nft(&full, None)?;
        serde_json::from_str(&text).map_err(|e| NetError::Command {
            command: format!("nft {}", full.join(" ")),
            detail: format!("unreadable JSON: {e}"),
        })
    }

    /// Packets and bytes that matched each allowed tuple since it was last applied.
    pub fn tuple_counters(&self) -> Result<Vec<(Allowed, Counter)>, NetError> {
        let mut out = Vec::new();
        for (set, udp) in [("allow_tcp", false), ("allow_udp", true)] {
            let doc = self.nft_json(&["list", "set", "inet", crate::ruleset::TABLE, set])?;
            let elems = doc["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["set"]["elem"].as_array())
                .flatten();
            for e in elems {
                let (Some(key), counter) =
                    (e["elem"]["val"]["concat"].as_array(), &e["elem"]["counter"])
                else {
                    continue;
                };
                let part = |i: usize| key.get(i).and_then(|v| v.as_str()).unwrap_or_default();
                let (Ok(saddr), Ok(daddr)) = (part(1).parse(), part(2).parse()) else {
                    continue;
                };
                let Some(port) = key.get(3).and_then(|v| v.as_u64()) else {
                    continue;
                };
                out.push((
                    Allowed {
                        iifname: part(0).to_owned(),
                        saddr,
                        daddr,
                        port: port as u16,
                        udp,
                    },
                    Counter {
                        packets: counter["packets"].as_u64().unwrap_or(0),
                        bytes: counter["bytes"].as_u64().unwrap_or(0),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Packets and bytes refused (rejected with admin-prohibited), by chain (`forward`: between
    /// components; `input`: to the hub's own proxies).
    pub fn refused_counters(&self) -> Result<Vec<(String, Counter)>, NetError> {
        let doc = self.nft_json(&["list", "table", "inet", crate::ruleset::TABLE])?;
        let mut out = Vec::new();
        for rule in doc["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
        {
            let exprs = rule["expr"].as_array().cloned().unwrap_or_default();
            if !exprs.iter().any(|x| x.get("reject").is_some()) {
                continue;
            }
            if let Some(c) = exprs.iter().find_map(|x| x.get("counter")) {
                out.push((
                    rule["chain"].as_str().unwrap_or_default().to_owned(),
                    Counter {
                        packets: c["packets"].as_u64().unwrap_or(0),
                        bytes: c["bytes"].as_u64().unwrap_or(0),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// What each rule of the `ingress` chain matched since it was last applied (connection
    /// attempts through published ports), in [`Enforcer::ingress`] order.
    pub fn ingress_counters(&self) -> Result<Vec<(Ingress, Counter)>, NetError> {
        let doc = self.nft_json(&["list", "chain", "inet", crate::ruleset::TABLE, "ingress"])?;
        let counters: Vec<Counter> = doc["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
            .filter_map(|rule| {
                let exprs = rule["expr"].as_array()?;
                let c = exprs.iter().find_map(|x| x.get("counter"))?;
                Some(Counter {
                    packets: c["packets"].as_u64().unwrap_or(0),
                    bytes: c["bytes"].as_u64().unwrap_or(0),
                })
            })
            .collect();
        if counters.len() != self.ingress.len() {
            return Err(NetError::Command {
                command: "nft -j list chain inet osvm ingress".into(),
                detail: format!(
                    "{} counted rules, {} expected: the chain is not what osvm wrote",
                    counters.len(),
                    self.ingress.len()
                ),
            });
        }
        Ok(self.ingress.iter().cloned().zip(counters).collect())
    }

    /// Gives the hub back (to destroy it).
    pub fn into_hub(self) -> Hub {
        self.hub
    }
}
