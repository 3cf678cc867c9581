//! Following an instance's log files onto the terminal, as `tail -f` does.
//!
//! The sandbox's monitor writes stamped records to files (see `osvm_sandbox::output`); a
//! follower turns what appears back into the workload's own bytes until told to finish, then
//! does the rest.

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
                let mut pending: Vec<u8> = Vec::new();
                loop {
                    let finished = match rx.recv_timeout(POLL) {
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                        Err(RecvTimeoutError::Timeout) => false,
                    };
                    loop {
                        match file.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                    let mut start = 0;
                    while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
                        let line = &pending[start..start + pos];
                        if osvm_sandbox::output::payload_of(line, &mut out).is_err() {
                            return;
                        }
                        start += pos + 1;
                    }
                    pending.drain(..start);
                    if finished && !pending.is_empty() {
                        let _ = out.write_all(&pending);
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
