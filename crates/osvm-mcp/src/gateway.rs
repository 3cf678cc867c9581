//! The gateway: one MCP server to clients, an MCP client to every MCP server component.
//!
//! Clients see the tools of every connected server as `<prefix>.<tool>` (the prefix is the
//! server's name unless the stack sets one). Each request carries a client identity: fixed for
//! a stdio session (the bridge authenticated it), or put into the HTTP request by the daemon's
//! authentication layer (a bearer token's client name, or a client certificate's SPIFFE ID as
//! vouched for by `osvm mcp serve --listen`). Then, for `tools/call`:
//!
//! 1. the name is resolved to a server and tool (unknown: error);
//! 2. the client's rate is checked (a token bucket per client: `rate` per second, `burst`);
//! 3. the stack's `[[mcp_policy]]` decides (default deny, deny overrides); a denial is a
//!    JSON-RPC error that says which rule or that none allowed;
//! 4. the call goes to the server with the stack's `call_timeout`; a timeout, a closed channel
//!    or a garbage answer is an error for this call only, and the server is reported broken
//!    ([`Gateway::take_failures`]) so the orchestrator restarts it;
//! 5. every outcome is written to the audit log, with the arguments' SHA-256 and the latency.
//!
//! `tools/list` shows a client only the tools it may call. Resources and prompts of a server are
//! passed through (resource URIs as `osvm+mcp://<prefix>/<original URI>`, prompts as
//! `<prefix>.<prompt>`) to clients that may call at least one of its tools.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use osvm_core::stack::{McpRule, McpServerSpec, McpSettings};
use osvm_policy::mcp::{McpDecision, McpPolicy};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest,
    ErrorCode, GetPromptRequestParams, GetPromptResponse, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ResultType, ServerCapabilities, ServerConfig,
    ServerResult, Tool,
};
use rmcp::service::{PeerRequestOptions, RequestContext, ServiceError};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::Serialize;

use crate::audit::{AuditLog, Outcome, Record};
use crate::tokens::TokenStore;
use crate::upstream::{self, Upstream};

/// The JSON-RPC error code of a policy denial (implementation-defined server error range).
pub const DENIED: ErrorCode = ErrorCode(-32001);
/// The JSON-RPC error code of a rate-limited call (not -32002, which MCP gives "resource not
/// found").
pub const RATE_LIMITED: ErrorCode = ErrorCode(-32005);
/// The JSON-RPC error code of a server that failed the call (timeout, crash, garbage).
pub const UPSTREAM_FAILED: ErrorCode = ErrorCode(-32003);
/// The JSON-RPC error code of a request without an authenticated client.
pub const UNAUTHENTICATED: ErrorCode = ErrorCode(-32004);
/// How resource URIs of a server are rewritten for clients.
pub const URI_SCHEME: &str = "osvm+mcp://";
/// How long a server may take to answer `initialize`.
const HANDSHAKE: Duration = Duration::from_secs(30);

/// How long a server has to answer the ping that follows a timed-out call.
const PING: Duration = Duration::from_secs(3);

/// Whether the server answers a ping within [`PING`].
pub(crate) async fn alive(up: &Upstream) -> bool {
    let sent = up
        .client
        .peer()
        .send_request_with_option(
            ClientRequest::PingRequest(Default::default()),
            PeerRequestOptions::with_timeout(PING),
        )
        .await;
    match sent {
        // Any answer, an error included, says the server reads and writes.
        Ok(handle) => matches!(
            handle.await_response().await,
            Ok(_) | Err(ServiceError::McpError(_))
        ),
        Err(_) => false,
    }
}

/// The authenticated client of an HTTP request, put into its extensions by the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub String);

/// An MCP server component the gateway should know.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerDecl {
    /// Its stack.
    pub stack: String,
    /// Its component name.
    pub component: String,
    /// Its MCP settings.
    pub spec: McpServerSpec,
}

/// A server the gateway found broken while its instance still ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The stack.
    pub stack: String,
    /// The component.
    pub component: String,
    /// The instance that failed.
    pub instance: String,
    /// What happened.
    pub reason: String,
}

/// A `tools/call` the gateway let through: whom it is for, where it goes, and what its audit
/// record says.
pub(crate) struct Admitted {
    pub client: String,
    pub server: String,
    pub tool: String,
    /// The policy's reason for allowing it.
    pub reason: String,
    pub args_sha256: Option<String>,
    /// When the gateway received it.
    pub began: Instant,
    /// The stack's `call_timeout`.
    pub timeout: Duration,
}

/// Whether a server can be called.
#[derive(Clone)]
enum Link {
    /// Not connected, and why.
    Down(String),
    /// Handshaking with this instance.
    Connecting(String),
    /// Connected to this instance.
    Up(String, Arc<Upstream>),
}

struct Server {
    decl: ServerDecl,
    link: Link,
    /// The session of an instance found broken, kept open until the orchestrator has stopped
    /// that instance: closing the server's input at once would let it exit with code 0 first,
    /// which an `on-failure` restart policy takes for a clean end.
    broken: Option<Arc<Upstream>>,
}

/// Each stack's `[[mcp_policy]]`, and which stack each server belongs to: a stack's rules
/// govern only its own servers, so one stack can never widen access to another's tools.
#[derive(Default)]
struct Policies {
    by_stack: BTreeMap<String, McpPolicy>,
    stack_of: BTreeMap<String, String>,
    /// Each stack's limits and its clients' rate buckets: one stack's settings never tighten
    /// (or loosen) another's.
    limits: BTreeMap<String, (McpSettings, Arc<DefaultKeyedRateLimiter<String>>)>,
}

impl Policies {
    /// The limits of `server`'s stack (the defaults for a server of no stack).
    fn settings_of(&self, server: &str) -> McpSettings {
        self.stack_of
            .get(server)
            .and_then(|stack| self.limits.get(stack))
            .map(|(s, _)| *s)
            .unwrap_or_default()
    }

    /// The rate buckets of `server`'s stack.
    fn limiter_of(&self, server: &str) -> Option<Arc<DefaultKeyedRateLimiter<String>>> {
        let stack = self.stack_of.get(server)?;
        self.limits.get(stack).map(|(_, l)| l.clone())
    }

    /// What `server`'s own stack decides for `client` calling `tool`.
    fn decide(&self, client: &str, server: &str, tool: &str) -> McpDecision {
        let Some(stack) = self.stack_of.get(server) else {
            return McpDecision {
                allowed: false,
                rule: None,
                reason: format!("denied: server `{server}` belongs to no applied stack"),
            };
        };
        match self.by_stack.get(stack) {
            Some(policy) => {
                let mut d = policy.decide(client, server, tool);
                if d.rule.is_some() {
                    // "client `bob` -> fs.write_file: denied by mcp_policy #2 (...) of stack s".
                    // A default deny says no more than it would for a server that does not exist.
                    d.reason = format!(
                        "client `{client}` -> {server}.{tool}: {} of stack {stack}",
                        d.reason
                    );
                }
                d
            }
            None => McpDecision {
                allowed: false,
                rule: None,
                reason: format!(
                    "denied: no mcp_policy rule allows client `{client}` to use {server}.{tool}"
                ),
            },
        }
    }
}

/// The servers behind the gateway by name, and the name of each tool prefix's server (a call's
/// `<prefix>.<tool>` finds its server in one lookup, not a scan).
#[derive(Default)]
struct Servers {
    by_name: BTreeMap<String, Server>,
    by_prefix: HashMap<String, String>,
}

impl Servers {
    /// The server whose tools are `<prefix>.<...>`.
    fn of_prefix(&self, prefix: &str) -> Option<&Server> {
        self.by_prefix.get(prefix).and_then(|n| self.by_name.get(n))
    }
}

impl std::ops::Deref for Servers {
    type Target = BTreeMap<String, Server>;
    fn deref(&self) -> &Self::Target {
        &self.by_name
    }
}

impl std::ops::DerefMut for Servers {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.by_name
    }
}

struct Inner {
    rt: tokio::runtime::Handle,
    servers: RwLock<Servers>,
    policy: RwLock<Arc<Policies>>,
    settings: RwLock<McpSettings>,
    limiter: RwLock<Arc<DefaultKeyedRateLimiter<String>>>,
    tokens: TokenStore,
    audit: AuditLog,
    failures: Mutex<Vec<Failure>>,
}

/// The gateway (cheap to clone: every clone is the same gateway).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// A tool as `osvm mcp tools` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ToolView {
    /// The name clients call: `<prefix>.<tool>`.
    pub name: String,
    /// The server (its name in the stack).
    pub server: String,
    /// The component running it, `stack/component`.
    pub component: String,
    /// The tool's own name.
    pub tool: String,
    /// Its description.
    pub description: String,
    /// Whether the asking client may call it.
    pub allowed: bool,
    /// Why (the policy's reason).
    pub policy: String,
}

/// A server as `osvm mcp servers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ServerView {
    /// Its name.
    pub server: String,
    /// Its tools' prefix.
    pub prefix: String,
    /// `stack/component`.
    pub component: String,
    /// `up`, `connecting` or `down`.
    pub state: String,
    /// The instance connected (or connecting), or why it is down.
    pub detail: String,
    /// The protocol version agreed on, when up.
    pub protocol: Option<String>,
}

fn quota(settings: &McpSettings) -> Quota {
    let rate = NonZeroU32::new(settings.rate_per_second.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(settings.burst.max(1)).expect("at least 1");
    Quota::per_second(rate).allow_burst(burst)
}

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> McpError {
    McpError::new(code, message.into(), None)
}

impl Gateway {
    /// A gateway whose upstream sessions run on `rt`, with its tokens and audit log in
    /// `state_dir/mcp`.
    pub fn new(rt: tokio::runtime::Handle, state_dir: &Path) -> Self {
        let settings = McpSettings::default();
        Self {
            inner: Arc::new(Inner {
                rt,
                servers: RwLock::new(Servers::default()),
                policy: RwLock::new(Arc::new(Policies::default())),
                limiter: RwLock::new(Arc::new(RateLimiter::keyed(quota(&settings)))),
                settings: RwLock::new(settings),
                tokens: TokenStore::open(state_dir),
                audit: AuditLog::open(state_dir),
                failures: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The bearer tokens.
    pub fn tokens(&self) -> &TokenStore {
        &self.inner.tokens
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// The limits of `server`'s stack.
    pub fn limits_of(&self, server: &str) -> McpSettings {
        self.inner
            .policy
            .read()
            .expect("policy")
            .settings_of(server)
    }

    /// What client sessions accept: the largest `max_message_bytes` of the applied stacks (and
    /// the longest `call_timeout`); rates are per stack (see [`Gateway::limits_of`]).
    pub fn settings(&self) -> McpSettings {
        *self.inner.settings.read().expect("settings")
    }

    /// Sets the servers, each stack's rules (`stack -> rules`) and limits (`stack ->
    /// settings`), from every applied stack. A server's calls follow its own stack's limits
    /// (rate buckets, call timeout, message size); client sessions accept messages up to the
    /// largest of them. Servers still declared keep their connections, and a stack whose limits
    /// did not change keeps its clients' buckets. Server names and prefixes must be unique
    /// across stacks (the orchestrator refuses a stack that would collide); a server that
    /// collides anyway is left out, with the reason in the error.
    pub fn configure(
        &self,
        servers: Vec<ServerDecl>,
        rules: &BTreeMap<String, Vec<McpRule>>,
        limits: &BTreeMap<String, McpSettings>,
    ) -> Result<(), String> {
        let mut policies = Policies::default();
        {
            let before = self.inner.policy.read().expect("policy");
            for (stack, settings) in limits {
                let limiter = match before.limits.get(stack) {
                    Some((s, l)) if s == settings => l.clone(),
                    _ => Arc::new(RateLimiter::keyed(quota(settings))),
                };
                policies.limits.insert(stack.clone(), (*settings, limiter));
            }
        }
        // What client sessions accept: the largest message any stack allows.
        let settings = McpSettings {
            max_message_bytes: limits
                .values()
                .map(|s| s.max_message_bytes)
                .max()
                .unwrap_or(McpSettings::default().max_message_bytes),
            call_timeout: limits
                .values()
                .map(|s| s.call_timeout)
                .max()
                .unwrap_or(McpSettings::default().call_timeout),
            ..McpSettings::default()
        };
        for (stack, rules) in rules {
            let policy = McpPolicy::new(rules).map_err(|e| format!("stack {stack}: {e}"))?;
            policies.by_stack.insert(stack.clone(), policy);
        }
        let mut collisions = Vec::new();
        let mut servers: Vec<ServerDecl> = servers
            .into_iter()
            .filter(|d| {
                let clash = policies
                    .stack_of
                    .get(&d.spec.name)
                    .filter(|s| **s != d.stack);
                if let Some(other) = clash {
                    collisions.push(format!(
                        "MCP server `{}` of stack {} collides with stack {other}'s; left out",
                        d.spec.name, d.stack
                    ));
                    return false;
                }
                policies
                    .stack_of
                    .insert(d.spec.name.clone(), d.stack.clone());
                true
            })
            .collect();
        let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
        servers.retain(|d| match prefixes.get(&d.spec.prefix) {
            Some(other) if *other != d.spec.name => {
                collisions.push(format!(
                    "MCP server `{}` of stack {} uses prefix `{}` like server `{other}`; left out",
                    d.spec.name, d.stack, d.spec.prefix
                ));
                policies.stack_of.remove(&d.spec.name);
                false
            }
            _ => {
                prefixes.insert(d.spec.prefix.clone(), d.spec.name.clone());
                true
            }
        });
        *self.inner.policy.write().expect("policy") = Arc::new(policies);
        *self.inner.settings.write().expect("settings") = settings;
        let mut map = self.inner.servers.write().expect("servers");
        let mut next = BTreeMap::new();
        for decl in servers {
            let link = match map.remove(&decl.spec.name) {
                Some(old)
                    if old.decl.stack == decl.stack && old.decl.component == decl.component =>
                {
                    old.link
                }
                _ => Link::Down("not started yet".into()),
            };
            next.insert(
                decl.spec.name.clone(),
                Server {
                    decl,
                    link,
                    broken: None,
                },
            );
        }
        map.by_prefix = prefixes.into_iter().collect();
        map.by_name = next;
        if collisions.is_empty() {
            Ok(())
        } else {
            Err(collisions.join("; "))
        }
    }

    /// Connects to server `server`'s instance `instance` through its stdio pipes (`from`: its
    /// stdout, `to`: its stdin). The handshake runs in the background; a failure is reported
    /// through [`Gateway::take_failures`].
    pub fn attach_stdio(&self, server: &str, instance: &str, from: OwnedFd, to: OwnedFd) {
        let max = self.limits_of(server).max_message_bytes as usize;
        self.attach(server, instance, async move {
            upstream::connect_stdio(from, to, max, HANDSHAKE).await
        });
    }

    /// Connects to server `server`'s instance `instance`, a streamable-HTTP server where `at`
    /// says, through a relay socket in `relay_dir`.
    pub fn attach_http(
        &self,
        server: &str,
        instance: &str,
        at: upstream::HttpUpstream,
        relay_dir: PathBuf,
    ) {
        let max = self.limits_of(server).max_message_bytes as usize;
        let socket = relay_dir.join(format!("{instance}.sock"));
        self.attach(server, instance, async move {
            std::fs::create_dir_all(&relay_dir)
                .map_err(|e| format!("create {}: {e}", relay_dir.display()))?;
            let to = at.to;
            let relay = upstream::Relay::start(socket, at.netns, to, at.tls)
                .map_err(|e| format!("the relay to the server ({to}): {e}"))?;
            let mut up =
                upstream::connect_http(&relay, to.port(), &at.path, max, HANDSHAKE).await?;
            up.relay = Some(relay);
            Ok(up)
        });
    }

    /// Marks `server` connecting to `instance` and runs `connect` in the background.
    fn attach(
        &self,
        server: &str,
        instance: &str,
        connect: impl std::future::Future<Output = Result<Upstream, String>> + Send + 'static,
    ) {
        {
            let mut map = self.inner.servers.write().expect("servers");
            let Some(s) = map.get_mut(server) else {
                return;
            };
            s.link = Link::Connecting(instance.to_owned());
            s.broken = None;
        }
        let gw = self.clone();
        let (server, instance) = (server.to_owned(), instance.to_owned());
        self.inner.rt.spawn(async move {
            let result = connect.await;
            let mut map = gw.inner.servers.write().expect("servers");
            let Some(s) = map.get_mut(&server) else {
                return;
            };
            // A newer instance may have been attached meanwhile.
            if !matches!(&s.link, Link::Connecting(i) if *i == instance) {
                return;
            }
            match result {
                Ok(up) => s.link = Link::Up(instance, Arc::new(up)),
                Err(reason) => {
                    s.link = Link::Down(reason.clone());
                    let failure = Failure {
                        stack: s.decl.stack.clone(),
                        component: s.decl.component.clone(),
                        instance,
                        reason,
                    };
                    drop(map);
                    gw.inner.failures.lock().expect("failures").push(failure);
                }
            }
        });
    }

    /// Forgets instance `instance` of server `server` (it ended).
    pub fn detach(&self, server: &str, instance: &str, why: &str) {
        let mut map = self.inner.servers.write().expect("servers");
        if let Some(s) = map.get_mut(server) {
            // A link already down (the gateway found it broken) learns the latest word.
            let current = match &s.link {
                Link::Up(i, _) | Link::Connecting(i) => i == instance,
                Link::Down(_) => true,
            };
            if current {
                s.link = Link::Down(why.to_owned());
                s.broken = None;
            }
        }
    }

    /// Servers found broken since the last call, for the orchestrator to restart.
    pub fn take_failures(&self) -> Vec<Failure> {
        std::mem::take(&mut *self.inner.failures.lock().expect("failures"))
    }

    /// Every server and its state.
    pub fn servers(&self) -> Vec<ServerView> {
        let map = self.inner.servers.read().expect("servers");
        map.values()
            .map(|s| {
                let (state, detail, protocol) = match &s.link {
                    Link::Up(i, up) => (
                        "up",
                        format!("{i} ({})", up.server_info),
                        Some(up.protocol.clone()),
                    ),
                    Link::Connecting(i) => ("connecting", i.clone(), None),
                    Link::Down(why) => ("down", why.clone(), None),
                };
                ServerView {
                    server: s.decl.spec.name.clone(),
                    prefix: s.decl.spec.prefix.clone(),
                    component: format!("{}/{}", s.decl.stack, s.decl.component),
                    state: state.into(),
                    detail,
                    protocol,
                }
            })
            .collect()
    }

    /// The connected servers: (name, prefix, session).
    fn connected(&self) -> Vec<(String, String, Arc<Upstream>)> {
        let map = self.inner.servers.read().expect("servers");
        map.values()
            .filter_map(|s| match &s.link {
                Link::Up(_, up) => Some((
                    s.decl.spec.name.clone(),
                    s.decl.spec.prefix.clone(),
                    up.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Resolves `<prefix>.<name>` to (server, name, session).
    /// The server (its name) and the name on it that `<prefix>.<name>` means, whether the
    /// server runs or not.
    fn known_server(&self, qualified: &str) -> Option<(String, String)> {
        let (prefix, name) = qualified.split_once('.')?;
        let map = self.inner.servers.read().expect("servers");
        map.of_prefix(prefix)
            .map(|s| (s.decl.spec.name.clone(), name.to_owned()))
    }

    /// Writes one audit record for a request other than `tools/call`.
    #[allow(clippy::too_many_arguments)]
    fn audit_request(
        &self,
        client: &str,
        method: &str,
        server: Option<&str>,
        what: &str,
        outcome: Outcome,
        detail: String,
        began: Instant,
    ) {
        let r = Record {
            time: String::new(),
            client: client.to_owned(),
            method: method.to_owned(),
            server: server.map(str::to_owned),
            tool: Some(what.to_owned()),
            args_sha256: None,
            outcome,
            detail,
            latency_ms: began.elapsed().as_secs_f64() * 1000.0,
        };
        if let Err(e) = self.inner.audit.write(r) {
            tracing::warn!("write the MCP audit log: {e}");
        }
    }

    pub(crate) fn resolve(
        &self,
        qualified: &str,
    ) -> Result<(String, String, Arc<Upstream>), McpError> {
        let (prefix, name) = qualified.split_once('.').ok_or_else(|| {
            McpError::invalid_params(
                format!("`{qualified}` is not a gateway name: expected <server>.<name>"),
                None,
            )
        })?;
        let map = self.inner.servers.read().expect("servers");
        let s = map.of_prefix(prefix).ok_or_else(|| {
            McpError::invalid_params(
                format!("no MCP server `{prefix}` behind this gateway"),
                None,
            )
        })?;
        match &s.link {
            Link::Up(_, up) => Ok((s.decl.spec.name.clone(), name.to_owned(), up.clone())),
            Link::Connecting(i) => Err(error(
                UPSTREAM_FAILED,
                format!(
                    "MCP server `{}` is starting (instance {i}); try again shortly",
                    s.decl.spec.name
                ),
            )),
            Link::Down(why) => Err(error(
                UPSTREAM_FAILED,
                format!("MCP server `{}` is not running: {why}", s.decl.spec.name),
            )),
        }
    }

    /// Reports a server broken while its instance ran (the orchestrator restarts it).
    pub(crate) fn broken(&self, server: &str, upstream: &Arc<Upstream>, reason: String) {
        let mut map = self.inner.servers.write().expect("servers");
        let Some(s) = map.get_mut(server) else {
            return;
        };
        let Link::Up(instance, up) = &s.link else {
            return;
        };
        if !Arc::ptr_eq(up, upstream) {
            return;
        }
        let failure = Failure {
            stack: s.decl.stack.clone(),
            component: s.decl.component.clone(),
            instance: instance.clone(),
            reason: reason.clone(),
        };
        s.broken = Some(up.clone());
        s.link = Link::Down(reason);
        drop(map);
        self.inner.failures.lock().expect("failures").push(failure);
    }

    /// Every connected server's tools with the policy's decision for `client`:
    /// (server, prefix, tool, decision). A server that fails to answer is reported broken.
    async fn listed(&self, client: &str) -> Vec<(String, String, Tool, McpDecision)> {
        let policy = self.inner.policy.read().expect("policy").clone();
        let listed = futures_join(self.connected().into_iter().map(|(server, prefix, up)| {
            let timeout = policy.settings_of(&server).call_timeout;
            async move {
                let tools = tokio::time::timeout(timeout, up.client.peer().list_all_tools()).await;
                (server, prefix, up, tools, timeout)
            }
        }))
        .await;
        let mut out = Vec::new();
        for (server, prefix, up, tools, timeout) in listed {
            match tools {
                Ok(Ok(tools)) => {
                    for t in tools {
                        let d = policy.decide(client, &server, &t.name);
                        out.push((server.clone(), prefix.clone(), t, d));
                    }
                }
                Ok(Err(e)) => {
                    if matches!(
                        e,
                        ServiceError::TransportClosed | ServiceError::TransportSend(_)
                    ) {
                        self.broken(&server, &up, format!("tools/list: {e}"));
                    }
                }
                Err(_) => self.broken(
                    &server,
                    &up,
                    format!("no answer to tools/list within {timeout:?}"),
                ),
            }
        }
        out
    }

    /// The tools `client` may call (or, with `all`, every tool with the decision).
    pub async fn tools(&self, client: &str, all: bool) -> Vec<ToolView> {
        let components: BTreeMap<String, String> = self
            .inner
            .servers
            .read()
            .expect("servers")
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    format!("{}/{}", s.decl.stack, s.decl.component),
                )
            })
            .collect();
        self.listed(client)
            .await
            .into_iter()
            .filter(|(_, _, _, d)| all || d.allowed)
            .map(|(server, prefix, t, d)| ToolView {
                name: format!("{prefix}.{}", t.name),
                component: components.get(&server).cloned().unwrap_or_default(),
                server,
                tool: t.name.to_string(),
                description: t.description.as_deref().unwrap_or("").to_owned(),
                allowed: d.allowed,
                policy: d.reason,
            })
            .collect()
    }

    /// The tools `client` may call, as MCP tools named `<prefix>.<tool>`.
    async fn list_tools_for(&self, client: &str) -> Vec<Tool> {
        self.listed(client)
            .await
            .into_iter()
            .filter(|(_, _, _, d)| d.allowed)
            .map(|(_, prefix, mut t, _)| {
                t.name = format!("{prefix}.{}", t.name).into();
                t
            })
            .collect()
    }

    /// Checks a `tools/call` of `name` (`<prefix>.<tool>`) for `client` (rate, policy, a
    /// running server) and says where it goes; a refusal is audited and returned as the error
    /// for the client.
    pub(crate) fn admit(
        &self,
        client: &str,
        name: &str,
        args_sha256: Option<String>,
        began: Instant,
    ) -> Result<(Admitted, Arc<Upstream>), McpError> {
        let record = |server: Option<&str>, tool: Option<&str>, outcome, detail: String| Record {
            time: String::new(),
            client: client.to_owned(),
            method: "tools/call".into(),
            server: server.map(str::to_owned),
            // Unresolved: the name as asked for.
            tool: tool
                .map(str::to_owned)
                .or_else(|| server.is_none().then(|| name.to_owned())),
            args_sha256: args_sha256.clone(),
            outcome,
            detail,
            latency_ms: began.elapsed().as_secs_f64() * 1000.0,
        };
        let audit = |r: Record| {
            if let Err(e) = self.inner.audit.write(r) {
                tracing::warn!("write the MCP audit log: {e}");
            }
        };
        // The rate first, by the stack of the server named (a client flooding unknown names is
        // limited by the defaults).
        let known = self.known_server(name);
        let policy = self.inner.policy.read().expect("policy").clone();
        let (limiter, s) = match known
            .as_ref()
            .and_then(|(server, _)| Some((policy.limiter_of(server)?, policy.settings_of(server))))
        {
            Some(found) => found,
            None => (
                self.inner.limiter.read().expect("limiter").clone(),
                McpSettings::default(),
            ),
        };
        if limiter.check_key(&client.to_owned()).is_err() {
            let msg = format!(
                "rate limit: client `{client}` may make {} calls per second (bursts of {})",
                s.rate_per_second, s.burst
            );
            audit(record(None, None, Outcome::RateLimited, msg.clone()));
            return Err(error(RATE_LIMITED, msg));
        }
        // The policy first, and an unknown name refused exactly like a denied one: a client
        // learns nothing of servers it may not use, not even whether they exist or run.
        let Some((server, tool)) = known else {
            let msg = format!("denied: no mcp_policy rule allows client `{client}` to use {name}");
            audit(record(None, None, Outcome::Unknown, msg.clone()));
            return Err(McpError::new(
                DENIED,
                msg,
                Some(serde_json::json!({ "client": client, "tool": name, "rule": null })),
            ));
        };
        let decision = policy.decide(client, &server, &tool);
        if !decision.allowed {
            audit(record(
                Some(&server),
                Some(&tool),
                Outcome::Denied,
                decision.reason.clone(),
            ));
            return Err(McpError::new(
                DENIED,
                decision.reason.clone(),
                Some(
                    serde_json::json!({ "client": client, "server": server, "tool": tool, "rule": decision.rule }),
                ),
            ));
        }
        let up = match self.resolve(name) {
            Ok((_, _, up)) => up,
            Err(e) => {
                // It exists but does not run: named, with what was asked of it.
                audit(record(
                    Some(&server),
                    Some(&tool),
                    Outcome::Unavailable,
                    e.message.to_string(),
                ));
                return Err(e);
            }
        };
        Ok((
            Admitted {
                client: client.to_owned(),
                server,
                tool,
                reason: decision.reason,
                args_sha256,
                began,
                timeout: s.call_timeout,
            },
            up,
        ))
    }

    /// Writes the audit record of an admitted call's end.
    pub(crate) fn audit_call(&self, a: &Admitted, outcome: Outcome, detail: String) {
        let r = Record {
            time: String::new(),
            client: a.client.clone(),
            method: "tools/call".into(),
            server: Some(a.server.clone()),
            tool: Some(a.tool.clone()),
            args_sha256: a.args_sha256.clone(),
            outcome,
            detail,
            latency_ms: a.began.elapsed().as_secs_f64() * 1000.0,
        };
        if let Err(e) = self.inner.audit.write(r) {
            tracing::warn!("write the MCP audit log: {e}");
        }
    }

    /// Calls tool `name` (`<prefix>.<tool>`) for `client`: rate, policy, timeout, audit.
    pub async fn call(
        &self,
        client: &str,
        name: &str,
        arguments: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<CallToolResult, McpError> {
        let began = Instant::now();
        let args_sha256 = arguments.as_ref().map(|a| {
            crate::digest::sha256(serde_json::to_string(a).unwrap_or_default().as_bytes())
        });
        let (a, up) = self.admit(client, name, args_sha256, began)?;
        let (server, tool) = (a.server.clone(), a.tool.clone());
        let audit = |outcome, detail| self.audit_call(&a, outcome, detail);
        let timeout = a.timeout;
        let mut params = CallToolRequestParams::new(tool.clone());
        if let Some(a) = arguments {
            params = params.with_arguments(a);
        }
        let sent = up
            .client
            .peer()
            .send_request_with_option(
                ClientRequest::CallToolRequest(CallToolRequest::new(params)),
                PeerRequestOptions::with_timeout(timeout),
            )
            .await;
        let answer = match sent {
            Ok(handle) => handle.await_response().await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(ServerResult::CallToolResult(mut r)) => {
                r.result_type.get_or_insert(ResultType::COMPLETE);
                let outcome = if r.is_error == Some(true) {
                    Outcome::ToolError
                } else {
                    Outcome::Ok
                };
                audit(outcome, a.reason.clone());
                Ok(r)
            }
            Ok(other) => {
                let msg = format!("MCP server `{server}` answered tools/call with {other:?}");
                self.broken(&server, &up, msg.clone());
                audit(Outcome::UpstreamError, msg.clone());
                Err(error(UPSTREAM_FAILED, msg))
            }
            // The server's own JSON-RPC error goes to the client as it is.
            Err(ServiceError::McpError(e)) => {
                audit(Outcome::ToolError, e.message.to_string());
                Err(e)
            }
            Err(ServiceError::Timeout { timeout }) => {
                // rmcp has sent the server notifications/cancelled for the call. A slow tool is
                // not a crash: the server is restarted only if it does not answer a ping either.
                let msg = format!(
                    "MCP server `{server}` did not answer tools/call {tool} within {}s; the call \
                     was cancelled",
                    timeout.as_secs_f64()
                );
                let (gw, server_name, up_again, tool_name) =
                    (self.clone(), server.clone(), up.clone(), tool.clone());
                self.inner.rt.spawn(async move {
                    if !alive(&up_again).await {
                        gw.broken(
                            &server_name,
                            &up_again,
                            format!(
                                "no answer to tools/call {tool_name} within {timeout:?}, nor to a ping after it"
                            ),
                        );
                    }
                });
                audit(Outcome::Timeout, msg.clone());
                Err(error(UPSTREAM_FAILED, msg))
            }
            Err(e) => {
                let msg = format!(
                    "MCP server `{server}` failed during the call: {e}; it is being restarted"
                );
                self.broken(&server, &up, format!("tools/call {tool}: {e}"));
                audit(Outcome::UpstreamError, msg.clone());
                Err(error(UPSTREAM_FAILED, msg))
            }
        }
    }

    /// Whether `client` may call at least one tool of `server` (gates its resources and prompts).
    async fn may_use_server(&self, client: &str, server: &str, up: &Arc<Upstream>) -> bool {
        let policy = self.inner.policy.read().expect("policy").clone();
        match up.client.peer().list_all_tools().await {
            Ok(tools) => tools
                .iter()
                .any(|t| policy.decide(client, server, &t.name).allowed),
            Err(_) => false,
        }
    }
}

impl Gateway {
    /// The connected servers offering `offers` whose resources and prompts `client` may see:
    /// (server, prefix, session).
    async fn usable(
        &self,
        client: &str,
        offers: fn(&rmcp::model::ServerCapabilities) -> bool,
    ) -> Vec<(String, String, Arc<Upstream>)> {
        let mut out = Vec::new();
        for (server, prefix, up) in self.connected() {
            let has = up
                .client
                .peer()
                .peer_info()
                .is_some_and(|i| offers(&i.capabilities));
            if has && self.may_use_server(client, &server, &up).await {
                out.push((server, prefix, up));
            }
        }
        out
    }

    /// What `list` returns from every server `client` may use that `offers` it, each item
    /// renamed for clients by `rename` (given the server's prefix); a server that fails to
    /// list is left out.
    async fn gather<T, Fut>(
        &self,
        client: &str,
        offers: fn(&rmcp::model::ServerCapabilities) -> bool,
        list: impl Fn(Arc<Upstream>) -> Fut,
        rename: impl Fn(&mut T, &str),
    ) -> Vec<T>
    where
        Fut: std::future::Future<Output = Result<Vec<T>, ServiceError>>,
    {
        let mut all = Vec::new();
        for (_, prefix, up) in self.usable(client, offers).await {
            if let Ok(items) = list(up).await {
                for mut item in items {
                    rename(&mut item, &prefix);
                    all.push(item);
                }
            }
        }
        all
    }

    /// Resolves `<prefix>.<name>` for a resource or prompt (`method`, `what` as the client
    /// named it) of a server `client` may use; a refusal is audited.
    async fn resolve_for(
        &self,
        client: &str,
        qualified: &str,
        method: &str,
        what: &str,
    ) -> Result<(String, String, Arc<Upstream>), McpError> {
        let began = Instant::now();
        let (server, name, up) = match self.resolve(qualified) {
            Ok(r) => r,
            Err(e) => {
                let known = self.known_server(qualified).map(|(s, _)| s);
                let outcome = if known.is_some() {
                    Outcome::Unavailable
                } else {
                    Outcome::Unknown
                };
                let detail = e.message.to_string();
                self.audit_request(
                    client,
                    method,
                    known.as_deref(),
                    what,
                    outcome,
                    detail,
                    began,
                );
                return Err(e);
            }
        };
        if !self.may_use_server(client, &server, &up).await {
            let why = format!(
                "denied: client `{client}` may use no tool of `{server}`, so not its {method} `{what}`"
            );
            self.audit_request(
                client,
                method,
                Some(&server),
                what,
                Outcome::Denied,
                why.clone(),
                began,
            );
            return Err(error(DENIED, why));
        }
        Ok((server, name, up))
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// One client's session: the handler rmcp drives for a stdio bridge or an HTTP session.
#[derive(Clone)]
pub struct Session {
    gw: Gateway,
    /// The client of a stdio session; HTTP requests carry theirs.
    fixed: Option<String>,
}

impl Session {
    /// A session whose requests come from `client` (stdio), or carry their client in the HTTP
    /// request (`None`).
    pub fn new(gw: Gateway, client: Option<String>) -> Self {
        Self { gw, fixed: client }
    }

    /// The client of a stdio session.
    pub(crate) fn client_name(&self) -> Option<&str> {
        self.fixed.as_deref()
    }

    /// The gateway the session serves.
    pub(crate) fn gateway(&self) -> &Gateway {
        &self.gw
    }

    fn client(&self, ctx: &RequestContext<RoleServer>) -> Result<String, McpError> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        ctx.extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<ClientIdentity>())
            .map(|c| c.0.clone())
            .ok_or_else(|| error(UNAUTHENTICATED, "no authenticated client on this request"))
    }
}

impl ServerHandler for Session {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new(
            "osvm-mcp-gateway",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "osvm's MCP gateway: the tools of isolated MCP servers, named <server>.<tool>, \
             each call checked against the stack's policy and audited",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let client = self.client(&ctx)?;
        Ok(ListToolsResult::with_all_items(
            self.gw.list_tools_for(&client).await,
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let client = self.client(&ctx)?;
        let call = self
            .gw
            .call(&client, &request.name, request.arguments.clone());
        tokio::select! {
            r = call => r.map(Into::into),
            _ = ctx.ct.cancelled() => Err(McpError::internal_error("cancelled by the client", None)),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let client = self.client(&ctx)?;
        let all = self
            .gw
            .gather(
                &client,
                |c| c.resources.is_some(),
                |up| async move { up.client.peer().list_all_resources().await },
                |r: &mut rmcp::model::Resource, prefix| {
                    r.uri = format!("{URI_SCHEME}{prefix}/{}", r.uri)
                },
            )
            .await;
        Ok(ListResourcesResult::with_all_items(all))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let client = self.client(&ctx)?;
        let all = self
            .gw
            .gather(
                &client,
                |c| c.resources.is_some(),
                |up| async move { up.client.peer().list_all_resource_templates().await },
                |t: &mut rmcp::model::ResourceTemplate, prefix| {
                    t.uri_template = format!("{URI_SCHEME}{prefix}/{}", t.uri_template)
                },
            )
            .await;
        Ok(ListResourceTemplatesResult::with_all_items(all))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let client = self.client(&ctx)?;
        let rest = request.uri.strip_prefix(URI_SCHEME).ok_or_else(|| {
            McpError::resource_not_found(
                format!("`{}` is not a gateway resource URI", request.uri),
                None,
            )
        })?;
        let (prefix, original) = rest
            .split_once('/')
            .ok_or_else(|| McpError::resource_not_found("a gateway URI names its server", None))?;
        let began = Instant::now();
        let (server, _, up) = self
            .gw
            .resolve_for(
                &client,
                &format!("{prefix}.resource"),
                "resources/read",
                &request.uri,
            )
            .await?;
        let read = up
            .client
            .peer()
            .read_resource(ReadResourceRequestParams::new(original.to_owned()))
            .await
            .map_err(|e| pass_error(&server, e));
        let (outcome, detail) = match &read {
            Ok(_) => (Outcome::Ok, "allowed".to_owned()),
            Err(e) => (Outcome::UpstreamError, e.message.to_string()),
        };
        self.gw.audit_request(
            &client,
            "resources/read",
            Some(&server),
            &request.uri,
            outcome,
            detail,
            began,
        );
        let mut r = read?;
        r.result_type.get_or_insert(ResultType::COMPLETE);
        Ok(r.into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let client = self.client(&ctx)?;
        let all = self
            .gw
            .gather(
                &client,
                |c| c.prompts.is_some(),
                |up| async move { up.client.peer().list_all_prompts().await },
                |p: &mut rmcp::model::Prompt, prefix| p.name = format!("{prefix}.{}", p.name),
            )
            .await;
        Ok(ListPromptsResult::with_all_items(all))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let client = self.client(&ctx)?;
        let began = Instant::now();
        let (server, name, up) = self
            .gw
            .resolve_for(&client, &request.name, "prompts/get", &request.name)
            .await?;
        let mut p = GetPromptRequestParams::new(name);
        if let Some(a) = request.arguments.clone() {
            p = p.with_arguments(a);
        }
        let got = up
            .client
            .peer()
            .get_prompt(p)
            .await
            .map_err(|e| pass_error(&server, e));
        let (outcome, detail) = match &got {
            Ok(_) => (Outcome::Ok, "allowed".to_owned()),
            Err(e) => (Outcome::UpstreamError, e.message.to_string()),
        };
        self.gw.audit_request(
            &client,
            "prompts/get",
            Some(&server),
            &request.name,
            outcome,
            detail,
            began,
        );
        let mut r = got?;
        r.result_type.get_or_insert(ResultType::COMPLETE);
        Ok(r.into())
    }
}

fn pass_error(server: &str, e: ServiceError) -> McpError {
    match e {
        ServiceError::McpError(e) => e,
        other => error(UPSTREAM_FAILED, format!("MCP server `{server}`: {other}")),
    }
}

#[cfg(test)]
#[path = "gateway_tests.rs"]
mod tests;
