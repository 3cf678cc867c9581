//! The agent's parts, and the boot sequence that ties them together ([`run`]).

pub mod children;
pub mod control;
pub mod egress;
pub mod exec;
pub mod link;
pub mod setup;
pub mod system;
pub mod vsock;
pub mod workload;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use osvm_agent::proto::{self, Event, Launch};

use children::Children;
use link::{Link, RETRY_FOR};
use workload::{Events, LogSink};
/// How long the last messages to the host get to leave the guest before it powers off. vsock
/// cannot tell when sent data was delivered, and a poweroff drops what the virtio queue and
/// the backend still hold; a round trip takes ~2 ms even under TCG (p99).
const FLUSH_WAIT: Duration = Duration::from_millis(50);
/// How long the log pumps get to forward the workload's last output after it exited.
const LOG_DRAIN: Duration = Duration::from_secs(1);
/// How long a workload's exit waits for a host to hear it when the events connection is gone
/// (the daemon was killed): a restarting daemon reattaches within this and learns the exit
/// code instead of finding the VM powered off.
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(30);

/// What a host that reattaches is told about the workload.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkloadState {
    /// Its pid while it runs.
    pub pid: Option<u32>,
    /// Its exit code and signal, once it exited.
    pub exit: Option<(Option<i32>, Option<i32>)>,
}

/// State shared by the boot thread, the reaper (main thread) and the control threads.
pub struct Agent {
    /// Every child process of PID 1, and which of them is the workload.
    pub children: Children,
    /// The events connection to the host, once made.
    pub events: Events,
    /// The logs connection to the host, once made.
    pub logs: LogSink,
    /// Environment and working directory for exec requests, known once the launch arrived.
    pub exec_context: OnceLock<exec::Context>,
    /// The workload's state, for a host that reattaches. Held while a reattach answers and
    /// attaches, so an exit is either in the answer or sent on the new connection.
    pub workload: Mutex<WorkloadState>,
    /// The workload's stdin and stdout, when the launch made them its stdio channel, until the
    /// host's `Stdio` request takes them.
    pub stdio: Mutex<Option<(std::process::ChildStdin, std::process::ChildStdout)>>,
    /// How the agent reaches the host.
    pub link: Link,
}

impl Agent {
    /// An agent with no connections and no children yet.
    pub fn new() -> Self {
        Agent {
            children: Children::new(),
            events: Events::default(),
            logs: LogSink::default(),
            exec_context: OnceLock::new(),
            workload: Mutex::new(WorkloadState::default()),
            stdio: Mutex::new(None),
            link: Link::from_cmdline(),
        }
    }

    /// The context exec requests run in: the workload's, or a bare `PATH` before the launch.
    pub fn exec_context(&self) -> exec::Context {
        self.exec_context.get().cloned().unwrap_or_default()
    }

    /// Ends the VM: closes the host connections, gives what was sent on them a moment to
    /// reach the host, then powers off.
    pub fn power_off(&self) -> ! {
        let logs_were_open = self.logs.close();
        let events_were_open = self.events.close();
        if logs_were_open || events_were_open {
            thread::sleep(FLUSH_WAIT);
        }
        system::power_off()
    }
}

/// The boot sequence (steps 2 to 8 of the crate docs); never returns, the VM powers off.
pub fn run(agent: &Arc<Agent>) -> ! {
    system::load_modules();

    // Listen before saying hello: the host connects in as soon as it has the hello.
    agent.link.serve(agent);

    let launch = match hello(agent) {
        Ok(launch) => launch,
        Err(error) => {
            say!("{error}; nothing to run");
            agent.power_off();
        }
    };
    say!(
        "launch: {} {:?} (hostname {:?})",
        launch.command,
        launch.args,
        launch.hostname
    );
    // Exec requests run like the workload does, whether or not the workload started.
    let _ = agent.exec_context.set(exec::Context::of_launch(&launch));

    setup::configure(agent, &launch);
    // A workload that was given a data volume never runs on an empty /data instead.
    if let Some(device) = &launch.data_device
        && let Err(error) = setup::mount_data(device)
    {
        say!("cannot mount the data volume: {error}");
        agent.events.send(&Event::StartFailed {
            error: format!("cannot mount the data volume {device} at /data: {error}"),
        });
        agent.power_off();
    }

    for shared in &launch.mounts {
        if let Err(error) = setup::mount_shared(shared) {
            say!("cannot mount a shared directory: {error}");
            agent.events.send(&Event::StartFailed {
                error: format!(
                    "cannot mount the shared directory at {}: {error}",
                    shared.target
                ),
            });
            agent.power_off();
        }
    }

    for e in &launch.tls_egress {
        if let Err(error) = egress::listen(e) {
            say!("cannot listen for mtls_egress: {error}");
            agent.events.send(&Event::StartFailed {
                error: format!(
                    "cannot listen on the guest's 127.0.0.1:{} for mtls_egress to {}: {error}",
                    e.listen, e.server_name
                ),
            });
            agent.power_off();
        }
    }

    match agent.link.connect(
        "connect to the host's logs port",
        proto::LOGS_PORT,
        LOGS_WAIT,
    ) {
        Ok(conn) => agent.logs.attach(conn),
        Err(error) => {
            say!("cannot connect to the host's logs port, output is not forwarded: {error}")
        }
    }

    let workload = match workload::start(agent, &launch) {
        Ok(workload) => workload,
        Err(error) => {
            let why = workload::explain_start_error(&launch, &error);
            say!("cannot start {}: {why}", launch.command);
            agent.events.send(&Event::StartFailed {
                error: format!("cannot start {}: {why}", launch.command),
            });
            agent.power_off();
        }
    };
    say!("workload started, pid {}", workload.pid);
    let pid = workload.pid.as_raw() as u32;
    lock(&agent.workload).pid = Some(pid);
    agent.events.send(&Event::Started { pid });

    let (code, signal) = workload.wait();
    say!("workload exited (code {code:?}, signal {signal:?})");
    *lock(&agent.workload) = WorkloadState {
        pid: None,
        exit: Some((code, signal)),
    };
    if !agent.events.send(&Event::Exited { code, signal }) {
        // No host hears it now: give a restarting one the time to reattach and learn it.
        say!(
            "no host to report the exit to; waiting up to {} s for one to reattach",
            EXIT_REPORT_WAIT.as_secs()
        );
        if agent.events.wait_for_attach(EXIT_REPORT_WAIT) {
            say!("a host reattached and was told of the exit");
        }
    }
    workload.drain_logs(LOG_DRAIN);
    agent.power_off()
}

/// Connects to the host's events port, says hello and reads the launch.
///
/// On the serial link the host may change between the hello and the launch: a VM restored
/// from a snapshot was saved right after its hello, and wakes with the connection to the host
/// that took the snapshot gone. It then says hello again, to whichever host connects next.
fn hello(agent: &Agent) -> Result<Launch, String> {
    let started = Instant::now();
    loop {
        let conn = agent
            .link
            .connect(
                "connect to the host's events port",
                proto::EVENTS_PORT,
                RETRY_FOR,
            )
            .map_err(|error| format!("cannot connect to the host's events port: {error}"))?;
        let uptime_ms = system::uptime_ms();
        say!(
            "connected to the host in {} ms, hello at uptime {uptime_ms} ms",
            started.elapsed().as_millis()
        );
        let said = proto::write_msg(
            &mut &conn,
            &Event::Hello {
                agent: env!("CARGO_PKG_VERSION").to_string(),
                kernel: system::kernel_release(),
                uptime_ms,
                image: system::image_mark(),
            },
        )
        .map_err(|error| format!("cannot say hello: {error}"));
        let launch = said.and_then(|()| {
            proto::read_msg::<Launch>(&mut &conn)
                .map_err(|error| format!("cannot read the launch: {error}"))
        });
        match launch {
            Ok(launch) => {
                agent.events.attach(conn);
                return Ok(launch);
            }
            Err(error) if agent.link.is_serial() && started.elapsed() < HELLO_AGAIN_FOR => {
                say!("{error}; saying hello to the next host");
                // Until the link notices that the host left, it may still hand out its channel.
                thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error),
        }
    }
}

/// How long a guest on the serial link keeps saying hello to new hosts without a launch: a
/// snapshot may be restored long after it was saved, so this is the whole time a restored
/// guest waits.
const HELLO_AGAIN_FOR: Duration = Duration::from_secs(24 * 3600 * 365);
/// How long the agent waits for the logs port (the host is connected already: it just sent
/// the launch).
const LOGS_WAIT: Duration = Duration::from_secs(5);

/// Locks `mutex`, ignoring poisoning: a panic powers the VM off, so a poisoned lock is never
/// seen by anyone who could do better.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a named thread; says so and returns `false` if the system cannot start one.
pub fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) -> bool {
    match thread::Builder::new().name(name.into()).spawn(body) {
        Ok(_) => true,
        Err(error) => {
            say!("cannot start a {name} thread: {error}");
            false
        }
    }
}
