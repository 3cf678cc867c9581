//! `osvm net show`: the daemon's hub network as the kernel and the proxies report it.

use std::process::ExitCode;

use hyper::Method;
use osvm_daemon::network::NetView;

use super::control::{client, print_json};
use super::human_bytes;
use crate::cli::{Global, NetCommand, Output};
use crate::client::json as parse;

pub fn run(global: &Global, command: NetCommand) -> anyhow::Result<ExitCode> {
    match command {
        NetCommand::Show => {
            let answer = client(global)?.call(Method::GET, "/v1/network", None)?;
            if global.output == Output::Json {
                print_json(&answer)?;
            } else {
                print!("{}", render(&parse::<NetView>(&answer)?));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Left-aligned columns, two spaces apart.
pub(super) fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn render(v: &NetView) -> String {
    let mut out = format!("hub namespace {}\n\n", v.hub);
    let mut rows = vec![
        ["COMPONENT", "NETNS", "ADDRESS", "SERVICE", "MTLS"]
            .map(String::from)
            .to_vec(),
    ];
    for c in &v.components {
        rows.push(vec![
            format!("{}/{}", c.stack, c.component),
            c.netns.clone(),
            c.address.to_string(),
            c.service.map_or("-".into(), |s| s.to_string()),
            if c.mtls { "yes" } else { "no" }.into(),
        ]);
    }
    out.push_str(&columns(&rows));
    if !v.published.is_empty() {
        out.push_str(
            "\nPUBLISHED (the host sends these to the service address; the stack's `world` and \
             `cidr:` rules decide who gets in)\n",
        );
        for p in &v.published {
            let to = p.service.map_or("-".into(), |s| s.to_string());
            out.push_str(&format!(
                "  {} -> {to}  ({}/{})  connections accepted {}, refused {}\n",
                p.host, p.stack, p.component, p.accepted, p.refused
            ));
        }
    }
    out.push_str("\nSERVICE MAP (new connections to a service address go to its ready instance)\n");
    if v.services.is_empty() && v.waiting.is_empty() {
        out.push_str("  (none)\n");
    }
    for (service, instance) in &v.services {
        out.push_str(&format!("  {service} -> {instance}\n"));
    }
    for service in &v.waiting {
        out.push_str(&format!("  {service} -> (no ready instance: refused)\n"));
    }
    out.push('\n');
    let mut rows = vec![
        ["STACK", "RULE", "FLOWS", "PACKETS", "BYTES"]
            .map(String::from)
            .to_vec(),
    ];
    for r in &v.rules {
        rows.push(vec![
            r.stack.clone(),
            format!("#{} {}", r.index, r.rule),
            r.flows.to_string(),
            r.counter.packets.to_string(),
            human_bytes(r.counter.bytes),
        ]);
    }
    out.push_str(&columns(&rows));
    out.push_str("(FLOWS: tuples the rule puts in the kernel; PACKETS: new connections' packets it let through)\n\n");
    for (chain, c) in &v.refused {
        out.push_str(&format!(
            "refused ({}): {} packets, {}\n",
            if chain == "input" {
                "to the hub's proxies"
            } else {
                "between components"
            },
            c.packets,
            human_bytes(c.bytes)
        ));
    }
    if !v.proxies.is_empty() {
        out.push('\n');
        let mut rows = vec![
            [
                "MTLS PROXY",
                "COMPONENT",
                "ACCEPTED",
                "REFUSED",
                "UPSTREAM FAILED",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for p in &v.proxies {
            rows.push(vec![
                p.kind.clone(),
                p.listen.to_string(),
                p.component.clone(),
                p.counters.accepted.to_string(),
                p.counters.refused.to_string(),
                p.counters.upstream_failed.to_string(),
            ]);
        }
        out.push_str(&columns(&rows));
    }
    out
}
