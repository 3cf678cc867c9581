//! Work inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` moves only the calling *thread*, and a thread cannot reliably move back
//! (a failure half-way would leave it in the wrong namespace for whatever runs on it next). So
//! work that must happen inside a component's (or the hub's) namespace runs on a thread of its
//! own that enters the namespace first: [`run_in`] for a short piece of work (connect, bind,
//! open a TAP device), whose result the caller gets back; [`enter`] for a long-lived thread
//! that stays there (a proxy's runtime). Sockets and devices opened that way keep belonging to
//! that namespace wherever they are used afterwards.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Why the work could not run in the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("open the network namespace {path}: {source}")]
    Open {
        /// The namespace file (`/run/netns/<name>`, `/proc/<pid>/ns/net`).
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// `setns` refused.
    #[error("enter the network namespace: {0}")]
    Enter(#[source] nix::errno::Errno),
    /// The thread could not be started, or panicked.
    #[error("the thread in the network namespace {0}")]
    Thread(&'static str),
}

/// Opens the namespace at `path`.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Moves the calling thread into the namespace `netns` for good.
pub fn enter(netns: impl AsFd) -> Result<(), NetnsError> {
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)
}

/// Runs `work` on a thread of its own inside the namespace `netns` and returns what it
/// returned. The caller's threads stay where they are.
pub fn run_in<T: Send + 'static>(
    netns: File,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    std::thread::Builder::new()
        .name("osvm-netns".into())
        .spawn(move || -> Result<T, NetnsError> {
            enter(&netns)?;
            Ok(work())
        })
        .map_err(|_| NetnsError::Thread("could not be started"))?
        .join()
        .map_err(|_| NetnsError::Thread("panicked"))?
}

/// [`run_in`] the namespace at `path`.
pub fn run_in_path<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    run_in(open(path)?, work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_in_the_namespace_and_the_caller_stays_in_its_own() {
        let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        // The caller's own namespace (as root, like every user of this module): entering it
        // changes nothing.
        let seen = run_in_path(Path::new("/proc/self/ns/net"), || {
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .unwrap();
        assert_eq!(seen, own);
        assert!(matches!(
            run_in_path(Path::new("/nonexistent/netns"), || ()),
            Err(NetnsError::Open { .. })
        ));
        assert!(matches!(
            run_in(File::open("/dev/null").unwrap(), || ()),
            Err(NetnsError::Enter(_))
        ));
    }
}
