//! osvm's MCP gateway: MCP tool servers run as isolated components; clients reach them through
//! one MCP endpoint, tool by tool, under the stacks' `[[mcp_policy]]`, every call audited.
//!
//! - [`gateway`]: the aggregate server (an rmcp `ServerHandler`) and its upstream registry;
//! - [`upstream`]: the MCP client session to one server over its stdio pipes;
//! - [`framing`]: a client's stdio session, with oversized messages answered, not dropped;
//! - [`tokens`]: bearer tokens osvm issues to clients and revokes;
//! - [`audit`]: the JSON-lines audit trail.
//!
//! The daemon owns the servers' stdio channels and hands them to [`gateway::Gateway`]; its API
//! serves [`gateway::Session`]s over streamable HTTP and over a raw stdio bridge.
#![forbid(unsafe_code)]

pub mod audit;
pub mod digest;
pub mod framing;
pub mod gateway;
mod relay;
pub mod tokens;
pub mod upstream;

pub use gateway::{ClientIdentity, Gateway, ServerDecl, Session, ToolView};
