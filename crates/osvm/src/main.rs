//! `osvm`: the command-line interface, and (through a hidden argument) the sandbox launcher.
//!
//! Exit codes follow container tools: 0 success; for `osvm run`, the workload's own code
//! (128 + N when killed by signal N); 125 when osvm itself failed (the sandbox could not be
//! set up); 2 for invalid input (usage errors, stack files that do not validate); 1 for other
//! failures.

mod cli;
mod client;
mod cmd;
mod doctor;
mod logs;
mod signals;
mod terminal;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Must come first: the launcher has to run single-threaded, before anything else.
    osvm_sandbox::run_if_requested();

    let cli = cli::Cli::parse();
    let filter = match cli.global.verbose {
        0 => "osvm=info,warn",
        1 => "osvm=debug,osvm_sandbox=debug,info",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OSVM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();

    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(cmd::error_code(&e))
        }
    }
}

/// The error and its causes on one line, as `{:#}` would print them, but without a cause whose
/// text the message already holds (errors that name their cause in their own message, such as
/// `"{context}: {source}"`, would otherwise print it twice).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
