//! A small QMP client: commands, descriptors handed over (`getfd`), and saving and restoring a
//! guest through a descriptor (QEMU's own `-sandbox` forbids `exec:` migration, and 7.2 has no
//! `file:` URI; a descriptor also spares the sandboxed QEMU any host path).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a migration (save or load) may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// A QMP connection in command mode.
pub struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects to QEMU's QMP socket and leaves capabilities negotiation.
    pub fn connect(path: &Path) -> Result<Self, String> {
        let stream = UnixStream::connect(path)
            .map_err(|e| format!("connect to QMP at {}: {e}", path.display()))?;
        stream
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut qmp = Qmp { stream, reader };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("read from QMP: {e}"))?;
        if n == 0 {
            return Err("QMP closed the connection".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}"))
    }

    /// Runs `command` with `arguments`; returns its `return` value, or its error.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let line = json!({ "execute": command, "arguments": arguments }).to_string() + "\n";
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| format!("send {command} to QMP: {e}"))?;
        self.answer(command)
    }

    /// Reads the answer to `command`, skipping asynchronous events.
    fn answer(&mut self, command: &str) -> Result<Value, String> {
        loop {
            let msg = self.read()?;
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                return Err(format!(
                    "QMP {command}: {}",
                    err["desc"].as_str().unwrap_or("error")
                ));
            }
            // {"event": ...}: not an answer.
        }
    }

    /// Hands `fd` to QEMU under `name` (`getfd`, the descriptor in `SCM_RIGHTS`).
    pub fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), String> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let line =
            json!({ "execute": "getfd", "arguments": { "fdname": name } }).to_string() + "\n";
        let iov = [std::io::IoSlice::new(line.as_bytes())];
        let fds = [fd.as_raw_fd()];
        sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| format!("hand a descriptor to QEMU: {e}"))?;
        self.answer("getfd").map(|_| ())
    }

    /// Waits for the migration in progress (outgoing or incoming) to complete.
    fn wait_for_migration(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        loop {
            let info = self.execute("query-migrate", json!({}))?;
            match info["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    return Err(format!(
                        "the migration {}: {}",
                        info["status"].as_str().unwrap_or(""),
                        info["error-desc"].as_str().unwrap_or("no reason given")
                    ));
                }
                _ if Instant::now() > deadline => {
                    return Err(format!("the migration did not complete: {info}"));
                }
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Stops the guest and saves its device state into `state` (a file open for writing).
    /// Guest RAM is not in it: it lives in the guest's shared memory-backend file
    /// (`x-ignore-shared`).
    pub fn save(&mut self, state: BorrowedFd<'_>) -> Result<(), String> {
        self.execute("stop", json!({}))?;
        self.ignore_shared()?;
        self.send_fd("osvm-state", state)?;
        self.execute("migrate", json!({ "uri": "fd:osvm-state" }))?;
        self.wait_for_migration()
    }

    /// Loads the device state from `state` into a QEMU started with `-incoming defer` (its
    /// RAM file already holds the guest's memory) and lets the guest run.
    pub fn restore(&mut self, state: BorrowedFd<'_>) -> Result<(), String> {
        self.ignore_shared()?;
        self.send_fd("osvm-state", state)?;
        self.execute("migrate-incoming", json!({ "uri": "fd:osvm-state" }))?;
        self.wait_for_migration()?;
        self.execute("cont", json!({})).map(|_| ())
    }

    fn ignore_shared(&mut self) -> Result<(), String> {
        self.execute(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
        )
        .map(|_| ())
    }
}
