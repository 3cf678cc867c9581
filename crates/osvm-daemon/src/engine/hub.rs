//! Hub glue: stacks on the hub network join it before their components start, the
//! ruleset follows every change of the applied stacks' policies (API edits included), socket-
//! activated components keep their listening sockets, and the hub goes with its last stack.

use super::*;
use crate::network::NetPlaneError;

/// How often connections through published ports are reported as events.
pub(super) const PUBLISHED_REPORT_EVERY: Duration = Duration::from_secs(5);

/// A component port published on the host: (stack, component, port).
pub(super) type PublishedPort = (String, String, u16);

impl Engine {
    /// Recomputes the hub's ruleset from every hub stack (when the hub is in use) and logs
    /// what changed.
    pub(super) fn apply_network(&mut self) -> Result<(), crate::network::NetPlaneError> {
        let Some(plane) = self.net.as_mut() else {
            return Ok(());
        };
        let a = plane.apply(&self.stacks)?;
        if a.added + a.removed > 0 {
            self.note(
                EventKind::NetworkPolicy,
                &format!(
                    "hub ruleset applied: {} flows added, {} removed, {} connections cut",
                    a.added, a.removed, a.cut
                ),
            );
        }
        Ok(())
    }

    /// [`Engine::apply_network`] where a failure is only logged (nothing waits on it).
    pub(super) fn reapply_network(&mut self) {
        if let Err(e) = self.apply_network() {
            self.note(EventKind::NetworkFailed, &e.to_string());
        }
    }

    /// Emits, per component port published on the host, the connections the kernel accepted
    /// and refused since the last report (nothing when there were none).
    pub(super) fn report_published(&mut self) {
        let Some(plane) = self.net.as_ref() else {
            return;
        };
        if !self
            .stacks
            .values()
            .any(|s| s.components.iter().any(|c| !c.publish.is_empty()))
        {
            return;
        }
        let views = match plane.published(&self.stacks) {
            Ok(v) => v,
            Err(e) => {
                self.note(
                    EventKind::NetworkFailed,
                    &format!("reading published traffic: {e}"),
                );
                return;
            }
        };
        // One line per component port, naming every host address that publishes it.
        let mut now: BTreeMap<PublishedPort, (u64, u64, Vec<String>)> = BTreeMap::new();
        for v in views {
            let Some(service) = v.service else { continue };
            let e = now
                .entry((v.stack, v.component, service.port()))
                .or_insert((v.accepted, v.refused, Vec::new()));
            e.2.push(v.host.to_string());
        }
        let mut seen = BTreeMap::new();
        for ((stack, component, port), (accepted, refused, hosts)) in now {
            let key = (stack, component, port);
            let (was_a, was_r) = self.published_report.1.get(&key).copied().unwrap_or((0, 0));
            // A re-applied ruleset starts its counters over.
            let since = |n: u64, was: u64| if n >= was { n - was } else { n };
            let (a, r) = (since(accepted, was_a), since(refused, was_r));
            seen.insert(key.clone(), (accepted, refused));
            if a + r == 0 {
                continue;
            }
            let (stack, component, port) = key;
            if let Some(i) = self
                .units
                .iter()
                .position(|u| u.life.record.stack == stack && u.component.name == component)
            {
                self.emit(
                    i,
                    EventKind::Published,
                    &format!(
                        "port {port} (published at {}): {a} connection(s) accepted, {r} refused by policy since the last report",
                        hosts.join(", ")
                    ),
                );
            }
        }
        self.published_report.1 = seen;
    }

    /// Warns, once each, about processes of the host that started listening on an address a
    /// component publishes (osvm refuses to publish over one that listens already): the DNAT
    /// takes their new connections, which they will never see.
    pub(super) fn watch_published_listeners(&mut self) {
        if self.net.is_none() {
            return;
        }
        let mut found = Vec::new();
        for (i, u) in self.units.iter().enumerate() {
            for p in &u.component.publish {
                for l in osvm_net::listeners::on_port(p.host.port()) {
                    if l.covers(*p.host.ip()) {
                        let at = std::net::SocketAddr::new(l.addr, l.port);
                        found.push((i, format!("{}|{at}|{l}", p.host), p.host, at, l.to_string()));
                    }
                }
            }
        }
        let seen: BTreeSet<String> = found.iter().map(|f| f.1.clone()).collect();
        for (i, key, host, at, who) in found {
            if self.published_listeners.contains(&key) {
                continue;
            }
            let name = self.units[i].component.name.clone();
            self.emit(
                i,
                EventKind::Warning,
                &format!(
                    "{who} now listens on {at}, which {name} publishes ({host}): its new connections go to {name}, not to it; stop it or publish elsewhere"
                ),
            );
        }
        self.published_listeners = seen;
    }

    /// Points unit `i`'s service address (and its published ports) at its instance when the
    /// instance is ready for traffic, and makes it refuse new connections when not.
    pub(super) fn route_if_ready(&mut self, i: usize) {
        let ready = self.units[i].life.ready();
        let (stack, name) = (
            self.units[i].life.record.stack.clone(),
            self.units[i].component.name.clone(),
        );
        if self.stacks.get(&stack).map(|s| s.network) != Some(osvm_core::stack::StackNetwork::Hub) {
            return;
        }
        let Some(plane) = self.net.as_mut() else {
            return;
        };
        if plane.set_ready(&stack, &name, ready) {
            self.reapply_network();
        }
    }

    /// Changes a stack's policy (kept until the stack is applied again from its file) and
    /// enforces the result at once: a removed allow cuts the connections it let in. Returns the
    /// index and text of the rule added or removed.
    pub fn edit_policy(
        &mut self,
        stack: &str,
        edit: PolicyEdit,
    ) -> Result<(usize, String), EngineError> {
        use osvm_core::stack::Selector;
        let mut changed = self
            .stacks
            .get(stack)
            .cloned()
            .ok_or_else(|| EngineError::Missing(format!("no stack is called `{stack}`")))?;
        let (index, rule, action) = match edit {
            PolicyEdit::Add(rule) => {
                for (end, selector) in [("from", &rule.from), ("to", &rule.to)] {
                    match selector {
                        Selector::Component(name)
                            if !changed.components.iter().any(|c| &c.name == name) =>
                        {
                            return Err(EngineError::Invalid(format!(
                                "`{end}`: stack `{stack}` has no component `{name}`"
                            )));
                        }
                        Selector::Identity(_) if end == "to" => {
                            return Err(EngineError::Invalid(
                                "a SPIFFE ID names who connects: use it in `from`".into(),
                            ));
                        }
                        Selector::Cidr(_) | Selector::Identity(_)
                            if end == "from" && matches!(rule.to, Selector::Cidr(_)) =>
                        {
                            return Err(EngineError::Invalid(
                                "a rule from outside the stack (`world` or `cidr:`) must go to components".into(),
                            ));
                        }
                        _ => {}
                    }
                }
                changed.policies.push(rule.clone());
                (changed.policies.len() - 1, rule, EventKind::PolicyAdd)
            }
            PolicyEdit::Remove(index) => {
                if index >= changed.policies.len() {
                    return Err(EngineError::Missing(format!(
                        "stack `{stack}` has {} rule(s); there is no #{index}",
                        changed.policies.len()
                    )));
                }
                (
                    index,
                    changed.policies.remove(index),
                    EventKind::PolicyRemove,
                )
            }
        };
        let text = osvm_policy::PolicySet::new(vec![rule])
            .describe(0)
            .unwrap_or_default();
        self.apply(changed)
            .map_err(|e| EngineError::Store(e.to_string()))?;
        if let Some(plane) = self.net.as_ref() {
            let _ = plane.audit().append(&osvm_policy::AuditRecord::new(
                "operator",
                "root (API)",
                &format!("stack {stack} policy"),
                action.as_str(),
                true,
                &format!("#{index} {text}"),
            ));
        }
        self.note(action, &format!("stack {stack}: #{index} {text}"));
        Ok((index, text))
    }

    /// The policy rules of `stack`, in order.
    pub fn policies(&self, stack: &str) -> Result<Vec<osvm_core::stack::PolicyRule>, EngineError> {
        self.stacks
            .get(stack)
            .map(|s| s.policies.clone())
            .ok_or_else(|| EngineError::Missing(format!("no stack is called `{stack}`")))
    }

    /// The hub as it is now (`None` when no stack uses it).
    pub fn network_view(
        &self,
    ) -> Option<Result<crate::network::NetView, crate::network::NetPlaneError>> {
        self.net.as_ref().map(|plane| plane.show(&self.stacks))
    }

    /// Makes `plane` the engine's hub, saying what its opening swept away.
    pub(super) fn use_plane(&mut self, plane: crate::network::NetPlane) {
        match &plane.swept {
            Ok(swept) if !swept.is_empty() => self.note(
                EventKind::Network,
                &format!(
                    "removed the host NAT tables of hubs that no longer exist (their daemons \
                     ended without taking them down): {}",
                    swept.join(", ")
                ),
            ),
            Ok(_) => {}
            Err(e) => self.note(
                EventKind::NetworkFailed,
                &format!("could not look for the host tables of ended hubs: {e}"),
            ),
        }
        self.net = Some(plane);
    }

    /// Puts unit `i`'s whole stack on the hub (so every name resolves) and applies the
    /// ruleset; returns `i`'s namespace and its `/etc/hosts` lines.
    pub(super) fn join_hub(
        &mut self,
        i: usize,
    ) -> Result<(std::path::PathBuf, Vec<(String, String)>), NetPlaneError> {
        if self.net.is_none() {
            let plane = crate::network::NetPlane::open(&self.runtime.config().state_dir)?;
            self.use_plane(plane);
        }
        let stack = self.stack_of(i).clone();
        let name = self.units[i].component.name.clone();
        let plane = self.net.as_mut().expect("opened above");
        let mut own = None;
        let mut joined = false;
        for c in &stack.components {
            let (path, new) = plane.join(&stack.name, &c.name)?;
            joined |= new;
            if c.name == name {
                own = Some(path);
            }
        }
        let hosts = plane.hosts(&stack);
        if joined || !plane.in_force() {
            // New members: the ruleset must know them before the component starts. After a
            // failed apply (nft missing, say) every start applies again, and fails with it.
            self.apply_network()?;
        }
        let own =
            own.ok_or_else(|| NetPlaneError::NotOnHub(format!("{name} is not in its stack")))?;
        Ok((own, hosts))
    }

    /// Removes the hub and every component namespace: the foreground `osvm up` after
    /// [`Engine::shutdown`], and a daemon once no stack uses the hub (a daemon that merely
    /// stops keeps them for its next start).
    pub fn teardown_network(&mut self) {
        if let Some(plane) = self.net.take()
            && let Err(e) = plane.destroy()
        {
            self.note(EventKind::NetworkTeardownFailed, &e.to_string());
        }
    }

    /// Unit `i`'s listening sockets when it is socket-activated (none otherwise): made once in
    /// its hub namespace, or taken back from `running` after a daemon restart.
    pub(super) fn listeners_for(
        &mut self,
        i: usize,
        running: Option<&Workload>,
    ) -> Result<Vec<std::os::fd::OwnedFd>, StartError> {
        let running = running.map(|w| &**w);
        let c = &self.units[i].component;
        if !c.socket_activation {
            return Ok(Vec::new());
        }
        let (stack, name, ports) = (
            self.units[i].life.record.stack.clone(),
            c.name.clone(),
            c.listen.clone(),
        );
        let plane = self.net.as_mut().ok_or(StartError::SocketsWithoutHub)?;
        plane
            .listeners(&stack, &name, &ports, running)
            .map_err(StartError::Listeners)
    }
}
