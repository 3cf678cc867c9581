//! Health probes run from inside a component's network namespace.
//!
//! A component's ports exist only in its own network namespace (only `lo` is there), so a TCP
//! or HTTP probe of a process connects to 127.0.0.1 from a short-lived thread inside that
//! namespace (`osvm_net::netns::run_in`); a VM's probe reaches the guest's loopback over vsock
//! through its agent. An exec probe runs its command inside the sandbox or the guest, as
//! confined as the workload.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use crate::workload::Workload;
use osvm_core::stack::HealthProbe;

/// The outcome of one probe: `Ok(detail)` when healthy, `Err(why)` when not.
pub type ProbeResult = Result<String, ProbeError>;

/// Why a probe failed (what the `unhealthy` event and `osvm ps` say). The causes below the
/// probe's own level (an I/O error, what a runtime reported) are kept as text: a probe's
/// result is shown and compared, never matched on further.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    /// The port could not be reached.
    #[error("connect to port {port}: {reason}")]
    Connect {
        /// The port.
        port: u16,
        /// Why (refused, timed out, no network, the namespace is gone).
        reason: String,
    },
    /// The HTTP request could not be sent.
    #[error("send request: {0}")]
    Send(String),
    /// No response could be read.
    #[error("read response: {0}")]
    Read(String),
    /// What came back is not an HTTP/1.x status line.
    #[error("malformed HTTP response")]
    Malformed,
    /// The response had a status the check does not accept.
    #[error("http {path} -> {status}")]
    Status {
        /// The path probed.
        path: String,
        /// The status received.
        status: u16,
    },
    /// The exec probe's command exited unsuccessfully.
    #[error("exec {program} -> {code}: {output}")]
    ExecFailed {
        /// Its program.
        program: String,
        /// Its exit code.
        code: i32,
        /// The end of what it printed (stderr, else stdout).
        output: String,
    },
    /// The exec probe's command ran past the probe's timeout.
    #[error("exec {program} timed out after {timeout:?}")]
    ExecTimedOut {
        /// Its program.
        program: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The runtime could not run the probe (no exec in a unikernel, the agent did not answer).
    #[error("{0}")]
    Runtime(String),
    /// An exec probe was asked to reach a port.
    #[error("exec probes do not run in a network namespace")]
    NotANetworkProbe,
    /// The probe's thread could not start, or ended without a result.
    #[error("the probe thread: {0}")]
    Thread(String),
}

/// The result of a probe started by [`spawn`], if it has finished.
pub fn poll(rx: &Receiver<ProbeResult>) -> Option<ProbeResult> {
    match rx.try_recv() {
        Ok(r) => Some(r),
        Err(std::sync::mpsc::TryRecvError::Empty) => None,
        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
            Some(Err(ProbeError::Thread("it ended without a result".into())))
        }
    }
}

/// Starts `probe` against `instance` on its own thread; the result arrives on the returned
/// channel (within about `timeout`). TCP and HTTP probes reach the instance's own loopback (a
/// process's from inside its network namespace, a VM's over vsock through its agent); exec
/// probes run inside the instance, confined like its workload.
pub fn spawn(
    instance: Arc<Workload>,
    probe: &HealthProbe,
    timeout: Duration,
) -> Receiver<ProbeResult> {
    let (tx, rx) = channel();
    let probe = probe.clone();
    let spawned = std::thread::Builder::new()
        .name("health-probe".into())
        .spawn({
            let tx = tx.clone();
            move || {
                let result = match &probe {
                    HealthProbe::Exec { command } => exec(&instance, command, timeout),
                    _ => run(&instance, &probe, timeout),
                };
                let _ = tx.send(result);
            }
        });
    if let Err(e) = spawned {
        let _ = tx.send(Err(ProbeError::Thread(format!("start it: {e}"))));
    }
    rx
}

fn exec(instance: &Workload, command: &[String], timeout: Duration) -> ProbeResult {
    let out = instance
        .exec(command, timeout)
        .map_err(|e| ProbeError::Runtime(e.to_string()))?;
    let tail = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        let start = text.len().saturating_sub(200);
        text.get(start..).unwrap_or("").to_string()
    };
    let program = command[0].clone();
    match out.code {
        Some(0) => Ok(format!("exec {program} -> 0")),
        Some(code) => Err(ProbeError::ExecFailed {
            program,
            code,
            output: tail(if out.stderr.is_empty() {
                &out.stdout
            } else {
                &out.stderr
            }),
        }),
        None => Err(ProbeError::ExecTimedOut { program, timeout }),
    }
}

/// Connects to 127.0.0.1:`port` inside the network namespace `netns`, from a short-lived
/// thread (`setns` changes only the calling thread's namespace).
pub fn connect_in(netns: &File, port: u16, timeout: Duration) -> Result<TcpStream, ProbeError> {
    connect_to_in(netns, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), timeout)
}

/// Connects to `addr` from inside the network namespace `netns`.
pub fn connect_to_in(
    netns: &File,
    addr: SocketAddrV4,
    timeout: Duration,
) -> Result<TcpStream, ProbeError> {
    let port = addr.port();
    let unreachable = |reason: String| ProbeError::Connect { port, reason };
    let netns = netns.try_clone().map_err(|e| unreachable(e.to_string()))?;
    osvm_net::netns::run_in(netns, move || connect(addr, timeout))
        .map_err(|e| unreachable(e.to_string()))?
        .map_err(|e| unreachable(e.to_string()))
}

fn connect(addr: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr.into(), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn run(instance: &Workload, probe: &HealthProbe, timeout: Duration) -> ProbeResult {
    let connect = |port: u16, timeout| instance.connect(port, timeout);
    match probe {
        HealthProbe::Tcp { port } => {
            connect(*port, timeout).map(|_| format!("tcp {port} accepted"))
        }
        HealthProbe::Http {
            path,
            port,
            expect_status,
        } => {
            let mut stream = connect(*port, timeout)?;
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: osvm-health\r\n\r\n"
            );
            stream
                .write_all(request.as_bytes())
                .map_err(|e| ProbeError::Send(e.to_string()))?;
            let mut head = [0u8; 512];
            let n = stream
                .read(&mut head)
                .map_err(|e| ProbeError::Read(e.to_string()))?;
            let status = parse_status(&head[..n]).ok_or(ProbeError::Malformed)?;
            let ok = match expect_status {
                Some(want) => status == *want,
                None => (200..400).contains(&status),
            };
            if ok {
                Ok(format!("http {path} -> {status}"))
            } else {
                Err(ProbeError::Status {
                    path: path.clone(),
                    status,
                })
            }
        }
        HealthProbe::Exec { .. } => Err(ProbeError::NotANetworkProbe),
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status(b"HTTP/1.0 200 OK\r\nServer: x\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
