//! hull as an MCP server: streamable HTTP at `/mcp`, on the same transports
//! and behind the same auth as the REST routes. Transport only, like the
//! REST handlers: every tool parses its arguments, calls one `Runtime`
//! method (two for `shell_run`, which opens its session on first use) and
//! returns the answer as structured content (a JSON object, also as text).
//!
//! Errors: a runtime error, or arguments that do not fit the tool's schema,
//! is a tool error (`isError: true`) whose structured content is
//! `{"error": {"kind", "message"}}` as in the REST API; only an unknown tool
//! is a JSON-RPC error. Limits: `exec` keeps at most [`MAX_TEXT`] bytes of
//! each stream, `file_read` reads at most [`MAX_TEXT`] bytes, a request
//! body is at most rmcp's 4 MiB (so `file_write` content is bounded by it).
//! Sessions live in memory: a daemon restart ends them and clients
//! re-initialize.

use std::collections::BTreeMap;

use base64::Engine;
use hull_api::*;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::schemars::{self, JsonSchema};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;

use crate::AppState;

/// Largest text an answer carries per field: exec's stdout and stderr
/// each, a file read (before base64).
pub const MAX_TEXT: usize = 1 << 20;

/// Default `exec` timeout when the call gives none: 2 minutes.
const DEFAULT_EXEC_TIMEOUT: f64 = 120.0;

/// The `/mcp` endpoint: a stateful streamable-HTTP MCP service over the
/// router's runtime. `Host` is not checked: the unix socket is guarded by
/// its file mode and TCP by the bearer token, which DNS rebinding cannot
/// supply.
pub(crate) fn service(
    state: AppState,
    stop: tokio_util::sync::CancellationToken,
) -> StreamableHttpService<HullMcp, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    config.cancellation_token = stop;
    StreamableHttpService::new(
        move || Ok(HullMcp::new(state.clone())),
        Default::default(),
        config,
    )
}

/// One MCP session's server: the runtime and the tools.
#[derive(Clone)]
pub(crate) struct HullMcp {
    s: AppState,
    tool_router: ToolRouter<Self>,
}

/// Tool arguments that keep a schema mismatch for the tool to report as a
/// tool error (rmcp's `Parameters` alone makes it a JSON-RPC error, which
/// clients tend to hide from the model). The schema is `T`'s.
pub(crate) struct Args<T>(Result<T, String>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Args<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(Args(
            serde_json::from_value(v).map_err(|e| format!("invalid arguments: {e}")),
        ))
    }
}

impl<T: JsonSchema> JsonSchema for Args<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

type ToolResult = Result<CallToolResult, ErrorData>;

/// The arguments, or the tool error that says what is wrong with them.
fn args<T>(a: Parameters<Args<T>>) -> Result<T, CallToolResult> {
    a.0.0.map_err(|m| tool_error(ApiError::invalid(m)))
}

/// A runtime answer as structured content (and its JSON as text).
fn answer<T: serde::Serialize>(r: Result<T, ApiError>) -> ToolResult {
    Ok(match r {
        Ok(v) => match serde_json::to_value(v) {
            Ok(v) => CallToolResult::structured(v),
            Err(e) => tool_error(ApiError::internal(format!("encoding the answer: {e}"))),
        },
        Err(e) => tool_error(e),
    })
}

/// An API error as a tool error: `kind: message` as text, the REST error
/// body as structured content.
fn tool_error(e: ApiError) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(format!(
        "{}: {}",
        e.kind, e.message
    ))]);
    r.structured_content = Some(serde_json::json!({ "error": e }));
    r
}

macro_rules! take {
    ($a:expr) => {
        match args($a) {
            Ok(v) => v,
            Err(e) => return Ok(e),
        }
    };
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(crate = "rmcp::schemars")]
pub(crate) enum McpProfile {
    /// Short-lived (30 s TTL), for RL rollouts.
    Rollout,
    /// Agent sessions: 40 min TTL, extended by activity.
    Session,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct CreateArgs {
    /// Template to start from: `host` (the host's /usr read-only, has bash;
    /// the default) or `busybox` (tiny, no bash), or one built or imported.
    #[serde(default)]
    template: Option<String>,
    /// A unique name (lowercase DNS label), usable wherever the id is.
    #[serde(default)]
    name: Option<String>,
    /// Lifetime preset; `session` when absent.
    #[serde(default)]
    profile: Option<McpProfile>,
    /// Memory limit, e.g. "512M" or "2G" (1G when absent).
    #[serde(default)]
    memory: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5 (1 when absent).
    #[serde(default)]
    cpus: Option<f64>,
    /// Cap on the sandbox's writable files, e.g. "1G" (1G when absent).
    #[serde(default)]
    disk: Option<String>,
    /// Destroy the sandbox this many seconds after creation (the profile's default when absent).
    #[serde(default)]
    ttl_seconds: Option<u64>,
    /// Environment variables for every process in the sandbox.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Labels to find the sandbox by later (`sandbox_list`).
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Start from this snapshot (id or name) instead of a template's pristine files.
    #[serde(default)]
    from_snapshot: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct LabelArgs {
    /// Only those carrying all these labels (key: value).
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct SandboxArgs {
    /// Sandbox id or name.
    sandbox: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ExecArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// Program and arguments, run directly (no shell), e.g. ["ls", "-l", "/"].
    /// Give this or `command`.
    #[serde(default)]
    argv: Option<Vec<String>>,
    /// A shell command line, run with `sh -c`, e.g. "ls -l / | head".
    /// Give this or `argv`.
    #[serde(default)]
    command: Option<String>,
    /// Working directory (absolute path in the sandbox).
    #[serde(default)]
    cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Kill the command after this many seconds (120 when absent).
    #[serde(default)]
    timeout_seconds: Option<f64>,
    /// Text written to the command's stdin, then closed.
    #[serde(default)]
    stdin: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ShellRunArgs {
    /// Sandbox id or name (its template needs bash: `host` has it).
    sandbox: String,
    /// Shell text, as typed at a bash prompt (several lines allowed).
    command: String,
    /// Session name ("default" when absent); opened on first use. cwd,
    /// variables, functions and background jobs persist in it across calls.
    #[serde(default)]
    session: Option<String>,
    /// Interrupt the command after this many milliseconds (10 min when
    /// absent); its output so far is returned and the session survives.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct PathArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// Absolute path inside the sandbox.
    path: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(crate = "rmcp::schemars")]
pub(crate) enum Encoding {
    /// Text as it is.
    #[default]
    Utf8,
    /// Base64 of the exact bytes.
    Base64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct WriteArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// Absolute path inside the sandbox; replaced atomically, parent directory must exist.
    path: String,
    /// The new content.
    content: String,
    /// How `content` is encoded: `utf8` (the default) or `base64`.
    #[serde(default)]
    encoding: Encoding,
    /// Permission bits in octal, e.g. "0755" ("0644" when absent).
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ListArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// Absolute path of a directory inside the sandbox.
    path: String,
    /// How deep to list: 1 (the default) is the directory's entries, at most 32.
    #[serde(default)]
    #[schemars(range(min = 1, max = 32))]
    depth: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct SnapshotArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// A unique snapshot name (lowercase DNS label), usable wherever its id is.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct ForkArgs {
    /// Snapshot id or name.
    snapshot: String,
    /// How many sandboxes to start (1 to 1024); all or none.
    #[schemars(range(min = 1, max = 1024))]
    n: u32,
    /// Labels every new sandbox gets.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Lifetime preset of the new sandboxes; `session` when absent.
    #[serde(default)]
    profile: Option<McpProfile>,
    /// Destroy each new sandbox this many seconds after creation.
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "rmcp::schemars")]
pub(crate) struct RollbackArgs {
    /// Sandbox id or name.
    sandbox: String,
    /// Snapshot id or name (of the sandbox's template).
    snapshot: String,
}

fn profile(p: Option<McpProfile>) -> Option<Profile> {
    p.map(|p| match p {
        McpProfile::Rollout => Profile::Rollout,
        McpProfile::Session => Profile::Session,
    })
}

/// Keep at most [`MAX_TEXT`] bytes of `s` (at a character boundary).
fn bound(s: &mut String) -> bool {
    if s.len() <= MAX_TEXT {
        return false;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

#[tool_router]
impl HullMcp {
    fn new(s: AppState) -> Self {
        Self {
            s,
            tool_router: Self::tool_router() + Self::browser_router() + Self::code_router(),
        }
    }

    #[tool(
        description = "Create and start a sandbox: an isolated Linux environment with its own \
        files, processes and limits. Returns the sandbox (use its `id` or `name` in other tools)."
    )]
    async fn sandbox_create(&self, a: Parameters<Args<CreateArgs>>) -> ToolResult {
        let a = take!(a);
        let size = |s: &Option<String>| s.as_deref().map(parse_size).transpose();
        let limits = match (size(&a.memory), size(&a.disk)) {
            (Ok(memory_bytes), Ok(disk_bytes)) => LimitsRequest {
                memory_bytes,
                cpus: a.cpus,
                pids: None,
                disk_bytes,
            },
            (Err(e), _) | (_, Err(e)) => return Ok(tool_error(e)),
        };
        let req = CreateSandbox {
            template: a.template,
            profile: profile(a.profile),
            name: a.name,
            labels: a.labels,
            limits,
            ttl_seconds: a.ttl_seconds,
            env: a.env,
            from: a.from_snapshot,
            ..Default::default()
        };
        answer(self.s.rt.create(req).await)
    }

    #[tool(description = "List sandboxes (optionally only those with all the given labels).")]
    async fn sandbox_list(&self, a: Parameters<Args<LabelArgs>>) -> ToolResult {
        let a = take!(a);
        answer(
            self.s
                .rt
                .list(&a.labels)
                .await
                .map(|sandboxes| SandboxList { sandboxes }),
        )
    }

    #[tool(
        description = "A sandbox's state, limits, labels, expiry and recent events.",
        annotations(read_only_hint = true)
    )]
    async fn sandbox_inspect(&self, a: Parameters<Args<SandboxArgs>>) -> ToolResult {
        let a = take!(a);
        answer(self.s.rt.get(&a.sandbox).await)
    }

    #[tool(
        description = "Destroy a sandbox: kill its processes and delete its files (its snapshots stay).",
        annotations(destructive_hint = true)
    )]
    async fn sandbox_destroy(&self, a: Parameters<Args<SandboxArgs>>) -> ToolResult {
        let a = take!(a);
        let r = self.s.rt.destroy(&a.sandbox).await;
        answer(r.map(|()| serde_json::json!({ "destroyed": a.sandbox })))
    }

    #[tool(
        description = "Run one command in a sandbox and wait for it: give `argv` (no shell) or \
        `command` (a `sh -c` line). Returns stdout, stderr (each at most 1 MiB) and exit_code. \
        Nothing persists between calls but files; use shell_run for a persistent shell."
    )]
    async fn exec(&self, a: Parameters<Args<ExecArgs>>) -> ToolResult {
        let a = take!(a);
        let cmd = match (a.argv, a.command) {
            (Some(argv), None) => argv,
            (None, Some(line)) => vec!["sh".into(), "-c".into(), line],
            _ => {
                return Ok(tool_error(ApiError::invalid(
                    "give exactly one of `argv` (a program and its arguments) or `command` (a shell line)",
                )));
            }
        };
        let req = ExecRequest {
            cmd,
            env: a.env,
            cwd: a.cwd,
            stdin: a.stdin,
            timeout_seconds: Some(a.timeout_seconds.unwrap_or(DEFAULT_EXEC_TIMEOUT)),
            ..Default::default()
        };
        answer(self.s.rt.exec(&a.sandbox, req).await.map(|mut r| {
            let cut_out = bound(&mut r.stdout);
            let cut_err = bound(&mut r.stderr);
            r.truncated |= cut_out || cut_err;
            r
        }))
    }

    #[tool(
        description = "Run a command in a persistent bash session of a sandbox (opened on first \
        use): cwd, variables, functions and background jobs persist across calls. Returns the \
        merged output, exit_code, the cwd afterwards and whether the timeout interrupted it."
    )]
    async fn shell_run(&self, a: Parameters<Args<ShellRunArgs>>) -> ToolResult {
        let a = take!(a);
        let session = a.session.unwrap_or_else(|| "default".into());
        let open = match self.s.rt.shell_list(&a.sandbox).await {
            Ok(l) => !l.sessions.iter().any(|s| s.session == session),
            Err(e) => return Ok(tool_error(e)),
        };
        if open {
            let req = ShellOpenRequest {
                session: session.clone(),
                ..Default::default()
            };
            match self.s.rt.shell_open(&a.sandbox, req).await {
                // Another call opened it meanwhile: use it.
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::Conflict => {}
                Err(e) => return Ok(tool_error(e)),
            }
        }
        let req = ShellRunRequest {
            command: a.command,
            timeout_ms: a.timeout_ms,
            ..Default::default()
        };
        answer(self.s.rt.shell_run(&a.sandbox, &session, req).await)
    }

    #[tool(
        description = "Read a file of a sandbox (at most 1 MiB). `content` is the text, or base64 \
        when the file is not UTF-8 (`encoding` says which); `truncated` when the file is longer.",
        annotations(read_only_hint = true)
    )]
    async fn file_read(&self, a: Parameters<Args<PathArgs>>) -> ToolResult {
        let a = take!(a);
        let (info, reader) = match self.s.rt.read_file(&a.sandbox, &a.path).await {
            Ok(r) => r,
            Err(e) => return Ok(tool_error(e)),
        };
        let mut buf = Vec::new();
        if let Err(e) = reader.take(MAX_TEXT as u64 + 1).read_to_end(&mut buf).await {
            return Ok(tool_error(ApiError::unavailable(format!(
                "reading {}: {e}",
                a.path
            ))));
        }
        let truncated = buf.len() > MAX_TEXT;
        buf.truncate(MAX_TEXT);
        let (encoding, content) = match String::from_utf8(buf) {
            Ok(s) => ("utf8", s),
            Err(e) => (
                "base64",
                base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            ),
        };
        answer(Ok::<_, ApiError>(serde_json::json!({
            "path": info.path,
            "size": info.size,
            "encoding": encoding,
            "content": content,
            "truncated": truncated,
        })))
    }

    #[tool(
        description = "Write a file in a sandbox (replaced atomically; the parent directory must \
        exist). Returns the file's new metadata."
    )]
    async fn file_write(&self, a: Parameters<Args<WriteArgs>>) -> ToolResult {
        let a = take!(a);
        let bytes = match a.encoding {
            Encoding::Utf8 => a.content.into_bytes(),
            Encoding::Base64 => {
                match base64::engine::general_purpose::STANDARD.decode(&a.content) {
                    Ok(b) => b,
                    Err(e) => {
                        return Ok(tool_error(ApiError::invalid(format!(
                            "content is not valid base64: {e}"
                        ))));
                    }
                }
            }
        };
        let mode = match a.mode.as_deref().map(|m| u32::from_str_radix(m, 8)) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(_)) => {
                return Ok(tool_error(ApiError::invalid(format!(
                    "mode {:?} is not an octal permission mode like 0644",
                    a.mode.unwrap_or_default()
                ))));
            }
        };
        let body: hull_runtime::ByteReader = Box::pin(std::io::Cursor::new(bytes));
        answer(
            self.s
                .rt
                .write_file(&a.sandbox, &a.path, mode, self.s.max_upload, body)
                .await,
        )
    }

    #[tool(
        description = "List a directory of a sandbox: each entry's path, kind (file, dir, \
        symlink, other), size, mode and mtime.",
        annotations(read_only_hint = true)
    )]
    async fn file_list(&self, a: Parameters<Args<ListArgs>>) -> ToolResult {
        let a = take!(a);
        answer(
            self.s
                .rt
                .list_dir(&a.sandbox, &a.path, a.depth.unwrap_or(1))
                .await,
        )
    }

    #[tool(
        description = "Snapshot a sandbox's files (copy-on-write, fast). Use the snapshot with \
        `fork` (new sandboxes from it), `rollback` (return a sandbox to it) or \
        `sandbox_create` with `from_snapshot`."
    )]
    async fn snapshot_create(&self, a: Parameters<Args<SnapshotArgs>>) -> ToolResult {
        let a = take!(a);
        let req = CreateSnapshot {
            name: a.name,
            labels: a.labels,
        };
        answer(self.s.rt.snapshot(&a.sandbox, req).await)
    }

    #[tool(
        description = "List snapshots (optionally only those with all the given labels).",
        annotations(read_only_hint = true)
    )]
    async fn snapshot_list(&self, a: Parameters<Args<LabelArgs>>) -> ToolResult {
        let a = take!(a);
        answer(
            self.s
                .rt
                .list_snapshots(&a.labels)
                .await
                .map(|snapshots| SnapshotList { snapshots }),
        )
    }

    #[tool(
        description = "Start `n` new sandboxes from a snapshot, each with private copy-on-write \
        files (all or none). Returns them in order."
    )]
    async fn fork(&self, a: Parameters<Args<ForkArgs>>) -> ToolResult {
        let a = take!(a);
        let req = Fork {
            n: a.n,
            profile: profile(a.profile),
            labels: a.labels,
            ttl_seconds: a.ttl_seconds,
            ..Default::default()
        };
        answer(
            self.s
                .rt
                .fork(&a.snapshot, req)
                .await
                .map(|sandboxes| ForkResult { sandboxes }),
        )
    }

    #[tool(
        description = "Return a sandbox's files to a snapshot of it; its processes are killed and \
        it restarts (same id, name, limits and labels).",
        annotations(destructive_hint = true)
    )]
    async fn rollback(&self, a: Parameters<Args<RollbackArgs>>) -> ToolResult {
        let a = take!(a);
        answer(self.s.rt.rollback(&a.sandbox, &a.snapshot).await)
    }
}

mod browser;
mod code;

#[tool_handler(router = self.tool_router)]
impl ServerHandler for HullMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("hull", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "hull runs isolated Linux sandboxes. Create one with sandbox_create \
                 (template `host` has bash and the host's tools, `busybox` is tiny), run commands \
                 with exec or shell_run, move files with file_read/file_write, snapshot and fork \
                 to branch, and sandbox_destroy when done.",
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_text_at_a_char_boundary() {
        let mut s = "é".repeat(MAX_TEXT);
        assert!(bound(&mut s));
        assert!(s.len() <= MAX_TEXT && s.chars().all(|c| c == 'é'));
        let mut t = "short".to_string();
        assert!(!bound(&mut t));
    }

    #[test]
    fn bad_arguments_are_kept_for_a_tool_error() {
        let a: Args<SandboxArgs> =
            serde_json::from_value(serde_json::json!({"sandbx": 1})).unwrap();
        assert!(a.0.unwrap_err().contains("sandbx"));
        let schema = schemars::schema_for!(Args<ExecArgs>);
        let v = serde_json::to_value(&schema).unwrap();
        assert_eq!(v["type"], "object");
        assert!(v["properties"]["argv"].is_object());
    }
}
