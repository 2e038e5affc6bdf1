//! `hull mcp-server start|ls|stop`: stdio MCP servers hosted inside a
//! sandbox, each reachable as a streamable-HTTP MCP endpoint on the
//! daemon. `start` registers the command (the daemon checks that it
//! answers MCP's `initialize`) and prints the endpoint's URL: with
//! `HULL_URL` the full `http://HOST:PORT/...` URL (clients send the
//! token), on the unix socket the path alone.

use std::time::Duration;

use hull_api::{McpServerInfo, McpServerRequest, McpServers};
use hyper::Method;

use crate::client::{Client, Endpoint, enc};

/// `hull mcp-server`'s subcommands.
#[derive(clap::Subcommand)]
pub enum McpServerCmd {
    /// Register a stdio MCP server in a sandbox and print its endpoint URL:
    /// `hull mcp-server start ID NAME -- CMD ARGS...`. Each MCP session on
    /// the endpoint runs its own process of CMD inside the sandbox.
    Start {
        /// The sandbox (id or name).
        id: String,
        /// The server's name (1 to 64 of A-Z a-z 0-9 _ . -).
        name: String,
        /// Environment variable for the server (repeatable).
        #[arg(short = 'e', long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Working directory inside the sandbox.
        #[arg(short = 'w', long = "workdir")]
        workdir: Option<String>,
        /// User to run as (name, uid or uid:gid).
        #[arg(short = 'u', long = "user")]
        user: Option<String>,
        /// How long the server may take to answer `initialize` (default 30s).
        #[arg(long, value_parser = parse_duration)]
        startup_timeout: Option<Duration>,
        /// End a session after this long without activity (default 30m).
        #[arg(long, value_parser = parse_duration)]
        idle_timeout: Option<Duration>,
        /// The server's command and arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// List the MCP servers of a sandbox: NAME SESSIONS TOOLS SERVER ENDPOINT.
    Ls {
        /// The sandbox (id or name).
        id: String,
    },
    /// Stop a server: its sessions end and their processes are killed.
    Stop {
        /// The sandbox (id or name).
        id: String,
        /// The server's name.
        name: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    hull_api::limits::parse_duration(s)
        .map(Duration::from_secs_f64)
        .map_err(|e| e.message)
}

/// The endpoint as a client reaches it: a URL over TCP, the path on the
/// unix socket.
fn url(client: &Client, info: &McpServerInfo) -> String {
    match &client.endpoint {
        Endpoint::Tcp { .. } => format!("{}{}", client.describe(), info.endpoint),
        Endpoint::Unix(_) => info.endpoint.clone(),
    }
}

fn seg(s: &str) -> String {
    enc(s).replace('/', "%2F")
}

/// Run one `hull mcp-server` subcommand.
pub async fn mcp_server(client: &Client, cmd: McpServerCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        McpServerCmd::Start {
            id,
            name,
            env,
            workdir,
            user,
            startup_timeout,
            idle_timeout,
            cmd,
        } => {
            let req = McpServerRequest {
                name,
                command: cmd,
                env: crate::kv(&env, "environment variable")?,
                cwd: workdir,
                user,
                startup_timeout_ms: startup_timeout.map(|d| d.as_millis().max(1) as u64),
                session_idle_timeout_seconds: idle_timeout.map(|d| d.as_secs().max(1)),
            };
            let path = format!("/v1/sandboxes/{}/mcp-servers", seg(&id));
            let info: McpServerInfo = client.call(Method::POST, &path, Some(&req)).await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{}", url(client, &info));
            }
        }
        McpServerCmd::Ls { id } => {
            let path = format!("/v1/sandboxes/{}/mcp-servers", seg(&id));
            let list: McpServers = client.call(Method::GET, &path, None::<&()>).await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("NAME\tSESSIONS\tTOOLS\tSERVER\tENDPOINT");
                for s in &list.servers {
                    let tools = s.tools.map_or("-".to_string(), |t| t.to_string());
                    println!(
                        "{}\t{}\t{}\t{} {}\t{}",
                        s.name,
                        s.sessions,
                        tools,
                        s.server_name,
                        s.server_version,
                        url(client, s)
                    );
                }
            }
        }
        McpServerCmd::Stop { id, name } => {
            let path = format!("/v1/sandboxes/{}/mcp-servers/{}", seg(&id), seg(&name));
            client
                .call_empty(Method::DELETE, &path, None::<&()>)
                .await?;
            println!("{name}");
        }
    }
    Ok(())
}
