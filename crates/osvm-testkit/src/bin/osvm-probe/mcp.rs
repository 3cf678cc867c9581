//! `mcp NAME`: the smallest MCP server that answers like one, over stdio: `initialize` (the
//! client's protocol version back), `ping`, `tools/list` (one tool, `echo`) and `tools/call`
//! (`echo` gives its `message` back, with the server's name). A density bench runs a thousand
//! of these behind one gateway, so it holds no runtime and next to no memory.

use std::io::{BufRead, Write};

use serde_json::{Value, json};

/// Serves until stdin ends.
pub fn serve(name: &str) {
    let stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    for line in stdin.lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        // Notifications (no id) need no answer.
        let Some(id) = msg.get("id").cloned() else {
            continue;
        };
        let result = match msg["method"].as_str().unwrap_or("") {
            "initialize" => json!({
                "protocolVersion": msg["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
                "capabilities": { "tools": {} },
                "serverInfo": { "name": name, "version": "1" },
            }),
            "ping" => json!({}),
            "tools/list" => json!({ "tools": [{
                "name": "echo",
                "description": "Gives the message back",
                "inputSchema": {
                    "type": "object",
                    "properties": { "message": { "type": "string" } },
                },
            }]}),
            "tools/call" => {
                let text = msg["params"]["arguments"]["message"].as_str().unwrap_or("");
                json!({ "content": [{ "type": "text", "text": format!("{name}: {text}") }] })
            }
            other => {
                let answer = json!({ "jsonrpc": "2.0", "id": id, "error": {
                    "code": -32601, "message": format!("no method {other}") } });
                if writeln!(out, "{answer}")
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        let answer = json!({ "jsonrpc": "2.0", "id": id, "result": result });
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
}
