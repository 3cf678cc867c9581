//! The component model every osvm crate shares.
//!
//! A *component* is one workload of a stack (a validator, an RPC node, an MCP tool server, any
//! service). It has a [`ComponentType`] saying what it is, a [`ComponentStatus`] in its life
//! cycle, and runs at the [`IsolationLevel`] of its runtime, with a [`NetworkAccess`] reach.
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

use crate::runtime::RuntimeKind;

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
    /// A virtual machine with its own kernel (QEMU `microvm`).
    #[serde(rename = "micro_vm")]
    MicroVm,
    /// A single-address-space unikernel in a virtual machine (Hermit).
    #[serde(rename = "unikernel")]
    Unikernel,
}

impl IsolationLevel {
    /// True when the boundary is enforced by virtualization hardware rather than the host
    /// kernel alone (microVM, unikernel).
    pub fn has_hardware_isolation(self) -> bool {
        matches!(self, IsolationLevel::MicroVm | IsolationLevel::Unikernel)
    }

    /// The level a runtime provides.
    pub fn of_runtime(kind: RuntimeKind) -> Self {
        match kind {
            RuntimeKind::Process => IsolationLevel::ProcessSandbox,
            RuntimeKind::MicroVm => IsolationLevel::MicroVm,
            RuntimeKind::Unikernel => IsolationLevel::Unikernel,
        }
    }

    /// The serde name (`micro_vm`, `unikernel`, ...).
    pub fn name(self) -> &'static str {
        match self {
            IsolationLevel::None => "none",
            IsolationLevel::ProcessSandbox => "process_sandbox",
            IsolationLevel::MicroVm => "micro_vm",
            IsolationLevel::Unikernel => "unikernel",
        }
    }
}

impl fmt::Display for IsolationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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

    const LEVELS: [IsolationLevel; 4] = [
        IsolationLevel::None,
        IsolationLevel::ProcessSandbox,
        IsolationLevel::MicroVm,
        IsolationLevel::Unikernel,
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
        assert_eq!(names, ["none", "process_sandbox", "micro_vm", "unikernel"]);
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
    fn isolation_levels_are_ordered() {
        for pair in LEVELS.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        let hw: Vec<bool> = LEVELS.iter().map(|l| l.has_hardware_isolation()).collect();
        assert_eq!(hw, [false, false, true, true]);
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
}
