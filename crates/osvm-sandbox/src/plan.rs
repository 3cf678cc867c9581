//! The launch plan: everything the launcher process needs, written by the runtime to
//! `plan.json` in the instance directory (mode 0600: it holds the workload's environment) and
//! handed to the re-exec'd launcher as an open descriptor, never as a path on its command line.
//!
//! Keeping it on disk (rather than only in a pipe) lets a restarted daemon see exactly how an
//! instance was confined.

use std::path::PathBuf;

use osvm_core::LaunchSpec;
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupPaths;

/// How ids inside the user namespace map to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// The host id that id 0 inside maps to; the user namespace is owned by it.
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

/// What the sandbox gets at `/data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPlan {
    /// The component's ext4 volume in this image file (see [`crate::volume`]), of this size.
    Volume {
        /// The image on the host.
        image: PathBuf,
        /// Its size: the cap.
        bytes: u64,
    },
    /// A private tmpfs of at most this many bytes, gone with the sandbox.
    Scratch {
        /// Its cap.
        bytes: u64,
    },
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
    /// What the sandbox gets at `/data`.
    pub data: DataPlan,
    /// The sandbox's control groups.
    pub cgroup: CgroupPaths,
    /// The user namespace's id mapping (its first host id owns the namespace).
    pub id_map: IdMap,
    /// The range is the instance's own and goes back to the pool when it ends (see
    /// [`crate::ids`]).
    #[serde(default)]
    pub release_ids: bool,
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
    /// The workload keeps `CAP_SETPCAP` and `CAP_SYS_CHROOT` in its user namespace and may
    /// call `chroot` (see `StartOptions::helper_caps`: osvm's own helpers only).
    #[serde(default)]
    pub helper_caps: bool,
    /// The version of the osvm that wrote the plan ([`BUILD`]): the launcher, a binary of
    /// its own, refuses a plan from another version.
    #[serde(default)]
    pub build: String,
}

/// The version written into every plan and checked by the launcher.
pub const BUILD: &str = env!("CARGO_PKG_VERSION");

/// Where the launcher finds the listening sockets handed to the workload.
pub const LISTEN_FD_BASE: i32 = 100;
/// At most this many listening sockets are handed over.
pub const MAX_LISTEN_FDS: usize = 16;

/// Where `/data` is inside the sandbox.
pub const DATA_DIR_INSIDE: &str = "/data";
/// Where the identity files are inside the sandbox.
pub const IDENTITY_INSIDE: &str = "/run/osvm/identity";
