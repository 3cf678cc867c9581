//! Test support shared by osvm's test suites: the one place that decides what a missing host
//! feature means for a test.
//!
//! A test that needs something the host may lack (root, QEMU, nftables, the MCP reference
//! servers, ...) calls [`skip`] with the name of that feature when it is missing. Normally that
//! prints `SKIP <test>: <why>` past the harness's output capture and the test returns. Under
//! `OSVM_REQUIRE` (a comma-separated list of feature names, or `all`), a missing feature that is
//! listed fails the test instead: `.ci/run` lists everything it installs, so on CI a test can
//! never pass by skipping what it was meant to exercise.
//!
//! The feature names are [`FEATURES`].
#![forbid(unsafe_code)]

use std::io::Write;

/// The features tests may need, and what each stands for.
pub const FEATURES: &[(&str, &str)] = &[
    ("root", "root and a cgroup hierarchy (the process sandbox)"),
    ("busybox", "the static /bin/busybox (Debian busybox-static)"),
    ("python3", "/usr/bin/python3"),
    ("hub", "ip, nft and conntrack (hub networks and policy)"),
    (
        "microvm",
        "QEMU, vhost-device-vsock, the static guest agent and a guest kernel",
    ),
    (
        "unikernel",
        "QEMU and the Hermit build tools (rust-src, x86_64-unknown-none, binutils)",
    ),
    (
        "mcp",
        "the reference MCP servers (npm) and the MCP Python SDK (PyPI)",
    ),
    ("curl", "curl"),
    (
        "containerd",
        "containerd, ctr, umoci and skopeo (the containerd shim's tests)",
    ),
    ("openssl", "the openssl command"),
    (
        "browser",
        "Debian's chromium (the dashboard's browser test)",
    ),
    ("landlock", "Landlock ABI 6 or newer"),
    (
        "br_netfilter",
        "br_netfilter active (bridge-nf-call-* in a new network namespace)",
    ),
    ("kvm", "hardware KVM (VMX/SVM, not PVM)"),
    ("no-kvm", "a host without hardware KVM"),
    ("uhyve", "uhyve and hardware KVM"),
    (
        "uplink",
        "198.51.100.0/24 free on the host (the test's outside network)",
    ),
];

/// Whether `OSVM_REQUIRE` lists `feature` (or is `all`).
pub fn required(feature: &str) -> bool {
    std::env::var("OSVM_REQUIRE").is_ok_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|f| f == feature || f == "all")
    })
}

/// Test `test` cannot run because `feature` is missing (`why` says how): prints a skip line, or
/// fails the test when `OSVM_REQUIRE` says this host must have the feature.
pub fn skip(feature: &str, test: &str, why: &str) {
    debug_assert!(
        FEATURES.iter().any(|(f, _)| *f == feature),
        "unknown test feature {feature}"
    );
    if required(feature) {
        panic!("{test}: OSVM_REQUIRE needs `{feature}` on this host, but: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// Tests that route the hub's service pool (10.214.0.0/16) from the host take turns, across
/// test binaries: the host has one route for it, and a daemon (or `Uplink::publish`) refuses to
/// take it while another hub holds it. The returned file holds the turn until dropped.
pub fn host_route_turn() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("osvm-tests-host-route.lock"))
        .expect("open the host-route lock file");
    file.lock().expect("lock the host-route lock file");
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_feature_has_a_meaning_and_a_unique_name() {
        for (i, (name, meaning)) in FEATURES.iter().enumerate() {
            assert!(!meaning.is_empty());
            assert!(FEATURES[i + 1..].iter().all(|(other, _)| other != name));
        }
    }
}
