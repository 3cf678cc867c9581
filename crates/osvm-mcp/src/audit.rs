//! The gateway's audit trail: one JSON line per tool call (and per refused one) in
//! `<state>/mcp/audit.log`.
//!
//! A record says who called (the client identity), what (server and tool; the arguments only as
//! the SHA-256 of their JSON text, so the trail proves what was sent without keeping secrets
//! that arguments may carry), how it ended and how long it took.
//!
//! The file is root's alone (0600: it names clients and what they did) and rotated by size:
//! past [`AuditLog::MAX_BYTES`] it becomes `audit.log.1` (older copies move up to
//! `audit.log.3`, the oldest goes).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server answered (a tool-level error in its result counts as answered).
    Ok,
    /// The server answered with `isError: true`.
    ToolError,
    /// The policy refused it.
    Denied,
    /// The client exceeded its rate.
    RateLimited,
    /// The server did not answer within the call timeout.
    Timeout,
    /// The server was unreachable, crashed, or answered garbage.
    UpstreamError,
    /// The request named no known tool or server.
    Unknown,
    /// The server is known but not running (starting, in backoff, failed).
    Unavailable,
    /// The client cancelled the call before the server answered (the server was told).
    Cancelled,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339 time, milliseconds.
    pub time: String,
    /// The client identity.
    pub client: String,
    /// What was asked: `tools/call`, `tools/list`, `resources/read`, `prompts/get`.
    pub method: String,
    /// The MCP server (its name in the stack), if the request got that far.
    pub server: Option<String>,
    /// The tool (or resource, prompt) name on that server.
    pub tool: Option<String>,
    /// SHA-256 of the arguments' JSON text.
    pub args_sha256: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The policy's reason, the error, or nothing.
    pub detail: String,
    /// Milliseconds from the gateway receiving it to the answer.
    pub latency_ms: f64,
}

/// The audit log file.
pub struct AuditLog {
    path: PathBuf,
    /// The open file and how many bytes it holds.
    file: Mutex<Option<(File, u64)>>,
    max_bytes: u64,
}

impl AuditLog {
    /// Appends to `<state_dir>/mcp/audit.log`.
    pub fn open(state_dir: &Path) -> Self {
        Self::with_limit(state_dir, Self::MAX_BYTES)
    }

    /// The size past which the file is rotated.
    pub const MAX_BYTES: u64 = 10 << 20;
    /// Rotated copies kept (`audit.log.1` .. `audit.log.3`).
    pub const KEEP: u32 = 3;

    /// [`AuditLog::open`] rotating past `max_bytes`.
    pub fn with_limit(state_dir: &Path, max_bytes: u64) -> Self {
        Self {
            path: state_dir.join("mcp").join("audit.log"),
            file: Mutex::new(None),
            max_bytes,
        }
    }

    fn open_file(&self) -> std::io::Result<(File, u64)> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        // A file an older osvm made world-readable becomes root's alone.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        let len = file.metadata()?.len();
        Ok((file, len))
    }

    /// Moves `audit.log` to `audit.log.1` (and older copies up, the oldest out).
    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = fs::remove_file(numbered(Self::KEEP));
        for n in (1..Self::KEEP).rev() {
            let _ = fs::rename(numbered(n), numbered(n + 1));
        }
        fs::rename(&self.path, numbered(1))
    }

    /// Where it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record (a failure to write is returned; the call is not undone).
    pub fn write(&self, mut record: Record) -> std::io::Result<()> {
        if record.time.is_empty() {
            record.time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        }
        let mut line = serde_json::to_vec(&record).expect("records serialize");
        line.push(b'\n');
        let mut file = self.file.lock().expect("audit file");
        if file
            .as_ref()
            .is_some_and(|(_, len)| len + line.len() as u64 > self.max_bytes && *len > 0)
        {
            *file = None;
            self.rotate()?;
        }
        if file.is_none() {
            *file = Some(self.open_file()?);
        }
        let (f, len) = file.as_mut().expect("opened above");
        // One write per record: lines from concurrent calls never interleave.
        f.write_all(&line)?;
        *len += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> Record {
        Record {
            time: String::new(),
            client: format!("client{n}"),
            method: "tools/call".into(),
            server: Some("fs".into()),
            tool: Some("read".into()),
            args_sha256: None,
            outcome: Outcome::Ok,
            detail: "x".repeat(100),
            latency_ms: 1.0,
        }
    }

    #[test]
    fn the_log_is_root_only_and_rotated_by_size_keeping_three_copies() {
        let dir = std::env::temp_dir().join(format!("osvm-audit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let log = AuditLog::with_limit(&dir, 4096);
        for n in 0..200 {
            log.write(record(n)).unwrap();
        }
        let path = dir.join("mcp/audit.log");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for n in 1..=3 {
            let copy = dir.join(format!("mcp/audit.log.{n}"));
            let len = fs::metadata(&copy).unwrap().len();
            assert!(len > 3000 && len <= 4096, "copy {n}: {len} bytes");
        }
        assert!(!dir.join("mcp/audit.log.4").exists());
        assert!(fs::metadata(&path).unwrap().len() <= 4096);
        // The newest record is in the live file, every line whole.
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.lines().last().unwrap().contains("client199"));
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<Record>(l).is_ok())
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
