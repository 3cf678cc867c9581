//! The engine's side of the hub network (`[stack] network = "hub"`): one hub namespace per
//! state directory, a namespace and address block per component, a stable service address per
//! component (its name resolves to it), the ruleset recomputed from every hub stack's policy
//! whenever membership or policy changes, and an mTLS ingress proxy in the hub for every
//! listen port of a component marked `mtls = true`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use osvm_core::launch::TlsEgress;
use osvm_core::stack::{Protocol, Stack, StackNetwork};
use osvm_net::NetError;
use osvm_net::enforce::{Applied, Counter, Enforcer};
use osvm_net::hub::Hub;
use osvm_net::ipam::{self, Block, Ipam};
use osvm_net::proxy::{
    Authorize, CountersSnapshot, Decision, Egress, Ingress, ProxyHost, Upstream, client_tls,
    server_tls,
};
use osvm_net::ruleset::{Member, decided, external, services};
use osvm_net::uplink::{Published, Uplink};
use osvm_policy::{AuditLog, AuditRecord, Endpoint, Flow, PolicySet};

/// What can go wrong on the hub network.
#[derive(Debug, thiserror::Error)]
pub enum NetPlaneError {
    /// The hub, a namespace, an address block, the ruleset, the uplink or a proxy could not be
    /// made, changed or read.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The uplink that gives components with `cidr:` egress a way out of the host could not
    /// be made.
    #[error("the uplink out of the host: {0}")]
    Uplink(#[source] NetError),
    /// Work inside a component's network namespace could not start.
    #[error(transparent)]
    Netns(#[from] osvm_net::netns::NetnsError),
    /// The hub's own state (a directory, a record, the audit log) or a socket could not be
    /// made, read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A record of the hub's state does not parse.
    #[error("{path}: {source}")]
    Record {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The CA of a trust domain, which the mTLS proxies check certificates against, could not
    /// be opened.
    #[error("the CA: {0}")]
    Ca(#[from] osvm_pki::PkiError),
    /// A running instance would not hand over its listening sockets.
    #[error("the sockets of a running instance: {0}")]
    Instance(#[from] osvm_core::RuntimeError),
    /// A component is not on the hub, or has no service address there.
    #[error("{0}")]
    NotOnHub(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetPlaneError {
    let what = what.into();
    move |source| NetPlaneError::Io { what, source }
}

/// Where service addresses come from: one per component, the first address of a /30 of this
/// pool (16,384 services).
pub const SERVICE_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 214, 0, 0), 16);

/// The service address a block of [`SERVICE_POOL`] stands for.
fn service_addr(block: &Block) -> Ipv4Addr {
    block.hub_addr()
}

/// What the proxies of one stack judge clients by; replaced whenever the stack is re-applied.
struct StackView {
    name: String,
    trust_domain: String,
    policy: PolicySet,
    endpoints: HashMap<String, Endpoint>,
}

type SharedView = Arc<RwLock<Arc<StackView>>>;

/// Policy on the SPIFFE ID of a client of `target:port`.
struct PolicyAuthorizer {
    view: SharedView,
    target: String,
    port: u16,
}

impl Authorize for PolicyAuthorizer {
    fn authorize(&self, spiffe_id: &str) -> Decision {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner()).clone();
        let deny = |rule: String| Decision {
            allowed: false,
            rule,
        };
        let Some(to) = view.endpoints.get(&self.target) else {
            return deny(format!(
                "no component {} in stack {}",
                self.target, view.name
            ));
        };
        let prefix = format!("spiffe://{}/{}/", view.trust_domain, view.name);
        // A component of the stack is judged by its name; any other identity the CA issued (a
        // client outside: `osvm cert client NAME`) by the stack's `spiffe://` rules.
        let from = spiffe_id
            .strip_prefix(&prefix)
            .and_then(|component| view.endpoints.get(component))
            .cloned()
            .unwrap_or_else(|| Endpoint::Identity(spiffe_id.to_owned()));
        let flow = Flow {
            from,
            to: to.clone(),
            port: self.port,
            protocol: Protocol::Tcp,
        };
        let verdict = view.policy.evaluate(&flow);
        Decision {
            allowed: verdict.allowed,
            rule: AuditRecord::for_flow("", &view.policy, &flow, &verdict).rule,
        }
    }
}

/// What `osvm net show` shows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NetView {
    /// The hub namespace.
    pub hub: String,
    /// Every component on the hub.
    pub components: Vec<NetComponent>,
    /// The service map: service address -> instance address.
    pub services: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Every policy rule of a hub stack with what its flows counted.
    pub rules: Vec<RuleCounters>,
    /// Packets refused, by chain.
    pub refused: Vec<(String, Counter)>,
    /// The mTLS ingress proxies.
    pub proxies: Vec<ProxyView>,
    /// The components' published ports.
    #[serde(default)]
    pub published: Vec<PublishedView>,
    /// Service addresses that refuse new connections: their component has no ready instance.
    #[serde(default)]
    pub waiting: Vec<Ipv4Addr>,
}

/// One published port as the host and the hub see it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PublishedView {
    /// Its stack.
    pub stack: String,
    /// Its component.
    pub component: String,
    /// The host address (`0.0.0.0`: every address of the host).
    pub host: std::net::SocketAddrV4,
    /// Where the host sends it: the component's service address and port.
    pub service: Option<std::net::SocketAddrV4>,
    /// Connections to the component's port from outside the hub that policy let in, since the
    /// ruleset was last applied (the kernel's count; shared by every host address that
    /// publishes the same port).
    #[serde(default)]
    pub accepted: u64,
    /// ...and that it refused (a `deny` rule or default deny).
    #[serde(default)]
    pub refused: u64,
}

/// A component on the hub.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NetComponent {
    /// Its stack.
    pub stack: String,
    /// Its name.
    pub component: String,
    /// Its network namespace.
    pub netns: String,
    /// Its own address.
    pub address: Ipv4Addr,
    /// Its service address (what its name resolves to).
    pub service: Option<Ipv4Addr>,
    /// Whether it is reached through the mTLS proxy.
    pub mtls: bool,
    /// Whether its service address sends to this instance (during a hot-swap a component
    /// has two instances; one is active).
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// One rule and what matched the flows it allows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RuleCounters {
    /// Its stack.
    pub stack: String,
    /// Its index in the stack's policy.
    pub index: usize,
    /// The rule, as `osvm policy list` shows it.
    pub rule: String,
    /// How many (source, destination, port) tuples it puts in the kernel now.
    pub flows: usize,
    /// New-flow packets it matched: let through, or for a `deny` of published traffic refused
    /// (established traffic is not counted per rule).
    pub counter: Counter,
}

/// One mTLS proxy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProxyView {
    /// `ingress` (in the hub, in front of an mTLS component) or `egress` (in a component's
    /// namespace, on its loopback).
    pub kind: String,
    /// Where it listens.
    pub listen: SocketAddr,
    /// The component behind it (`stack/component`).
    pub component: String,
    /// What it did.
    pub counters: CountersSnapshot,
}

/// The hub and the component namespaces of one state directory.
pub struct NetPlane {
    prefix: String,
    state_dir: PathBuf,
    enforcer: Enforcer,
    ipam: Ipam,
    services: Ipam,
    /// The proxy thread in the hub, once an mTLS component needed it.
    proxies: Option<ProxyHost>,
    /// Ingress proxies running: where each listens, for which `stack/component`, and where it
    /// forwards.
    ingress: BTreeMap<SocketAddr, (String, Upstream)>,
    /// Components (`stack/component`) whose service address sends new connections to their
    /// next instance, in percent (100: all; 1-99: a canary); absent is none.
    to_next: BTreeMap<String, u8>,
    /// Egress proxies, one thread in each instance namespace (by block index) whose component
    /// has any, with the entries they serve.
    egress: BTreeMap<u32, (ProxyHost, Vec<osvm_core::stack::MtlsEgress>)>,
    views: BTreeMap<String, SharedView>,
    audit: Arc<AuditLog>,
    /// The way out of the host, once some component may reach an external network or publishes
    /// a port.
    uplink: Option<Uplink>,
    /// What the host publishes now (`None`: not written by this plane yet), so an apply that
    /// changes nothing published leaves the host's routes and table alone.
    published: Option<Vec<Published>>,
    /// The listening sockets of socket-activated components, by `stack/component`.
    listeners: BTreeMap<String, Vec<std::os::fd::OwnedFd>>,
    /// Whether the last apply succeeded.
    in_force: bool,
    /// Host NAT tables of torn-down hubs removed when this plane opened (see
    /// [`osvm_net::uplink::stale_tables`]), for the daemon to say so.
    pub swept: Result<Vec<String>, String>,
    /// Components (`stack/component`) with no ready instance: their service address refuses
    /// new connections (and so do their published ports) until one is ready.
    unready: BTreeSet<String>,
}

/// FNV-1a of `s`: a short name for a state directory that stays the same across builds.
/// What every network namespace of `state_dir`'s hub is called by: `osvm-<8 hex digits>` (then
/// `-hub`, `-<n>`); the hex digits also tag its uplink (`osvu<tag>`, host table
/// `ip osvm_<tag>`).
pub fn netns_prefix(state_dir: &Path) -> String {
    format!("osvm-{:08x}", short_hash(&state_dir.to_string_lossy()))
}

fn short_hash(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Listening TCP sockets on every address of the network namespace at `netns`, one per port,
/// made on a thread that entered it.
fn bind_in(netns: &Path, ports: &[u16]) -> Result<Vec<std::os::fd::OwnedFd>, NetPlaneError> {
    let ports = ports.to_vec();
    osvm_net::netns::run_in_path(netns, move || {
        ports
            .iter()
            .map(|&port| {
                std::net::TcpListener::bind(("0.0.0.0", port))
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(io(format!("listen on port {port}")))
            })
            .collect()
    })?
}

/// The address-block key of a component's second instance during a hot-swap.
fn next_key(key: &str) -> String {
    format!("{key}~next")
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

fn ip(args: &[&str]) -> Result<(), NetPlaneError> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Command {
            command: format!("ip {}", args.join(" ")),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
        .into())
    }
}

impl NetPlane {
    /// The hub of `state_dir`, created if it does not exist (a restarted daemon finds it).
    pub fn open(state_dir: &Path) -> Result<Self, NetPlaneError> {
        let prefix = netns_prefix(state_dir);
        let hub_name = format!("{prefix}-hub");
        let hub = if netns_path(&hub_name).exists() {
            Hub::existing(&hub_name)
        } else {
            Hub::create(&hub_name)?
        };
        let dir = state_dir.join("net");
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let (pool, len) = ipam::DEFAULT_POOL;
        let ipam = Ipam::open(&dir.join("ipam.json"), pool, len)?;
        let (pool, len) = SERVICE_POOL;
        let services = Ipam::open(&dir.join("services.json"), pool, len)?;
        // Also for a hub an older osvm made.
        hub.own_services(SERVICE_POOL)?;
        let uplink = match std::fs::read_to_string(dir.join("uplink.json")) {
            Ok(text) => {
                Some(
                    serde_json::from_str(&text).map_err(|source| NetPlaneError::Record {
                        path: dir.join("uplink.json"),
                        source,
                    })?,
                )
            }
            Err(_) => None,
        };
        let audit_path = state_dir.join("audit.log");
        let audit =
            AuditLog::open(&audit_path).map_err(io(format!("open {}", audit_path.display())))?;
        // A hub that died with its daemon (`kill -9`) left its host table behind, whose DNAT
        // would send connections to published ports (on 127.0.0.1 too) nowhere.
        let swept = osvm_net::uplink::remove_stale_tables().map_err(|e| e.to_string());
        Ok(Self {
            prefix,
            state_dir: state_dir.to_path_buf(),
            enforcer: Enforcer::new(hub),
            ipam,
            services,
            proxies: None,
            ingress: BTreeMap::new(),
            to_next: Default::default(),
            egress: BTreeMap::new(),
            views: BTreeMap::new(),
            audit: Arc::new(audit),
            uplink,
            published: None,
            listeners: BTreeMap::new(),
            in_force: false,
            unready: BTreeSet::new(),
            swept,
        })
    }

    /// The audit log of the hub's decisions.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    fn netns_name(&self, index: u32) -> String {
        format!("{}-{index}", self.prefix)
    }

    /// Puts `stack/component` on the hub (address block, namespace, veth) if it is not yet;
    /// returns its namespace's path and whether it was new.
    pub fn join(&mut self, stack: &str, component: &str) -> Result<(PathBuf, bool), NetPlaneError> {
        let key = format!("{stack}/{component}");
        self.services.allocate(&key)?;
        let (path, new) = self.add_slot(&key)?;
        if new {
            // Nothing runs there yet.
            self.unready.insert(key);
        }
        Ok((path, new))
    }

    /// Records whether `stack/component`'s instance is ready for traffic (see
    /// `unit::Lifecycle::ready`); returns whether that changed, when the caller must apply
    /// again for it to take effect. A component starts out not ready when it joins, and ready
    /// after a daemon restart (a running instance is adopted serving).
    pub fn set_ready(&mut self, stack: &str, component: &str, ready: bool) -> bool {
        let key = format!("{stack}/{component}");
        if ready {
            self.unready.remove(&key)
        } else {
            self.unready.insert(key)
        }
    }

    /// Gives address-block key `slot` its block, namespace and veth (if it has none yet);
    /// returns the namespace's path and whether it was new.
    fn add_slot(&mut self, slot: &str) -> Result<(PathBuf, bool), NetPlaneError> {
        let block = self.ipam.allocate(slot)?;
        let name = self.netns_name(block.index);
        let path = netns_path(&name);
        if path.exists() {
            return Ok((path, false));
        }
        ip(&["netns", "add", &name])?;
        // A namespace deleted a moment ago may still hold its veth: the kernel tears
        // namespaces down asynchronously. Its hub end goes now, so the name is free.
        let _ = self.enforcer.hub().detach(&block);
        if let Err(e) = self.enforcer.hub().attach(&name, &block) {
            let _ = ip(&["netns", "del", &name]);
            let _ = self.ipam.release(slot);
            return Err(e.into());
        }
        Ok((path, true))
    }

    /// Takes address-block key `slot` off the hub: its egress proxies, its veth (at once, not
    /// whenever the kernel gets to the namespace), its namespace, its block.
    fn remove_slot(&mut self, slot: &str) -> Result<(), NetPlaneError> {
        let Some(block) = self.ipam.get(slot) else {
            return Ok(());
        };
        // Its egress proxies live in its namespace: stop them before it goes.
        self.egress.remove(&block.index);
        let _ = self.enforcer.hub().detach(&block);
        let name = self.netns_name(block.index);
        if netns_path(&name).exists() {
            ip(&["netns", "del", &name])?;
        }
        self.ipam.release(slot).map_err(NetPlaneError::from)
    }

    /// The hub's network namespace, from which osvm itself reaches components' addresses
    /// (health probes of a unikernel, whose address is inside the guest).
    pub fn hub_path(&self) -> std::path::PathBuf {
        self.enforcer.hub().path()
    }

    /// `/etc/hosts` lines for the components of `stack` on the hub: each name is its
    /// component's service address.
    pub fn hosts(&self, stack: &Stack) -> Vec<(String, String)> {
        stack
            .components
            .iter()
            .filter_map(|c| {
                let block = self.services.get(&format!("{}/{}", stack.name, c.name))?;
                Some((
                    service_addr(&block).to_string(),
                    format!("{}.{}.osvm {}", c.name, stack.name, c.name),
                ))
            })
            .collect()
    }

    /// Recomputes and applies the ruleset and service map for every hub stack's components
    /// that are on the hub, then starts and stops ingress proxies to match. Policy is per
    /// stack: rules never name another stack's components.
    ///
    /// Whatever it returns, [`NetPlane::in_force`] says afterwards whether the hub enforces what
    /// `stacks` say.
    pub fn apply(&mut self, stacks: &BTreeMap<String, Stack>) -> Result<Applied, NetPlaneError> {
        let applied = self.apply_stacks(stacks);
        self.in_force = applied.is_ok();
        applied
    }

    /// Whether the last [`NetPlane::apply`] succeeded: until one does, no component may start
    /// on the hub (its policy, addresses or published ports may be missing).
    pub fn in_force(&self) -> bool {
        self.in_force
    }

    fn apply_stacks(&mut self, stacks: &BTreeMap<String, Stack>) -> Result<Applied, NetPlaneError> {
        let mut tuples = Vec::new();
        let mut service_map = Vec::new();
        let mut leaving = Vec::new();
        let mut splits = Vec::new();
        let mut waiting = Vec::new();
        // Published ports: the host's DNAT entries, and who may come in through them.
        let mut published: Vec<Published> = Vec::new();
        let mut inbound = Vec::new();
        // Ingress proxies wanted: listen address -> (upstream, stack, component).
        let mut wanted: BTreeMap<SocketAddr, (SocketAddr, String, String)> = BTreeMap::new();
        let mut seen = Vec::new();
        for stack in stacks.values().filter(|s| s.network == StackNetwork::Hub) {
            let slots = self.members(stack);
            let members: Vec<Member> = slots.iter().map(|(m, _)| m.clone()).collect();
            let active: Vec<Member> = slots
                .iter()
                .filter(|(_, a)| *a)
                .map(|(m, _)| m.clone())
                .collect();
            let policy = PolicySet::new(stack.policies.clone());
            tuples.extend(decided(&policy, &members).into_iter().map(|(a, _)| a));
            leaving.extend(external(&policy, &members));
            service_map.extend(services(&active));
            // A component with no ready instance: its service address refuses the new
            // connections the policy allows (the address its instance will have says which).
            for c in &stack.components {
                let key = format!("{}/{}", stack.name, c.name);
                if self.unready.contains(&key)
                    && !self.to_next.contains_key(&key)
                    && let Some(block) = self.services.get(&key)
                {
                    let service = service_addr(&block);
                    let instance = self.ipam.get(&key).map_or(service, |b| b.component_addr());
                    waiting.push((service, instance));
                }
            }
            for c in stack.components.iter().filter(|c| !c.publish.is_empty()) {
                let key = format!("{}/{}", stack.name, c.name);
                let Some(service) = self.services.get(&key).map(|b| service_addr(&b)) else {
                    continue;
                };
                published.extend(c.publish.iter().map(|p| Published {
                    host: p.host,
                    service,
                    port: p.port,
                }));
                // Every instance of it (two during a hot-swap): the service address may send
                // published traffic to either.
                let ports: Vec<u16> = c.publish.iter().map(|p| p.port).collect();
                let to: Vec<(Member, Vec<u16>)> = members
                    .iter()
                    .filter(|m| m.endpoint.to_string() == c.name)
                    .map(|m| (m.clone(), ports.clone()))
                    .collect();
                inbound.extend(osvm_net::ruleset::ingress(&policy, &to));
            }
            for c in &stack.components {
                let key = format!("{}/{}", stack.name, c.name);
                let Some(&weight) = self.to_next.get(&key).filter(|w| (1..100).contains(*w)) else {
                    continue;
                };
                if let (Some(service), Some(next), Some(current)) = (
                    self.services.get(&key),
                    self.ipam.get(&next_key(&key)),
                    self.ipam.get(&key),
                ) {
                    splits.push(osvm_net::ruleset::Split {
                        service: service_addr(&service),
                        next: next.component_addr(),
                        current: current.component_addr(),
                        weight,
                    });
                }
            }
            for m in active.iter().filter(|m| m.mtls) {
                let Some(service) = m.service else { continue };
                for &port in &m.listen {
                    wanted.insert(
                        SocketAddr::from((service, port)),
                        (
                            SocketAddr::from((m.block.component_addr(), port)),
                            stack.name.clone(),
                            m.endpoint.to_string(),
                        ),
                    );
                }
            }
            let view = Arc::new(StackView {
                name: stack.name.clone(),
                trust_domain: stack.trust_domain.clone(),
                policy,
                endpoints: stack
                    .components
                    .iter()
                    .map(|c| (c.name.clone(), Endpoint::of(c)))
                    .collect(),
            });
            match self.views.get(&stack.name) {
                Some(shared) => *shared.write().unwrap_or_else(|e| e.into_inner()) = view,
                None => {
                    self.views
                        .insert(stack.name.clone(), Arc::new(RwLock::new(view)));
                }
            }
            seen.push(stack.name.clone());
        }
        self.views.retain(|name, _| seen.contains(name));
        if (!leaving.is_empty() || !published.is_empty()) && self.uplink.is_none() {
            let tag = self.prefix.trim_start_matches("osvm-");
            let uplink = Uplink::planned(tag)
                .create(self.enforcer.hub())
                .map_err(NetPlaneError::Uplink)?;
            let path = self.state_dir.join("net").join("uplink.json");
            let text =
                serde_json::to_string_pretty(&uplink).map_err(|source| NetPlaneError::Record {
                    path: path.clone(),
                    source,
                })?;
            std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
            self.uplink = Some(uplink);
            self.published = None;
        }
        published.sort();
        published.dedup();
        if let Some(uplink) = &self.uplink
            && self.published.as_ref() != Some(&published)
        {
            uplink
                .publish(&published, &[SERVICE_POOL])
                .map_err(NetPlaneError::Uplink)?;
            self.published = Some(published);
        }
        self.enforcer.set_ingress(inbound);
        self.enforcer.set_waiting(waiting);
        let applied = self
            .enforcer
            .apply_all(tuples, service_map, leaving, splits)?;
        self.sync_proxies(stacks, wanted)?;
        self.sync_egress(stacks)?;
        Ok(applied)
    }

    /// Starts, replaces or stops the egress proxies of every hub component to match its
    /// `mtls_egress`.
    fn sync_egress(&mut self, stacks: &BTreeMap<String, Stack>) -> Result<(), NetPlaneError> {
        let mut keep = Vec::new();
        for stack in stacks.values().filter(|s| s.network == StackNetwork::Hub) {
            let slots = self.members(stack);
            // A guest is its own egress proxy (its loopback is not the namespace's): only
            // processes get one in their namespace.
            for c in stack.components.iter().filter(|c| {
                !c.mtls_egress.is_empty() && c.runtime.kind() == osvm_core::RuntimeKind::Process
            }) {
                // Every instance of the component (two during a hot-swap), in its namespace.
                for (m, _) in slots
                    .iter()
                    .filter(|(m, _)| m.endpoint.to_string() == c.name)
                {
                    let index = m.block.index;
                    keep.push(index);
                    if self
                        .egress
                        .get(&index)
                        .is_some_and(|(_, running)| *running == c.mtls_egress)
                    {
                        continue;
                    }
                    // Stop the old set first: the new one binds the same loopback ports.
                    self.egress.remove(&index);
                    let host = self.egress_host(stack, c, index)?;
                    self.egress.insert(index, (host, c.mtls_egress.clone()));
                }
            }
        }
        self.egress.retain(|index, _| keep.contains(index));
        Ok(())
    }

    /// A proxy thread in the namespace of block `index` serving `c`'s `mtls_egress`.
    fn egress_host(
        &self,
        stack: &Stack,
        c: &osvm_core::stack::Component,
        index: u32,
    ) -> Result<ProxyHost, NetPlaneError> {
        let mut host = ProxyHost::start(Some(&netns_path(&self.netns_name(index))))?;
        let pki = osvm_pki::Pki::new(
            &crate::identity::pki_dir(&self.state_dir, &stack.trust_domain),
            &stack.trust_domain,
        )?;
        let identity = crate::identity::identity_dir(&self.state_dir, &stack.name, &c.name);
        let tls = Arc::new(client_tls(&identity, &pki.crl_paths(), &stack.trust_domain));
        for e in self.tls_egress(stack, c)? {
            host.add_egress(Egress {
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, e.listen)),
                upstream: e.upstream,
                server_name: e.server_name,
                tls: tls.clone(),
            })?;
        }
        Ok(host)
    }

    /// `c`'s `mtls_egress` resolved to its targets' service addresses.
    pub fn tls_egress(
        &self,
        stack: &Stack,
        c: &osvm_core::stack::Component,
    ) -> Result<Vec<TlsEgress>, NetPlaneError> {
        c.mtls_egress
            .iter()
            .map(|e| {
                let to = self
                    .services
                    .get(&format!("{}/{}", stack.name, e.to))
                    .ok_or_else(|| {
                        NetPlaneError::NotOnHub(format!("{} has no service address", e.to))
                    })?;
                Ok(TlsEgress {
                    listen: e.listen,
                    upstream: SocketAddr::from((service_addr(&to), e.port)),
                    server_name: format!("{}.{}.osvm", e.to, stack.name),
                    trust_domain: stack.trust_domain.clone(),
                })
            })
            .collect()
    }

    /// The instances of `stack`'s components that are on the hub, as the ruleset sees them
    /// (a component in a hot-swap has two, the same to policy), each with whether its
    /// component's service address sends to it.
    fn members(&self, stack: &Stack) -> Vec<(Member, bool)> {
        let mut out = Vec::new();
        for c in &stack.components {
            let key = format!("{}/{}", stack.name, c.name);
            let next = next_key(&key);
            let to_next = self.to_next.get(&key) == Some(&100);
            let ready = !self.unready.contains(&key);
            for (slot, active) in [(&key, !to_next && ready), (&next, to_next)] {
                let Some(block) = self.ipam.get(slot) else {
                    continue;
                };
                out.push((
                    Member {
                        endpoint: Endpoint::of(c),
                        block,
                        listen: c.listen.clone(),
                        service: self.services.get(&key).map(|b| service_addr(&b)),
                        mtls: c.mtls,
                    },
                    active,
                ));
            }
        }
        out
    }

    /// Gives `stack/component` a second namespace and address block for a hot-swap's new
    /// instance (allowed and reached by policy exactly like the first; its service address
    /// still sends to the first); returns the namespace's path.
    pub fn prepare_next(
        &mut self,
        stacks: &BTreeMap<String, Stack>,
        stack: &str,
        component: &str,
    ) -> Result<PathBuf, NetPlaneError> {
        let next = next_key(&format!("{stack}/{component}"));
        let (path, _) = self.add_slot(&next)?;
        self.apply(stacks)?;
        Ok(path)
    }

    /// Sends `weight` percent of new connections to `stack/component`'s service address to
    /// the next instance (0: none, back to the first; 100: all, and its mTLS proxy too): one
    /// nftables transaction; connections already made keep their instance.
    pub fn switch(
        &mut self,
        stacks: &BTreeMap<String, Stack>,
        stack: &str,
        component: &str,
        weight: u8,
    ) -> Result<(), NetPlaneError> {
        let key = format!("{stack}/{component}");
        if weight == 0 {
            self.to_next.remove(&key);
        } else {
            self.to_next.insert(key, weight.min(100));
        }
        self.apply(stacks).map(|_| ())
    }

    /// Makes the next instance's block the component's own and the old one's the "next",
    /// which [`NetPlane::drop_next`] then removes: the end of a hot-swap.
    pub fn promote(&mut self, stack: &str, component: &str) -> Result<(), NetPlaneError> {
        let key = format!("{stack}/{component}");
        self.ipam.swap_keys(&key, &next_key(&key))?;
        self.to_next.remove(&key);
        Ok(())
    }

    /// Removes `stack/component`'s second namespace and block (a rolled-back new instance, or
    /// the old one after a swap), then re-applies: what was allowed to it goes, and its
    /// remaining connections are cut.
    pub fn drop_next(
        &mut self,
        stacks: &BTreeMap<String, Stack>,
        stack: &str,
        component: &str,
    ) -> Result<(), NetPlaneError> {
        let key = format!("{stack}/{component}");
        self.to_next.remove(&key);
        self.remove_slot(&next_key(&key))?;
        self.apply(stacks).map(|_| ())
    }

    /// The namespace of `stack/component`'s next instance, if it has one.
    pub fn next_netns(&self, stack: &str, component: &str) -> Option<PathBuf> {
        let block = self.ipam.get(&next_key(&format!("{stack}/{component}")))?;
        Some(netns_path(&self.netns_name(block.index)))
    }

    /// Copies of `stack/component`'s listening sockets (one per port of `ports`, bound in its
    /// namespace on every address): the ones it has, else those `running` (an instance a
    /// restarted daemon adopted) holds, else new ones.
    pub fn listeners(
        &mut self,
        stack: &str,
        component: &str,
        ports: &[u16],
        running: Option<&dyn osvm_core::Instance>,
    ) -> Result<Vec<std::os::fd::OwnedFd>, NetPlaneError> {
        let key = format!("{stack}/{component}");
        if !self.listeners.contains_key(&key) {
            let sockets = match running {
                Some(inst) => inst.listening_sockets(ports.len())?,
                None => {
                    let block = self.ipam.get(&key).ok_or_else(|| {
                        NetPlaneError::NotOnHub(format!("{key} is not on the hub"))
                    })?;
                    bind_in(&netns_path(&self.netns_name(block.index)), ports)?
                }
            };
            self.listeners.insert(key.clone(), sockets);
        }
        self.listeners[&key]
            .iter()
            .map(|fd| fd.try_clone().map_err(io("dup a listening socket")))
            .collect()
    }

    /// The address of `stack/component`'s next instance slot, if it has one.
    pub fn next_addr(&self, stack: &str, component: &str) -> Option<Ipv4Addr> {
        self.ipam
            .get(&next_key(&format!("{stack}/{component}")))
            .map(|b| b.component_addr())
    }

    /// The address of the instance `stack/component`'s service address sends to now.
    pub fn active_addr(&self, stack: &str, component: &str) -> Option<Ipv4Addr> {
        let key = format!("{stack}/{component}");
        let slot = if self.to_next.get(&key) == Some(&100) {
            next_key(&key)
        } else {
            key
        };
        self.ipam.get(&slot).map(|b| b.component_addr())
    }

    /// Established TCP connections to `addr` that the hub tracks (a draining instance's).
    pub fn established_to(&self, addr: Ipv4Addr) -> Result<usize, NetPlaneError> {
        self.enforcer
            .hub()
            .count_conntrack(addr)
            .map_err(NetPlaneError::from)
    }

    /// Every published port of `stacks`, with the connections the kernel let in and refused
    /// (one `nft` call): what the engine reports as events.
    pub fn published(
        &self,
        stacks: &BTreeMap<String, Stack>,
    ) -> Result<Vec<PublishedView>, NetPlaneError> {
        let inbound = self.enforcer.ingress_counters()?;
        Ok(self.published_with(stacks, &inbound))
    }

    fn published_with(
        &self,
        stacks: &BTreeMap<String, Stack>,
        inbound: &[(osvm_net::ruleset::Ingress, Counter)],
    ) -> Vec<PublishedView> {
        let mut out = Vec::new();
        for stack in stacks.values().filter(|s| s.network == StackNetwork::Hub) {
            let slots = self.members(stack);
            for c in &stack.components {
                let service = self
                    .services
                    .get(&format!("{}/{}", stack.name, c.name))
                    .map(|b| service_addr(&b));
                // Its instances' addresses (two during a hot-swap), as the ingress rules name them.
                let addrs: Vec<Ipv4Addr> = slots
                    .iter()
                    .filter(|(m, _)| m.endpoint.to_string() == c.name)
                    .map(|(m, _)| m.tcp_destination())
                    .collect();
                for p in &c.publish {
                    let (mut accepted, mut refused) = (0, 0);
                    for (i, n) in inbound {
                        if i.port == p.port && addrs.contains(&i.daddr) {
                            if i.deny {
                                refused += n.packets;
                            } else {
                                accepted += n.packets;
                            }
                        }
                    }
                    out.push(PublishedView {
                        stack: stack.name.clone(),
                        component: c.name.clone(),
                        host: p.host,
                        service: service.map(|s| std::net::SocketAddrV4::new(s, p.port)),
                        accepted,
                        refused,
                    });
                }
            }
        }
        out
    }

    /// Addresses, the service map, per-rule counters, refusals and proxies, as the kernel and
    /// the proxies report them now.
    pub fn show(&self, stacks: &BTreeMap<String, Stack>) -> Result<NetView, NetPlaneError> {
        let counted: BTreeMap<_, Counter> = self.enforcer.tuple_counters()?.into_iter().collect();
        let inbound = self.enforcer.ingress_counters()?;
        let published = self.published_with(stacks, &inbound);
        let mut components = Vec::new();
        let mut rules = Vec::new();
        for stack in stacks.values().filter(|s| s.network == StackNetwork::Hub) {
            let slots = self.members(stack);
            for (m, active) in &slots {
                components.push(NetComponent {
                    stack: stack.name.clone(),
                    component: m.endpoint.to_string(),
                    netns: self.netns_name(m.block.index),
                    address: m.block.component_addr(),
                    service: m.service,
                    mtls: m.mtls,
                    active: *active,
                });
            }
            let members: Vec<Member> = slots.into_iter().map(|(m, _)| m).collect();
            let policy = PolicySet::new(stack.policies.clone());
            let mut per_rule: BTreeMap<usize, (usize, Counter)> = BTreeMap::new();
            for (tuple, rule) in decided(&policy, &members) {
                let Some(rule) = rule else { continue };
                let entry = per_rule.entry(rule).or_default();
                entry.0 += 1;
                if let Some(c) = counted.get(&tuple) {
                    entry.1.packets += c.packets;
                    entry.1.bytes += c.bytes;
                }
            }
            // Published traffic the stack's world/cidr rules decided.
            let ours: Vec<Ipv4Addr> = members.iter().map(Member::tcp_destination).collect();
            for (i, c) in &inbound {
                if let Some(rule) = i.rule
                    && ours.contains(&i.daddr)
                {
                    let entry = per_rule.entry(rule).or_default();
                    entry.1.packets += c.packets;
                    entry.1.bytes += c.bytes;
                }
            }
            for index in 0..policy.rules().len() {
                let (flows, counter) = per_rule.get(&index).copied().unwrap_or_default();
                rules.push(RuleCounters {
                    stack: stack.name.clone(),
                    index,
                    rule: policy.describe(index).unwrap_or_default(),
                    flows,
                    counter,
                });
            }
        }
        let mut proxies: Vec<ProxyView> = self
            .proxies
            .as_ref()
            .map(|p| p.counters())
            .unwrap_or_default()
            .into_iter()
            .map(|(listen, counters)| ProxyView {
                kind: "ingress".into(),
                listen,
                component: self
                    .ingress
                    .get(&listen)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default(),
                counters,
            })
            .collect();
        let blocks = self.ipam.all();
        for (index, (host, _)) in &self.egress {
            let key = blocks
                .iter()
                .find(|(_, b)| b.index == *index)
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            proxies.extend(
                host.counters()
                    .into_iter()
                    .map(|(listen, counters)| ProxyView {
                        kind: "egress".into(),
                        listen,
                        component: key.clone(),
                        counters,
                    }),
            );
        }
        Ok(NetView {
            hub: self.enforcer.hub().name().to_owned(),
            components,
            services: self.enforcer.services().to_vec(),
            rules,
            refused: self.enforcer.refused_counters()?,
            proxies,
            published,
            waiting: self.enforcer.waiting(),
        })
    }

    /// Starts the ingress proxies in `wanted` that are not running and stops those that are
    /// not wanted any more.
    fn sync_proxies(
        &mut self,
        stacks: &BTreeMap<String, Stack>,
        wanted: BTreeMap<SocketAddr, (SocketAddr, String, String)>,
    ) -> Result<(), NetPlaneError> {
        let gone: Vec<SocketAddr> = self
            .ingress
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            self.ingress.remove(&addr);
            if let Some(p) = self.proxies.as_mut() {
                p.remove(addr);
            }
            if let std::net::IpAddr::V4(ip) = addr.ip()
                && !wanted.keys().any(|w| w.ip() == addr.ip())
            {
                self.enforcer.hub().del_local(ip)?;
            }
        }
        for (listen, (upstream, stack_name, component)) in wanted {
            if let Some((_, running)) = self.ingress.get(&listen) {
                running.set(upstream);
                continue;
            }
            let (Some(stack), Some(view)) = (stacks.get(&stack_name), self.views.get(&stack_name))
            else {
                continue;
            };
            if self.proxies.is_none() {
                let host = ProxyHost::start(Some(&self.enforcer.hub().path()))?;
                self.proxies = Some(host);
            }
            if let std::net::IpAddr::V4(ip) = listen.ip() {
                self.enforcer.hub().add_local(ip)?;
            }
            let pki = osvm_pki::Pki::new(
                &crate::identity::pki_dir(&self.state_dir, &stack.trust_domain),
                &stack.trust_domain,
            )?;
            let identity = crate::identity::identity_dir(&self.state_dir, &stack_name, &component);
            let spec = Ingress {
                decider: format!("mtls-ingress {component}.{stack_name}:{}", listen.port()),
                resource: format!("{component} tcp/{}", listen.port()),
                listen,
                upstream: Upstream::new(upstream),
                tls: Arc::new(server_tls(&identity, &pki.crl_paths(), &stack.trust_domain)),
                authorize: Arc::new(PolicyAuthorizer {
                    view: view.clone(),
                    target: component.clone(),
                    port: listen.port(),
                }),
                audit: Some(self.audit.clone()),
            };
            let running = spec.upstream.clone();
            self.proxies
                .as_mut()
                .expect("started above")
                .add_ingress(spec)?;
            self.ingress
                .insert(listen, (format!("{stack_name}/{component}"), running));
        }
        Ok(())
    }

    /// Takes `stack/component` off the hub: its namespace goes, its block returns to the pool.
    pub fn leave(&mut self, stack: &str, component: &str) -> Result<(), NetPlaneError> {
        let key = format!("{stack}/{component}");
        self.listeners.remove(&key);
        // A hot-swap's second instance goes too.
        self.remove_slot(&next_key(&key))?;
        self.to_next.remove(&key);
        self.remove_slot(&key)?;
        self.unready.remove(&key);
        let proxied: Vec<SocketAddr> = self
            .ingress
            .iter()
            .filter(|(_, (k, _))| *k == key)
            .map(|(a, _)| *a)
            .collect();
        for addr in proxied {
            self.ingress.remove(&addr);
            if let Some(p) = self.proxies.as_mut() {
                p.remove(addr);
            }
        }
        if let Some(block) = self.services.get(&key) {
            self.enforcer.hub().del_local(service_addr(&block))?;
            self.services.release(&key)?;
        }
        Ok(())
    }

    /// Removes every component namespace and the hub (the foreground `osvm up` owns them).
    pub fn destroy(mut self) -> Result<(), NetPlaneError> {
        // The proxies' sockets live in the hub and the components: stop them first.
        self.proxies = None;
        self.egress.clear();
        if let Some(uplink) = self.uplink.take() {
            uplink.remove()?;
            let _ = std::fs::remove_file(self.state_dir.join("net").join("uplink.json"));
        }
        for (key, _) in self.ipam.all() {
            if let Some((stack, component)) = key.split_once('/') {
                self.leave(stack, component)?;
            }
        }
        self.enforcer
            .into_hub()
            .destroy()
            .map_err(NetPlaneError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_command_is_a_typed_error_naming_the_command_and_its_complaint() {
        let err = ip(&["no-such-object"]).unwrap_err();
        match &err {
            NetPlaneError::Net(NetError::Command { command, detail }) => {
                assert_eq!(command, "ip no-such-object");
                assert!(!detail.is_empty(), "stderr or why it did not start");
            }
            other => panic!("expected a command error, got {other:?}"),
        }
        assert!(err.to_string().contains("ip no-such-object"), "{err}");
    }
}
