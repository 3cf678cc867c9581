//! `osvm validate FILE`.

use std::process::ExitCode;

use crate::cli::{Global, Output, ValidateArgs};

pub fn run(global: &Global, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    match osvm_core::stack::load(&args.file) {
        Ok(stack) => {
            match global.output {
                Output::Json => {
                    let doc = serde_json::json!({
                        "valid": true,
                        "warnings": stack.warnings,
                        "stack": stack,
                    });
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
                Output::Text => {
                    super::print_warnings(&stack);
                    let mcp = if stack.mcp_policy.is_empty() {
                        String::new()
                    } else {
                        format!(" and {} mcp_policy rule(s)", stack.mcp_policy.len())
                    };
                    println!(
                        "{}: valid: stack `{}` with {} component(s) and {} policy rule(s){mcp}",
                        args.file.display(),
                        stack.name,
                        stack.components.len(),
                        stack.policies.len()
                    )
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if global.output == Output::Json => {
            let doc = serde_json::json!({
                "valid": false,
                "error": {
                    "file": args.file,
                    "line": e.line(),
                    "column": e.column(),
                    "message": e.message(),
                }
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}
