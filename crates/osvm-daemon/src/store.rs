//! Durable state in one redb file (`<state dir>/osvm.redb`).
//!
//! Tables (values are JSON, so records can grow fields without a migration; the schema version
//! changes when a change cannot be read by older code or the other way round):
//! - `meta`: `schema_version`;
//! - `stacks`: stack name -> the validated stack as applied;
//! - `components`: `<stack>/<component>` -> what the control plane knows and intends for it;
//! - `instances`: instance id -> when it started and how it ended;
//! - `events`: sequence number -> one event, in order.
//!
//! Every write is one redb transaction, committed durably before the call returns: a `kill -9`
//! of the daemon loses at most the write in flight, never a committed one.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use osvm_core::ExitStatus;
use osvm_core::model::ComponentStatus;
use osvm_core::stack::Stack;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The schema this code reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STACKS: TableDefinition<&str, &[u8]> = TableDefinition::new("stacks");
const COMPONENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("components");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, another process holding the file).
    #[error("state file {path}: {message}")]
    Db {
        /// The state file.
        path: PathBuf,
        /// What redb said.
        message: String,
    },
    /// The file was written by a different schema.
    #[error(
        "state file {path} has schema version {found}, this osvm reads version {expected}; \
         use the osvm that wrote it, or move the file away to start afresh"
    )]
    Schema {
        /// The state file.
        path: PathBuf,
        /// The version in the file.
        found: u64,
        /// The version this code reads.
        expected: u64,
    },
    /// A record could not be encoded or decoded.
    #[error("state file {path}: record {key}: {message}")]
    Record {
        /// The state file.
        path: PathBuf,
        /// The record's key.
        key: String,
        /// What went wrong.
        message: String,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stack as applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackRecord {
    /// The validated stack.
    pub stack: Stack,
    /// When it was (last) applied.
    pub applied_at_ms: u64,
}

/// What the daemon is about to do to a component; written before acting, cleared after, so a
/// restarted daemon knows which actions may be half done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Intent {
    /// Starting instance `instance`.
    Start {
        /// The id the new instance gets.
        instance: String,
    },
    /// Stopping instance `instance`.
    Stop {
        /// The instance being stopped.
        instance: String,
    },
}

/// What the control plane knows and intends for one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentRecord {
    /// The stack it belongs to.
    pub stack: String,
    /// Its name in the stack.
    pub name: String,
    /// Whether it should run (false after `osvm stop`).
    pub enabled: bool,
    /// Its current status.
    pub status: ComponentStatus,
    /// The current (or last) instance.
    pub instance: Option<String>,
    /// An action begun and not yet recorded as done.
    pub intent: Option<Intent>,
    /// Restarts so far.
    pub restarts: u32,
    /// Exponent of the next restart delay.
    pub backoff_exp: u32,
    /// How the last instance ended.
    pub last_exit: Option<ExitStatus>,
    /// Why it is in its status (failures, give-ups).
    pub reason: String,
    /// When a scheduled (re)start is due, so that a restarted daemon keeps the backoff.
    #[serde(default)]
    pub next_start_ms: Option<u64>,
    /// The instance before the current one (whose logs stay readable after it ended).
    #[serde(default)]
    pub last_instance: Option<String>,
    /// A hot-swap under way.
    #[serde(default)]
    pub swap: Option<SwapRecord>,
    /// How the last hot-swap ended.
    #[serde(default)]
    pub last_swap: Option<SwapOutcome>,
}

/// Where a hot-swap is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapPhase {
    /// The new instance runs beside the old one and must become ready.
    Starting,
    /// The service address sends to the new instance; it must stay healthy.
    Switched,
    /// The new instance is the component's; the old one's connections are finishing.
    Draining,
    /// The swap failed: traffic is back on the old instance and the new one is stopping.
    RollingBack,
}

/// A hot-swap under way, durably: what a restarted daemon needs to finish or undo it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapRecord {
    /// The new instance.
    pub new_instance: String,
    /// The old instance (the component's instance until the swap is confirmed).
    pub old_instance: Option<String>,
    /// Where it is.
    pub phase: SwapPhase,
    /// When it began.
    pub began_ms: u64,
    /// The component as it runs once the swap is done.
    pub component: osvm_core::stack::Component,
    /// Percent of new connections the new instance gets now.
    #[serde(default)]
    pub weight: u8,
}

/// How a hot-swap ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapOutcome {
    /// The instance it started.
    pub new_instance: String,
    /// True when the new instance serves now; false when the swap was rolled back.
    pub done: bool,
    /// What happened, in words.
    pub reason: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

impl ComponentRecord {
    /// A component that was just applied and has not started yet.
    pub fn new(stack: &str, name: &str) -> Self {
        Self {
            stack: stack.into(),
            name: name.into(),
            enabled: true,
            status: ComponentStatus::Starting,
            instance: None,
            intent: None,
            restarts: 0,
            backoff_exp: 0,
            last_exit: None,
            reason: String::new(),
            next_start_ms: None,
            last_instance: None,
            swap: None,
            last_swap: None,
        }
    }

    /// The record's key: `<stack>/<component>`.
    pub fn key(&self) -> String {
        component_key(&self.stack, &self.name)
    }
}

/// The key of component `name` in stack `stack`.
pub fn component_key(stack: &str, name: &str) -> String {
    format!("{stack}/{name}")
}

/// One instance of a component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The instance id (its directory under `instances/`).
    pub id: String,
    /// `<stack>/<component>`.
    pub component: String,
    /// When it was started.
    pub started_at_ms: u64,
    /// When it ended, if it has.
    pub ended_at_ms: Option<u64>,
    /// How it ended, if it has.
    pub exit: Option<ExitStatus>,
}

/// What an [`Event`] records. On the wire and in the store it is the kebab-case name
/// (`start-failed`, `swap-rolled-back`, ...); a name this build does not know (written by a newer
/// daemon) reads back as [`EventKind::Other`] rather than failing the whole event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Adopted,
    Booting,
    CaCreated,
    CaExpiring,
    CaRotation,
    CaRotationFailed,
    CaRotationFinished,
    Changed,
    Confined,
    Daemon,
    Done,
    Down,
    EndedWhileAway,
    Error,
    Exited,
    Failed,
    Healthy,
    Identity,
    IdentityRenewed,
    IdentityDeliveryFailed,
    IdentityReload,
    IdentityReloadFailed,
    IdentityRenewalFailed,
    IdentityTrustFailed,
    Lost,
    McpFailed,
    McpUnavailable,
    Network,
    NetworkFailed,
    NetworkPolicy,
    NetworkTeardownFailed,
    NeverReady,
    PolicyAdd,
    PolicyRemove,
    /// Connections through a component's published ports since the last report.
    Published,
    Reach,
    Removed,
    RestartRequested,
    RestartScheduled,
    Running,
    StartFailed,
    StartRequested,
    Started,
    StopFailed,
    StopRequested,
    Stopped,
    Stopping,
    StoreError,
    SwapConfirmed,
    SwapDone,
    SwapDrained,
    SwapRolledBack,
    SwapRollingBack,
    SwapStarted,
    SwapSwitched,
    Unhealthy,
    Up,
    Warning,
    /// A kind this build does not know.
    #[serde(other)]
    Other,
}

impl EventKind {
    /// Every kind this build emits, in the order `docs/api/openapi.json` lists them.
    pub const ALL: &[EventKind] = &[
        Self::Adopted,
        Self::Booting,
        Self::CaCreated,
        Self::CaExpiring,
        Self::CaRotation,
        Self::CaRotationFailed,
        Self::CaRotationFinished,
        Self::Changed,
        Self::Confined,
        Self::Daemon,
        Self::Done,
        Self::Down,
        Self::EndedWhileAway,
        Self::Error,
        Self::Exited,
        Self::Failed,
        Self::Healthy,
        Self::Identity,
        Self::IdentityRenewed,
        Self::IdentityDeliveryFailed,
        Self::IdentityReload,
        Self::IdentityReloadFailed,
        Self::IdentityRenewalFailed,
        Self::IdentityTrustFailed,
        Self::Lost,
        Self::McpFailed,
        Self::McpUnavailable,
        Self::Network,
        Self::NetworkFailed,
        Self::NetworkPolicy,
        Self::NetworkTeardownFailed,
        Self::NeverReady,
        Self::PolicyAdd,
        Self::PolicyRemove,
        Self::Published,
        Self::Reach,
        Self::Removed,
        Self::RestartRequested,
        Self::RestartScheduled,
        Self::Running,
        Self::StartFailed,
        Self::StartRequested,
        Self::Started,
        Self::StopFailed,
        Self::StopRequested,
        Self::Stopped,
        Self::Stopping,
        Self::StoreError,
        Self::SwapConfirmed,
        Self::SwapDone,
        Self::SwapDrained,
        Self::SwapRolledBack,
        Self::SwapRollingBack,
        Self::SwapStarted,
        Self::SwapSwitched,
        Self::Unhealthy,
        Self::Up,
        Self::Warning,
    ];

    /// The kebab-case name, as stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adopted => "adopted",
            Self::Booting => "booting",
            Self::CaCreated => "ca-created",
            Self::CaExpiring => "ca-expiring",
            Self::CaRotation => "ca-rotation",
            Self::CaRotationFailed => "ca-rotation-failed",
            Self::CaRotationFinished => "ca-rotation-finished",
            Self::Changed => "changed",
            Self::Confined => "confined",
            Self::Daemon => "daemon",
            Self::Done => "done",
            Self::Down => "down",
            Self::EndedWhileAway => "ended-while-away",
            Self::Error => "error",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Healthy => "healthy",
            Self::Identity => "identity",
            Self::IdentityRenewed => "identity-renewed",
            Self::IdentityDeliveryFailed => "identity-delivery-failed",
            Self::IdentityReload => "identity-reload",
            Self::IdentityReloadFailed => "identity-reload-failed",
            Self::IdentityRenewalFailed => "identity-renewal-failed",
            Self::IdentityTrustFailed => "identity-trust-failed",
            Self::Lost => "lost",
            Self::McpFailed => "mcp-failed",
            Self::McpUnavailable => "mcp-unavailable",
            Self::Network => "network",
            Self::NetworkFailed => "network-failed",
            Self::NetworkPolicy => "network-policy",
            Self::NetworkTeardownFailed => "network-teardown-failed",
            Self::NeverReady => "never-ready",
            Self::PolicyAdd => "policy-add",
            Self::PolicyRemove => "policy-remove",
            Self::Published => "published",
            Self::Reach => "reach",
            Self::Removed => "removed",
            Self::RestartRequested => "restart-requested",
            Self::RestartScheduled => "restart-scheduled",
            Self::Running => "running",
            Self::StartFailed => "start-failed",
            Self::StartRequested => "start-requested",
            Self::Started => "started",
            Self::StopFailed => "stop-failed",
            Self::StopRequested => "stop-requested",
            Self::Stopped => "stopped",
            Self::Stopping => "stopping",
            Self::StoreError => "store-error",
            Self::SwapConfirmed => "swap-confirmed",
            Self::SwapDone => "swap-done",
            Self::SwapDrained => "swap-drained",
            Self::SwapRolledBack => "swap-rolled-back",
            Self::SwapRollingBack => "swap-rolling-back",
            Self::SwapStarted => "swap-started",
            Self::SwapSwitched => "swap-switched",
            Self::Unhealthy => "unhealthy",
            Self::Up => "up",
            Self::Warning => "warning",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Something that happened, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log (assigned by the store, from 1).
    pub seq: u64,
    /// When it happened.
    pub at_ms: u64,
    /// The stack, if the event concerns one.
    pub stack: Option<String>,
    /// The component, if the event concerns one.
    pub component: Option<String>,
    /// What happened.
    pub kind: EventKind,
    /// The details, in words.
    pub detail: String,
}

/// The state store.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the state file at `path` and checks its schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db_err = |e: &dyn std::fmt::Display| StoreError::Db {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| db_err(&e))?;
        // It holds every component's environment (and so its secrets): root's alone.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| db_err(&e))?;
        }
        let store = Self {
            db,
            path: path.to_path_buf(),
        };
        let found = {
            let txn = store.db.begin_write().map_err(|e| db_err(&e))?;
            let found = {
                let mut meta = txn.open_table(META).map_err(|e| db_err(&e))?;
                let found = meta
                    .get("schema_version")
                    .map_err(|e| db_err(&e))?
                    .map(|v| v.value());
                if found.is_none() {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(|e| db_err(&e))?;
                }
                // Create every table so that readers never meet a missing one.
                txn.open_table(STACKS).map_err(|e| db_err(&e))?;
                txn.open_table(COMPONENTS).map_err(|e| db_err(&e))?;
                txn.open_table(INSTANCES).map_err(|e| db_err(&e))?;
                txn.open_table(EVENTS).map_err(|e| db_err(&e))?;
                found
            };
            txn.commit().map_err(|e| db_err(&e))?;
            found
        };
        match found {
            Some(v) if v != SCHEMA_VERSION => Err(StoreError::Schema {
                path: path.to_path_buf(),
                found: v,
                expected: SCHEMA_VERSION,
            }),
            _ => Ok(store),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| StoreError::Record {
            path: self.path.clone(),
            key: key.into(),
            message: e.to_string(),
        })
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Record {
            path: self.path.clone(),
            key: key.into(),
            message: e.to_string(),
        })
    }

    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.open_table(table)
            .map_err(|e| self.err(e))?
            .insert(key, bytes)
            .map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(table).map_err(|e| self.err(e))?;
        match t.get(key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(table).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Records `stack` as applied and creates a record for each of its new components, in one
    /// transaction. Components the stack no longer has keep their records (the reconcile loop
    /// stops them and then calls [`Store::remove_component`]).
    pub fn apply_stack(&self, stack: &Stack) -> Result<(), StoreError> {
        let record = StackRecord {
            stack: stack.clone(),
            applied_at_ms: now_ms(),
        };
        let bytes = self.encode(&stack.name, &record)?;
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            txn.open_table(STACKS)
                .map_err(|e| self.err(e))?
                .insert(stack.name.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
            let mut components = txn.open_table(COMPONENTS).map_err(|e| self.err(e))?;
            for c in &stack.components {
                let key = component_key(&stack.name, &c.name);
                if components
                    .get(key.as_str())
                    .map_err(|e| self.err(e))?
                    .is_none()
                {
                    let rec = self.encode(&key, &ComponentRecord::new(&stack.name, &c.name))?;
                    components
                        .insert(key.as_str(), rec.as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Forgets stack `name` (its components' records stay until they are stopped and removed).
    pub fn remove_stack(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let existed = txn
            .open_table(STACKS)
            .map_err(|e| self.err(e))?
            .remove(name)
            .map_err(|e| self.err(e))?
            .is_some();
        txn.commit().map_err(|e| self.err(e))?;
        Ok(existed)
    }

    /// Stack `name`, if applied.
    pub fn stack(&self, name: &str) -> Result<Option<StackRecord>, StoreError> {
        self.get(STACKS, name)
    }

    /// Every applied stack.
    pub fn stacks(&self) -> Result<Vec<StackRecord>, StoreError> {
        self.all(STACKS)
    }

    /// Writes a component's record.
    pub fn put_component(&self, record: &ComponentRecord) -> Result<(), StoreError> {
        let key = record.key();
        self.put(COMPONENTS, &key, &self.encode(&key, record)?)
    }

    /// The record of `<stack>/<name>`.
    pub fn component(
        &self,
        stack: &str,
        name: &str,
    ) -> Result<Option<ComponentRecord>, StoreError> {
        self.get(COMPONENTS, &component_key(stack, name))
    }

    /// Every component record.
    pub fn components(&self) -> Result<Vec<ComponentRecord>, StoreError> {
        self.all(COMPONENTS)
    }

    /// Deletes a component's record.
    pub fn remove_component(&self, stack: &str, name: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.open_table(COMPONENTS)
            .map_err(|e| self.err(e))?
            .remove(component_key(stack, name).as_str())
            .map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Writes an instance's record.
    pub fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        self.put(INSTANCES, &record.id, &self.encode(&record.id, record)?)
    }

    /// The record of instance `id`.
    pub fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.get(INSTANCES, id)
    }

    /// Appends an event (its `seq` is assigned here) and returns it.
    pub fn append_event(&self, mut event: Event) -> Result<Event, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
            let last = events
                .last()
                .map_err(|e| self.err(e))?
                .map(|(k, _)| k.value())
                .unwrap_or(0);
            event.seq = last + 1;
            let bytes = self.encode(&event.seq.to_string(), &event)?;
            events
                .insert(event.seq, bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(event)
    }

    /// The sequence number of the last event (0 when there is none).
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        Ok(events
            .last()
            .map_err(|e| self.err(e))?
            .map_or(0, |(k, _)| k.value()))
    }

    /// Up to `limit` events with a sequence number above `after`, oldest first.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in events
            .range(after + 1..)
            .map_err(|e| self.err(e))?
            .take(limit)
        {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            out.push(self.decode(&k.value().to_string(), v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("osvm-store-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("osvm.redb")
    }

    fn stack() -> Stack {
        osvm_core::stack::parse(
            "[stack]\nname = \"demo\"\n\n[[component]]\nname = \"web\"\ncommand = \"true\"\n\n[[component]]\nname = \"db\"\ncommand = \"true\"\n",
            "demo.toml",
        )
        .unwrap()
    }

    fn event(kind: EventKind, detail: &str) -> Event {
        Event {
            seq: 0,
            at_ms: now_ms(),
            stack: Some("demo".into()),
            component: Some("web".into()),
            kind,
            detail: detail.into(),
        }
    }

    #[test]
    fn what_is_committed_survives_reopening() {
        let path = temp_path("reopen");
        {
            let store = Store::open(&path).unwrap();
            store.apply_stack(&stack()).unwrap();
            let mut web = store.component("demo", "web").unwrap().unwrap();
            web.intent = Some(Intent::Start {
                instance: "web-1234".into(),
            });
            web.restarts = 2;
            store.put_component(&web).unwrap();
            store
                .put_instance(&InstanceRecord {
                    id: "web-1234".into(),
                    component: web.key(),
                    started_at_ms: 1,
                    ended_at_ms: None,
                    exit: None,
                })
                .unwrap();
            store.append_event(event(EventKind::Started, "")).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.stacks().unwrap().len(), 1);
        assert_eq!(store.stack("demo").unwrap().unwrap().stack, stack());
        let web = store.component("demo", "web").unwrap().unwrap();
        assert_eq!(
            web.intent,
            Some(Intent::Start {
                instance: "web-1234".into()
            })
        );
        assert_eq!(web.restarts, 2);
        assert_eq!(store.components().unwrap().len(), 2);
        assert_eq!(
            store.instance("web-1234").unwrap().unwrap().component,
            "demo/web"
        );
        assert_eq!(
            store.events_after(0, 10).unwrap()[0].kind,
            EventKind::Started
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn reapplying_keeps_component_state_and_removal_forgets() {
        let path = temp_path("reapply");
        let store = Store::open(&path).unwrap();
        store.apply_stack(&stack()).unwrap();
        let mut db = store.component("demo", "db").unwrap().unwrap();
        db.restarts = 4;
        store.put_component(&db).unwrap();
        store.apply_stack(&stack()).unwrap();
        assert_eq!(store.component("demo", "db").unwrap().unwrap().restarts, 4);
        assert!(store.remove_stack("demo").unwrap());
        assert!(!store.remove_stack("demo").unwrap());
        assert!(store.stack("demo").unwrap().is_none());
        store.remove_component("demo", "db").unwrap();
        assert!(store.component("demo", "db").unwrap().is_none());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn events_are_numbered_in_order_and_paged() {
        let path = temp_path("events");
        let store = Store::open(&path).unwrap();
        for i in 0..5 {
            let e = store
                .append_event(event(EventKind::Exited, &format!("e{i}")))
                .unwrap();
            assert_eq!(e.seq, i + 1);
        }
        let page: Vec<String> = store
            .events_after(2, 2)
            .unwrap()
            .into_iter()
            .map(|e| e.detail)
            .collect();
        assert_eq!(page, ["e2", "e3"]);
        assert!(store.events_after(5, 10).unwrap().is_empty());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn event_kinds_are_kebab_case_names_and_unknown_ones_read_back_as_other() {
        for &kind in EventKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<EventKind>(&json).unwrap(), kind);
        }
        let from_newer: Event = serde_json::from_str(
            r#"{"seq":7,"at_ms":1,"stack":null,"component":null,"kind":"teleported","detail":"x"}"#,
        )
        .unwrap();
        assert_eq!(from_newer.kind, EventKind::Other);
        assert_eq!(from_newer.detail, "x");
    }

    #[test]
    fn the_api_document_lists_every_event_kind() {
        let doc: serde_json::Value = serde_json::from_str(crate::api::OPENAPI).unwrap();
        let listed: Vec<&str> = doc["components"]["schemas"]["Event"]["properties"]["kind"]["enum"]
            .as_array()
            .expect("Event.kind has an enum")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(listed, known);
        let mut sorted = known.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), known.len(), "a kind is listed twice");
    }

    #[test]
    fn a_file_of_another_schema_is_refused_with_both_versions() {
        let path = temp_path("schema");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path).err().unwrap();
        assert!(
            matches!(
                err,
                StoreError::Schema {
                    found: 99,
                    expected: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("schema version 99"));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
