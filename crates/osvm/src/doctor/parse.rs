//! Pure parsers for the text of `/proc`, `/sys` and the kernel log: no I/O, so each is unit-tested
//! on sample text.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// One line of `/proc/self/mountinfo`, the fields the probes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountEntry {
    /// Where it is mounted, octal escapes decoded.
    pub(super) mount_point: PathBuf,
    /// File system type, such as `cgroup` or `cgroup2`.
    pub(super) fs_type: String,
    /// Per-superblock options; for cgroup v1 these name the controllers.
    pub(super) super_options: Vec<String>,
}

/// Parses `/proc/self/mountinfo`; malformed lines are skipped.
///
/// Format: `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
pub(super) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
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

/// One line of `/proc/self/cgroup`: `HIERARCHY_ID:CONTROLLERS:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CgroupMembership {
    /// Hierarchy id; 0 is the v2 tree.
    pub(super) hierarchy_id: u32,
    /// Controllers bound to the hierarchy (empty for v2 and for named hierarchies' names only).
    pub(super) controllers: Vec<String>,
    /// This process's cgroup within the hierarchy, starting with `/`.
    pub(super) path: String,
}

/// Parses `/proc/self/cgroup`; malformed lines are skipped.
pub(super) fn parse_proc_cgroup(text: &str) -> Vec<CgroupMembership> {
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

/// Splits a `cgroup.controllers` file into names.
pub(super) fn parse_controller_list(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// The value of a `Key:\tvalue` field of `/proc/<pid>/status`, trimmed.
pub(super) fn parse_status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// Major and minor number of a kernel release such as `6.18.44-fc-v657`.
pub(super) fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_field_is_found_by_exact_key() {
        let status = "Name:\tosvm\nNoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(parse_status_field(status, "Seccomp"), Some("2"));
        assert_eq!(parse_status_field(status, "Seccomp_filters"), Some("1"));
        assert_eq!(parse_status_field(status, "NoNewPrivs"), Some("0"));
        assert_eq!(parse_status_field(status, "Missing"), None);
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
}
