//! The bridge that joins a guest's TAP to its namespace's `eth0`, on a host where
//! br_netfilter is active (Docker, Kubernetes and CNI hosts, and kernels with it built in):
//! frames crossing the bridge would go through the namespace's netfilter hooks and never reach
//! the guest. `attach` turns the hooks off in that namespace only.

use std::path::Path;
use std::process::Command;

use osvm_guest::net;

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("runs")
}

fn hook(netns: &str, name: &str) -> Option<String> {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        netns,
        "cat",
        &format!("/proc/sys/net/bridge/bridge-nf-call-{name}"),
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A namespace with `eth0` (one end of a veth pair), an address and a default route, as
/// osvm-net makes them; removed on drop with the pair.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// osvm's state directory for the test (where `attach` records the namespace's address).
struct StateDir(std::path::PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn attach_turns_br_netfilter_off_in_the_guests_namespace_only() {
    let test = "attach_turns_br_netfilter_off_in_the_guests_namespace_only";
    if !nix::unistd::geteuid().is_root() {
        osvm_testkit::skip("root", test, "needs root (network namespaces)");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        osvm_testkit::skip("hub", test, "`ip` is not installed");
        return;
    }
    let ns = Netns(format!("osvm-t-brnf-{}", std::process::id()));
    let peer = format!("vbrnf{}", std::process::id() % 100_000);
    assert!(sh(&["ip", "netns", "add", &ns.0]).status.success());
    let before: Vec<Option<String>> = ["iptables", "ip6tables", "arptables"]
        .iter()
        .map(|h| hook(&ns.0, h))
        .collect();
    if before.iter().any(|v| v.as_deref() != Some("1")) {
        osvm_testkit::skip(
            "br_netfilter",
            test,
            &format!("br_netfilter is not active in a new namespace here ({before:?})"),
        );
        return;
    }
    for args in [
        vec![
            "ip", "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
        ],
        vec![
            "ip",
            "-n",
            &ns.0,
            "addr",
            "add",
            "10.213.77.2/24",
            "dev",
            "eth0",
        ],
        vec!["ip", "-n", &ns.0, "link", "set", "eth0", "up"],
        vec![
            "ip",
            "-n",
            &ns.0,
            "route",
            "add",
            "default",
            "via",
            "10.213.77.1",
        ],
    ] {
        let out = sh(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let state = StateDir(std::env::temp_dir().join(format!("osvm-t-brnf-{}", std::process::id())));
    let attached = net::attach(&state.0, &Path::new("/run/netns").join(&ns.0)).expect("attach");
    assert_eq!(attached.guest.address, "10.213.77.2/24");
    for h in ["iptables", "ip6tables", "arptables"] {
        assert_eq!(
            hook(&ns.0, h).as_deref(),
            Some("0"),
            "bridge-nf-call-{h} in the guest's namespace"
        );
    }
    // The host's own setting (and any other namespace's) is left alone.
    let other = Netns(format!("osvm-t-brnf2-{}", std::process::id()));
    assert!(sh(&["ip", "netns", "add", &other.0]).status.success());
    assert_eq!(hook(&other.0, "iptables").as_deref(), Some("1"));
    net::detach(&attached.netns, &attached.guest).expect("detach");
}
