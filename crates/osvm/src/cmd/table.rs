//! The component table shared by `osvm up` and `osvm ps`.

use std::time::Duration;

use osvm_daemon::engine::{ComponentView, human_duration};

use super::human_bytes;

/// The column titles.
const HEADER: [&str; 10] = [
    "NAME",
    "STATUS",
    "HEALTH",
    "PID",
    "MEMORY",
    "CPU",
    "RESTARTS",
    "UPTIME",
    "LAST EXIT",
    "PUBLISHED",
];

/// One row: `name` is what the NAME column shows.
fn row(name: String, v: &ComponentView) -> Vec<String> {
    vec![
        name,
        v.status.to_string(),
        v.health.short(),
        v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        match (&v.stats, v.memory_limit) {
            (Some(s), Some(limit)) => {
                format!("{} / {}", human_bytes(s.memory_bytes), human_bytes(limit))
            }
            (Some(s), None) => human_bytes(s.memory_bytes),
            _ => "-".into(),
        },
        if v.pid.is_some() {
            format!("{:.1}%", v.cpu_percent)
        } else {
            "-".into()
        },
        v.restarts.to_string(),
        v.uptime_secs
            .map(|s| human_duration(Duration::from_secs(s)))
            .unwrap_or_else(|| "-".into()),
        v.last_exit
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        if v.published.is_empty() {
            "-".into()
        } else {
            v.published.join(",")
        },
    ]
}

/// The table's lines, aligned; `qualified` shows `stack/name` instead of `name`.
pub fn lines(views: &[ComponentView], qualified: bool) -> Vec<String> {
    let mut rows = vec![HEADER.map(String::from).to_vec()];
    for v in views {
        let name = if qualified {
            format!("{}/{}", v.stack, v.name)
        } else {
            v.name.clone()
        };
        rows.push(row(name, v));
    }
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let full: usize = widths.iter().map(|w| w + 2).sum();
    rows.iter()
        .map(|r| {
            // One allocation per line (`osvm ps` renders a thousand of them).
            let mut line = String::with_capacity(full);
            for (n, (cell, w)) in r.iter().zip(&widths).enumerate() {
                if n > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = w.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            line.truncate(line.trim_end().len());
            line
        })
        .collect()
}

/// One component's facts as `(label, value)` pairs, in table order (for `osvm status`).
pub fn facts(v: &ComponentView) -> Vec<(String, String)> {
    HEADER
        .iter()
        .map(|h| h.to_lowercase())
        .zip(row(format!("{}/{}", v.stack, v.name), v))
        .collect()
}
