//! External commands: looked up in `PATH` and the sbin directories, run with a deadline and
//! killed past it, their output drained on helper threads so a chatty tool never blocks.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::ProbeError;

/// How long an external tool may take to answer `--version` and the like.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a running external tool is polled for exit.
const COMMAND_POLL: Duration = Duration::from_millis(10);
/// Output kept per stream of an external tool; the rest is drained and dropped so the tool never
/// blocks on a full pipe.
const COMMAND_OUTPUT_LIMIT: usize = 256 * 1024;
/// Directories searched after `PATH`: admin tools such as `nft` live there and a non-root `PATH`
/// often lacks them.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// What an external tool printed and how it ended.
#[derive(Debug)]
pub(super) struct CommandOutput {
    /// How the tool exited.
    pub(super) status: ExitStatus,
    /// Standard output, lossily decoded, cut at [`COMMAND_OUTPUT_LIMIT`].
    pub(super) stdout: String,
    /// Standard error, lossily decoded, cut at [`COMMAND_OUTPUT_LIMIT`].
    stderr: String,
}

impl CommandOutput {
    /// First non-empty line of stdout, else of stderr (some tools print versions to stderr).
    pub(super) fn first_line(&self) -> &str {
        first_nonempty_line(&self.stdout)
            .or_else(|| first_nonempty_line(&self.stderr))
            .unwrap_or("")
    }
}

/// First line of `text` that is not blank, trimmed.
fn first_nonempty_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Looks `program` up in `PATH`, then in the sbin directories.
fn find_in_path(program: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .filter(|dir| dir.is_absolute())
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
}

/// Whether `path` is a regular file with an execute bit.
fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program args` with no stdin and the C locale, waits up to `timeout`, kills it past that.
pub(super) fn run_command(
    program: &'static str,
    args: &[&str],
    timeout: Duration,
) -> Result<CommandOutput, ProbeError> {
    let path = find_in_path(program).ok_or(ProbeError::NotFound { program })?;
    let mut child = Command::new(&path)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can stop helpers it started too.
        .process_group(0)
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            path: path.clone(),
            source,
        })?;
    let stdout = child.stdout.take().map(spawn_drain);
    let stderr = child.stderr.take().map(spawn_drain);

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                stop_process_group(&mut child);
                return Err(ProbeError::Timeout { program, timeout });
            }
            Ok(None) => thread::sleep(COMMAND_POLL),
            Err(source) => {
                stop_process_group(&mut child);
                return Err(ProbeError::Wait { program, source });
            }
        }
    };
    // A grandchild that inherited the pipes could keep them open; never wait past the deadline.
    let stdout = collect_drain(stdout, deadline);
    let stderr = collect_drain(stderr, deadline);
    Ok(CommandOutput {
        status,
        stdout,
        stderr,
    })
}

/// Kills a tool started by [`run_command`] together with its process group, and reaps it.
///
/// Best effort: the tool may have exited in the meantime, and there is nothing better to do if a
/// signal cannot be sent.
fn stop_process_group(child: &mut Child) {
    match i32::try_from(child.id()) {
        Ok(pid) => {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Err(_) => {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// Reads a pipe to its end on a helper thread, keeping the first [`COMMAND_OUTPUT_LIMIT`] bytes.
fn spawn_drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let room = COMMAND_OUTPUT_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        // The receiver is gone only if the caller gave up waiting; nothing to report then.
        let _ = sender.send(kept);
    });
    receiver
}

/// Takes what a drain thread read, waiting no later than `deadline` (plus a short grace period
/// for a tool that exited right at it).
fn collect_drain(receiver: Option<mpsc::Receiver<Vec<u8>>>, deadline: Instant) -> String {
    let Some(receiver) = receiver else {
        return String::new();
    };
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    receiver
        .recv_timeout(wait)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_command_reports_missing_tools() {
        let result = run_command("osvm-no-such-tool-xyz", &[], COMMAND_TIMEOUT);
        assert!(matches!(result, Err(ProbeError::NotFound { .. })));
    }

    #[test]
    fn run_command_kills_tools_past_the_deadline() {
        let started = Instant::now();
        let result = run_command("sleep", &["10"], Duration::from_millis(200));
        assert!(matches!(result, Err(ProbeError::Timeout { .. })));
        // Killed, not waited for: far less than the 10 s the tool would take.
        assert!(started.elapsed() < Duration::from_secs(8));
    }
}
