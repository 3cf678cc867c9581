//! The workload: starting it, forwarding its output, and the event and log connections.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::Shutdown;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use osvm_agent::proto::{self, Event, Launch, MAX_LOG_CHUNK, Stream};

use super::children::code_and_signal;
use super::link::Conn;
use super::{Agent, lock, spawn_thread};

/// A connection to the host that several threads write whole messages to.
///
/// It can be closed while a write is blocked: a host that stopped reading must not keep the VM
/// from powering off. So the connection is shared (`Arc`) and its lock is never held across a
/// write; a second lock keeps writers from interleaving their frames.
#[derive(Default)]
struct SharedConn {
    /// The connection while it is usable.
    conn: Mutex<Option<Arc<Conn>>>,
    /// Held across a write.
    writing: Mutex<()>,
}

impl SharedConn {
    /// Starts using `conn`.
    fn attach(&self, conn: Conn) {
        self.attach_shared(Arc::new(conn));
    }

    /// Starts using `conn`, waiting for a write in progress on the previous one.
    fn attach_shared(&self, conn: Arc<Conn>) {
        let _writing = lock(&self.writing);
        *lock(&self.conn) = Some(conn);
    }

    /// Writes with `write`, if the connection is usable; a failure makes it unusable, since the
    /// frame boundaries can no longer be trusted. Returns whether the write was made.
    fn write(
        &self,
        what: &str,
        write: impl FnOnce(&mut &Conn) -> Result<(), proto::ProtoError>,
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
    pub fn attach(&self, conn: Conn) {
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
    pub fn attach(&self, conn: Conn) {
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

/// The exec error of a workload, with the reason when it is "No such file or directory": the
/// kernel says that alike for a missing program, a missing ELF interpreter or `#!` interpreter,
/// and a missing working directory.
pub fn explain_start_error(launch: &Launch, error: &io::Error) -> String {
    if error.kind() != io::ErrorKind::NotFound {
        return error.to_string();
    }
    let missing = |path: &Path| fs::symlink_metadata(path).is_err();
    let program = Path::new(&launch.command);
    let why = if let Some(dir) = launch
        .working_dir
        .as_deref()
        .filter(|d| missing(Path::new(d)))
    {
        format!("the working directory {dir} does not exist in the guest")
    } else if !program.is_absolute() {
        "the program is not found: the guest has no PATH search for it; name it by its full \
         path"
            .to_owned()
    } else if missing(program) {
        "it is not in the guest's image".to_owned()
    } else {
        let mut head = vec![0u8; 64 * 1024];
        let n = File::open(program)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        head.truncate(n);
        let interpreter = if head.starts_with(b"#!") {
            let line = head[2..].split(|&b| b == b'\n').next().unwrap_or_default();
            String::from_utf8_lossy(line)
                .split_whitespace()
                .next()
                .map(PathBuf::from)
        } else {
            osvm_agent::elf::interpreter(&head).ok().flatten()
        };
        match interpreter {
            Some(i) if missing(&i) => format!(
                "its interpreter {} is not in the guest's image",
                i.display()
            ),
            _ => "a file it needs is not in the guest's image".to_owned(),
        }
    };
    format!("{error}: {why}")
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

    /// "No such file or directory" at exec names what is missing: the program, its `#!` or ELF
    /// interpreter, or the working directory. Each case execs for real on the host.
    #[test]
    fn a_missing_file_at_exec_is_named() {
        let dir = std::env::temp_dir().join(format!("osvm-agent-exec-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let why = |launch: Launch| loop {
            let error = Command::new(&launch.command)
                .current_dir(launch.working_dir.as_deref().unwrap_or("/"))
                .output()
                .expect_err("the exec fails");
            // A file just written is busy while another test thread's fork holds it open.
            if error.raw_os_error() != Some(libc::ETXTBSY) {
                break explain_start_error(&launch, &error);
            }
        };
        let launch = |command: &Path| Launch {
            command: command.display().to_string(),
            ..Launch::default()
        };

        let absent = dir.join("absent");
        let w = why(launch(&absent));
        assert!(w.contains("it is not in the guest's image"), "{w}");

        let script = dir.join("script");
        fs::write(&script, "#!/nonexistent/sh\n").unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let w = why(launch(&script));
        assert!(w.contains("its interpreter /nonexistent/sh is not"), "{w}");

        // An ELF program whose loader is gone: this test binary, its PT_INTERP renamed.
        let mut elf = fs::read(std::env::current_exe().unwrap()).unwrap();
        let loader = osvm_agent::elf::interpreter(&elf).unwrap().unwrap();
        let name = loader.to_string_lossy().into_owned();
        let at = elf
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .unwrap();
        elf[at + 1] = b'X';
        let program = dir.join("program");
        fs::write(&program, &elf).unwrap();
        fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let w = why(launch(&program));
        let renamed = format!("/X{}", &name[2..]);
        assert!(
            w.contains(&format!(
                "its interpreter {renamed} is not in the guest's image"
            )),
            "{w}"
        );

        let mut in_nowhere = launch(&script);
        in_nowhere.working_dir = Some(dir.join("gone").display().to_string());
        let w = why(in_nowhere);
        assert!(w.contains("the working directory"), "{w}");
        let _ = fs::remove_dir_all(&dir);
    }

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
