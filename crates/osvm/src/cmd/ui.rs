//! `osvm ui token ...`: the tokens that sign in to the dashboard (`osvm daemon --ui`).
//!
//! They are kept (hashed) in the state directory, apart from the MCP clients' tokens; the
//! daemon reads the file again when it changes, so no daemon needs to run to issue or revoke
//! one, and a revocation applies to the next request.

use std::process::ExitCode;

use serde_json::json;

use super::{InvalidInput, state_dir};
use crate::cli::{Global, Output, UiCommand, UiTokenCommand};

pub fn run(global: &Global, cmd: UiCommand) -> anyhow::Result<ExitCode> {
    let UiCommand::Token(cmd) = cmd;
    let tokens = osvm_daemon::ui::tokens(&state_dir(global)?);
    match cmd {
        UiTokenCommand::Issue(a) => {
            let ttl = a
                .ttl
                .as_deref()
                .map(|t| {
                    osvm_core::quantity::parse_duration(t)
                        .map_err(|e| InvalidInput(format!("--ttl {t}: {e}")))
                })
                .transpose()?;
            let (record, secret) = tokens
                .issue(&a.client, ttl)
                .map_err(|e| InvalidInput(e.to_string()))?;
            if global.output == Output::Json {
                println!("{}", json!({ "token": secret, "record": record }));
            } else {
                println!("{secret}");
                eprintln!(
                    "dashboard token {} for `{}`: shown once, only its hash is kept; revoke with \
                     `osvm ui token revoke {}`",
                    record.id, record.client, record.id
                );
            }
        }
        UiTokenCommand::List => {
            let list = tokens.list()?;
            if global.output == Output::Json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                print!("{}", super::mcp::token_table(&list));
            }
        }
        UiTokenCommand::Revoke(a) => {
            let revoked = tokens
                .revoke(&a.what)
                .map_err(|e| InvalidInput(e.to_string()))?;
            if global.output == Output::Json {
                println!("{}", json!({ "revoked": revoked }));
            } else {
                for t in revoked {
                    println!("revoked dashboard token {} of `{}`", t.id, t.client);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
