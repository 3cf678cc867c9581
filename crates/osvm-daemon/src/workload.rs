//! One running instance, whichever runtime started it, as the engine, health probes and
//! hot-swap hold it: the runtime's [`Instance`] (everything it can do is on that trait; this
//! dereferences to it) and where the daemon reaches it from.
//!
//! Nothing here asks which runtime made the instance: how to reach a port is the instance's
//! typed [`Endpoint`] — a network namespace to enter (a process), an address on the hub (a
//! guest with the component's address), or the runtime itself (a guest agent over vsock).

use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use osvm_core::{Conn, Endpoint, Instance};

use crate::health::ProbeError;

/// A running instance.
pub struct Workload {
    inst: Box<dyn Instance>,
    /// The hub's network namespace, from which an instance at a hub address is reached.
    hub: Option<PathBuf>,
}

impl Deref for Workload {
    type Target = dyn Instance;

    fn deref(&self) -> &Self::Target {
        &*self.inst
    }
}

impl Workload {
    /// `inst`, reached from the hub namespace `hub` when it has a hub address.
    pub fn new(inst: Box<dyn Instance>, hub: Option<PathBuf>) -> Self {
        Self { inst, hub }
    }

    /// The runtime's own type, for views that show its facts.
    pub fn downcast<T: 'static>(&self) -> Option<&T> {
        self.inst.as_any().downcast_ref()
    }

    /// A connection to TCP `port` of the instance, through its endpoint.
    pub fn connect(&self, port: u16, timeout: Duration) -> Result<Box<dyn Conn>, ProbeError> {
        let unreachable = |reason: String| ProbeError::Connect { port, reason };
        match self
            .inst
            .endpoint()
            .map_err(|e| unreachable(e.to_string()))?
        {
            Endpoint::Namespace(netns) => {
                crate::health::connect_in(&netns, port, timeout).map(|c| Box::new(c) as _)
            }
            Endpoint::Address(addr) => {
                let hub = self
                    .hub
                    .as_ref()
                    .ok_or("the hub network is not up")
                    .and_then(|p| std::fs::File::open(p).map_err(|_| "the hub namespace is gone"))
                    .map_err(|e| unreachable(e.into()))?;
                crate::health::connect_to_in(&hub, std::net::SocketAddrV4::new(addr, port), timeout)
                    .map(|c| Box::new(c) as _)
            }
            Endpoint::Runtime => self
                .inst
                .connect(port, timeout)
                .map_err(|e| unreachable(e.to_string())),
            Endpoint::Unreachable => Err(unreachable(
                "the instance has no network (only hub stacks give a guest one)".into(),
            )),
        }
    }
}
