//! The stack file exactly as written, before validation.
//!
//! These types mirror the TOML one to one. Every table denies unknown keys, so a typo is an
//! error rather than a silently ignored setting. Values that validation must point at later
//! are wrapped in [`Spanned`], which records their byte range in the file. Numbers that have a
//! range (ports, counts) are read as [`Int`] so that an out-of-range value gets osvm's message
//! rather than serde's, and keywords (`runtime`, `restart`, ...) as [`Word`] so that a value of
//! the wrong type is reported as "expected a string" rather than in serde's enum jargon.

use std::collections::BTreeMap;
use std::fmt;

use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, Visitor};
use toml::Spanned;

use crate::model::ComponentKind;
use crate::runtime::RuntimeKind;

use super::{Protocol, RestartPolicy};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    /// `[stack]`; optional here so that its absence gets a clear message.
    pub(crate) stack: Option<Spanned<Table<RawStack>>>,
    /// `[[component]]` entries in file order.
    #[serde(default)]
    pub(crate) component: Vec<Spanned<Table<RawComponent>>>,
    /// `[[policy]]` entries in file order.
    #[serde(default)]
    pub(crate) policy: Vec<Spanned<Table<RawPolicy>>>,
    /// `[[mcp_policy]]` entries in file order.
    #[serde(default)]
    pub(crate) mcp_policy: Vec<Spanned<Table<RawMcpPolicy>>>,
}

/// `[stack]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStack {
    /// The stack's name.
    pub(crate) name: Option<Spanned<String>>,
    /// SPIFFE trust domain of the stack's identities.
    pub(crate) trust_domain: Option<Spanned<String>>,
    /// How many times a failing component is restarted before it is left failed.
    pub(crate) max_restarts: Option<Spanned<Int>>,
    /// Lifetime of issued leaf certificates, in days.
    pub(crate) certificate_validity_days: Option<Spanned<Int>>,
    /// Lifetime of issued leaf certificates, as a duration (overrides the days).
    pub(crate) certificate_ttl: Option<Spanned<String>>,
    /// First delay before restarting a failed component.
    pub(crate) restart_backoff: Option<Spanned<String>>,
    /// Longest delay between restarts.
    pub(crate) restart_backoff_max: Option<Spanned<String>>,
    /// Running this long resets the backoff.
    pub(crate) restart_reset_after: Option<Spanned<String>>,
    /// A log file is rotated past this size.
    pub(crate) log_max_size: Option<Spanned<String>>,
    /// How many rotated log files are kept.
    pub(crate) log_files: Option<Spanned<Int>>,
    /// Which network the components get.
    pub(crate) network: Option<Spanned<Word<super::StackNetwork>>>,
    /// Limits of the MCP gateway.
    pub(crate) mcp: Option<Spanned<Table<RawMcpSettings>>>,
}

/// `mcp = { call_timeout = "30s", max_message_size = "4M", rate = 200, burst = 400 }` in `[stack]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMcpSettings {
    /// How long one request may take upstream.
    pub(crate) call_timeout: Option<Spanned<String>>,
    /// The largest JSON-RPC message.
    pub(crate) max_message_size: Option<Spanned<SizeText>>,
    /// Calls per second per client.
    pub(crate) rate: Option<Spanned<Int>>,
    /// Burst per client.
    pub(crate) burst: Option<Spanned<Int>>,
}

/// `[[component]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawComponent {
    /// The component's name.
    pub(crate) name: Option<Spanned<String>>,
    /// What the component is.
    #[serde(rename = "type")]
    pub(crate) component_type: Option<Spanned<Table<RawType>>>,
    /// Which runtime isolates it.
    pub(crate) runtime: Option<Spanned<Word<RuntimeKind>>>,
    /// The program to run.
    pub(crate) command: Option<Spanned<String>>,
    /// Its arguments.
    #[serde(default)]
    pub(crate) args: Vec<Spanned<String>>,
    /// Its environment.
    #[serde(default)]
    pub(crate) env: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Its working directory inside the isolation.
    pub(crate) working_dir: Option<Spanned<String>>,
    /// Its resource limits.
    pub(crate) resources: Option<Spanned<Table<RawResources>>>,
    /// The TCP ports it listens on.
    #[serde(default)]
    pub(crate) listen: Vec<Spanned<Int>>,
    /// Its health check.
    pub(crate) health: Option<Spanned<Table<RawHealth>>>,
    /// When it is restarted.
    pub(crate) restart: Option<Word<RestartPolicy>>,
    /// Whether its root file system is read-only.
    pub(crate) readonly_root: Option<bool>,
    /// A directory to use as its root file system.
    pub(crate) rootfs: Option<Spanned<String>>,
    /// Host paths bound into it.
    #[serde(default)]
    pub(crate) mounts: Vec<Spanned<Table<RawMount>>>,
    /// Accept a runtime weaker than the component type requires.
    pub(crate) allow_weaker_isolation: Option<bool>,
    /// How long it gets to stop after SIGTERM.
    pub(crate) stop_grace: Option<Spanned<String>>,
    /// What tells it that its identity was renewed.
    pub(crate) identity_reload: Option<Spanned<Table<RawReload>>>,
    /// Reached only through osvm's mTLS ingress proxy.
    pub(crate) mtls: Option<Spanned<bool>>,
    /// Its listening sockets are made by osvm and handed over (`LISTEN_FDS`).
    pub(crate) socket_activation: Option<Spanned<bool>>,
    /// It may use native AIO (`io_setup`).
    pub(crate) native_aio: Option<Spanned<bool>>,
    /// How far its network reaches.
    pub(crate) network_access: Option<Word<crate::model::NetworkAccess>>,
    /// How a hot-swap of it proceeds.
    pub(crate) swap: Option<Spanned<Table<RawSwap>>>,
    /// Local plain-TCP listeners that osvm turns into mTLS connections.
    #[serde(default)]
    pub(crate) mtls_egress: Vec<Spanned<Table<RawEgress>>>,
    /// Listen ports reachable at host addresses.
    #[serde(default)]
    pub(crate) publish: Vec<Spanned<Table<RawPublish>>>,
    /// Settings of the `microvm` runtime.
    pub(crate) microvm: Option<Spanned<Table<RawMicroVm>>>,
    /// Settings of the `unikernel` runtime.
    pub(crate) unikernel: Option<Spanned<Table<RawUnikernel>>>,
    /// How the MCP gateway reaches an `mcp_server` component.
    pub(crate) mcp: Option<Spanned<Table<RawMcp>>>,
}

/// `mcp = { transport = "http", port = 8080, path = "/mcp", prefix = "files" }` in a component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMcp {
    /// `stdio` or `http`.
    pub(crate) transport: Option<Spanned<Word<McpTransportKind>>>,
    /// `http`: the port.
    pub(crate) port: Option<Spanned<Int>>,
    /// `http`: the request path.
    pub(crate) path: Option<Spanned<String>>,
    /// `http`: mutual TLS between the gateway and the server.
    pub(crate) tls: Option<Spanned<bool>>,
    /// The prefix of the server's tool names.
    pub(crate) prefix: Option<Spanned<String>>,
}

/// The `transport` keyword of an `mcp` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum McpTransportKind {
    /// JSON-RPC over stdin and stdout.
    Stdio,
    /// Streamable HTTP.
    Http,
}

/// `microvm = { accel = "auto", kernel = "/path", include = ["/srv/site"], confidential = "sev-snp" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMicroVm {
    /// `auto`, `kvm` or `tcg`.
    pub(crate) accel: Option<Word<crate::launch::AccelChoice>>,
    /// A guest kernel image.
    pub(crate) kernel: Option<Spanned<String>>,
    /// That kernel's `lib/modules/<release>` tree.
    pub(crate) kernel_modules: Option<Spanned<String>>,
    /// Host paths copied into the image.
    #[serde(default)]
    pub(crate) include: Vec<Spanned<String>>,
    /// How long the guest may take to boot.
    pub(crate) boot_timeout: Option<Spanned<String>>,
    /// `sev-snp` or `tdx`.
    pub(crate) confidential: Option<Word<crate::launch::ConfidentialChoice>>,
    /// `false`: no data disk (a stateless VM that can be hot-swapped).
    pub(crate) data_disk: Option<bool>,
    /// `true`: `/data` shared over virtio-fs instead of a disk (stateful and hot-swappable).
    pub(crate) shared_data: Option<Spanned<bool>>,
    /// `vsock` or `serial`.
    pub(crate) link: Option<Word<crate::launch::LinkChoice>>,
    /// Restore from a snapshot.
    pub(crate) snapshot: Option<Spanned<bool>>,
}

/// `unikernel = { launcher = "auto", accel = "auto", boot_timeout = "30s", deadline = "1m" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUnikernel {
    /// `auto`, `uhyve` or `qemu`.
    pub(crate) launcher: Option<Word<crate::launch::LauncherChoice>>,
    /// `auto`, `kvm` or `tcg` (QEMU's accelerator).
    pub(crate) accel: Option<Word<crate::launch::AccelChoice>>,
    /// How long the kernel may take to reach the app.
    pub(crate) boot_timeout: Option<Spanned<String>>,
    /// Wall-clock limit of one run.
    pub(crate) deadline: Option<Spanned<String>>,
}

/// `swap = { min_healthy_time = "2s", ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSwap {
    /// How long readiness must hold before the switch, and liveness after it.
    pub(crate) min_healthy_time: Option<Spanned<String>>,
    /// How long the new instance has to become ready.
    pub(crate) healthy_deadline: Option<Spanned<String>>,
    /// How long the old instance's connections may take to finish.
    pub(crate) drain_timeout: Option<Spanned<String>>,
    /// Whether a failed swap goes back to the old instance.
    pub(crate) auto_revert: Option<bool>,
}

/// `mtls_egress = [ { to = "db", port = 5432, listen = 15432 } ]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEgress {
    /// The mTLS component to reach.
    pub(crate) to: Option<Spanned<String>>,
    /// Its port.
    pub(crate) port: Option<Spanned<Int>>,
    /// The loopback port the component connects to in plain TCP.
    pub(crate) listen: Option<Spanned<Int>>,
}

/// `publish = [ { port = 8080, host = "127.0.0.1:18080" } ]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPublish {
    /// The component's listen port.
    pub(crate) port: Option<Spanned<Int>>,
    /// `"a.b.c.d:P"`, `"P"` or `P` (every local address).
    pub(crate) host: Option<Spanned<RawHostAddr>>,
}

/// A published host address as written: a port number or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawHostAddr {
    /// `18080`: every local address.
    Port(i64),
    /// `"127.0.0.1:18080"`, `"18080"`, `"[::]:18080"`.
    Text(String),
}

/// `identity_reload = { signal = "HUP" }` or `{ exec = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReload {
    /// A signal name (`HUP`, `SIGUSR1`, ...).
    pub(crate) signal: Option<Spanned<String>>,
    /// A command to run inside the component.
    pub(crate) exec: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `type = { kind = ..., ... }`: every field any kind has; validation checks which belong.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawType {
    /// The kind tag.
    pub(crate) kind: Option<Word<ComponentKind>>,
    /// `validator`, `rpc_node`: the network.
    pub(crate) network: Option<Spanned<String>>,
    /// `validator`: the identity.
    pub(crate) identity: Option<Spanned<String>>,
    /// `rpc_node`: the bind address.
    pub(crate) bind_address: Option<Spanned<String>>,
    /// `mcp_server` (required), `service` (optional): the name.
    pub(crate) name: Option<Spanned<String>>,
    /// `mcp_server`: the version.
    pub(crate) version: Option<Spanned<String>>,
}

/// `resources = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResources {
    /// Memory limit, a size (`256M`) or a number of bytes.
    pub(crate) memory: Option<Spanned<SizeText>>,
    /// CPU quota.
    pub(crate) cpus: Option<Spanned<Cpus>>,
    /// Process and thread limit.
    pub(crate) pids: Option<Spanned<Int>>,
    /// Open file descriptor limit.
    pub(crate) open_files: Option<Spanned<Int>>,
    /// Storage cap: the `/data` volume's size, a size or a number of bytes.
    pub(crate) disk: Option<Spanned<SizeText>>,
}

/// A size written either as a string (`"256M"`) or as an integer number of bytes.
#[derive(Debug)]
pub(crate) struct SizeText(pub(crate) String);

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = SizeText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"256M\" or a number of bytes")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeText, E> {
                Ok(SizeText(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// `health = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    /// HTTP probe: the path to GET.
    pub(crate) http: Option<Spanned<String>>,
    /// TCP probe: `true` to connect to `port`.
    pub(crate) tcp: Option<Spanned<bool>>,
    /// Exec probe: the command to run inside the component.
    pub(crate) exec: Option<Spanned<Vec<Spanned<String>>>>,
    /// The port HTTP and TCP probes connect to.
    pub(crate) port: Option<Spanned<Int>>,
    /// Time between probes.
    pub(crate) interval: Option<Spanned<String>>,
    /// Time one probe may take.
    pub(crate) timeout: Option<Spanned<String>>,
    /// Consecutive failures that make the component unhealthy.
    pub(crate) retries: Option<Spanned<Int>>,
    /// Grace time after start during which failures do not count.
    pub(crate) start_period: Option<Spanned<String>>,
    /// Deadline for the first passing probe.
    pub(crate) ready_within: Option<Spanned<String>>,
    /// HTTP status that counts as healthy.
    pub(crate) expect_status: Option<Spanned<Int>>,
}

/// `mounts = [ { ... } ]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMount {
    /// Host path.
    pub(crate) source: Option<Spanned<String>>,
    /// Path inside the isolation.
    pub(crate) target: Option<Spanned<String>>,
    /// `ro` or `rw`.
    pub(crate) mode: Option<Word<MountMode>>,
}

/// Access mode of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MountMode {
    /// Read-only.
    Ro,
    /// Read-write.
    Rw,
}

/// `[[policy]]`: exactly one of `allow` and `deny`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    /// An allow rule.
    pub(crate) allow: Option<Spanned<Table<RawRule>>>,
    /// A deny rule.
    pub(crate) deny: Option<Spanned<Table<RawRule>>>,
}

/// The body of `allow = { ... }` or `deny = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    /// Source selector.
    pub(crate) from: Option<Spanned<String>>,
    /// Destination selector.
    pub(crate) to: Option<Spanned<String>>,
    /// Destination ports; empty means all.
    #[serde(default)]
    pub(crate) ports: Vec<Spanned<Int>>,
    /// Transport protocol.
    pub(crate) protocol: Option<Word<Protocol>>,
}

/// `[[mcp_policy]]`: exactly one of `allow` and `deny`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMcpPolicy {
    /// An allow rule.
    pub(crate) allow: Option<Spanned<Table<RawMcpRule>>>,
    /// A deny rule.
    pub(crate) deny: Option<Spanned<Table<RawMcpRule>>>,
}

/// The body of an `[[mcp_policy]]`'s `allow = { ... }` or `deny = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMcpRule {
    /// Client identity patterns.
    pub(crate) clients: Option<Spanned<Vec<Spanned<String>>>>,
    /// `<server>.<tool>` patterns.
    pub(crate) tools: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A whole number, read as `i64` so that range checks can say what was expected.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Int(pub(crate) i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }

        deserializer.deserialize_i64(IntVisitor)
    }
}

/// A CPU count, written as a number (`0.5`, `2`) or a string (`"0.5"`); checked later.
#[derive(Debug, Clone)]
pub(crate) enum Cpus {
    /// Written as a TOML number.
    Number(f64),
    /// Written as a string, parsed during validation.
    Text(String),
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CpusVisitor;

        impl Visitor<'_> for CpusVisitor {
            type Value = Cpus;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs such as 0.5 or 2")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpus, E> {
                Ok(Cpus::Number(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpus, E> {
                // Any i64 a person writes as a CPU count converts exactly or is absurd anyway.
                Ok(Cpus::Number(v as f64))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cpus, E> {
                Ok(Cpus::Number(v as f64))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cpus, E> {
                Ok(Cpus::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(CpusVisitor)
    }
}

/// A keyword: a string naming one variant of the enum `T` (`"microvm"`, `"on-failure"`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Word<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Word<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WordVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for WordVisitor<T> {
            type Value = Word<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Word<T>, E> {
                T::deserialize(v.into_deserializer()).map(Word)
            }
        }

        deserializer.deserialize_str(WordVisitor(PhantomData))
    }
}

/// What a table-shaped value looks like, for "invalid type" messages.
pub(crate) trait Expecting {
    /// Completes "expected ...".
    const EXPECTING: &'static str;
}

impl Expecting for RawStack {
    const EXPECTING: &'static str = "a [stack] table with `name`";
}

impl Expecting for RawComponent {
    const EXPECTING: &'static str = "a [[component]] table";
}

impl Expecting for RawType {
    const EXPECTING: &'static str = "a table such as { kind = \"service\" }";
}

impl Expecting for RawResources {
    const EXPECTING: &'static str = "a table such as { memory = \"256M\", cpus = 0.5 }";
}

impl Expecting for RawHealth {
    const EXPECTING: &'static str = "a table such as { http = \"/\", port = 8080 }";
}

impl Expecting for RawReload {
    const EXPECTING: &'static str =
        "a table such as { signal = \"HUP\" } or { exec = [\"/bin/reload\"] }";
}

impl Expecting for RawMount {
    const EXPECTING: &'static str = "a table such as { source = \"/srv/www\", target = \"/www\" }";
}

impl Expecting for RawSwap {
    const EXPECTING: &'static str = "a table such as { min_healthy_time = \"2s\", healthy_deadline = \"30s\", drain_timeout = \"60s\" }";
}

impl Expecting for RawEgress {
    const EXPECTING: &'static str = "a table such as { to = \"db\", port = 5432, listen = 15432 }";
}

impl Expecting for RawPublish {
    const EXPECTING: &'static str = "a table such as { port = 8080, host = \"127.0.0.1:18080\" }";
}

impl Expecting for RawPolicy {
    const EXPECTING: &'static str = "a [[policy]] table with `allow` or `deny`";
}

impl Expecting for RawRule {
    const EXPECTING: &'static str = "a table such as { from = \"web\", to = \"db\" }";
}

impl Expecting for RawMcpSettings {
    const EXPECTING: &'static str = "a table such as { call_timeout = \"30s\", max_message_size = \"4M\", rate = 200, burst = 400 }";
}

impl Expecting for RawMcp {
    const EXPECTING: &'static str =
        "a table such as { transport = \"stdio\" } or { transport = \"http\", port = 8080 }";
}

impl Expecting for RawMcpPolicy {
    const EXPECTING: &'static str = "an [[mcp_policy]] table with `allow` or `deny`";
}

impl Expecting for RawMcpRule {
    const EXPECTING: &'static str =
        "a table such as { clients = [\"alice\"], tools = [\"fs.read_*\"] }";
}

/// A value that must be a TOML table. Serde's derived structs also accept an array of field
/// values in declaration order (`stack = ["demo"]`); this wrapper refuses that so that every
/// setting is written with its key.
#[derive(Debug)]
pub(crate) struct Table<T>(pub(crate) T);

impl<'de, T: Deserialize<'de> + Expecting> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de> + Expecting> Visitor<'de> for TableVisitor<T> {
            type Value = Table<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Table)
            }
        }

        deserializer.deserialize_any(TableVisitor(PhantomData))
    }
}

impl Expecting for RawMicroVm {
    const EXPECTING: &'static str = "a table such as { accel = \"auto\", include = [\"/srv/site\"], \
         boot_timeout = \"60s\", data_disk = true }";
}

impl Expecting for RawUnikernel {
    const EXPECTING: &'static str =
        "a table such as { launcher = \"auto\", accel = \"auto\", deadline = \"1m\" }";
}
