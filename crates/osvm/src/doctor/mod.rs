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

mod cgroups;
mod command;
mod identity;
mod landlock;
mod namespaces;
mod network;
mod parse;
mod privileges;
mod seccomp;
mod storage;
mod virt;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::geteuid;
use serde::Serialize;

use cgroups::cgroup_checks;
use identity::identity_checks;
use landlock::landlock_check;
use namespaces::namespace_checks;
use network::nft_checks;
use osvm_guest::host::KvmProbe;
use privileges::privilege_checks;
use seccomp::seccomp_checks;
use storage::storage_checks;
use virt::{confidential_checks, hermit_checks, kvm_checks, microvm_checks, uhyve_check};

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
/// Area of the mount API, id-mapped mounts, data volumes and uid ranges.
const AREA_STORAGE: &str = "storage";
/// Area of the KVM probes.
const AREA_KVM: &str = "kvm";
/// Area of what QEMU microVMs need besides KVM.
const AREA_MICROVM: &str = "microvm";
/// Area of the Hermit unikernel launcher.
const AREA_HERMIT: &str = "hermit";
/// Confidential computing (SEV-SNP, TDX, SGX).
const AREA_CONFIDENTIAL: &str = "confidential";
/// Area of the certificate authorities in the state directory.
const AREA_IDENTITY: &str = "identity";

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
    (AREA_STORAGE, "mount API"),
    (AREA_STORAGE, "id-mapped mounts"),
    (AREA_STORAGE, "data volumes"),
];

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
    /// Probes the host, and the CAs kept in `state_dir`.
    ///
    /// The namespace probes fork, so they run first, before this function starts the threads that
    /// read the output of external tools; the forked children stay async-signal-safe regardless.
    pub fn collect(state_dir: &Path) -> Self {
        let is_root = geteuid().is_root();
        let mut checks = namespace_checks(is_root);
        checks.extend(cgroup_checks(is_root));
        checks.extend(seccomp_checks());
        checks.push(landlock_check());
        checks.extend(privilege_checks(is_root));
        checks.extend(storage_checks(is_root, state_dir));
        checks.extend(nft_checks(is_root));
        let kvm = KvmProbe::probe();
        checks.extend(kvm_checks(&kvm));
        checks.extend(microvm_checks(&kvm, state_dir));
        checks.extend(confidential_checks(&kvm));
        checks.push(uhyve_check(kvm.kind));
        checks.extend(hermit_checks(state_dir));
        checks.extend(identity_checks(state_dir));
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

/// Formats a set of names as `a b c`, or `none`.
fn name_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let joined = names.into_iter().collect::<Vec<_>>().join(" ");
    if joined.is_empty() {
        "none".to_owned()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
