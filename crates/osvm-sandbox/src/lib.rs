//! osvm's process sandbox: a component runs as a confined Linux process.
//!
//! Confinement, in the order it is applied (see [`launcher::init`]): new user namespace (uid 0
//! inside is an unprivileged uid range outside, the component's own ([`ids`]), which also owns
//! the namespace), pid, mount, network (only `lo`), ipc, uts and cgroup namespaces; a cgroup
//! with memory, CPU and pids limits (v2, v1 or hybrid hosts); a minimal root file system built
//! with the new mount API and `pivot_root`, `/data` the component's own capped volume
//! ([`volume`]); `no_new_privs`; Landlock; every capability dropped, bounding set included; a
//! seccomp allowlist; rlimits; no inherited descriptor. Nothing is optional: if a step fails,
//! the start fails and says which step.
//!
//! The caller may be multi-threaded. It never forks into code that allocates: it spawns a
//! fresh exec of the launcher binary, which calls [`launcher::run_if_requested`] first thing.

pub mod cgroup;
pub mod files;
pub mod host;
pub mod ids;
pub mod launcher;
pub mod output;
pub mod plan;
pub mod runtime;
pub mod volume;

pub use launcher::run_if_requested;
pub use runtime::{
    Adopted, ExecOutput, ExecProcess, SandboxConfig, SandboxInstance, SandboxRuntime, StartOptions,
    new_instance_id,
};
