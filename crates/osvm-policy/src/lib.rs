//! One policy model for everything osvm decides about who may reach what.
//!
//! A request has a *subject* (the endpoint traffic comes from), a *resource* (where it goes, on
//! which port and protocol) and an *action* (today: connect). The stack's `[[policy]]` rules are
//! judged the same way everywhere:
//!
//! - **default deny**: nothing passes that no rule allows;
//! - **deny overrides allow**: one matching deny rule refuses, whatever allows it;
//! - the component's [`NetworkAccess`] bounds what rules can grant: `none` and `vsock_only` get
//!   no network flows at all, `internal` only flows to components, `restricted` also the
//!   external networks a `cidr:` rule names, `full` every external address (rules may still
//!   deny);
//! - `*` as a destination means every *component*, never the outside world: traffic leaving the
//!   host always needs a `cidr:` rule (or `full` access).
//!
//! [`PolicySet`] compiles the rules between components into a decision table: for each pair of
//! selectors (`*`, a type, a component) and each protocol and port, the first allow and the
//! first deny rule, so that a flow between two components is judged by at most nine table
//! lookups, whatever the number of rules. Flows from or to the outside world and identities
//! look only at the rules whose `from` can match (an index by `from`). `benches/evaluate.rs`
//! measures both with 100,000 rules against a plain scan. Every [`Verdict`] names the rule that decided it, and
//! [`AuditRecord`] is the line the audit log keeps for it.
//!
//! MCP tool access is judged by the same two principles in [`mcp`]: a client (a bearer token's
//! client name or a certificate's SPIFFE ID) may use a tool `<server>.<tool>` only if an
//! `[[mcp_policy]]` rule allows it and none denies it.
#![forbid(unsafe_code)]

mod audit;
pub mod mcp;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use osvm_core::model::{ComponentKind, NetworkAccess};
use osvm_core::stack::{PolicyAction, PolicyRule, Protocol, Selector};
use serde::Serialize;

pub use audit::{AuditLog, AuditRecord};

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// A component of the stack.
    Component {
        /// Its name.
        name: String,
        /// Its kind, for `type:<kind>` selectors.
        kind: ComponentKind,
        /// How far its network reaches.
        access: NetworkAccess,
    },
    /// An address outside the stack.
    External(IpAddr),
    /// A peer known by the SPIFFE ID of its certificate, as an mTLS ingress proxy sees it.
    Identity(String),
}

impl Endpoint {
    /// A component endpoint.
    pub fn component(name: &str, kind: ComponentKind, access: NetworkAccess) -> Self {
        Endpoint::Component {
            name: name.to_owned(),
            kind,
            access,
        }
    }
}

impl Endpoint {
    /// A stack file's component: its name, kind and `network_access`.
    pub fn of(c: &osvm_core::stack::Component) -> Self {
        Self::component(&c.name, c.component_type.kind(), c.network_access)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Component { name, .. } => f.write_str(name),
            Endpoint::External(ip) => write!(f, "{ip}"),
            Endpoint::Identity(id) => f.write_str(id),
        }
    }
}

/// A connection someone wants to make: the subject, the resource and the action of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Where the traffic comes from.
    pub from: Endpoint,
    /// Where it goes.
    pub to: Endpoint,
    /// Destination port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}/{}",
            self.from, self.to, self.protocol, self.port
        )
    }
}

/// Why a flow was allowed or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Reason {
    /// A rule decided; its index in the stack's rules.
    Rule {
        /// Position of the rule among the stack's `[[policy]]` entries.
        index: usize,
    },
    /// No rule allows it.
    DefaultDeny,
    /// The endpoint's network access level rules it out whatever the rules say.
    Access {
        /// The endpoint whose access decided.
        endpoint: String,
        /// Its access level.
        access: NetworkAccess,
    },
    /// `full` access lets the component reach any external address no rule denies.
    FullAccess,
}

/// The answer for one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Whether the flow may pass.
    pub allowed: bool,
    /// What decided it.
    pub reason: Reason,
}

impl Verdict {
    fn allow(reason: Reason) -> Self {
        Self {
            allowed: true,
            reason,
        }
    }

    fn deny(reason: Reason) -> Self {
        Self {
            allowed: false,
            reason,
        }
    }
}

/// Index key of a rule: its `from` selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FromKey {
    Any,
    Component(String),
    Kind(ComponentKind),
    External,
    Identity,
}

/// A component selector of the decision table: `*`, a type, or a component by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sel {
    Any,
    Kind(ComponentKind),
    Component(u32),
}

/// "No rule" in a table entry.
const NONE: u32 = u32::MAX;

/// The first allow and the first deny rule of one selector pair, per protocol and port.
#[derive(Debug, Clone, Default)]
struct PortTable {
    /// `(protocol, port or ALL_PORTS, first allow, first deny)`, sorted by protocol and port.
    entries: Vec<(Protocol, u32, u32, u32)>,
}

/// The port key of a rule without ports.
const ALL_PORTS: u32 = u32::MAX;

impl PortTable {
    fn add(&mut self, protocol: Protocol, port: u32, action: PolicyAction, index: u32) {
        let at = match self
            .entries
            .binary_search_by_key(&(protocol as u8, port), |e| (e.0 as u8, e.1))
        {
            Ok(at) => at,
            Err(at) => {
                self.entries.insert(at, (protocol, port, NONE, NONE));
                at
            }
        };
        let e = &mut self.entries[at];
        let slot = match action {
            PolicyAction::Allow => &mut e.2,
            PolicyAction::Deny => &mut e.3,
        };
        *slot = (*slot).min(index);
    }

    /// Folds the entries for `port` and for every port into `(allow, deny)`.
    fn lookup(&self, protocol: Protocol, port: u16, best: &mut (u32, u32)) {
        for key in [port as u32, ALL_PORTS] {
            if let Ok(at) = self
                .entries
                .binary_search_by_key(&(protocol as u8, key), |e| (e.0 as u8, e.1))
            {
                let e = &self.entries[at];
                best.0 = best.0.min(e.2);
                best.1 = best.1.min(e.3);
            }
        }
    }
}

/// The rules between components, compiled: component names numbered, and for each pair of
/// selectors that some rule names, its [`PortTable`].
#[derive(Debug, Clone, Default)]
struct Compiled {
    components: HashMap<String, u32>,
    pairs: HashMap<(Sel, Sel), PortTable>,
}

impl Compiled {
    fn new(rules: &[PolicyRule]) -> Self {
        let mut c = Self::default();
        for (i, rule) in rules.iter().enumerate() {
            let (Some(from), Some(to)) = (c.sel(&rule.from), c.sel(&rule.to)) else {
                continue;
            };
            let table = c.pairs.entry((from, to)).or_default();
            if rule.ports.is_empty() {
                table.add(rule.protocol, ALL_PORTS, rule.action, i as u32);
            }
            for port in &rule.ports {
                table.add(rule.protocol, *port as u32, rule.action, i as u32);
            }
        }
        c
    }

    /// The table selector for a rule's selector, numbering components; none for `cidr:` and
    /// identities (they never name a component).
    fn sel(&mut self, selector: &Selector) -> Option<Sel> {
        Some(match selector {
            Selector::Any => Sel::Any,
            Selector::Kind(k) => Sel::Kind(*k),
            Selector::Component(name) => {
                let next = self.components.len() as u32;
                Sel::Component(*self.components.entry(name.clone()).or_insert(next))
            }
            Selector::Cidr(_) | Selector::Identity(_) => return None,
        })
    }

    /// The first allow and deny rules for a flow between two components.
    fn matching(
        &self,
        (from, from_kind): (&str, ComponentKind),
        (to, to_kind): (&str, ComponentKind),
        protocol: Protocol,
        port: u16,
    ) -> (Option<usize>, Option<usize>) {
        let sels = |name: &str, kind| {
            [
                Some(Sel::Any),
                Some(Sel::Kind(kind)),
                self.components.get(name).map(|id| Sel::Component(*id)),
            ]
        };
        let mut best = (NONE, NONE);
        for from in sels(from, from_kind).into_iter().flatten() {
            for to in sels(to, to_kind).into_iter().flatten() {
                if let Some(table) = self.pairs.get(&(from, to)) {
                    table.lookup(protocol, port, &mut best);
                }
            }
        }
        let found = |i: u32| (i != NONE).then_some(i as usize);
        (found(best.0), found(best.1))
    }
}

/// The stack's rules, compiled for evaluation.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    rules: Vec<PolicyRule>,
    by_from: HashMap<FromKey, Vec<u32>>,
    compiled: Compiled,
}

impl PolicySet {
    /// Indexes `rules` (in stack-file order; verdicts name rules by that position).
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        let mut by_from: HashMap<FromKey, Vec<u32>> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let key = match &rule.from {
                Selector::Any => FromKey::Any,
                Selector::Component(name) => FromKey::Component(name.clone()),
                Selector::Kind(kind) => FromKey::Kind(*kind),
                Selector::Cidr(_) => FromKey::External,
                Selector::Identity(_) => FromKey::Identity,
            };
            by_from.entry(key).or_default().push(i as u32);
        }
        let compiled = Compiled::new(&rules);
        Self {
            rules,
            by_from,
            compiled,
        }
    }

    /// The rules, in stack-file order.
    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    /// The rule at `index` as a sentence (`deny * -> type:validator tcp/all`).
    pub fn describe(&self, index: usize) -> Option<String> {
        let rule = self.rules.get(index)?;
        let action = rule.action.as_str();
        let ports = if rule.ports.is_empty() {
            "all".to_owned()
        } else {
            rule.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(format!(
            "{action} {} -> {} {}/{ports}",
            rule.from, rule.to, rule.protocol
        ))
    }

    /// Judges `flow`: default deny, deny overrides allow, bounded by network access.
    pub fn evaluate(&self, flow: &Flow) -> Verdict {
        let (allow, deny) = match (&flow.from, &flow.to) {
            (
                Endpoint::Component {
                    name: from,
                    kind: from_kind,
                    ..
                },
                Endpoint::Component {
                    name: to,
                    kind: to_kind,
                    ..
                },
            ) => {
                self.compiled
                    .matching((from, *from_kind), (to, *to_kind), flow.protocol, flow.port)
            }
            _ => self.matching(flow),
        };
        decide(flow, allow, deny)
    }

    /// The lowest-numbered allow and deny rules matching `flow`, looking only at the rules
    /// whose `from` can match its source.
    fn matching(&self, flow: &Flow) -> (Option<usize>, Option<usize>) {
        let keys: [Option<FromKey>; 3] = match &flow.from {
            Endpoint::Component { name, kind, .. } => [
                Some(FromKey::Any),
                Some(FromKey::Component(name.clone())),
                Some(FromKey::Kind(*kind)),
            ],
            // `*` as a source is the stack's components, never the outside world.
            Endpoint::External(_) => [Some(FromKey::External), None, None],
            // Only `spiffe://` rules name an identity; `*` means components, as above.
            Endpoint::Identity(_) => [Some(FromKey::Identity), None, None],
        };
        let (mut allow, mut deny) = (None::<usize>, None::<usize>);
        for key in keys.iter().flatten() {
            for &i in self.by_from.get(key).map(Vec::as_slice).unwrap_or(&[]) {
                let i = i as usize;
                let rule = &self.rules[i];
                if !rule_matches(rule, flow) {
                    continue;
                }
                let slot = match rule.action {
                    PolicyAction::Allow => &mut allow,
                    PolicyAction::Deny => &mut deny,
                };
                if slot.is_none_or(|j| i < j) {
                    *slot = Some(i);
                }
            }
        }
        (allow, deny)
    }

    /// The same decision as [`PolicySet::evaluate`] through the index by `from` alone (what
    /// flows with an outside or identity end take), for every flow: benchmarked against the
    /// compiled table.
    pub fn evaluate_by_source_index(&self, flow: &Flow) -> Verdict {
        let (allow, deny) = self.matching(flow);
        decide(flow, allow, deny)
    }

    /// The same decision as [`PolicySet::evaluate`] by looking at every rule in order; the
    /// reference the table and the index are tested and benchmarked against.
    pub fn evaluate_by_scan(&self, flow: &Flow) -> Verdict {
        let (mut allow, mut deny) = (None, None);
        for (i, rule) in self.rules.iter().enumerate() {
            if from_matches(&rule.from, &flow.from) && rule_matches(rule, flow) {
                match rule.action {
                    PolicyAction::Allow => allow = allow.or(Some(i)),
                    PolicyAction::Deny => deny = deny.or(Some(i)),
                }
            }
        }
        decide(flow, allow, deny)
    }
}

/// One network outside the stack that a component may (or may not) reach: the form in which
/// [`PolicySet::external`] hands external decisions to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalGrant {
    /// Allowed, or denied (denials are checked first).
    pub allow: bool,
    /// The network; `None` is every address.
    pub cidr: Option<osvm_core::stack::Cidr>,
    /// Destination ports; empty is every port.
    pub ports: Vec<u16>,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The rule it comes from; `None` for `full` access.
    pub rule: Option<usize>,
}

impl PolicySet {
    /// What `from` may reach outside the stack, as networks: denials (checked first) and
    /// allowances, such that a flow to an external address is allowed exactly when
    /// [`PolicySet::evaluate`] allows it: nothing for `none`, `vsock_only` and `internal`;
    /// the `cidr:` allow rules for `restricted`; everything for `full`; the `cidr:` deny rules
    /// in both cases.
    pub fn external(&self, from: &Endpoint) -> Vec<ExternalGrant> {
        let Endpoint::Component { access, .. } = from else {
            return Vec::new();
        };
        if !matches!(access, NetworkAccess::Restricted | NetworkAccess::Full) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let Selector::Cidr(cidr) = &rule.to else {
                continue;
            };
            let allow = rule.action == PolicyAction::Allow;
            if !from_matches(&rule.from, from) || (allow && *access == NetworkAccess::Full) {
                continue;
            }
            out.push(ExternalGrant {
                allow,
                cidr: Some(*cidr),
                ports: rule.ports.clone(),
                protocol: rule.protocol,
                rule: Some(index),
            });
        }
        if *access == NetworkAccess::Full {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                out.push(ExternalGrant {
                    allow: true,
                    cidr: None,
                    ports: Vec::new(),
                    protocol,
                    rule: None,
                });
            }
        }
        out
    }
}

/// A network outside the stack that may (or may not) reach a component, through a port it
/// publishes: the form in which [`PolicySet::inbound`] hands those decisions to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundGrant {
    /// Allowed, or denied (denials are checked first).
    pub allow: bool,
    /// The source network.
    pub cidr: osvm_core::stack::Cidr,
    /// Destination ports; empty is every port.
    pub ports: Vec<u16>,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The rule it comes from.
    pub rule: usize,
}

impl PolicySet {
    /// Which networks outside the stack may reach `to`: the `cidr:` sources of the rules whose
    /// destination is `to`, denials and allowances, such that a flow from an external address
    /// is allowed exactly when [`PolicySet::evaluate`] allows it. Nothing reaches a component
    /// whose access is `none` or `vsock_only`; `*` as a source is the stack's components,
    /// never the outside world (which needs a `cidr:` source, `0.0.0.0/0` for everyone).
    pub fn inbound(&self, to: &Endpoint) -> Vec<InboundGrant> {
        let Endpoint::Component { access, .. } = to else {
            return Vec::new();
        };
        if matches!(access, NetworkAccess::None | NetworkAccess::VsockOnly) {
            return Vec::new();
        }
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| {
                let Selector::Cidr(cidr) = &rule.from else {
                    return None;
                };
                to_matches(&rule.to, to).then(|| InboundGrant {
                    allow: rule.action == PolicyAction::Allow,
                    cidr: *cidr,
                    ports: rule.ports.clone(),
                    protocol: rule.protocol,
                    rule: index,
                })
            })
            .collect()
    }
}

/// The verdict for `flow` given the first matching allow and deny rules.
fn decide(flow: &Flow, allow: Option<usize>, deny: Option<usize>) -> Verdict {
    for end in [&flow.from, &flow.to] {
        if let Endpoint::Component { name, access, .. } = end
            && matches!(access, NetworkAccess::None | NetworkAccess::VsockOnly)
        {
            return Verdict::deny(Reason::Access {
                endpoint: name.clone(),
                access: *access,
            });
        }
    }
    if let Some(index) = deny {
        return Verdict::deny(Reason::Rule { index });
    }
    let by_rule = |allow: Option<usize>| match allow {
        Some(index) => Verdict::allow(Reason::Rule { index }),
        None => Verdict::deny(Reason::DefaultDeny),
    };
    match (&flow.from, &flow.to) {
        (Endpoint::Component { name, access, .. }, Endpoint::External(_)) => match access {
            NetworkAccess::Full => {
                Verdict::allow(allow.map_or(Reason::FullAccess, |index| Reason::Rule { index }))
            }
            NetworkAccess::Restricted => by_rule(allow),
            other => Verdict::deny(Reason::Access {
                endpoint: name.clone(),
                access: *other,
            }),
        },
        _ => by_rule(allow),
    }
}

fn from_matches(selector: &Selector, end: &Endpoint) -> bool {
    match (selector, end) {
        (Selector::Any, Endpoint::Component { .. }) => true,
        (Selector::Component(n), Endpoint::Component { name, .. }) => n == name,
        (Selector::Kind(k), Endpoint::Component { kind, .. }) => k == kind,
        (Selector::Cidr(c), Endpoint::External(ip)) => c.contains(*ip),
        (Selector::Identity(p), Endpoint::Identity(id)) => Selector::names_identity(p, id),
        _ => false,
    }
}

/// Whether a rule's destination `selector` names `end`.
fn to_matches(selector: &Selector, end: &Endpoint) -> bool {
    match (selector, end) {
        (Selector::Any, Endpoint::Component { .. }) => true,
        (Selector::Component(n), Endpoint::Component { name, .. }) => n == name,
        (Selector::Kind(k), Endpoint::Component { kind, .. }) => k == kind,
        (Selector::Cidr(c), Endpoint::External(ip)) => c.contains(*ip),
        _ => false,
    }
}

/// Whether `rule` matches `flow` apart from its `from` (which the index or the scan checked,
/// except for `cidr:` sources, checked here).
fn rule_matches(rule: &PolicyRule, flow: &Flow) -> bool {
    if let (Selector::Cidr(c), Endpoint::External(ip)) = (&rule.from, &flow.from)
        && !c.contains(*ip)
    {
        return false;
    }
    if let (Selector::Identity(p), Endpoint::Identity(id)) = (&rule.from, &flow.from)
        && !Selector::names_identity(p, id)
    {
        return false;
    }
    to_matches(&rule.to, &flow.to)
        && rule.protocol == flow.protocol
        && (rule.ports.is_empty() || rule.ports.contains(&flow.port))
}

#[cfg(test)]
mod tests;
