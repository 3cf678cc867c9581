//! The guest's identity and network, configured from the launch before the workload starts.
//!
//! Failures are printed and skipped: a workload that does not need the network may still run,
//! and one that does reports the problem itself more precisely than the agent could.

use std::fs;
use std::time::Duration;

use osvm_agent::proto::{IDENTITY_DIR, IdentityFile, Launch};

use super::Agent;
use super::exec::{self, Context};

/// The busybox the image always ships; its `ip` and `arping` applets configure the network.
const BUSYBOX: &str = "/bin/busybox";
/// Generous for an `ip` command, which touches nothing but the kernel (`arping` waits 1 s).
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Brings up loopback and `eth0`, writes `/etc/hosts` and sets the hostname.
pub fn configure(agent: &Agent, launch: &Launch) {
    if let Some(ns) = launch.time_unix_ns {
        let now = nix::sys::time::TimeSpec::new(
            (ns / 1_000_000_000) as libc::time_t,
            (ns % 1_000_000_000) as libc::c_long,
        );
        match nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now) {
            Ok(()) => say!("clock set to the host's"),
            Err(error) => say!("cannot set the clock: {error}"),
        }
    }
    if !launch.entropy.is_empty()
        && let Err(error) = super::system::reseed_random(&launch.entropy)
    {
        say!("cannot reseed the random number generator: {error}");
    }
    ip(agent, &["link", "set", "lo", "up"]);
    if let Some(mac) = &launch.mac {
        ip(agent, &["link", "set", "dev", "eth0", "address", mac]);
        say!("eth0: MAC {mac}");
    }
    if let Some(network) = &launch.network {
        ip(agent, &["addr", "add", &network.address, "dev", "eth0"]);
        ip(agent, &["link", "set", "eth0", "up"]);
        ip(agent, &["route", "add", "default", "via", &network.gateway]);
        // A gratuitous ARP: the hub may still map this address to the MAC of the process that
        // held it before this VM (the namespace's own eth0), and would keep sending there.
        let own = network
            .address
            .split('/')
            .next()
            .unwrap_or(&network.address);
        applet(
            agent,
            "arping",
            &["-U", "-c", "1", "-w", "1", "-I", "eth0", own],
        );
        say!("eth0: {} via {}", network.address, network.gateway);
    }
    if let Err(error) = write_hosts(launch) {
        say!("cannot write /etc/hosts: {error}");
    }
    if !launch.identity.is_empty()
        && let Err(error) = write_identity(&launch.identity)
    {
        say!("cannot write the identity files: {error}");
    }
    if !launch.hostname.is_empty()
        && let Err(error) = nix::unistd::sethostname(&launch.hostname)
    {
        say!("cannot set the hostname {:?}: {error}", launch.hostname);
    }
}

/// Runs `busybox ip ARGS`, printing what went wrong if it fails.
fn ip(agent: &Agent, args: &[&str]) {
    applet(agent, "ip", args);
}

/// Runs `busybox APPLET ARGS`, printing what went wrong if it fails.
fn applet(agent: &Agent, applet: &str, args: &[&str]) {
    let argv: Vec<String> = [BUSYBOX, applet]
        .iter()
        .chain(args)
        .map(|arg| arg.to_string())
        .collect();
    match exec::run(&agent.children, &argv, &Context::default(), IP_TIMEOUT) {
        Ok(outcome) if outcome.code == Some(0) => {}
        Ok(outcome) => say!(
            "`{applet} {}` failed ({}): {}",
            args.join(" "),
            match (outcome.code, outcome.timed_out) {
                (_, true) => "timed out".to_string(),
                (Some(code), _) => format!("exit code {code}"),
                (None, _) => format!("signal {:?}", outcome.signal),
            },
            String::from_utf8_lossy(&outcome.stderr).trim()
        ),
        Err(error) => say!("cannot run `{applet} {}`: {error}", args.join(" ")),
    }
}

/// Writes `/etc/hosts`: localhost, the guest's own name, then the launch's lines.
fn write_hosts(launch: &Launch) -> std::io::Result<()> {
    let mut hosts = String::from("127.0.0.1\tlocalhost\n");
    if !launch.hostname.is_empty() {
        hosts.push_str(&format!("127.0.1.1\t{}\n", launch.hostname));
    }
    for (address, names) in &launch.hosts {
        hosts.push_str(&format!("{address}\t{names}\n"));
    }
    // The initramfs root is writable, but may not have /etc yet.
    fs::create_dir_all("/etc")?;
    fs::write("/etc/hosts", hosts)
}

/// Writes the identity files into [`IDENTITY_DIR`], each replaced whole (written beside, then
/// renamed), with the modes the host gave (a process sandbox's: the key 0400, the rest 0444).
pub fn write_identity(files: &[IdentityFile]) -> std::io::Result<()> {
    let written = write_identity_in(std::path::Path::new(IDENTITY_DIR), files);
    // Whatever was replaced, the mtls_egress configuration is built again from what is there.
    super::egress::identity_rewritten();
    written
}

/// [`write_identity`] into `dir`.
fn write_identity_in(dir: &std::path::Path, files: &[IdentityFile]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for file in files {
        let plain = !file.name.is_empty()
            && !file.name.starts_with('.')
            && file
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        if !plain {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("not a plain file name: {:?}", file.name),
            ));
        }
        let part = dir.join(format!(".{}.part", file.name));
        let _ = fs::remove_file(&part);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&part)?;
        out.write_all(file.text.as_bytes())?;
        out.sync_all()?;
        fs::set_permissions(&part, fs::Permissions::from_mode(file.mode & 0o777))?;
        fs::rename(&part, dir.join(&file.name))?;
    }
    Ok(())
}

/// Mounts the ext4 data volume on `device` at `/data` (`nosuid`, `nodev`), waiting up to 10 s
/// for the device node (the block driver probes it as the guest boots).
pub fn mount_data(device: &str) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(device).exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{device} did not appear within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::create_dir_all("/data").map_err(|e| format!("create /data: {e}"))?;
    mount(
        Some(device),
        "/data",
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("mount {device} (ext4) at /data: {e}"))?;
    say!("/data: ext4 on {device}");
    Ok(())
}

/// Mounts a host directory shared over virtio-fs (`nosuid`, `nodev`, read-only if asked) at
/// its target, which must be an absolute path without `..`.
pub fn mount_shared(shared: &osvm_agent::proto::GuestMount) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    use std::path::{Component, Path};
    let target = Path::new(&shared.target);
    if !target.is_absolute()
        || target
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "mount target {:?} is not a plain absolute path",
            shared.target
        ));
    }
    fs::create_dir_all(target).map_err(|e| format!("create {}: {e}", target.display()))?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if shared.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some(shared.tag.as_str()),
        target,
        Some("virtiofs"),
        flags,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "mount {} (virtiofs) at {}: {e}",
            shared.tag,
            target.display()
        )
    })?;
    say!(
        "{}: virtiofs {}{}",
        target.display(),
        shared.tag,
        if shared.read_only { ", read-only" } else { "" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(name: &str, mode: u32) -> IdentityFile {
        IdentityFile {
            name: name.into(),
            mode,
            text: format!("{name}\n"),
        }
    }

    /// A launch cannot make the agent create or mount anything outside a plain absolute
    /// target: relative paths and `..` are refused before anything is touched.
    #[test]
    fn a_shared_directory_target_must_be_a_plain_absolute_path() {
        for target in ["shared", "/srv/../etc", "../x", ""] {
            let shared = osvm_agent::proto::GuestMount {
                tag: "m0".into(),
                target: target.into(),
                read_only: true,
            };
            let err = mount_shared(&shared).unwrap_err();
            assert!(err.contains("not a plain absolute path"), "{target}: {err}");
        }
    }

    #[test]
    fn identity_files_land_in_their_directory_with_their_modes_and_nowhere_else() {
        let root = std::env::temp_dir().join(format!("osvm-agent-id-{}", std::process::id()));
        let dir = root.join("identity");
        let _ = fs::remove_dir_all(&root);
        write_identity_in(&dir, &[file("key.pem", 0o400), file("cert.pem", 0o4755)]).unwrap();
        let mode = |n: &str| fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("key.pem"), 0o400);
        assert_eq!(mode("cert.pem"), 0o755, "no set-id bits from the host");
        // A name that leaves the directory, or hides in it, is refused and writes nothing.
        for evil in ["../escaped.pem", "/etc/passwd", ".hidden", "a/b", ""] {
            assert!(
                write_identity_in(&dir, &[file(evil, 0o444)]).is_err(),
                "{evil}"
            );
        }
        assert!(!root.join("escaped.pem").exists());
        let _ = fs::remove_dir_all(&root);
    }
}
