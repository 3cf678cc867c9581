//! `osvm policy list FILE` and `osvm policy check FILE FROM TO PORT`: the stack's network policy
//! as osvm-policy judges it (the same model the hub's nftables ruleset is computed from).
//! `osvm policy list --stack`, `allow`, `deny` and `revoke`: the same rules of a stack the
//! daemon runs, changed through its API and enforced at once.

use std::net::IpAddr;
use std::process::ExitCode;

use osvm_core::stack::{Protocol, Stack};
use osvm_policy::{Endpoint, Flow, PolicySet, Reason};

use hyper::Method;

use super::InvalidInput;
use super::control::{client, print_json};
use crate::cli::{Global, Output, PolicyCheckArgs, PolicyCommand, PolicyListArgs, PolicyRuleArgs};
use crate::client::json as parse;

pub fn run(global: &Global, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::List(args) => list(global, args),
        PolicyCommand::Check(args) => check(global, args),
        PolicyCommand::Allow(args) => add(global, args, "allow"),
        PolicyCommand::Deny(args) => add(global, args, "deny"),
        PolicyCommand::Revoke(args) => edit(
            global,
            Method::DELETE,
            &format!("/v1/stacks/{}/policy/{}", args.stack, args.index),
            None,
            |v| {
                format!(
                    "stack `{}`: removed #{} {}; enforced now, and connections nothing else allows were cut",
                    args.stack,
                    args.index,
                    v["removed"].as_str().unwrap_or_default()
                )
            },
        ),
    }
}

/// Sends one policy change to the daemon and prints its answer (`say` words it for people).
fn edit(
    global: &Global,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    say: impl FnOnce(&serde_json::Value) -> String,
) -> anyhow::Result<ExitCode> {
    let body = body.map(|b| serde_json::to_vec(&b)).transpose()?;
    let answer = client(global)?.call(method, path, body)?;
    match global.output {
        Output::Json => print_json(&answer)?,
        Output::Text => println!("{}", say(&parse(&answer)?)),
    }
    Ok(ExitCode::SUCCESS)
}

fn add(global: &Global, args: PolicyRuleArgs, action: &str) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({
        "action": action,
        "from": args.from,
        "to": args.to,
        "ports": args.ports,
        "protocol": args.protocol,
    });
    edit(
        global,
        Method::POST,
        &format!("/v1/stacks/{}/policy", args.stack),
        Some(body),
        |v| {
            format!(
                "stack `{}`: added #{} {}; enforced now (until the stack is applied again from its file)",
                args.stack,
                v["index"],
                v["rule"].as_str().unwrap_or_default()
            )
        },
    )
}

fn list(global: &Global, args: PolicyListArgs) -> anyhow::Result<ExitCode> {
    let (name, rules): (String, Vec<String>) = match (&args.file, &args.stack) {
        (Some(file), _) => {
            let stack = osvm_core::stack::load(file)?;
            let set = PolicySet::new(stack.policies.clone());
            if global.output == Output::Json {
                let doc = serde_json::json!({
                    "stack": stack.name,
                    "default": "deny",
                    "rules": set.rules().iter().enumerate().map(|(i, r)| {
                        serde_json::json!({ "index": i, "rule": r, "text": set.describe(i) })
                    }).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rules = (0..set.rules().len())
                .filter_map(|i| set.describe(i))
                .collect();
            (stack.name, rules)
        }
        (None, Some(stack)) => {
            let answer =
                client(global)?.call(Method::GET, &format!("/v1/stacks/{stack}/policy"), None)?;
            if global.output == Output::Json {
                print_json(&answer)?;
                return Ok(ExitCode::SUCCESS);
            }
            let v: serde_json::Value = parse(&answer)?;
            let rules = v["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["text"].as_str().unwrap_or_default().to_owned())
                .collect();
            (stack.clone(), rules)
        }
        (None, None) => return Err(InvalidInput("give a stack file or --stack NAME".into()).into()),
    };
    println!(
        "stack `{name}`: {} rule(s); whatever no rule allows is denied, and a deny overrides any allow",
        rules.len()
    );
    for (i, text) in rules.iter().enumerate() {
        println!("#{i:<4} {text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A component of `stack` by name, or an address outside it.
fn endpoint(stack: &Stack, what: &str) -> anyhow::Result<Endpoint> {
    if let Some(c) = stack.components.iter().find(|c| c.name == what) {
        return Ok(Endpoint::of(c));
    }
    if let Ok(ip) = what.parse::<IpAddr>() {
        return Ok(Endpoint::External(ip));
    }
    let names: Vec<&str> = stack.components.iter().map(|c| c.name.as_str()).collect();
    Err(InvalidInput(format!(
        "stack `{}` has no component `{what}`; it has {} (or give an IP address outside it)",
        stack.name,
        names.join(", "),
    ))
    .into())
}

fn check(global: &Global, args: PolicyCheckArgs) -> anyhow::Result<ExitCode> {
    let stack = osvm_core::stack::load(&args.file)?;
    let flow = Flow {
        from: endpoint(&stack, &args.from)?,
        to: endpoint(&stack, &args.to)?,
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
