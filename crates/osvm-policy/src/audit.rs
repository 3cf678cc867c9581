//! The audit log: one JSON line per decision, appended, never rewritten.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Flow, PolicySet, Reason, Verdict};

/// One decision: who asked for what, which rule decided, and whether it passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What made the decision (`policy` for the ruleset, a proxy's name for per-connection checks).
    pub decider: String,
    /// The subject: a component, a SPIFFE ID or an address.
    pub subject: String,
    /// What it acted on: a component and port.
    pub resource: String,
    /// The action (`connect`).
    pub action: String,
    /// Whether it was allowed.
    pub allowed: bool,
    /// The rule that decided (`#3 allow web -> db tcp/5432`), `default deny`, or the access level.
    pub rule: String,
}

impl AuditRecord {
    /// A record stamped now.
    pub fn new(
        decider: &str,
        subject: &str,
        resource: &str,
        action: &str,
        allowed: bool,
        rule: &str,
    ) -> Self {
        Self {
            at_ms: now_ms(),
            decider: decider.into(),
            subject: subject.into(),
            resource: resource.into(),
            action: action.into(),
            allowed,
            rule: rule.into(),
        }
    }

    /// The record of `verdict` on `flow` under `policy`, stamped now.
    pub fn for_flow(decider: &str, policy: &PolicySet, flow: &Flow, verdict: &Verdict) -> Self {
        let rule = match &verdict.reason {
            Reason::Rule { index } => {
                format!("#{index} {}", policy.describe(*index).unwrap_or_default())
            }
            Reason::DefaultDeny => "default deny".into(),
            Reason::Access { endpoint, access } => {
                format!("network access of {endpoint} is {access:?}")
            }
            Reason::FullAccess => "full network access".into(),
        };
        Self {
            at_ms: now_ms(),
            decider: decider.into(),
            subject: flow.from.to_string(),
            resource: format!("{} {}/{}", flow.to, flow.protocol, flow.port),
            action: "connect".into(),
            allowed: verdict.allowed,
            rule,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An append-only JSON-lines file of [`AuditRecord`]s, safe to share between threads.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends one record as one line (a single write, so lines never interleave).
    pub fn append(&self, record: &AuditRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)
    }

    /// Every record in the log at `path`; a torn last line (a crash mid-write) is skipped.
    pub fn read(path: &Path) -> io::Result<Vec<AuditRecord>> {
        let text = std::fs::read_to_string(path)?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}
