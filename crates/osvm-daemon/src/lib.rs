//! osvm's control plane.
//!
//! - [`store`]: durable state in redb — stacks, components, instances, events — with a schema
//!   version; intent is recorded before the daemon acts and the outcome after, so a daemon
//!   killed at any moment finds out what it was doing when it starts again.
//! - [`engine`]: the reconcile loop — starts, probes, restarts and stops components, records
//!   every decision in the store, and re-adopts what a previous engine left running.
//! - [`health`]: HTTP, TCP and exec health probes.
//! - [`daemon`] and [`api`]: `osvm daemon` — the engine on its own thread and the REST API on
//!   a root-only unix socket.
//! - [`ui`]: the read-only dashboard (`osvm daemon --ui`), behind bearer tokens.
#![forbid(unsafe_code)]

pub mod api;
pub mod daemon;
pub mod engine;
pub mod health;
pub mod identity;
pub mod listen;
pub mod mcp;
pub mod metrics;
pub mod network;
pub mod store;
pub mod ui;
pub mod workload;
