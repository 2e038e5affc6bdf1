//! Wire types of MCP servers hosted inside sandboxes: registering a stdio
//! MCP server on a sandbox (`POST /v1/sandboxes/{id}/mcp-servers`), and
//! what the daemon reports about it. The server itself is reached as a
//! streamable-HTTP MCP endpoint at [`McpServerInfo::endpoint`]; its
//! messages are MCP's own JSON-RPC and have no types here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Register a stdio MCP server on a sandbox. The daemon starts the command
/// once and performs the MCP `initialize` handshake (and `tools/list`) to
/// check it, then stops it; each MCP session on the endpoint later runs its
/// own process of the command, started by the session's `initialize`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerRequest {
    /// The server's name, unique in the sandbox: 1 to 64 of `A-Z a-z 0-9 _ . -`.
    /// It names the endpoint: `/v1/sandboxes/{id}/mcp/{name}`.
    pub name: String,
    /// Program and arguments of the stdio server inside the sandbox
    /// (`argv[0]` looked up in `PATH` when it has no `/`).
    pub command: Vec<String>,
    /// Variables added to the sandbox's default environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (the user's home, or `/`, when absent).
    #[serde(default)]
    pub cwd: Option<String>,
    /// A user name from the sandbox's `/etc/passwd`, or `uid[:gid]` (the
    /// sandbox's default user when absent).
    #[serde(default)]
    pub user: Option<String>,
    /// How long the server may take to answer `initialize` (default
    /// 30 000 ms, at most 300 000): at registration and for each session.
    #[serde(default)]
    pub startup_timeout_ms: Option<u64>,
    /// End a session (and its process) after this long without a request,
    /// a pending call or an open event stream (default 1800 s, at most 30
    /// days).
    #[serde(default)]
    pub session_idle_timeout_seconds: Option<u64>,
}

/// A registered MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct McpServerInfo {
    pub name: String,
    /// The sandbox it runs in (its id).
    pub sandbox: String,
    pub command: Vec<String>,
    /// The streamable-HTTP MCP endpoint's path on the daemon
    /// (`/v1/sandboxes/{id}/mcp/{name}`), behind the API's auth.
    pub endpoint: String,
    /// `serverInfo.name` from its `initialize` answer.
    pub server_name: String,
    /// `serverInfo.version`.
    pub server_version: String,
    /// The protocol version it answered the check's `initialize` with
    /// (each session negotiates its own).
    pub protocol_version: String,
    /// How many tools `tools/list` returned at registration (`null` when
    /// the server has no tools capability).
    pub tools: Option<u32>,
    /// MCP sessions open now, each one process.
    pub sessions: u32,
    pub startup_timeout_ms: u64,
    pub session_idle_timeout_seconds: u64,
    /// Unix seconds.
    pub created_at: u64,
}

/// The MCP servers registered on a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct McpServers {
    pub servers: Vec<McpServerInfo>,
}
