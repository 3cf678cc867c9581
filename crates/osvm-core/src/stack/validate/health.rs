//! A component's `health` table: the probe, its timings and what it may run.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use crate::stack::error::{Source, StackError};
use crate::stack::file::{RawHealth, Table};
use crate::stack::{HealthCheck, HealthProbe};

use super::check::{duration, int_in, no_nul, port_number};

/// The health check; `listen` are the component's validated listen ports.
pub(super) fn health(
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
