//! Network probes, for component network policy: the `nft` tool and the kernel's nf_tables,
//! and the `ip` and `conntrack` tools the hub is built and maintained with.

use super::command::{COMMAND_TIMEOUT, run_command};
use super::{AREA_NETWORK, Check, ProbeError};

/// Rows for the nft tool and the kernel's nf_tables.
pub(super) fn nft_checks(is_root: bool) -> Vec<Check> {
    let tool = match run_command("nft", &["--version"], COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(out.first_line().to_owned()),
        Ok(out) => Err(format!(
            "`nft --version` failed ({}): {}",
            out.status,
            out.first_line()
        )),
        Err(e @ ProbeError::NotFound { .. }) => {
            Err(format!("{e}; install Debian package nftables"))
        }
        Err(e) => Err(e.to_string()),
    };
    let kernel = match (&tool, is_root) {
        (Err(_), _) => Check::no(AREA_NETWORK, "nf_tables", "not checked: nft is unavailable"),
        (Ok(_), false) => Check::no(
            AREA_NETWORK,
            "nf_tables",
            "not checked: `nft list tables` needs root",
        ),
        (Ok(_), true) => match run_command("nft", &["list", "tables"], COMMAND_TIMEOUT) {
            Ok(out) if out.status.success() => {
                let tables = out
                    .stdout
                    .lines()
                    .filter(|l| l.starts_with("table "))
                    .count();
                Check::yes(
                    AREA_NETWORK,
                    "nf_tables",
                    format!("kernel answers `nft list tables` ({tables} tables now)"),
                )
            }
            Ok(out) => Check::no(
                AREA_NETWORK,
                "nf_tables",
                format!(
                    "`nft list tables` failed ({}): {}",
                    out.status,
                    out.first_line()
                ),
            ),
            Err(e) => Check::no(AREA_NETWORK, "nf_tables", e.to_string()),
        },
    };
    let tool = match tool {
        Ok(version) => Check::yes(AREA_NETWORK, "nft", version),
        Err(why) => Check::no(AREA_NETWORK, "nft", why),
    };
    vec![
        tool,
        kernel,
        tool_check(
            "ip",
            &["-V"],
            "iproute2",
            "creates the hub and the veth pairs",
        ),
        tool_check(
            "conntrack",
            &["--version"],
            "conntrack",
            "cuts live connections when an allow is revoked",
        ),
    ]
}

/// A row for a helper tool osvm runs: its version line, or how to install it.
fn tool_check(
    program: &'static str,
    args: &'static [&'static str],
    package: &str,
    role: &str,
) -> Check {
    match run_command(program, args, COMMAND_TIMEOUT) {
        Ok(out) if out.status.success() => Check::yes(
            AREA_NETWORK,
            program,
            format!("{} ({role})", out.first_line()),
        ),
        Ok(out) => Check::no(
            AREA_NETWORK,
            program,
            format!("`{program} {}` failed ({})", args.join(" "), out.status),
        ),
        Err(e @ ProbeError::NotFound { .. }) => Check::no(
            AREA_NETWORK,
            program,
            format!("{e}; install Debian package {package} (osvm {role} with it)"),
        ),
        Err(e) => Check::no(AREA_NETWORK, program, e.to_string()),
    }
}
