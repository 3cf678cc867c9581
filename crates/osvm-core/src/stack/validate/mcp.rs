//! A component's `mcp` table and the stack's `[mcp]` settings and tool rules.

use std::ops::Range;

use toml::Spanned;

use crate::model::ComponentType;
use crate::quantity;

use crate::stack::error::{Source, StackError};
use crate::stack::file::{
    McpTransportKind, RawMcp, RawMcpPolicy, RawMcpRule, RawMcpSettings, Table,
};
use crate::stack::{Component, McpRule, McpServerSpec, McpSettings, McpTransport};

use super::{
    check::{NAME_RULE, check_name, duration, int_in, name_problem, no_nul, port_number, required},
    policy::allow_or_deny,
};

/// What [`mcp_server`] needs to know about the component it checks.
pub(super) struct McpContext<'a> {
    /// The component's name.
    pub(super) name: &'a str,
    /// Its validated type.
    pub(super) component_type: &'a ComponentType,
    /// Where its MCP server name is written (or its `type`, or its header).
    pub(super) type_span: Range<usize>,
    /// Its validated listen ports.
    pub(super) listen: &'a [u16],
    /// Where `socket_activation = true` is written, if it is.
    pub(super) socket_activation: Option<Range<usize>>,
    /// The components before it in the file.
    pub(super) earlier: &'a [Component],
}

/// The MCP settings of a component: `Some` for kind `mcp_server` (from its type and its `mcp`
/// table), `None` for every other kind, which may not have an `mcp` table.
pub(super) fn mcp_server(
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
                tls: None,
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
                ("tls", raw.tls.as_ref().map(Spanned::span)),
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
            McpTransport::Http {
                port: number,
                path,
                tls: raw.tls.is_some_and(|t| t.into_inner()),
            }
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
pub(super) fn mcp_settings(
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

/// One `[[mcp_policy]]` entry; `components` are all the stack's components.
pub(super) fn mcp_rule(
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
pub(super) fn patterns(
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
pub(super) fn tool_pattern(
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
