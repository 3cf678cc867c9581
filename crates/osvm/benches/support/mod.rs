//! What the MCP benches share: a client session on the daemon's socket, a process's RSS.

use std::path::Path;

use rmcp::RoleClient;
use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::RunningService;

/// A process's resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A client session on the daemon's socket as client `bench`, upgraded here: the gateway
/// without the stdio bridge.
pub async fn on_socket(socket: &Path) -> RunningService<RoleClient, ClientConfig> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream
        .write_all(
            b"GET /v1/mcp/stdio HTTP/1.1\r\nhost: osvm\r\nconnection: upgrade\r\n\
              upgrade: osvm-mcp-stdio\r\nx-osvm-client: bench\r\n\r\n",
        )
        .await
        .unwrap();
    let mut r = tokio::io::BufReader::new(stream);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("bench", "1"),
    )
    .serve(tokio::io::split(r))
    .await
    .expect("initialize")
}
