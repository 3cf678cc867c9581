//! Following an instance's log files onto the terminal, as `tail -f` does.
//!
//! The sandbox writes to files, never to a pipe osvm must drain; a follower copies what
//! appears to a writer until told to finish, then copies the rest.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a follower looks for new output while the instance runs.
const POLL: Duration = Duration::from_millis(50);

/// A thread copying one log file to a writer.
pub struct Follower {
    done: Sender<()>,
    thread: JoinHandle<()>,
}

impl Follower {
    /// Starts following `path` into `out` from the file's start.
    pub fn start(path: &Path, mut out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let mut file = File::open(path)?;
        let (done, rx) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name("log-follower".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let finished = match rx.recv_timeout(POLL) {
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                        Err(RecvTimeoutError::Timeout) => false,
                    };
                    loop {
                        match file.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if out.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = out.flush();
                    if finished {
                        return;
                    }
                }
            })?;
        Ok(Self { done, thread })
    }

    /// Copies what is left and stops.
    pub fn finish(self) {
        let _ = self.done.send(());
        let _ = self.thread.join();
    }
}
