//! The rules a well-typed stack file can still break, checked table by table in file order.
//!
//! Each check points at the value that breaks it: the name that is duplicated, the port that is
//! out of range, the policy reference that resolves to nothing. When the offending thing is a
//! missing key, the error points at the header of the table that lacks it (`[[component]]`,
//! `[stack]`) or at the opening brace of the inline table. Validation stops at the first error.
//!
//! This file checks `[stack]` and the order of the tables; each kind of table has its own
//! module (`component`, `health`, `mcp`, `policy`), and `check` holds the checks of single
//! values (names, paths, ports, numbers, durations) they share.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use crate::quantity;

use super::error::{Source, StackError};
use super::file::{RawFile, RawStack};
use super::{Component, Stack};

mod check;
mod component;
mod health;
mod mcp;
mod policy;

use check::{check_dns_name, check_name, duration, int_in, required};
use component::component;
use mcp::{mcp_rule, mcp_settings};
use policy::policy;

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
    if name.get_ref() == crate::stack::RESERVED_STACK {
        return Err(src.error(
            name.span(),
            "the stack name `osvm` is reserved: identities spiffe://<trust domain>/osvm/... are \
             osvm's own (its MCP gateway's certificate among them), and a stack of that name \
             could get a component certificate the same as one of them; choose another name",
        ));
    }
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
    // Where each `publish` entry is, for the checks that need the whole stack.
    let mut publish_spans: Vec<Vec<Range<usize>>> = Vec::new();
    for raw_component in raw.component {
        let spans = raw_component
            .get_ref()
            .0
            .mtls_egress
            .iter()
            .map(Spanned::span)
            .collect();
        publish_spans.push(
            raw_component
                .get_ref()
                .0
                .publish
                .iter()
                .map(Spanned::span)
                .collect(),
        );
        let component = component(src, raw_component, &components, network)?;
        components.push(component);
        egress_spans.push(spans);
    }
    for (i, (c, spans)) in components.iter().zip(&publish_spans).enumerate() {
        for (p, span) in c.publish.iter().zip(spans) {
            if network != super::StackNetwork::Hub {
                return Err(src.error(
                    span.clone(),
                    format!(
                        "`publish` of `{}` needs the hub network: set network = \"hub\" in \
                         [stack] (published traffic reaches the component through the hub, \
                         where policy decides who may connect)",
                        c.name
                    ),
                ));
            }
            if let Some((other, q)) = components[..i]
                .iter()
                .flat_map(|o| o.publish.iter().map(move |q| (o, q)))
                .find(|(_, q)| q.overlaps(p))
            {
                return Err(src.error(
                    span.clone(),
                    format!(
                        "host address {} is already published by `{}` ({q})",
                        p.host, other.name
                    ),
                ));
            }
        }
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

    let mut warnings = Vec::new();
    if network != super::StackNetwork::Hub
        && let Some(first) = raw.policy.first()
    {
        warnings.push(src.warning(
            first.span(),
            format!(
                "stack `{}` is not on the hub network (network = \"none\", the default), so its \
                 [[policy]] rules have no effect: its components have no network between them; \
                 set network = \"hub\" in [stack] to connect them as the rules say",
                name.get_ref()
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
        warnings,
    })
}
