//! The messages carried in control frames.
//!
//! A connection opens with one [`Request`] from the host. What follows
//! depends on its [`Op`]:
//!
//! | op | host sends after | guest answers |
//! |---|---|---|
//! | `hello` | nothing | `hello` |
//! | `exec` | `Data` (stdin), `Eof`, control [`ExecInput`] | `started`, then `Stdout`/`Stderr` frames, then `exited` (foreground); `started` alone (background) |
//! | `attach` | as for `exec` | buffered then live output, then `exited` |
//! | `procs` | nothing | `procs` |
//! | `signal` | nothing | `ok` |
//! | `read` | nothing | `stat`, then `Data` frames, then `Eof` |
//! | `write` | `Data` frames, then `Eof` | `stat` of the written file |
//! | `stat` / `list` / `mkdir` / `remove` / `rename` | nothing | `stat` / `entries` / `ok` |
//! | `tar_get` | nothing | `Data` frames (a tar stream), then `Eof` |
//! | `tar_put` | `Data` frames (a tar stream), then `Eof` | `ok` |
//! | `connect` | `Data` both ways, `Eof` to half-close | `connected`, then `Data`/`Eof` |
//! | `shell_open` (v2) | nothing | `shell_opened` |
//! | `shell_run` / `shell_send` (v2) | nothing | `Data` frames (the output, UTF-8), then `shell_ran` / `shell_sent` |
//! | `shell_close` / `shell_list` (v2) | nothing | `ok` / `shells` |
//! | `kernel_start` / `kernel_restart` (v3) | nothing | `kernel_started` |
//! | `code_run` (v3) | nothing | `code_ran` (every output at once) |
//! | `kernel_interrupt` / `kernel_stop` / `kernel_list` (v3) | nothing | `ok` / `kernels` |
//! | `code_run_stream` (v4) | nothing | `ok` once the run is sent to the kernel, a `code_output` per output as it comes, then `code_ran` (outputs empty: only the error, count and flags) |
//! | `watch_start` (v5) | `Eof` (or closing the connection) to stop | `ok` once the directory is watched, then `watch_events` batches until the host stops; `error` if the directory goes away |
//!
//! Any step may instead be answered with `error`, after which the guest
//! closes the connection. Closing a foreground `exec` connection early kills
//! the process group it started.

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

/// The first frame on every connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    /// Protocol version the sender speaks on this connection.
    pub v: u32,
    pub op: Op,
}

impl Request {
    /// A request at this build's [`PROTOCOL_VERSION`].
    pub fn new(op: Op) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            op,
        }
    }
}

/// What the host asks the guest to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Learn the guest's protocol range and identity.
    Hello {
        min: u32,
        max: u32,
    },
    /// Start a process.
    Exec(ExecSpec),
    /// Reattach to a background process by its id.
    Attach {
        id: String,
        /// Replay output buffered so far before streaming live output.
        #[serde(default = "yes")]
        replay: bool,
    },
    /// List processes started through the agent.
    Procs,
    /// Send a signal to a process started through the agent (its process group).
    Signal {
        id: String,
        signal: i32,
    },
    /// Read a regular file.
    Read {
        path: String,
        #[serde(default)]
        offset: u64,
        /// Read at most this many bytes (all when absent).
        #[serde(default)]
        limit: Option<u64>,
    },
    /// Replace a file atomically with the data that follows.
    Write {
        path: String,
        /// Permission bits of the new file (0644 when absent).
        #[serde(default)]
        mode: Option<u32>,
        /// Create missing parent directories.
        #[serde(default)]
        parents: bool,
        /// Refuse to write more than this many bytes.
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    Stat {
        path: String,
    },
    /// List a directory, descending `depth` levels (1 = the directory's entries).
    List {
        path: String,
        #[serde(default = "one")]
        depth: u32,
    },
    Mkdir {
        path: String,
        #[serde(default)]
        parents: bool,
        #[serde(default)]
        mode: Option<u32>,
    },
    Remove {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    Rename {
        from: String,
        to: String,
    },
    /// Stream a file or directory out as a tar archive.
    TarGet {
        path: String,
    },
    /// Unpack the tar archive that follows into a directory (created if missing).
    TarPut {
        path: String,
        #[serde(default)]
        max_bytes: Option<u64>,
    },
    /// Open a TCP connection to a port inside the sandbox.
    Connect {
        port: u16,
        /// Address inside the sandbox; loopback when absent.
        #[serde(default)]
        host: Option<String>,
    },
    /// Start a named, persistent `bash` session (protocol version 2).
    ShellOpen(ShellOpenSpec),
    /// Run one command in a session and wait for its end (version 2).
    ShellRun(ShellRunSpec),
    /// Type input into a session's terminal and collect output (version 2).
    ShellSend(ShellSendSpec),
    /// End a session and every process it started (version 2).
    ShellClose {
        session: String,
    },
    /// List the sandbox's sessions (version 2).
    ShellList,
    /// Start a named code-interpreter context: a Jupyter kernel (version 3).
    KernelStart {
        context: String,
        #[serde(default = "default_language")]
        language: String,
    },
    /// Run code in a context and collect its outputs (version 3).
    CodeRun(CodeRunSpec),
    /// Interrupt what a context is running (version 3).
    KernelInterrupt {
        context: String,
    },
    /// Restart a context's kernel: its state is gone, the name stays (version 3).
    KernelRestart {
        context: String,
    },
    /// Stop a context's kernel (version 3).
    KernelStop {
        context: String,
    },
    /// List the sandbox's contexts (version 3).
    KernelList,
    /// Run code in a context and stream each output as the kernel produces
    /// it (version 4). Closing the connection interrupts the code.
    CodeRunStream(CodeRunSpec),
    /// Watch a directory for changes (version 5): answered with `ok`, then
    /// `watch_events` until the host sends `Eof` or closes the connection.
    WatchStart {
        path: String,
        /// Watch subdirectories too (new ones as they appear).
        #[serde(default)]
        recursive: bool,
    },
}

fn default_language() -> String {
    "python".to_string()
}

/// The protocol version that added code-interpreter contexts.
pub const CODE_PROTOCOL_VERSION: u32 = 3;
/// The protocol version that added streamed code runs (`code_run_stream`).
pub const CODE_STREAM_PROTOCOL_VERSION: u32 = 4;
/// Output one streamed code run may deliver (all outputs together); past
/// it outputs are dropped and `truncated` is set, the code runs on.
pub const MAX_CODE_STREAM_OUTPUT: usize = 16 << 20;
/// The largest piece of stream text one `code_output` carries (longer
/// text is split), so that every message fits a frame.
pub const CODE_STREAM_CHUNK: usize = 256 << 10;
/// Contexts one sandbox may hold at once.
pub const MAX_CODE_CONTEXTS: usize = 8;
/// Output kept of one code run (all streams and results together), so the
/// reply fits one frame.
pub const MAX_CODE_OUTPUT: usize = 768 << 10;
/// The largest code of one run.
pub const MAX_CODE_INPUT: usize = 1 << 20;
/// A run's timeout when the request names none.
pub const DEFAULT_CODE_TIMEOUT_MS: u64 = 300_000;

/// Run code in a context.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CodeRunSpec {
    pub context: String,
    pub code: String,
    /// Interrupt the code after this long (the context keeps its state).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// An exception raised by code.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CodeError {
    pub name: String,
    pub value: String,
    pub traceback: Vec<String>,
}

/// What one code run produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CodeRunDone {
    pub stdout: String,
    pub stderr: String,
    /// `execute_result` and `display_data` outputs, as MIME type -> data.
    pub results: Vec<serde_json::Map<String, serde_json::Value>>,
    pub error: Option<CodeError>,
    pub execution_count: Option<u64>,
    pub timed_out: bool,
    /// True when output past the limit was dropped.
    #[serde(default)]
    pub truncated: bool,
}

/// One output of a streamed code run, as the kernel produced it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CodeOutput {
    /// Text the code wrote to stdout (at most [`CODE_STREAM_CHUNK`] bytes).
    Stdout { text: String },
    /// Text the code wrote to stderr (at most [`CODE_STREAM_CHUNK`] bytes).
    Stderr { text: String },
    /// An `execute_result`: MIME type -> data.
    Result {
        data: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        execution_count: Option<u64>,
    },
    /// A `display_data`: MIME type -> data.
    Display {
        data: serde_json::Map<String, serde_json::Value>,
    },
    /// The code raised.
    Error(CodeError),
}

/// One code-interpreter context.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KernelInfo {
    pub context: String,
    pub language: String,
    /// The kernel's pid inside the sandbox.
    pub pid: i32,
    /// False once the kernel process has ended.
    pub alive: bool,
}

/// The protocol version that added directory watches (`watch_start`).
pub const WATCH_PROTOCOL_VERSION: u32 = 5;
/// Watches one guest agent holds at once (each is an inotify instance).
pub const MAX_WATCHERS: usize = 32;
/// Directories one recursive watch covers at most.
pub const MAX_WATCH_DIRS: usize = 8192;
/// Events one `watch_events` message carries at most.
pub const MAX_WATCH_BATCH: usize = 128;

/// What happened to an entry of a watched directory.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WatchEventKind {
    /// Created, or moved in.
    Create,
    /// Its content was modified.
    Write,
    /// Deleted.
    Remove,
    /// Moved away (its new name, if still watched, comes as `create`).
    Rename,
    /// Its metadata (permissions, owner, times) changed.
    Chmod,
    /// Events were lost: the kernel's queue overflowed, or a new
    /// subdirectory could not be watched (past [`MAX_WATCH_DIRS`]).
    Overflow,
    /// A kind this build does not know (from a newer guest).
    #[serde(other)]
    Unknown,
}

/// One change in a watched directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchEvent {
    /// The entry's path relative to the watched directory (`sub/file` in
    /// a recursive watch); empty for the directory itself and `overflow`.
    pub name: String,
    pub kind: WatchEventKind,
}

/// The protocol version that added shell sessions.
pub const SHELL_PROTOCOL_VERSION: u32 = 2;
/// Sessions one sandbox may hold at once.
pub const MAX_SHELL_SESSIONS: usize = 32;
/// Output kept of one shell call when the request names no budget.
pub const DEFAULT_SHELL_OUTPUT: u64 = 1 << 20;
/// The largest output budget a shell call may ask for.
pub const MAX_SHELL_OUTPUT: u64 = 16 << 20;
/// The largest command or input of one shell call.
pub const MAX_SHELL_INPUT: usize = 1 << 20;

/// Whether `name` is a valid session name: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn valid_session_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// How to start a shell session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShellOpenSpec {
    /// The session's name, unique in the sandbox (see [`valid_session_name`]).
    pub session: String,
    /// Starting directory (the user's home, or `/`, when absent).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables added to (and overriding) the session's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// A user name from the sandbox's `/etc/passwd`, or `uid[:gid]` (root when absent).
    #[serde(default)]
    pub user: Option<String>,
}

/// One command in a session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShellRunSpec {
    pub session: String,
    /// Shell text, run as if typed at the prompt (several lines allowed).
    pub command: String,
    /// Interrupt the command after this many milliseconds (10 minutes when absent).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Interrupt the command once it has printed nothing for this long.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Keep at most this many bytes of output (head and tail); [`DEFAULT_SHELL_OUTPUT`] when absent.
    #[serde(default)]
    pub max_output: Option<u64>,
}

/// How a `shell_run` ended. The output itself precedes it as `Data` frames.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShellRunDone {
    /// `$?` after the command; none when its end could not be observed
    /// (the session ended, or an interrupted command would not stop).
    pub exit_code: Option<i32>,
    /// The timeout interrupted the command.
    #[serde(default)]
    pub timed_out: bool,
    /// The idle timeout interrupted the command.
    #[serde(default)]
    pub idle_timed_out: bool,
    /// Output was cut to the budget (head and tail kept).
    #[serde(default)]
    pub truncated: bool,
    /// The shell's working directory afterwards (as last known).
    #[serde(default)]
    pub cwd: String,
    /// The command replaced the shell (`exec bash`); the new shell was
    /// taken over and the session goes on.
    #[serde(default)]
    pub shell_replaced: bool,
    /// The shell is gone (`exit`, killed, replaced by a program that is
    /// not bash); the session no longer exists.
    #[serde(default)]
    pub session_ended: bool,
    #[serde(default)]
    pub duration_ms: u64,
}

/// Input for a session's terminal.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShellSendSpec {
    pub session: String,
    /// Bytes typed into the terminal as they are (add `\n` to end a line).
    pub input: String,
    /// A regular expression: return as soon as the output matches it.
    #[serde(default)]
    pub expect: Option<String>,
    /// Give up waiting after this many milliseconds (30 s when absent).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_output: Option<u64>,
}

/// How a `shell_send` ended. The output precedes it as `Data` frames.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShellSendDone {
    /// `expect` matched the output.
    #[serde(default)]
    pub matched: bool,
    /// The timeout passed first (nothing is interrupted).
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub session_ended: bool,
}

/// A session, as `shell_list` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShellInfo {
    pub session: String,
    /// The shell's pid inside the sandbox.
    pub pid: i32,
    /// Working directory after the last command.
    pub cwd: String,
    /// A call is running in it now.
    pub busy: bool,
    /// Start time, microseconds since the Unix epoch.
    pub started_micros: u64,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

/// How to start a process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecSpec {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Variables added to (and overriding) the sandbox's default environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (the user's home, or `/`, when absent).
    #[serde(default)]
    pub cwd: Option<String>,
    /// A user name from the sandbox's `/etc/passwd`, or `uid[:gid]` (root when absent).
    #[serde(default)]
    pub user: Option<String>,
    /// The host will send stdin as `Data` frames; otherwise stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// Run on a pseudo-terminal of this size (stdout and stderr merge into `Stdout`).
    #[serde(default)]
    pub pty: Option<PtySize>,
    /// Kill the process group after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Keep running after the connection closes; output is buffered for `attach`.
    #[serde(default)]
    pub background: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Control messages the host may send on an `exec`/`attach` connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecInput {
    Signal { signal: i32 },
    Resize { rows: u16, cols: u16 },
}

/// What the guest answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello {
        min: u32,
        max: u32,
        /// The guest agent's build version.
        agent: String,
    },
    Started {
        /// The agent's id for the process (for `attach`, `signal`).
        id: String,
        /// Its pid inside the sandbox.
        pid: i32,
    },
    Exited(ExitStatus),
    Procs {
        procs: Vec<ProcInfo>,
    },
    Stat(FileStat),
    Entries {
        entries: Vec<FileStat>,
        /// True when the listing stopped at the entry limit.
        #[serde(default)]
        truncated: bool,
    },
    Connected,
    ShellOpened {
        pid: i32,
    },
    ShellRan(ShellRunDone),
    ShellSent(ShellSendDone),
    Shells {
        sessions: Vec<ShellInfo>,
    },
    KernelStarted {
        pid: i32,
    },
    CodeRan(CodeRunDone),
    /// One output of a `code_run_stream` (version 4).
    CodeOutput {
        output: CodeOutput,
    },
    Kernels {
        contexts: Vec<KernelInfo>,
    },
    /// Changes in a watched directory, in the order they happened (version 5).
    WatchEvents {
        events: Vec<WatchEvent>,
    },
    Ok,
    Error(GuestError),
}

/// How a process ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    /// The agent killed it because its timeout passed.
    #[serde(default)]
    pub timed_out: bool,
    /// Wall time from start to exit.
    #[serde(default)]
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcInfo {
    pub id: String,
    pub pid: i32,
    pub argv: Vec<String>,
    pub background: bool,
    /// Start time, microseconds since the Unix epoch.
    pub started_micros: u64,
    /// Set once the process has ended.
    pub exit: Option<ExitStatus>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStat {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub kind: FileType,
    pub size: u64,
    /// Permission bits (`0o7777` part of `st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Target of a symlink.
    #[serde(default)]
    pub link_target: Option<String>,
}

/// An error reported by the guest. `kind` uses the API's error vocabulary;
/// `reason`, when present, says more in a form the host can act on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct GuestError {
    pub kind: GuestErrorKind,
    pub message: String,
    /// Added within version 1: absent from older guests, ignored by older hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<GuestErrorReason>,
}

impl GuestError {
    pub fn new(kind: GuestErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            reason: None,
        }
    }

    /// The same error with a machine-readable reason.
    pub fn with_reason(self, reason: GuestErrorReason) -> Self {
        Self {
            reason: Some(reason),
            ..self
        }
    }
}

/// Why an `exec` could not start its program, told apart so that a client
/// can exit as shells do (127 and 126).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GuestErrorReason {
    /// No such program: not in `PATH`, or `ENOENT` from `execve`.
    CommandNotFound,
    /// The program (or the working directory) exists but cannot be used:
    /// any other `execve` failure (`EACCES`, `ENOEXEC`, `EISDIR`, ...).
    CommandNotExecutable,
    /// A reason this build does not know (from a newer guest).
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GuestErrorKind {
    InvalidArgument,
    PermissionDenied,
    NotFound,
    Conflict,
    ResourceExhausted,
    Unavailable,
    Internal,
}
