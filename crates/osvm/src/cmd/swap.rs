//! `osvm swap`: start a hot-swap through the daemon and follow it to its outcome.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use hyper::Method;
use osvm_daemon::engine::{ComponentView, SwapPlan, SwapRequest};

use super::InvalidInput;
use super::control::client;
use crate::cli::{Global, Output, SwapArgs};
use crate::client::json as parse;

fn millis(what: &str, value: &Option<String>) -> anyhow::Result<Option<u64>> {
    value
        .as_deref()
        .map(|v| {
            osvm_core::quantity::parse_duration(v)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| InvalidInput(format!("--{what}: {e}")).into())
        })
        .transpose()
}

pub fn run(global: &Global, args: SwapArgs) -> anyhow::Result<ExitCode> {
    let component = match &args.file {
        Some(file) => {
            let stack = osvm_core::stack::load(file)?;
            let short = args.name.rsplit('/').next().unwrap_or(&args.name);
            let found = stack.components.into_iter().find(|c| c.name == short);
            Some(found.ok_or_else(|| {
                InvalidInput(format!("{} has no component `{short}`", file.display()))
            })?)
        }
        None => None,
    };
    let req = SwapRequest {
        command: (!args.command.is_empty()).then(|| args.command.clone()),
        component,
        min_healthy_time_ms: millis("min-healthy-time", &args.min_healthy_time)?,
        healthy_deadline_ms: millis("healthy-deadline", &args.healthy_deadline)?,
        drain_timeout_ms: millis("drain-timeout", &args.drain_timeout)?,
        auto_revert: args.no_revert.then_some(false),
        canary: args.canary.clone(),
        dry_run: args.dry_run,
    };
    let path = format!("/v1/components/{}", super::urlencode(&args.name));
    let client = client(global)?;
    let answer = client.call(
        Method::POST,
        &format!("{path}/swap"),
        Some(serde_json::to_vec(&req)?),
    )?;
    let plan: SwapPlan = parse(&answer)?;
    if args.dry_run || global.output == Output::Text {
        if global.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{} {}:",
            if args.dry_run {
                "would swap"
            } else {
                "swapping"
            },
            plan.component
        );
        for (n, step) in plan.steps.iter().enumerate() {
            println!("  {}. {step}", n + 1);
        }
    }
    let Some(id) = plan.new_instance.clone() else {
        return Ok(ExitCode::SUCCESS);
    };
    if args.detach {
        if global.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            println!(
                "new instance {id}; follow it with `osvm status {}`",
                args.name
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Follow it: every phase once, then the outcome.
    let began = Instant::now();
    let mut seen = None;
    loop {
        let view: ComponentView = parse(&client.call(Method::GET, &path, None)?)?;
        if let Some(outcome) = view.last_swap.as_ref().filter(|o| o.new_instance == id) {
            if global.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(outcome)?);
            } else {
                println!(
                    "{} after {:.1}s: {}",
                    if outcome.done { "done" } else { "rolled back" },
                    outcome.duration_ms as f64 / 1000.0,
                    outcome.reason
                );
            }
            return Ok(if outcome.done {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        let phase = view.swap.as_ref().map(|s| (s.phase, s.weight));
        if let Some((p, weight)) = phase.filter(|_| phase != seen)
            && global.output == Output::Text
        {
            let name = serde_json::to_value(p)?;
            let name = name.as_str().unwrap_or_default();
            if p == osvm_daemon::store::SwapPhase::Switched && weight < 100 {
                println!(
                    "  [{:>5.1}s] {name} {weight}%",
                    began.elapsed().as_secs_f64()
                );
            } else {
                println!("  [{:>5.1}s] {name}", began.elapsed().as_secs_f64());
            }
            seen = phase;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
