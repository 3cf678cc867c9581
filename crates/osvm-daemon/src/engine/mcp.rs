//! MCP glue: the gateway learns the applied stacks' servers and rules, HTTP servers are
//! attached once they started, and servers the gateway found broken are restarted.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;

/// Whether the component is an MCP server reached over its stdio.
pub(super) fn stdio_mcp(c: &Component) -> bool {
    c.mcp
        .as_ref()
        .is_some_and(|m| m.transport == osvm_core::stack::McpTransport::Stdio)
}

/// Two pipes for an MCP stdio channel: (its stdin: read, write), (its stdout: read, write).
#[allow(clippy::type_complexity)]
pub(super) fn stdio_pipes() -> std::io::Result<(
    (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
)> {
    let stdin = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let stdout = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((stdin, stdout))
}

impl Engine {
    /// Tells the gateway which MCP servers, rules and settings the applied stacks declare.
    pub(super) fn configure_mcp(&mut self) {
        let Some(gw) = &self.mcp else {
            return;
        };
        let mut servers = Vec::new();
        let mut rules = BTreeMap::new();
        let mut limits = BTreeMap::new();
        for stack in self.stacks.values() {
            for c in &stack.components {
                if let Some(spec) = &c.mcp {
                    servers.push(osvm_mcp::ServerDecl {
                        stack: stack.name.clone(),
                        component: c.name.clone(),
                        spec: spec.clone(),
                    });
                }
            }
            rules.insert(stack.name.clone(), stack.mcp_policy.clone());
            // Each stack's own limits: another stack's never apply to its servers.
            limits.insert(stack.name.clone(), stack.mcp);
        }
        if let Err(e) = gw.configure(servers, &rules, &limits) {
            self.note(EventKind::McpFailed, &format!("the MCP policy: {e}"));
        }
    }

    /// Connects the gateway to a streamable-HTTP MCP server that just started, inside its own
    /// network namespace.
    pub(super) fn attach_http_mcp(&mut self, i: usize, id: &str, inst: &Workload) {
        let (Some(gw), Some(spec)) = (&self.mcp, &self.units[i].component.mcp) else {
            return;
        };
        let osvm_core::stack::McpTransport::Http { port, path, tls } = &spec.transport else {
            return;
        };
        // Where the server's port is, and the namespace it is reached from.
        let (netns, to) = match inst.endpoint() {
            Ok(osvm_core::Endpoint::Namespace(_)) => (
                PathBuf::from(format!("/proc/{}/ns/net", inst.init_pid())),
                SocketAddr::from((Ipv4Addr::LOCALHOST, *port)),
            ),
            Ok(osvm_core::Endpoint::Address(addr)) if self.net.is_some() => {
                let hub = self.net.as_ref().map(|n| n.hub_path()).unwrap_or_default();
                (hub, SocketAddr::from((addr, *port)))
            }
            other => {
                let why = match other {
                    Err(e) => format!("the MCP server's port cannot be reached: {e}"),
                    Ok(_) => "an MCP server over HTTP is reached in its own network namespace \
                              (a process) or at its hub address (a guest in a hub stack); this \
                              instance has neither"
                        .to_owned(),
                };
                gw.detach(&spec.name, id, &why);
                return self.emit(i, EventKind::McpFailed, &why);
            }
        };
        let tls = match tls.then(|| self.gateway_tls(i)).transpose() {
            Ok(tls) => tls,
            Err(why) => {
                gw.detach(&spec.name, id, &why);
                return self.emit(i, EventKind::McpFailed, &why);
            }
        };
        let relays = self.runtime.config().state_dir.join("mcp").join("relays");
        let at = osvm_mcp::upstream::HttpUpstream {
            netns,
            to,
            path: path.clone(),
            tls,
        };
        gw.attach_http(&spec.name, id, at, relays);
    }

    /// The gateway's side of mutual TLS with unit `i`'s MCP server: a certificate of the
    /// stack's CA for `spiffe://<trust domain>/osvm/mcp-gateway` (24 h, a fresh one every 12 h
    /// of connections), the CA bundle and CRL as they are then, and the name the server must
    /// prove.
    fn gateway_tls(&self, i: usize) -> Result<osvm_mcp::upstream::UpstreamTls, String> {
        let stack = self.stack_of(i);
        let dir = crate::identity::pki_dir(&self.runtime.config().state_dir, &stack.trust_domain);
        let issue = move || {
            let fail = |e: &dyn std::fmt::Display| format!("the gateway's TLS identity: {e}");
            let pki = osvm_pki::Pki::open(&dir).map_err(|e| fail(&e))?;
            let material = pki
                .issue_gateway(Duration::from_secs(86_400))
                .map_err(|e| fail(&e))?;
            osvm_pki::tls::client_config(&material).map_err(|e| fail(&e))
        };
        let name = format!("{}.{}.osvm", self.units[i].component.name, stack.name);
        osvm_mcp::upstream::UpstreamTls::new(issue, &name)
    }

    /// Restarts MCP servers the gateway found broken (hung, crashed, wrote garbage).
    pub(super) fn follow_mcp_failures(&mut self, now: Instant) {
        let Some(gw) = &self.mcp else {
            return;
        };
        let mut failures = std::mem::take(&mut self.mcp_failures_early);
        failures.extend(gw.take_failures());
        for f in failures {
            let of_instance = |id: &str| f.instance == id;
            let Some(i) = self.units.iter().position(|u| {
                u.life.record.stack == f.stack
                    && u.component.name == f.component
                    && u.instance
                        .as_ref()
                        .is_some_and(|inst| of_instance(inst.id()))
            }) else {
                // Still booting: kept until its start is recorded. Otherwise it is over.
                let booting = self.units.iter().any(|u| {
                    u.life.record.stack == f.stack
                        && u.component.name == f.component
                        && u.booting.as_ref().is_some_and(|b| of_instance(&b.id))
                });
                if booting {
                    self.mcp_failures_early.push(f);
                }
                continue;
            };
            let why = format!("instance {}: {}; restarting it", f.instance, f.reason);
            self.observe(i, Observation::Broken(why), now);
        }
    }
}
