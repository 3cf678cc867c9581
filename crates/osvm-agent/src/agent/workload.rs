//! The workload: starting it, forwarding its output, and the event and log connections.

use std::io::{self, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::Shutdown;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use osvm_agent::proto::{self, Event, Launch, MAX_LOG_CHUNK, Stream};

use super::children::code_and_signal;
use super::vsock::VsockConn;
use super::{Agent, lock, spawn_thread};

/// A connection to the host that several threads write whole messages to.
///
/// It can be closed while a write is blocked: a host that stopped reading must not keep the VM
/// from powering off. So the connection is shared (`Arc`) and its lock is never held across a
/// write; a second lock keeps writers from interleaving their frames.
#[derive(Default)]
struct SharedConn {
    /// The connection while it is usable.
    conn: Mutex<Option<Arc<VsockConn>>>,
    /// Held across a write.
    writing: Mutex<()>,
}

impl SharedConn {
    /// Starts using `conn`.
    fn attach(&self, conn: VsockConn) {
        self.attach_shared(Arc::new(conn));
    }

    /// Starts using `conn`, waiting for a write in progress on the previous one.
    fn attach_shared(&self, conn: Arc<VsockConn>) {
        let _writing = lock(&self.writing);
        *lock(&self.conn) = Some(conn);
    }

    /// Writes with `write`, if the connection is usable; a failure makes it unusable, since the
    /// frame boundaries can no longer be trusted. Returns whether the write was made.
    fn write(
        &self,
        what: &str,
        write: impl FnOnce(&mut &VsockConn) -> Result<(), proto::ProtoError>,
    ) -> bool {
        let _writing = lock(&self.writing);
        let Some(conn) = lock(&self.conn).clone() else {
            return false;
        };
        if let Err(error) = write(&mut &*conn) {
            say!("{what}: {error}");
            lock(&self.conn).take();
            return false;
        }
        true
    }

    /// Shuts the connection down (the host sees EOF after what was sent; a blocked writer
    /// fails) and forgets it; returns whether it was open.
    fn close(&self) -> bool {
        let Some(conn) = lock(&self.conn).take() else {
            return false;
        };
        conn.shutdown(Shutdown::Both);
        true
    }
}

/// The events connection. When a write fails the host is gone: events stop, the workload
/// keeps running (whoever is left may still want its work done or its logs), and a restarted
/// host attaches a new connection ([`Events::attach`] again, from a `Reattach` request).
#[derive(Default)]
pub struct Events {
    conn: SharedConn,
    /// Counts attachments, so a waiter can tell a new one happened.
    attached: Mutex<u64>,
    changed: Condvar,
}

impl Events {
    /// Starts sending events on `conn` (the previous connection, if any, is dropped).
    pub fn attach(&self, conn: VsockConn) {
        self.conn.attach(conn);
        *lock(&self.attached) += 1;
        self.changed.notify_all();
    }

    /// Sends `event`; returns whether it went out on a connection (which does not prove that
    /// a host read it: vsock cannot tell).
    pub fn send(&self, event: &Event) -> bool {
        self.conn
            .write("the events connection failed, no more events", |conn| {
                proto::write_msg(conn, event)
            })
    }

    /// Waits up to `limit` for a host to attach a new connection; returns whether one did.
    pub fn wait_for_attach(&self, limit: Duration) -> bool {
        let guard = lock(&self.attached);
        let seen = *guard;
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, limit, |now| *now == seen)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard != seen
    }

    /// Closes the connection; returns whether it was open.
    pub fn close(&self) -> bool {
        self.conn.close()
    }
}

/// The most output held while no host reads it (between a daemon's death and the next one's
/// `Logs` request); what comes after is dropped, and counted.
const MAX_HELD: usize = 1 << 20;

/// The logs connection. While there is none (a write failed: the host is gone) the output is
/// held, up to [`MAX_HELD`] bytes, for the next host that attaches; the pumps keep draining the
/// workload's pipes either way, so that it never blocks on a full one.
#[derive(Default)]
pub struct LogSink {
    conn: SharedConn,
    held: Mutex<Held>,
}

/// Output waiting for a host.
#[derive(Default)]
struct Held {
    chunks: Vec<(Stream, Vec<u8>)>,
    bytes: usize,
    dropped: u64,
}

impl LogSink {
    /// Starts forwarding to `conn`, first what was held while no host read.
    pub fn attach(&self, conn: VsockConn) {
        let mut held = lock(&self.held);
        let conn = Arc::new(conn);
        let flush = || -> Result<(), proto::ProtoError> {
            for (stream, data) in &held.chunks {
                proto::write_log(&mut &*conn, *stream, data)?;
            }
            if held.dropped > 0 {
                let note = format!(
                    "osvm-agent: {} bytes of output were dropped while no host read the logs\n",
                    held.dropped
                );
                proto::write_log(&mut &*conn, Stream::Stderr, note.as_bytes())?;
            }
            Ok(())
        };
        if let Err(error) = flush() {
            say!("cannot forward the held output: {error}");
            return;
        }
        *held = Held::default();
        self.conn.attach_shared(conn);
    }

    /// Forwards `data` from `stream`, or holds it while no host reads.
    fn forward(&self, stream: Stream, data: &[u8]) {
        // Held across the write, so an attach (which flushes the held output first) never
        // slips between a failed write and the holding of its data.
        let mut held = lock(&self.held);
        let sent = self.conn.write(
            "log forwarding failed; output is held for the next host",
            |conn| proto::write_log(conn, stream, data),
        );
        if !sent {
            if held.bytes + data.len() <= MAX_HELD {
                held.bytes += data.len();
                held.chunks.push((stream, data.to_vec()));
            } else {
                held.dropped += data.len() as u64;
            }
        }
    }

    /// Closes the connection; returns whether it was open.
    pub fn close(&self) -> bool {
        self.conn.close()
    }
}

/// The running workload.
pub struct Workload {
    /// Its pid.
    pub pid: Pid,
    /// Receives its exit status.
    exit: Receiver<WaitStatus>,
    /// Each log pump sends one message here when its pipe ended.
    pumps_done: Receiver<()>,
    /// How many pumps were started.
    pumps: usize,
}

/// Starts the workload the launch describes, with its output pumped into the logs connection.
pub fn start(agent: &Arc<Agent>, launch: &Launch) -> io::Result<Workload> {
    let mut command = Command::new(&launch.command);
    command
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(name, value)| (name, value)))
        .current_dir(launch.working_dir.as_deref().unwrap_or("/"))
        .stdin(if launch.stdio {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut spawned = agent.children.spawn_workload(&mut command)?;

    let (done, pumps_done) = channel();
    let mut pumps = 0;
    if launch.stdio {
        // Its stdio channel waits for the host's `Stdio` request (see `control`).
        if let (Some(stdin), Some(stdout)) =
            (spawned.child.stdin.take(), spawned.child.stdout.take())
        {
            *lock(&agent.stdio) = Some((stdin, stdout));
        }
    } else if let Some(stdout) = spawned.child.stdout.take() {
        pumps += usize::from(pump(agent, stdout, Stream::Stdout, done.clone()));
    }
    if let Some(stderr) = spawned.child.stderr.take() {
        pumps += usize::from(pump(agent, stderr, Stream::Stderr, done));
    }
    Ok(Workload {
        pid: spawned.pid,
        exit: spawned.exit,
        pumps_done,
        pumps,
    })
}

impl Workload {
    /// Waits for the workload to end; returns its exit code and killing signal.
    pub fn wait(&self) -> (Option<i32>, Option<i32>) {
        match self.exit.recv() {
            Ok(status) => code_and_signal(status),
            // Cannot happen: the reaper never drops a registered child's sender unused.
            Err(_) => (None, None),
        }
    }

    /// Gives the log pumps up to `limit` to forward the rest of the output. They may never end
    /// on their own: a process the workload left behind can hold its pipes open.
    pub fn drain_logs(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for _ in 0..self.pumps {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.pumps_done.recv_timeout(left).is_err() {
                say!("the workload's output did not end in time; the rest is dropped");
                return;
            }
        }
    }
}

/// Starts a thread copying `pipe` into the logs connection until the pipe ends; returns whether
/// the thread started.
fn pump(
    agent: &Arc<Agent>,
    mut pipe: impl Read + Send + 'static,
    stream: Stream,
    done: Sender<()>,
) -> bool {
    let agent = Arc::clone(agent);
    spawn_thread("log-pump", move || {
        let mut buf = vec![0u8; MAX_LOG_CHUNK];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => agent.logs.forward(stream, &buf[..n]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    say!("cannot read the workload's output: {error}");
                    break;
                }
            }
        }
        let _ = done.send(());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workload that writes while no host reads (the daemon is being restarted) cannot make
    /// the agent hold more than `MAX_HELD` bytes in guest memory: the rest is counted, not kept.
    #[test]
    fn output_held_for_an_absent_host_is_bounded() {
        let sink = LogSink::default();
        let chunk = vec![b'x'; MAX_LOG_CHUNK];
        let total = 3 * MAX_HELD;
        for _ in 0..total / MAX_LOG_CHUNK {
            sink.forward(Stream::Stdout, &chunk);
        }
        let held = lock(&sink.held);
        assert!(held.bytes <= MAX_HELD, "{} bytes held", held.bytes);
        assert_eq!(
            held.bytes,
            held.chunks.iter().map(|(_, d)| d.len()).sum::<usize>()
        );
        assert_eq!(held.bytes as u64 + held.dropped, total as u64);
    }
}
