//! `[[policy]]` rules and the selectors they name.

use toml::Spanned;

use crate::stack::error::{Source, StackError};
use crate::stack::file::{RawPolicy, RawRule, Table};
use crate::stack::{Component, PolicyAction, PolicyRule, Protocol, Selector, SelectorError};

use super::check::{port_number, required};

/// The one rule of a `[[policy]]` or `[[mcp_policy]]` entry (`what`), with its action; `how`
/// shows both forms for the error when there is none.
pub(super) fn allow_or_deny<T>(
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
pub(super) fn policy(
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
    let to_selector = selector(src, &to, components)?;
    if matches!(to_selector, Selector::Identity(_)) {
        return Err(src.error(
            to.span(),
            "a SPIFFE ID names who connects, not where to: use it in `from`, with components in \
             `to`",
        ));
    }
    if matches!(from_selector, Selector::Identity(_)) && matches!(to_selector, Selector::Cidr(_)) {
        return Err(src.error(
            to.span(),
            "a rule from a SPIFFE ID must go to components (it is judged by their mTLS ingress)",
        ));
    }
    if matches!(from_selector, Selector::Cidr(_)) && matches!(to_selector, Selector::Cidr(_)) {
        return Err(src.error(
            to.span(),
            "a rule from outside the stack (`world` or `cidr:`) must go to components: traffic \
             between two outside networks is not the stack's to decide",
        ));
    }
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

/// Parses a selector and resolves a component name against the stack.
pub(super) fn selector(
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
