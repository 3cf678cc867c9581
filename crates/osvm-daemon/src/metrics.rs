//! Prometheus metrics in the text exposition format, on an opt-in TCP listener
//! (`osvm daemon --metrics-addr 127.0.0.1:9464`), at `/metrics`.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::routing::get;

use crate::daemon::Shared;

/// The metrics routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn metrics(
    State(shared): State<Arc<Shared>>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&shared),
    )
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text.
pub fn render(shared: &Shared) -> String {
    let views = shared.views.read().map(|v| v.clone()).unwrap_or_default();
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
    let l = |v: &crate::engine::ComponentView| {
        format!(
            "stack=\"{}\",component=\"{}\"",
            label(&v.stack),
            label(&v.name)
        )
    };
    family(
        "osvm_component_up",
        "gauge",
        "1 when the component's instance runs and is ready (running), else 0.",
        &mut views.iter().map(|v| {
            (
                l(v),
                ((v.status == osvm_core::model::ComponentStatus::Running) as u8).to_string(),
            )
        }),
    );
    family(
        "osvm_component_restarts_total",
        "counter",
        "Restarts after failures.",
        &mut views.iter().map(|v| (l(v), v.restarts.to_string())),
    );
    family(
        "osvm_component_memory_bytes",
        "gauge",
        "Memory use of the current instance.",
        &mut views
            .iter()
            .filter_map(|v| Some((l(v), v.stats.as_ref()?.memory_bytes.to_string()))),
    );
    family(
        "osvm_component_cpu_seconds_total",
        "counter",
        "CPU time of the current instance.",
        &mut views.iter().filter_map(|v| {
            Some((
                l(v),
                format!("{:.6}", v.stats.as_ref()?.cpu_usage_usec as f64 / 1e6),
            ))
        }),
    );
    family(
        "osvm_component_healthy",
        "gauge",
        "1 when the last health probe passed.",
        &mut views.iter().map(|v| {
            (
                l(v),
                (matches!(v.health, crate::engine::Health::Healthy(_)) as u8).to_string(),
            )
        }),
    );
    let _ = writeln!(
        out,
        "# HELP osvm_reconcile_seconds Duration of the last reconcile pass."
    );
    let _ = writeln!(out, "# TYPE osvm_reconcile_seconds gauge");
    let _ = writeln!(
        out,
        "osvm_reconcile_seconds {:.6}",
        shared.last_tick_us.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "# HELP osvm_reconcile_passes_total Reconcile passes since the daemon started."
    );
    let _ = writeln!(out, "# TYPE osvm_reconcile_passes_total counter");
    let _ = writeln!(
        out,
        "osvm_reconcile_passes_total {}",
        shared.ticks.load(Relaxed)
    );
    out
}
