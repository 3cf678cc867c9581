//! `containerd-shim-osvm-v1`: containerd's runtime shim (task API v2, containerd 1.6 and 1.7)
//! that runs each container's process in osvm's process sandbox, so that a cluster (or `ctr`)
//! chooses osvm per container with `--runtime io.containerd.osvm.v1` or a RuntimeClass.
//!
//! containerd starts this binary with `start`; it spawns a copy of itself that serves the task
//! API over ttrpc for one container (the crate's `spawn`), and is called again with `delete`
//! to clean up after a shim that died. The same binary is the sandbox's launcher: the monitor
//! the sandbox starts for every container is a fresh exec of it
//! ([`osvm_sandbox::run_if_requested`] first thing).
//!
//! What a container gets: [`spec`] says how the OCI spec becomes an osvm launch, and what is
//! refused.

mod process;
mod service;
mod spec;

fn main() {
    osvm_sandbox::run_if_requested();
    let config = containerd_shim::Config {
        // The sandbox's monitor is this shim's child and the sandbox waits for it (a pidfd and
        // `wait`); the crate's reaper would take its exit status first.
        no_reaper: true,
        // Nothing of a container is re-parented here: each runs in its own pid namespace.
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<service::Service>("io.containerd.osvm.v1", Some(config));
}
