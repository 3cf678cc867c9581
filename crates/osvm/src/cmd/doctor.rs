//! `osvm doctor`: every host capability with yes/no and the reason.

use std::process::ExitCode;

use crate::cli::{Global, Output};
use crate::doctor::Report;

pub fn run(global: &Global) -> anyhow::Result<ExitCode> {
    let report = Report::collect(&super::state_dir(global)?);
    match global.output {
        Output::Json => {
            let doc = serde_json::json!({
                "required_ok": report.all_required_ok(),
                "checks": report.checks,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => {
            print!("{}", report.render_table());
            println!();
            if report.all_required_ok() {
                println!("The process sandbox can run here.");
            } else {
                let missing: Vec<String> = report
                    .checks
                    .iter()
                    .filter(|c| c.is_required() && !c.available)
                    .map(|c| format!("{} {}", c.area, c.name))
                    .collect();
                println!(
                    "The process sandbox cannot run here; missing: {}.",
                    missing.join(", ")
                );
            }
        }
    }
    Ok(if report.all_required_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
