//! Identity probes: the CA of every trust domain in the state directory and how long it has left.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use osvm_pki::Pki;
use osvm_pki::ca::CA_EXPIRY_WARNING;

use super::{AREA_IDENTITY, Check};

/// One row per trust domain with a CA under `<state_dir>/pki/`, or one row saying there is none.
pub(super) fn identity_checks(state_dir: &Path) -> Vec<Check> {
    let root = state_dir.join("pki");
    let mut domains: Vec<_> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join("ca.pem").exists())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    domains.sort();
    if domains.is_empty() {
        return vec![Check::yes(
            AREA_IDENTITY,
            "ca",
            format!(
                "no CA in {} yet; one is created for a trust domain on first use",
                root.display()
            ),
        )];
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    domains
        .iter()
        .map(|dir| {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let check = format!("ca {name}");
            match Pki::open(dir).and_then(|pki| pki.ca_not_after()) {
                Ok(not_after) => ca_expiry_check(&check, &name, not_after, now),
                Err(e) => Check::no(AREA_IDENTITY, &check, format!("unreadable CA: {e}")),
            }
        })
        .collect()
}

/// Judges a CA that stops being valid at `not_after` (Unix seconds) as of `now`.
fn ca_expiry_check(check: &str, domain: &str, not_after: i64, now: i64) -> Check {
    let until = humantime::format_rfc3339_seconds(
        UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
    );
    let left = not_after - now;
    let rotate = format!("run `osvm cert --trust-domain {domain} ca rotate`");
    if left <= 0 {
        Check::no(
            AREA_IDENTITY,
            check,
            format!("the CA expired at {until}: no certificate it signed is accepted; {rotate}"),
        )
    } else if left < CA_EXPIRY_WARNING.as_secs() as i64 {
        Check::no(
            AREA_IDENTITY,
            check,
            format!(
                "the CA expires in {} (at {until}); {rotate}",
                rough_duration(left)
            ),
        )
    } else {
        Check::yes(
            AREA_IDENTITY,
            check,
            format!("valid until {until} ({} days left)", left / 86_400),
        )
    }
}

/// `left` seconds as whole days, else whole hours, else minutes.
fn rough_duration(left: i64) -> String {
    match left {
        l if l >= 86_400 => format!("{} days", l / 86_400),
        l if l >= 3_600 => format!("{} hours", l / 3_600),
        l => format!("{} minutes", (l / 60).max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_is_judged_by_the_time_it_has_left() {
        let now = 1_800_000_000;
        let ok = ca_expiry_check("ca d", "d", now + 90 * 86_400, now);
        assert!(ok.available && ok.detail.contains("90 days left"), "{ok:?}");
        let near = ca_expiry_check("ca d", "d", now + 3 * 86_400, now);
        assert!(!near.available, "{near:?}");
        assert!(near.detail.contains("expires in 3 days"), "{near:?}");
        assert!(near.detail.contains("osvm cert --trust-domain d ca rotate"));
        let gone = ca_expiry_check("ca d", "d", now - 1, now);
        assert!(
            !gone.available && gone.detail.contains("expired"),
            "{gone:?}"
        );
    }
}
