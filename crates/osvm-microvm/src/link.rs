//! The host's end of a VM's link to its agent.
//!
//! - vsock (the default): through the VM's vhost-device-vsock backend, see [`crate::vsock`];
//!   the agent's connections to the host arrive on listeners bound before the guest exists.
//! - serial (`microvm = { link = "serial" }`): QEMU serves the guest's virtio-serial port
//!   `osvm.agent` on the unix socket `run/agent.sock`; osvm connects to it and carries every
//!   connection over it with [`osvm_agent::channel`]. No backend process, and nothing a
//!   snapshot could not save. A new host (a restarted daemon) connects anew and the agent
//!   follows; connections of the previous host end with it.
//!
//! Either way a connection is a `UnixStream`, so the rest of the runtime does not care.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use osvm_agent::channel::{Channel, Side};
use osvm_agent::proto::{EVENTS_PORT, LOGS_PORT};

use crate::vsock;

/// How many connections to the events or logs port may wait to be taken.
const PENDING: usize = 4;

/// The host's end of a VM's link.
pub enum HostLink {
    /// vsock through the backend's socket `uds` (`run/vm.vsock`).
    Vsock {
        /// The backend's host-side socket.
        uds: PathBuf,
    },
    /// The serial port's channel.
    Serial(Arc<SerialHost>),
}

impl HostLink {
    /// Opens a connection to the guest's `port`.
    pub fn connect(&self, port: u32, timeout: Duration) -> io::Result<UnixStream> {
        match self {
            HostLink::Vsock { uds } => vsock::connect(uds, port, timeout),
            HostLink::Serial(serial) => serial.channel.open(port),
        }
    }
}

/// The host's end of the serial link: the channel, and the connections the agent opened to
/// the host's events and logs ports, waiting to be taken.
pub struct SerialHost {
    channel: Arc<Channel>,
    events: Mutex<mpsc::Receiver<UnixStream>>,
    logs: Mutex<mpsc::Receiver<UnixStream>>,
}

impl SerialHost {
    /// Connects to QEMU's socket for the port at `socket`, waiting for QEMU to make it until
    /// `deadline`; `failed` says why to stop waiting (QEMU ended).
    pub fn connect(
        socket: &Path,
        deadline: Instant,
        failed: impl Fn() -> Option<String>,
    ) -> Result<Arc<Self>, String> {
        let connected = osvm_guest::until_ready(deadline, Duration::from_millis(5), failed, || {
            UnixStream::connect(socket)
        });
        let stream = connected.map_err(|gave| match gave {
            osvm_guest::Gave::Failed(why) => why,
            osvm_guest::Gave::Late(e) => format!(
                "cannot connect to the guest's serial port at {}: {e}",
                socket.display()
            ),
        })?;
        Self::over(stream, deadline).map_err(|e| format!("start the serial link: {e}"))
    }

    /// Carries the link over `stream` (connected to QEMU's socket for the port), after a
    /// session handshake with the agent (it may still run a session with an earlier host:
    /// see `osvm_agent::channel::handshake`), which must answer before `deadline`.
    pub fn over(stream: UnixStream, deadline: Instant) -> io::Result<Arc<Self>> {
        let channel = Arc::new(Channel::start_session(
            move || {
                stream.set_nonblocking(true)?;
                tokio::net::UnixStream::from_std(stream)
            },
            Side::Host,
            Some(deadline),
        )?);
        // A few waiting connections per port at most: a guest that opens connection after
        // connection to them must not pile up descriptors in osvm (the rest are dropped).
        let (events_tx, events_rx) = mpsc::sync_channel(PENDING);
        let (logs_tx, logs_rx) = mpsc::sync_channel(PENDING);
        let router = Arc::clone(&channel);
        std::thread::Builder::new()
            .name("vm-link".into())
            .spawn(move || {
                // The agent opens only these two; anything else is dropped (it sees EOF).
                while let Ok((port, conn)) = router.accept() {
                    let _ = match port {
                        EVENTS_PORT => events_tx.try_send(conn),
                        LOGS_PORT => logs_tx.try_send(conn),
                        _ => Ok(()),
                    };
                }
            })?;
        Ok(Arc::new(SerialHost {
            channel,
            events: Mutex::new(events_rx),
            logs: Mutex::new(logs_rx),
        }))
    }

    /// The next connection the agent opens to the events port, before `deadline`; `failed`
    /// says why to stop waiting.
    pub fn accept_events(
        &self,
        deadline: Instant,
        failed: impl Fn() -> Option<String>,
    ) -> Result<UnixStream, String> {
        let events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            match events.recv_timeout(Duration::from_millis(20)) {
                Ok(conn) => return Ok(conn),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(failed().unwrap_or_else(|| {
                        "the guest's serial link ended before its agent said hello".into()
                    }));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(why) = failed() {
                return Err(why);
            }
            if Instant::now() > deadline {
                return Err("the guest agent did not say hello within the boot timeout".into());
            }
        }
    }

    /// Leaves the port: the channel closes (QEMU tells the guest its host left), every
    /// connection on it ends.
    pub fn close(&self) {
        self.channel.close();
    }

    /// The next connection the agent opens to the logs port (blocking), or `None` once the
    /// link has ended.
    pub fn accept_logs(&self) -> Option<UnixStream> {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recv()
            .ok()
    }
}
