//! osvm's control plane.
//!
//! - [`store`]: durable state in redb — stacks, components, instances, events — with a schema
//!   version; intent is recorded before the daemon acts and the outcome after, so a daemon
//!   killed at any moment finds out what it was doing when it starts again.
#![forbid(unsafe_code)]

pub mod store;
