//! seccomp probes: kernel support, the filter actions the sandbox uses, and user notification.

use std::collections::BTreeSet;

use super::parse::parse_status_field;
use super::{AREA_SECCOMP, Check, name_list, read_text, read_value};

/// Words for a seccomp mode number.
fn seccomp_mode_words(mode: i32) -> &'static str {
    match mode {
        0 => "disabled",
        1 => "strict",
        2 => "filter",
        _ => "unknown",
    }
}

/// Rows for seccomp support, the filter actions the sandbox uses, and user notification.
pub(super) fn seccomp_checks() -> Vec<Check> {
    let status = read_text("/proc/self/status");
    let field = status
        .as_ref()
        .ok()
        .and_then(|s| parse_status_field(s, "Seccomp").map(str::to_owned));
    let prctl = osvm_sandbox::host::seccomp_mode();

    let support = match (&field, prctl) {
        (Some(_), Ok(mode)) => Check::yes(
            AREA_SECCOMP,
            "support",
            format!(
                "kernel has seccomp; this process is in mode {mode} ({})",
                seccomp_mode_words(mode)
            ),
        ),
        (None, _) => Check::no(
            AREA_SECCOMP,
            "support",
            match &status {
                Ok(_) => "unavailable: no Seccomp field in /proc/self/status \
                          (kernel without CONFIG_SECCOMP)"
                    .to_owned(),
                Err(e) => format!("unavailable: {e}"),
            },
        ),
        (Some(_), Err(errno)) => Check::no(
            AREA_SECCOMP,
            "support",
            format!("unavailable: prctl(PR_GET_SECCOMP) failed with {errno}"),
        ),
    };

    const ACTIONS: &str = "/proc/sys/kernel/seccomp/actions_avail";
    let (filter, notify) = match read_value(ACTIONS) {
        Some(text) => {
            let actions: BTreeSet<&str> = text.split_whitespace().collect();
            let missing: Vec<&str> = ["errno", "kill_process"]
                .into_iter()
                .filter(|a| !actions.contains(a))
                .collect();
            let filter = if missing.is_empty() {
                Check::yes(
                    AREA_SECCOMP,
                    "filter actions",
                    format!("actions_avail: {text}"),
                )
            } else {
                Check::no(
                    AREA_SECCOMP,
                    "filter actions",
                    format!("missing {} in actions_avail: {text}", name_list(missing)),
                )
            };
            let notify = if actions.contains("user_notif") {
                Check::yes(
                    AREA_SECCOMP,
                    "user notification",
                    "user_notif listed: a supervisor can answer syscalls",
                )
            } else {
                Check::no(
                    AREA_SECCOMP,
                    "user notification",
                    "user_notif not in actions_avail (needs Linux 5.0+)",
                )
            };
            (filter, notify)
        }
        None => {
            let why = format!("{ACTIONS} missing: no seccomp filter mode (CONFIG_SECCOMP_FILTER)");
            (
                Check::no(AREA_SECCOMP, "filter actions", why.clone()),
                Check::no(AREA_SECCOMP, "user notification", why),
            )
        }
    };
    vec![support, filter, notify]
}
