//! `osvm daemon`.

use std::process::ExitCode;

use osvm_daemon::daemon::DaemonConfig;

use super::{available_runtime, socket, state_dir};
use crate::cli::{DaemonArgs, Global};

pub fn run(global: &Global, args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let runtime = available_runtime(global)?;
    let config = DaemonConfig {
        state_dir: state_dir(global)?,
        socket: socket(global)?,
        metrics: args.metrics_addr,
    };
    tracing::info!(
        "state in {}, API on {}",
        config.state_dir.display(),
        config.socket.display()
    );
    osvm_daemon::daemon::run(config, runtime)?;
    tracing::info!("stopped; the components keep running");
    Ok(ExitCode::SUCCESS)
}
