//! The workload: starting it, forwarding its output, and the event and log connections.

use std::io::{self, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
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
        *lock(&self.conn) = Some(Arc::new(conn));
    }

    /// Writes with `write`, if the connection is usable; a failure makes it unusable, since the
    /// frame boundaries can no longer be trusted.
    fn write(
        &self,
        what: &str,
        write: impl FnOnce(&mut &VsockConn) -> Result<(), proto::ProtoError>,
    ) {
        let _writing = lock(&self.writing);
        let Some(conn) = lock(&self.conn).clone() else {
            return;
        };
        if let Err(error) = write(&mut &*conn) {
            say!("{what}: {error}");
            lock(&self.conn).take();
        }
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
/// keeps running (whoever is left may still want its work done or its logs).
#[derive(Default)]
pub struct Events(SharedConn);

impl Events {
    /// Starts sending events on `conn`.
    pub fn attach(&self, conn: VsockConn) {
        self.0.attach(conn);
    }

    /// Sends `event`, if the connection is still up.
    pub fn send(&self, event: &Event) {
        self.0
            .write("the events connection failed, no more events", |conn| {
                proto::write_msg(conn, event)
            });
    }

    /// Closes the connection; returns whether it was open.
    pub fn close(&self) -> bool {
        self.0.close()
    }
}

/// The logs connection. When a write fails forwarding stops, but the pumps keep draining the
/// workload's pipes so that it never blocks on a full one.
#[derive(Default)]
pub struct LogSink(SharedConn);

impl LogSink {
    /// Starts forwarding to `conn`.
    pub fn attach(&self, conn: VsockConn) {
        self.0.attach(conn);
    }

    /// Forwards `data` from `stream`, if forwarding still works.
    fn forward(&self, stream: Stream, data: &[u8]) {
        self.0.write(
            "log forwarding failed, output is dropped from now on",
            |conn| proto::write_log(conn, stream, data),
        );
    }

    /// Closes the connection; returns whether it was open.
    pub fn close(&self) -> bool {
        self.0.close()
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
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut spawned = agent.children.spawn_workload(&mut command)?;

    let (done, pumps_done) = channel();
    let mut pumps = 0;
    if let Some(stdout) = spawned.child.stdout.take() {
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
