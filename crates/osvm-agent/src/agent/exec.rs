//! Running a command to completion with its output captured and a time limit: exec requests
//! (health checks) and the agent's own configuration commands.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use osvm_agent::proto::{Launch, MAX_EXEC_OUTPUT};

use super::children::{Children, code_and_signal};
use super::{lock, spawn_thread};

/// The search path when the environment sets none.
pub const DEFAULT_PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";
/// How long a finished command's output pipes get to reach their end: a background process it
/// left behind may hold them open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Where commands run: environment and working directory.
#[derive(Debug, Clone)]
pub struct Context {
    /// The whole environment, `PATH` included.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub dir: String,
}

impl Default for Context {
    /// Just a `PATH`, in `/`.
    fn default() -> Self {
        Context {
            env: vec![("PATH".to_string(), DEFAULT_PATH.to_string())],
            dir: "/".to_string(),
        }
    }
}

impl Context {
    /// The workload's environment and directory, so a health check sees what the workload
    /// sees; with [`DEFAULT_PATH`] when the launch sets no `PATH`.
    pub fn of_launch(launch: &Launch) -> Self {
        let mut env = launch.env.clone();
        if !env.iter().any(|(name, _)| name == "PATH") {
            env.push(("PATH".to_string(), DEFAULT_PATH.to_string()));
        }
        Context {
            env,
            dir: launch
                .working_dir
                .clone()
                .unwrap_or_else(|| "/".to_string()),
        }
    }

    /// The search path: the last `PATH` in the environment, as the child will see it.
    fn path(&self) -> &str {
        self.env
            .iter()
            .rev()
            .find(|(name, _)| name == "PATH")
            .map_or(DEFAULT_PATH, |(_, value)| value)
    }
}

/// How a command ended, and what it wrote.
#[derive(Debug)]
pub struct Outcome {
    /// Its exit code; `None` when a signal (or the time limit) killed it.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether the time limit killed it.
    pub timed_out: bool,
    /// Its standard output, cut at [`MAX_EXEC_OUTPUT`] bytes.
    pub stdout: Vec<u8>,
    /// Its standard error, cut at [`MAX_EXEC_OUTPUT`] bytes.
    pub stderr: Vec<u8>,
}

/// Runs `argv` in `context`, killing it (its whole process group) after `timeout`.
///
/// `argv[0]` is a path, or a name looked up in the context's `PATH`. Errors are for commands
/// that could not be started at all.
pub fn run(
    children: &Children,
    argv: &[String],
    context: &Context,
    timeout: Duration,
) -> io::Result<Outcome> {
    let Some((name, args)) = argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
    };
    let program = resolve(name, context.path())?;
    let mut command = Command::new(&program);
    command
        .arg0(name)
        .args(args)
        .env_clear()
        .envs(context.env.iter().map(|(name, value)| (name, value)))
        .current_dir(&context.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills what it started too.
        .process_group(0);
    let mut spawned = children.spawn(&mut command)?;

    let (done, finished) = mpsc::channel();
    let stdout = capture(spawned.child.stdout.take(), done.clone());
    let stderr = capture(spawned.child.stderr.take(), done);

    let (status, timed_out) = match spawned.exit.recv_timeout(timeout) {
        Ok(status) => (status, false),
        Err(RecvTimeoutError::Timeout) => {
            let _ = killpg(spawned.pid, Signal::SIGKILL);
            // And itself, in case it left its group.
            let _ = kill(spawned.pid, Signal::SIGKILL);
            match spawned.exit.recv() {
                Ok(status) => (status, true),
                Err(_) => return Err(io::Error::other("the reaper went away")),
            }
        }
        Err(RecvTimeoutError::Disconnected) => {
            return Err(io::Error::other("the reaper went away"));
        }
    };
    let (code, signal) = code_and_signal(status);

    // Both capture threads report their end; wait for them a little, then take what they have.
    let grace_end = Instant::now() + OUTPUT_GRACE;
    for _ in 0..2 {
        let left = grace_end.saturating_duration_since(Instant::now());
        if finished.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(Outcome {
        code,
        signal,
        timed_out,
        stdout: std::mem::take(&mut *lock(&stdout)),
        stderr: std::mem::take(&mut *lock(&stderr)),
    })
}

/// Reads `pipe` to its end on a thread, keeping the first [`MAX_EXEC_OUTPUT`] bytes (and
/// discarding the rest, so the command never blocks on a full pipe); signals `done` at the end.
fn capture(
    pipe: Option<impl Read + Send + 'static>,
    done: mpsc::Sender<()>,
) -> Arc<Mutex<Vec<u8>>> {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let Some(mut pipe) = pipe else {
        let _ = done.send(());
        return kept;
    };
    let sink = Arc::clone(&kept);
    spawn_thread("exec-output", move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let mut kept = lock(&sink);
                    let room = MAX_EXEC_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
    kept
}

/// Finds the program `name`: itself if it contains a `/`, else the first executable file of
/// that name in the directories of `path`.
fn resolve(name: &str, path: &str) -> io::Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(OsStr::new(name)))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name}: not found in PATH {path}"),
            )
        })
}

/// Whether `path` is a file someone may execute.
fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_without_path_gets_the_default_one_and_its_directory() {
        let launch = Launch {
            env: vec![("A".into(), "1".into())],
            working_dir: Some("/srv".into()),
            ..Launch::default()
        };
        let context = Context::of_launch(&launch);
        assert_eq!(context.path(), DEFAULT_PATH);
        assert_eq!(context.dir, "/srv");
        assert_eq!(Context::default().dir, "/");
    }

    #[test]
    fn the_last_path_in_the_environment_wins() {
        let launch = Launch {
            env: vec![("PATH".into(), "/a".into()), ("PATH".into(), "/b".into())],
            ..Launch::default()
        };
        assert_eq!(Context::of_launch(&launch).path(), "/b");
    }

    #[test]
    fn names_are_looked_up_in_the_path_and_paths_are_taken_as_they_are() {
        assert_eq!(
            resolve("sh", "/nonexistent:/bin").unwrap(),
            Path::new("/bin/sh")
        );
        assert_eq!(resolve("./x", "/bin").unwrap(), Path::new("./x"));
        let missing = resolve("no-such-program-here", "/bin:/usr/bin").unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        // A directory of that name is not a program.
        assert!(resolve("tmp", "/").is_err());
    }
}
