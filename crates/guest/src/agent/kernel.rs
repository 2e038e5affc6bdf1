//! Code-interpreter contexts: one Jupyter kernel (`ipykernel`) per named
//! context, driven over the Jupyter messaging protocol on loopback ZMQ
//! sockets (`jupyter-zmq-client`, pure Rust).
//!
//! Starting a context writes a connection file (random HMAC key, free
//! loopback ports) and launches `python3 -m ipykernel_launcher -f FILE` in
//! its own session and process group, like every process the agent starts.
//! The context is ready once the kernel answers a `kernel_info_request` on
//! the shell channel and its iopub channel delivers messages to us.
//!
//! A run sends an `execute_request` and collects the iopub messages whose
//! parent is that request until the kernel reports `idle`; then the
//! `execute_reply` is drained from the shell channel. A streamed run
//! (`code_run_stream`) sends each output to the host as it arrives instead.
//! On timeout, or when the host closes the connection, the kernel gets
//! `SIGINT` (ipykernel turns it into `KeyboardInterrupt`), the partial
//! outputs are returned and the context keeps its state. One run at a time
//! per context; contexts are independent. `input()` is not connected: the
//! request says `allow_stdin: false`, so it raises
//! `StdinNotImplementedError` at once. A kernel that ended is reported on
//! the next run; `restart` starts a fresh one under the same name.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_proto::{
    CODE_STREAM_CHUNK, CodeError, CodeOutput, CodeRunDone, CodeRunSpec, DEFAULT_CODE_TIMEOUT_MS,
    GuestError, GuestErrorKind, KernelInfo, MAX_CODE_CONTEXTS, MAX_CODE_INPUT, MAX_CODE_OUTPUT,
    MAX_CODE_STREAM_OUTPUT, Op, Response, valid_session_name,
};
use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, ExecutionState, JupyterMessage, JupyterMessageContent,
    KernelInfoRequest, Stdio as JStdio,
};
use jupyter_zmq_client::{ClientIoPubConnection, ClientShellConnection};
use nix::sys::signal::Signal;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::{Agent, exec, send};

/// How long a kernel may take to answer its first `kernel_info_request`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an interrupted run may take to settle before it is returned.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

const INSTALL_HINT: &str = "install the Debian package python3-ipykernel (apt-get install python3-ipykernel) \
     or `pip install ipykernel` in the sandbox's image";

fn err(kind: GuestErrorKind, m: impl Into<String>) -> GuestError {
    GuestError::new(kind, m.into())
}

/// Signal a process (a negative pid: its group), ignoring failures (it may
/// have ended).
fn signal(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

use super::shell::lock;

/// The sandbox's contexts.
#[derive(Default)]
pub(crate) struct Kernels {
    map: Mutex<HashMap<String, Arc<Context>>>,
}

struct Context {
    name: String,
    pid: i32,
    /// Set by the waiter task when the kernel process ends.
    ended: Arc<Mutex<Option<String>>>,
    io: tokio::sync::Mutex<Io>,
    dir: std::path::PathBuf,
}

struct Io {
    shell: ClientShellConnection,
    iopub: ClientIoPubConnection,
}

impl Context {
    fn ended(&self) -> Option<String> {
        lock(&self.ended).clone()
    }

    fn kill(&self) {
        if self.ended().is_none() {
            signal(-self.pid, Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) async fn serve(agent: Arc<Agent>, mut conn: UnixStream, op: Op) {
    let resp = match op {
        Op::KernelStart { context, language } => start(&agent, &context, &language)
            .await
            .map(|pid| Response::KernelStarted { pid }),
        Op::CodeRun(spec) => run(&agent, &mut conn, spec, false)
            .await
            .map(Response::CodeRan),
        Op::CodeRunStream(spec) => run(&agent, &mut conn, spec, true)
            .await
            .map(Response::CodeRan),
        Op::KernelInterrupt { context } => get(&agent, &context).map(|c| {
            signal(c.pid, Signal::SIGINT);
            Response::Ok
        }),
        Op::KernelRestart { context } => match remove(&agent, &context) {
            Ok(c) => {
                c.kill();
                start(&agent, &context, "python")
                    .await
                    .map(|pid| Response::KernelStarted { pid })
            }
            Err(e) => Err(e),
        },
        Op::KernelStop { context } => remove(&agent, &context).map(|c| {
            c.kill();
            Response::Ok
        }),
        Op::KernelList => {
            let map = lock(&agent.kernels.map);
            let mut contexts: Vec<KernelInfo> = map
                .values()
                .map(|c| KernelInfo {
                    context: c.name.clone(),
                    language: "python".into(),
                    pid: c.pid,
                    alive: c.ended().is_none(),
                })
                .collect();
            contexts.sort_by(|a, b| a.context.cmp(&b.context));
            Ok(Response::Kernels { contexts })
        }
        _ => Err(err(GuestErrorKind::Internal, "not a kernel operation")),
    };
    let resp = resp.unwrap_or_else(Response::Error);
    let _ = send(&mut conn, &resp).await;
}

fn check_name(name: &str) -> Result<(), GuestError> {
    if valid_session_name(name) {
        Ok(())
    } else {
        Err(err(
            GuestErrorKind::InvalidArgument,
            format!("invalid context name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ . -"),
        ))
    }
}

fn unknown(name: &str) -> GuestError {
    err(
        GuestErrorKind::NotFound,
        format!("no code context named {name:?} in this sandbox"),
    )
}

fn get(agent: &Agent, name: &str) -> Result<Arc<Context>, GuestError> {
    check_name(name)?;
    lock(&agent.kernels.map)
        .get(name)
        .cloned()
        .ok_or_else(|| unknown(name))
}

fn remove(agent: &Agent, name: &str) -> Result<Arc<Context>, GuestError> {
    check_name(name)?;
    lock(&agent.kernels.map)
        .remove(name)
        .ok_or_else(|| unknown(name))
}

fn random_hex(n: usize) -> Result<String, GuestError> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| super::os_error(e, "reading /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

async fn start(agent: &Arc<Agent>, name: &str, language: &str) -> Result<i32, GuestError> {
    check_name(name)?;
    if language != "python" {
        return Err(err(
            GuestErrorKind::InvalidArgument,
            format!("language {language:?} is not supported: use \"python\""),
        ));
    }
    {
        let map = lock(&agent.kernels.map);
        if map.contains_key(name) {
            return Err(err(
                GuestErrorKind::Conflict,
                format!("a code context named {name:?} already exists in this sandbox"),
            ));
        }
        if map.len() >= MAX_CODE_CONTEXTS {
            return Err(err(
                GuestErrorKind::ResourceExhausted,
                format!(
                    "this sandbox already has {MAX_CODE_CONTEXTS} code contexts, the limit: stop one first"
                ),
            ));
        }
    }
    let l = exec::launch(agent, None, &[], None, &[("PYTHONUNBUFFERED", "1")])?;
    let python = exec::lookup("python3", &exec::path_of(&l.env), &l.cwd).ok_or_else(|| {
        err(
            GuestErrorKind::NotFound,
            format!("python3 was not found in the sandbox: {INSTALL_HINT}"),
        )
    })?;
    let os = |e: std::io::Error, what: &str| super::os_error(e, what);
    let ip: std::net::IpAddr = [127, 0, 0, 1].into();
    let ports = jupyter_zmq_client::peek_ports(ip, 5)
        .await
        .map_err(|e| err(GuestErrorKind::Internal, format!("picking ports: {e}")))?;
    let info = ConnectionInfo {
        ip: "127.0.0.1".into(),
        transport: jupyter_protocol::connection_info::Transport::TCP,
        shell_port: ports[0],
        iopub_port: ports[1],
        stdin_port: ports[2],
        control_port: ports[3],
        hb_port: ports[4],
        key: random_hex(32)?,
        signature_scheme: "hmac-sha256".into(),
        kernel_name: Some("python3".into()),
    };
    let dir = std::env::temp_dir().join(format!("hull-kernel-{name}-{}", random_hex(6)?));
    std::fs::create_dir(&dir).map_err(|e| os(e, "creating the kernel's directory"))?;
    let file = dir.join("connection.json");
    let body =
        serde_json::to_vec(&info).map_err(|e| err(GuestErrorKind::Internal, e.to_string()))?;
    std::fs::write(&file, body).map_err(|e| os(e, "writing the connection file"))?;
    let log = dir.join("stderr");
    let log_f = std::fs::File::create(&log).map_err(|e| os(e, "creating the kernel log"))?;
    if let Some(u) = &l.user {
        let _ = std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid));
        let _ = std::os::unix::fs::chown(&file, Some(u.uid), Some(u.gid));
        let _ = std::os::unix::fs::chown(&log, Some(u.uid), Some(u.gid));
    }
    let cwd_c = CString::new(l.cwd.clone()).map_err(|_| {
        err(
            GuestErrorKind::InvalidArgument,
            "working directory contains NUL",
        )
    })?;
    let mut cmd = Command::new(&python);
    cmd.arg0("python3")
        .args(["-m", "ipykernel_launcher", "-f"])
        .arg(&file)
        .env_clear()
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_f));
    hull_sys::process::prepare(
        &mut cmd,
        hull_sys::process::ChildSetup {
            controlling_tty: false,
            credentials: l.user.as_ref().map(|u| hull_sys::process::Credentials {
                uid: u.uid,
                gid: u.gid,
                groups: u.groups.clone(),
            }),
            cwd: Some(cwd_c),
        },
    );
    let (child, exit_rx) = exec::spawn_tracked(agent, &mut cmd).map_err(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        os(e, "starting python3")
    })?;
    drop(cmd);
    let pid = child.id() as i32;
    drop(child);
    let ended = Arc::new(Mutex::new(None));
    let (ended_tx, mut ended_rx) = oneshot::channel::<()>();
    {
        let ended = ended.clone();
        tokio::spawn(async move {
            let how = match exit_rx.await {
                Ok(e) => format!("{e:?}"),
                Err(_) => "ended".to_string(),
            };
            *lock(&ended) = Some(how);
            let _ = ended_tx.send(());
        });
    }
    let kill = |dir: &std::path::Path| {
        signal(-pid, Signal::SIGKILL);
        let _ = std::fs::remove_dir_all(dir);
    };
    let connect = connect(&info, name);
    let io = tokio::select! {
        r = tokio::time::timeout(START_TIMEOUT, connect) => match r {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                kill(&dir);
                return Err(e);
            }
            Err(_) => {
                kill(&dir);
                return Err(err(
                    GuestErrorKind::Unavailable,
                    format!("the python kernel did not answer within {} s", START_TIMEOUT.as_secs()),
                ));
            }
        },
        _ = &mut ended_rx => {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            kill(&dir);
            let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            if log.contains("No module named ipykernel") {
                return Err(err(
                    GuestErrorKind::NotFound,
                    format!("the python module ipykernel is missing in the sandbox: {INSTALL_HINT}"),
                ));
            }
            return Err(err(
                GuestErrorKind::Unavailable,
                format!("the python kernel exited while starting: {tail}"),
            ));
        }
    };
    let ctx = Arc::new(Context {
        name: name.to_string(),
        pid,
        ended,
        io: tokio::sync::Mutex::new(io),
        dir: dir.clone(),
    });
    let mut map = lock(&agent.kernels.map);
    if map.contains_key(name) || map.len() >= MAX_CODE_CONTEXTS {
        drop(map);
        ctx.kill();
        return Err(err(
            GuestErrorKind::Conflict,
            format!("a code context named {name:?} was started at the same time"),
        ));
    }
    map.insert(name.to_string(), ctx);
    Ok(pid)
}

fn zmq_err(e: impl std::fmt::Display) -> GuestError {
    err(
        GuestErrorKind::Unavailable,
        format!("talking to the python kernel: {e}"),
    )
}

/// Connect to a starting kernel, retrying until it listens, and wait until
/// both the shell and the iopub channel work.
async fn connect(info: &ConnectionInfo, name: &str) -> Result<Io, GuestError> {
    let session = format!("hull-{name}-{}", random_hex(8)?);
    let identity = jupyter_zmq_client::peer_identity_for_session(&session).map_err(zmq_err)?;
    let mut shell = loop {
        match jupyter_zmq_client::create_client_shell_connection_with_identity(
            info,
            &session,
            identity.clone(),
        )
        .await
        {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut iopub = loop {
        match jupyter_zmq_client::create_client_iopub_connection(info, "", &session).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    // Until iopub delivers the status of a kernel_info request, the
    // subscription may not be in place yet (ZMQ's slow joiner).
    loop {
        let req: JupyterMessage = KernelInfoRequest {}.into();
        let id = req.header.msg_id.clone();
        shell.send(req).await.map_err(zmq_err)?;
        let reply_seen = async {
            loop {
                let m = shell.read().await.map_err(zmq_err)?;
                if parent_id(&m) == Some(id.as_str()) {
                    return Ok::<_, GuestError>(());
                }
            }
        };
        reply_seen.await?;
        let seen = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                match iopub.read().await {
                    Ok(m) if parent_id(&m) == Some(id.as_str()) => return,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await;
        if seen.is_ok() {
            return Ok(Io { shell, iopub });
        }
    }
}

fn parent_id(m: &JupyterMessage) -> Option<&str> {
    m.parent_header.as_ref().map(|h| h.msg_id.as_str())
}

/// Collects outputs within the size bound ([`MAX_CODE_OUTPUT`]), or, when
/// streaming, turns each into [`CodeOutput`]s within [`MAX_CODE_STREAM_OUTPUT`].
struct Collect {
    done: CodeRunDone,
    used: usize,
    stream: bool,
    /// The run was interrupted by us (timeout, client gone): the
    /// `KeyboardInterrupt` it raises is not the code's error.
    interrupted: bool,
}

impl Collect {
    fn new(stream: bool) -> Self {
        Collect {
            done: CodeRunDone::default(),
            used: 0,
            stream,
            interrupted: false,
        }
    }

    fn budget(&self) -> usize {
        if self.stream {
            MAX_CODE_STREAM_OUTPUT
        } else {
            MAX_CODE_OUTPUT
        }
    }

    fn room(&mut self, n: usize) -> bool {
        if self.used + n > self.budget() {
            self.done.truncated = true;
            false
        } else {
            self.used += n;
            true
        }
    }

    /// Take in one iopub message of the run; `out` gets what to stream.
    /// True once the kernel is idle again (the run is over).
    fn add(&mut self, m: JupyterMessage, out: &mut Vec<CodeOutput>) -> bool {
        match m.content {
            JupyterMessageContent::StreamContent(s) => {
                let mut text = s.text;
                let left = self.budget().saturating_sub(self.used);
                if text.len() > left {
                    text.truncate(floor_char_boundary(&text, left));
                    self.done.truncated = true;
                }
                self.used += text.len();
                let stdout = matches!(s.name, JStdio::Stdout);
                if self.stream {
                    let mut rest = text.as_str();
                    while !rest.is_empty() {
                        let cut = floor_char_boundary(rest, CODE_STREAM_CHUNK.min(rest.len()));
                        // A chunk smaller than one character cannot happen
                        // with a chunk size of kilobytes.
                        let cut = if cut == 0 { rest.len() } else { cut };
                        let text = rest[..cut].to_string();
                        rest = &rest[cut..];
                        out.push(if stdout {
                            CodeOutput::Stdout { text }
                        } else {
                            CodeOutput::Stderr { text }
                        });
                    }
                } else if stdout {
                    self.done.stdout.push_str(&text);
                } else {
                    self.done.stderr.push_str(&text);
                }
            }
            JupyterMessageContent::ExecuteResult(r) => {
                let count = r.execution_count.value() as u64;
                self.done.execution_count = Some(count);
                if let Some(data) = self.bundle(serde_json::to_value(&r.data)) {
                    out.push(CodeOutput::Result {
                        data,
                        execution_count: Some(count),
                    });
                }
            }
            JupyterMessageContent::DisplayData(d) => {
                if let Some(data) = self.bundle(serde_json::to_value(&d.data)) {
                    out.push(CodeOutput::Display { data });
                }
            }
            JupyterMessageContent::ExecuteInput(i) => {
                self.done.execution_count = Some(i.execution_count.value() as u64);
            }
            JupyterMessageContent::ErrorOutput(e) => {
                if self.interrupted && e.ename == "KeyboardInterrupt" {
                    return false;
                }
                let e = CodeError {
                    name: e.ename,
                    value: e.evalue,
                    traceback: e.traceback,
                };
                let n = serde_json::to_string(&e).map(|s| s.len()).unwrap_or(0);
                // An error always fits the reply: a traceback that does not
                // keep its last lines (where the exception is).
                let e = if self.room(n) {
                    e
                } else {
                    let mut e = e;
                    let keep = e.traceback.len().saturating_sub(3);
                    e.traceback.drain(..keep);
                    for line in &mut e.traceback {
                        line.truncate(floor_char_boundary(line, 4096));
                    }
                    e.value.truncate(floor_char_boundary(&e.value, 4096));
                    e
                };
                if self.stream {
                    out.push(CodeOutput::Error(e.clone()));
                }
                self.done.error = Some(e);
            }
            JupyterMessageContent::Status(s) => {
                return matches!(s.execution_state, ExecutionState::Idle);
            }
            _ => {}
        }
        false
    }

    /// A MIME bundle within the budget (kept, unless streaming), or `None`.
    fn bundle(
        &mut self,
        v: Result<serde_json::Value, serde_json::Error>,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let Ok(serde_json::Value::Object(map)) = v else {
            return None;
        };
        let n = serde_json::to_string(&map).map(|s| s.len()).unwrap_or(0);
        // One bundle must fit one frame either way.
        if n > MAX_CODE_OUTPUT || !self.room(n) {
            self.done.truncated = true;
            return None;
        }
        if self.stream {
            Some(map)
        } else {
            self.done.results.push(map);
            None
        }
    }
}

/// The largest index `<= i` on a character boundary of `s`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut i = i;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Run code in a context. Buffered (`stream` false): the outputs come back
/// in the final [`CodeRunDone`]. Streamed: `ok` once the request is with
/// the kernel, then each output as a `code_output` message; the final
/// answer carries only the error, the count and the flags. Either way, a
/// host that closes the connection interrupts the code (as a timeout does)
/// and the context stays usable.
async fn run(
    agent: &Arc<Agent>,
    conn: &mut UnixStream,
    spec: CodeRunSpec,
    stream: bool,
) -> Result<CodeRunDone, GuestError> {
    let ctx = get(agent, &spec.context)?;
    if spec.code.len() > MAX_CODE_INPUT {
        return Err(err(
            GuestErrorKind::InvalidArgument,
            format!(
                "the code is {} bytes; the limit is {MAX_CODE_INPUT}",
                spec.code.len()
            ),
        ));
    }
    let dead = |how: &str| {
        err(
            GuestErrorKind::Unavailable,
            format!(
                "the kernel of code context {:?} died ({how}); its state is lost: restart the context",
                spec.context
            ),
        )
    };
    if let Some(how) = ctx.ended() {
        return Err(dead(&how));
    }
    let (mut rd, mut wr) = conn.split();
    // Waiting for the context's current run: a host that leaves meanwhile
    // gives up its place.
    let mut io = tokio::select! {
        io = ctx.io.lock() => io,
        () = closed(&mut rd) => return Err(err(GuestErrorKind::Unavailable, "the host went away")),
    };
    let timeout = Duration::from_millis(spec.timeout_ms.unwrap_or(DEFAULT_CODE_TIMEOUT_MS));
    // One run at a time: nothing is queued behind it, and with
    // `stop_on_error` ipykernel would abort the next request that arrives
    // soon after an error or interrupt. `allow_stdin` is false: `input()`
    // raises StdinNotImplementedError at once instead of waiting.
    let mut exec = ExecuteRequest::new(spec.code.clone());
    exec.stop_on_error = false;
    exec.allow_stdin = false;
    let req: JupyterMessage = exec.into();
    let id = req.header.msg_id.clone();
    io.shell.send(req).await.map_err(zmq_err)?;
    let mut c = Collect::new(stream);
    // Whether the host is still there to take outputs.
    let mut host = true;
    if stream && send(&mut wr, &Response::Ok).await.is_err() {
        host = false;
    }
    let mut deadline = Instant::now() + timeout;
    let mut settle_by: Option<Instant> = None;
    let mut out = Vec::new();
    loop {
        if !host && settle_by.is_none() {
            // The host left: interrupt, as for a timeout, and let the run
            // settle so the context stays in step.
            c.interrupted = true;
            signal(ctx.pid, Signal::SIGINT);
            settle_by = Some(Instant::now() + INTERRUPT_GRACE);
            deadline = deadline.min(settle_by.unwrap_or(deadline));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::select! {
            r = tokio::time::timeout(left, io.iopub.read()) => r,
            _ = wait_ended(&ctx) => {
                let how = ctx.ended().unwrap_or_default();
                return Err(dead(&how));
            }
            () = closed(&mut rd), if host => {
                host = false;
                continue;
            }
        };
        match msg {
            Ok(Ok(m)) => {
                if parent_id(&m) != Some(id.as_str()) {
                    continue;
                }
                let idle = c.add(m, &mut out);
                for o in out.drain(..) {
                    if host
                        && send(&mut wr, &Response::CodeOutput { output: o })
                            .await
                            .is_err()
                    {
                        host = false;
                    }
                }
                if idle {
                    break;
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "a bad iopub message"),
            Err(_) if settle_by.is_none() => {
                c.interrupted = true;
                c.done.timed_out = true;
                signal(ctx.pid, Signal::SIGINT);
                let by = Instant::now() + INTERRUPT_GRACE;
                settle_by = Some(by);
                deadline = by;
            }
            Err(_) => return Ok(c.done),
        }
    }
    // Drain the execute_reply so the shell channel stays in step.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match io.shell.read().await {
                Ok(m) if parent_id(&m) == Some(id.as_str()) => {
                    if let JupyterMessageContent::ExecuteReply(r) = &m.content {
                        c.done.execution_count = Some(r.execution_count.value() as u64);
                    }
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    Ok(c.done)
}

/// Resolves once the host has closed its side of the connection (it sends
/// nothing after its request; anything it does send is ignored).
async fn closed(rd: &mut tokio::net::unix::ReadHalf<'_>) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn wait_ended(ctx: &Context) {
    loop {
        if ctx.ended().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
