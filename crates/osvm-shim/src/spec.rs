//! An OCI runtime spec (a bundle's `config.json`) as an osvm launch.
//!
//! The sandbox's guarantees are osvm's, not the spec's: a spec may narrow what osvm gives (a
//! memory or pids limit, a read-only root), never widen it. What osvm refuses is an error that
//! names the field: a privileged process (capabilities beyond none), host namespaces (a
//! namespace list without pid, mount, ipc or uts), devices. Taken from the spec: the process's
//! args, env and cwd, the memory, CPU and pids limits, and a read-only root. Not yet: mounts
//! (the image's root only), user, rlimits, the pod's network namespace and cgroup path.

use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use osvm_core::{DataKind, LaunchSpec, Resources};

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

/// A spec field osvm will not honour, and why.
fn refused(field: &str, why: &str) -> String {
    format!("{field}: {why} (osvm's sandbox gives a container no more than its defaults)")
}

/// The launch for container `id` from the bundle's `spec`, its root at `rootfs`.
pub fn launch(id: &str, spec: &Spec, rootfs: &Path) -> Result<LaunchSpec, String> {
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
    launch.resources = Resources::defaults();
    launch.data = DataKind::Ephemeral;
    launch.rootfs = Some(rootfs.to_path_buf());
    launch.working_dir = Some(process.cwd().clone()).filter(|c| c.as_os_str() != "/");
    for kv in process.env().clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=')
            && !k.is_empty()
        {
            launch.env.push((k.to_owned(), v.to_owned()));
        }
    }
    launch.readonly_root = spec
        .root()
        .as_ref()
        .is_some_and(|r| r.readonly() == Some(true));
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
            if let Some(n) = namespaces.iter().find(|n| n.path().is_some()) {
                return Err(refused(
                    &format!("linux.namespaces ({:?}).path", n.typ()),
                    "joining an existing namespace is not supported yet",
                ));
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
    Ok(launch)
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
        assert!(
            launch(
                "a",
                &spec(serde_json::json!({ "namespaces": namespaces(&all) })),
                root
            )
            .is_ok()
        );
        let e = launch(
            "a",
            &spec(serde_json::json!({ "namespaces": namespaces(&["mount", "ipc", "uts"]) })),
            root,
        )
        .unwrap_err();
        assert!(e.contains("linux.namespaces (Pid)"), "{e}");
        let e = launch(
            "a",
            &spec(serde_json::json!({
                "namespaces": [
                    { "type": "pid" }, { "type": "mount" }, { "type": "ipc" }, { "type": "uts" },
                    { "type": "network", "path": "/proc/1/ns/net" },
                ],
            })),
            root,
        )
        .unwrap_err();
        assert!(e.contains("linux.namespaces (Network).path"), "{e}");
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
        .unwrap();
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
        .unwrap();
        let defaults = Resources::defaults();
        assert_eq!(higher.resources.memory_bytes, defaults.memory_bytes);
        assert_eq!(higher.resources.cpus, defaults.cpus);
        assert_eq!(higher.resources.pids, defaults.pids);
        // The rest of the process: args, env (a malformed entry dropped), the given root.
        assert_eq!(higher.command, "/bin/sh");
        assert_eq!(higher.env, [("A".to_owned(), "1".to_owned())]);
        assert_eq!(higher.rootfs.as_deref(), Some(root));
    }
}
