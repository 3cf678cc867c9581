//! `osvm daemon`.

use std::process::ExitCode;

use osvm_daemon::daemon::DaemonConfig;

use super::{available_runtime, socket, state_dir};
use crate::cli::{DaemonArgs, Global};

pub fn run(global: &Global, args: DaemonArgs) -> anyhow::Result<ExitCode> {
    return_large_blocks();
    let runtime = available_runtime(global)?;
    let config = DaemonConfig {
        state_dir: state_dir(global)?,
        socket: socket(global)?,
        metrics: args.metrics_addr,
        ui: args.ui,
        ui_tls: args.ui_tls,
        http_idle: std::time::Duration::from_secs(args.http_idle_timeout),
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

/// Large blocks go back to the kernel when freed. glibc raises its mmap threshold each time a
/// block above it is freed (up to 32 MiB), after which such blocks come from its arenas and
/// stay there: the buffers of large MCP messages (several copies of each, up to the stack's
/// max_message_size) kept the daemon's RSS at about 95 MiB after floods of 3 MiB calls that
/// needed 29 MiB with the threshold fixed at glibc's default of 128 KiB (not a leak: it
/// levelled off; measured by the `mcp` bench's flood rounds).
fn return_large_blocks() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it is called before the daemon's
    // threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
