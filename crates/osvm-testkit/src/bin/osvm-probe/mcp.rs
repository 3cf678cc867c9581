//! `mcp NAME`: the smallest MCP server that answers like one, over stdio: `initialize` (the
//! client's protocol version back), `ping`, `tools/list` and `tools/call` of two tools: `echo`
//! gives its `message` back, with the server's name; `where` says where the server runs (its
//! hostname, and what its PID 1 is: `/init` in an osvm microVM). `OSVM_PROBE_TOOL_DESCRIPTION`
//! replaces `echo`'s description. A density bench runs a thousand
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
                // A test may make it hostile (the dashboard's escaping test).
                "description": std::env::var("OSVM_PROBE_TOOL_DESCRIPTION")
                    .unwrap_or_else(|_| "Gives the message back".into()),
                "inputSchema": {
                    "type": "object",
                    "properties": { "message": { "type": "string" } },
                },
            }, {
                "name": "where",
                "description": "Says where this server runs",
                "inputSchema": { "type": "object", "properties": {} },
            }]}),
            "tools/call" if msg["params"]["name"] == "where" => {
                let read = |p: &str| std::fs::read(p).unwrap_or_default();
                let host = String::from_utf8_lossy(&read("/proc/sys/kernel/hostname"))
                    .trim()
                    .to_owned();
                let init = read("/proc/1/cmdline");
                let init = String::from_utf8_lossy(init.split(|b| *b == 0).next().unwrap_or(&[]))
                    .into_owned();
                let text = format!("hostname={host} pid1={init}");
                json!({ "content": [{ "type": "text", "text": text }] })
            }
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

/// `relay CMD ARGS...`: runs CMD and copies bytes between this process's stdio and CMD's, one
/// thread each way, parsing nothing: the least any process in the middle of a stdio MCP
/// session costs (the floor the gateway's bench compares with).
pub fn relay(cmd: &[String]) -> ! {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let Some((program, args)) = cmd.split_first() else {
        eprintln!("usage: osvm-probe relay CMD [ARGS...]");
        std::process::exit(2);
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay: {program}: {e}");
            std::process::exit(1);
        }
    };
    let (mut to_child, mut from_child) =
        (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut stdout = std::io::stdout().lock();
        while let Ok(n @ 1..) = from_child.read(&mut buf) {
            if stdout
                .write_all(&buf[..n])
                .and_then(|()| stdout.flush())
                .is_err()
            {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = std::io::stdin().lock();
    while let Ok(n @ 1..) = stdin.read(&mut buf) {
        if to_child.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    drop(to_child);
    let _ = out.join();
    let code = child.wait().map_or(1, |s| s.code().unwrap_or(1));
    std::process::exit(code)
}
