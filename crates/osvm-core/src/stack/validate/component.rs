//! A `[[component]]` table: its type, runtime, resources, mounts and mTLS egress.

use toml::Spanned;

use crate::launch::{BindMount, Resources};
use crate::model::{ComponentKind, ComponentType, IsolationLevel};
use crate::quantity;
use crate::runtime::RuntimeKind;

use crate::stack::error::{Source, StackError};
use crate::stack::file::{
    Cpus, MountMode, RawComponent, RawEgress, RawHostAddr, RawMount, RawPublish, RawResources,
    RawType, Table, Word,
};
use crate::stack::{Component, IdentityReload, MtlsEgress, RestartPolicy, SwapPolicy};

use super::{
    check::{
        absolute_path, check_env_key, check_name, duration, int_in, no_nul, port_number, required,
    },
    health::health,
    mcp::{McpContext, mcp_server},
};

/// Validates one `[[component]]`; `earlier` are the components before it in the file.
pub(super) fn component(
    src: &Source<'_>,
    raw: Spanned<Table<RawComponent>>,
    earlier: &[Component],
    network: crate::stack::StackNetwork,
) -> Result<Component, StackError> {
    let header = raw.span();
    let raw = raw.into_inner().0;

    let name = required(
        src,
        raw.name,
        header.clone(),
        "this [[component]] has no `name`; add name = \"...\"",
    )?;
    check_name(src, &name, "component name")?;
    if name.get_ref() == crate::stack::Selector::WORLD {
        return Err(src.error(
            name.span(),
            "the component name `world` is reserved: in a [[policy]] rule it names every \
             address outside the stack; choose another name",
        ));
    }
    if earlier.iter().any(|c| c.name == *name.get_ref()) {
        return Err(src.error(
            name.span(),
            format!(
                "duplicate component name `{}`; each component in a stack needs its own name",
                name.get_ref()
            ),
        ));
    }
    let name_text = name.get_ref().as_str();

    let type_span = raw.component_type.as_ref().map(Spanned::span);
    let type_name_span = raw
        .component_type
        .as_ref()
        .and_then(|t| t.get_ref().0.name.as_ref().map(Spanned::span));
    let component_type = match raw.component_type {
        Some(t) => component_type(src, t)?,
        None => ComponentType::default(),
    };

    let runtime_span = raw.runtime.as_ref().map(Spanned::span);
    let runtime = raw
        .runtime
        .map_or(RuntimeKind::Process, |r| r.into_inner().0);

    let command = required(
        src,
        raw.command,
        header.clone(),
        &format!(
            "component `{name_text}` has no `command`; add command = \"...\" (the program to run)"
        ),
    )?;
    if command.get_ref().trim().is_empty() {
        return Err(src.error(
            command.span(),
            "`command` is empty; expected the program to run",
        ));
    }
    no_nul(src, &command, "command")?;
    for arg in &raw.args {
        no_nul(src, arg, "argument")?;
    }
    let args = raw.args.into_iter().map(Spanned::into_inner).collect();

    let mut env = Vec::with_capacity(raw.env.len());
    for (key, value) in raw.env {
        check_env_key(src, &key)?;
        no_nul(src, &value, "environment value")?;
        env.push((key.into_inner(), value.into_inner()));
    }

    let working_dir = raw
        .working_dir
        .map(|dir| absolute_path(src, &dir, "working_dir", false))
        .transpose()?;

    let disk_span = raw
        .resources
        .as_ref()
        .and_then(|r| r.get_ref().0.disk.as_ref().map(|d| d.span()));
    let resources = resources(src, raw.resources)?;

    let mut listen: Vec<u16> = Vec::with_capacity(raw.listen.len());
    for port in &raw.listen {
        let p = port_number(src, port, "listen port")?;
        if listen.contains(&p) {
            return Err(src.error(
                port.span(),
                format!("port {p} is listed twice in `listen`; list each port once"),
            ));
        }
        listen.push(p);
    }

    let health = raw.health.map(|h| health(src, h, &listen)).transpose()?;

    let rootfs = raw
        .rootfs
        .map(|dir| absolute_path(src, &dir, "rootfs", false))
        .transpose()?;

    let mut mounts: Vec<BindMount> = Vec::with_capacity(raw.mounts.len());
    for m in raw.mounts {
        let target_span = m.get_ref().0.target.as_ref().map(Spanned::span);
        let bind = mount(src, m)?;
        if mounts.iter().any(|b| b.target == bind.target) {
            return Err(src.error(
                target_span.unwrap_or(0..0),
                format!(
                    "two mounts have target `{}`; each target may be mounted once",
                    bind.target.display()
                ),
            ));
        }
        mounts.push(bind);
    }

    let stop_grace = match raw.stop_grace {
        Some(d) => duration(src, &d, "stop_grace")?,
        None => Component::DEFAULT_STOP_GRACE,
    };

    let identity_reload = match raw.identity_reload {
        None => None,
        Some(table) => {
            let span = table.span();
            let r = table.into_inner().0;
            match (r.signal, r.exec) {
                (Some(sig), None) => Some(IdentityReload::Signal(
                    signal_number(sig.get_ref()).ok_or_else(|| {
                        src.error(
                            sig.span(),
                            format!(
                                "unknown signal `{}`; expected a name such as HUP, USR1 or TERM",
                                sig.get_ref()
                            ),
                        )
                    })?,
                )),
                (None, Some(cmd)) => {
                    let cmd_span = cmd.span();
                    let cmd: Vec<String> = cmd
                        .into_inner()
                        .into_iter()
                        .map(|a| a.into_inner())
                        .collect();
                    if cmd.is_empty() || cmd[0].is_empty() {
                        return Err(src.error(
                            cmd_span,
                            "`exec` needs a command: [\"program\", \"arg\", ...]",
                        ));
                    }
                    Some(IdentityReload::Exec(cmd))
                }
                _ => {
                    return Err(src.error(
                        span,
                        "identity_reload takes exactly one of `signal = \"HUP\"` or `exec = [...]`",
                    ));
                }
            }
        }
    };
    let allow_weaker_isolation = raw.allow_weaker_isolation.unwrap_or(false);
    let level = IsolationLevel::of_runtime(runtime);
    if component_type.is_security_critical()
        && level < IsolationLevel::MicroVm
        && !allow_weaker_isolation
    {
        let at = runtime_span.or(type_span).unwrap_or(header);
        return Err(src.error(
            at,
            format!(
                "component `{name_text}` is of kind `{kind}`, which is security-critical and \
                 must run at micro_vm isolation or stronger, but runtime \"{runtime}\" gives \
                 {level}; set runtime = \"microvm\" (or \"unikernel\"), or add \
                 allow_weaker_isolation = true to this component to accept weaker isolation \
                 explicitly",
                kind = component_type.kind_name(),
            ),
        ));
    }

    let mtls = match raw.mtls {
        Some(m) if *m.get_ref() && listen.is_empty() => {
            return Err(src.error(
                m.span(),
                format!(
                    "component `{name_text}` has mtls = true but no `listen` ports: the mTLS \
                     proxy forwards to the ports the component listens on"
                ),
            ));
        }
        Some(m) => m.into_inner(),
        None => false,
    };

    let socket_activation_span = raw.socket_activation.as_ref().map(Spanned::span);
    let socket_activation = match raw.socket_activation {
        Some(v) if *v.get_ref() && listen.is_empty() => {
            return Err(src.error(
                v.span(),
                format!(
                    "component `{name_text}` has socket_activation = true but no `listen` ports: osvm makes one listening socket per listen port"
                ),
            ));
        }
        Some(v) => v.into_inner(),
        None => false,
    };
    let mut microvm = crate::launch::VmOptions::default();
    if let Some(table) = raw.microvm {
        let span = table.span();
        if runtime != RuntimeKind::MicroVm {
            return Err(src.error(
                span,
                format!(
                    "component `{name_text}` has a `microvm` table but runtime \"{runtime}\"; \
                     set runtime = \"microvm\" or remove the table"
                ),
            ));
        }
        let r = table.into_inner().0;
        if let Some(a) = r.accel {
            microvm.accel = a.0;
        }
        if let Some(k) = &r.kernel {
            microvm.kernel = Some(absolute_path(src, k, "microvm.kernel", true)?);
        }
        if let Some(k) = &r.kernel_modules {
            microvm.kernel_modules = Some(absolute_path(src, k, "microvm.kernel_modules", true)?);
        }
        for p in &r.include {
            microvm
                .include
                .push(absolute_path(src, p, "microvm.include", true)?);
        }
        if let Some(t) = &r.boot_timeout {
            microvm.boot_timeout_ms = Some(duration(src, t, "boot_timeout")?.as_millis() as u64);
        }
        microvm.confidential = r.confidential.map(|c| c.0);
        let link_given = r.link.is_some();
        if let Some(l) = r.link {
            microvm.link = l.0;
        }
        if let Some(snapshot) = &r.snapshot
            && *snapshot.get_ref()
        {
            // What a snapshot cannot hold: the vhost-user vsock and virtio-fs devices (QEMU
            // cannot save them), and a disk other instances may write meanwhile.
            let refuse = |why: &str| {
                src.error(
                    snapshot.span(),
                    format!("component `{name_text}`: snapshot = true {why}"),
                )
            };
            if link_given && microvm.link != crate::launch::LinkChoice::Serial {
                return Err(refuse(
                    "needs link = \"serial\" (QEMU cannot save a guest with its vsock device)",
                ));
            }
            if r.data_disk != Some(false) || r.shared_data.as_ref().is_some_and(|s| *s.get_ref()) {
                return Err(refuse(
                    "needs data_disk = false: a restored guest has no data disk or shared /data \
                     yet",
                ));
            }
            if !mounts.is_empty() {
                return Err(refuse(
                    "cannot be combined with mounts yet (QEMU cannot save a guest with \
                     virtio-fs devices)",
                ));
            }
            microvm.snapshot = true;
            microvm.link = crate::launch::LinkChoice::Serial;
        }
        microvm.no_data_disk = r.data_disk == Some(false);
        if let Some(shared) = &r.shared_data {
            microvm.shared_data = *shared.get_ref();
            if microvm.shared_data && microvm.no_data_disk {
                return Err(src.error(
                    shared.span(),
                    format!(
                        "component `{name_text}`: shared_data = true gives the VM a /data over \
                         virtio-fs and data_disk = false gives it none; keep one"
                    ),
                ));
            }
        }
    }
    let mut unikernel = crate::launch::UnikernelOptions::default();
    if let Some(table) = raw.unikernel {
        let span = table.span();
        if runtime != RuntimeKind::Unikernel {
            return Err(src.error(
                span,
                format!(
                    "component `{name_text}` has a `unikernel` table but runtime \"{runtime}\"; \
                     set runtime = \"unikernel\" or remove the table"
                ),
            ));
        }
        let r = table.into_inner().0;
        if let Some(l) = r.launcher {
            unikernel.launcher = l.0;
        }
        if let Some(a) = r.accel {
            unikernel.accel = a.0;
        }
        if let Some(t) = &r.boot_timeout {
            unikernel.boot_timeout_ms = Some(duration(src, t, "boot_timeout")?.as_millis() as u64);
        }
        if let Some(t) = &r.deadline {
            unikernel.deadline_ms = Some(duration(src, t, "deadline")?.as_millis() as u64);
        }
        if unikernel.launcher == crate::launch::LauncherChoice::Uhyve
            && unikernel.accel == crate::launch::AccelChoice::Tcg
        {
            return Err(src.error(
                span,
                "uhyve runs guests only under KVM: accel = \"tcg\" needs launcher = \"qemu\"",
            ));
        }
    }
    if runtime == RuntimeKind::Unikernel {
        let refuse = |what: &str| {
            src.error(
                header.clone(),
                format!(
                    "component `{name_text}` is a Hermit unikernel, which does not support {what}"
                ),
            )
        };
        if socket_activation {
            return Err(refuse(
                "socket_activation (the sockets cannot cross into the guest)",
            ));
        }
        if !raw.mtls_egress.is_empty() {
            return Err(refuse(
                "mtls_egress: a Hermit guest has no osvm agent to make its connections mutual TLS, and osvm's proxy in the namespace is outside the guest",
            ));
        }
        if rootfs.is_some() || !mounts.is_empty() {
            return Err(refuse(
                "rootfs or mounts: a Hermit image is one ELF file with an in-memory file system",
            ));
        }
        if working_dir.is_some() {
            return Err(refuse("working_dir: the guest has no host directories"));
        }
        if let Some(span) = disk_span {
            return Err(src.error(
                span,
                format!(
                    "component `{name_text}` is a Hermit unikernel, which gets no persistent \
                     /data volume (osvm gives Hermit no block or shared-directory device yet; \
                     its files live in guest memory): remove resources.disk"
                ),
            ));
        }
        if matches!(
            health.as_ref().map(|h| &h.probe),
            Some(crate::stack::HealthProbe::Exec { .. })
        ) {
            return Err(refuse(
                "exec health checks: a unikernel runs one program and nothing else; use a tcp \
                 or http check",
            ));
        }
    }
    let native_aio_span = raw.native_aio.as_ref().map(Spanned::span);
    let native_aio = raw.native_aio.is_some_and(|v| v.into_inner());
    if native_aio && runtime != RuntimeKind::Process {
        return Err(src.error(
            native_aio_span.unwrap_or(header.clone()),
            format!(
                "component `{name_text}` runs as a {runtime}: native_aio applies to process \
                 components (a guest has its own kernel)"
            ),
        ));
    }
    if runtime == RuntimeKind::MicroVm {
        let refuse = |what: &str| {
            src.error(
                header.clone(),
                format!("component `{name_text}` runs in a microVM, which does not support {what}"),
            )
        };
        if socket_activation {
            return Err(refuse(
                "socket_activation (the sockets cannot cross into the guest)",
            ));
        }
        if rootfs.is_some() {
            return Err(refuse(
                "rootfs: its root is its image (add host files with microvm.include, or share \
                 directories with mounts)",
            ));
        }
    }

    let mut swap = SwapPolicy::default();
    if let Some(table) = raw.swap {
        let r = table.into_inner().0;
        for (value, key, slot) in [
            (
                &r.min_healthy_time,
                "min_healthy_time",
                &mut swap.min_healthy_time,
            ),
            (
                &r.healthy_deadline,
                "healthy_deadline",
                &mut swap.healthy_deadline,
            ),
            (&r.drain_timeout, "drain_timeout", &mut swap.drain_timeout),
        ] {
            if let Some(v) = value {
                *slot = duration(src, v, key)?;
            }
        }
        if let Some(b) = r.auto_revert {
            swap.auto_revert = b;
        }
    }

    let mut publish: Vec<super::super::Publish> = Vec::with_capacity(raw.publish.len());
    for p in raw.publish {
        let span = p.span();
        let entry = published(src, p)?;
        if !listen.contains(&entry.port) {
            return Err(src.error(
                span,
                format!(
                    "`publish` names port {}, which component `{name_text}` does not listen on; \
                     add it to `listen` (it listens on {listen:?})",
                    entry.port
                ),
            ));
        }
        if let Some(other) = publish.iter().find(|x| x.overlaps(&entry)) {
            return Err(src.error(
                span,
                format!(
                    "host address {} is already published as {other}",
                    entry.host
                ),
            ));
        }
        publish.push(entry);
    }

    let mut mtls_egress: Vec<MtlsEgress> = Vec::with_capacity(raw.mtls_egress.len());
    for e in raw.mtls_egress {
        let span = e.span();
        let entry = egress(src, e)?;
        if listen.contains(&entry.listen) {
            return Err(src.error(
                span,
                format!(
                    "`mtls_egress` listens on port {} on the component's loopback, which the component itself listens on",
                    entry.listen
                ),
            ));
        }
        if mtls_egress.iter().any(|x| x.listen == entry.listen) {
            return Err(src.error(
                span,
                format!("two `mtls_egress` entries listen on port {}", entry.listen),
            ));
        }
        mtls_egress.push(entry);
    }

    let mcp = mcp_server(
        src,
        McpContext {
            name: name_text,
            component_type: &component_type,
            type_span: type_name_span.or(type_span).unwrap_or(header.clone()),
            listen: &listen,
            socket_activation: socket_activation_span.filter(|_| socket_activation),
            earlier,
        },
        raw.mcp,
    )?;
    if let Some(m) = &mcp {
        let http = matches!(m.transport, crate::stack::McpTransport::Http { .. });
        let why = match runtime {
            RuntimeKind::Unikernel if !http => Some(
                "a unikernel has no stdin, so it cannot be an MCP server over stdio; serve MCP \
                 over HTTP (mcp = { transport = \"http\", port = ... }) in a hub stack",
            ),
            // The gateway reaches a guest's port at its hub address, from the hub.
            RuntimeKind::Unikernel | RuntimeKind::MicroVm
                if http && network != crate::stack::StackNetwork::Hub =>
            {
                Some(
                    "the gateway reaches an MCP server over HTTP in a guest at its hub address: \
                     set network = \"hub\" in [stack]",
                )
            }
            _ => None,
        };
        if let Some(why) = why {
            return Err(src.error(
                header,
                format!("component `{name_text}` runs as a {runtime}: {why}"),
            ));
        }
    }

    Ok(Component {
        name: name.into_inner(),
        component_type,
        runtime: match runtime {
            RuntimeKind::Process => crate::launch::RuntimeSpec::Process,
            RuntimeKind::MicroVm => crate::launch::RuntimeSpec::MicroVm { microvm },
            RuntimeKind::Unikernel => crate::launch::RuntimeSpec::Unikernel { unikernel },
        },
        command: command.into_inner(),
        args,
        env,
        working_dir,
        resources,
        listen,
        health,
        restart: raw.restart.map_or(RestartPolicy::default(), |r| r.0),
        readonly_root: raw.readonly_root.unwrap_or(false),
        rootfs,
        mounts,
        allow_weaker_isolation,
        stop_grace,
        identity_reload,
        mtls,
        mtls_egress,
        publish,
        network_access: raw.network_access.map(|w| w.0).unwrap_or_default(),
        swap,
        socket_activation,
        native_aio,
        mcp,
    })
}

/// One `mtls_egress` entry.
pub(super) fn egress(
    src: &Source<'_>,
    raw: Spanned<Table<RawEgress>>,
) -> Result<MtlsEgress, StackError> {
    let span = raw.span();
    let e = raw.into_inner().0;
    let need = "an mtls_egress entry needs `to`, `port` and `listen`: { to = \"db\", port = 5432, listen = 15432 }";
    let (Some(to), Some(port), Some(listen)) = (e.to, e.port, e.listen) else {
        return Err(src.error(span, need));
    };
    Ok(MtlsEgress {
        to: to.into_inner(),
        port: port_number(src, &port, "mtls_egress port")?,
        listen: port_number(src, &listen, "mtls_egress listen port")?,
    })
}

/// One `publish` entry.
fn published(
    src: &Source<'_>,
    raw: Spanned<Table<RawPublish>>,
) -> Result<super::super::Publish, StackError> {
    let span = raw.span();
    let p = raw.into_inner().0;
    let need = "a publish entry needs `port` and `host`: { port = 8080, host = \"127.0.0.1:18080\" } \
                (host \"P\" or P: every address of the host)";
    let (Some(port), Some(host)) = (p.port, p.host) else {
        return Err(src.error(span, need));
    };
    let port = port_number(src, &port, "publish port")?;
    let host_span = host.span();
    let bad = |why: String| src.error(host_span.clone(), why);
    let host = match host.into_inner() {
        RawHostAddr::Port(n) => u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .map(|n| std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, n))
            .ok_or_else(|| {
                bad(format!(
                    "host port {n} is out of range; expected 1 to 65535"
                ))
            })?,
        RawHostAddr::Text(text) => {
            if let Ok(n) = text.parse::<u16>() {
                if n == 0 {
                    return Err(bad("host port 0 is not a port; expected 1 to 65535".into()));
                }
                std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, n)
            } else if text.starts_with('[') {
                return Err(bad(format!(
                    "`{text}`: publishing on IPv6 addresses is not supported yet (the hub is IPv4 \
                     only); use \"0.0.0.0:P\" or an IPv4 address"
                )));
            } else {
                let addr: std::net::SocketAddrV4 = text.parse().map_err(|_| {
                    bad(format!(
                        "`{text}` is not a host address; expected \"a.b.c.d:P\", \"P\" or P"
                    ))
                })?;
                if addr.port() == 0 {
                    return Err(bad("host port 0 is not a port; expected 1 to 65535".into()));
                }
                addr
            }
        }
    };
    Ok(super::super::Publish { port, host })
}

/// The number of a signal given by name, with or without `SIG` (HUP, SIGUSR1, ...).
pub(super) fn signal_number(name: &str) -> Option<i32> {
    let name = name.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "WINCH" => 28,
        _ => return None,
    })
}

/// Builds the [`ComponentType`] from `type = { kind = ..., ... }`, rejecting fields the kind
/// does not have and requiring the ones it needs.
pub(super) fn component_type(
    src: &Source<'_>,
    raw: Spanned<Table<RawType>>,
) -> Result<ComponentType, StackError> {
    let table = raw.span();
    let RawType {
        kind,
        network,
        identity,
        bind_address,
        name,
        version,
    } = raw.into_inner().0;
    let Some(kind) = kind else {
        return Err(src.error(
            table,
            "`type` has no `kind`; expected one of osvm_core, validator, rpc_node, mcp_server, \
             service, e.g. type = { kind = \"service\" }",
        ));
    };
    let kind = kind.0;

    let fields = [
        ("network", &network),
        ("identity", &identity),
        ("bind_address", &bind_address),
        ("name", &name),
        ("version", &version),
    ];
    let allowed: &[&str] = match kind {
        ComponentKind::OsvmCore => &[],
        ComponentKind::Validator => &["network", "identity"],
        ComponentKind::RpcNode => &["network", "bind_address"],
        ComponentKind::McpServer => &["name", "version"],
        ComponentKind::Service => &["name"],
    };
    for (field, value) in fields {
        if let Some(value) = value
            && !allowed.contains(&field)
        {
            let expected = if allowed.is_empty() {
                "it has no other fields".to_owned()
            } else {
                format!("its fields are {}", allowed.join(", "))
            };
            return Err(src.error(
                value.span(),
                format!("`{field}` is not a field of kind `{kind}`; {expected}"),
            ));
        }
        if let Some(value) = value
            && value.get_ref().trim().is_empty()
        {
            return Err(src.error(value.span(), format!("`{field}` is empty")));
        }
    }

    let need = |value: Option<Spanned<String>>, field: &str| {
        value.map(Spanned::into_inner).ok_or_else(|| {
            src.error(
                table.clone(),
                format!(
                    "kind `{kind}` needs `{field}`, e.g. type = {{ kind = \"{kind}\", {field} = \"...\" }}"
                ),
            )
        })
    };
    let plain = |value: Option<Spanned<String>>| value.map(Spanned::into_inner);
    Ok(match kind {
        ComponentKind::OsvmCore => ComponentType::OsvmCore,
        ComponentKind::Validator => ComponentType::Validator {
            network: need(network, "network")?,
            identity: plain(identity),
        },
        ComponentKind::RpcNode => ComponentType::RpcNode {
            network: need(network, "network")?,
            bind_address: plain(bind_address),
        },
        ComponentKind::McpServer => ComponentType::McpServer {
            name: need(name, "name")?,
            version: plain(version),
        },
        ComponentKind::Service => ComponentType::Service { name: plain(name) },
    })
}

/// Resource limits: the file's values over [`Resources::defaults`].
pub(super) fn resources(
    src: &Source<'_>,
    raw: Option<Spanned<Table<RawResources>>>,
) -> Result<Resources, StackError> {
    let mut resources = Resources::defaults();
    let Some(raw) = raw else {
        return Ok(resources);
    };
    let raw = raw.into_inner().0;
    if let Some(memory) = raw.memory {
        let bytes = quantity::parse_size(&memory.get_ref().0)
            .map_err(|e| src.error(memory.span(), format!("invalid memory size: {e}")))?;
        resources.memory_bytes = Some(bytes);
    }
    if let Some(cpus) = raw.cpus {
        let parsed = match cpus.get_ref() {
            Cpus::Number(n) => quantity::check_cpus(*n),
            Cpus::Text(t) => quantity::parse_cpus(t),
        };
        let value = parsed.map_err(|e| src.error(cpus.span(), format!("invalid cpus: {e}")))?;
        resources.cpus = Some(value);
    }
    if let Some(pids) = raw.pids {
        resources.pids = Some(int_in(src, &pids, 1, i64::MAX, "pids")?);
    }
    if let Some(open_files) = raw.open_files {
        resources.open_files = Some(int_in(src, &open_files, 1, i64::MAX, "open_files")?);
    }
    if let Some(disk) = raw.disk {
        let bytes = quantity::parse_size(&disk.get_ref().0)
            .map_err(|e| src.error(disk.span(), format!("invalid disk size: {e}")))?;
        if bytes < Resources::MIN_DISK {
            return Err(src.error(
                disk.span(),
                format!(
                    "disk must be at least {} MiB (an ext4 volume and its journal need room)",
                    Resources::MIN_DISK >> 20
                ),
            ));
        }
        resources.disk_bytes = Some(bytes);
    }
    Ok(resources)
}

/// One `mounts` entry.
pub(super) fn mount(
    src: &Source<'_>,
    raw: Spanned<Table<RawMount>>,
) -> Result<BindMount, StackError> {
    let table = raw.span();
    let raw = raw.into_inner().0;
    let source = required(
        src,
        raw.source,
        table.clone(),
        "mount has no `source`; add source = \"/host/path\"",
    )?;
    let target = required(
        src,
        raw.target,
        table,
        "mount has no `target`; add target = \"/path/inside\"",
    )?;
    let source_path = absolute_path(src, &source, "mount source", false)?;
    let target_path = absolute_path(src, &target, "mount target", true)?;
    if target_path == std::path::Path::new("/") {
        return Err(src.error(target.span(), "mount target must not be `/`"));
    }
    let bind = BindMount {
        source: source_path,
        target: target_path,
        writable: matches!(raw.mode, Some(Word(MountMode::Rw))),
    };
    // The launcher's own rules, so a stack can never hold a bind `osvm run` would refuse.
    bind.check().map_err(|e| src.error(target.span(), e))?;
    Ok(bind)
}
