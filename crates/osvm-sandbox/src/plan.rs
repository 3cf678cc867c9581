//! The launch plan: everything the launcher process needs, written by the runtime to
//! `plan.json` in the instance directory and read back by the re-exec'd launcher.
//!
//! Keeping it on disk (rather than only in a pipe) lets a restarted daemon see exactly how an
//! instance was confined.

use std::path::PathBuf;

use osvm_core::LaunchSpec;
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupPaths;

/// The first host uid/gid of the range that uid 0 inside a sandbox maps to when osvm runs as
/// root: `0x7000_0000`, above the ranges systemd hands to containers (`0x80000..0x6fffffff`)
/// and far from login users.
pub const DEFAULT_ID_BASE: u32 = 0x7000_0000;
/// How many ids a sandbox gets (uid/gid 0..65535 inside), as container runtimes do.
pub const DEFAULT_ID_COUNT: u32 = 65_536;

/// How ids inside the user namespace map to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// The host id that id 0 inside maps to.
    pub host_base: u32,
    /// How many consecutive ids are mapped.
    pub count: u32,
}

impl IdMap {
    /// The `uid_map`/`gid_map` line for this mapping.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.count)
    }
}

/// Everything the launcher needs to build the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Unique instance id (`<component>-<8 hex>`).
    pub instance_id: String,
    /// What to run and how to limit it.
    pub launch: LaunchSpec,
    /// The instance's directory on the host (plan, logs, exit record).
    pub instance_dir: PathBuf,
    /// An empty host directory the launcher mounts the new root on (inside its own mount
    /// namespace, so the host never sees the mounts).
    pub root_dir: PathBuf,
    /// The component's persistent state directory on the host, bound writable at `/data`.
    pub data_dir: PathBuf,
    /// The sandbox's control groups.
    pub cgroup: CgroupPaths,
    /// The user namespace's id mapping.
    pub id_map: IdMap,
    /// Whether the launcher runs as host root (it then may map a whole range and set groups).
    pub host_root: bool,
    /// How many listening sockets the runtime handed over (at [`LISTEN_FD_BASE`] onwards in
    /// the launcher; the workload gets them at 3 onwards, systemd style).
    #[serde(default)]
    pub listen_fds: usize,
    /// The workload's stdout is the launcher's own stdout (a channel the runtime's caller
    /// reads, such as an MCP stdio transport) instead of a pipe drained into `stdout.log`.
    #[serde(default)]
    pub stdout_channel: bool,
}

/// Where the launcher finds the listening sockets handed to the workload.
pub const LISTEN_FD_BASE: i32 = 100;
/// At most this many listening sockets are handed over.
pub const MAX_LISTEN_FDS: usize = 16;

/// Where `/data` is inside the sandbox.
pub const DATA_DIR_INSIDE: &str = "/data";
