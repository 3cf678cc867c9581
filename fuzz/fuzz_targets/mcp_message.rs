//! Fuzzes what the MCP gateway reads from clients and servers: any bytes must parse to a
//! JSON-RPC message or fail with an error (as rmcp's transport does with each line), and the
//! gateway's line cap must end a too-long line with an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use osvm_mcp::upstream::LineCapReader;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let _ = serde_json::from_slice::<ClientJsonRpcMessage>(line);
        let _ = serde_json::from_slice::<ServerJsonRpcMessage>(line);
    }
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut r = LineCapReader::new(data, 64);
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out).await;
    });
});
