//! Host capability probe behind `osvm doctor`.
//!
//! osvm runs components in three kinds of isolation: confined Linux processes (namespaces, cgroups,
//! seccomp, Landlock), QEMU microVMs and Hermit unikernels. Each needs something from the host, and
//! hosts differ a lot: cgroups may be v2, hybrid or legacy; `/dev/kvm` may be hardware KVM or PVM,
//! which only runs PVM-patched guests; QEMU may be missing. This module looks, and says what it saw.
//!
//! The probes really try where trying is cheap and has no lasting effect: every namespace type is
//! unshared in a throwaway forked child, the Landlock ABI is queried with the kernel's own version
//! call, `/dev/kvm` is opened. Everything else is read from `/proc`, `/sys` or the output of a
//! tool's `--version`. External commands run with a deadline and are killed past it, so `doctor`
//! never hangs on a wedged binary.
//!
//! [`Report::collect`] gathers one [`Check`] per probed item; [`Report::render_table`] turns them
//! into a table for the terminal and the report serializes to JSON as is. Nothing here prints.
//! [`Report::all_required_ok`] answers the one question scripts care about: can the process
//! sandbox run here?

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{AccessFlags, Pid, access, geteuid};
use serde::Serialize;

/// Area of the namespace probes.
const AREA_NAMESPACES: &str = "namespaces";
/// Area of the cgroup probes.
const AREA_CGROUPS: &str = "cgroups";
/// Area of the seccomp probes.
const AREA_SECCOMP: &str = "seccomp";
/// Area of the Landlock probe.
const AREA_LANDLOCK: &str = "landlock";
/// Area of identity, no_new_privs and capability probes.
const AREA_PRIVILEGES: &str = "privileges";
/// Area of the nftables probes (component network policy).
const AREA_NETWORK: &str = "network";
/// Area of the KVM probes.
const AREA_KVM: &str = "kvm";
/// Area of what QEMU microVMs need besides KVM.
const AREA_MICROVM: &str = "microvm";
/// Area of the Hermit unikernel launcher.
const AREA_HERMIT: &str = "hermit";

/// The checks the process sandbox cannot do without, as `(area, name)`. Everything else in the
/// report widens what osvm can run (microVMs, Landlock, network policy) but is optional.
const REQUIRED: &[(&str, &str)] = &[
    (AREA_NAMESPACES, "user"),
    (AREA_NAMESPACES, "pid"),
    (AREA_NAMESPACES, "mount"),
    (AREA_NAMESPACES, "net"),
    (AREA_CGROUPS, "controllers"),
    (AREA_CGROUPS, "write access"),
    (AREA_SECCOMP, "support"),
    (AREA_SECCOMP, "filter actions"),
];

/// Where cgroup file systems are mounted on every mainstream distribution.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where systemd mounts the v2 tree in hybrid mode.
const CGROUP_UNIFIED: &str = "/sys/fs/cgroup/unified";
/// Controllers the process sandbox limits components with.
const REQUIRED_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// v1 controllers worth naming in the report (the required ones plus accounting and freezing).
const V1_REPORTED_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];
/// Every cgroup v1 controller name the kernel knows; other mount options (`rw`, `name=systemd`,
/// `clone_children`, ...) are not controllers.
const V1_CONTROLLER_NAMES: [&str; 14] = [
    "cpuset",
    "cpu",
    "cpuacct",
    "io",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
];

/// How long an external tool may take to answer `--version` and the like.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a running external tool is polled for exit.
const COMMAND_POLL: Duration = Duration::from_millis(10);
/// Output kept per stream of an external tool; the rest is drained and dropped so the tool never
/// blocks on a full pipe.
const COMMAND_OUTPUT_LIMIT: usize = 256 * 1024;
/// Directories searched after `PATH`: admin tools such as `nft` live there and a non-root `PATH`
/// often lacks them.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// What each Landlock ABI version added, index 0 being ABI 1.
const LANDLOCK_ABI_FEATURES: [&str; 7] = [
    "fs basic",
    "refer",
    "truncate",
    "TCP bind/connect",
    "ioctl on devices",
    "scoping of abstract unix sockets and signals",
    "logging",
];

/// Oldest kernel with `PR_SET_NO_NEW_PRIVS`; capability dropping predates it.
const MIN_KERNEL_NO_NEW_PRIVS: (u32, u32) = (3, 5);

/// Width the table is wrapped to; the DETAIL column takes what the other columns leave.
const TABLE_WIDTH: usize = 100;
/// DETAIL never gets narrower than this, however wide the other columns are.
const MIN_DETAIL_WIDTH: usize = 30;

/// One probed item of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Subsystem the item belongs to (`namespaces`, `cgroups`, `kvm`, ...); the table groups by it.
    pub area: &'static str,
    /// The item within its area, such as `user` or `controllers`.
    pub name: String,
    /// Whether osvm can use the item on this host as it is.
    pub available: bool,
    /// What was seen, or why the item is unavailable and what would fix it, in plain words.
    pub detail: String,
}

impl Check {
    /// A check that found the item usable.
    fn yes(area: &'static str, name: &str, detail: impl Into<String>) -> Self {
        Self {
            area,
            name: name.to_owned(),
            available: true,
            detail: detail.into(),
        }
    }

    /// A check that found the item missing or unusable.
    fn no(area: &'static str, name: &str, detail: impl Into<String>) -> Self {
        Self {
            area,
            name: name.to_owned(),
            available: false,
            detail: detail.into(),
        }
    }

    /// Whether the process sandbox needs this item (see [`Report::all_required_ok`]).
    pub fn is_required(&self) -> bool {
        REQUIRED
            .iter()
            .any(|&(area, name)| self.area == area && self.name == name)
    }
}

/// Everything `osvm doctor` found out about the host, in probe order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// One entry per probed item, grouped by area in the order the areas were probed.
    pub checks: Vec<Check>,
}

impl Report {
    /// Probes the host.
    ///
    /// The namespace probes fork, so they run first, before this function starts the threads that
    /// read the output of external tools; the forked children stay async-signal-safe regardless.
    pub fn collect() -> Self {
        let is_root = geteuid().is_root();
        let mut checks = namespace_checks(is_root);
        checks.extend(cgroup_checks(is_root));
        checks.extend(seccomp_checks());
        checks.push(landlock_check());
        checks.extend(privilege_checks(is_root));
        checks.extend(nft_checks(is_root));
        let kvm = KvmProbe::probe();
        checks.extend(kvm.checks());
        checks.extend(microvm_checks(is_root));
        checks.push(uhyve_check(kvm.kind));
        Self { checks }
    }

    /// True when every item the process sandbox needs is present and usable: user, pid, mount and
    /// net namespaces; a cgroup hierarchy with the memory, cpu and pids controllers; seccomp with
    /// filters; and root, or cgroups delegated to the current user. A required item missing from
    /// the report counts as unusable.
    pub fn all_required_ok(&self) -> bool {
        REQUIRED.iter().all(|&(area, name)| {
            self.checks
                .iter()
                .any(|c| c.area == area && c.name == name && c.available)
        })
    }

    /// The report as an aligned table with the columns AREA, CHECK, OK and DETAIL, one block per
    /// area, long details wrapped under the DETAIL column. Ends with a newline.
    pub fn render_table(&self) -> String {
        let area_width = column_width("AREA", self.checks.iter().map(|c| c.area));
        let name_width = column_width("CHECK", self.checks.iter().map(|c| c.name.as_str()));
        let ok_width = column_width("OK", ["yes", "no"]);
        let detail_column = area_width + name_width + ok_width + 6;
        let detail_width = TABLE_WIDTH
            .saturating_sub(detail_column)
            .max(MIN_DETAIL_WIDTH);

        let mut out = String::new();
        push_row(
            &mut out,
            [
                ("AREA", area_width),
                ("CHECK", name_width),
                ("OK", ok_width),
            ],
            "DETAIL",
        );

        let mut areas: Vec<&'static str> = Vec::new();
        for check in &self.checks {
            if !areas.contains(&check.area) {
                areas.push(check.area);
            }
        }
        for area in areas {
            out.push('\n');
            let rows = self.checks.iter().filter(|c| c.area == area);
            for (index, check) in rows.enumerate() {
                let area_cell = if index == 0 { area } else { "" };
                let ok_cell = if check.available { "yes" } else { "no" };
                let lines = wrap_words(&check.detail, detail_width);
                let mut lines = lines.iter().map(String::as_str);
                push_row(
                    &mut out,
                    [
                        (area_cell, area_width),
                        (check.name.as_str(), name_width),
                        (ok_cell, ok_width),
                    ],
                    lines.next().unwrap_or(""),
                );
                for line in lines {
                    push_row(
                        &mut out,
                        [("", area_width), ("", name_width), ("", ok_width)],
                        line,
                    );
                }
            }
        }
        out
    }
}

/// Width of a column: its widest cell or its header.
fn column_width<'a>(header: &str, cells: impl IntoIterator<Item = &'a str>) -> usize {
    cells
        .into_iter()
        .map(|cell| cell.chars().count())
        .chain([header.chars().count()])
        .max()
        .unwrap_or(0)
}

/// Appends one table line: padded leading cells, then the unpadded last cell, no trailing blanks.
fn push_row(out: &mut String, cells: [(&str, usize); 3], last: &str) {
    let mut line = String::new();
    for (cell, width) in cells {
        line.push_str(cell);
        line.extend(std::iter::repeat_n(
            ' ',
            width.saturating_sub(cell.chars().count()) + 2,
        ));
    }
    line.push_str(last);
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Greedy word wrap to `width` characters; a word longer than `width` gets a line of its own.
/// Always returns at least one (possibly empty) line.
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let needed = if current.is_empty() {
            word.chars().count()
        } else {
            current.chars().count() + 1 + word.chars().count()
        };
        if needed > width && !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    lines.push(current);
    lines
}

/// Why a probe could not get its answer.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// The external tool is not installed.
    #[error("{program} not found in PATH")]
    NotFound {
        /// Name of the tool looked for.
        program: &'static str,
    },
    /// The external tool exists but could not be started.
    #[error("could not start {}: {source}", path.display())]
    Spawn {
        /// Where the tool was found.
        path: PathBuf,
        /// Why exec failed.
        source: io::Error,
    },
    /// The external tool did not finish in time and was killed.
    #[error("{program} did not answer within {} s and was stopped", timeout.as_secs())]
    Timeout {
        /// Name of the tool.
        program: &'static str,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// Waiting for the external tool failed.
    #[error("waiting for {program} failed: {source}")]
    Wait {
        /// Name of the tool.
        program: &'static str,
        /// What `wait` reported.
        source: io::Error,
    },
    /// A file of /proc or /sys could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read reported.
        source: io::Error,
    },
}

/// Reads a whole text file of /proc or /sys.
fn read_text(path: impl AsRef<Path>) -> Result<String, ProbeError> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(|source| ProbeError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a one-value file such as a sysctl, trimmed; `None` when it is absent or unreadable.
fn read_value(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// External commands
// ---------------------------------------------------------------------------------------------

/// What an external tool printed and how it ended.
#[derive(Debug)]
struct CommandOutput {
    /// How the tool exited.
    status: ExitStatus,
    /// Standard output, lossily decoded, cut at [`COMMAND_OUTPUT_LIMIT`].
    stdout: String,
    /// Standard error, lossily decoded, cut at [`COMMAND_OUTPUT_LIMIT`].
    stderr: String,
}

impl CommandOutput {
    /// First non-empty line of stdout, else of stderr (some tools print versions to stderr).
    fn first_line(&self) -> &str {
        first_nonempty_line(&self.stdout)
            .or_else(|| first_nonempty_line(&self.stderr))
            .unwrap_or("")
    }
}

/// First line of `text` that is not blank, trimmed.
fn first_nonempty_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Looks `program` up in `PATH`, then in the sbin directories.
fn find_in_path(program: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .filter(|dir| dir.is_absolute())
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
}

/// Whether `path` is a regular file with an execute bit.
fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program args` with no stdin and the C locale, waits up to `timeout`, kills it past that.
fn run_command(
    program: &'static str,
    args: &[&str],
    timeout: Duration,
) -> Result<CommandOutput, ProbeError> {
    let path = find_in_path(program).ok_or(ProbeError::NotFound { program })?;
    let mut child = Command::new(&path)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can stop helpers it started too.
        .process_group(0)
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            path: path.clone(),
            source,
        })?;
    let stdout = child.stdout.take().map(spawn_drain);
    let stderr = child.stderr.take().map(spawn_drain);

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                stop_process_group(&mut child);
                return Err(ProbeError::Timeout { program, timeout });
            }
            Ok(None) => thread::sleep(COMMAND_POLL),
            Err(source) => {
                stop_process_group(&mut child);
                return Err(ProbeError::Wait { program, source });
            }
        }
    };
    // A grandchild that inherited the pipes could keep them open; never wait past the deadline.
    let stdout = collect_drain(stdout, deadline);
    let stderr = collect_drain(stderr, deadline);
    Ok(CommandOutput {
        status,
        stdout,
        stderr,
    })
}

/// Kills a tool started by [`run_command`] together with its process group, and reaps it.
///
/// Best effort: the tool may have exited in the meantime, and there is nothing better to do if a
/// signal cannot be sent.
fn stop_process_group(child: &mut Child) {
    match i32::try_from(child.id()) {
        Ok(pid) => {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Err(_) => {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// Reads a pipe to its end on a helper thread, keeping the first [`COMMAND_OUTPUT_LIMIT`] bytes.
fn spawn_drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let room = COMMAND_OUTPUT_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        // The receiver is gone only if the caller gave up waiting; nothing to report then.
        let _ = sender.send(kept);
    });
    receiver
}

/// Takes what a drain thread read, waiting no later than `deadline` (plus a short grace period
/// for a tool that exited right at it).
fn collect_drain(receiver: Option<mpsc::Receiver<Vec<u8>>>, deadline: Instant) -> String {
    let Some(receiver) = receiver else {
        return String::new();
    };
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    receiver
        .recv_timeout(wait)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------

/// A namespace type the sandbox may unshare.
struct NamespaceKind {
    /// Short name used in the report.
    name: &'static str,
    /// The `unshare` flag.
    flag: libc::c_int,
    /// The flag's name, for messages.
    flag_name: &'static str,
    /// Kernel option that provides it, for the "kernel lacks it" hint.
    config: &'static str,
}

/// Every namespace type, in the order the report lists them.
const NAMESPACE_KINDS: [NamespaceKind; 8] = [
    NamespaceKind {
        name: "user",
        flag: libc::CLONE_NEWUSER,
        flag_name: "CLONE_NEWUSER",
        config: "CONFIG_USER_NS",
    },
    NamespaceKind {
        name: "pid",
        flag: libc::CLONE_NEWPID,
        flag_name: "CLONE_NEWPID",
        config: "CONFIG_PID_NS",
    },
    NamespaceKind {
        name: "mount",
        flag: libc::CLONE_NEWNS,
        flag_name: "CLONE_NEWNS",
        config: "mount namespaces",
    },
    NamespaceKind {
        name: "net",
        flag: libc::CLONE_NEWNET,
        flag_name: "CLONE_NEWNET",
        config: "CONFIG_NET_NS",
    },
    NamespaceKind {
        name: "ipc",
        flag: libc::CLONE_NEWIPC,
        flag_name: "CLONE_NEWIPC",
        config: "CONFIG_IPC_NS",
    },
    NamespaceKind {
        name: "uts",
        flag: libc::CLONE_NEWUTS,
        flag_name: "CLONE_NEWUTS",
        config: "CONFIG_UTS_NS",
    },
    NamespaceKind {
        name: "cgroup",
        flag: libc::CLONE_NEWCGROUP,
        flag_name: "CLONE_NEWCGROUP",
        config: "CONFIG_CGROUPS",
    },
    NamespaceKind {
        name: "time",
        flag: libc::CLONE_NEWTIME,
        flag_name: "CLONE_NEWTIME",
        config: "Linux 5.6+ with CONFIG_TIME_NS",
    },
];

use osvm_sandbox::host::{ProbeIdentity, UnshareOutcome, try_unshare};

/// One row per namespace type, each really tried in a child process.
///
/// As root each type is tried alone; otherwise together with a new user namespace, which is how
/// an unprivileged sandbox gets the others.
fn namespace_checks(is_root: bool) -> Vec<Check> {
    let max_userns = read_value("/proc/sys/user/max_user_namespaces");
    NAMESPACE_KINDS
        .iter()
        .map(|kind| {
            let is_user = kind.flag == libc::CLONE_NEWUSER;
            let (flags, how) = if is_root || is_user {
                let how = if is_root { "as root" } else { "as this user" };
                (kind.flag, how.to_owned())
            } else {
                (
                    kind.flag | libc::CLONE_NEWUSER,
                    "inside a new user namespace".to_owned(),
                )
            };
            let call = if flags == kind.flag {
                format!("unshare({})", kind.flag_name)
            } else {
                format!("unshare({}|CLONE_NEWUSER)", kind.flag_name)
            };
            match try_unshare(flags, ProbeIdentity::Current) {
                Ok(UnshareOutcome::Created) => {
                    let mut detail = format!("{call} works {how}");
                    if is_user {
                        if is_root {
                            detail.push_str(&unprivileged_userns_note());
                        }
                        if let Some(max) = &max_userns {
                            detail.push_str(&format!("; max_user_namespaces {max}"));
                        }
                    }
                    Check::yes(AREA_NAMESPACES, kind.name, detail)
                }
                Ok(UnshareOutcome::Refused(errno)) => {
                    let mut detail = format!("unavailable: {call} {how} failed with {errno}");
                    if let Some(hint) = unshare_refusal_hint(kind, errno, max_userns.as_deref()) {
                        detail.push_str("; ");
                        detail.push_str(&hint);
                    }
                    Check::no(AREA_NAMESPACES, kind.name, detail)
                }
                Err(e) => Check::no(AREA_NAMESPACES, kind.name, format!("not probed: {e}")),
            }
        })
        .collect()
}

/// As root: whether unprivileged users can create user namespaces too (rootless use of osvm).
fn unprivileged_userns_note() -> String {
    match try_unshare(libc::CLONE_NEWUSER, ProbeIdentity::Nobody) {
        Ok(UnshareOutcome::Created) => "; unprivileged users can too".to_owned(),
        Ok(UnshareOutcome::Refused(errno)) => {
            let mut note = format!("; unprivileged users cannot ({errno}");
            if let Some(reason) = userns_restriction() {
                note.push_str(": ");
                note.push_str(&reason);
            }
            note.push(')');
            note
        }
        Err(e) => format!("; unprivileged use not probed: {e}"),
    }
}

/// The sysctl that forbids unprivileged user namespaces, if one does.
fn userns_restriction() -> Option<String> {
    const DEBIAN_KNOB: &str = "/proc/sys/kernel/unprivileged_userns_clone";
    const APPARMOR_KNOB: &str = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns";
    const MAX_KNOB: &str = "/proc/sys/user/max_user_namespaces";
    if read_value(DEBIAN_KNOB).as_deref() == Some("0") {
        return Some(format!("{DEBIAN_KNOB} is 0"));
    }
    if read_value(APPARMOR_KNOB).as_deref() == Some("1") {
        return Some(format!("{APPARMOR_KNOB} is 1 (AppArmor restricts them)"));
    }
    if read_value(MAX_KNOB).as_deref() == Some("0") {
        return Some(format!("{MAX_KNOB} is 0"));
    }
    None
}

/// Plain-words reason for an unshare refusal, where the errno tells one.
fn unshare_refusal_hint(
    kind: &NamespaceKind,
    errno: Errno,
    max_userns: Option<&str>,
) -> Option<String> {
    match errno {
        Errno::EINVAL => Some(format!("the kernel lacks {}", kind.config)),
        Errno::ENOSPC => Some(match max_userns {
            Some(max) => format!("namespace limit reached (max_user_namespaces {max})"),
            None => "namespace limit reached".to_owned(),
        }),
        Errno::EPERM => Some(userns_restriction().unwrap_or_else(|| {
            "no privilege for it here (a container's seccomp profile or missing CAP_SYS_ADMIN)"
                .to_owned()
        })),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// cgroups
// ---------------------------------------------------------------------------------------------

/// The host's cgroup layout, detected by the same code the sandbox uses.
use osvm_sandbox::cgroup::Hierarchy as CgroupMode;

/// One line of `/proc/self/mountinfo`, the fields the probes use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    /// Where it is mounted, octal escapes decoded.
    mount_point: PathBuf,
    /// File system type, such as `cgroup` or `cgroup2`.
    fs_type: String,
    /// Per-superblock options; for cgroup v1 these name the controllers.
    super_options: Vec<String>,
}

/// Parses `/proc/self/mountinfo`; malformed lines are skipped.
///
/// Format: `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            let mut tail = after.split(' ');
            let fs_type = tail.next()?;
            let _source = tail.next()?;
            let super_options = tail.next().unwrap_or("");
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mount_field(mount_point)),
                fs_type: fs_type.to_owned(),
                super_options: super_options
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// Decodes the `\ooo` octal escapes the kernel writes for blanks, tabs, newlines and backslashes.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// v1 controller name -> the directory its hierarchy is mounted at (first mount wins).
fn v1_controller_mounts(entries: &[MountEntry]) -> BTreeMap<String, PathBuf> {
    let mut mounts = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.fs_type == "cgroup") {
        for option in &entry.super_options {
            if V1_CONTROLLER_NAMES.contains(&option.as_str()) {
                mounts
                    .entry(option.clone())
                    .or_insert_with(|| entry.mount_point.clone());
            }
        }
    }
    mounts
}

/// One line of `/proc/self/cgroup`: `HIERARCHY_ID:CONTROLLERS:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMembership {
    /// Hierarchy id; 0 is the v2 tree.
    hierarchy_id: u32,
    /// Controllers bound to the hierarchy (empty for v2 and for named hierarchies' names only).
    controllers: Vec<String>,
    /// This process's cgroup within the hierarchy, starting with `/`.
    path: String,
}

/// Parses `/proc/self/cgroup`; malformed lines are skipped.
fn parse_proc_cgroup(text: &str) -> Vec<CgroupMembership> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let hierarchy_id = fields.next()?.parse().ok()?;
            let controllers = fields.next()?;
            let path = fields.next()?;
            Some(CgroupMembership {
                hierarchy_id,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// Where the controllers osvm would use live.
#[derive(Debug)]
enum Hierarchy {
    /// The v2 tree at `/sys/fs/cgroup`, with the controllers of its root.
    V2 {
        /// Names listed in the root's `cgroup.controllers`.
        controllers: BTreeSet<String>,
    },
    /// v1 hierarchies (legacy or hybrid).
    V1 {
        /// Controller -> mount point.
        mounts: BTreeMap<String, PathBuf>,
        /// Controllers of the hybrid v2 tree, if there is one and it could be read.
        unified_controllers: Option<BTreeSet<String>>,
    },
}

/// Splits a `cgroup.controllers` file into names.
fn parse_controller_list(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// Reads the controllers available for `mode`.
fn read_hierarchy(mode: CgroupMode) -> Result<Hierarchy, ProbeError> {
    match mode {
        CgroupMode::Unified => {
            let text = read_text(Path::new(CGROUP_ROOT).join("cgroup.controllers"))?;
            Ok(Hierarchy::V2 {
                controllers: parse_controller_list(&text),
            })
        }
        CgroupMode::Hybrid | CgroupMode::Legacy => {
            let mountinfo = read_text("/proc/self/mountinfo")?;
            let mounts = v1_controller_mounts(&parse_mountinfo(&mountinfo));
            let unified_controllers = (mode == CgroupMode::Hybrid)
                .then(|| read_text(Path::new(CGROUP_UNIFIED).join("cgroup.controllers")).ok())
                .flatten()
                .map(|text| parse_controller_list(&text));
            Ok(Hierarchy::V1 {
                mounts,
                unified_controllers,
            })
        }
    }
}

/// Joins a cgroup path from `/proc/self/cgroup` onto a hierarchy's mount point.
fn cgroup_dir(mount_point: &Path, cgroup_path: &str) -> PathBuf {
    match cgroup_path.trim_start_matches('/') {
        "" => mount_point.to_path_buf(),
        relative => mount_point.join(relative),
    }
}

/// Rows for the cgroup mode, controllers, swap accounting and write access.
fn cgroup_checks(is_root: bool) -> Vec<Check> {
    let mode = match CgroupMode::detect() {
        Ok(mode) => mode,
        Err(e) => {
            let why = format!("no cgroup hierarchy: {e}");
            return vec![
                Check::no(AREA_CGROUPS, "mode", format!("unavailable: {e}")),
                Check::no(AREA_CGROUPS, "controllers", why.clone()),
                Check::no(AREA_CGROUPS, "swap accounting", why.clone()),
                Check::no(AREA_CGROUPS, "write access", why),
            ];
        }
    };
    let mut checks = vec![Check::yes(AREA_CGROUPS, "mode", mode.name())];
    let hierarchy = match read_hierarchy(mode) {
        Ok(h) => h,
        Err(e) => {
            let why = format!("controllers unknown: {e}");
            checks.push(Check::no(AREA_CGROUPS, "controllers", why.clone()));
            checks.push(Check::no(AREA_CGROUPS, "swap accounting", why.clone()));
            checks.push(Check::no(AREA_CGROUPS, "write access", why));
            return checks;
        }
    };
    let membership = fs::read_to_string("/proc/self/cgroup")
        .map(|text| parse_proc_cgroup(&text))
        .unwrap_or_default();
    checks.push(controllers_check(&hierarchy));
    checks.push(swap_check(&hierarchy, &membership));
    checks.push(write_access_check(is_root, &hierarchy, &membership));
    checks.push(fast_moves_check());
    checks
}

/// Whether moving a process into a cgroup is fast. Without `favordynmods` on a cgroup
/// mount, the kernel waits for an RCU grace period on every move (5-10 ms on these hosts), and
/// every sandbox start pays it once. Informational: nothing fails without it.
fn fast_moves_check() -> Check {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let favored = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[2].starts_with("cgroup") && f[3].split(',').any(|o| o == "favordynmods")
    });
    if favored {
        Check::yes(
            AREA_CGROUPS,
            "fast task moves",
            "a cgroup mount has favordynmods",
        )
    } else {
        Check::no(
            AREA_CGROUPS,
            "fast task moves",
            "no cgroup mount has favordynmods: each sandbox start waits for an RCU grace period \
             (several ms) when it joins its cgroup; informational, nothing fails",
        )
    }
}

/// Formats a set of names as `a b c`, or `none`.
fn name_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let joined = names.into_iter().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        "none".to_owned()
    } else {
        joined
    }
}

impl Hierarchy {
    /// Whether `controller` can be used in this hierarchy.
    fn has_controller(&self, controller: &str) -> bool {
        match self {
            Self::V2 { controllers } => controllers.contains(controller),
            Self::V1 { mounts, .. } => mounts.contains_key(controller),
        }
    }

    /// Which controllers are there, in words.
    fn describe_controllers(&self) -> String {
        match self {
            Self::V2 { controllers } => format!(
                "cgroup.controllers: {} (freezing is built into v2)",
                name_list(controllers.iter().map(String::as_str))
            ),
            Self::V1 {
                mounts,
                unified_controllers,
            } => {
                let (mounted, missing): (Vec<&str>, Vec<&str>) = V1_REPORTED_CONTROLLERS
                    .iter()
                    .partition(|c| mounts.contains_key(**c));
                let others: Vec<&str> = mounts
                    .keys()
                    .map(String::as_str)
                    .filter(|c| !V1_REPORTED_CONTROLLERS.contains(c))
                    .collect();
                let mut detail = format!("v1 mounted: {}", name_list(mounted));
                if !missing.is_empty() {
                    detail.push_str(&format!("; not mounted: {}", name_list(missing)));
                }
                if !others.is_empty() {
                    detail.push_str(&format!("; also: {}", name_list(others)));
                }
                if let Some(unified) = unified_controllers {
                    detail.push_str(&format!(
                        "; v2 tree at {CGROUP_UNIFIED}: {}",
                        name_list(unified.iter().map(String::as_str))
                    ));
                }
                detail
            }
        }
    }
}

/// Whether memory, cpu and pids are all there, and which controllers are.
fn controllers_check(hierarchy: &Hierarchy) -> Check {
    let detail = hierarchy.describe_controllers();
    let missing: Vec<&str> = REQUIRED_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !hierarchy.has_controller(c))
        .collect();
    if missing.is_empty() {
        Check::yes(AREA_CGROUPS, "controllers", detail)
    } else {
        Check::no(
            AREA_CGROUPS,
            "controllers",
            format!(
                "unavailable: missing {} (needed: memory cpu pids); {detail}",
                name_list(missing)
            ),
        )
    }
}

/// Whether memory limits can include swap.
fn swap_check(hierarchy: &Hierarchy, membership: &[CgroupMembership]) -> Check {
    const NAME: &str = "swap accounting";
    match hierarchy {
        Hierarchy::V1 { mounts, .. } => {
            let Some(memory) = mounts.get("memory") else {
                return Check::no(AREA_CGROUPS, NAME, "no v1 memory controller mounted");
            };
            let file = memory.join("memory.memsw.limit_in_bytes");
            if file.exists() {
                Check::yes(
                    AREA_CGROUPS,
                    NAME,
                    format!("{} present: limits cover memory + swap", file.display()),
                )
            } else {
                Check::no(
                    AREA_CGROUPS,
                    NAME,
                    format!(
                        "{} absent: swap is not accounted (boot with swapaccount=1)",
                        file.display()
                    ),
                )
            }
        }
        Hierarchy::V2 { controllers } => {
            if !controllers.contains("memory") {
                return Check::no(AREA_CGROUPS, NAME, "no memory controller in the v2 tree");
            }
            // The root cgroup has no memory.* limit files, so look in this process's cgroup and
            // then in the root's children.
            let own = membership
                .iter()
                .find(|m| m.hierarchy_id == 0)
                .map(|m| cgroup_dir(Path::new(CGROUP_ROOT), &m.path));
            let children = fs::read_dir(CGROUP_ROOT)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|entry| entry.path());
            let found = own
                .into_iter()
                .chain(children)
                .map(|dir| dir.join("memory.swap.max"))
                .find(|file| file.exists());
            match found {
                Some(file) => Check::yes(
                    AREA_CGROUPS,
                    NAME,
                    format!("{} present: swap can be limited", file.display()),
                ),
                None => Check::no(
                    AREA_CGROUPS,
                    NAME,
                    "no memory.swap.max in any cgroup looked at: swap is not accounted \
                     (kernel without CONFIG_MEMCG_SWAP, or swapaccount=0)",
                ),
            }
        }
    }
}

/// Whether osvm may create cgroups: as root, or in a subtree delegated to this user.
fn write_access_check(
    is_root: bool,
    hierarchy: &Hierarchy,
    membership: &[CgroupMembership],
) -> Check {
    const NAME: &str = "write access";
    if is_root {
        return Check::yes(
            AREA_CGROUPS,
            NAME,
            "running as root: may create cgroups under every controller",
        );
    }
    let writable = |dir: &Path| access(dir, AccessFlags::W_OK).is_ok();
    match hierarchy {
        Hierarchy::V2 { .. } => {
            let Some(own) = membership.iter().find(|m| m.hierarchy_id == 0) else {
                return Check::no(AREA_CGROUPS, NAME, "not root, and not in any v2 cgroup");
            };
            let dir = cgroup_dir(Path::new(CGROUP_ROOT), &own.path);
            if !writable(&dir) {
                return Check::no(
                    AREA_CGROUPS,
                    NAME,
                    format!(
                        "not root, and {} is not delegated to this user \
                         (run as root, or under a systemd unit with Delegate=yes)",
                        dir.display()
                    ),
                );
            }
            let delegated = fs::read_to_string(dir.join("cgroup.controllers"))
                .map(|t| parse_controller_list(&t))
                .unwrap_or_default();
            let missing: Vec<&str> = REQUIRED_CONTROLLERS
                .iter()
                .copied()
                .filter(|c| !delegated.contains(*c))
                .collect();
            if missing.is_empty() {
                Check::yes(
                    AREA_CGROUPS,
                    NAME,
                    format!("delegated: {} is writable by this user", dir.display()),
                )
            } else {
                Check::no(
                    AREA_CGROUPS,
                    NAME,
                    format!(
                        "{} is writable, but its parent does not delegate {}",
                        dir.display(),
                        name_list(missing)
                    ),
                )
            }
        }
        Hierarchy::V1 { mounts, .. } => {
            let mut not_writable = Vec::new();
            for controller in REQUIRED_CONTROLLERS {
                let dir = mounts.get(controller).and_then(|mount| {
                    membership
                        .iter()
                        .find(|m| m.controllers.iter().any(|c| c == controller))
                        .map(|m| cgroup_dir(mount, &m.path))
                });
                match dir {
                    Some(dir) if writable(&dir) => {}
                    Some(dir) => not_writable.push(dir.display().to_string()),
                    None => not_writable.push(format!("{controller} (not mounted)")),
                }
            }
            if not_writable.is_empty() {
                Check::yes(
                    AREA_CGROUPS,
                    NAME,
                    "delegated: this user's memory, cpu and pids cgroups are writable",
                )
            } else {
                Check::no(
                    AREA_CGROUPS,
                    NAME,
                    format!(
                        "not root, and not writable by this user: {}",
                        not_writable.join(", ")
                    ),
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// seccomp and Landlock
// ---------------------------------------------------------------------------------------------

/// The value of a `Key:\tvalue` field of `/proc/<pid>/status`, trimmed.
fn parse_status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// Words for a seccomp mode number.
fn seccomp_mode_words(mode: i32) -> &'static str {
    match mode {
        0 => "disabled",
        1 => "strict",
        2 => "filter",
        _ => "unknown",
    }
}

/// Rows for seccomp support, the filter actions the sandbox uses, and user notification.
fn seccomp_checks() -> Vec<Check> {
    let status = read_text("/proc/self/status");
    let field = status
        .as_ref()
        .ok()
        .and_then(|s| parse_status_field(s, "Seccomp").map(str::to_owned));
    let prctl = osvm_sandbox::host::seccomp_mode();

    let support = match (&field, prctl) {
        (Some(_), Ok(mode)) => Check::yes(
            AREA_SECCOMP,
            "support",
            format!(
                "kernel has seccomp; this process is in mode {mode} ({})",
                seccomp_mode_words(mode)
            ),
        ),
        (None, _) => Check::no(
            AREA_SECCOMP,
            "support",
            match &status {
                Ok(_) => "unavailable: no Seccomp field in /proc/self/status \
                          (kernel without CONFIG_SECCOMP)"
                    .to_owned(),
                Err(e) => format!("unavailable: {e}"),
            },
        ),
        (Some(_), Err(errno)) => Check::no(
            AREA_SECCOMP,
            "support",
            format!("unavailable: prctl(PR_GET_SECCOMP) failed with {errno}"),
        ),
    };

    const ACTIONS: &str = "/proc/sys/kernel/seccomp/actions_avail";
    let (filter, notify) = match read_value(ACTIONS) {
        Some(text) => {
            let actions: BTreeSet<&str> = text.split_whitespace().collect();
            let missing: Vec<&str> = ["errno", "kill_process"]
                .into_iter()
                .filter(|a| !actions.contains(a))
                .collect();
            let filter = if missing.is_empty() {
                Check::yes(
                    AREA_SECCOMP,
                    "filter actions",
                    format!("actions_avail: {text}"),
                )
            } else {
                Check::no(
                    AREA_SECCOMP,
                    "filter actions",
                    format!("missing {} in actions_avail: {text}", name_list(missing)),
                )
            };
            let notify = if actions.contains("user_notif") {
                Check::yes(
                    AREA_SECCOMP,
                    "user notification",
                    "user_notif listed: a supervisor can answer syscalls",
                )
            } else {
                Check::no(
                    AREA_SECCOMP,
                    "user notification",
                    "user_notif not in actions_avail (needs Linux 5.0+)",
                )
            };
            (filter, notify)
        }
        None => {
            let why = format!("{ACTIONS} missing: no seccomp filter mode (CONFIG_SECCOMP_FILTER)");
            (
                Check::no(AREA_SECCOMP, "filter actions", why.clone()),
                Check::no(AREA_SECCOMP, "user notification", why),
            )
        }
    };
    vec![support, filter, notify]
}

/// What a Landlock ABI version covers, cumulatively.
fn landlock_features(abi: u32) -> String {
    let known = usize::try_from(abi)
        .unwrap_or(usize::MAX)
        .min(LANDLOCK_ABI_FEATURES.len());
    let mut words = LANDLOCK_ABI_FEATURES[..known].join(", ");
    if known < usize::try_from(abi).unwrap_or(usize::MAX) {
        words.push_str(", and newer features this osvm does not know");
    }
    words
}

/// The Landlock ABI version, straight from the kernel.
fn landlock_check() -> Check {
    let rc = match osvm_sandbox::host::landlock_abi() {
        Ok(v) => v,
        Err(errno) => {
            let why = match errno {
                Errno::ENOSYS => "kernel without Landlock".to_owned(),
                Errno::EOPNOTSUPP => {
                    "Landlock is built in but disabled at boot (add landlock to the lsm= parameter)"
                        .to_owned()
                }
                other => format!("landlock_create_ruleset failed with {other}"),
            };
            return Check::no(AREA_LANDLOCK, "abi", format!("unavailable: {why}"));
        }
    };
    match u32::try_from(rc) {
        Ok(abi) if abi >= 1 => Check::yes(
            AREA_LANDLOCK,
            "abi",
            format!("ABI {abi}: {}", landlock_features(abi)),
        ),
        _ => Check::no(
            AREA_LANDLOCK,
            "abi",
            format!("unavailable: kernel reported ABI version {rc}"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------------

/// Major and minor number of a kernel release such as `6.18.44-fc-v657`.
fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Rows for root, no_new_privs and capability dropping (both judged by kernel version).
fn privilege_checks(is_root: bool) -> Vec<Check> {
    let uid = nix::unistd::getuid();
    let euid = geteuid();
    let root = if is_root {
        Check::yes(
            AREA_PRIVILEGES,
            "root",
            format!("running as root (uid {uid}, euid {euid})"),
        )
    } else {
        Check::no(
            AREA_PRIVILEGES,
            "root",
            format!(
                "running as uid {uid}: the sandbox needs user namespaces and delegated cgroups"
            ),
        )
    };

    let release = read_value("/proc/sys/kernel/osrelease");
    let version = release.as_deref().and_then(parse_kernel_version);
    let release_words = release.as_deref().unwrap_or("unknown");
    let new_enough = version.is_some_and(|v| v >= MIN_KERNEL_NO_NEW_PRIVS);
    let (min_major, min_minor) = MIN_KERNEL_NO_NEW_PRIVS;
    let nnp_now = match nix::sys::prctl::get_no_new_privs() {
        Ok(true) => "set",
        Ok(false) => "not set",
        Err(_) => "unknown",
    };
    let (nnp, caps) = if new_enough {
        (
            Check::yes(
                AREA_PRIVILEGES,
                "no_new_privs",
                format!(
                    "kernel {release_words} (>= {min_major}.{min_minor}); this process: {nnp_now}"
                ),
            ),
            Check::yes(
                AREA_PRIVILEGES,
                "capability dropping",
                format!(
                    "kernel {release_words} (>= {min_major}.{min_minor}): bounding set and capset"
                ),
            ),
        )
    } else {
        let why = format!("kernel {release_words} is older than {min_major}.{min_minor}");
        (
            Check::no(AREA_PRIVILEGES, "no_new_privs", why.clone()),
            Check::no(AREA_PRIVILEGES, "capability dropping", why),
        )
    };
    vec![root, nnp, caps]
}

// ---------------------------------------------------------------------------------------------
// nftables
// ---------------------------------------------------------------------------------------------

/// Rows for the nft tool and the kernel's nf_tables.
fn nft_checks(is_root: bool) -> Vec<Check> {
    let tool = match run_command("nft", &["--version"], COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(out.first_line().to_owned()),
        Ok(out) => Err(format!(
            "`nft --version` failed ({}): {}",
            out.status,
            out.first_line()
        )),
        Err(e @ ProbeError::NotFound { .. }) => {
            Err(format!("{e}; install Debian package nftables"))
        }
        Err(e) => Err(e.to_string()),
    };
    let kernel = match (&tool, is_root) {
        (Err(_), _) => Check::no(AREA_NETWORK, "nf_tables", "not checked: nft is unavailable"),
        (Ok(_), false) => Check::no(
            AREA_NETWORK,
            "nf_tables",
            "not checked: `nft list tables` needs root",
        ),
        (Ok(_), true) => match run_command("nft", &["list", "tables"], COMMAND_TIMEOUT) {
            Ok(out) if out.status.success() => {
                let tables = out
                    .stdout
                    .lines()
                    .filter(|l| l.starts_with("table "))
                    .count();
                Check::yes(
                    AREA_NETWORK,
                    "nf_tables",
                    format!("kernel answers `nft list tables` ({tables} tables now)"),
                )
            }
            Ok(out) => Check::no(
                AREA_NETWORK,
                "nf_tables",
                format!(
                    "`nft list tables` failed ({}): {}",
                    out.status,
                    out.first_line()
                ),
            ),
            Err(e) => Check::no(AREA_NETWORK, "nf_tables", e.to_string()),
        },
    };
    let tool = match tool {
        Ok(version) => Check::yes(AREA_NETWORK, "nft", version),
        Err(why) => Check::no(AREA_NETWORK, "nft", why),
    };
    vec![tool, kernel]
}

// ---------------------------------------------------------------------------------------------
// KVM
// ---------------------------------------------------------------------------------------------

/// Which flavour of KVM serves `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KvmKind {
    /// Intel VT-x through `kvm_intel`.
    Vmx,
    /// AMD-V through `kvm_amd`.
    Svm,
    /// Pagetable-based VM (`kvm_pvm`): runs only PVM-patched guest kernels at speed.
    Pvm,
    /// No KVM usable.
    None,
}

impl KvmKind {
    /// Whether stock guests run with hardware acceleration.
    fn is_hardware(self) -> bool {
        matches!(self, Self::Vmx | Self::Svm)
    }

    /// Short name for the report.
    fn label(self) -> &'static str {
        match self {
            Self::Vmx => "VMX",
            Self::Svm => "SVM",
            Self::Pvm => "PVM",
            Self::None => "none",
        }
    }
}

/// The flags of the first CPU in `/proc/cpuinfo` (x86 `flags` line).
fn parse_cpu_flags(cpuinfo: &str) -> BTreeSet<String> {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .map(|flags| flags.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The `cpu MHz` of the first CPU in `/proc/cpuinfo`.
fn parse_cpu_mhz(cpuinfo: &str) -> Option<f64> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim() == "cpu MHz" {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// What was found out about KVM.
#[derive(Debug)]
struct KvmProbe {
    /// The flavour of KVM.
    kind: KvmKind,
    /// Why `kind` is what it is, in words.
    kind_detail: String,
    /// Result of opening `/dev/kvm` read-write.
    device: Result<(), String>,
}

impl KvmProbe {
    /// Looks at cpuinfo flags, loaded modules and `/dev/kvm`.
    fn probe() -> Self {
        let flags = fs::read_to_string("/proc/cpuinfo")
            .map(|text| parse_cpu_flags(&text))
            .unwrap_or_default();
        let module = |name: &str| Path::new("/sys/module").join(name).exists();
        let (vmx, svm) = (flags.contains("vmx"), flags.contains("svm"));
        let (kind, kind_detail) = if module("kvm_pvm") {
            (
                KvmKind::Pvm,
                "PVM: present, but runs only PVM-patched guest kernels; stock Linux guests use \
                 QEMU TCG here"
                    .to_owned(),
            )
        } else if vmx && module("kvm_intel") {
            (
                KvmKind::Vmx,
                "VMX: cpu flag vmx, module kvm_intel loaded".to_owned(),
            )
        } else if svm && module("kvm_amd") {
            (
                KvmKind::Svm,
                "SVM: cpu flag svm, module kvm_amd loaded".to_owned(),
            )
        } else if vmx || svm {
            let (flag, module) = if vmx {
                ("vmx", "kvm_intel")
            } else {
                ("svm", "kvm_amd")
            };
            (
                KvmKind::None,
                format!("none: cpu has {flag} but {module} is not loaded (modprobe {module})"),
            )
        } else {
            (
                KvmKind::None,
                "none: no vmx/svm cpu flag (no hardware virtualization, or nested \
                 virtualization is off); guests use QEMU TCG"
                    .to_owned(),
            )
        };
        let device = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/kvm")
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err("absent: no KVM module is loaded".to_owned())
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
                "present but not openable read-write ({e}): add the user to group kvm"
            )),
            Err(e) => Err(format!("present but open failed: {e}")),
        };
        Self {
            kind,
            kind_detail,
            device,
        }
    }

    /// Rows for `/dev/kvm` and the KVM kind.
    fn checks(&self) -> Vec<Check> {
        let device = match &self.device {
            Ok(()) => Check::yes(AREA_KVM, "/dev/kvm", "present and opens read-write"),
            Err(why) => Check::no(AREA_KVM, "/dev/kvm", why.clone()),
        };
        let kind = Check {
            area: AREA_KVM,
            name: "kind".to_owned(),
            available: self.kind.is_hardware() && self.device.is_ok(),
            detail: self.kind_detail.clone(),
        };
        vec![device, kind]
    }
}

// ---------------------------------------------------------------------------------------------
// microVMs and Hermit
// ---------------------------------------------------------------------------------------------

/// Rows for QEMU, its microvm machine, the vsock backend, a guest kernel and the TSC frequency.
fn microvm_checks(is_root: bool) -> Vec<Check> {
    const QEMU: &str = "qemu-system-x86_64";
    let qemu = match run_command(QEMU, &["--version"], COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(out.first_line().to_owned()),
        Ok(out) => Err(format!(
            "`{QEMU} --version` failed ({}): {}",
            out.status,
            out.first_line()
        )),
        Err(e @ ProbeError::NotFound { .. }) => {
            Err(format!("{e}; install Debian package qemu-system-x86"))
        }
        Err(e) => Err(e.to_string()),
    };
    let microvm = match &qemu {
        Err(_) => Check::no(
            AREA_MICROVM,
            "microvm machine",
            format!("not checked: {QEMU} is unavailable"),
        ),
        Ok(_) => match run_command(QEMU, &["-machine", "help"], COMMAND_TIMEOUT) {
            Ok(out) if out.status.success() => {
                let listed = out
                    .stdout
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some("microvm"));
                if listed {
                    Check::yes(AREA_MICROVM, "microvm machine", "listed by `-machine help`")
                } else {
                    Check::no(
                        AREA_MICROVM,
                        "microvm machine",
                        "not listed by `-machine help` (QEMU built without it)",
                    )
                }
            }
            Ok(out) => Check::no(
                AREA_MICROVM,
                "microvm machine",
                format!(
                    "`-machine help` failed ({}): {}",
                    out.status,
                    out.first_line()
                ),
            ),
            Err(e) => Check::no(AREA_MICROVM, "microvm machine", e.to_string()),
        },
    };
    let qemu = match qemu {
        Ok(version) => Check::yes(AREA_MICROVM, QEMU, version),
        Err(why) => Check::no(AREA_MICROVM, QEMU, why),
    };
    vec![
        qemu,
        microvm,
        vsock_backend_check(),
        guest_kernel_check(is_root),
        tsc_check(),
    ]
}

/// The user-space vsock backend QEMU's `vhost-user-vsock-device` talks to.
fn vsock_backend_check() -> Check {
    const NAME: &str = "vhost-device-vsock";
    match run_command(NAME, &["--version"], COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => Check::yes(AREA_MICROVM, NAME, out.first_line()),
        Ok(out) => Check::no(
            AREA_MICROVM,
            NAME,
            format!(
                "`{NAME} --version` failed ({}): {}",
                out.status,
                out.first_line()
            ),
        ),
        Err(e @ ProbeError::NotFound { .. }) => Check::no(
            AREA_MICROVM,
            NAME,
            format!("{e}; `cargo install vhost-device-vsock --version 0.3.0`"),
        ),
        Err(e) => Check::no(AREA_MICROVM, NAME, e.to_string()),
    }
}

/// Where osvm keeps guest kernels: system-wide as root, per user otherwise.
fn kernels_dir(is_root: bool) -> Option<PathBuf> {
    if is_root {
        return Some(PathBuf::from("/var/lib/osvm/kernels"));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".local/state"))
        })?;
    Some(state.join("osvm/kernels"))
}

/// Whether a file name looks like a bootable Linux kernel image.
fn is_kernel_image_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    ["vmlinuz", "vmlinux", "bzImage"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Kernel images directly in `dir` or one level below (one folder per kernel version).
fn find_kernel_images(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Ok(inner) = fs::read_dir(&path) {
                found.extend(
                    inner
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.is_file() && p.file_name().is_some_and(is_kernel_image_name)),
                );
            }
        } else if path.is_file() && path.file_name().is_some_and(is_kernel_image_name) {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Whether a guest kernel for microVMs is in osvm's state directory.
fn guest_kernel_check(is_root: bool) -> Check {
    const NAME: &str = "guest kernel";
    let Some(dir) = kernels_dir(is_root) else {
        return Check::no(
            AREA_MICROVM,
            NAME,
            "no state directory: neither XDG_STATE_HOME nor HOME is set",
        );
    };
    let images = find_kernel_images(&dir);
    if images.is_empty() {
        Check::no(
            AREA_MICROVM,
            NAME,
            format!(
                "none yet in {}: `osvm kernel fetch` (a later release) downloads Debian's \
                 cloud kernel",
                dir.display()
            ),
        )
    } else {
        let names: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
        Check::yes(AREA_MICROVM, NAME, names.join(", "))
    }
}

/// The TSC frequency in MHz from a kernel log line such as `tsc: Detected 2445.404 MHz processor`
/// or `tsc: Refined TSC clocksource calibration: 2445.417 MHz`.
fn parse_tsc_log_mhz(line: &str) -> Option<f64> {
    let rest = line
        .split_once("tsc: Refined TSC clocksource calibration: ")
        .or_else(|| line.split_once("tsc: Detected "))?
        .1;
    let (number, unit) = rest.trim().split_once(' ')?;
    if !unit.starts_with("MHz") {
        return None;
    }
    number.parse().ok()
}

/// The TSC frequency the kernel logged, preferring its refined calibration; `None` when the log is
/// not readable (not root with `dmesg_restrict`) or has rotated past the boot messages.
fn tsc_from_kernel_log() -> Option<f64> {
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg")
        .ok()?;
    let (mut detected, mut refined) = (None, None);
    // Each read returns one record; the ring buffer holds far fewer than this many.
    let mut record = vec![0u8; 8192];
    for _ in 0..200_000 {
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&record[..n]);
                let message = text.split_once(';').map_or(text.as_ref(), |(_, m)| m);
                if let Some(mhz) = parse_tsc_log_mhz(message) {
                    if message.contains("Refined") {
                        refined = Some(mhz);
                    } else {
                        detected = Some(mhz);
                    }
                }
            }
            // EPIPE: the record was overwritten while reading; the next read continues.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    refined.or(detected)
}

/// The host TSC frequency microVM guests must be told (`tsc_early_khz`); information only.
fn tsc_check() -> Check {
    const NAME: &str = "tsc frequency";
    const SYSFS: &str = "/sys/devices/system/cpu/cpu0/tsc_freq_khz";
    if let Some(khz) = read_value(SYSFS).and_then(|v| v.parse::<u64>().ok()) {
        return Check::yes(AREA_MICROVM, NAME, format!("{khz} kHz (from {SYSFS})"));
    }
    let to_khz = |mhz: f64| (mhz * 1000.0).round();
    if let Some(mhz) = tsc_from_kernel_log() {
        return Check::yes(
            AREA_MICROVM,
            NAME,
            format!(
                "{} kHz (from the kernel log's TSC calibration)",
                to_khz(mhz)
            ),
        );
    }
    let cpuinfo_mhz = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| parse_cpu_mhz(&text));
    match cpuinfo_mhz {
        Some(mhz) => Check::yes(
            AREA_MICROVM,
            NAME,
            format!(
                "about {} kHz (from `cpu MHz` in /proc/cpuinfo; may differ from the TSC)",
                to_khz(mhz)
            ),
        ),
        None => Check::no(
            AREA_MICROVM,
            NAME,
            format!("unknown: no {SYSFS}, no TSC line in the kernel log, no `cpu MHz`"),
        ),
    }
}

/// The Hermit launcher, usable only with hardware KVM.
fn uhyve_check(kvm: KvmKind) -> Check {
    const NAME: &str = "uhyve";
    match run_command(NAME, &["--version"], COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => {
            let version = out.first_line();
            if kvm.is_hardware() {
                Check::yes(
                    AREA_HERMIT,
                    NAME,
                    format!("{version}; hardware KVM present"),
                )
            } else {
                Check::no(
                    AREA_HERMIT,
                    NAME,
                    format!(
                        "{version} found, but it needs hardware KVM (VMX/SVM) and this host has \
                         {}: Hermit images run under QEMU TCG",
                        kvm.label()
                    ),
                )
            }
        }
        Ok(out) => Check::no(
            AREA_HERMIT,
            NAME,
            format!(
                "`uhyve --version` failed ({}): {}",
                out.status,
                out.first_line()
            ),
        ),
        Err(e @ ProbeError::NotFound { .. }) => Check::no(
            AREA_HERMIT,
            NAME,
            format!(
                "{e} (`cargo install uhyve --locked`); it needs hardware KVM (VMX/SVM), this \
                 host has {}",
                kvm.label()
            ),
        ),
        Err(e) => Check::no(AREA_HERMIT, NAME, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\n\
        vendor_id\t: GenuineIntel\n\
        cpu MHz\t\t: 2100.000\n\
        flags\t\t: fpu vme de pse tsc msr vmx sse2 constant_tsc\n\
        \n\
        processor\t: 1\n\
        cpu MHz\t\t: 1800.000\n\
        flags\t\t: fpu svm\n";

    #[test]
    fn cpu_flags_come_from_the_first_cpu() {
        let flags = parse_cpu_flags(CPUINFO);
        assert!(flags.contains("vmx"));
        assert!(flags.contains("constant_tsc"));
        assert!(!flags.contains("svm"));
    }

    #[test]
    fn cpuinfo_without_flags_gives_no_flags() {
        assert!(parse_cpu_flags("processor\t: 0\nFeatures\t: fp asimd\n").is_empty());
    }

    #[test]
    fn cpu_mhz_is_parsed_from_the_first_cpu() {
        assert_eq!(parse_cpu_mhz(CPUINFO), Some(2100.0));
        assert_eq!(parse_cpu_mhz("processor\t: 0\n"), None);
    }

    #[test]
    fn status_field_is_found_by_exact_key() {
        let status = "Name:\tosvm\nNoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(parse_status_field(status, "Seccomp"), Some("2"));
        assert_eq!(parse_status_field(status, "Seccomp_filters"), Some("1"));
        assert_eq!(parse_status_field(status, "NoNewPrivs"), Some("0"));
        assert_eq!(parse_status_field(status, "Missing"), None);
    }

    #[test]
    fn mountinfo_gives_v1_controllers_and_their_mount_points() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[5].fs_type, "cgroup2");
        let mounts = v1_controller_mounts(&entries);
        let names: Vec<&str> = mounts.keys().map(String::as_str).collect();
        assert_eq!(names, ["cpu", "cpuacct", "memory", "pids"]);
        assert_eq!(mounts["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn mountinfo_decodes_octal_escapes_and_skips_garbage() {
        let text = "50 1 8:1 / /mnt/my\\040disk rw - ext4 /dev/sda1 rw\nnot a mountinfo line\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].mount_point, PathBuf::from("/mnt/my disk"));
        assert_eq!(entries[0].super_options, ["rw"]);
    }

    #[test]
    fn proc_cgroup_lines_split_into_hierarchies() {
        let text = "12:pids:/user.slice\n4:cpu,cpuacct:/\n1:name=systemd:/init.scope\n0::/a:b\n";
        let parsed = parse_proc_cgroup(text);
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(parsed[3].hierarchy_id, 0);
        assert!(parsed[3].controllers.is_empty());
        assert_eq!(parsed[3].path, "/a:b");
    }

    #[test]
    fn kernel_release_gives_major_and_minor() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_version("3.4"), Some((3, 4)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }

    #[test]
    fn tsc_log_lines_give_mhz() {
        assert_eq!(
            parse_tsc_log_mhz("tsc: Detected 2445.404 MHz processor"),
            Some(2445.404)
        );
        assert_eq!(
            parse_tsc_log_mhz("tsc: Refined TSC clocksource calibration: 2445.417 MHz"),
            Some(2445.417)
        );
        assert_eq!(
            parse_tsc_log_mhz("clocksource: Switched to clocksource tsc"),
            None
        );
    }

    #[test]
    fn landlock_abi_lists_cumulative_features() {
        assert_eq!(landlock_features(1), "fs basic");
        assert!(landlock_features(4).ends_with("TCP bind/connect"));
        assert!(landlock_features(9).contains("newer features"));
    }

    #[test]
    fn required_items_decide_all_required_ok() {
        let mut report = Report {
            checks: REQUIRED
                .iter()
                .map(|&(area, name)| Check::yes(area, name, "ok"))
                .collect(),
        };
        report.checks.push(Check::no(AREA_KVM, "kind", "PVM"));
        assert!(report.all_required_ok());
        report.checks[0].available = false;
        assert!(!report.all_required_ok());
        report.checks.remove(0);
        assert!(
            !report.all_required_ok(),
            "a missing required row is not ok"
        );
    }

    #[test]
    fn table_is_aligned_grouped_and_wrapped() {
        let report = Report {
            checks: vec![
                Check::yes(AREA_NAMESPACES, "user", "works"),
                Check::no(AREA_NAMESPACES, "time", "word ".repeat(40).trim()),
                Check::yes(AREA_KVM, "kind", "VMX"),
            ],
        };
        let table = report.render_table();
        let lines: Vec<&str> = table.lines().collect();
        let detail_column = lines[0].find("DETAIL").expect("header has DETAIL");
        assert!(lines[0].starts_with("AREA"));
        assert!(lines.iter().all(|l| l.chars().count() <= TABLE_WIDTH));
        assert!(lines.iter().all(|l| l.trim_end() == *l));
        let user = lines
            .iter()
            .find(|l| l.contains("works"))
            .expect("user row");
        assert_eq!(user.find("works"), Some(detail_column));
        assert!(user.starts_with("namespaces"));
        let time = lines
            .iter()
            .position(|l| l.contains(" time "))
            .expect("time row");
        assert!(
            lines[time].starts_with(' '),
            "area is printed once per block"
        );
        assert!(lines[time + 1].starts_with(' ') && lines[time + 1].contains("word"));
        assert_eq!(lines[time + 1].find("word"), Some(detail_column));
        assert!(lines.iter().any(|l| l.starts_with("kvm")));
    }

    #[test]
    fn wrap_keeps_overlong_words_whole() {
        assert_eq!(wrap_words("a bb ccc", 4), ["a bb", "ccc"]);
        assert_eq!(wrap_words("abcdefgh x", 4), ["abcdefgh", "x"]);
        assert_eq!(wrap_words("", 4), [""]);
    }

    #[test]
    fn run_command_reports_missing_tools() {
        let result = run_command("osvm-no-such-tool-xyz", &[], COMMAND_TIMEOUT);
        assert!(matches!(result, Err(ProbeError::NotFound { .. })));
    }

    #[test]
    fn run_command_kills_tools_past_the_deadline() {
        let started = Instant::now();
        let result = run_command("sleep", &["10"], Duration::from_millis(200));
        assert!(matches!(result, Err(ProbeError::Timeout { .. })));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
