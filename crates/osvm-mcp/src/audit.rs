//! The gateway's audit trail: one JSON line per tool call (and per refused one) in
//! `<state>/mcp/audit.log`.
//!
//! A record says who called (the client identity), what (server and tool; the arguments only as
//! the SHA-256 of their JSON text, so the trail proves what was sent without keeping secrets
//! that arguments may carry), how it ended and how long it took.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
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
    file: Mutex<Option<File>>,
}

impl AuditLog {
    /// Appends to `<state_dir>/mcp/audit.log`.
    pub fn open(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("mcp").join("audit.log"),
            file: Mutex::new(None),
        }
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
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            *file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        // One write per record: lines from concurrent calls never interleave.
        file.as_mut().expect("opened above").write_all(&line)
    }
}
