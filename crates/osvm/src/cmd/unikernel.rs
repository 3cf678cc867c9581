//! `osvm unikernel build`, and the checks (and builds) `osvm up` makes before it starts
//! unikernel components.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use osvm_core::stack::Stack;
use osvm_core::{RuntimeError, RuntimeKind};
use osvm_unikernel::image;
use osvm_unikernel::{Progress, UnikernelRuntime};
use serde_json::json;

use super::{SetupFailed, human_bytes, sandbox_runtime, state_dir};
use crate::cli::{Global, Output, UnikernelCommand};

/// Prints build progress on stderr (text output only): every step, and cargo's lines when
/// `verbose` (otherwise only its errors).
fn printer(global: &Global, verbose: bool) -> impl FnMut(Progress) {
    let text = global.output == Output::Text;
    move |p| {
        if !text {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = match p {
            Progress::Step(s) => writeln!(err, "{s}"),
            Progress::Tool(line) if verbose => writeln!(err, "    {line}"),
            Progress::Tool(line) => {
                let line = line.trim();
                if line.starts_with("error") || line.starts_with("warning: unused") {
                    writeln!(err, "    {line}")
                } else {
                    Ok(())
                }
            }
        };
    }
}

pub fn run(global: &Global, command: UnikernelCommand) -> anyhow::Result<ExitCode> {
    let UnikernelCommand::Build(args) = command;
    let state = state_dir(global)?;
    let mut progress = printer(global, global.verbose > 0);
    let image = image::build(&state, &args.path, &mut progress).map_err(|e| match e {
        osvm_unikernel::BuildError::Missing(m) => SetupFailed(RuntimeError::Unavailable {
            kind: RuntimeKind::Unikernel,
            reason: m.to_string(),
        })
        .into(),
        osvm_unikernel::BuildError::Input(m) => super::InvalidInput(m).into(),
        other => anyhow::Error::from(other),
    })?;
    if global.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "image": image.path,
                "sha256": image.digest,
                "size": image.size,
                "app": image.name,
                "source": image.source,
                "kernel": image.kernel,
            }))?
        );
    } else {
        println!("image   {}", image.path.display());
        println!("app     {}", image.name);
        println!("size    {} ({} bytes)", human_bytes(image.size), image.size);
        println!("sha256  {}", image.digest);
    }
    Ok(ExitCode::SUCCESS)
}

/// Fails (as a setup error, exit 125) when a unikernel component of `stack` cannot start here,
/// and builds the images of those that name a crate, with progress, so the daemon finds them
/// stored.
pub fn preflight(global: &Global, stack: &Stack) -> anyhow::Result<()> {
    let components: Vec<_> = stack
        .components
        .iter()
        .filter(|c| c.runtime.kind() == RuntimeKind::Unikernel)
        .collect();
    if components.is_empty() {
        return Ok(());
    }
    let sandbox = Arc::new(sandbox_runtime(global)?);
    let rt = UnikernelRuntime::new(sandbox.clone(), sandbox.config().state_dir.clone());
    let named = |c: &str, e: RuntimeError| match e {
        RuntimeError::Unavailable { kind, reason } => SetupFailed(RuntimeError::Unavailable {
            kind,
            reason: format!("component `{c}`: {reason}"),
        }),
        RuntimeError::InvalidSpec(m) => {
            SetupFailed(RuntimeError::InvalidSpec(format!("component `{c}`: {m}")))
        }
        other => SetupFailed(other),
    };
    let mut progress = printer(global, global.verbose > 0);
    for c in components {
        let spec = c.launch_spec(&stack.name);
        let choice = rt.choose(&spec).map_err(|e| named(&c.name, e))?;
        rt.prepare(&spec, choice.launcher, &mut progress)
            .map_err(|e| named(&c.name, e))?;
    }
    Ok(())
}
