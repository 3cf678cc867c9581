//! `osvm policy list FILE` and `osvm policy check FILE FROM TO PORT`: the stack's network policy
//! as osvm-policy judges it (the same model the hub's nftables ruleset is computed from).

use std::net::IpAddr;
use std::process::ExitCode;

use osvm_core::model::NetworkAccess;
use osvm_core::stack::{Protocol, Stack};
use osvm_policy::{Endpoint, Flow, PolicySet, Reason};

use super::InvalidInput;
use crate::cli::{Global, Output, PolicyCheckArgs, PolicyCommand};

/// Components' network access until the stack file has a key for it: exactly what the rules
/// grant, to components and to the `cidr:` networks they name.
const STACK_ACCESS: NetworkAccess = NetworkAccess::Restricted;

pub fn run(global: &Global, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::List(args) => {
            let stack = osvm_core::stack::load(&args.file)?;
            let set = PolicySet::new(stack.policies.clone());
            let rules: Vec<String> = (0..set.rules().len())
                .filter_map(|i| set.describe(i))
                .collect();
            match global.output {
                Output::Json => {
                    let doc = serde_json::json!({
                        "stack": stack.name,
                        "default": "deny",
                        "rules": set.rules().iter().zip(&rules).enumerate().map(|(i, (r, text))| {
                            serde_json::json!({ "index": i, "rule": r, "text": text })
                        }).collect::<Vec<_>>(),
                    });
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
                Output::Text => {
                    println!(
                        "stack `{}`: {} rule(s); whatever no rule allows is denied, and a deny overrides any allow",
                        stack.name,
                        rules.len()
                    );
                    for (i, text) in rules.iter().enumerate() {
                        println!("#{i:<4} {text}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check(args) => check(global, args),
    }
}

fn endpoint(stack: &Stack, what: &str, may_be_address: bool) -> anyhow::Result<Endpoint> {
    if let Some(c) = stack.components.iter().find(|c| c.name == what) {
        return Ok(Endpoint::component(
            &c.name,
            c.component_type.kind(),
            STACK_ACCESS,
        ));
    }
    if may_be_address && let Ok(ip) = what.parse::<IpAddr>() {
        return Ok(Endpoint::External(ip));
    }
    let names: Vec<&str> = stack.components.iter().map(|c| c.name.as_str()).collect();
    Err(InvalidInput(format!(
        "stack `{}` has no component `{what}`; it has {}{}",
        stack.name,
        names.join(", "),
        if may_be_address {
            " (or give an IP address)"
        } else {
            ""
        }
    ))
    .into())
}

fn check(global: &Global, args: PolicyCheckArgs) -> anyhow::Result<ExitCode> {
    let stack = osvm_core::stack::load(&args.file)?;
    let flow = Flow {
        from: endpoint(&stack, &args.from, false)?,
        to: endpoint(&stack, &args.to, true)?,
        port: args.port,
        protocol: if args.protocol == "udp" {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
    };
    let set = PolicySet::new(stack.policies.clone());
    let verdict = set.evaluate(&flow);
    let because = match &verdict.reason {
        Reason::Rule { index } => format!(
            "rule #{index}: {}",
            set.describe(*index).unwrap_or_default()
        ),
        Reason::DefaultDeny => "no rule allows it (default deny)".to_owned(),
        Reason::Access { endpoint, access } => {
            format!("{endpoint} has network access {access:?}")
        }
        Reason::FullAccess => "full network access".to_owned(),
    };
    match global.output {
        Output::Json => {
            let doc = serde_json::json!({
                "flow": flow.to_string(),
                "allowed": verdict.allowed,
                "reason": verdict.reason,
                "because": because,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => println!(
            "{}: {flow}: {because}",
            if verdict.allowed { "allowed" } else { "denied" }
        ),
    }
    Ok(if verdict.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
