//! The engine's side of the hub network (`[stack] network = "hub"`): one hub namespace per
//! state directory, a namespace and address block per component, the ruleset recomputed from
//! every hub stack's policy whenever membership changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use osvm_core::model::NetworkAccess;
use osvm_core::stack::{Stack, StackNetwork};
use osvm_net::enforce::{Applied, Enforcer};
use osvm_net::hub::Hub;
use osvm_net::ipam::{self, Ipam};
use osvm_net::ruleset::{Member, allowed};
use osvm_policy::{Endpoint, PolicySet};

/// The hub and the component namespaces of one state directory.
pub struct NetPlane {
    prefix: String,
    enforcer: Enforcer,
    ipam: Ipam,
}

/// FNV-1a of `s`: a short name for a state directory that stays the same across builds.
fn short_hash(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetPlane {
    /// The hub of `state_dir`, created if it does not exist (a restarted daemon finds it).
    pub fn open(state_dir: &Path) -> Result<Self, String> {
        let prefix = format!("osvm-{:08x}", short_hash(&state_dir.to_string_lossy()));
        let hub_name = format!("{prefix}-hub");
        let hub = if netns_path(&hub_name).exists() {
            Hub::existing(&hub_name)
        } else {
            Hub::create(&hub_name).map_err(|e| e.to_string())?
        };
        let dir = state_dir.join("net");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let (pool, len) = ipam::DEFAULT_POOL;
        let ipam = Ipam::open(&dir.join("ipam.json"), pool, len).map_err(|e| e.to_string())?;
        Ok(Self {
            prefix,
            enforcer: Enforcer::new(hub),
            ipam,
        })
    }

    fn netns_name(&self, index: u32) -> String {
        format!("{}-{index}", self.prefix)
    }

    /// Puts `stack/component` on the hub (address block, namespace, veth) if it is not yet;
    /// returns its namespace's path and whether it was new.
    pub fn join(&mut self, stack: &str, component: &str) -> Result<(PathBuf, bool), String> {
        let block = self
            .ipam
            .allocate(&format!("{stack}/{component}"))
            .map_err(|e| e.to_string())?;
        let name = self.netns_name(block.index);
        let path = netns_path(&name);
        if path.exists() {
            return Ok((path, false));
        }
        ip(&["netns", "add", &name])?;
        if let Err(e) = self.enforcer.hub().attach(&name, &block) {
            let _ = ip(&["netns", "del", &name]);
            return Err(e.to_string());
        }
        Ok((path, true))
    }

    /// `/etc/hosts` lines for the components of `stack` on the hub.
    pub fn hosts(&self, stack: &Stack) -> Vec<(String, String)> {
        stack
            .components
            .iter()
            .filter_map(|c| {
                let block = self.ipam.get(&format!("{}/{}", stack.name, c.name))?;
                Some((
                    block.component_addr().to_string(),
                    format!("{}.{}.osvm {}", c.name, stack.name, c.name),
                ))
            })
            .collect()
    }

    /// Recomputes and applies the ruleset for every hub stack's components that are on the hub.
    /// Policy is per stack: rules never name another stack's components.
    pub fn apply(&mut self, stacks: &BTreeMap<String, Stack>) -> Result<Applied, String> {
        let mut tuples = Vec::new();
        for stack in stacks.values().filter(|s| s.network == StackNetwork::Hub) {
            let members: Vec<Member> = stack
                .components
                .iter()
                .filter_map(|c| {
                    let block = self.ipam.get(&format!("{}/{}", stack.name, c.name))?;
                    Some(Member {
                        endpoint: Endpoint::component(
                            &c.name,
                            c.component_type.kind(),
                            NetworkAccess::Restricted,
                        ),
                        block,
                        listen: c.listen.clone(),
                    })
                })
                .collect();
            tuples.extend(allowed(&PolicySet::new(stack.policies.clone()), &members));
        }
        self.enforcer.apply(tuples).map_err(|e| e.to_string())
    }

    /// Takes `stack/component` off the hub: its namespace goes, its block returns to the pool.
    pub fn leave(&mut self, stack: &str, component: &str) -> Result<(), String> {
        let key = format!("{stack}/{component}");
        if let Some(block) = self.ipam.get(&key) {
            let name = self.netns_name(block.index);
            if netns_path(&name).exists() {
                ip(&["netns", "del", &name])?;
            }
            self.ipam.release(&key).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Removes every component namespace and the hub (the foreground `osvm up` owns them).
    pub fn destroy(mut self) -> Result<(), String> {
        for (key, _) in self.ipam.all() {
            if let Some((stack, component)) = key.split_once('/') {
                self.leave(stack, component)?;
            }
        }
        self.enforcer
            .into_hub()
            .destroy()
            .map_err(|e| e.to_string())
    }
}
