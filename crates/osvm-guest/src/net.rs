//! A VM's network: a TAP device inside the component's network namespace, bridged to the
//! namespace's `eth0`, so the guest owns the component's address and the hub's zero-trust rules
//! apply to a VM exactly as to a process.
//!
//! osvm-net gives every component namespace an `eth0` with the component's address (`.2/30`)
//! and a default route via the hub (`.1`). For a VM, [`attach`] moves that address into the
//! guest: it creates `tap0` (opened with `TUNSETIFF` from a thread that entered the namespace,
//! so the device is born there and QEMU, which gets only the open descriptor, needs neither
//! the namespace nor `/dev/net/tun`), makes a bridge `br0` of `eth0` and `tap0`, and removes
//! the address from `eth0`. The guest's agent configures the same address and route on its own
//! `eth0`. [`detach`] puts the namespace back as osvm-net made it. The address is also saved in
//! `<state>/vmnet/<namespace>.json`, so a namespace left bridged by a crash is still usable.

use std::fs::{self, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use osvm_agent::proto::GuestNetwork;
use serde::Deserialize;

/// The TAP device's name inside the namespace.
pub const TAP: &str = "tap0";
/// The bridge's name inside the namespace.
pub const BRIDGE: &str = "br0";

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An `ip` command failed.
    #[error("{0}")]
    Command(String),
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The namespace has no usable address.
    #[error("{0}")]
    NoAddress(String),
}

/// A TAP attached in a namespace.
#[derive(Debug)]
pub struct Attached {
    /// The open TAP device, handed to QEMU.
    pub tap: OwnedFd,
    /// What the guest configures.
    pub guest: GuestNetwork,
    /// The namespace's name (`ip -n`).
    pub netns: String,
    /// The guest's MAC address.
    pub mac: String,
}

fn ip(netns: &str, args: &[&str]) -> Result<String, NetError> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args)
        .output()
        .map_err(|source| NetError::Io {
            context: "run ip".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Command(format!(
            "`ip -n {netns} {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Deserialize)]
struct AddrInfo {
    local: String,
    prefixlen: u8,
}

#[derive(Deserialize)]
struct Link {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct Route {
    gateway: Option<String>,
}

fn saved_path(state_dir: &Path, netns: &str) -> PathBuf {
    state_dir.join("vmnet").join(format!("{netns}.json"))
}

/// The address and gateway osvm-net gave the namespace's `eth0`.
fn read_config(state_dir: &Path, netns: &str) -> Result<GuestNetwork, NetError> {
    let links: Vec<Link> =
        serde_json::from_str(&ip(netns, &["-j", "-4", "addr", "show", "dev", "eth0"])?)
            .unwrap_or_default();
    let routes: Vec<Route> =
        serde_json::from_str(&ip(netns, &["-j", "-4", "route", "show", "default"])?)
            .unwrap_or_default();
    let addr = links.iter().flat_map(|l| &l.addr_info).next();
    let gateway = routes.iter().find_map(|r| r.gateway.clone());
    if let (Some(a), Some(gateway)) = (addr, gateway) {
        return Ok(GuestNetwork {
            address: format!("{}/{}", a.local, a.prefixlen),
            gateway,
        });
    }
    let saved = saved_path(state_dir, netns);
    let text = fs::read(&saved).map_err(|_| {
        NetError::NoAddress(format!(
            "network namespace {netns} has no IPv4 address and default route on eth0 to give \
             the guest"
        ))
    })?;
    let (address, gateway): (String, String) = serde_json::from_slice(&text)
        .map_err(|e| NetError::NoAddress(format!("{} is malformed: {e}", saved.display())))?;
    Ok(GuestNetwork { address, gateway })
}

/// A MAC address stable for a namespace (locally administered, unicast), so a restarted VM
/// keeps the hub's neighbour entry valid.
pub fn mac_for(netns: &str) -> String {
    let h =
        crate::digest::hex(ring::digest::digest(&ring::digest::SHA256, netns.as_bytes()).as_ref());
    format!("02:6f:{}:{}:{}:{}", &h[0..2], &h[2..4], &h[4..6], &h[6..8])
}

/// Opens `/dev/net/tun` as TAP `name` inside the namespace at `netns_path`.
fn open_tap(netns_path: &Path, name: &str) -> Result<OwnedFd, NetError> {
    let name = name.to_owned();
    osvm_net::netns::run_in_path(netns_path, move || -> Result<OwnedFd, NetError> {
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|source| NetError::Io {
                context: "open /dev/net/tun".into(),
                source,
            })?;
        #[repr(C)]
        struct IfReq {
            name: [u8; libc::IFNAMSIZ],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes, name then flags),
        // which `req` is, and it lives across the call.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(NetError::Io {
                context: format!("create TAP {name} (TUNSETIFF)"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(OwnedFd::from(tun))
    })
    .map_err(|e| NetError::Command(format!("create TAP in {}: {e}", netns_path.display())))?
}

/// Attaches a TAP in the namespace at `netns_path` and gives the namespace's address to it.
pub fn attach(state_dir: &Path, netns_path: &Path) -> Result<Attached, NetError> {
    let netns = netns_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| NetError::Command(format!("bad namespace {}", netns_path.display())))?;
    let guest = read_config(state_dir, &netns)?;
    let saved = saved_path(state_dir, &netns);
    if let Some(dir) = saved.parent() {
        let _ = fs::create_dir_all(dir);
    }
    fs::write(
        &saved,
        serde_json::to_vec(&(&guest.address, &guest.gateway)).expect("serializes"),
    )
    .map_err(|source| NetError::Io {
        context: format!("write {}", saved.display()),
        source,
    })?;
    let tap = open_tap(netns_path, TAP)?;
    if let Err(e) = ip(&netns, &["link", "add", BRIDGE, "type", "bridge"])
        && !e.to_string().contains("File exists")
    {
        return Err(e);
    }
    // Where br_netfilter is active (a host that ran Docker, Kubernetes or a CNI bridge), the
    // frames this bridge carries between the guest and eth0 would go through this namespace's
    // netfilter hooks as if routed, and never reach the guest: the bridge is a plain L2 join
    // (policy is enforced in the hub), so this namespace turns those hooks off.
    for hook in ["iptables", "ip6tables", "arptables"] {
        let path = format!("/proc/sys/net/bridge/bridge-nf-call-{hook}");
        let _ = Command::new("ip")
            .args(["netns", "exec", &netns, "sh", "-c"])
            .arg(format!("[ ! -e {path} ] || echo 0 > {path}"))
            .output();
    }
    ip(&netns, &["addr", "flush", "dev", "eth0"])?;
    ip(&netns, &["link", "set", "eth0", "master", BRIDGE])?;
    ip(&netns, &["link", "set", TAP, "master", BRIDGE])?;
    ip(&netns, &["link", "set", BRIDGE, "up"])?;
    ip(&netns, &["link", "set", TAP, "up"])?;
    Ok(Attached {
        tap,
        mac: mac_for(&netns),
        guest,
        netns,
    })
}

/// Announces the guest's address from the host side of the TAP: a gratuitous ARP request
/// ("`ip` is at `mac`") written into the TAP as if the guest had sent it. A guest whose network
/// stack does not announce itself (Hermit's) would otherwise stay unreachable while the hub
/// still holds the namespace's `eth0` MAC for the address from before the guest took it over
/// (Linux replaces a neighbour entry on a gratuitous ARP at once).
pub fn announce(
    tap: std::os::fd::BorrowedFd<'_>,
    mac: &str,
    ip: std::net::Ipv4Addr,
) -> std::io::Result<()> {
    let mac: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    if mac.len() != 6 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a MAC has 6 bytes",
        ));
    }
    // The TAP carries a virtio-net header before each frame; its size is whatever QEMU set.
    let mut hdr: libc::c_int = 10;
    // SAFETY: TUNGETVNETHDRSZ writes one int through the pointer, which points at `hdr`.
    let rc = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut hdr) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut frame = vec![0u8; hdr.max(0) as usize];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&[0x08, 0x06]);
    // ARP: Ethernet, IPv4, request, sender = target = the guest.
    frame.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&ip.octets());
    // SAFETY: writes `frame.len()` bytes from `frame`, which lives across the call.
    let n = unsafe { libc::write(tap.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Undoes [`attach`]: the bridge goes, `eth0` gets its address and default route back.
pub fn detach(netns: &str, guest: &GuestNetwork) -> Result<(), NetError> {
    let tolerate = |r: Result<String, NetError>, what: &str| match r {
        Ok(_) => Ok(()),
        Err(e)
            if e.to_string().contains(what)
                || e.to_string().contains("Cannot find device")
                || e.to_string().contains("does not exist") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    };
    tolerate(ip(netns, &["link", "del", BRIDGE]), "Cannot find")?;
    tolerate(
        ip(netns, &["addr", "add", &guest.address, "dev", "eth0"]),
        "File exists",
    )?;
    tolerate(
        ip(netns, &["route", "add", "default", "via", &guest.gateway]),
        "File exists",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_unicast_and_local() {
        let a = mac_for("osvm-c-demo-web");
        assert_eq!(a, mac_for("osvm-c-demo-web"));
        assert_ne!(a, mac_for("osvm-c-demo-db"));
        assert!(a.starts_with("02:"), "{a}");
        assert_eq!(a.len(), 17);
    }
}
