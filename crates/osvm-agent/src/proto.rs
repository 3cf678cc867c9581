//! The protocol between osvm (the host) and `osvm-agent` (the guest's init), over vsock.
//!
//! Three vsock ports, all carried by the VM's vhost-user-vsock backend in Firecracker's hybrid
//! style (the host side is a unix socket; see `osvm-microvm`'s `vsock` module):
//!
//! - [`EVENTS_PORT`] (guest -> host). The agent connects out as soon as vsock works and sends
//!   [`Event::Hello`]; the host answers with one [`Launch`] that says what to run; the agent
//!   reports [`Event::Started`] (or [`Event::StartFailed`]) and, later, [`Event::Exited`]. The
//!   connection stays open for the VM's life: EOF means the guest is gone. The host never
//!   connects in before the hello (connecting into a booting guest can wedge the backend).
//! - [`LOGS_PORT`] (guest -> host). The workload's stdout and stderr, as [`LogChunk`]s.
//! - [`CONTROL_PORT`] (host -> guest). One [`Request`] per connection, one [`Response`] back;
//!   after [`Request::Forward`] is answered with [`Response::Ok`] the connection becomes a byte
//!   stream to a TCP port on the guest's loopback.
//!
//! A workload launched with [`Launch::stdio`] has its stdin and stdout on one more control
//! connection, after [`Request::Stdio`] (an MCP server's stdio channel).
//!
//! A host that restarted (the daemon was killed; QEMU and the guest ran on) takes the VM back
//! from the control port: [`Request::Reattach`] is answered with the workload's state
//! ([`Response::Attached`]) and the connection becomes the events connection; after
//! [`Request::Logs`] it becomes the logs connection, starting with the output the agent held
//! while no host read it.
//!
//! Every message is a frame: a 4-byte big-endian length, then that many bytes of JSON
//! `{"v": 1, "msg": ...}`. Frames larger than [`MAX_FRAME`] are refused before anything is
//! read into memory; a frame that is not valid JSON of the expected shape, or has another
//! version, is an error. Whoever reads a bad frame answers [`Response::Error`] where it can and
//! closes the connection: a frame boundary cannot be trusted after a bad length.
//!
//! Log chunks use the same length prefix with a binary body: one byte for the stream
//! (1 stdout, 2 stderr) and the bytes as written.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks; a frame with another is refused.
pub const VERSION: u32 = 1;
/// The largest frame either side accepts, in bytes (length prefix excluded).
pub const MAX_FRAME: u32 = 1 << 20;
/// The largest log chunk the agent sends (output is split into chunks of at most this).
pub const MAX_LOG_CHUNK: usize = 32 * 1024;
/// The host connects to this guest port for [`Request`]s.
pub const CONTROL_PORT: u32 = 1024;
/// The agent connects to this host port for the [`Event`] stream.
pub const EVENTS_PORT: u32 = 1025;
/// The agent connects to this host port for the workload's output.
pub const LOGS_PORT: u32 = 1026;
/// The CID under which a guest reaches the host.
pub const HOST_CID: u32 = 2;
/// The most output an exec health check returns per stream; the rest is cut.
pub const MAX_EXEC_OUTPUT: usize = 64 * 1024;
/// The image's last file: the image's digest. The guest kernel unpacks the image in archive
/// order and stops at its first write error (a root file system too small for the image), so
/// this file is in the guest only when every other file is, whole.
pub const IMAGE_MARK: &str = "/.osvm-image";

/// What went wrong with a frame.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The connection failed or closed mid-frame.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The length prefix is larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME} bytes")]
    TooLarge(u32),
    /// The body is not JSON of the expected shape.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body is of another protocol version.
    #[error("protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(u32),
}

/// Sent by the agent on the events connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The agent is up and vsock works.
    Hello {
        /// The agent's version.
        agent: String,
        /// The guest kernel's release (`uname -r`).
        kernel: String,
        /// Milliseconds since the guest kernel started.
        uptime_ms: u64,
        /// The content of [`IMAGE_MARK`] (the image's digest); none when the image did not
        /// unpack completely.
        #[serde(default)]
        image: Option<String>,
    },
    /// The workload was started.
    Started {
        /// Its process id inside the guest.
        pid: u32,
    },
    /// The workload could not be started; the VM powers off after this.
    StartFailed {
        /// Why.
        error: String,
    },
    /// The workload ended; the VM powers off after this.
    Exited {
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
}

/// The host's answer to [`Event::Hello`]: what the guest runs and how it is connected.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// The guest's hostname.
    pub hostname: String,
    /// The program, an absolute path in the guest.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Its working directory (default `/`).
    pub working_dir: Option<String>,
    /// The guest's address on its network interface, if it has one.
    pub network: Option<GuestNetwork>,
    /// `/etc/hosts` lines: (address, names).
    pub hosts: Vec<(String, String)>,
    /// A block device holding the component's ext4 data volume, mounted at `/data` before the
    /// workload starts.
    #[serde(default)]
    pub data_device: Option<String>,
    /// The component's identity files, written to [`IDENTITY_DIR`] before the workload starts.
    #[serde(default)]
    pub identity: Vec<IdentityFile>,
    /// Host directories shared into the guest (virtio-fs), mounted before the workload starts.
    #[serde(default)]
    pub mounts: Vec<GuestMount>,
    /// The workload's stdin and stdout are a channel to the host (an MCP server's stdio),
    /// reached with [`Request::Stdio`], instead of nothing and the logs; stderr is still logged.
    #[serde(default)]
    pub stdio: bool,
    /// The component's `mtls_egress`: listeners on the guest's loopback whose connections the
    /// agent makes mutual TLS with the identity in [`IDENTITY_DIR`].
    #[serde(default)]
    pub tls_egress: Vec<TlsEgress>,
    /// The MAC address `eth0` takes (a guest restored from a snapshot wakes with the MAC of
    /// the guest that was saved).
    #[serde(default)]
    pub mac: Option<String>,
    /// The host's wall-clock time when it sent the launch, in nanoseconds since the Unix
    /// epoch: the agent steps the guest's clock to it (a restored guest's clock is behind by
    /// the time since its snapshot).
    #[serde(default)]
    pub time_unix_ns: Option<u64>,
    /// Bytes from the host's `getrandom`, mixed into the guest's entropy pool before the
    /// kernel's random number generator is reseeded: copies restored from one snapshot must
    /// not draw the same random numbers.
    #[serde(default)]
    pub entropy: Vec<u8>,
}

/// One `mtls_egress` entry as the guest serves it: plain TCP accepted on `127.0.0.1:listen`,
/// carried over mutual TLS to `upstream` (the target's service address on the hub, whose mTLS
/// ingress ends it), whose certificate must name `server_name` and belong to `trust_domain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsEgress {
    /// The port on the guest's loopback.
    pub listen: u16,
    /// Where the connection goes.
    pub upstream: std::net::SocketAddr,
    /// The DNS name the server's certificate must carry (`db.shop.osvm`).
    pub server_name: String,
    /// The trust domain the server's SPIFFE ID must be in.
    pub trust_domain: String,
}

/// A host directory the guest mounts: a virtio-fs device's tag, where it goes, and whether
/// it is read-only (the host's side refuses writes too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestMount {
    /// The virtio-fs tag.
    pub tag: String,
    /// An absolute path in the guest.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Where the guest keeps the component's identity, as a process sandbox has it.
pub const IDENTITY_DIR: &str = "/run/osvm/identity";

/// One identity file (`cert.pem`, `key.pem`, `bundle.pem`, `crl.pem`): its name, mode and
/// PEM text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// A plain file name (no `/`).
    pub name: String,
    /// Its permission bits.
    pub mode: u32,
    /// Its contents.
    pub text: String,
}

/// The guest's IPv4 configuration on `eth0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNetwork {
    /// Address with prefix length, e.g. `10.213.0.2/30`.
    pub address: String,
    /// The default gateway.
    pub gateway: String,
}

/// A request on the control port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is the agent alive?
    Ping,
    /// Run a command in the guest and return its output (health checks, identity reloads).
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
        /// Killed after this many milliseconds.
        timeout_ms: u64,
    },
    /// Send a signal to the workload.
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// SIGTERM the workload, SIGKILL it after `grace_ms`, report its exit, power off.
    Shutdown {
        /// How long the workload gets to stop.
        grace_ms: u64,
    },
    /// Turn this connection into a byte stream to `127.0.0.1:port` in the guest.
    Forward {
        /// The TCP port.
        port: u16,
    },
    /// Replace the identity files (a renewal, a CA rotation, a revocation list).
    Identity {
        /// Every file, each replaced whole.
        files: Vec<IdentityFile>,
    },
    /// Turn this connection into the workload's stdio channel (a launch with `stdio`): what
    /// the host writes is the workload's stdin, what the workload writes to stdout comes back.
    /// Answered with [`Response::Ok`] first. One channel per workload: a second request is
    /// refused while one is open.
    Stdio,
    /// A restarted host takes the events over: answered with [`Response::Attached`], then this
    /// connection carries the [`Event`]s (the previous one is closed).
    Reattach,
    /// A restarted host takes the logs over: answered with [`Response::Ok`], then this
    /// connection carries the log chunks (the previous one is closed).
    Logs,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Done (for `Forward`: the stream follows).
    Ok,
    /// Answer to `Ping`.
    Pong {
        /// Milliseconds since the guest kernel started.
        uptime_ms: u64,
    },
    /// Result of `Exec`.
    ExecResult {
        /// Exit code (`None` when killed by a signal or the timeout).
        code: Option<i32>,
        /// The signal that killed it, if one did.
        #[serde(default)]
        signal: Option<i32>,
        /// Whether the timeout killed it.
        timed_out: bool,
        /// Its standard output, cut at [`MAX_EXEC_OUTPUT`] bytes.
        stdout: String,
        /// Its standard error, cut at [`MAX_EXEC_OUTPUT`] bytes.
        stderr: String,
    },
    /// Answer to `Reattach`: where the workload is.
    Attached {
        /// The workload's pid while it runs; `None` before its start and after its exit.
        pid: Option<u32>,
        /// Whether it has exited (then `code` and `signal` say how).
        exited: bool,
        /// Its exit code.
        code: Option<i32>,
        /// The signal that killed it.
        signal: Option<i32>,
    },
    /// The request failed or was malformed.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Which stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Output of the workload, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// Which stream.
    pub stream: Stream,
    /// The bytes.
    pub data: Vec<u8>,
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    v: u32,
    msg: &'a T,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming<T> {
    v: u32,
    msg: T,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = serde_json::to_vec(&Envelope { v: VERSION, msg })
        .expect("protocol messages always serialize");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Decodes a frame body (the bytes after the length prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    if body.len() > MAX_FRAME as usize {
        return Err(ProtoError::TooLarge(body.len() as u32));
    }
    match serde_json::from_slice::<Incoming<T>>(body) {
        Ok(m) if m.v == VERSION => Ok(m.msg),
        Ok(m) => Err(ProtoError::Version(m.v)),
        Err(e) => match serde_json::from_slice::<VersionOnly>(body) {
            Ok(v) if v.v != VERSION => Err(ProtoError::Version(v.v)),
            _ => Err(ProtoError::Malformed(e.to_string())),
        },
    }
}

/// Decodes one whole frame (length prefix and body) from `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtoError> {
    let Some((len, body)) = bytes.split_first_chunk::<4>() else {
        return Err(ProtoError::Malformed(format!(
            "{} bytes cannot hold a length prefix",
            bytes.len()
        )));
    };
    let len = u32::from_be_bytes(*len);
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    if body.len() != len as usize {
        return Err(ProtoError::Malformed(format!(
            "length prefix says {len} bytes, {} follow",
            body.len()
        )));
    }
    decode_body(body)
}

/// Writes `msg` as one frame.
pub fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ProtoError> {
    w.write_all(&encode(msg))?;
    w.flush()?;
    Ok(())
}

/// Reads one length prefix; `Ok(None)` on a clean end of stream before it.
fn read_len(r: &mut impl Read) -> Result<Option<u32>, ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    Ok(Some(len))
}

/// Reads one frame; [`ProtoError::Closed`] on a clean end of stream between frames.
pub fn read_msg<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, ProtoError> {
    let len = read_len(r)?.ok_or(ProtoError::Closed)?;
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    decode_body(&body)
}

/// Writes one log chunk.
pub fn write_log(w: &mut impl Write, stream: Stream, data: &[u8]) -> Result<(), ProtoError> {
    for part in data.chunks(MAX_LOG_CHUNK) {
        let mut frame = Vec::with_capacity(5 + part.len());
        frame.extend_from_slice(&(part.len() as u32 + 1).to_be_bytes());
        frame.push(match stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        });
        frame.extend_from_slice(part);
        w.write_all(&frame)?;
    }
    Ok(())
}

/// Reads one log chunk; `Ok(None)` on a clean end of stream.
pub fn read_log(r: &mut impl Read) -> Result<Option<LogChunk>, ProtoError> {
    let Some(len) = read_len(r)? else {
        return Ok(None);
    };
    if len == 0 || len as usize > MAX_LOG_CHUNK + 1 {
        return Err(ProtoError::Malformed(format!(
            "log chunk of {len} bytes (1 to {} allowed)",
            MAX_LOG_CHUNK + 1
        )));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    let stream = match body[0] {
        1 => Stream::Stdout,
        2 => Stream::Stderr,
        other => return Err(ProtoError::Malformed(format!("log stream {other}"))),
    };
    body.remove(0);
    Ok(Some(LogChunk { stream, data: body }))
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
