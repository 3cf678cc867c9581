//! The component model every osvm crate shares.
//!
//! A *component* is one workload of a stack (a validator, an RPC node, an MCP tool server, any
//! service). It has a stable [`ComponentId`], a [`ComponentType`] saying what it is, a
//! [`ComponentStatus`] in its life cycle, and runs at some [`IsolationLevel`] described by an
//! [`IsolationConfig`].
//!
//! Isolation levels are ordered from weakest to strongest so that policy can say "at least
//! `micro_vm`" with a plain comparison. Security-critical component types (the osvm core and
//! validators) must run at [`IsolationLevel::MicroVm`] or stronger unless the stack explicitly
//! accepts weaker isolation for them.
//!
//! Every type here round-trips through serde with readable snake_case names, so the same names
//! appear in stack files, the REST API and the daemon's durable state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::launch::Resources;
use crate::runtime::RuntimeKind;

/// Stable identity of a component, a random (v4) UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ComponentId(pub uuid::Uuid);

impl ComponentId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for ComponentId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// What a component is. Serialized with a `kind` tag: `{ kind = "validator", network = "devnet" }`.
///
/// Struct variants reject unknown fields; the unit variant `osvm_core` ignores extra fields
/// when deserialized through serde's internally tagged representation (the stack file checks
/// them itself and rejects them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ComponentType {
    /// osvm's own control plane running as a component.
    OsvmCore,
    /// A blockchain validator.
    Validator {
        /// The network it validates (`mainnet`, `devnet`, ...).
        network: String,
        /// The validator identity (public key or keypair path), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
    },
    /// An RPC node serving a network.
    RpcNode {
        /// The network it serves.
        network: String,
        /// The address it binds inside its isolation (`0.0.0.0:8899`), when fixed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bind_address: Option<String>,
    },
    /// A Model Context Protocol tool server.
    McpServer {
        /// The server's name as announced to MCP clients.
        name: String,
        /// The server's version, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// Any other service.
    Service {
        /// A descriptive name for the service, when it differs from the component name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

impl Default for ComponentType {
    fn default() -> Self {
        ComponentType::Service { name: None }
    }
}

impl ComponentType {
    /// True for types whose compromise compromises the whole system (osvm core, validators);
    /// these must run at [`IsolationLevel::MicroVm`] or stronger unless explicitly allowed.
    pub fn is_security_critical(&self) -> bool {
        self.kind().is_security_critical()
    }

    /// The `kind` tag: `osvm_core`, `validator`, `rpc_node`, `mcp_server` or `service`.
    pub fn kind_name(&self) -> &'static str {
        self.kind().name()
    }

    /// The type without its fields.
    pub fn kind(&self) -> ComponentKind {
        match self {
            ComponentType::OsvmCore => ComponentKind::OsvmCore,
            ComponentType::Validator { .. } => ComponentKind::Validator,
            ComponentType::RpcNode { .. } => ComponentKind::RpcNode,
            ComponentType::McpServer { .. } => ComponentKind::McpServer,
            ComponentType::Service { .. } => ComponentKind::Service,
        }
    }
}

/// The kind of a [`ComponentType`] without its fields, as used by `type:<kind>` policy
/// selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    /// See [`ComponentType::OsvmCore`].
    OsvmCore,
    /// See [`ComponentType::Validator`].
    Validator,
    /// See [`ComponentType::RpcNode`].
    RpcNode,
    /// See [`ComponentType::McpServer`].
    McpServer,
    /// See [`ComponentType::Service`].
    Service,
}

impl ComponentKind {
    /// Every kind, in declaration order.
    pub const ALL: [ComponentKind; 5] = [
        ComponentKind::OsvmCore,
        ComponentKind::Validator,
        ComponentKind::RpcNode,
        ComponentKind::McpServer,
        ComponentKind::Service,
    ];

    /// The snake_case name used in files and selectors.
    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::OsvmCore => "osvm_core",
            ComponentKind::Validator => "validator",
            ComponentKind::RpcNode => "rpc_node",
            ComponentKind::McpServer => "mcp_server",
            ComponentKind::Service => "service",
        }
    }

    /// True for the security-critical kinds (osvm core, validator).
    pub fn is_security_critical(self) -> bool {
        matches!(self, ComponentKind::OsvmCore | ComponentKind::Validator)
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that names no [`ComponentKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown component kind `{0}`, expected one of osvm_core, validator, rpc_node, mcp_server, service"
)]
pub struct UnknownKind(pub String);

impl FromStr for ComponentKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ComponentKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// Where a component is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentStatus {
    /// An instance is being started and has not yet passed its health check.
    Starting,
    /// An instance is running (and healthy, where a health check is defined).
    Running,
    /// The instance has been asked to stop and is within its grace period.
    Stopping,
    /// No instance is running, on purpose.
    Stopped,
    /// The instance ended unexpectedly or failed its health checks past the restart limit.
    Failed,
    /// A new version is being started alongside the old one (hot-swap).
    Upgrading,
}

impl fmt::Display for ComponentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComponentStatus::Starting => "starting",
            ComponentStatus::Running => "running",
            ComponentStatus::Stopping => "stopping",
            ComponentStatus::Stopped => "stopped",
            ComponentStatus::Failed => "failed",
            ComponentStatus::Upgrading => "upgrading",
        })
    }
}

/// How strongly a component is isolated, ordered from weakest to strongest.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum IsolationLevel {
    /// No isolation: a plain host process.
    #[serde(rename = "none")]
    None,
    /// A confined Linux process (namespaces, cgroups, seccomp, Landlock).
    #[default]
    #[serde(rename = "process_sandbox")]
    ProcessSandbox,
    /// An OCI-style container.
    #[serde(rename = "container")]
    Container,
    /// A virtual machine with its own kernel (QEMU `microvm`).
    #[serde(rename = "micro_vm")]
    MicroVm,
    /// A single-address-space unikernel in a virtual machine (Hermit).
    #[serde(rename = "unikernel")]
    Unikernel,
    /// A hardware trusted execution environment (confidential VM).
    #[serde(rename = "tee")]
    Tee,
}

impl IsolationLevel {
    /// A 0–100 score for comparing levels in reports: 0/40/60/80/95/100.
    pub fn security_score(self) -> u8 {
        match self {
            IsolationLevel::None => 0,
            IsolationLevel::ProcessSandbox => 40,
            IsolationLevel::Container => 60,
            IsolationLevel::MicroVm => 80,
            IsolationLevel::Unikernel => 95,
            IsolationLevel::Tee => 100,
        }
    }

    /// True when the boundary is enforced by virtualization hardware rather than the host
    /// kernel alone (microVM, unikernel, TEE).
    pub fn has_hardware_isolation(self) -> bool {
        matches!(
            self,
            IsolationLevel::MicroVm | IsolationLevel::Unikernel | IsolationLevel::Tee
        )
    }

    /// The level a runtime provides.
    pub fn of_runtime(kind: RuntimeKind) -> Self {
        match kind {
            RuntimeKind::Process => IsolationLevel::ProcessSandbox,
            RuntimeKind::MicroVm => IsolationLevel::MicroVm,
            RuntimeKind::Unikernel => IsolationLevel::Unikernel,
        }
    }

    /// The serde name (`micro_vm`, `tee`, ...).
    pub fn name(self) -> &'static str {
        match self {
            IsolationLevel::None => "none",
            IsolationLevel::ProcessSandbox => "process_sandbox",
            IsolationLevel::Container => "container",
            IsolationLevel::MicroVm => "micro_vm",
            IsolationLevel::Unikernel => "unikernel",
            IsolationLevel::Tee => "tee",
        }
    }
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The isolation a component runs with: level, limits, network reach and hardening.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsolationConfig {
    /// The isolation level (which kind of boundary).
    pub isolation_type: IsolationLevel,
    /// CPU, memory and descriptor limits.
    pub resource_limits: ResourceLimits,
    /// What the component may reach on the network.
    pub network: NetworkConfig,
    /// Hardening switches inside the boundary.
    pub security: SecurityConfig,
}

/// Resource limits of a component, with the defaults osvm applies when a stack says nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceLimits {
    /// Memory limit in MiB (default 512).
    pub memory_mb: u64,
    /// CPU quota in CPUs, fractional allowed (default 2).
    pub cpus: f64,
    /// Maximum open file descriptors (default 1024).
    pub max_open_files: u64,
    /// Maximum number of processes and threads; `None` leaves it to the host (default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pids: Option<u64>,
}

impl ResourceLimits {
    /// Default memory limit in MiB.
    pub const DEFAULT_MEMORY_MB: u64 = 512;
    /// Default CPU quota.
    pub const DEFAULT_CPUS: f64 = 2.0;
    /// Default open file descriptor limit.
    pub const DEFAULT_MAX_OPEN_FILES: u64 = 1024;
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            memory_mb: Self::DEFAULT_MEMORY_MB,
            cpus: Self::DEFAULT_CPUS,
            max_open_files: Self::DEFAULT_MAX_OPEN_FILES,
            max_pids: None,
        }
    }
}

impl From<&ResourceLimits> for Resources {
    fn from(limits: &ResourceLimits) -> Self {
        Resources {
            memory_bytes: Some(limits.memory_mb.saturating_mul(1024 * 1024)),
            cpus: Some(limits.cpus),
            pids: limits.max_pids,
            open_files: Some(limits.max_open_files),
            disk_bytes: None,
        }
    }
}

/// What a component may reach on the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// The reach granted (default [`NetworkAccess::Internal`]).
    pub access: NetworkAccess,
    /// TCP ports the component listens on; empty means it does not serve.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen_ports: Vec<u16>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            access: NetworkAccess::Internal,
            listen_ports: Vec::new(),
        }
    }
}

/// How far a component's network reaches, from nothing to everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkAccess {
    /// No network at all (loopback only).
    None,
    /// Only the vsock channel to the host (microVMs and unikernels).
    VsockOnly,
    /// Other components of the stack, as policy allows.
    #[default]
    Internal,
    /// Internal plus the external destinations policy names.
    Restricted,
    /// Unrestricted network access.
    Full,
}

/// Hardening applied inside the isolation boundary. Everything is on by default except a
/// read-only root, which many workloads need to opt into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Require mutual TLS with osvm-issued identities between components.
    pub mtls: bool,
    /// Filter system calls with a seccomp allow-list.
    pub seccomp: bool,
    /// Restrict file system access with Landlock where the kernel supports it.
    pub landlock: bool,
    /// Set `no_new_privs` so set-uid binaries cannot gain privileges.
    pub no_new_privs: bool,
    /// Drop all Linux capabilities before running the workload.
    pub drop_capabilities: bool,
    /// Mount the root file system read-only.
    pub readonly_root: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            mtls: true,
            seccomp: true,
            landlock: true,
            no_new_privs: true,
            drop_capabilities: true,
            readonly_root: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    /// TOML needs a table at the top, so enum values are wrapped in one.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrap<T> {
        value: T,
    }

    fn round_trip<T>(value: T)
    where
        T: Serialize + DeserializeOwned + PartialEq + fmt::Debug + Clone,
    {
        let json = serde_json::to_string(&value).unwrap();
        let back: T = serde_json::from_str(&json).unwrap();
        assert_eq!(back, value, "JSON round trip via {json}");

        let wrapped = Wrap {
            value: value.clone(),
        };
        let text = toml::to_string(&wrapped).unwrap();
        let back: Wrap<T> = toml::from_str(&text).unwrap();
        assert_eq!(back, wrapped, "TOML round trip via {text}");
    }

    fn json_name<T: Serialize>(value: &T) -> String {
        serde_json::to_value(value)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn all_types() -> Vec<ComponentType> {
        vec![
            ComponentType::OsvmCore,
            ComponentType::Validator {
                network: "devnet".into(),
                identity: None,
            },
            ComponentType::Validator {
                network: "mainnet".into(),
                identity: Some("id.json".into()),
            },
            ComponentType::RpcNode {
                network: "devnet".into(),
                bind_address: None,
            },
            ComponentType::RpcNode {
                network: "devnet".into(),
                bind_address: Some("0.0.0.0:8899".into()),
            },
            ComponentType::McpServer {
                name: "fs".into(),
                version: None,
            },
            ComponentType::McpServer {
                name: "fs".into(),
                version: Some("1.2.0".into()),
            },
            ComponentType::Service { name: None },
            ComponentType::Service {
                name: Some("web".into()),
            },
        ]
    }

    const STATUSES: [ComponentStatus; 6] = [
        ComponentStatus::Starting,
        ComponentStatus::Running,
        ComponentStatus::Stopping,
        ComponentStatus::Stopped,
        ComponentStatus::Failed,
        ComponentStatus::Upgrading,
    ];

    const LEVELS: [IsolationLevel; 6] = [
        IsolationLevel::None,
        IsolationLevel::ProcessSandbox,
        IsolationLevel::Container,
        IsolationLevel::MicroVm,
        IsolationLevel::Unikernel,
        IsolationLevel::Tee,
    ];

    const ACCESSES: [NetworkAccess; 5] = [
        NetworkAccess::None,
        NetworkAccess::VsockOnly,
        NetworkAccess::Internal,
        NetworkAccess::Restricted,
        NetworkAccess::Full,
    ];

    #[test]
    fn every_component_type_round_trips_in_json_and_toml() {
        for t in all_types() {
            round_trip(t);
        }
    }

    #[test]
    fn every_component_kind_round_trips_and_parses_from_its_name() {
        for k in ComponentKind::ALL {
            round_trip(k);
            assert_eq!(json_name(&k), k.name());
            assert_eq!(k.name().parse::<ComponentKind>().unwrap(), k);
        }
        assert!("vm".parse::<ComponentKind>().is_err());
    }

    #[test]
    fn every_status_round_trips_and_displays_its_serde_name() {
        for s in STATUSES {
            round_trip(s);
            assert_eq!(json_name(&s), s.to_string());
        }
    }

    #[test]
    fn every_isolation_level_round_trips_with_readable_names() {
        for l in LEVELS {
            round_trip(l);
            assert_eq!(json_name(&l), l.name());
            assert_eq!(l.to_string(), l.name());
        }
        let names: Vec<String> = LEVELS.iter().map(json_name).collect();
        assert_eq!(
            names,
            [
                "none",
                "process_sandbox",
                "container",
                "micro_vm",
                "unikernel",
                "tee"
            ]
        );
    }

    #[test]
    fn every_network_access_round_trips_with_readable_names() {
        for a in ACCESSES {
            round_trip(a);
        }
        let names: Vec<String> = ACCESSES.iter().map(json_name).collect();
        assert_eq!(
            names,
            ["none", "vsock_only", "internal", "restricted", "full"]
        );
    }

    #[test]
    fn component_type_uses_kind_tag() {
        let v = serde_json::to_value(ComponentType::RpcNode {
            network: "devnet".into(),
            bind_address: None,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "rpc_node", "network": "devnet"})
        );
        let t: Wrap<ComponentType> =
            toml::from_str("value = { kind = \"mcp_server\", name = \"fs\" }").unwrap();
        assert_eq!(
            t.value,
            ComponentType::McpServer {
                name: "fs".into(),
                version: None
            }
        );
        let unknown = toml::from_str::<Wrap<ComponentType>>(
            "value = { kind = \"validator\", network = \"d\", extra = 1 }",
        );
        assert!(unknown.is_err(), "struct variants reject unknown fields");
    }

    #[test]
    fn kind_names_and_criticality() {
        let kinds: Vec<&str> = all_types().iter().map(|t| t.kind_name()).collect();
        assert_eq!(
            kinds,
            [
                "osvm_core",
                "validator",
                "validator",
                "rpc_node",
                "rpc_node",
                "mcp_server",
                "mcp_server",
                "service",
                "service"
            ]
        );
        for t in all_types() {
            let critical = matches!(t, ComponentType::OsvmCore | ComponentType::Validator { .. });
            assert_eq!(t.is_security_critical(), critical, "{t:?}");
        }
        assert_eq!(
            ComponentType::default(),
            ComponentType::Service { name: None }
        );
    }

    #[test]
    fn isolation_levels_are_ordered_and_scored() {
        for pair in LEVELS.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].security_score() < pair[1].security_score());
        }
        let scores: Vec<u8> = LEVELS.iter().map(|l| l.security_score()).collect();
        assert_eq!(scores, [0, 40, 60, 80, 95, 100]);
        let hw: Vec<bool> = LEVELS.iter().map(|l| l.has_hardware_isolation()).collect();
        assert_eq!(hw, [false, false, false, true, true, true]);
    }

    #[test]
    fn runtimes_map_to_isolation_levels() {
        assert_eq!(
            IsolationLevel::of_runtime(RuntimeKind::Process),
            IsolationLevel::ProcessSandbox
        );
        assert_eq!(
            IsolationLevel::of_runtime(RuntimeKind::MicroVm),
            IsolationLevel::MicroVm
        );
        assert_eq!(
            IsolationLevel::of_runtime(RuntimeKind::Unikernel),
            IsolationLevel::Unikernel
        );
        assert!(IsolationLevel::of_runtime(RuntimeKind::Process) < IsolationLevel::MicroVm);
    }

    #[test]
    fn isolation_config_defaults_match_the_design() {
        let c = IsolationConfig::default();
        assert_eq!(c.resource_limits.memory_mb, 512);
        assert_eq!(c.resource_limits.cpus, 2.0);
        assert_eq!(c.resource_limits.max_open_files, 1024);
        assert_eq!(c.resource_limits.max_pids, None);
        assert_eq!(c.network.access, NetworkAccess::Internal);
        assert!(c.security.mtls);
        let r = Resources::from(&c.resource_limits);
        assert_eq!(r.memory_bytes, Some(512 * 1024 * 1024));
        assert_eq!(r.open_files, Some(1024));
    }

    #[test]
    fn isolation_config_round_trips_and_fills_defaults() {
        let mut c = IsolationConfig::default();
        round_trip(c.clone());
        c.isolation_type = IsolationLevel::Tee;
        c.resource_limits.max_pids = Some(64);
        c.network.access = NetworkAccess::VsockOnly;
        c.network.listen_ports = vec![8080];
        c.security.readonly_root = true;
        round_trip(c.clone());

        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["isolation_type"], "tee");
        assert_eq!(json["network"]["access"], "vsock_only");

        let partial: IsolationConfig =
            toml::from_str("isolation_type = \"micro_vm\"\n[security]\nseccomp = false\n").unwrap();
        assert_eq!(partial.isolation_type, IsolationLevel::MicroVm);
        assert!(!partial.security.seccomp);
        assert!(partial.security.mtls, "unset fields keep their defaults");
        assert_eq!(partial.resource_limits, ResourceLimits::default());
        assert!(toml::from_str::<IsolationConfig>("bogus = 1").is_err());
    }

    #[test]
    fn component_ids_are_unique_and_transparent() {
        let a = ComponentId::new();
        let b = ComponentId::new();
        assert_ne!(a, b);
        assert_eq!(a.0.get_version_num(), 4);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{a}\""));
        round_trip(a);
    }
}
