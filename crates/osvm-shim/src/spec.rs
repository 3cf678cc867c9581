//! An OCI runtime spec (a bundle's `config.json`) as an osvm launch.
//!
//! The sandbox's guarantees are osvm's, not the spec's: a spec may narrow what osvm gives (a
//! memory, pids or open-files limit, a read-only root), never widen it. What osvm refuses is an
//! error that names the field: a privileged process (capabilities beyond none), host
//! namespaces (a namespace list without pid, mount, ipc or uts), joining another mount, user
//! or cgroup namespace, devices, a terminal, mounts other than binds.
//! Taken from the spec: the process's args, env, cwd and user (ids inside the container's
//! user namespace, never the host's), the limits, a read-only root, bind
//! mounts (CRI's `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, volumes) and the network
//! namespace to join (the service decides whether it may: see `service.rs`). Asked to share
//! the pod's pid, ipc or uts namespace, a container gets its own instead (narrower: its
//! processes, System V IPC and hostname stay its own); the mounts under `/proc`, `/sys` and
//! `/dev` are the sandbox's own.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use osvm_core::{BindMount, DataKind, LaunchSpec, Resources, RunAs};

/// The osvm name for container `id`: the id itself when it is one (1-63 of a-z, 0-9, '-'),
/// otherwise `c-` and the first 16 hex digits of its SHA-256 (CRI's ids are 64 characters).
pub fn name_of(id: &str) -> String {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        return id.to_owned();
    }
    let digest = sha256_hex(id.as_bytes());
    format!("c-{}", &digest[..16])
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    sha2::Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The control group for `linux.cgroupsPath`, relative to each hierarchy's root: a cgroupfs
/// path (`/kubepods/burstable/pod<uid>/<id>`) as it is; systemd's `slice:prefix:name` where
/// systemd puts such a unit (`kubepods.slice/kubepods-burstable.slice/.../<prefix>-<name>.scope`,
/// made directly, not through systemd's bus). Empty: none (osvm's own).
pub fn cgroup_of(path: &str) -> Result<Option<PathBuf>, String> {
    let bad = |why: &str| Err(refused(&format!("linux.cgroupsPath {path:?}"), why));
    if path.is_empty() {
        return Ok(None);
    }
    if let [slice, prefix, name] = path.split(':').collect::<Vec<_>>()[..] {
        let plain = |s: &str| !s.contains('/') && s != "." && s != "..";
        if ![slice, prefix, name].iter().all(|s| plain(s)) || name.is_empty() {
            return bad("a systemd path is slice:prefix:name, each a plain name");
        }
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let Some(stem) = slice.strip_suffix(".slice") else {
            return bad("a systemd slice's name ends in .slice");
        };
        let mut dir = PathBuf::new();
        if stem != "-" {
            let parts: Vec<&str> = stem.split('-').collect();
            if parts.iter().any(|p| p.is_empty()) {
                return bad("a systemd slice's name has an empty part");
            }
            for n in 1..=parts.len() {
                dir.push(format!("{}.slice", parts[..n].join("-")));
            }
        }
        let unit = if name.ends_with(".slice") {
            name.to_owned()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        dir.push(unit);
        return Ok(Some(dir));
    }
    let relative = Path::new(path.trim_start_matches('/'));
    let plain = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || relative.as_os_str().is_empty() {
        return bad("a cgroup path without `.` or `..` expected");
    }
    Ok(Some(relative.to_path_buf()))
}

/// A spec field osvm will not honour, and why.
fn refused(field: &str, why: &str) -> String {
    format!("{field}: {why} (osvm's sandbox gives a container no more than its defaults)")
}

/// The process's user, inside the container's user namespace (its ids are the sandbox's own).
pub fn run_as(process: &oci_spec::runtime::Process) -> RunAs {
    let user = process.user();
    RunAs {
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
    }
}

/// The process's environment (`K=V` entries; one without `=` or a name is dropped).
pub fn env_of(process: &oci_spec::runtime::Process) -> Vec<(String, String)> {
    process
        .env()
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What a container is to Kubernetes (CRI's `io.kubernetes.cri.*` annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not CRI's: `ctr run`, another client of containerd.
    Plain,
    /// A pod's sandbox container (the pause process): its network namespace is the pod's.
    PodSandbox,
    /// An application container of the pod whose sandbox container has this id.
    InPod { sandbox: String },
}

/// A container's spec, as osvm runs it.
#[derive(Debug)]
pub struct Mapped {
    pub launch: LaunchSpec,
    pub role: Role,
    /// The network namespace the spec names, if any (`launch.netns` stays unset: the service
    /// checks it against the container's role first).
    pub netns: Option<PathBuf>,
    /// Namespaces the spec asks to share that the container gets its own of instead, as
    /// `"<kind> (<path>)"`.
    pub unshared: Vec<String>,
}

/// CRI's annotation keys.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Mount destinations the sandbox provides itself.
fn sandbox_owned(dest: &Path) -> bool {
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| dest.starts_with(p))
}

/// The launch for container `id` from the bundle's `spec`, its root at `rootfs`.
pub fn launch(id: &str, spec: &Spec, rootfs: &Path) -> Result<Mapped, String> {
    let process = spec
        .process()
        .as_ref()
        .ok_or("process: the spec has no process to run")?;
    let args = process.args().clone().unwrap_or_default();
    let Some((command, rest)) = args.split_first() else {
        return Err("process.args: empty".into());
    };
    if process.terminal().unwrap_or(false) {
        return Err(refused(
            "process.terminal",
            "a terminal is not supported yet",
        ));
    }
    // Capabilities the spec lists (containerd's defaults ask for a small set) are not
    // given: every container's process runs with none, as every osvm workload.
    let mut launch = LaunchSpec::new(name_of(id), command.clone(), rest.to_vec());
    launch.user = Some(run_as(process));
    launch.resources = Resources::defaults();
    launch.data = DataKind::Ephemeral;
    launch.rootfs = Some(rootfs.to_path_buf());
    // OCI's cwd is the process's, `/` included (osvm's own default would be /data).
    launch.working_dir = Some(process.cwd().clone());
    launch.env = env_of(process);
    launch.readonly_root = spec
        .root()
        .as_ref()
        .is_some_and(|r| r.readonly() == Some(true));
    for limit in process.rlimits().iter().flatten() {
        use oci_spec::runtime::PosixRlimitType;
        match limit.typ() {
            PosixRlimitType::RlimitNofile => {
                let default = launch.resources.open_files.unwrap_or(u64::MAX);
                launch.resources.open_files = Some(limit.hard().min(default));
            }
            other => {
                return Err(refused(
                    &format!("process.rlimits ({other:?})"),
                    "only RLIMIT_NOFILE is supported",
                ));
            }
        }
    }
    for (n, m) in spec.mounts().iter().flatten().enumerate() {
        let dest = m.destination();
        let options = m.options().clone().unwrap_or_default();
        let fs_type = m.typ().clone().unwrap_or_default();
        let bind = fs_type == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if sandbox_owned(dest) || (!bind && fs_type == "tmpfs" && dest == Path::new("/run")) {
            // The sandbox's own /proc, /sys and /dev (with /dev/shm); /run as the image has it.
            continue;
        }
        if !bind {
            return Err(refused(
                &format!("mounts[{n}] ({fs_type} at {})", dest.display()),
                "only bind mounts are supported",
            ));
        }
        let Some(source) = m.source().clone().filter(|s| s.is_absolute()) else {
            return Err(refused(
                &format!("mounts[{n}].source ({})", dest.display()),
                "a bind needs an absolute source",
            ));
        };
        launch.binds.push(BindMount {
            source,
            target: dest.clone(),
            writable: !options.iter().any(|o| o == "ro"),
        });
    }
    let mut netns = None;
    let mut unshared = Vec::new();
    if let Some(linux) = spec.linux() {
        if let Some(namespaces) = linux.namespaces() {
            for kind in [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
            ] {
                if !namespaces.iter().any(|n| n.typ() == kind) {
                    return Err(refused(
                        &format!("linux.namespaces ({kind:?})"),
                        "the container would share the host's",
                    ));
                }
            }
            for n in namespaces {
                let Some(path) = n.path() else { continue };
                match n.typ() {
                    LinuxNamespaceType::Network => netns = Some(path.clone()),
                    LinuxNamespaceType::Pid | LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts => {
                        unshared.push(format!("{:?} ({})", n.typ(), path.display()));
                    }
                    other => {
                        return Err(refused(
                            &format!("linux.namespaces ({other:?}).path"),
                            "a container never joins another mount, user or cgroup namespace",
                        ));
                    }
                }
            }
        }
        if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(refused(
                "linux.devices",
                "no device is given to a container",
            ));
        }
        if let Some(r) = linux.resources() {
            // Narrowing only: a limit lower than osvm's default is taken.
            if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit())
                && limit > 0
            {
                let limit = limit as u64;
                let default = launch.resources.memory_bytes.unwrap_or(u64::MAX);
                launch.resources.memory_bytes = Some(limit.min(default));
            }
            if let Some(cpu) = r.cpu()
                && let (Some(quota), Some(period)) = (cpu.quota(), cpu.period())
                && quota > 0
                && period > 0
            {
                let cpus = quota as f64 / period as f64;
                let default = launch.resources.cpus.unwrap_or(f64::MAX);
                launch.resources.cpus = Some(cpus.min(default));
            }
            if let Some(pids) = r.pids().as_ref().map(|p| p.limit())
                && pids > 0
            {
                let default = launch.resources.pids.unwrap_or(u64::MAX);
                launch.resources.pids = Some((pids as u64).min(default));
            }
        }
    }
    let annotations = spec.annotations().clone().unwrap_or_default();
    let role = match annotations.get(CONTAINER_TYPE).map(String::as_str) {
        None => Role::Plain,
        Some("sandbox") => Role::PodSandbox,
        Some("container") => Role::InPod {
            sandbox: annotations
                .get(SANDBOX_ID)
                .cloned()
                .ok_or_else(|| format!("annotations: {CONTAINER_TYPE} without {SANDBOX_ID}"))?,
        },
        Some(other) => return Err(format!("annotations: unknown {CONTAINER_TYPE} {other:?}")),
    };
    Ok(Mapped {
        launch,
        role,
        netns,
        unshared,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_id_or_a_digest_of_it() {
        assert_eq!(name_of("web-1"), "web-1");
        let cri = "3f1c0a9b".repeat(8);
        let n = name_of(&cri);
        assert!(n.starts_with("c-") && n.len() == 18, "{n}");
        assert_ne!(name_of("Web"), name_of("web2"));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn cgroup_paths_in_cgroupfs_and_systemd_notation() {
        let p = |s: &str| cgroup_of(s).map(|p| p.map(|p| p.display().to_string()));
        assert_eq!(p(""), Ok(None));
        assert_eq!(
            p("/kubepods/burstable/pod1/abc"),
            Ok(Some("kubepods/burstable/pod1/abc".into()))
        );
        assert_eq!(
            p("kubepods-besteffort-pod1.slice:cri-containerd:abc"),
            Ok(Some(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/\
                 cri-containerd-abc.scope"
                    .into()
            ))
        );
        assert_eq!(p(":cri:abc"), Ok(Some("system.slice/cri-abc.scope".into())));
        assert_eq!(p("-.slice:p:x"), Ok(Some("p-x.scope".into())));
        for bad in [
            "/a/../b",
            "/",
            "a.slice:p/q:x",
            "kube.pods:p:x",
            "a--b.slice:p:x",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("linux.cgroupsPath"), "{bad}: {e}");
        }
    }

    fn spec(linux: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["/bin/sh"], "cwd": "/", "env": ["A=1", "NOEQUALS"],
                "user": { "uid": 0, "gid": 0 },
            },
            "root": { "path": "rootfs" },
            "linux": linux,
        }))
        .unwrap()
    }

    fn namespaces(kinds: &[&str]) -> serde_json::Value {
        kinds
            .iter()
            .map(|k| serde_json::json!({ "type": k }))
            .collect()
    }

    #[test]
    fn host_namespaces_devices_and_namespace_paths_are_refused_by_field() {
        let root = Path::new("/r");
        let all = ["pid", "mount", "ipc", "uts", "network"];
        let plain = launch(
            "a",
            &spec(serde_json::json!({ "namespaces": namespaces(&all) })),
            root,
        )
        .unwrap();
        assert_eq!(plain.role, Role::Plain);
        assert_eq!(plain.netns, None);
        let e = launch(
            "a",
            &spec(serde_json::json!({ "namespaces": namespaces(&["mount", "ipc", "uts"]) })),
            root,
        )
        .unwrap_err();
        assert!(e.contains("linux.namespaces (Pid)"), "{e}");
        // A pod's namespaces: the network one is for the service to check; pid, ipc and uts
        // are the container's own; a mount, user or cgroup namespace is never joined.
        let pod = launch(
            "a",
            &spec(serde_json::json!({
                "namespaces": [
                    { "type": "pid", "path": "/proc/7/ns/pid" }, { "type": "mount" },
                    { "type": "ipc", "path": "/proc/7/ns/ipc" }, { "type": "uts" },
                    { "type": "network", "path": "/proc/7/ns/net" },
                ],
            })),
            root,
        )
        .unwrap();
        assert_eq!(pod.netns.as_deref(), Some(Path::new("/proc/7/ns/net")));
        assert_eq!(pod.launch.netns, None);
        assert_eq!(pod.unshared.len(), 2, "{:?}", pod.unshared);
        for kind in ["mount", "user", "cgroup"] {
            let e = launch(
                "a",
                &spec(serde_json::json!({
                    "namespaces": [
                        { "type": "pid" }, { "type": "mount" }, { "type": "ipc" }, { "type": "uts" },
                        { "type": kind, "path": "/proc/1/ns/x" },
                    ],
                })),
                root,
            )
            .unwrap_err();
            assert!(e.contains(").path"), "{e}");
        }
        let e = launch(
            "a",
            &spec(serde_json::json!({
                "devices": [{ "path": "/dev/sda", "type": "b", "major": 8, "minor": 0 }],
            })),
            root,
        )
        .unwrap_err();
        assert!(e.contains("linux.devices"), "{e}");
    }

    #[test]
    fn limits_only_narrow_osvms_defaults() {
        let root = Path::new("/r");
        let lower = launch(
            "a",
            &spec(serde_json::json!({ "resources": {
                "memory": { "limit": 64 << 20 },
                "cpu": { "quota": 50000, "period": 100000 },
                "pids": { "limit": 10 },
            }})),
            root,
        )
        .unwrap()
        .launch;
        assert_eq!(lower.resources.memory_bytes, Some(64 << 20));
        assert_eq!(lower.resources.cpus, Some(0.5));
        assert_eq!(lower.resources.pids, Some(10));
        let higher = launch(
            "a",
            &spec(serde_json::json!({ "resources": {
                "memory": { "limit": 64i64 << 30 },
                "cpu": { "quota": 800000, "period": 100000 },
                "pids": { "limit": 1_000_000 },
            }})),
            root,
        )
        .unwrap()
        .launch;
        let defaults = Resources::defaults();
        assert_eq!(higher.resources.memory_bytes, defaults.memory_bytes);
        assert_eq!(higher.resources.cpus, defaults.cpus);
        assert_eq!(higher.resources.pids, defaults.pids);
        // The rest of the process: args, env (a malformed entry dropped), the given root.
        assert_eq!(higher.command, "/bin/sh");
        assert_eq!(higher.env, [("A".to_owned(), "1".to_owned())]);
        assert_eq!(higher.rootfs.as_deref(), Some(root));
    }

    #[test]
    fn binds_are_taken_the_sandboxs_own_mounts_skipped_others_refused() {
        let root = Path::new("/r");
        let with = |mounts: serde_json::Value, extra: serde_json::Value| {
            let mut v = serde_json::json!({
                "ociVersion": "1.0.2",
                "process": { "args": ["/bin/sh"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
                "root": { "path": "rootfs" },
                "mounts": mounts,
            });
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            launch("a", &serde_json::from_value(v).unwrap(), root)
        };
        let m = with(
            serde_json::json!([
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev/shm", "type": "bind", "source": "/x/shm", "options": ["rbind", "rw"] },
                { "destination": "/run", "type": "tmpfs", "source": "tmpfs" },
                { "destination": "/etc/hosts", "type": "bind", "source": "/x/hosts", "options": ["rbind", "rw"] },
                { "destination": "/cfg", "source": "/x/cfg", "options": ["rbind", "ro"] },
            ]),
            serde_json::json!({}),
        )
        .unwrap();
        let binds: Vec<_> = m
            .launch
            .binds
            .iter()
            .map(|b| {
                (
                    b.source.to_str().unwrap(),
                    b.target.to_str().unwrap(),
                    b.writable,
                )
            })
            .collect();
        assert_eq!(
            binds,
            [("/x/hosts", "/etc/hosts", true), ("/x/cfg", "/cfg", false)]
        );
        let e = with(
            serde_json::json!([{ "destination": "/cache", "type": "tmpfs", "source": "tmpfs" }]),
            serde_json::json!({}),
        )
        .unwrap_err();
        assert!(e.contains("mounts[0] (tmpfs at /cache)"), "{e}");
        let e = with(
            serde_json::json!([{ "destination": "/v", "type": "bind", "source": "rel", "options": ["bind"] }]),
            serde_json::json!({}),
        )
        .unwrap_err();
        assert!(e.contains("mounts[0].source"), "{e}");
        // The user, inside the container's user namespace; an rlimit other than open files
        // refused by field.
        let m = with(
            serde_json::json!([]),
            serde_json::json!({ "process": { "args": ["/bin/sh"], "cwd": "/",
                "user": { "uid": 1000, "gid": 100, "additionalGids": [5] } } }),
        )
        .unwrap();
        assert_eq!(
            m.launch.user,
            Some(RunAs {
                uid: 1000,
                gid: 100,
                groups: vec![5]
            })
        );
        let m = with(
            serde_json::json!([]),
            serde_json::json!({ "process": { "args": ["/bin/sh"], "cwd": "/", "user": { "uid": 0, "gid": 0 },
                "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 100, "soft": 100 }] } }),
        )
        .unwrap();
        assert_eq!(m.launch.resources.open_files, Some(100));
        let e = with(
            serde_json::json!([]),
            serde_json::json!({ "process": { "args": ["/bin/sh"], "cwd": "/", "user": { "uid": 0, "gid": 0 },
                "rlimits": [{ "type": "RLIMIT_NPROC", "hard": 100, "soft": 100 }] } }),
        )
        .unwrap_err();
        assert!(e.contains("process.rlimits"), "{e}");
        // CRI's roles.
        let role = |a: serde_json::Value| {
            with(
                serde_json::json!([]),
                serde_json::json!({ "annotations": a }),
            )
            .map(|m| m.role)
        };
        assert_eq!(
            role(serde_json::json!({ CONTAINER_TYPE: "sandbox", SANDBOX_ID: "p" })).unwrap(),
            Role::PodSandbox
        );
        assert_eq!(
            role(serde_json::json!({ CONTAINER_TYPE: "container", SANDBOX_ID: "p" })).unwrap(),
            Role::InPod {
                sandbox: "p".into()
            }
        );
        assert!(role(serde_json::json!({ CONTAINER_TYPE: "container" })).is_err());
    }
}
