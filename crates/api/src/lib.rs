//! Wire types of hull's HTTP API: requests, responses, error kinds.
//!
//! No I/O lives here. Every type derives `utoipa::ToSchema`, and the OpenAPI
//! document at `docs/openapi.json` is generated from them by the server crate.
//! Request types refuse unknown fields, so a misspelt option is an error
//! rather than a silently ignored default.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod browser;
pub mod limits;
pub mod mcp_host;
pub mod network;
pub mod ports;
pub use browser::*;
pub use limits::*;
pub use mcp_host::*;
pub use network::{AllowItem, HeaderRuleSpec, NetworkMode, NetworkPolicy, SandboxNetwork};
pub use ports::*;

/// The closed set of error kinds every API error maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    Conflict,
    ResourceExhausted,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind is served with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API error: a kind and a message a person can act on, and for some
/// errors a `reason` a program can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// Present only where it says more than `kind`: which exec start failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorReason>,
}

/// What exactly went wrong, for the errors a client handles differently
/// from others of their kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorReason {
    /// An exec's program does not exist (a shell exits 127).
    CommandNotFound,
    /// An exec's program (or its working directory) exists but cannot be
    /// used: not executable, a directory, not accessible to the user (a
    /// shell exits 126).
    CommandNotExecutable,
    /// A reason this build does not know (from a newer daemon or guest).
    #[serde(other)]
    Unknown,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            reason: None,
        }
    }
    /// The same error with a reason (or none).
    pub fn with_reason(self, reason: Option<ErrorReason>) -> Self {
        Self { reason, ..self }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
}

/// The JSON body of every error response: `{"error": {"kind", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// Lifecycle states of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    Paused,
    Stopping,
    Stopped,
    Failed,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => SandboxState::Creating,
            "running" => SandboxState::Running,
            "paused" => SandboxState::Paused,
            "stopping" => SandboxState::Stopping,
            "stopped" => SandboxState::Stopped,
            "failed" => SandboxState::Failed,
            _ => return None,
        })
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Presets over TTL, idle timeout and (later) network and pooling defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// RL rollouts: short TTL (30 s), no idle extension.
    Rollout,
    /// Agent sessions: 40 min TTL, extended by activity.
    #[default]
    Session,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Rollout => "rollout",
            Profile::Session => "session",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rollout" => Some(Profile::Rollout),
            "session" => Some(Profile::Session),
            _ => None,
        }
    }
}

/// The isolation substrate a sandbox runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubstrateKind {
    #[default]
    Container,
}

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Template to start from (`host` when absent).
    #[serde(default)]
    pub template: Option<String>,
    /// `rollout` or `session` (the default).
    #[serde(default)]
    pub profile: Option<Profile>,
    /// A unique name; a DNS label like the id. Usable wherever an id is.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Resource limits; absent fields take the defaults.
    #[serde(default)]
    pub limits: LimitsRequest,
    /// Destroy the sandbox this many seconds after creation (profile default when absent).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Destroy the sandbox after this many seconds without an API call that touches it.
    #[serde(default)]
    pub idle_timeout_seconds: Option<u64>,
    /// Environment added to every process started in the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Default user for processes (`root` when absent).
    #[serde(default)]
    pub user: Option<String>,
    /// Default working directory for processes.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Start from this snapshot (id or name) instead of a template's
    /// pristine files; `template` is then the snapshot's template (naming
    /// another one is an error).
    #[serde(default)]
    pub from: Option<String>,
    /// Network policy (`none`, `open`, `allow:...`; see docs/network.md);
    /// the profile's default when absent.
    #[serde(default)]
    #[schema(schema_with = network::policy_or_string_schema)]
    pub network: Option<NetworkPolicy>,
}

/// An immutable point-in-time capture of a sandbox's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// A lowercase DNS label, like sandbox ids.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// The template whose files lie under the snapshot's layers.
    pub template: String,
    /// The snapshot this one was taken on top of (the sandbox's own base).
    #[serde(default)]
    pub parent: Option<String>,
    /// The sandbox it was taken from (it may be gone since).
    pub sandbox: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub labels: BTreeMap<String, String>,
    /// Disk used by this snapshot's own layers (not its parent's), bytes.
    pub size_bytes: u64,
    /// The store backend holding it (`overlay` or `btrfs`).
    pub backend: String,
}

/// `GET /v1/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
}

/// `POST /v1/sandboxes/{id}/snapshot`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// A unique name (a DNS label), usable wherever the id is.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/sandboxes/{id}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// Snapshot id or name; it must be of the sandbox's template.
    pub snapshot: String,
}

/// `POST /v1/snapshots/{id}/fork`: `n` sandboxes from one snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Fork {
    /// How many sandboxes (1 to 1024).
    pub n: u32,
    /// `rollout` or `session`; as for create.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// Labels every new sandbox gets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Network policy of every new sandbox; the profile's default when absent.
    #[serde(default)]
    #[schema(schema_with = network::policy_or_string_schema)]
    pub network: Option<NetworkPolicy>,
}

/// The answer to a fork: the new sandboxes, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ForkResult {
    pub sandboxes: Vec<Sandbox>,
}

/// A recorded event in a sandbox's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxEvent {
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// `created`, `paused`, `resumed`, `stopped`, `oom` (the OOM killer
    /// ended processes), `guest_lost` (its init or agent is gone: the
    /// sandbox failed), `adopted` (re-adopted by a restarted daemon).
    /// Destruction, by request or by TTL or idle expiry, removes the
    /// sandbox with its events, so it records none.
    pub kind: String,
    pub message: String,
}

/// A sandbox as the API reports it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub state: SandboxState,
    pub template: String,
    pub profile: Profile,
    pub substrate: SubstrateKind,
    pub labels: BTreeMap<String, String>,
    /// The limits in force.
    pub limits: Limits,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// When the TTL destroys it (seconds since the Unix epoch); none when it has no TTL.
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub idle_timeout_seconds: Option<u64>,
    /// Host pid of the sandbox's init (the guest agent), while it runs.
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// Why it failed, when `state` is `failed`.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub events: Vec<SandboxEvent>,
    /// The snapshot the sandbox's files were born from (after a rollback,
    /// the one it rolled back to); absent for a template's pristine files.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The network policy in force (header values redacted).
    #[serde(default)]
    pub network: NetworkPolicy,
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<Sandbox>,
}

/// `PUT /v1/sandboxes/{id}/ttl`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTtl {
    /// New TTL counted from now; 0 removes the TTL.
    pub ttl_seconds: u64,
}

/// `POST /v1/sandboxes/{id}/exec`: run a command and wait for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments.
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// Text written to the command's stdin, then closed.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Kill the command after this many seconds (fractions allowed).
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// Run on a pseudo-terminal: streaming and background execs only (a
    /// buffered exec refuses it).
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub rows: Option<u16>,
    #[serde(default)]
    pub cols: Option<u16>,
    /// Start in the background and return at once; see `/processes`.
    #[serde(default)]
    pub background: bool,
}

/// The result of a buffered exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Output as UTF-8 (invalid sequences replaced).
    pub stdout: String,
    pub stderr: String,
    /// Exit code when it exited; none when a signal ended it.
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    /// The timeout killed it; output is what it printed until then.
    #[serde(default)]
    pub timed_out: bool,
    /// The memory limit's OOM killer ended it.
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub duration_ms: u64,
    /// Output beyond the buffered limit was dropped.
    #[serde(default)]
    pub truncated: bool,
}

impl ExecResult {
    /// The exit code a CLI reports for this result: the command's code, 124
    /// when the timeout killed it, 128+N when signal N ended it.
    pub fn cli_exit_code(&self) -> i32 {
        if self.timed_out {
            124
        } else if let Some(c) = self.exit_code {
            c
        } else if let Some(s) = self.signal {
            128 + s
        } else {
            125
        }
    }
}

/// Returned by a background exec.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessStarted {
    pub id: String,
    pub pid: i32,
}

/// One event of a streaming exec (NDJSON line or WebSocket text message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Started {
        id: String,
        pid: i32,
    },
    /// `data` is UTF-8 text; `data_b64` carries the exact bytes.
    Stdout {
        ts_micros: u64,
        data: String,
        data_b64: String,
    },
    Stderr {
        ts_micros: u64,
        data: String,
        data_b64: String,
    },
    Exit(ExecResult),
    Error {
        error: ApiError,
    },
}

/// Open a persistent `bash` session in a sandbox. Its working directory,
/// variables, functions and background jobs persist across calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellOpenRequest {
    /// The session's name, unique in the sandbox: 1 to 64 of `A-Z a-z 0-9 _ . -`.
    pub session: String,
    /// Starting directory (the user's home, or `/`, when absent).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables added to the session's environment (`TERM=dumb`,
    /// `PAGER=cat` and `GIT_PAGER=cat` unless set here).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A user name from the sandbox's `/etc/passwd`, or `uid[:gid]` (root when absent).
    #[serde(default)]
    pub user: Option<String>,
}

/// A session that was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShellOpened {
    pub session: String,
    /// The shell's pid inside the sandbox.
    pub pid: i32,
}

/// Run one command in a session, as if typed at its prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellRunRequest {
    /// Shell text (several lines allowed; no NUL bytes; at most 1 MiB).
    pub command: String,
    /// Interrupt the command after this many milliseconds (SIGINT to it,
    /// then SIGKILL); the session survives. 10 minutes when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Interrupt the command once it has printed nothing for this long.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Output budget in bytes (1 MiB when absent, at most 16 MiB); past it
    /// the head and the tail are kept around a marked cut.
    #[serde(default)]
    pub max_output: Option<u64>,
}

/// How a command in a session ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShellRunResult {
    /// What the command printed (stdout and stderr merged, as on a
    /// terminal), as UTF-8 with invalid sequences replaced.
    pub output: String,
    /// `$?` after the command; none when its end was not observed.
    pub exit_code: Option<i32>,
    /// The timeout interrupted it; `output` is what it printed until then.
    pub timed_out: bool,
    /// The idle timeout interrupted it.
    pub idle_timed_out: bool,
    /// `output` was cut to the budget (a line in it marks where).
    pub truncated: bool,
    /// The session's working directory afterwards.
    pub cwd: String,
    /// The command replaced the shell with a new bash (`exec bash`), which
    /// was taken over: the session goes on.
    pub shell_replaced: bool,
    /// The shell is gone (`exit`, killed, or replaced by something other
    /// than bash): the session no longer exists.
    pub session_ended: bool,
    pub duration_ms: u64,
}

/// Type into a session's terminal, e.g. to answer a prompt or drive an
/// interactive program (`python3 -i`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellSendRequest {
    /// Text typed as it is: end a line with `\n`; `\u0003` is Ctrl-C.
    pub input: String,
    /// A regular expression: return as soon as the output (its last
    /// 64 KiB) matches. Without one, return once output pauses for 200 ms.
    #[serde(default)]
    pub expect: Option<String>,
    /// Stop waiting after this many milliseconds (30 s when absent); nothing is interrupted.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_output: Option<u64>,
}

/// Output that followed some input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShellSendResult {
    /// Output since the previous call, up to the end of the wait.
    pub output: String,
    /// `expect` matched.
    pub matched: bool,
    /// The timeout passed before `expect` matched.
    pub timed_out: bool,
    pub truncated: bool,
    /// The shell is gone: the session no longer exists.
    pub session_ended: bool,
}

/// A shell session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShellSession {
    pub session: String,
    pub pid: i32,
    /// Working directory after its last command.
    pub cwd: String,
    /// A call is running in it now.
    pub busy: bool,
    pub started_micros: u64,
}

/// The sandbox's shell sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShellSessions {
    pub sessions: Vec<ShellSession>,
}

/// Messages a WebSocket exec client sends after its first (an `ExecRequest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExecClientMessage {
    /// Bytes for stdin (`data` as text, or `data_b64`).
    Stdin {
        #[serde(default)]
        data: Option<String>,
        #[serde(default)]
        data_b64: Option<String>,
    },
    /// Close stdin.
    Eof,
    Signal {
        signal: i32,
    },
    Resize {
        rows: u16,
        cols: u16,
    },
}

/// A process started through the agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessInfo {
    pub id: String,
    pub pid: i32,
    pub argv: Vec<String>,
    pub background: bool,
    pub started_micros: u64,
    pub running: bool,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// `POST /v1/sandboxes/{id}/processes/{pid}/signal`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: i32,
}

/// A file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    #[serde(default)]
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    pub entries: Vec<FileInfo>,
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    pub path: String,
    #[serde(default = "default_true")]
    pub parents: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    pub from: String,
    pub to: String,
}

fn default_true() -> bool {
    true
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// `GET /v1/version`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Version {
    pub version: String,
    pub api: String,
    /// Guest protocol versions this daemon speaks.
    pub protocol_min: u32,
    pub protocol_max: u32,
}

/// `GET /v1/info`: what this host supports.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    pub version: String,
    pub instance_id: String,
    pub state_dir: String,
    pub kernel: String,
    /// `v2`, `v1` or `hybrid` (v1 controllers beside an empty v2 hierarchy).
    pub cgroup_mode: String,
    /// Controllers hull uses, each with where it found it (`v1` or `v2`).
    pub cgroup_controllers: BTreeMap<String, String>,
    pub user_namespaces: bool,
    pub idmapped_mounts: bool,
    pub overlayfs: bool,
    pub seccomp: bool,
    pub landlock: bool,
    pub btrfs: bool,
    /// `/dev/kvm` is present.
    pub kvm: bool,
    /// What hull concluded about KVM (e.g. nested PVM: small guests only).
    pub kvm_note: String,
    /// QEMU software emulation is installed.
    pub tcg: bool,
    /// Host uid/gid range sandbox root maps to.
    pub uid_range: String,
    /// The snapshot store: backend and where it is.
    #[serde(default)]
    pub snapshot_store: String,
    pub templates: Vec<TemplateInfo>,
    pub sandboxes: usize,
    pub defaults: Limits,
    /// Whether sandbox networking is available (ranges, table, pool,
    /// default policies), or why not.
    #[serde(default)]
    pub network: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TemplateInfo {
    pub name: String,
    pub available: bool,
    pub description: String,
    /// Why it cannot be used, when unavailable.
    #[serde(default)]
    pub note: Option<String>,
    /// For a template saved from a snapshot: that snapshot's id (its files
    /// lie over the built-in template named in `description`).
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Defaults for its sandboxes, for templates imported from an image or
    /// built from Debian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ImageConfig>,
}

/// What an imported image (or a Debian build) gives its sandboxes: the
/// environment, user and working directory every process starts with
/// unless the create request names its own (request env entries override
/// single keys). `entrypoint` and `cmd` are recorded, not run: a sandbox's
/// PID 1 is hull's agent, and commands run through exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageConfig {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Where the files came from, e.g. `oci image alpine.tar` or
    /// `debian bookworm (minbase) + python3, git`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `POST /v1/templates/build`: a template built with Debian's `mmdebstrap`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildTemplate {
    /// The new template's name (a DNS label).
    pub name: String,
    /// The Debian suite: `bookworm`, `trixie`, `stable`, ...
    pub debian: String,
    /// Packages to install on top of the `minbase` variant.
    #[serde(default)]
    pub packages: Vec<String>,
    /// The Debian mirror (default: the host's, else deb.debian.org).
    #[serde(default)]
    pub mirror: Option<String>,
}

/// One line of `POST /v1/templates/build`'s streamed answer
/// (`application/x-ndjson`): progress, then `done` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BuildEvent {
    /// A new step of the build (`resolving`, `downloading`, `installing`...).
    Phase { phase: String },
    /// A line of the builder's output.
    Log { line: String },
    /// Steps done out of a total, where the builder tells.
    Progress { done: u64, total: u64 },
    /// The template is ready.
    Done { template: Box<TemplateInfo> },
    /// The build failed; nothing was kept.
    Error { error: ApiError },
}

/// `GET /v1/templates`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateInfo>,
}

/// `POST /v1/templates`: make a template of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveTemplate {
    /// The template's name (a DNS label, not a built-in template's).
    pub name: String,
    /// Snapshot id or name.
    pub snapshot: String,
}

/// Check a sandbox id or name: a lowercase DNS label (1-63 of `a-z0-9-`,
/// not starting or ending with `-`).
pub fn validate_dns_label(what: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} {s:?} is not a lowercase DNS label (1-63 characters of a-z, 0-9 and '-', not starting or ending with '-')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reasons_are_optional_and_open() {
        // Without a reason the body is what it always was.
        let e = ApiError::not_found("no sandbox");
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"kind":"not_found","message":"no sandbox"}"#);
        assert_eq!(serde_json::from_str::<ApiError>(&text).unwrap(), e);
        let e = e.with_reason(Some(ErrorReason::CommandNotExecutable));
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            text.ends_with(r#","reason":"command_not_executable"}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<ApiError>(&text).unwrap(), e);
        // A reason from a newer daemon still parses.
        let newer: ApiError =
            serde_json::from_str(r#"{"kind":"internal","message":"m","reason":"new_one"}"#)
                .unwrap();
        assert_eq!(newer.reason, Some(ErrorReason::Unknown));
    }

    #[test]
    fn dns_labels() {
        assert!(validate_dns_label("name", "abc-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "../x", &"a".repeat(64)] {
            assert!(validate_dns_label("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_rejected() {
        let r: Result<CreateSandbox, _> = serde_json::from_str(r#"{"templte":"host"}"#);
        assert!(r.is_err());
    }

    #[test]
    fn exit_codes() {
        let mut r = ExecResult {
            exit_code: Some(3),
            ..Default::default()
        };
        assert_eq!(r.cli_exit_code(), 3);
        r.exit_code = None;
        r.signal = Some(9);
        assert_eq!(r.cli_exit_code(), 137);
        r.timed_out = true;
        assert_eq!(r.cli_exit_code(), 124);
    }

    #[test]
    fn error_statuses() {
        assert_eq!(ErrorKind::ResourceExhausted.http_status(), 429);
        assert_eq!(
            serde_json::to_string(&ErrorKind::PermissionDenied).unwrap(),
            "\"permission_denied\""
        );
    }
}

/// Start a code-interpreter context (a Python kernel).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeContextRequest {
    /// The context's name, unique in the sandbox: 1 to 64 of
    /// `A-Z a-z 0-9 _ . -`.
    pub context: String,
    /// The kernel's language; only `python` for now.
    #[serde(default)]
    pub language: Option<String>,
}

/// One code-interpreter context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodeContext {
    pub context: String,
    pub language: String,
    /// The kernel's pid inside the sandbox.
    pub pid: i32,
    /// False once the kernel has died (restart the context).
    pub alive: bool,
}

/// The sandbox's code-interpreter contexts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodeContexts {
    pub contexts: Vec<CodeContext>,
}

/// Run code in a context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRunRequest {
    /// The code (at most 1 MiB).
    pub code: String,
    /// Interrupt the code after this many milliseconds (the context keeps
    /// its state). 5 minutes when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// For `POST /v1/sandboxes/{id}/code/run` only: the context to run in
    /// (`default`, created on first use, when absent).
    #[serde(default)]
    pub context: Option<String>,
}

/// An exception raised by the code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodeRunError {
    pub name: String,
    pub value: String,
    pub traceback: Vec<String>,
}

/// What one run produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CodeRunResult {
    pub stdout: String,
    pub stderr: String,
    /// Results (`execute_result`) and displays (`display_data`) in order,
    /// each a MIME bundle: `text/plain`, `text/html`, `image/png` (base64),
    /// `application/json`, ...
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<serde_json::Map<String, serde_json::Value>>,
    pub error: Option<CodeRunError>,
    pub execution_count: Option<u64>,
    /// True when the run hit its timeout and was interrupted.
    pub timed_out: bool,
    /// True when output past the limit (768 KiB) was dropped.
    pub truncated: bool,
}

/// One change in a watched directory: a line of the NDJSON stream of
/// `GET /v1/sandboxes/{id}/files/watch`, in the order the changes
/// happened. `name` is relative to the watched directory (`sub/a.txt` in
/// a recursive watch; empty for the directory itself), `path` absolute.
/// The stream runs until the client disconnects; it ends on its own only
/// with an `error` line (the directory was removed, the sandbox stopped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FileWatchEvent {
    /// Created, or moved in.
    Create { name: String, path: String },
    /// Its content was modified.
    Write { name: String, path: String },
    /// Deleted.
    Remove { name: String, path: String },
    /// Moved away (a new name inside the watch comes as `create`).
    Rename { name: String, path: String },
    /// Permissions, owner or times changed.
    Chmod { name: String, path: String },
    /// Events were lost (the sandbox's event queue overflowed because the
    /// client read too slowly, or a new subdirectory could not be watched).
    Overflow,
    /// The watch ended: the API's error.
    Error { error: ApiError },
}

/// kernel produced them; the last is `end` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CodeEvent {
    /// Text the code wrote to stdout (a long write comes as several).
    Stdout { text: String },
    /// Text the code wrote to stderr.
    Stderr { text: String },
    /// The value of the last expression (`execute_result`), as a MIME bundle.
    Result {
        #[schema(value_type = Object)]
        data: serde_json::Map<String, serde_json::Value>,
        execution_count: Option<u64>,
    },
    /// A `display(...)` output (`display_data`), as a MIME bundle.
    Display {
        #[schema(value_type = Object)]
        data: serde_json::Map<String, serde_json::Value>,
    },
    /// The code raised (its traceback).
    Exception(CodeRunError),
    /// The run is over. `timed_out`: the timeout interrupted it (the
    /// context keeps its state); `truncated`: output past the stream's
    /// budget (16 MiB) was dropped.
    End {
        execution_count: Option<u64>,
        timed_out: bool,
        truncated: bool,
    },
    /// The run failed (the kernel died, the guest is gone): the API's error.
    Error { error: ApiError },
}
