//! MCP servers hosted inside sandboxes: a stdio MCP server (any program
//! that speaks newline-delimited JSON-RPC on stdin/stdout) registered on a
//! sandbox under a name, and reached from outside through the server
//! crate's streamable-HTTP endpoint. Registering starts the command once,
//! performs the `initialize` handshake and `tools/list` to check it, and
//! stops it again. Each MCP session then runs its own process of the
//! command, started by the session's `initialize` through the guest agent
//! (an exec with streamed stdin/stdout), so sessions are independent and a
//! crash ends one session only.
//!
//! Messages are proxied raw, whatever the protocol version: a client's
//! request waits for the server's response with the same id; server
//! progress notifications carrying a pending request's `progressToken` go
//! with that request; every other server message (notifications, requests
//! such as sampling or roots, whose replies the client POSTs back) goes to
//! the session's event stream, else to a request answered as a stream,
//! else to a backlog of [`BACKLOG`] messages (oldest dropped) that the next
//! event stream receives first.
//!
//! Hostile servers are bounded: stdout lines over [`MAX_MESSAGE`] bytes
//! and lines that are not JSON objects are dropped and counted; stderr is
//! kept as a tail of [`STDERR_TAIL`] bytes, quoted in errors. Limits: at
//! most [`MAX_SERVERS`] servers per sandbox and [`MAX_SESSIONS`] sessions
//! per server; registrations and sessions live in the daemon's memory and
//! end with the sandbox's processes (stop, destroy, rollback, failure) or
//! a daemon restart (the guest kills a process whose connection closes).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hull_api::{ApiError, ErrorKind, McpServerInfo, McpServerRequest, McpServers};
use hull_proto::ExecSpec;
use hull_proto::client::{ExecOutput, GuestClient};
use hull_proto::valid_session_name;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Runtime, guest_error};

/// Largest JSON-RPC message in either direction (a POST body, a stdout line).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Registered servers per sandbox.
pub const MAX_SERVERS: usize = 16;
/// Open sessions (processes) per server.
pub const MAX_SESSIONS: usize = 32;
/// Requests waiting for a response per session.
pub const MAX_PENDING: usize = 1024;
/// Server messages kept for an event stream that is not open yet.
pub const BACKLOG: usize = 256;
/// Bytes of a process's stderr kept for error messages.
pub const STDERR_TAIL: usize = 4096;
/// Default and largest time a server may take to answer `initialize`.
pub const DEFAULT_STARTUP_MS: u64 = 30_000;
pub const MAX_STARTUP_MS: u64 = 300_000;
/// Default idle time after which a session ends.
pub const DEFAULT_SESSION_IDLE_SECONDS: u64 = 1800;
/// The protocol version the registration check asks for.
const CHECK_PROTOCOL: &str = "2025-06-18";
/// Pages of `tools/list` the check follows.
const MAX_TOOL_PAGES: usize = 64;
/// JSON-RPC error code of answers the daemon makes up (a process that
/// ended with requests pending).
const SERVER_GONE: i64 = -32000;

fn now_secs() -> u64 {
    crate::now()
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_session_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid MCP server name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ . -"
        )))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh session id: 32 hex digits.
fn session_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = n.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a JSON-RPC message is.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageKind {
    /// A request: its id (as JSON text, the key responses are matched by)
    /// and method.
    Request {
        id: String,
        method: String,
    },
    Notification,
    /// A response to a request of the other side.
    Response {
        id: String,
    },
}

/// Classify one JSON-RPC 2.0 message; anything else is `invalid_argument`.
pub fn classify(v: &Value) -> Result<MessageKind, ApiError> {
    if v.is_array() {
        return Err(ApiError::invalid(
            "JSON-RPC batches are not supported (MCP 2025-06-18 dropped them): send one message per POST",
        ));
    }
    let Some(o) = v.as_object() else {
        return Err(ApiError::invalid("a JSON-RPC message is a JSON object"));
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(ApiError::invalid(
            "not a JSON-RPC 2.0 message: \"jsonrpc\": \"2.0\" is missing",
        ));
    }
    let id = match o.get("id") {
        None => None,
        Some(i @ Value::String(_)) => Some(i.to_string()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "a JSON-RPC id is a string or an integer, not {other}"
            )));
        }
    };
    match (o.get("method"), id) {
        (Some(Value::String(m)), Some(id)) => Ok(MessageKind::Request {
            id,
            method: m.clone(),
        }),
        (Some(Value::String(_)), None) => Ok(MessageKind::Notification),
        (Some(_), _) => Err(ApiError::invalid("a JSON-RPC method is a string")),
        (None, Some(id)) if o.contains_key("result") != o.contains_key("error") => {
            Ok(MessageKind::Response { id })
        }
        (None, _) => Err(ApiError::invalid(
            "not a JSON-RPC request, notification or response",
        )),
    }
}

/// What a process said besides JSON-RPC: its stderr tail and the stdout
/// lines that were dropped.
#[derive(Default)]
struct Diag {
    stderr: VecDeque<u8>,
    skipped: u64,
    last_skipped: Option<String>,
}

impl Diag {
    fn stderr(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(STDERR_TAIL)..];
        let over = (self.stderr.len() + data.len()).saturating_sub(STDERR_TAIL);
        self.stderr.drain(..over);
        self.stderr.extend(data);
    }
    fn skip(&mut self, what: String) {
        tracing::debug!("MCP server stdout: {what}");
        self.skipped += 1;
        self.last_skipped = Some(what);
    }
    /// `; stderr ends with: ...; N stdout lines dropped (last: ...)`, or
    /// nothing when there is nothing to tell.
    fn describe(&self) -> String {
        let mut s = String::new();
        let (a, b) = self.stderr.as_slices();
        let err = String::from_utf8_lossy(&[a, b].concat()).trim().to_string();
        if !err.is_empty() {
            s.push_str(&format!("; its stderr ends with: {err}"));
        }
        if let Some(last) = &self.last_skipped {
            s.push_str(&format!(
                "; {} stdout line(s) dropped (not JSON-RPC), the last: {last}",
                self.skipped
            ));
        }
        s
    }
}

/// Splits stdout into lines of at most [`MAX_MESSAGE`] bytes.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
    /// In the middle of a line that was too long: drop up to its end.
    skipping: bool,
}

impl Lines {
    fn push(&mut self, mut data: &[u8], diag: &Mutex<Diag>, out: &mut Vec<Value>) {
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    let (line, rest) = (&data[..i], &data[i + 1..]);
                    data = rest;
                    if self.skipping {
                        self.skipping = false;
                        continue;
                    }
                    if self.buf.len() + line.len() > MAX_MESSAGE {
                        self.buf.clear();
                        lock(diag).skip(format!("a line over {MAX_MESSAGE} bytes"));
                        continue;
                    }
                    self.buf.extend_from_slice(line);
                    let line = std::mem::take(&mut self.buf);
                    parse_line(&line, diag, out);
                }
                None => {
                    if !self.skipping {
                        if self.buf.len() + data.len() > MAX_MESSAGE {
                            self.buf.clear();
                            self.skipping = true;
                            lock(diag).skip(format!("a line over {MAX_MESSAGE} bytes"));
                        } else {
                            self.buf.extend_from_slice(data);
                        }
                    }
                    return;
                }
            }
        }
    }
}

fn parse_line(line: &[u8], diag: &Mutex<Diag>, out: &mut Vec<Value>) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(v) if classify(&v).is_ok() => out.push(v),
        _ => {
            let text = String::from_utf8_lossy(&line[..line.len().min(160)]).into_owned();
            lock(diag).skip(format!("{text:?}"));
        }
    }
}

enum ProcEvent {
    Message(Value),
    Exited(String),
}

/// One running process of a server's command, as lines in and JSON-RPC
/// messages out. Dropping it (or cancelling `stop`) closes its guest
/// connection, and the guest kills it.
struct Proc {
    stdin: mpsc::Sender<Vec<u8>>,
    events: mpsc::Receiver<ProcEvent>,
    stop: CancellationToken,
    diag: Arc<Mutex<Diag>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn exit_text(st: &hull_proto::ExitStatus) -> String {
    match (st.code, st.signal) {
        (_, Some(s)) => format!("was killed by signal {s}"),
        (Some(c), None) => format!("exited with code {c}"),
        (None, None) => "exited".into(),
    }
}

impl Proc {
    async fn spawn(
        sid: &str,
        client: &GuestClient,
        spec: &McpServerRequest,
    ) -> Result<Proc, ApiError> {
        let exec = ExecSpec {
            argv: spec.command.clone(),
            env: spec.env.clone().into_iter().collect(),
            cwd: spec.cwd.clone(),
            user: spec.user.clone(),
            stdin: true,
            pty: None,
            timeout_ms: None,
            background: false,
        };
        let h = client
            .exec(exec)
            .await
            .map_err(|err| guest_error(sid, err))?;
        let (mut input, mut output) = h.split();
        let stop = CancellationToken::new();
        let diag = Arc::new(Mutex::new(Diag::default()));
        let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(64);
        let (ev_tx, ev_rx) = mpsc::channel::<ProcEvent>(64);
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let line = tokio::select! {
                    () = s.cancelled() => break,
                    l = in_rx.recv() => match l { Some(l) => l, None => break },
                };
                if input.stdin(&line).await.is_err() {
                    break;
                }
            }
            // Dropping `input` closes our half of the connection.
        });
        let (s, d) = (stop.clone(), diag.clone());
        tokio::spawn(async move {
            let mut lines = Lines::default();
            let why = loop {
                let next = tokio::select! {
                    () = s.cancelled() => return,
                    n = output.next() => n,
                };
                match next {
                    Ok(ExecOutput::Stdout { data, .. }) => {
                        let mut msgs = Vec::new();
                        lines.push(&data, &d, &mut msgs);
                        for m in msgs {
                            tokio::select! {
                                () = s.cancelled() => return,
                                r = ev_tx.send(ProcEvent::Message(m)) => if r.is_err() { return },
                            }
                        }
                    }
                    Ok(ExecOutput::Stderr { data, .. }) => lock(&d).stderr(&data),
                    Ok(ExecOutput::Exited(st)) => break exit_text(&st),
                    Err(e) => break format!("lost its guest connection ({e})"),
                }
            };
            // The exit is reported before the writer is stopped (its
            // receiver sees every event up to the exit, then the end).
            let _ = ev_tx.send(ProcEvent::Exited(why)).await;
            s.cancel();
        });
        Ok(Proc {
            stdin: in_tx,
            events: ev_rx,
            stop,
            diag,
        })
    }

    fn describe(&self) -> String {
        lock(&self.diag).describe()
    }
}

/// Where one pending request's messages go.
struct Pending {
    tx: mpsc::Sender<Value>,
    /// Its `params._meta.progressToken`, if any.
    progress: Option<Value>,
    /// The client takes this request's answer as an event stream, so other
    /// server messages may travel with it.
    streaming: bool,
}

#[derive(Default)]
struct Route {
    pending: HashMap<String, Pending>,
    stream: Option<mpsc::Sender<Value>>,
    backlog: VecDeque<Value>,
    /// Why the session ended, once it has.
    ended: Option<String>,
}

/// One MCP session: one process of the server's command.
pub(crate) struct Session {
    id: String,
    stdin: mpsc::Sender<Vec<u8>>,
    route: Mutex<Route>,
    last_used: Mutex<Instant>,
    stop: CancellationToken,
    diag: Arc<Mutex<Diag>>,
}

/// A JSON-RPC error answer to a request the server will never answer.
fn gone_answer(id_json: &str, why: &str) -> Value {
    let id: Value = serde_json::from_str(id_json).unwrap_or(Value::Null);
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": SERVER_GONE, "message": why}})
}

impl Session {
    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    /// End the session: kill the process, answer pending requests with an
    /// error, close the event stream.
    fn end(&self, why: &str) {
        self.stop.cancel();
        let pending = {
            let mut r = lock(&self.route);
            if r.ended.is_some() {
                return;
            }
            r.ended = Some(why.to_string());
            r.stream = None;
            r.backlog.clear();
            std::mem::take(&mut r.pending)
        };
        for (id, p) in pending {
            let _ = p.tx.try_send(gone_answer(&id, why));
        }
    }

    /// Send one server message where it belongs.
    async fn route(&self, v: Value) {
        let to = {
            let mut r = lock(&self.route);
            r.pending.retain(|_, p| !p.tx.is_closed());
            let kind = classify(&v);
            if let Ok(MessageKind::Response { id }) = &kind
                && v.get("method").is_none()
                && let Some(p) = r.pending.remove(id)
            {
                Some(p.tx)
            } else if let Ok(MessageKind::Response { id }) = &kind {
                tracing::debug!(session = %self.id, "dropping a response to unknown request {id}");
                None
            } else {
                let token = (v.get("method").and_then(Value::as_str)
                    == Some("notifications/progress"))
                .then(|| v.pointer("/params/progressToken").cloned())
                .flatten();
                let by_token = token.and_then(|t| {
                    r.pending
                        .values()
                        .find(|p| p.streaming && p.progress.as_ref() == Some(&t))
                        .map(|p| p.tx.clone())
                });
                let stream = r.stream.as_ref().filter(|s| !s.is_closed()).cloned();
                let any_streaming = || {
                    r.pending
                        .values()
                        .find(|p| p.streaming)
                        .map(|p| p.tx.clone())
                };
                match by_token.or(stream).or_else(any_streaming) {
                    Some(tx) => Some(tx),
                    None => {
                        if r.backlog.len() >= BACKLOG {
                            r.backlog.pop_front();
                        }
                        r.backlog.push_back(v.clone());
                        None
                    }
                }
            }
        };
        if let Some(tx) = to {
            tokio::select! {
                () = self.stop.cancelled() => {}
                _ = tx.send(v) => {}
            }
        }
    }

    fn write(&self, v: &Value) -> Result<(), ApiError> {
        let mut line = serde_json::to_vec(v).map_err(|e| ApiError::internal(e.to_string()))?;
        line.push(b'\n');
        self.stdin.try_send(line).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::new(
                ErrorKind::ResourceExhausted,
                "the MCP server is not reading its input: try again later",
            ),
            mpsc::error::TrySendError::Closed(_) => self.gone(),
        })
    }

    fn gone(&self) -> ApiError {
        let why = lock(&self.route)
            .ended
            .clone()
            .unwrap_or_else(|| "ended".into());
        ApiError::not_found(format!(
            "MCP session {} has ended ({why}): initialize a new one",
            self.id
        ))
    }
}

/// One registered server.
struct Server {
    spec: McpServerRequest,
    info: McpServerInfo,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Server {
    fn info(&self) -> McpServerInfo {
        let mut i = self.info.clone();
        i.sessions = lock(&self.sessions).len() as u32;
        i
    }
    fn end_all(&self, why: &str) {
        let sessions: Vec<_> = lock(&self.sessions).drain().map(|(_, s)| s).collect();
        for s in sessions {
            s.end(why);
        }
    }
    fn startup(&self) -> Duration {
        Duration::from_millis(self.info.startup_timeout_ms)
    }
}

/// The servers registered on every sandbox, by sandbox id and name.
#[derive(Default)]
pub(crate) struct McpHosts {
    servers: Mutex<HashMap<String, BTreeMap<String, Arc<Server>>>>,
}

impl McpHosts {
    fn get(&self, sandbox: &str, name: &str) -> Result<Arc<Server>, ApiError> {
        lock(&self.servers)
            .get(sandbox)
            .and_then(|m| m.get(name))
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!("no MCP server named {name:?} on sandbox {sandbox}"))
            })
    }

    /// The sandbox's processes are gone (stop, destroy, rollback, failure):
    /// forget its servers and end their sessions.
    pub(crate) fn sandbox_gone(&self, sandbox: &str) {
        let gone = lock(&self.servers).remove(sandbox);
        for s in gone.into_iter().flat_map(|m| m.into_values()) {
            s.end_all("the sandbox stopped");
        }
    }

    /// The daemon shuts down: end every session (their processes would
    /// die with the daemon's guest connections anyway).
    pub(crate) fn shutdown(&self) {
        let all: Vec<_> = lock(&self.servers).drain().collect();
        for s in all.into_iter().flat_map(|(_, m)| m.into_values()) {
            s.end_all("the daemon is shutting down");
        }
    }

    /// End idle sessions; return the sandboxes with calls in progress
    /// (they count as active).
    pub(crate) fn reap(&self) -> Vec<String> {
        let servers: Vec<(String, Arc<Server>)> = lock(&self.servers)
            .iter()
            .flat_map(|(sb, m)| m.values().map(move |s| (sb.clone(), s.clone())))
            .collect();
        let mut busy = Vec::new();
        for (sb, srv) in servers {
            let idle = Duration::from_secs(srv.info.session_idle_timeout_seconds);
            let mut ended = Vec::new();
            for (id, s) in lock(&srv.sessions).iter() {
                let r = lock(&s.route);
                if r.ended.is_some() {
                    ended.push(id.clone());
                    continue;
                }
                let pending = r.pending.values().any(|p| !p.tx.is_closed());
                let streaming = r.stream.as_ref().is_some_and(|t| !t.is_closed());
                drop(r);
                if pending {
                    busy.push(sb.clone());
                } else if !streaming && lock(&s.last_used).elapsed() >= idle {
                    tracing::info!(sandbox = %sb, server = %srv.info.name, session = %id, "MCP session idle: ending it");
                    s.end("the session was idle too long");
                    ended.push(id.clone());
                }
            }
            let mut map = lock(&srv.sessions);
            for id in ended {
                map.remove(&id);
            }
        }
        busy
    }
}

/// What a POSTed message led to.
pub enum McpPosted {
    /// A notification or a response, passed to the server.
    Accepted,
    /// A request: the messages for the client, the response last (the
    /// channel closes after it). `session` is the session's id (new after
    /// an `initialize`).
    Request {
        session: String,
        messages: mpsc::Receiver<Value>,
    },
}

fn validate(req: &McpServerRequest) -> Result<(), ApiError> {
    check_name(&req.name)?;
    if req.command.is_empty() || req.command[0].is_empty() {
        return Err(ApiError::invalid(
            "command is empty: give the server's program and its arguments",
        ));
    }
    let total: usize = req.command.iter().map(|a| a.len() + 1).sum();
    if total > crate::exec::MAX_ARGV_BYTES {
        return Err(ApiError::invalid(format!(
            "the command line is {total} bytes; the limit is {}",
            crate::exec::MAX_ARGV_BYTES
        )));
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::invalid(
            "command arguments cannot contain NUL bytes",
        ));
    }
    crate::validate_env(&req.env)?;
    crate::exec::check_cwd_user(req.cwd.as_deref(), req.user.as_deref())?;
    if let Some(t) = req.startup_timeout_ms
        && !(1..=MAX_STARTUP_MS).contains(&t)
    {
        return Err(ApiError::invalid(format!(
            "startup_timeout_ms {t} must be between 1 and {MAX_STARTUP_MS}"
        )));
    }
    if let Some(t) = req.session_idle_timeout_seconds
        && !(1..=hull_api::MAX_TTL_SECONDS).contains(&t)
    {
        return Err(ApiError::invalid(format!(
            "session_idle_timeout_seconds {t} must be between 1 and {} (30 days)",
            hull_api::MAX_TTL_SECONDS
        )));
    }
    Ok(())
}

/// The registration check: `initialize`, `notifications/initialized`,
/// `tools/list` (every page). Fills in what the server said about itself.
async fn check(
    proc: &mut Proc,
    name: &str,
    timeout: Duration,
    info: &mut McpServerInfo,
) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let ms = timeout.as_millis();
    let send = |proc: &Proc, v: Value| {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        let tx = proc.stdin.clone();
        async move { tx.send(line).await.is_ok() }
    };
    // Wait for the response to `id`, answering the server's own requests
    // (this check has no roots, no sampling: method not found; ping: {}).
    async fn answer(
        proc: &mut Proc,
        id: &str,
        what: &str,
        name: &str,
        ms: u128,
        deadline: tokio::time::Instant,
    ) -> Result<Value, ApiError> {
        loop {
            let ev = match tokio::time::timeout_at(deadline, proc.events.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => ProcEvent::Exited("ended".into()),
                Err(_) => {
                    return Err(ApiError::invalid(format!(
                        "MCP server {name:?} did not answer {what} within {ms} ms: is the command a stdio MCP server?{}",
                        proc.describe()
                    )));
                }
            };
            match ev {
                ProcEvent::Exited(why) => {
                    return Err(ApiError::invalid(format!(
                        "MCP server {name:?} {why} before it answered {what}{}",
                        proc.describe()
                    )));
                }
                ProcEvent::Message(v) => match classify(&v) {
                    Ok(MessageKind::Response { id: got }) if got == id => {
                        if let Some(e) = v.get("error") {
                            return Err(ApiError::invalid(format!(
                                "MCP server {name:?} answered {what} with an error: {e}"
                            )));
                        }
                        return Ok(v.get("result").cloned().unwrap_or(Value::Null));
                    }
                    Ok(MessageKind::Request { method, .. }) => {
                        let reply = if method == "ping" {
                            json!({"jsonrpc": "2.0", "id": v["id"], "result": {}})
                        } else {
                            json!({"jsonrpc": "2.0", "id": v["id"], "error": {"code": -32601, "message": "not supported while hull checks the server"}})
                        };
                        let mut line = reply.to_string().into_bytes();
                        line.push(b'\n');
                        let _ = proc.stdin.send(line).await;
                    }
                    _ => {}
                },
            }
        }
    }
    let init = json!({"jsonrpc": "2.0", "id": "hull-check-init", "method": "initialize", "params": {
        "protocolVersion": CHECK_PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "hull", "version": env!("CARGO_PKG_VERSION")},
    }});
    send(proc, init).await;
    let r = answer(
        proc,
        "\"hull-check-init\"",
        "initialize",
        name,
        ms,
        deadline,
    )
    .await?;
    let text = |p: &str| {
        r.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    info.server_name = text("/serverInfo/name");
    info.server_version = text("/serverInfo/version");
    info.protocol_version = text("/protocolVersion");
    if info.protocol_version.is_empty() {
        return Err(ApiError::invalid(format!(
            "MCP server {name:?} answered initialize without a protocolVersion: {}",
            truncate(&r.to_string(), 300)
        )));
    }
    send(
        proc,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    if r.pointer("/capabilities/tools").is_none() {
        info.tools = None;
        return Ok(());
    }
    let mut count = 0u32;
    let mut cursor: Option<Value> = None;
    for page in 0..MAX_TOOL_PAGES {
        let id = format!("hull-check-tools-{page}");
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        send(
            proc,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params}),
        )
        .await;
        let r = answer(proc, &format!("{id:?}"), "tools/list", name, ms, deadline).await?;
        count += r
            .get("tools")
            .and_then(Value::as_array)
            .map_or(0, |t| t.len() as u32);
        cursor = r.get("nextCursor").filter(|c| !c.is_null()).cloned();
        if cursor.is_none() {
            break;
        }
    }
    info.tools = Some(count);
    Ok(())
}

fn truncate(s: &str, n: usize) -> &str {
    let mut end = s.len().min(n);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Runtime {
    /// Register a stdio MCP server on a running sandbox, after checking it
    /// answers `initialize` (and `tools/list`).
    pub async fn mcp_server_start(
        &self,
        id: &str,
        req: McpServerRequest,
    ) -> Result<McpServerInfo, ApiError> {
        validate(&req)?;
        let (e, c) = self.running_client(id, "start an MCP server in")?;
        let sid = e.id();
        let name = req.name.clone();
        let taken = |m: &HashMap<String, BTreeMap<String, Arc<Server>>>| -> Result<(), ApiError> {
            let here = m.get(&sid);
            if here.is_some_and(|s| s.contains_key(&name)) {
                return Err(ApiError::conflict(format!(
                    "sandbox {sid} already has an MCP server named {name:?}: stop it first"
                )));
            }
            if here.is_some_and(|s| s.len() >= MAX_SERVERS) {
                return Err(ApiError::new(
                    ErrorKind::ResourceExhausted,
                    format!("sandbox {sid} already has {MAX_SERVERS} MCP servers"),
                ));
            }
            Ok(())
        };
        taken(&lock(&self.mcp.servers))?;
        let timeout = req.startup_timeout_ms.unwrap_or(DEFAULT_STARTUP_MS);
        let mut info = McpServerInfo {
            name: req.name.clone(),
            sandbox: sid.clone(),
            command: req.command.clone(),
            endpoint: format!("/v1/sandboxes/{sid}/mcp/{}", req.name),
            server_name: String::new(),
            server_version: String::new(),
            protocol_version: String::new(),
            tools: None,
            sessions: 0,
            startup_timeout_ms: timeout,
            session_idle_timeout_seconds: req
                .session_idle_timeout_seconds
                .unwrap_or(DEFAULT_SESSION_IDLE_SECONDS),
            created_at: now_secs(),
        };
        {
            let mut proc = Proc::spawn(&sid, &c, &req).await?;
            check(
                &mut proc,
                &req.name,
                Duration::from_millis(timeout),
                &mut info,
            )
            .await?;
        }
        self.touch(&e);
        let server = Arc::new(Server {
            spec: req,
            info: info.clone(),
            sessions: Mutex::new(HashMap::new()),
        });
        let mut m = lock(&self.mcp.servers);
        taken(&m)?;
        // The sandbox may have stopped during the check.
        if e.state() != hull_api::SandboxState::Running {
            return Err(ApiError::conflict(format!(
                "sandbox {sid} stopped while its MCP server was checked"
            )));
        }
        m.entry(sid).or_default().insert(info.name.clone(), server);
        Ok(info)
    }

    /// The MCP servers registered on a sandbox.
    pub async fn mcp_servers(&self, id: &str) -> Result<McpServers, ApiError> {
        let e = self.lookup(id)?;
        let servers = lock(&self.mcp.servers)
            .get(&e.id())
            .map(|m| m.values().map(|s| s.info()).collect())
            .unwrap_or_default();
        Ok(McpServers { servers })
    }

    /// Unregister a server and end its sessions (their processes are killed).
    pub async fn mcp_server_stop(&self, id: &str, name: &str) -> Result<(), ApiError> {
        check_name(name)?;
        let e = self.lookup(id)?;
        let sid = e.id();
        let removed = lock(&self.mcp.servers)
            .get_mut(&sid)
            .and_then(|m| m.remove(name));
        match removed {
            Some(s) => {
                s.end_all("the MCP server was stopped");
                Ok(())
            }
            None => Err(ApiError::not_found(format!(
                "no MCP server named {name:?} on sandbox {sid}"
            ))),
        }
    }

    fn mcp_session(&self, server: &Server, session: &str) -> Result<Arc<Session>, ApiError> {
        let s = lock(&server.sessions).get(session).cloned();
        match s {
            Some(s) if lock(&s.route).ended.is_none() => {
                s.touch();
                Ok(s)
            }
            Some(s) => {
                let err = s.gone();
                lock(&server.sessions).remove(session);
                Err(err)
            }
            None => Err(ApiError::not_found(format!(
                "no MCP session {:?} on server {:?}: it ended (idle, deleted, the process exited) or never was; initialize a new one",
                truncate(session, 80),
                server.info.name
            ))),
        }
    }

    /// One JSON-RPC message POSTed to a server's endpoint. Without a
    /// session id only `initialize` is accepted: it starts a new session
    /// (a new process), whose id comes back with the answer. `streaming`:
    /// the client takes the answer as an event stream, so server messages
    /// may travel with it.
    pub async fn mcp_post(
        &self,
        id: &str,
        name: &str,
        session: Option<&str>,
        msg: Value,
        streaming: bool,
    ) -> Result<McpPosted, ApiError> {
        check_name(name)?;
        let kind = classify(&msg)?;
        let (e, c) = self.running_client(id, "reach an MCP server in")?;
        let sid = e.id();
        let server = self.mcp.get(&sid, name)?;
        let Some(session) = session else {
            return match kind {
                MessageKind::Request { id: rid, method } if method == "initialize" => {
                    self.mcp_initialize(&sid, &c, &server, rid, msg).await
                }
                _ => Err(ApiError::invalid(
                    "no Mcp-Session-Id header: start a session with an initialize request",
                )),
            };
        };
        let s = self.mcp_session(&server, session)?;
        match kind {
            MessageKind::Request { id: rid, .. } => {
                let rx = self.mcp_pending(&s, rid.clone(), &msg, streaming)?;
                if let Err(err) = s.write(&msg) {
                    lock(&s.route).pending.remove(&rid);
                    return Err(err);
                }
                Ok(McpPosted::Request {
                    session: s.id.clone(),
                    messages: rx,
                })
            }
            MessageKind::Notification | MessageKind::Response { .. } => {
                s.write(&msg)?;
                Ok(McpPosted::Accepted)
            }
        }
    }

    fn mcp_pending(
        &self,
        s: &Session,
        rid: String,
        msg: &Value,
        streaming: bool,
    ) -> Result<mpsc::Receiver<Value>, ApiError> {
        let (tx, rx) = mpsc::channel(64);
        let mut r = lock(&s.route);
        if r.ended.is_some() {
            drop(r);
            return Err(s.gone());
        }
        r.pending.retain(|_, p| !p.tx.is_closed());
        if r.pending.len() >= MAX_PENDING {
            return Err(ApiError::new(
                ErrorKind::ResourceExhausted,
                format!("{MAX_PENDING} requests are already waiting in this MCP session"),
            ));
        }
        if r.pending.contains_key(&rid) {
            return Err(ApiError::invalid(format!(
                "request id {rid} is already waiting for its response in this session: use a new id"
            )));
        }
        r.pending.insert(
            rid,
            Pending {
                tx,
                progress: msg.pointer("/params/_meta/progressToken").cloned(),
                streaming,
            },
        );
        Ok(rx)
    }

    async fn mcp_initialize(
        &self,
        sid: &str,
        client: &GuestClient,
        server: &Arc<Server>,
        rid: String,
        msg: Value,
    ) -> Result<McpPosted, ApiError> {
        let name = server.info.name.clone();
        if lock(&server.sessions).len() >= MAX_SESSIONS {
            return Err(ApiError::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "MCP server {name:?} already has {MAX_SESSIONS} sessions: delete one (DELETE with its Mcp-Session-Id)"
                ),
            ));
        }
        let mut proc = Proc::spawn(sid, client, &server.spec).await?;
        let session = Arc::new(Session {
            id: session_id(),
            stdin: proc.stdin.clone(),
            route: Mutex::new(Route::default()),
            last_used: Mutex::new(Instant::now()),
            stop: proc.stop.clone(),
            diag: proc.diag.clone(),
        });
        let mut rx = self.mcp_pending(&session, rid, &msg, false)?;
        // The session's router: the process's messages to their places.
        let mut events = std::mem::replace(&mut proc.events, mpsc::channel(1).1);
        let s = session.clone();
        // It ends when the process's reader does (the process exited, or
        // the session was ended, which stops the reader).
        tokio::spawn(async move {
            let _proc = proc;
            while let Some(ev) = events.recv().await {
                match ev {
                    ProcEvent::Message(v) => s.route(v).await,
                    ProcEvent::Exited(why) => {
                        let d = lock(&s.diag).describe();
                        s.end(&format!("the MCP server process {why}{d}"));
                    }
                }
            }
            s.end("the MCP server process ended");
        });
        session.write(&msg)?;
        let answer = tokio::time::timeout(server.startup(), rx.recv()).await;
        let fail = |why: String| {
            session.end(&why);
            ApiError::unavailable(why)
        };
        let answer = match answer {
            Err(_) => {
                let d = lock(&session.diag).describe();
                return Err(fail(format!(
                    "MCP server {name:?} did not answer initialize within {} ms{d}",
                    server.info.startup_timeout_ms
                )));
            }
            Ok(None) => return Err(fail(format!("MCP server {name:?} ended"))),
            Ok(Some(v)) => v,
        };
        if let Some(why) = lock(&session.route).ended.clone() {
            return Err(ApiError::unavailable(format!("MCP server {name:?}: {why}")));
        }
        {
            let mut m = lock(&server.sessions);
            if m.len() >= MAX_SESSIONS {
                drop(m);
                return Err(fail(format!(
                    "MCP server {name:?} already has {MAX_SESSIONS} sessions"
                )));
            }
            m.insert(session.id.clone(), session.clone());
        }
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(answer);
        Ok(McpPosted::Request {
            session: session.id.clone(),
            messages: rx,
        })
    }

    /// Open the session's event stream (server notifications and requests
    /// not tied to a request in flight). A new stream replaces an open one;
    /// messages held back while none was open come first.
    pub async fn mcp_listen(
        &self,
        id: &str,
        name: &str,
        session: &str,
    ) -> Result<mpsc::Receiver<Value>, ApiError> {
        check_name(name)?;
        let (e, _) = self.running_client(id, "reach an MCP server in")?;
        let server = self.mcp.get(&e.id(), name)?;
        let s = self.mcp_session(&server, session)?;
        let (tx, rx) = mpsc::channel(BACKLOG + 64);
        let mut r = lock(&s.route);
        for v in r.backlog.drain(..) {
            let _ = tx.try_send(v);
        }
        r.stream = Some(tx);
        Ok(rx)
    }

    /// End a session (the client's DELETE): its process is killed.
    pub async fn mcp_session_end(
        &self,
        id: &str,
        name: &str,
        session: &str,
    ) -> Result<(), ApiError> {
        check_name(name)?;
        let e = self.lookup(id)?;
        let server = self.mcp.get(&e.id(), name)?;
        let s = self.mcp_session(&server, session)?;
        s.end("the client ended the session");
        lock(&server.sessions).remove(session);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified() {
        let k = |s: &str| classify(&serde_json::from_str(s).unwrap());
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap(),
            MessageKind::Request {
                id: "1".into(),
                method: "tools/list".into()
            }
        );
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","id":"1","method":"x"}"#).unwrap(),
            MessageKind::Request {
                id: "\"1\"".into(),
                method: "x".into()
            }
        );
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap(),
            MessageKind::Notification
        );
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#).unwrap(),
            MessageKind::Response { id: "7".into() }
        );
        for bad in [
            r#"[{"jsonrpc":"2.0","method":"x"}]"#,
            r#"{"id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":3}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#""hello""#,
        ] {
            assert!(k(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_are_bounded_and_garbage_is_dropped() {
        let diag = Mutex::new(Diag::default());
        let mut l = Lines::default();
        let mut out = Vec::new();
        l.push(
            b"hello\n{\"jsonrpc\":\"2.0\",\"method\":\"a\"}\r\n{\"jsonrpc\":",
            &diag,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        l.push(b"\"2.0\",\"method\":\"b\"}\n\n", &diag, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1]["method"], "b");
        // A line past the limit is dropped up to its end, in any chunking.
        let big = vec![b'x'; MAX_MESSAGE / 2 + 1];
        l.push(&big, &diag, &mut out);
        l.push(&big, &diag, &mut out);
        l.push(&big, &diag, &mut out);
        assert!(l.buf.is_empty() && l.skipping);
        l.push(
            b"tail\n{\"jsonrpc\":\"2.0\",\"method\":\"c\"}\n",
            &diag,
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[2]["method"], "c");
        let d = diag.lock().unwrap();
        assert_eq!(d.skipped, 2);
        assert!(d.describe().contains("dropped"), "{}", d.describe());
    }

    #[test]
    fn stderr_keeps_a_tail() {
        let mut d = Diag::default();
        d.stderr(&vec![b'a'; STDERR_TAIL]);
        d.stderr(b"the end");
        assert_eq!(d.stderr.len(), STDERR_TAIL);
        assert!(d.describe().ends_with("the end"));
        d.stderr(&vec![b'b'; 3 * STDERR_TAIL]);
        assert_eq!(d.stderr.len(), STDERR_TAIL);
    }
}
