//! One module per subcommand; each returns the process exit code or an error.

mod cert;
mod control;
mod daemon;
mod doctor;
mod mcp;
mod microvm;
mod net;
mod policy;
mod run;
mod swap;
mod table;
mod ui;
mod unikernel;
mod up;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use osvm_sandbox::{SandboxConfig, SandboxRuntime};

use crate::cli::{Cli, Command, Global};

/// Input the user must fix (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// osvm itself could not do its job (exit code 125), as opposed to the workload failing.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SetupFailed(#[from] pub osvm_core::RuntimeError);

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(a) => validate::run(&cli.global, a),
        Command::Run(a) => run::run(&cli.global, *a),
        Command::Up(a) => up::run(&cli.global, a),
        Command::Doctor => doctor::run(&cli.global),
        Command::Daemon(a) => daemon::run(&cli.global, a),
        Command::Cert(a) => cert::run(&cli.global, a),
        Command::Policy(a) => policy::run(&cli.global, a),
        Command::Net(a) => net::run(&cli.global, a),
        Command::Kernel(a) => microvm::kernel(&cli.global, a),
        Command::Ui(a) => ui::run(&cli.global, a),
        Command::Mcp(a) => mcp::run(&cli.global, a),
        Command::Image(a) => microvm::image(&cli.global, a),
        Command::Snapshot(a) => microvm::snapshot(&cli.global, a),
        Command::Unikernel(a) => unikernel::run(&cli.global, a),
        Command::Completions(a) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(a.shell, &mut cmd, "osvm", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Down(a) => control::down(&cli.global, a),
        Command::Ps => control::ps(&cli.global),
        Command::Status(a) => control::status(&cli.global, a),
        Command::Logs(a) => control::logs(&cli.global, a),
        Command::Start(a) => control::action(&cli.global, a, "start"),
        Command::Stop(a) => control::action(&cli.global, a, "stop"),
        Command::Restart(a) => control::action(&cli.global, a, "restart"),
        Command::Swap(a) => swap::run(&cli.global, a),
        Command::Events(a) => control::events(&cli.global, a),
        Command::Stats => control::stats(&cli.global),
    }
}

/// The exit code for an error that reached `main`.
pub fn error_code(e: &anyhow::Error) -> u8 {
    let refused_input = e
        .downcast_ref::<crate::client::ApiFailure>()
        .is_some_and(|f| matches!(f.status.as_u16(), 400 | 413 | 422));
    if refused_input
        || e.downcast_ref::<InvalidInput>().is_some()
        || e.downcast_ref::<osvm_core::stack::StackError>().is_some()
    {
        2
    } else if let Some(SetupFailed(err)) = e.downcast_ref::<SetupFailed>() {
        match err {
            osvm_core::RuntimeError::InvalidSpec(_) => 2,
            _ => 125,
        }
    } else {
        1
    }
}

/// Prints what validation accepted but doubts, one `FILE:LINE:COL: warning: ...` line each, on
/// stderr (so `-o json` output stays one document).
pub fn print_warnings(stack: &osvm_core::stack::Stack) {
    for w in &stack.warnings {
        eprintln!("{w}");
    }
}

/// The state directory: `--state-dir`, or the default for this user.
pub fn state_dir(global: &Global) -> anyhow::Result<PathBuf> {
    match &global.state_dir {
        Some(dir) => absolute(dir),
        None => Ok(SandboxConfig::default_state_dir()),
    }
}

/// The daemon's socket: `--socket`, or `<state dir>/osvm.sock`.
pub fn socket(global: &Global) -> anyhow::Result<PathBuf> {
    match &global.socket {
        Some(p) => absolute(p),
        None => Ok(osvm_daemon::daemon::DaemonConfig::default_socket(
            &state_dir(global)?,
        )),
    }
}

/// The process runtime configured from the global options, with this binary as launcher.
pub fn sandbox_runtime(global: &Global) -> anyhow::Result<SandboxRuntime> {
    let exe = std::env::current_exe()?;
    let mut config = SandboxConfig::new(exe);
    config.state_dir = state_dir(global)?;
    Ok(SandboxRuntime::new(config))
}

fn absolute(p: &std::path::Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// The process runtime, or the error saying why it cannot run here.
pub fn available_runtime(global: &Global) -> anyhow::Result<SandboxRuntime> {
    let runtime = sandbox_runtime(global)?;
    ensure_available(&runtime)?;
    Ok(runtime)
}

/// Fails (exit 125) when the process sandbox cannot run here, saying why.
pub fn ensure_available(runtime: &SandboxRuntime) -> anyhow::Result<()> {
    match runtime.unavailable_reason() {
        None => Ok(()),
        Some(reason) => Err(SetupFailed(osvm_core::RuntimeError::Unavailable {
            kind: osvm_core::RuntimeKind::Process,
            reason,
        })
        .into()),
    }
}

/// Formats bytes for tables: `12.3M`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// `s` percent-encoded for one URL path segment or query value (a component named
/// `stack/name` stays one segment: `stack%2Fname`).
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
