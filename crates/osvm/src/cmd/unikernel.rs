//! `osvm unikernel build`, and the checks (and builds) `osvm up` makes before it starts
//! unikernel components.

use std::io::Write;
use std::process::ExitCode;

use osvm_core::{RuntimeError, RuntimeKind};
use osvm_unikernel::Progress;
use osvm_unikernel::image;
use serde_json::json;

use super::{SetupFailed, human_bytes, state_dir};
use crate::cli::{Global, Output, UnikernelCommand};

/// Prints build progress on stderr (text output only): every step, and cargo's lines when
/// `verbose` (otherwise only its errors).
pub(super) fn printer(global: &Global, verbose: bool) -> impl FnMut(Progress) {
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
