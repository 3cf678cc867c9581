//! The component network: every component in its own network namespace, joined to a routing
//! *hub* namespace by a veth pair on its own /30, with an nftables `inet` table in the hub that
//! drops whatever policy does not allow.
//!
//! - [`ipam`] hands out the /30s and remembers them across restarts (reused after release, never
//!   given twice);
//! - [`hub`] creates the hub and the veths (with `ip`, the kernel's own tool);
//! - [`ruleset`] turns the stack's policy, judged by `osvm-policy`, into the nftables ruleset and
//!   applies it in one `nft -f` transaction.
//! - [`listeners`] finds who listens on a TCP port of the host (before a port is published);
//! - [`netns`] runs work on a thread inside another network namespace, the one way osvm does
//!   it.
//!
//! Nothing here prints; errors say which command failed and what it wrote.
#![forbid(unsafe_code)]

pub mod enforce;
pub mod hub;
pub mod ipam;
pub mod listeners;
pub mod netns;
pub mod proxy;
pub mod ruleset;
pub mod uplink;

use std::process::Command;

/// What can go wrong building the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command (`ip`, `nft`) could not run or failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and standard error, or why it did not start.
        detail: String,
    },
    /// The address pool has no free /30 left.
    #[error("no free address block left in {0}")]
    Exhausted(String),
    /// Another hub on this host already holds what this one needs (the service pool's route).
    #[error("{0}")]
    Taken(String),
    /// The durable address record could not be read or written.
    #[error("address record {path}: {detail}")]
    Store {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

/// Runs `program args`, feeding `stdin` when given; errors carry the command and its stderr.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    use std::io::Write;
    use std::process::Stdio;
    let line = format!("{program} {}", args.join(" "));
    let fail = |detail: String| NetError::Command {
        command: line.clone(),
        detail,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                fail(format!(
                    "{program} is not installed ({})",
                    package_of(program)
                ))
            } else {
                fail(e.to_string())
            }
        })?;
    // A program that ends without reading its input (missing, or failing at once) breaks the
    // pipe: its own exit says why, so the write's error counts only when it succeeded.
    let written = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => pipe.write_all(text.as_bytes()),
        _ => Ok(()),
    };
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        written.map_err(|e| fail(format!("writing its input: {e}")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // `ip netns exec NS PROGRAM` when PROGRAM is missing.
        if let Some(missing) = stderr
            .trim()
            .strip_prefix("exec of \"")
            .and_then(|rest| rest.strip_suffix("\" failed: No such file or directory"))
        {
            return Err(fail(format!(
                "{missing} is not installed ({})",
                package_of(missing)
            )));
        }
        Err(fail(format!("{}: {}", out.status, stderr.trim())))
    }
}

/// The Debian package that provides `program`.
fn package_of(program: &str) -> &'static str {
    match program {
        "nft" => "Debian package nftables",
        "conntrack" => "Debian package conntrack",
        "ip" => "Debian package iproute2",
        "sysctl" => "Debian package procps",
        _ => "not in PATH",
    }
}

#[cfg(test)]
mod tests {
    /// A program that exits without reading its input is reported by its exit, not by the
    /// broken pipe the write ran into (which raced with it: `ip netns exec NS nft` with nft
    /// missing was sometimes "Broken pipe", sometimes "nft is not installed").
    #[test]
    fn a_program_that_exits_unread_is_reported_by_its_exit_not_the_broken_pipe() {
        let input = "x".repeat(4 << 20);
        for _ in 0..5 {
            let e = super::run("sh", &["-c", "echo gone >&2; exit 3"], Some(&input))
                .unwrap_err()
                .to_string();
            assert!(e.contains("exit status: 3") && e.contains("gone"), "{e}");
        }
        // One that succeeds without reading everything still fails, by the write.
        let e = super::run("true", &[], Some(&input))
            .unwrap_err()
            .to_string();
        assert!(e.contains("writing its input"), "{e}");
    }
}
