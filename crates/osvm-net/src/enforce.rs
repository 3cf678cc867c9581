//! Keeps the hub's ruleset equal to what policy allows, and cuts what it stops allowing.

use crate::NetError;
use crate::hub::Hub;
use crate::ruleset::{Allowed, Service, script, services_script};

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

/// The hub's ruleset and the tuples it holds.
#[derive(Debug)]
pub struct Enforcer {
    hub: Hub,
    current: Vec<Allowed>,
    services: Vec<Service>,
}

impl Enforcer {
    /// Enforces on `hub`, which holds no osvm ruleset yet (or one to be replaced wholesale).
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            current: Vec::new(),
            services: Vec::new(),
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
        self.hub
            .nft(&["-f", "-"], Some(&script(&allowed, &self.services)))?;
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

    /// [`Enforcer::apply`] with the service map replaced too, in the same transaction.
    pub fn apply_with_services(
        &mut self,
        allowed: Vec<Allowed>,
        mut services: Vec<Service>,
    ) -> Result<Applied, NetError> {
        services.sort();
        services.dedup_by_key(|(service, _)| *service);
        self.services = services;
        self.apply(allowed)
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

    /// Gives the hub back (to destroy it).
    pub fn into_hub(self) -> Hub {
        self.hub
    }
}
