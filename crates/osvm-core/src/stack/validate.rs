//! The rules a well-typed stack file can still break, checked table by table in file order.
//!
//! Each check points at the value that breaks it: the name that is duplicated, the port that is
//! out of range, the policy reference that resolves to nothing. When the offending thing is a
//! missing key, the error points at the header of the table that lacks it (`[[component]]`,
//! `[stack]`) or at the opening brace of the inline table. Validation stops at the first error.

use std::ops::Range;
use std::path::{Component as PathPart, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::launch::{BindMount, Resources};
use crate::model::{ComponentKind, ComponentType, IsolationLevel};
use crate::quantity;
use crate::runtime::RuntimeKind;

use super::error::{Source, StackError};
use super::file::{
    Cpus, Int, McpTransportKind, MountMode, RawComponent, RawEgress, RawFile, RawHealth, RawMcp,
    RawMcpPolicy, RawMcpRule, RawMcpSettings, RawMount, RawPolicy, RawResources, RawRule, RawStack,
    RawType, Table, Word,
};
use super::{
    Component, HealthCheck, HealthProbe, IdentityReload, McpRule, McpServerSpec, McpSettings,
    McpTransport, MtlsEgress, PolicyAction, PolicyRule, Protocol, RestartPolicy, Selector,
    SelectorError, Stack, SwapPolicy,
};

/// The longest name a stack or component may have (a DNS label).
const MAX_NAME_LEN: usize = 63;

/// The rule for names, for messages.
const NAME_RULE: &str =
    "1 to 63 lowercase letters, digits and '-', starting with a letter and not ending with '-'";

/// Validates the whole file.
pub(super) fn stack(src: &Source<'_>, raw: RawFile, path: PathBuf) -> Result<Stack, StackError> {
    let Some(raw_stack) = raw.stack else {
        return Err(src.error(
            0..0,
            "missing [stack] table; a stack file starts with [stack] and name = \"...\"",
        ));
    };
    let header = raw_stack.span();
    let RawStack {
        name,
        trust_domain,
        max_restarts,
        certificate_validity_days,
        certificate_ttl,
        restart_backoff,
        restart_backoff_max,
        restart_reset_after,
        log_max_size,
        log_files,
        network,
        mcp,
    } = raw_stack.into_inner().0;
    let network = network.map(|w| w.into_inner().0).unwrap_or_default();

    let name = required(
        src,
        name,
        header.clone(),
        "[stack] has no `name`; add name = \"...\"",
    )?;
    check_name(src, &name, "stack name")?;
    let trust_domain = match trust_domain {
        Some(td) => {
            check_dns_name(src, &td)?;
            td.into_inner()
        }
        None => Stack::DEFAULT_TRUST_DOMAIN.to_owned(),
    };
    let max_restarts = match max_restarts {
        Some(n) => int_in(src, &n, 0, i64::from(u32::MAX), "max_restarts")?,
        None => Stack::DEFAULT_MAX_RESTARTS,
    };
    let certificate_validity_days = match certificate_validity_days {
        Some(n) => int_in(
            src,
            &n,
            1,
            i64::from(Stack::MAX_CERTIFICATE_VALIDITY_DAYS),
            "certificate_validity_days",
        )?,
        None => Stack::DEFAULT_CERTIFICATE_VALIDITY_DAYS,
    };
    let certificate_ttl = match &certificate_ttl {
        Some(v) => {
            let d = duration(src, v, "certificate_ttl")?;
            if d < Duration::from_secs(10) {
                return Err(src.error(v.span(), "`certificate_ttl` must be at least 10s"));
            }
            d
        }
        None => Duration::from_secs(u64::from(certificate_validity_days) * 24 * 3600),
    };
    let restart_backoff = match &restart_backoff {
        Some(d) => duration(src, d, "restart_backoff")?,
        None => Stack::DEFAULT_RESTART_BACKOFF,
    };
    let restart_backoff_max = match &restart_backoff_max {
        Some(d) => {
            let max = duration(src, d, "restart_backoff_max")?;
            if max < restart_backoff {
                return Err(src.error(
                    d.span(),
                    format!(
                        "restart_backoff_max ({}) is shorter than restart_backoff ({}); expected \
                         a duration at least as long",
                        d.get_ref(),
                        humantime::format_duration(restart_backoff)
                    ),
                ));
            }
            max
        }
        None => Stack::DEFAULT_RESTART_BACKOFF_MAX.max(restart_backoff),
    };
    let log_max_size = match &log_max_size {
        Some(v) => quantity::parse_size(v.get_ref())
            .map_err(|e| src.error(v.span(), format!("invalid `log_max_size`: {e}")))?,
        None => Stack::DEFAULT_LOG_MAX_SIZE,
    };
    let log_files = match log_files {
        Some(n) => int_in(src, &n, 1, 100, "log_files")?,
        None => Stack::DEFAULT_LOG_FILES,
    };
    let restart_reset_after = match &restart_reset_after {
        Some(d) => duration(src, d, "restart_reset_after")?,
        None => Stack::DEFAULT_RESTART_RESET_AFTER,
    };
    let mcp = mcp
        .map(|table| mcp_settings(src, table))
        .transpose()?
        .unwrap_or_default();

    let mut components: Vec<Component> = Vec::with_capacity(raw.component.len());
    // Where each `mtls_egress` entry's `to` is, to check once every component is known.
    let mut egress_spans: Vec<Vec<Range<usize>>> = Vec::new();
    for raw_component in raw.component {
        let spans = raw_component
            .get_ref()
            .0
            .mtls_egress
            .iter()
            .map(Spanned::span)
            .collect();
        let component = component(src, raw_component, &components)?;
        components.push(component);
        egress_spans.push(spans);
    }
    for (c, spans) in components.iter().zip(&egress_spans) {
        for (e, span) in c.mtls_egress.iter().zip(spans) {
            let to = components.iter().find(|t| t.name == e.to);
            let problem = match to {
                None => Some(format!(
                    "`mtls_egress` of `{}`: no component `{}` in the stack",
                    c.name, e.to
                )),
                Some(t) if !t.mtls => Some(format!(
                    "`mtls_egress` of `{}`: `{}` does not have mtls = true, so it has no mTLS proxy to reach",
                    c.name, e.to
                )),
                Some(t) if !t.listen.contains(&e.port) => Some(format!(
                    "`mtls_egress` of `{}`: `{}` does not listen on port {} (it listens on {:?})",
                    c.name, e.to, e.port, t.listen
                )),
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(src.error(span.clone(), problem));
            }
        }
    }
    if components.is_empty() {
        return Err(src.error(
            header,
            format!(
                "stack `{}` has no components; add at least one [[component]] table",
                name
            ),
        ));
    }

    let policies = raw
        .policy
        .into_iter()
        .map(|p| policy(src, p, &components))
        .collect::<Result<Vec<_>, _>>()?;
    let mcp_policy = raw
        .mcp_policy
        .into_iter()
        .map(|p| mcp_rule(src, p, &components))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Stack {
        name: name.into_inner(),
        trust_domain,
        max_restarts,
        certificate_validity_days,
        certificate_ttl,
        restart_backoff,
        restart_backoff_max,
        restart_reset_after,
        log_max_size,
        log_files,
        network,
        components,
        policies,
        mcp,
        mcp_policy,
        source: path,
    })
}

/// Validates one `[[component]]`; `earlier` are the components before it in the file.
fn component(
    src: &Source<'_>,
    raw: Spanned<Table<RawComponent>>,
    earlier: &[Component],
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
                "mtls_egress: its listener lives in the component's namespace, outside the guest",
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
        if !raw.mtls_egress.is_empty() {
            return Err(refuse(
                "mtls_egress yet: its listener lives in the component's namespace, outside the guest",
            ));
        }
        if rootfs.is_some() || !mounts.is_empty() {
            return Err(refuse(
                "rootfs or mounts: use microvm.include to copy host files into its image",
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
            type_span: type_name_span.or(type_span).unwrap_or(header),
            listen: &listen,
            socket_activation: socket_activation_span.filter(|_| socket_activation),
            earlier,
        },
        raw.mcp,
    )?;

    Ok(Component {
        name: name.into_inner(),
        component_type,
        runtime,
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
        network_access: raw.network_access.map(|w| w.0).unwrap_or_default(),
        swap,
        socket_activation,
        native_aio,
        microvm,
        unikernel,
        mcp,
    })
}

/// What [`mcp_server`] needs to know about the component it checks.
struct McpContext<'a> {
    /// The component's name.
    name: &'a str,
    /// Its validated type.
    component_type: &'a ComponentType,
    /// Where its MCP server name is written (or its `type`, or its header).
    type_span: Range<usize>,
    /// Its validated listen ports.
    listen: &'a [u16],
    /// Where `socket_activation = true` is written, if it is.
    socket_activation: Option<Range<usize>>,
    /// The components before it in the file.
    earlier: &'a [Component],
}

/// The MCP settings of a component: `Some` for kind `mcp_server` (from its type and its `mcp`
/// table), `None` for every other kind, which may not have an `mcp` table.
fn mcp_server(
    src: &Source<'_>,
    cx: McpContext<'_>,
    raw: Option<Spanned<Table<RawMcp>>>,
) -> Result<Option<McpServerSpec>, StackError> {
    let component = cx.name;
    let ComponentType::McpServer { name, version } = cx.component_type else {
        return match raw {
            Some(table) => Err(src.error(
                table.span(),
                format!(
                    "component `{component}` has an `mcp` table but is of kind `{}`; only \
                     components of kind `mcp_server` are MCP servers: set type = {{ kind = \
                     \"mcp_server\", name = \"...\" }} or remove the table",
                    cx.component_type.kind_name()
                ),
            )),
            None => Ok(None),
        };
    };
    if let Some(bad) = name
        .chars()
        .find(|c| matches!(c, '.' | '*' | '?') || c.is_whitespace())
    {
        return Err(src.error(
            cx.type_span,
            format!(
                "MCP server name `{name}` contains {bad:?}; policies name tools as \
                 `<server>.<tool>`, so a server name has no '.', '*', '?' or whitespace"
            ),
        ));
    }

    let (table, raw) = match raw {
        Some(t) => (t.span(), t.into_inner().0),
        None => (
            cx.type_span.clone(),
            RawMcp {
                transport: None,
                port: None,
                path: None,
                prefix: None,
            },
        ),
    };
    let kind = raw
        .transport
        .as_ref()
        .map_or(McpTransportKind::Stdio, |t| t.get_ref().0);
    let transport = match kind {
        McpTransportKind::Stdio => {
            let extra = [
                ("port", raw.port.as_ref().map(Spanned::span)),
                ("path", raw.path.as_ref().map(Spanned::span)),
            ]
            .into_iter()
            .find_map(|(key, span)| Some((key, span?)));
            if let Some((key, span)) = extra {
                return Err(src.error(
                    span,
                    format!(
                        "`{key}` only applies to transport = \"http\"; a stdio MCP server talks \
                         over its stdin and stdout, so remove `{key}` or set transport = \"http\""
                    ),
                ));
            }
            if let Some(span) = cx.socket_activation {
                return Err(src.error(
                    span,
                    format!(
                        "component `{component}` is an MCP server on stdio, which has no \
                         listening socket to hand over; remove socket_activation or use \
                         mcp = {{ transport = \"http\", port = ... }}"
                    ),
                ));
            }
            McpTransport::Stdio
        }
        McpTransportKind::Http => {
            let port = required(
                src,
                raw.port,
                table,
                "transport = \"http\" needs `port`, the port the MCP server listens on, e.g. \
                 mcp = { transport = \"http\", port = 8080 }",
            )?;
            let number = port_number(src, &port, "mcp port")?;
            if !cx.listen.contains(&number) {
                let listed = if cx.listen.is_empty() {
                    "it has no `listen` ports".to_owned()
                } else {
                    format!("it listens on {:?}", cx.listen)
                };
                return Err(src.error(
                    port.span(),
                    format!(
                        "mcp port {number} is not one of component `{component}`'s listen ports \
                         ({listed}); the component may only bind its listen ports, so add \
                         {number} to `listen`"
                    ),
                ));
            }
            let path = match raw.path {
                Some(path) => {
                    no_nul(src, &path, "mcp path")?;
                    if !path.get_ref().starts_with('/') {
                        return Err(src.error(
                            path.span(),
                            format!("mcp path `{}` must start with '/'", path.get_ref()),
                        ));
                    }
                    path.into_inner()
                }
                None => McpTransport::DEFAULT_HTTP_PATH.to_owned(),
            };
            McpTransport::Http { port: number, path }
        }
    };

    let (prefix, prefix_span) = match raw.prefix {
        Some(prefix) => {
            check_name(src, &prefix, "mcp prefix")?;
            let span = prefix.span();
            (prefix.into_inner(), span)
        }
        None => {
            if let Some(problem) = name_problem(name) {
                return Err(src.error(
                    cx.type_span,
                    format!(
                        "MCP server name `{name}` cannot be the prefix of its tools' names: \
                         {problem}; add mcp = {{ prefix = \"...\" }} with {NAME_RULE}"
                    ),
                ));
            }
            (name.clone(), cx.type_span)
        }
    };
    if let Some(other) = cx
        .earlier
        .iter()
        .find(|c| c.mcp.as_ref().is_some_and(|m| m.prefix == prefix))
    {
        return Err(src.error(
            prefix_span,
            format!(
                "components `{}` and `{component}` both give their MCP tools the prefix \
                 `{prefix}`; clients could not tell their tools apart, so set a different \
                 mcp = {{ prefix = \"...\" }} on one of them",
                other.name
            ),
        ));
    }
    Ok(Some(McpServerSpec {
        name: name.clone(),
        version: version.clone(),
        transport,
        prefix,
    }))
}

/// The `mcp` table of `[stack]`: the MCP gateway's limits over their defaults.
fn mcp_settings(
    src: &Source<'_>,
    raw: Spanned<Table<RawMcpSettings>>,
) -> Result<McpSettings, StackError> {
    let RawMcpSettings {
        call_timeout,
        max_message_size,
        rate,
        burst,
    } = raw.into_inner().0;
    let mut settings = McpSettings::default();
    if let Some(v) = &call_timeout {
        settings.call_timeout = duration(src, v, "mcp.call_timeout")?;
        if settings.call_timeout.is_zero() {
            return Err(src.error(v.span(), "`mcp.call_timeout` must be longer than zero"));
        }
    }
    if let Some(v) = &max_message_size {
        settings.max_message_bytes = quantity::parse_size(&v.get_ref().0)
            .map_err(|e| src.error(v.span(), format!("invalid `mcp.max_message_size`: {e}")))?;
    }
    if let Some(v) = &rate {
        settings.rate_per_second = int_in(src, v, 1, MAX_MCP_RATE, "mcp rate")?;
    }
    settings.burst = match &burst {
        Some(v) => int_in(src, v, 1, MAX_MCP_RATE, "mcp burst")?,
        // A burst smaller than the rate would throttle a client below the rate it is granted.
        None => McpSettings::DEFAULT_BURST.max(settings.rate_per_second),
    };
    Ok(settings)
}

/// The highest `rate` and `burst` of `mcp` in `[stack]`.
const MAX_MCP_RATE: i64 = 1_000_000;

/// One `mtls_egress` entry.
fn egress(src: &Source<'_>, raw: Spanned<Table<RawEgress>>) -> Result<MtlsEgress, StackError> {
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

/// The number of a signal given by name, with or without `SIG` (HUP, SIGUSR1, ...).
fn signal_number(name: &str) -> Option<i32> {
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
fn component_type(
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
fn resources(
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

/// The health check; `listen` are the component's validated listen ports.
fn health(
    src: &Source<'_>,
    raw: Spanned<Table<RawHealth>>,
    listen: &[u16],
) -> Result<HealthCheck, StackError> {
    let table = raw.span();
    let raw = raw.into_inner().0;

    let port = raw
        .port
        .as_ref()
        .map(|p| port_number(src, p, "health port"))
        .transpose()?;
    if let (Some(p), Some(spanned)) = (port, &raw.port)
        && !listen.is_empty()
        && !listen.contains(&p)
    {
        return Err(src.error(
            spanned.span(),
            format!(
                "health port {p} is not one of this component's listen ports {listen:?}; the \
                 component may only bind its listen ports, so the probe could never succeed"
            ),
        ));
    }
    if let Some(status) = &raw.expect_status
        && raw.http.is_none()
    {
        return Err(src.error(
            status.span(),
            "`expect_status` only applies to http probes; remove it",
        ));
    }
    let port_needed = |probe: &str| {
        port.ok_or_else(|| {
            src.error(
                table.clone(),
                format!("{probe} health probe needs `port`, e.g. port = 8080"),
            )
        })
    };

    let probe = match (raw.http, raw.tcp, raw.exec) {
        (Some(path), None, None) => {
            if !path.get_ref().starts_with('/') {
                return Err(src.error(
                    path.span(),
                    format!("http probe path `{}` must start with '/'", path.get_ref()),
                ));
            }
            let expect_status = raw
                .expect_status
                .map(|s| int_in::<u16>(src, &s, 100, 599, "expect_status"))
                .transpose()?;
            HealthProbe::Http {
                path: path.into_inner(),
                port: port_needed("an http")?,
                expect_status,
            }
        }
        (None, Some(tcp), None) => {
            if !tcp.get_ref() {
                return Err(src.error(
                    tcp.span(),
                    "`tcp` must be true (it selects the TCP probe); remove `health` for no check",
                ));
            }
            HealthProbe::Tcp {
                port: port_needed("a tcp")?,
            }
        }
        (None, None, Some(exec)) => {
            let exec_span = exec.span();
            let command: Vec<Spanned<String>> = exec.into_inner();
            match command.first() {
                None => {
                    return Err(src.error(
                        exec_span,
                        "`exec` is empty; expected [\"command\", \"arg\", ...]",
                    ));
                }
                Some(program) if program.get_ref().trim().is_empty() => {
                    return Err(src.error(program.span(), "the exec probe's command is empty"));
                }
                Some(_) => {}
            }
            for part in &command {
                no_nul(src, part, "exec probe argument")?;
            }
            if let Some(p) = &raw.port {
                return Err(src.error(
                    p.span(),
                    "`port` is only used by http and tcp probes; remove it from an exec probe",
                ));
            }
            HealthProbe::Exec {
                command: command.into_iter().map(Spanned::into_inner).collect(),
            }
        }
        (http, tcp, exec) => {
            let mut probes: Vec<(&str, Range<usize>)> = [
                ("http", http.as_ref().map(Spanned::span)),
                ("tcp", tcp.as_ref().map(Spanned::span)),
                ("exec", exec.as_ref().map(Spanned::span)),
            ]
            .into_iter()
            .filter_map(|(name, span)| Some((name, span?)))
            .collect();
            probes.sort_by_key(|(_, span)| span.start);
            return Err(match probes.as_slice() {
                [(first, _), (second, span), ..] => src.error(
                    span.clone(),
                    format!(
                        "`health` has both `{first}` and `{second}`; a health check has exactly \
                         one probe, so keep one of them"
                    ),
                ),
                _ => src.error(
                    table,
                    "`health` has no probe; expected exactly one of http = \"/path\", \
                     tcp = true or exec = [\"command\", ...]",
                ),
            });
        }
    };

    let positive = |value: Option<Spanned<String>>, key: &str, default: Duration| match value {
        Some(v) => {
            let d = duration(src, &v, key)?;
            if d.is_zero() {
                return Err(src.error(v.span(), format!("`{key}` must be longer than zero")));
            }
            Ok(d)
        }
        None => Ok(default),
    };
    let interval = positive(raw.interval, "interval", HealthCheck::DEFAULT_INTERVAL)?;
    let timeout = positive(raw.timeout, "timeout", HealthCheck::DEFAULT_TIMEOUT)?;
    let start_period = match raw.start_period {
        Some(v) => duration(src, &v, "start_period")?,
        None => HealthCheck::DEFAULT_START_PERIOD,
    };
    let ready_within = match raw.ready_within {
        Some(v) => Some(positive(Some(v), "ready_within", Duration::ZERO)?),
        None => None,
    };
    let retries = match raw.retries {
        Some(r) => int_in(src, &r, 1, i64::from(u32::MAX), "retries")?,
        None => HealthCheck::DEFAULT_RETRIES,
    };
    Ok(HealthCheck {
        probe,
        interval,
        timeout,
        retries,
        start_period,
        ready_within,
    })
}

/// One `mounts` entry.
fn mount(src: &Source<'_>, raw: Spanned<Table<RawMount>>) -> Result<BindMount, StackError> {
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

/// The one rule of a `[[policy]]` or `[[mcp_policy]]` entry (`what`), with its action; `how`
/// shows both forms for the error when there is none.
fn allow_or_deny<T>(
    src: &Source<'_>,
    header: std::ops::Range<usize>,
    allow: Option<Spanned<T>>,
    deny: Option<Spanned<T>>,
    what: &str,
    how: &str,
) -> Result<(PolicyAction, Spanned<T>), StackError> {
    match (allow, deny) {
        (Some(allow), Some(deny)) => {
            let later = if allow.span().start > deny.span().start {
                allow.span()
            } else {
                deny.span()
            };
            Err(src.error(
                later,
                format!(
                    "this {what} has both `allow` and `deny`; each {what} holds exactly one \
                     rule, so split it into two {what} entries"
                ),
            ))
        }
        (Some(allow), None) => Ok((PolicyAction::Allow, allow)),
        (None, Some(deny)) => Ok((PolicyAction::Deny, deny)),
        (None, None) => Err(src.error(header, format!("this {what} has no rule; add {how}"))),
    }
}

/// One `[[policy]]` entry; `components` are all the stack's components.
fn policy(
    src: &Source<'_>,
    raw: Spanned<Table<RawPolicy>>,
    components: &[Component],
) -> Result<PolicyRule, StackError> {
    let header = raw.span();
    let RawPolicy { allow, deny } = raw.into_inner().0;
    let (action, rule) = allow_or_deny(
        src,
        header,
        allow,
        deny,
        "[[policy]]",
        "allow = { from = \"...\", to = \"...\" } or deny = { from = \"...\", to = \"...\" }",
    )?;
    let table = rule.span();
    let RawRule {
        from,
        to,
        ports,
        protocol,
    } = rule.into_inner().0;
    let from = required(
        src,
        from,
        table.clone(),
        "policy rule has no `from`; expected a component name, \"type:<kind>\" or \"*\"",
    )?;
    let to = required(
        src,
        to,
        table,
        "policy rule has no `to`; expected a component name, \"type:<kind>\", \"cidr:<network>\" \
         or \"*\"",
    )?;
    let from_selector = selector(src, &from, components)?;
    if matches!(from_selector, Selector::Cidr(_)) {
        return Err(src.error(
            from.span(),
            "a cidr selector may only be used in `to` (traffic leaving the stack); `from` \
             expects a component name, \"type:<kind>\" or \"*\"",
        ));
    }
    let to_selector = selector(src, &to, components)?;
    let mut port_numbers = Vec::with_capacity(ports.len());
    for p in &ports {
        port_numbers.push(port_number(src, p, "policy port")?);
    }
    Ok(PolicyRule {
        action,
        from: from_selector,
        to: to_selector,
        ports: port_numbers,
        protocol: protocol.map_or(Protocol::default(), |p| p.0),
    })
}

/// One `[[mcp_policy]]` entry; `components` are all the stack's components.
fn mcp_rule(
    src: &Source<'_>,
    raw: Spanned<Table<RawMcpPolicy>>,
    components: &[Component],
) -> Result<McpRule, StackError> {
    let header = raw.span();
    let RawMcpPolicy { allow, deny } = raw.into_inner().0;
    let (action, rule) = allow_or_deny(
        src,
        header,
        allow,
        deny,
        "[[mcp_policy]]",
        "allow = { clients = [\"...\"], tools = [\"<server>.<tool>\"] } or deny = { clients = \
         [...], tools = [...] }",
    )?;
    let table = rule.span();
    let RawMcpRule { clients, tools } = rule.into_inner().0;
    let clients = patterns(
        src,
        clients,
        table.clone(),
        "clients",
        "client names or SPIFFE IDs such as [\"alice\", \"spiffe://osvm.local/clients/*\"]",
    )?;
    let tools = patterns(
        src,
        tools,
        table,
        "tools",
        "`<server>.<tool>` patterns such as [\"fs.read_*\", \"everything.*\"]",
    )?;
    let servers: Vec<&str> = components
        .iter()
        .filter_map(|c| c.mcp.as_ref().map(|m| m.name.as_str()))
        .collect();
    for tool in &tools {
        tool_pattern(src, tool, &servers)?;
    }
    Ok(McpRule {
        action,
        clients: clients.into_iter().map(Spanned::into_inner).collect(),
        tools: tools.into_iter().map(Spanned::into_inner).collect(),
    })
}

/// The `clients` or `tools` list of an `[[mcp_policy]]` rule: present, not empty, and without
/// empty patterns.
fn patterns(
    src: &Source<'_>,
    raw: Option<Spanned<Vec<Spanned<String>>>>,
    table: Range<usize>,
    key: &str,
    expected: &str,
) -> Result<Vec<Spanned<String>>, StackError> {
    let list = required(
        src,
        raw,
        table,
        &format!("mcp_policy rule has no `{key}`; expected {expected}"),
    )?;
    let span = list.span();
    let list = list.into_inner();
    if list.is_empty() {
        return Err(src.error(
            span,
            format!("`{key}` is empty, so the rule could never match; expected {expected}"),
        ));
    }
    for pattern in &list {
        if pattern.get_ref().trim().is_empty() {
            return Err(src.error(
                pattern.span(),
                format!("empty pattern in `{key}`; expected {expected}"),
            ));
        }
        no_nul(src, pattern, "mcp_policy pattern")?;
    }
    Ok(list)
}

/// Checks a tool pattern: `*`, or `<server>.<tool>` whose server part, when it has no wildcard,
/// is one of `servers` (the names of the stack's MCP servers).
fn tool_pattern(
    src: &Source<'_>,
    pattern: &Spanned<String>,
    servers: &[&str],
) -> Result<(), StackError> {
    let text = pattern.get_ref();
    if text == "*" {
        return Ok(());
    }
    let shape = "tool patterns are `<server>.<tool>` with `*` and `?` wildcards (e.g. \
                 \"fs.read_*\", \"everything.*\"), or \"*\" for every tool of every server";
    let Some((server, tool)) = text.split_once('.') else {
        return Err(src.error(
            pattern.span(),
            format!("tool pattern `{text}` has no `.`; {shape}"),
        ));
    };
    if server.is_empty() || tool.is_empty() {
        let part = if server.is_empty() { "server" } else { "tool" };
        return Err(src.error(
            pattern.span(),
            format!("tool pattern `{text}` has an empty {part} part; {shape}"),
        ));
    }
    if !server.contains(['*', '?']) && !servers.contains(&server) {
        let known = if servers.is_empty() {
            "this stack has no MCP servers (components of kind `mcp_server`)".to_owned()
        } else {
            format!("its MCP servers are {}", servers.join(", "))
        };
        return Err(src.error(
            pattern.span(),
            format!(
                "tool pattern `{text}` names MCP server `{server}`, which this stack does not \
                 define; {known} (a server is named by its type's `name`, not its prefix)"
            ),
        ));
    }
    Ok(())
}

/// Parses a selector and resolves a component name against the stack.
fn selector(
    src: &Source<'_>,
    raw: &Spanned<String>,
    components: &[Component],
) -> Result<Selector, StackError> {
    let selector: Selector = raw.get_ref().parse().map_err(|e: SelectorError| {
        src.error(
            raw.span(),
            format!("invalid selector `{}`: {e}", raw.get_ref()),
        )
    })?;
    if let Selector::Component(name) = &selector
        && !components.iter().any(|c| c.name == *name)
    {
        let known: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
        return Err(src.error(
            raw.span(),
            format!(
                "policy refers to component `{name}`, which this stack does not define; \
                 expected one of {}, \"type:<kind>\", \"cidr:<network>\" or \"*\"",
                known.join(", ")
            ),
        ));
    }
    Ok(selector)
}

/// Unwraps a required value or reports `message` at `at`.
fn required<T>(
    src: &Source<'_>,
    value: Option<Spanned<T>>,
    at: Range<usize>,
    message: &str,
) -> Result<Spanned<T>, StackError> {
    value.ok_or_else(|| src.error(at, message))
}

/// Checks a stack or component name against [`NAME_RULE`].
fn check_name(src: &Source<'_>, name: &Spanned<String>, what: &str) -> Result<(), StackError> {
    let text = name.get_ref();
    match name_problem(text) {
        Some(problem) => Err(src.error(
            name.span(),
            format!("invalid {what} `{text}`: {problem}; expected {NAME_RULE}"),
        )),
        None => Ok(()),
    }
}

/// What breaks [`NAME_RULE`] in `text`, if anything.
fn name_problem(text: &str) -> Option<String> {
    if text.is_empty() {
        Some("it is empty".to_owned())
    } else if text.len() > MAX_NAME_LEN {
        Some(format!("it is {} characters long", text.chars().count()))
    } else if !text.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("it does not start with a lowercase letter".to_owned())
    } else if let Some(bad) = text
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        Some(format!("it contains {bad:?}"))
    } else if text.ends_with('-') {
        Some("it ends with '-'".to_owned())
    } else {
        None
    }
}

/// Checks a trust domain: a lowercase DNS name.
fn check_dns_name(src: &Source<'_>, name: &Spanned<String>) -> Result<(), StackError> {
    let text = name.get_ref();
    let problem = if text.is_empty() {
        Some("it is empty".to_owned())
    } else if text.len() > 253 {
        Some("it is longer than 253 characters".to_owned())
    } else {
        text.split('.').find_map(|label| {
            if label.is_empty() {
                Some("it has an empty label (two dots, or a leading or trailing dot)".to_owned())
            } else if label.len() > MAX_NAME_LEN {
                Some(format!("label `{label}` is longer than 63 characters"))
            } else if let Some(bad) = label
                .chars()
                .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
            {
                Some(format!("it contains {bad:?}"))
            } else if label.starts_with('-') || label.ends_with('-') {
                Some(format!("label `{label}` starts or ends with '-'"))
            } else {
                None
            }
        })
    };
    match problem {
        Some(problem) => Err(src.error(
            name.span(),
            format!(
                "invalid trust_domain `{text}`: {problem}; expected a lowercase DNS name such as \
                 \"osvm.local\" or \"prod.example.com\""
            ),
        )),
        None => Ok(()),
    }
}

/// Checks an environment variable name: non-empty, no `=`, no NUL.
fn check_env_key(src: &Source<'_>, key: &Spanned<String>) -> Result<(), StackError> {
    let text = key.get_ref();
    if text.is_empty() || text.contains(['=', '\0']) {
        return Err(src.error(
            key.span(),
            format!(
                "invalid environment variable name {text:?}; a name must be non-empty and \
                 contain no '=' or NUL character"
            ),
        ));
    }
    Ok(())
}

/// Rejects strings with a NUL character, which cannot be passed to a process.
fn no_nul(src: &Source<'_>, value: &Spanned<String>, what: &str) -> Result<(), StackError> {
    if value.get_ref().contains('\0') {
        return Err(src.error(value.span(), format!("{what} contains a NUL character")));
    }
    Ok(())
}

/// An absolute path; with `no_parent`, also without `..` components.
fn absolute_path(
    src: &Source<'_>,
    value: &Spanned<String>,
    what: &str,
    no_parent: bool,
) -> Result<PathBuf, StackError> {
    no_nul(src, value, what)?;
    let path = PathBuf::from(value.get_ref());
    if !path.is_absolute() {
        return Err(src.error(
            value.span(),
            format!(
                "{what} `{}` must be an absolute path (starting with '/')",
                value.get_ref()
            ),
        ));
    }
    if no_parent && path.components().any(|c| matches!(c, PathPart::ParentDir)) {
        return Err(src.error(
            value.span(),
            format!("{what} `{}` must not contain `..`", value.get_ref()),
        ));
    }
    Ok(path)
}

/// A TCP or UDP port, 1 to 65535.
fn port_number(src: &Source<'_>, value: &Spanned<Int>, what: &str) -> Result<u16, StackError> {
    int_in(src, value, 1, 65535, what)
}

/// An integer in `min..=max`, converted to the target type.
fn int_in<T: TryFrom<i64>>(
    src: &Source<'_>,
    value: &Spanned<Int>,
    min: i64,
    max: i64,
    what: &str,
) -> Result<T, StackError> {
    let n = value.get_ref().0;
    let out_of_range = || {
        src.error(
            value.span(),
            format!("{what} {n} is out of range; expected a whole number from {min} to {max}"),
        )
    };
    if !(min..=max).contains(&n) {
        return Err(out_of_range());
    }
    T::try_from(n).map_err(|_| out_of_range())
}

/// A duration such as `2s`.
fn duration(src: &Source<'_>, value: &Spanned<String>, key: &str) -> Result<Duration, StackError> {
    quantity::parse_duration(value.get_ref())
        .map_err(|e| src.error(value.span(), format!("invalid `{key}`: {e}")))
}
