//! Namespace probes: every namespace type is really unshared in a throwaway forked child.

use nix::errno::Errno;
use osvm_sandbox::host::{ProbeIdentity, UnshareOutcome, try_unshare};

use super::{AREA_NAMESPACES, Check, read_value};

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

/// One row per namespace type, each really tried in a child process.
///
/// As root each type is tried alone; otherwise together with a new user namespace, which is how
/// an unprivileged sandbox gets the others.
pub(super) fn namespace_checks(is_root: bool) -> Vec<Check> {
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
