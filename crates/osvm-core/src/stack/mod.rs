//! The stack file: a TOML description of the components osvm runs together and the policy
//! between them.
//!
//! Loading happens in two steps. [`file`] deserializes the TOML into types that mirror it and
//! remember where each value was written; unknown keys and values of the wrong type fail here,
//! with the position `toml` reports. [`validate`] then checks the rules a well-typed file can
//! still break (names, references, ranges, the isolation floor of security-critical components)
//! and produces the plain types below, which carry no positions. Every error, from either step,
//! is a [`StackError`] displayed as `FILE:LINE:COL: MESSAGE`.
//!
//! The reference for the format is `docs/stack-file.md`.

mod error;
mod file;
mod policy;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::launch::{BindMount, LaunchSpec, Resources};
use crate::model::{ComponentType, IsolationLevel};
use crate::runtime::RuntimeKind;

pub use error::StackError;
pub use policy::{Cidr, CidrError, PolicyAction, PolicyRule, Protocol, Selector, SelectorError};

/// Reads and validates the stack file at `path`.
pub fn load(path: &Path) -> Result<Stack, StackError> {
    let text = std::fs::read_to_string(path).map_err(|source| StackError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut stack = parse(&text, &path.display().to_string())?;
    stack.source = path.to_owned();
    if let Some(dir) = path.canonicalize().ok().as_deref().and_then(Path::parent) {
        stack.resolve_relative(dir);
    }
    Ok(stack)
}

/// Parses and validates stack file text; `file_name` is used in error messages and as
/// [`Stack::source`].
pub fn parse(text: &str, file_name: &str) -> Result<Stack, StackError> {
    let source = error::Source::new(text, file_name);
    let raw: file::RawFile = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
    let mut stack = validate::stack(&source, raw, PathBuf::from(file_name))?;
    if let Some(dir) = Path::new(file_name).parent().filter(|d| d.is_absolute()) {
        stack.resolve_relative(dir);
    }
    Ok(stack)
}

impl Stack {
    /// Makes a unikernel's relative `command` (its image or crate, such as `./hermit-app`)
    /// relative to `dir`, the stack file's directory.
    fn resolve_relative(&mut self, dir: &Path) {
        for c in &mut self.components {
            if c.runtime.kind() == RuntimeKind::Unikernel && !c.command.starts_with('/') {
                c.command = dir.join(&c.command).display().to_string();
            }
        }
    }
}

/// A validated stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    /// The stack's name; part of every component identity.
    pub name: String,
    /// SPIFFE trust domain of the stack's identities (default `osvm.local`).
    pub trust_domain: String,
    /// Restarts of a failing component before it is left failed (default 5).
    pub max_restarts: u32,
    /// Lifetime of issued leaf certificates in days (default 1).
    pub certificate_validity_days: u32,
    /// Lifetime of issued leaf certificates: `certificate_ttl`, or the days above (default 24h).
    pub certificate_ttl: Duration,
    /// First delay before a failed component is restarted; doubles per restart (default 10s).
    pub restart_backoff: Duration,
    /// Longest delay between restarts (default 5m).
    pub restart_backoff_max: Duration,
    /// Running this long resets the backoff to `restart_backoff` (default 10m).
    pub restart_reset_after: Duration,
    /// A component's stdout or stderr log is rotated when it grows past this many bytes
    /// (default 10 MiB).
    pub log_max_size: u64,
    /// How many rotated files of each log are kept (`stdout.log.1` .. `.N`; default 3).
    pub log_files: u32,
    /// Which network the components get (default: none but loopback).
    #[serde(default)]
    pub network: StackNetwork,
    /// The components, in file order.
    pub components: Vec<Component>,
    /// The policy rules, in file order.
    pub policies: Vec<PolicyRule>,
    /// Limits of osvm's MCP gateway for this stack's MCP servers (`mcp` in `[stack]`).
    #[serde(default)]
    pub mcp: McpSettings,
    /// Which MCP clients may use which tools of the stack's MCP servers (`[[mcp_policy]]`),
    /// in file order; none means no client may use any tool.
    #[serde(default)]
    pub mcp_policy: Vec<McpRule>,
    /// Where the stack was read from.
    pub source: PathBuf,
    /// What validation accepted but doubts: settings that have no effect as written (not
    /// stored; a stack sent to the daemon has none).
    #[serde(skip)]
    pub warnings: Vec<StackWarning>,
}

/// Something a valid stack file says that will not do what it seems to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackWarning {
    /// The file.
    pub file: String,
    /// 1-based line of what it is about.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What will not happen, and what to write instead.
    pub message: String,
}

impl std::fmt::Display for StackWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl Stack {
    /// Default SPIFFE trust domain.
    pub const DEFAULT_TRUST_DOMAIN: &'static str = "osvm.local";
    /// Default restart limit.
    pub const DEFAULT_MAX_RESTARTS: u32 = 5;
    /// Default leaf certificate lifetime in days.
    pub const DEFAULT_CERTIFICATE_VALIDITY_DAYS: u32 = 1;
    /// Longest accepted leaf certificate lifetime in days.
    pub const MAX_CERTIFICATE_VALIDITY_DAYS: u32 = 365;
    /// Default log rotation size.
    pub const DEFAULT_LOG_MAX_SIZE: u64 = crate::launch::LogLimits::DEFAULT_MAX_BYTES;
    /// Default number of rotated log files kept.
    pub const DEFAULT_LOG_FILES: u32 = crate::launch::LogLimits::DEFAULT_FILES;
    /// Default first restart delay.
    pub const DEFAULT_RESTART_BACKOFF: Duration = Duration::from_secs(10);
    /// Default longest restart delay.
    pub const DEFAULT_RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);
    /// Default time running after which the backoff resets.
    pub const DEFAULT_RESTART_RESET_AFTER: Duration = Duration::from_secs(600);

    /// How its components' logs rotate (`log_max_size`, `log_files`).
    pub fn log_limits(&self) -> crate::launch::LogLimits {
        crate::launch::LogLimits {
            max_bytes: self.log_max_size,
            files: self.log_files,
        }
    }

    /// The component called `name`, if the stack has one.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// A validated component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// Unique name within the stack; also the hostname inside its isolation.
    pub name: String,
    /// What the component is.
    pub component_type: ComponentType,
    /// Which runtime isolates it, with that runtime's settings.
    #[serde(flatten, default)]
    pub runtime: crate::launch::RuntimeSpec,
    /// The program to run.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment, sorted by key.
    pub env: Vec<(String, String)>,
    /// Working directory inside the isolation (default: the component's state directory).
    pub working_dir: Option<PathBuf>,
    /// Resource limits; keys the file leaves out get [`Resources::defaults`] (512M memory,
    /// 2 CPUs, 4096 pids, 1024 open files, 1G disk).
    pub resources: Resources,
    /// TCP ports it listens on, in file order.
    pub listen: Vec<u16>,
    /// Its health check, if any.
    pub health: Option<HealthCheck>,
    /// When it is restarted.
    pub restart: RestartPolicy,
    /// Whether its root file system is read-only.
    pub readonly_root: bool,
    /// A directory to use as its root file system.
    pub rootfs: Option<PathBuf>,
    /// Host paths bound into it.
    pub mounts: Vec<BindMount>,
    /// The file explicitly accepts a runtime weaker than the component type requires.
    pub allow_weaker_isolation: bool,
    /// How long it gets to stop after SIGTERM before it is killed (default 10s).
    pub stop_grace: Duration,
    /// What tells it that its identity files were renewed (default: nothing).
    #[serde(default)]
    pub identity_reload: Option<IdentityReload>,
    /// Reached only through osvm's mTLS ingress proxy on its service address (hub stacks):
    /// clients must present a certificate of the stack's CA whose identity policy allows.
    #[serde(default)]
    pub mtls: bool,
    /// Plain-TCP listeners on the component's loopback that osvm turns into mTLS connections
    /// made with the component's identity (hub stacks).
    #[serde(default)]
    pub mtls_egress: Vec<MtlsEgress>,
    /// How far its network reaches; bounds what `[[policy]]` rules can grant it (default
    /// `internal`: other components only).
    #[serde(default)]
    pub network_access: crate::model::NetworkAccess,
    /// How a hot-swap (`osvm swap`) of it proceeds.
    #[serde(default)]
    pub swap: SwapPolicy,
    /// Listen ports reachable at addresses of the host (hub stacks), as policy allows.
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// osvm makes its listening sockets (one per `listen` port, in its network namespace) and
    /// hands them to every instance, systemd style (`LISTEN_FDS`, fds 3..): a hot-swap then
    /// hands the same sockets to the new instance and no connection waits on a switch.
    #[serde(default)]
    pub socket_activation: bool,
    /// It may use native AIO (`io_setup`), whose contexts count against the host-wide
    /// `fs.aio-max-nr` (default: refused).
    #[serde(default)]
    pub native_aio: bool,
    /// How osvm's MCP gateway reaches it: `Some` exactly for components of kind `mcp_server`
    /// (from `type` and the `mcp` table), `None` for every other kind.
    #[serde(default)]
    pub mcp: Option<McpServerSpec>,
}

/// The stack name osvm keeps for its own identities (`spiffe://<trust domain>/osvm/...`, such
/// as the MCP gateway's `osvm/mcp-gateway`): no stack may be called so.
pub const RESERVED_STACK: &str = "osvm";

/// How osvm's MCP gateway reaches an MCP server component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "transport")]
pub enum McpTransport {
    /// JSON-RPC over the component's stdin/stdout, owned by the daemon (default).
    Stdio,
    /// Streamable HTTP on a port inside the component's network namespace.
    Http {
        /// The port the server listens on; one of the component's `listen` ports.
        port: u16,
        /// The request path of its MCP endpoint, starting with `/` (default `/mcp`).
        path: String,
        /// The gateway speaks mutual TLS to it: it presents its own identity
        /// (`spiffe://<trust domain>/osvm/mcp-gateway`, of the stack's CA) and accepts only a
        /// server certificate naming `<component>.<stack>.osvm`, not revoked.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        tls: bool,
    },
}

impl McpTransport {
    /// The path an HTTP transport uses when the file does not say.
    pub const DEFAULT_HTTP_PATH: &'static str = "/mcp";
}

/// An MCP server component's settings (Some for components of kind mcp_server, None otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServerSpec {
    /// The server's name: tools appear to clients as `<prefix>.<tool>`; also the `server` in
    /// policies and audit.
    pub name: String,
    /// The server's version, from `type.version`.
    pub version: Option<String>,
    /// How the gateway talks to it.
    pub transport: McpTransport,
    /// The prefix of its tools' names (default: `name`); unique among the stack's MCP servers.
    pub prefix: String,
}

/// Limits osvm's MCP gateway applies to a stack's MCP traffic (`mcp = { ... }` in `[stack]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct McpSettings {
    /// How long one tools/call (or other request) may take upstream (default 30s).
    #[serde(with = "millis")]
    pub call_timeout: Duration,
    /// The largest JSON-RPC message accepted from a client or a server, in bytes (default 4 MiB).
    pub max_message_bytes: u64,
    /// Calls per second each client may make (default 200), with bursts up to `burst` (default 400).
    pub rate_per_second: u32,
    /// How many calls a client may make at once after being idle: the token bucket's size.
    pub burst: u32,
}

impl McpSettings {
    /// Default upstream request timeout.
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default largest message.
    pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 4 << 20;
    /// Default sustained calls per second per client.
    pub const DEFAULT_RATE_PER_SECOND: u32 = 200;
    /// Default burst per client.
    pub const DEFAULT_BURST: u32 = 400;
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            rate_per_second: Self::DEFAULT_RATE_PER_SECOND,
            burst: Self::DEFAULT_BURST,
        }
    }
}

/// One `[[mcp_policy]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpRule {
    /// Whether the clients may use the tools (allow) or not (deny; deny overrides allow).
    pub action: PolicyAction,
    /// Client identity patterns (`*` and `?` wildcards): a token's client name (`alice`) or a
    /// certificate's SPIFFE ID (`spiffe://osvm.local/clients/alice`).
    pub clients: Vec<String>,
    /// Tool patterns matched against `<server>.<tool>` (server = the MCP server's name, not its
    /// prefix), e.g. `fs.read_*`, `everything.*`, `*`.
    pub tools: Vec<String>,
}

/// How a hot-swap proceeds: the new instance must pass its readiness check continuously for
/// `min_healthy_time` before traffic moves to it, and its liveness for as long again after;
/// it has `healthy_deadline` to get there; the old instance's connections then get
/// `drain_timeout` to finish. A failure goes back to the old instance when `auto_revert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapPolicy {
    /// How long readiness must hold before the switch, and liveness after it.
    #[serde(with = "millis")]
    pub min_healthy_time: Duration,
    /// How long the new instance has to become ready.
    #[serde(with = "millis")]
    pub healthy_deadline: Duration,
    /// How long the old instance's connections may take to finish before it is stopped.
    #[serde(with = "millis")]
    pub drain_timeout: Duration,
    /// Whether a failed swap goes back to the old instance (kept running until the new one is
    /// confirmed).
    pub auto_revert: bool,
}

impl Default for SwapPolicy {
    fn default() -> Self {
        Self {
            min_healthy_time: Duration::from_secs(2),
            healthy_deadline: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
            auto_revert: true,
        }
    }
}

/// Durations as milliseconds in JSON (the stored form of a stack).
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// One `mtls_egress` entry: `127.0.0.1:listen` inside the component reaches `to:port` over
/// mTLS with the component's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtlsEgress {
    /// The component to reach (it must have `mtls = true`).
    pub to: String,
    /// Its port.
    pub port: u16,
    /// The port on the component's loopback.
    pub listen: u16,
}

/// One published port: connections to `host` (`0.0.0.0`: every local address of the host) reach
/// the component's `port`, as the stack's policy allows (`from = "world"` or `"cidr:..."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The component's listen port.
    pub port: u16,
    /// The host address and port.
    pub host: std::net::SocketAddrV4,
}

impl Publish {
    /// Whether two published addresses would take the same connections.
    pub fn overlaps(&self, other: &Publish) -> bool {
        self.host.port() == other.host.port()
            && (self.host.ip() == other.host.ip()
                || self.host.ip().is_unspecified()
                || other.host.ip().is_unspecified())
    }
}

impl std::fmt::Display for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{}", self.host, self.port)
    }
}

/// The network a stack's components are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackNetwork {
    /// Each component alone in its network namespace with only loopback (the default).
    #[default]
    None,
    /// Each component on the host's osvm hub: its own address, names in `/etc/hosts`
    /// (`<component>.<stack>.osvm`), and only the flows `[[policy]]` allows, enforced by
    /// nftables in the hub.
    Hub,
}

/// How a component learns that `/run/osvm/identity` holds a new certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityReload {
    /// Send it this signal (its number).
    Signal(i32),
    /// Run this command inside it.
    Exec(Vec<String>),
}

impl Component {
    /// Default grace period between SIGTERM and SIGKILL.
    pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

    /// The isolation level its runtime provides.
    pub fn isolation_level(&self) -> IsolationLevel {
        IsolationLevel::of_runtime(self.runtime.kind())
    }

    /// What the runtime needs to start an instance of this component of stack `stack`.
    pub fn launch_spec(&self, stack: &str) -> LaunchSpec {
        LaunchSpec {
            name: self.name.clone(),
            stack: Some(stack.to_owned()),
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
            resources: self.resources.clone(),
            listen: self.listen.clone(),
            readonly_root: self.readonly_root,
            binds: self.mounts.clone(),
            rootfs: self.rootfs.clone(),
            rootfs_overlay: None,
            user: None,
            netns: None,
            hosts: Vec::new(),
            tls_egress: Vec::new(),
            identity: None,
            data: crate::launch::DataKind::Persistent,
            native_aio: self.native_aio,
            logs: crate::launch::LogLimits::default(),
            runtime: self.runtime.clone(),
        }
    }
}

/// When a component is restarted after its instance ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whenever it ends, even successfully.
    Always,
    /// When it ends with a failure or fails its health check (the default).
    #[default]
    OnFailure,
    /// Never; an ended component stays stopped or failed.
    Never,
}

/// How and how often a component's health is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What is probed.
    pub probe: HealthProbe,
    /// Time between probes (default 2s).
    pub interval: Duration,
    /// Time one probe may take before it counts as failed (default 1s).
    pub timeout: Duration,
    /// Consecutive failures that make the component unhealthy (default 3).
    pub retries: u32,
    /// Time after start during which failures do not count (default 0).
    pub start_period: Duration,
    /// The instance must pass its first probe within this time after it starts, or it is
    /// stopped and the component ends `failed` (default: no deadline).
    #[serde(default)]
    pub ready_within: Option<Duration>,
}

impl HealthCheck {
    /// Default time between probes.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
    /// Default probe timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default number of consecutive failures tolerated.
    pub const DEFAULT_RETRIES: u32 = 3;
    /// Default start period.
    pub const DEFAULT_START_PERIOD: Duration = Duration::ZERO;
}

/// One kind of health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HealthProbe {
    /// An HTTP GET of `path` on `port` of the component.
    Http {
        /// Request path, starting with `/`.
        path: String,
        /// Port to connect to.
        port: u16,
        /// The status that counts as healthy; `None` accepts any 2xx or 3xx.
        expect_status: Option<u16>,
    },
    /// A TCP connection to `port` that the component accepts.
    Tcp {
        /// Port to connect to.
        port: u16,
    },
    /// A command run inside the component that exits 0.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
    },
}

#[cfg(test)]
mod tests;
