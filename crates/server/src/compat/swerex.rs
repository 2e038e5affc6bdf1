//! SWE-ReX compatibility: the routes of SWE-ReX's `swerex-remote` server
//! under `/v1/sandboxes/{id}/swerex`, so that `RemoteRuntime(host=<daemon
//! URL>/v1/sandboxes/ID/swerex, port=None, auth_token=<daemon token>)`
//! drives a sandbox. A thin translator: bash sessions are hull's shell
//! sessions (`run_in_session` is `shell_run`, interactive commands and
//! interrupts are `shell_send`), `execute` is a buffered exec, files are the
//! file calls, a directory upload (SWE-ReX zips it) is unpacked into a tar
//! stream for the guest's `tar_put`.
//!
//! The wire format is SWE-ReX 1.4's: request bodies are its pydantic models
//! (unknown fields ignored, as pydantic does), its `X-API-Key` header is the
//! daemon's token (a bearer token works too), failures of the operation come
//! back as status 511 with `{"swerexception": {message, class_path,
//! traceback, extra_info}}`, which `RemoteRuntime` re-raises as the same
//! class (`CommandTimeoutError`, `NonZeroExitCodeError`,
//! `BashIncorrectSyntaxError`, `SessionDoesNotExistError`,
//! `FileNotFoundError`...), and failures before it (bad token, unknown or
//! stopped sandbox, malformed body) are HTTP errors with `{"detail": ...}`
//! plus hull's `{"error": {kind, message}}`.
//!
//! Limits and differences (`docs/compat-swe-rex.md`): a timeout interrupts
//! the command (hull's semantics) before `CommandTimeoutError` is raised,
//! with the output so far in its `extra_info["output"]`; output is what the
//! command printed, without the terminal echo noise pexpect adds; `expect`
//! is honoured for interactive commands and interrupts only; `execute`'s
//! `env` is added to the sandbox's environment rather than replacing it;
//! `read_file` decodes UTF-8 only; JSON bodies and `read_file` contents are
//! at most [`MAX_BODY`]; `close` ends the sandbox's shell sessions but not
//! the sandbox; `X-Request-ID` replays are not cached.

use std::io::{Read, Write};
use std::sync::LazyLock;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hull_api::{
    ApiError, ErrorKind, ErrorReason, ExecRequest, SandboxState, ShellOpenRequest, ShellRunRequest,
    ShellSendRequest,
};
use hull_proto::valid_session_name;
use hull_runtime::ByteReader;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::auth::constant_time_eq;
use crate::error::content_length;
use crate::{AppState, Auth};

/// Largest JSON body (a `write_file` content) and largest `read_file` answer.
pub(crate) const MAX_BODY: usize = 16 << 20;
/// SWE-ReX's prompt string: the `expect_string` of a command that ran to its end.
const PS1: &str = "SHELLPS1PREFIX";
/// "No timeout" in SWE-ReX is hull's longest: one day.
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// How long a probe of the session's prompt may take.
const PROBE_MS: u64 = 5_000;
/// Most interrupt attempts one `BashInterruptAction` may ask for.
const MAX_RETRY: i64 = 20;
/// Longest `target_path` form field.
const MAX_FIELD: usize = 4096;

const TIMEOUT: &str = "swerex.exceptions.CommandTimeoutError";
const NONZERO: &str = "swerex.exceptions.NonZeroExitCodeError";
const SYNTAX: &str = "swerex.exceptions.BashIncorrectSyntaxError";
const NO_SESSION: &str = "swerex.exceptions.SessionDoesNotExistError";
const SESSION_EXISTS: &str = "swerex.exceptions.SessionExistsError";
const SWEREX: &str = "swerex.exceptions.SwerexException";

/// How a call fails, in SWE-ReX's two shapes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SwerexError {
    /// Before the operation (token, sandbox, body): an HTTP error, which
    /// `RemoteRuntime` raises as `aiohttp.ClientResponseError`.
    #[error("{}", .1.message)]
    Http(StatusCode, ApiError),
    /// The operation failed: status 511, an exception the client re-raises.
    #[error("{class}: {message}")]
    Raise {
        class: &'static str,
        message: String,
        extra: Map<String, Value>,
    },
}

impl SwerexError {
    fn with(mut self, key: &str, value: Value) -> Self {
        if let SwerexError::Raise { extra, .. } = &mut self {
            extra.insert(key.to_string(), value);
        }
        self
    }
}

fn raise(class: &'static str, message: impl Into<String>) -> SwerexError {
    SwerexError::Raise {
        class,
        message: message.into(),
        extra: Map::new(),
    }
}

/// An HTTP error with the kind's status.
fn http(e: ApiError) -> SwerexError {
    let status =
        StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    SwerexError::Http(status, e)
}

/// A malformed request: FastAPI's validation status.
fn unprocessable(message: impl Into<String>) -> SwerexError {
    SwerexError::Http(StatusCode::UNPROCESSABLE_ENTITY, ApiError::invalid(message))
}

impl IntoResponse for SwerexError {
    fn into_response(self) -> Response {
        match self {
            SwerexError::Http(status, e) => {
                (status, axum::Json(json!({"detail": e.message, "error": e}))).into_response()
            }
            SwerexError::Raise {
                class,
                message,
                extra,
            } => (
                StatusCode::from_u16(511).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(json!({"swerexception": {
                    "message": message,
                    "class_path": class,
                    "traceback": "",
                    "extra_info": extra,
                }})),
            )
                .into_response(),
        }
    }
}

type Reply = Result<axum::Json<Value>, SwerexError>;

/// Any other runtime error, as the closest Python exception, with hull's
/// kind and message in `extra_info["hull_error"]`.
fn generic(e: ApiError) -> SwerexError {
    let class = match e.kind {
        ErrorKind::InvalidArgument => "builtins.ValueError",
        ErrorKind::PermissionDenied => "builtins.PermissionError",
        ErrorKind::NotFound => "builtins.FileNotFoundError",
        _ => SWEREX,
    };
    let hull = json!(e);
    raise(class, e.message).with("hull_error", hull)
}

/// An error of a session call: an unknown session is SWE-ReX's
/// `SessionDoesNotExistError`, an existing one `SessionExistsError`.
fn session_error(e: ApiError, session: &str, creating: bool) -> SwerexError {
    match e.kind {
        ErrorKind::NotFound if !creating => no_session(session),
        ErrorKind::Conflict if creating && e.message.contains("already exists") => {
            raise(SESSION_EXISTS, format!("session {session} already exists"))
        }
        _ => generic(e),
    }
}

fn no_session(session: &str) -> SwerexError {
    raise(
        NO_SESSION,
        format!("session {} does not exist", py_repr(session)),
    )
}

/// A file call's error as Python's `OSError` subclass for its errno (the
/// guest's messages end with Rust's `(os error N)`, or say what it is).
fn file_error(e: ApiError, path: &str) -> SwerexError {
    let errno = e
        .message
        .rsplit_once("(os error ")
        .and_then(|(_, n)| n.trim_end_matches(')').parse::<i32>().ok())
        .or((e.kind == ErrorKind::NotFound).then_some(2))
        .or(e.message.ends_with(" is a directory").then_some(21))
        .or(e.message.ends_with("not a directory").then_some(20));
    let (class, text) = match errno {
        Some(2) => ("builtins.FileNotFoundError", "No such file or directory"),
        Some(1 | 13) => ("builtins.PermissionError", "Permission denied"),
        Some(17) => ("builtins.FileExistsError", "File exists"),
        Some(20) => ("builtins.NotADirectoryError", "Not a directory"),
        Some(21) => ("builtins.IsADirectoryError", "Is a directory"),
        _ => return generic(e),
    };
    let n = errno.unwrap_or(0);
    let hull = json!(e);
    raise(class, format!("[Errno {n}] {text}: {}", py_repr(path))).with("hull_error", hull)
}

/// A JSON body (a pydantic model: unknown fields ignored), at most [`MAX_BODY`].
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = SwerexError;
    async fn from_request(req: Request, _: &S) -> Result<Self, SwerexError> {
        if content_length(req.headers()).is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|_| too_large())?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| unprocessable(format!("invalid request body: {e}")))
    }
}

fn too_large() -> SwerexError {
    SwerexError::Http(
        StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::invalid(format!(
            "request body larger than {} MiB (use the file routes of /v1 for large files)",
            MAX_BODY >> 20
        )),
    )
}

/// The routes, with their own check of the token (`X-API-Key`, or a bearer
/// token), outside the API's bearer layer.
pub(crate) fn router(auth: Auth) -> Router<AppState> {
    const B: &str = "/v1/sandboxes/{id}/swerex";
    let r = |p: &str| format!("{B}{p}");
    Router::new()
        .route(B, get(root))
        .route(&r("/"), get(root))
        .route(&r("/is_alive"), get(is_alive))
        .route(&r("/create_session"), post(create_session))
        .route(&r("/run_in_session"), post(run_in_session))
        .route(&r("/close_session"), post(close_session))
        .route(&r("/execute"), post(execute))
        .route(&r("/read_file"), post(read_file))
        .route(&r("/write_file"), post(write_file))
        .route(
            &r("/upload"),
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route(&r("/close"), post(close))
        .layer(axum::middleware::from_fn_with_state(auth, authenticate))
}

async fn authenticate(
    State(auth): State<Auth>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Auth::Bearer(token) = &auth {
        let h = req.headers();
        let text = |name| {
            h.get(name)
                .and_then(|v: &header::HeaderValue| v.to_str().ok())
        };
        let given = text(header::HeaderName::from_static("x-api-key"))
            .map(str::trim)
            .or_else(|| {
                text(header::AUTHORIZATION)
                    .and_then(|v| v.trim().split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim())
            })
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return http(ApiError::new(
                ErrorKind::Unauthenticated,
                "Invalid API Key: pass the daemon's token (<state-dir>/token) as \
                 RemoteRuntime's auth_token (sent as X-API-Key)",
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// The sandbox must exist and run; otherwise an HTTP error.
async fn running(s: &AppState, id: &str) -> Result<(), SwerexError> {
    let sb = s.rt.get(id).await.map_err(http)?;
    if sb.state != SandboxState::Running {
        return Err(http(ApiError::conflict(format!(
            "sandbox {} is {}: SWE-ReX calls need a running sandbox",
            sb.id,
            sb.state.as_str()
        ))));
    }
    Ok(())
}

async fn root() -> axum::Json<Value> {
    axum::Json(json!({"message": "hello world"}))
}

async fn is_alive(State(s): State<AppState>, Path(id): Path<String>) -> Reply {
    let sb = s.rt.get(&id).await.map_err(http)?;
    Ok(axum::Json(if sb.state == SandboxState::Running {
        json!({"is_alive": true, "message": ""})
    } else {
        json!({"is_alive": false, "message": format!("sandbox {} is {}", sb.id, sb.state.as_str())})
    }))
}

fn default_session() -> String {
    "default".into()
}
fn bash() -> String {
    "bash".into()
}

#[derive(Debug, Deserialize)]
struct CreateSession {
    #[serde(default)]
    startup_source: Vec<String>,
    #[serde(default = "default_session")]
    session: String,
    #[serde(default = "bash")]
    session_type: String,
    #[serde(default = "one_second")]
    startup_timeout: f64,
}

fn one_second() -> f64 {
    1.0
}

fn check_bash(session_type: &str) -> Result<(), SwerexError> {
    if session_type == "bash" {
        Ok(())
    } else {
        Err(unprocessable(format!(
            "session_type {session_type:?}: only \"bash\" sessions exist"
        )))
    }
}

async fn create_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<CreateSession>,
) -> Reply {
    check_bash(&req.session_type)?;
    running(&s, &id).await?;
    let startup = timeout_ms(Some(req.startup_timeout))?;
    s.rt.shell_open(
        &id,
        ShellOpenRequest {
            session: req.session.clone(),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| session_error(e, &req.session, true))?;
    let mut output = String::new();
    if !req.startup_source.is_empty() {
        let command = req
            .startup_source
            .iter()
            .map(|p| format!("source {p}"))
            .collect::<Vec<_>>()
            .join(" ; ");
        let r =
            s.rt.shell_run(
                &id,
                &req.session,
                ShellRunRequest {
                    command: command.clone(),
                    timeout_ms: Some(startup),
                    ..Default::default()
                },
            )
            .await
            .map_err(generic)?;
        output = clean(&r.output);
        if r.timed_out {
            return Err(timed_out(Some(req.startup_timeout), &command, output));
        }
    }
    Ok(axum::Json(
        json!({"output": output, "session_type": "bash"}),
    ))
}

#[derive(Debug, Deserialize)]
struct BashAction {
    command: String,
    #[serde(default = "default_session")]
    session: String,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    is_interactive_command: bool,
    #[serde(default)]
    is_interactive_quit: bool,
    #[serde(default = "raise_check")]
    check: String,
    #[serde(default)]
    error_msg: String,
    #[serde(default)]
    expect: Vec<String>,
}

fn raise_check() -> String {
    "raise".into()
}

#[derive(Debug, Deserialize)]
struct BashInterruptAction {
    #[serde(default = "default_session")]
    session: String,
    #[serde(default = "fifth_second")]
    timeout: f64,
    #[serde(default = "three")]
    n_retry: i64,
    #[serde(default)]
    expect: Vec<String>,
}

fn fifth_second() -> f64 {
    0.2
}
fn three() -> i64 {
    3
}

async fn run_in_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(v): Body<Value>,
) -> Reply {
    let kind = v
        .get("action_type")
        .and_then(Value::as_str)
        .unwrap_or("bash")
        .to_string();
    let parse = |e: serde_json::Error| unprocessable(format!("invalid action: {e}"));
    match kind.as_str() {
        "bash" => {
            let a: BashAction = serde_json::from_value(v).map_err(parse)?;
            run_bash(&s, &id, a).await
        }
        "bash_interrupt" => {
            let a: BashInterruptAction = serde_json::from_value(v).map_err(parse)?;
            interrupt(&s, &id, a).await
        }
        other => Err(unprocessable(format!(
            "action_type {other:?}: expected \"bash\" or \"bash_interrupt\""
        ))),
    }
    .map(axum::Json)
}

fn observation(output: String, exit_code: Option<i32>, failure: &str, expect: &str) -> Value {
    json!({
        "output": output,
        "exit_code": exit_code,
        "failure_reason": failure,
        "expect_string": expect,
        "session_type": "bash",
    })
}

fn timed_out(timeout: Option<f64>, command: &str, output: String) -> SwerexError {
    raise(
        TIMEOUT,
        format!(
            "timeout after {} seconds while running command {}",
            py_float(timeout),
            py_repr(command)
        ),
    )
    .with("output", Value::String(output))
}

async fn run_bash(s: &AppState, id: &str, a: BashAction) -> Result<Value, SwerexError> {
    if !matches!(a.check.as_str(), "silent" | "raise" | "ignore") {
        return Err(unprocessable(format!(
            "check {:?}: expected \"silent\", \"raise\" or \"ignore\"",
            a.check
        )));
    }
    let limit = timeout_ms(a.timeout)?;
    running(s, id).await?;
    if !valid_session_name(&a.session) {
        return Err(no_session(&a.session));
    }
    if a.is_interactive_command || a.is_interactive_quit {
        return interactive(s, id, &a, limit).await;
    }
    syntax_check(s, id, &a.command).await?;
    let r =
        s.rt.shell_run(
            id,
            &a.session,
            ShellRunRequest {
                command: a.command.clone(),
                timeout_ms: Some(limit),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| session_error(e, &a.session, false))?;
    let output = clean(&r.output);
    if r.timed_out || r.idle_timed_out {
        return Err(timed_out(a.timeout, &a.command, output));
    }
    let exit_code = if a.check == "ignore" {
        None
    } else {
        r.exit_code
    };
    if a.check == "raise" && exit_code != Some(0) {
        let mut msg = format!(
            "Command {} failed with exit code {}. Here is the output:\n{}",
            py_repr(&a.command),
            py_opt_int(exit_code),
            py_repr(&output)
        );
        if !a.error_msg.is_empty() {
            msg = format!("{}: {msg}", a.error_msg);
        }
        return Err(raise(NONZERO, msg).with("output", Value::String(output)));
    }
    let failure = if r.session_ended {
        "the shell exited: the session is closed"
    } else {
        ""
    };
    Ok(observation(output, exit_code, failure, PS1))
}

/// SWE-ReX refuses a command `bash -n` rejects, before running it; so does
/// this, with the sandbox's own bash.
async fn syntax_check(s: &AppState, id: &str, command: &str) -> Result<(), SwerexError> {
    let r =
        s.rt.exec(
            id,
            ExecRequest {
                cmd: vec!["bash".into(), "-n".into()],
                stdin: Some(command.to_string()),
                timeout_seconds: Some(10.0),
                ..Default::default()
            },
        )
        .await
        .map_err(generic)?;
    if r.exit_code == Some(0) {
        return Ok(());
    }
    let msg = format!(
        "Error (exit code {}) while checking bash command \n{}\n---- Stderr ----\n{}\n---- Stdout ----\n{}",
        py_opt_int(r.exit_code),
        py_repr(command),
        r.stderr,
        r.stdout
    );
    Err(raise(SYNTAX, msg)
        .with("bash_stdout", Value::String(r.stdout))
        .with("bash_stderr", Value::String(r.stderr)))
}

/// `(?:a)|(?:b)`: one pattern for the guest's `expect`.
fn combined(expect: &[String]) -> Option<String> {
    (!expect.is_empty()).then(|| {
        expect
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|")
    })
}

/// The pattern of `expect` that matches first in `output` (pexpect's rule:
/// earliest match, then list order), and the output before that match.
fn split_at_match(output: &str, expect: &[String]) -> (String, Option<String>) {
    let mut best: Option<(usize, &String)> = None;
    for p in expect {
        let Ok(re) = regex::Regex::new(p) else {
            continue;
        };
        if let Some(m) = re.find(output)
            && best.is_none_or(|(at, _)| m.start() < at)
        {
            best = Some((m.start(), p));
        }
    }
    match best {
        Some((at, p)) => (output[..at].to_string(), Some(p.clone())),
        None => (output.to_string(), None),
    }
}

async fn send(
    s: &AppState,
    id: &str,
    session: &str,
    input: String,
    expect: Option<String>,
    timeout_ms: u64,
) -> Result<hull_api::ShellSendResult, SwerexError> {
    s.rt.shell_send(
        id,
        session,
        ShellSendRequest {
            input,
            expect,
            timeout_ms: Some(timeout_ms),
            max_output: None,
        },
    )
    .await
    .map_err(|e| session_error(e, session, false))
}

/// Whether the session's shell is back at its prompt: hull refuses a
/// command while a program holds the terminal's foreground.
async fn at_prompt(s: &AppState, id: &str, session: &str) -> Result<bool, SwerexError> {
    match s
        .rt
        .shell_run(
            id,
            session,
            ShellRunRequest {
                command: ":".into(),
                timeout_ms: Some(PROBE_MS),
                ..Default::default()
            },
        )
        .await
    {
        Ok(r) => Ok(!r.session_ended),
        Err(e) if e.kind == ErrorKind::Conflict => Ok(false),
        Err(e) => Err(session_error(e, session, false)),
    }
}

/// An interactive command (`gdb`, `python3`, input to them): typed into
/// the terminal; returns when an `expect` pattern shows, or, without one,
/// when the shell is back at its prompt.
async fn interactive(
    s: &AppState,
    id: &str,
    a: &BashAction,
    limit: u64,
) -> Result<Value, SwerexError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(limit);
    let r = send(
        s,
        id,
        &a.session,
        format!("{}\n", a.command),
        combined(&a.expect),
        limit,
    )
    .await?;
    let raw = clean(&r.output);
    if r.timed_out {
        return Err(timed_out(a.timeout, &a.command, raw));
    }
    let (mut output, matched) = split_at_match(&raw, &a.expect);
    let expect_string = match matched {
        Some(p) => p,
        None => {
            // SWE-ReX waits for its prompt: until the program has ended.
            while !at_prompt(s, id, &a.session).await? {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(timed_out(a.timeout, &a.command, output));
                }
                let more = send(
                    s,
                    id,
                    &a.session,
                    String::new(),
                    None,
                    left.as_millis().max(1) as u64,
                )
                .await?;
                output.push_str(&clean(&more.output));
            }
            PS1.to_string()
        }
    };
    if a.is_interactive_command {
        output = output
            .trim_start()
            .strip_prefix(a.command.as_str())
            .unwrap_or(output.trim_start())
            .trim()
            .to_string();
    }
    Ok(observation(output, Some(0), "", &expect_string))
}

/// SWE-ReX's interrupt: Ctrl-C up to `n_retry` times until the prompt (or
/// an `expect` pattern) is back, then Ctrl-Z and `kill -9` of the job.
async fn interrupt(s: &AppState, id: &str, a: BashInterruptAction) -> Result<Value, SwerexError> {
    let step = timeout_ms(Some(a.timeout))?;
    if !(0..=MAX_RETRY).contains(&a.n_retry) {
        return Err(unprocessable(format!(
            "n_retry {} must be between 0 and {MAX_RETRY}",
            a.n_retry
        )));
    }
    running(s, id).await?;
    if !valid_session_name(&a.session) {
        return Err(no_session(&a.session));
    }
    let mut output = String::new();
    for _ in 0..a.n_retry {
        let r = send(s, id, &a.session, "\u{3}".into(), combined(&a.expect), step).await?;
        let (out, matched) = split_at_match(&clean(&r.output), &a.expect);
        output.push_str(&out);
        if let Some(p) = matched {
            return Ok(observation(output.trim().to_string(), Some(0), "", &p));
        }
        if at_prompt(s, id, &a.session).await? {
            return Ok(observation(output.trim().to_string(), Some(0), "", PS1));
        }
    }
    let r = send(s, id, &a.session, "\u{1a}".into(), None, step).await?;
    output.push_str(&clean(&r.output));
    if at_prompt(s, id, &a.session).await? {
        let k =
            s.rt.shell_run(
                id,
                &a.session,
                ShellRunRequest {
                    // `disown`: bash would otherwise print "[1]+ Killed ..."
                    // into the output of the session's next command.
                    command: "kill -9 %+ 2>/dev/null; disown %+ 2>/dev/null; true".into(),
                    timeout_ms: Some(PROBE_MS),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| session_error(e, &a.session, false))?;
        output.push_str(&clean(&k.output));
        return Ok(observation(output.trim().to_string(), Some(0), "", PS1));
    }
    Err(
        raise("pexpect.exceptions.TIMEOUT", "Failed to interrupt session")
            .with("output", Value::String(output)),
    )
}

#[derive(Debug, Deserialize)]
struct CloseSession {
    #[serde(default = "default_session")]
    session: String,
    #[serde(default = "bash")]
    session_type: String,
}

async fn close_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<CloseSession>,
) -> Reply {
    check_bash(&req.session_type)?;
    running(&s, &id).await?;
    if !valid_session_name(&req.session) {
        return Err(no_session(&req.session));
    }
    s.rt.shell_close(&id, &req.session)
        .await
        .map_err(|e| session_error(e, &req.session, false))?;
    Ok(axum::Json(json!({"session_type": "bash"})))
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CommandLine {
    Text(String),
    Argv(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct Command {
    command: CommandLine,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    check: bool,
    #[serde(default)]
    error_msg: String,
    #[serde(default)]
    env: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    merge_output_streams: bool,
}

/// `subprocess.run`'s argv: a string without `shell` is one program name;
/// with `shell`, `/bin/sh -c` runs the string (or the list's first item,
/// the rest its `$0...`).
fn argv(c: &Command) -> Result<Vec<String>, SwerexError> {
    let mut v = match (&c.command, c.shell) {
        (CommandLine::Text(t), false) => vec![t.clone()],
        (CommandLine::Text(t), true) => vec!["/bin/sh".into(), "-c".into(), t.clone()],
        (CommandLine::Argv(a), false) => a.clone(),
        (CommandLine::Argv(a), true) => {
            let mut v = vec!["/bin/sh".to_string(), "-c".into()];
            v.extend(a.iter().cloned());
            v
        }
    };
    if v.is_empty() || v.len() == 2 && c.shell {
        return Err(raise("builtins.IndexError", "list index out of range"));
    }
    if c.merge_output_streams {
        let mut m = vec![
            "/bin/sh".to_string(),
            "-c".into(),
            "exec \"$@\" 2>&1".into(),
            "sh".into(),
        ];
        m.append(&mut v);
        v = m;
    }
    Ok(v)
}

fn py_command(c: &CommandLine) -> String {
    match c {
        CommandLine::Text(t) => py_repr(t),
        CommandLine::Argv(a) => format!(
            "[{}]",
            a.iter().map(|s| py_repr(s)).collect::<Vec<_>>().join(", ")
        ),
    }
}

async fn execute(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(c): Body<Command>,
) -> Reply {
    let cmd = argv(&c)?;
    if let Some(t) = c.timeout
        && !(t.is_finite() && t > 0.0 && t * 1000.0 <= MAX_TIMEOUT_MS as f64)
    {
        return Err(raise(
            "builtins.ValueError",
            format!("timeout {t} must be positive and at most one day"),
        ));
    }
    running(&s, &id).await?;
    let program = cmd[0].clone();
    let r =
        s.rt.exec(
            &id,
            ExecRequest {
                cmd,
                env: c.env.clone().unwrap_or_default(),
                cwd: c.cwd.clone(),
                timeout_seconds: c.timeout,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match e.reason {
            Some(ErrorReason::CommandNotFound) => raise(
                "builtins.FileNotFoundError",
                format!("[Errno 2] No such file or directory: {}", py_repr(&program)),
            ),
            Some(ErrorReason::CommandNotExecutable) => raise(
                "builtins.PermissionError",
                format!("[Errno 13] Permission denied: {}", py_repr(&program)),
            ),
            _ => generic(e),
        })?;
    if r.timed_out {
        return Err(raise(
            TIMEOUT,
            format!(
                "Timeout ({}s) exceeded while running command",
                py_float(c.timeout)
            ),
        )
        .with("stdout", Value::String(r.stdout))
        .with("stderr", Value::String(r.stderr)));
    }
    // subprocess reports a signal N as -N.
    let code = r.exit_code.or(r.signal.map(|n| -n));
    if c.check && code != Some(0) {
        let mut msg = format!(
            "Command {} failed with exit code {}. Stdout:\n{}\nStderr:\n{}",
            py_command(&c.command),
            py_opt_int(code),
            py_repr(&r.stdout),
            py_repr(&r.stderr)
        );
        if !c.error_msg.is_empty() {
            msg = format!("{}: {msg}", c.error_msg);
        }
        return Err(raise(NONZERO, msg));
    }
    Ok(axum::Json(
        json!({"stdout": r.stdout, "stderr": r.stderr, "exit_code": code}),
    ))
}

/// Sandbox paths are absolute; a relative one is taken from `/` (where
/// `swerex-remote` usually runs).
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

#[derive(Debug, Deserialize)]
struct ReadFile {
    path: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    errors: Option<String>,
}

/// Python's text decoding of `bytes` as UTF-8 with an `errors` handler.
fn decode(bytes: &[u8], errors: &str) -> Result<String, SwerexError> {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return Ok(out);
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len());
                match errors {
                    "strict" => {
                        let at = bytes.len() - rest.len() + e.valid_up_to();
                        return Err(raise(
                            "builtins.ValueError",
                            format!(
                                "'utf-8' codec can't decode byte 0x{:02x} in position {at}: invalid utf-8 \
                                 (pass errors=\"replace\" or \"backslashreplace\" to read it anyway)",
                                bad[0]
                            ),
                        ));
                    }
                    "replace" => out.push('\u{fffd}'),
                    "ignore" => {}
                    _ => {
                        for b in &bad[..n] {
                            out.push_str(&format!("\\x{b:02x}"));
                        }
                    }
                }
                rest = &bad[n..];
            }
        }
    }
}

async fn read_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<ReadFile>,
) -> Reply {
    if let Some(enc) = &req.encoding {
        let e = enc.to_ascii_lowercase().replace('_', "-");
        if !matches!(e.as_str(), "utf-8" | "utf8" | "u8" | "utf") {
            return Err(raise(
                "builtins.LookupError",
                format!("encoding {enc:?}: hull's SWE-ReX adapter decodes utf-8 only"),
            ));
        }
    }
    let errors = req.errors.as_deref().unwrap_or("strict");
    if !matches!(errors, "strict" | "replace" | "ignore" | "backslashreplace") {
        return Err(raise(
            "builtins.LookupError",
            format!("errors {errors:?}: supported are strict, replace, ignore, backslashreplace"),
        ));
    }
    running(&s, &id).await?;
    let path = absolute(&req.path);
    let (_, reader) =
        s.rt.read_file(&id, &path)
            .await
            .map_err(|e| file_error(e, &req.path))?;
    let mut buf = Vec::new();
    reader
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| raise("builtins.OSError", format!("reading {}: {e}", req.path)))?;
    if buf.len() > MAX_BODY {
        return Err(raise(
            "builtins.ValueError",
            format!(
                "{} is larger than {} MiB, the limit of read_file: download it with GET /v1/sandboxes/{id}/files",
                req.path,
                MAX_BODY >> 20
            ),
        ));
    }
    Ok(axum::Json(json!({"content": decode(&buf, errors)?})))
}

#[derive(Debug, Deserialize)]
struct WriteFile {
    content: String,
    path: String,
}

fn parent(path: &str) -> Option<&str> {
    let p = path.trim_end_matches('/');
    let (dir, _) = p.rsplit_once('/')?;
    (!dir.is_empty()).then_some(dir)
}

/// Write `data` to `path`, creating missing parent directories as SWE-ReX does.
async fn put_file(
    s: &AppState,
    id: &str,
    path: &str,
    data: impl Fn() -> ByteReader,
) -> Result<(), ApiError> {
    match s.rt.write_file(id, path, None, s.max_upload, data()).await {
        Err(e) if e.kind == ErrorKind::NotFound => {
            if let Some(dir) = parent(path) {
                s.rt.mkdir(id, dir, true).await?;
            }
            s.rt.write_file(id, path, None, s.max_upload, data())
                .await
                .map(drop)
        }
        r => r.map(drop),
    }
}

async fn write_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<WriteFile>,
) -> Reply {
    running(&s, &id).await?;
    let path = absolute(&req.path);
    let bytes = bytes::Bytes::from(req.content.into_bytes());
    put_file(&s, &id, &path, || {
        Box::pin(std::io::Cursor::new(bytes.clone()))
    })
    .await
    .map_err(|e| file_error(e, &req.path))?;
    Ok(axum::Json(json!({})))
}

/// pydantic's reading of a form boolean.
fn form_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

fn form_error(e: axum::extract::multipart::MultipartError) -> SwerexError {
    unprocessable(format!("invalid multipart body: {}", e.body_text()))
}

/// A short text field, at most [`MAX_FIELD`] bytes.
async fn form_text(
    mut f: axum::extract::multipart::Field<'_>,
    name: &str,
) -> Result<String, SwerexError> {
    let mut buf = Vec::new();
    while let Some(c) = f.chunk().await.map_err(form_error)? {
        buf.extend_from_slice(&c);
        if buf.len() > MAX_FIELD {
            return Err(unprocessable(format!(
                "form field {name} is longer than {MAX_FIELD} bytes"
            )));
        }
    }
    String::from_utf8(buf).map_err(|_| unprocessable(format!("form field {name} is not UTF-8")))
}

/// `upload`: multipart `file`, `target_path`, `unzip`. The file is spooled
/// to an unnamed temporary file (the form names the target after the file,
/// and a zip is read from its end), at most the daemon's upload limit.
async fn upload(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    mut form: Multipart,
) -> Reply {
    if let Some(n) = content_length(&headers)
        && n > s.max_upload.saturating_add(64 << 10)
    {
        return Err(http(ApiError::invalid(format!(
            "upload of {n} bytes is larger than the limit of {} bytes",
            s.max_upload
        ))));
    }
    running(&s, &id).await?;
    let mut file: Option<(tokio::fs::File, u64)> = None;
    let mut target = None;
    let mut unzip = false;
    while let Some(mut f) = form.next_field().await.map_err(form_error)? {
        match f.name().unwrap_or("") {
            "file" => {
                let spool = tempfile::tempfile()
                    .map_err(|e| raise(SWEREX, format!("cannot spool the upload: {e}")))?;
                let mut spool = tokio::fs::File::from_std(spool);
                let mut n = 0u64;
                while let Some(c) = f.chunk().await.map_err(form_error)? {
                    n += c.len() as u64;
                    if n > s.max_upload {
                        return Err(http(ApiError::new(
                            ErrorKind::ResourceExhausted,
                            format!("upload is larger than the limit of {} bytes", s.max_upload),
                        )));
                    }
                    spool
                        .write_all(&c)
                        .await
                        .map_err(|e| raise(SWEREX, format!("cannot spool the upload: {e}")))?;
                }
                spool
                    .flush()
                    .await
                    .map_err(|e| raise(SWEREX, format!("cannot spool the upload: {e}")))?;
                file = Some((spool, n));
            }
            "target_path" => target = Some(form_text(f, "target_path").await?),
            "unzip" => {
                let v = form_text(f, "unzip").await?;
                unzip = form_bool(&v)
                    .ok_or_else(|| unprocessable(format!("unzip {v:?} is not a boolean")))?;
            }
            other => {
                return Err(unprocessable(format!(
                    "unknown form field {other:?}: expected file, target_path, unzip"
                )));
            }
        }
    }
    let (Some((mut spool, _)), Some(target_raw)) = (file, target) else {
        return Err(unprocessable(
            "the form needs the fields file and target_path",
        ));
    };
    if target_raw.is_empty() {
        return Err(unprocessable("target_path is empty"));
    }
    let target = absolute(&target_raw);
    let spool_err =
        |e: std::io::Error| raise(SWEREX, format!("cannot read the spooled upload: {e}"));
    spool
        .seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(spool_err)?;
    if !unzip {
        // As SWE-ReX: the parent directories, then the file.
        if let Some(dir) = parent(&target) {
            s.rt.mkdir(&id, dir, true)
                .await
                .map_err(|e| file_error(e, &target_raw))?;
        }
        s.rt.write_file(&id, &target, None, s.max_upload, Box::pin(spool))
            .await
            .map_err(|e| file_error(e, &target_raw))?;
        return Ok(axum::Json(json!({})));
    }
    s.rt.mkdir(&id, &target, true)
        .await
        .map_err(|e| file_error(e, &target_raw))?;
    let std = spool.into_std().await;
    let (w, r) = tokio::io::duplex(256 << 10);
    let max = s.max_upload;
    let convert = tokio::task::spawn_blocking(move || {
        let mut out = tokio_util::io::SyncIoBridge::new(w);
        let res = zip_to_tar(std, &mut out, max);
        drop(out); // end of the tar stream
        res
    });
    let put = s.rt.tar_put(&id, &target, max, Box::pin(r));
    let (put, convert) = tokio::join!(put, convert);
    match convert {
        Err(e) => return Err(raise(SWEREX, format!("unpacking the zip failed: {e}"))),
        Ok(Err(ZipToTarError::Zip(e))) => {
            return Err(raise(
                "zipfile.BadZipFile",
                format!("the upload is not a usable zip: {e}"),
            ));
        }
        Ok(Err(ZipToTarError::TooLarge(max))) => {
            return Err(generic(ApiError::new(
                ErrorKind::ResourceExhausted,
                format!("the zip unpacks to more than the upload limit of {max} bytes"),
            )));
        }
        Ok(Err(ZipToTarError::Io(e))) if put.is_ok() => {
            return Err(raise(SWEREX, format!("unpacking the zip failed: {e}")));
        }
        Ok(_) => {}
    }
    put.map_err(|e| file_error(e, &target_raw))?;
    Ok(axum::Json(json!({})))
}

/// Why a zip could not become a tar stream.
#[derive(Debug, thiserror::Error)]
enum ZipToTarError {
    #[error("not a usable zip archive")]
    Zip(#[from] zip::result::ZipError),
    #[error("the archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("writing the tar stream")]
    Io(#[from] std::io::Error),
}

/// An entry's name as Python's `zipfile.extractall` writes it: `.`, `..`
/// and empty components dropped, so nothing lands outside the target.
fn entry_name(raw: &str) -> String {
    raw.split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect::<Vec<_>>()
        .join("/")
}

/// Exactly `left` bytes of a zip entry, or an error.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a zip entry is shorter than its recorded size",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Re-pack a zip as a tar stream: directories and regular files only (a
/// stored symlink becomes a file holding its target, as Python extracts
/// it), permission bits kept without set-id bits, at most `max` bytes of
/// content in all.
fn zip_to_tar(file: std::fs::File, out: impl Write, max: u64) -> Result<(), ZipToTarError> {
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))?;
    let mut tar = tar::Builder::new(out);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut total = 0u64;
    for i in 0..zip.len() {
        let entry = zip.by_index(i)?;
        let name = entry_name(&entry.name()?);
        if name.is_empty() {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mtime(now);
        h.set_uid(0);
        h.set_gid(0);
        if entry.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(entry.unix_mode().map_or(0o755, |m| m & 0o777));
            h.set_size(0);
            tar.append_data(&mut h, &name, std::io::empty())?;
            continue;
        }
        let size = entry.size();
        total = total.saturating_add(size);
        if total > max {
            return Err(ZipToTarError::TooLarge(max));
        }
        let mode = if entry.is_symlink() {
            0o644
        } else {
            entry.unix_mode().map_or(0o644, |m| m & 0o777)
        };
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(size);
        tar.append_data(
            &mut h,
            &name,
            Exact {
                inner: entry,
                left: size,
            },
        )?;
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

async fn close(State(s): State<AppState>, Path(id): Path<String>) -> Reply {
    running(&s, &id).await?;
    let list = s.rt.shell_list(&id).await.map_err(generic)?;
    for sh in list.sessions {
        match s.rt.shell_close(&id, &sh.session).await {
            Err(e) if e.kind != ErrorKind::NotFound => return Err(generic(e)),
            _ => {}
        }
    }
    Ok(axum::Json(json!({})))
}

/// A timeout in seconds as milliseconds for hull (none: one day).
fn timeout_ms(t: Option<f64>) -> Result<u64, SwerexError> {
    match t {
        None => Ok(MAX_TIMEOUT_MS),
        Some(t) if t.is_finite() && t > 0.0 && t * 1000.0 <= MAX_TIMEOUT_MS as f64 => {
            Ok(((t * 1000.0).ceil() as u64).max(1))
        }
        Some(t) => Err(raise(
            "builtins.ValueError",
            format!("timeout {t} must be a positive number of seconds, at most one day"),
        )),
    }
}

static ANSI: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"\x1B[@-_][0-?]*[ -/]*[@-~]").expect("a valid pattern"));

/// Terminal output as SWE-ReX reports it: ANSI escapes removed, CRLF as LF.
fn clean(s: &str) -> String {
    ANSI.replace_all(s, "").replace("\r\n", "\n")
}

/// Python's `repr` of a string.
fn py_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// Python's `str` of an optional float (`None`, `5.0`, `0.5`).
fn py_float(t: Option<f64>) -> String {
    match t {
        None => "None".into(),
        Some(t) if t.is_finite() && t.fract() == 0.0 && t.abs() < 1e16 => format!("{t:.1}"),
        Some(t) => format!("{t}"),
    }
}

fn py_opt_int(v: Option<i32>) -> String {
    v.map_or("None".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_reprs() {
        assert_eq!(py_repr("echo hi"), "'echo hi'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(py_repr("x\n\t\\\u{1}"), "'x\\n\\t\\\\\\x01'");
        assert_eq!(py_float(Some(5.0)), "5.0");
        assert_eq!(py_float(Some(0.5)), "0.5");
        assert_eq!(py_float(None), "None");
        assert_eq!(py_opt_int(None), "None");
    }

    #[test]
    fn output_is_cleaned_like_swerex() {
        assert_eq!(clean("\x1b[01;34mdir\x1b[0m\r\nx\r\n"), "dir\nx\n");
    }

    #[test]
    fn expect_picks_the_earliest_match() {
        let e = vec!["b+".to_string(), "a".to_string()];
        assert_eq!(
            split_at_match("xxabbb", &e),
            ("xx".to_string(), Some("a".to_string()))
        );
        assert_eq!(split_at_match("zz", &e), ("zz".to_string(), None));
        assert_eq!(combined(&e).as_deref(), Some("(?:b+)|(?:a)"));
        assert_eq!(combined(&[]), None);
    }

    #[test]
    fn zip_names_cannot_climb() {
        assert_eq!(entry_name("../../etc/passwd"), "etc/passwd");
        assert_eq!(entry_name("/abs/./x"), "abs/x");
        assert_eq!(entry_name("a/../b/"), "a/b");
        assert_eq!(entry_name(".."), "");
    }

    #[test]
    fn timeouts_and_bools() {
        assert_eq!(timeout_ms(Some(0.0001)).unwrap(), 1);
        assert_eq!(timeout_ms(Some(1.5)).unwrap(), 1500);
        assert_eq!(timeout_ms(None).unwrap(), MAX_TIMEOUT_MS);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert!(timeout_ms(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(form_bool("True"), Some(true));
        assert_eq!(form_bool("off"), Some(false));
        assert_eq!(form_bool("maybe"), None);
    }

    #[test]
    fn decoding_follows_the_errors_handler() {
        let b = b"a\xffb";
        assert!(decode(b, "strict").is_err());
        assert_eq!(decode(b, "replace").unwrap(), "a\u{fffd}b");
        assert_eq!(decode(b, "ignore").unwrap(), "ab");
        assert_eq!(decode(b, "backslashreplace").unwrap(), "a\\xffb");
        assert_eq!(decode("é".as_bytes(), "strict").unwrap(), "é");
    }

    #[test]
    fn exec_argv_is_subprocess_like() {
        let c = |command, shell, merge| Command {
            command,
            timeout: None,
            shell,
            check: false,
            error_msg: String::new(),
            env: None,
            cwd: None,
            merge_output_streams: merge,
        };
        let t = |s: &str| CommandLine::Text(s.into());
        assert_eq!(argv(&c(t("ls -l"), false, false)).unwrap(), ["ls -l"]);
        assert_eq!(
            argv(&c(t("ls -l"), true, false)).unwrap(),
            ["/bin/sh", "-c", "ls -l"]
        );
        assert_eq!(
            argv(&c(
                CommandLine::Argv(vec!["echo".into(), "x".into()]),
                false,
                true
            ))
            .unwrap(),
            ["/bin/sh", "-c", "exec \"$@\" 2>&1", "sh", "echo", "x"]
        );
        assert!(argv(&c(CommandLine::Argv(vec![]), false, false)).is_err());
    }

    /// A zip with hostile names, a directory, a symlink and modes becomes a
    /// tar whose names stay inside the target.
    #[test]
    fn zip_becomes_tar() {
        use zip::write::SimpleFileOptions;
        let mut f = tempfile::tempfile().unwrap();
        {
            let mut z = zip::ZipWriter::new(&mut f);
            let o = SimpleFileOptions::default().unix_permissions(0o4755);
            z.add_directory("d/", SimpleFileOptions::default()).unwrap();
            z.start_file("d/run.sh", o).unwrap();
            z.write_all(b"#!/bin/sh\necho hi\n").unwrap();
            z.start_file("../../escape.txt", SimpleFileOptions::default())
                .unwrap();
            z.write_all(b"x").unwrap();
            z.add_symlink("link", "/etc/passwd", SimpleFileOptions::default())
                .unwrap();
            z.finish().unwrap();
        }
        let mut out = Vec::new();
        zip_to_tar(f.try_clone().unwrap(), &mut out, 1 << 20).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            seen.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().mode().unwrap(),
                body,
            ));
        }
        assert_eq!(
            seen,
            [
                ("d".to_string(), 0o755, String::new()),
                (
                    "d/run.sh".to_string(),
                    0o755,
                    "#!/bin/sh\necho hi\n".to_string()
                ),
                ("escape.txt".to_string(), 0o644, "x".to_string()),
                ("link".to_string(), 0o644, "/etc/passwd".to_string()),
            ]
        );
        // Over the size budget: refused.
        assert!(matches!(
            zip_to_tar(f, &mut Vec::new(), 4),
            Err(ZipToTarError::TooLarge(4))
        ));
        // Not a zip.
        let mut junk = tempfile::tempfile().unwrap();
        junk.write_all(b"not a zip at all").unwrap();
        assert!(matches!(
            zip_to_tar(junk, &mut Vec::new(), 1 << 20),
            Err(ZipToTarError::Zip(_))
        ));
    }
}
