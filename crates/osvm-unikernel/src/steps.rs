//! What the build steps share: progress reports, running a tool with its output streamed, and
//! the build's error type.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

pub use osvm_core::Progress;

/// What can go wrong in a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A prerequisite is missing.
    #[error(transparent)]
    Missing(#[from] crate::toolchain::Missing),
    /// The crate to build is not usable.
    #[error("{0}")]
    Input(String),
    /// A tool failed.
    #[error("{what} failed ({status}); its last lines: {tail}")]
    Tool {
        /// The step.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its output.
        tail: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Runs `cmd`, passing each line of its stderr (cargo's progress) to `progress`; fails with
/// the last lines when it fails.
pub(crate) fn run(
    what: &str,
    mut cmd: Command,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), BuildError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| BuildError::io(format!("start {what}"), e))?;
    let stderr = child.stderr.take().expect("piped");
    let mut last: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        progress(Progress::Tool(line.clone()));
        last.push(line);
        if last.len() > 12 {
            last.remove(0);
        }
    }
    let status = child
        .wait()
        .map_err(|e| BuildError::io(format!("wait for {what}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Tool {
            what: what.to_owned(),
            status: status.to_string(),
            tail: last.join(" | "),
        })
    }
}

/// Runs `cmd` and returns its stdout.
pub(crate) fn stdout_of(what: &str, mut cmd: Command) -> Result<String, BuildError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::io(format!("start {what}"), e))?;
    if !out.status.success() {
        return Err(BuildError::Tool {
            what: what.to_owned(),
            status: out.status.to_string(),
            tail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes `to` by `make` on a temporary name beside it, then renames it, so a reader never
/// sees half a file.
fn atomically(
    to: &Path,
    make: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), BuildError> {
    let dir = to.parent().expect("has a parent");
    std::fs::create_dir_all(dir)
        .map_err(|e| BuildError::io(format!("create {}", dir.display()), e))?;
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let partial = to.with_file_name(format!(".{name}.partial"));
    make(&partial)
        .and_then(|()| std::fs::rename(&partial, to))
        .map_err(|e| BuildError::io(format!("store {}", to.display()), e))
}

/// Copies `from` to `to` through a temporary name.
pub(crate) fn install(from: &Path, to: &Path) -> Result<(), BuildError> {
    atomically(to, |partial| std::fs::copy(from, partial).map(drop))
}

/// Writes a file through a temporary name.
pub(crate) fn write_atomic(to: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    atomically(to, |partial| std::fs::write(partial, bytes))
}

/// The first 16 hex digits of a digest: enough to name a cache entry.
pub(crate) fn short(digest: &str) -> &str {
    &digest[..16.min(digest.len())]
}

/// An exclusive lock on the build area of a state directory, held by one build at a time (two
/// components of one crate starting together, or `osvm up` and a daemon): the second waits,
/// then finds the first's results stored.
pub(crate) struct BuildLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl BuildLock {
    /// Waits for the lock of `<state_dir>/unikernel`.
    pub(crate) fn acquire(state_dir: &Path) -> Result<Self, BuildError> {
        let dir = state_dir.join("unikernel");
        std::fs::create_dir_all(&dir)
            .map_err(|e| BuildError::io(format!("create {}", dir.display()), e))?;
        let path = dir.join(".build.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| BuildError::io(format!("open {}", path.display()), e))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map(Self)
            .map_err(|(_, e)| BuildError::io(format!("lock {}", path.display()), e.into()))
    }
}
