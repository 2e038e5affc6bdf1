//! Processes: start, stream, signal, time out, reap, and keep background
//! ones for `procs` and `attach`.
//!
//! Every process runs in its own session (so its pid is its process group,
//! and signals and kills reach its children). One reaper collects exit
//! statuses on `SIGCHLD`: as PID 1 it reaps every zombie (`waitpid(-1)`),
//! delivering statuses of processes it started and discarding orphans';
//! otherwise (tests) it only waits for its own. Spawning and reaping take
//! the same lock, so a process that exits at once is never reaped before it
//! is registered.
//!
//! Output is read by one supervisor task per process and fanned out to
//! subscribers (the foreground connection, attached clients); background
//! processes also keep the last [`RING_BYTES`] of each stream. After the
//! process exits, output still in flight is drained until the pipes close
//! or [`DRAIN_AFTER_EXIT`] passes (a daemon it left behind may hold them).
//! A host that closes a foreground connection kills the process group; one
//! that only shuts down its sending side keeps receiving output (the
//! hang-up is told apart from a half-close with a second, edge-triggered
//! watch on the socket).
//!
//! Limits: at most [`MAX_KEPT`] finished background processes are kept
//! (oldest evicted); stdin of a background process can only be written by
//! an attached client.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_proto::{
    ExecInput, ExecSpec, ExitStatus, Frame, GuestError, GuestErrorKind, GuestErrorReason, ProcInfo,
    ProtoError, Response, now_micros, read_frame, write_frame,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::{Agent, send, send_error, user};

/// Bytes of each output stream kept for a background process.
pub(crate) const RING_BYTES: usize = 1 << 20;
/// Finished background processes kept for `procs`/`attach`.
pub(crate) const MAX_KEPT: usize = 256;
/// How long output is still drained after the process exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);
/// Signals PID 1 forwards to the processes it started.
const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// One piece of output or the end.
#[derive(Debug, Clone)]
enum Event {
    Out {
        stderr: bool,
        ts: u64,
        data: Arc<Vec<u8>>,
    },
    Exit(ExitStatus),
}

/// Bookkeeping cost charged per ring chunk, so that a process writing one
/// byte at a time cannot make the ring hold millions of tiny chunks.
const CHUNK_OVERHEAD: usize = 64;

/// The tail of a background process's output. Consecutive pieces of the
/// same stream are merged up to [`hull_proto::CHUNK`] bytes (a merged chunk
/// keeps the timestamp of its first piece).
#[derive(Default)]
struct Ring {
    chunks: VecDeque<(bool, u64, Vec<u8>)>,
    /// Bytes charged per stream (data plus [`CHUNK_OVERHEAD`] per chunk).
    bytes: [usize; 2],
}

impl Ring {
    fn push(&mut self, stderr: bool, ts: u64, data: &[u8]) {
        match self.chunks.back_mut() {
            Some(last) if last.0 == stderr && last.2.len() + data.len() <= hull_proto::CHUNK => {
                last.2.extend_from_slice(data);
                self.bytes[stderr as usize] += data.len();
            }
            _ => {
                self.chunks.push_back((stderr, ts, data.to_vec()));
                self.bytes[stderr as usize] += data.len() + CHUNK_OVERHEAD;
            }
        }
        while self.bytes[0] > RING_BYTES || self.bytes[1] > RING_BYTES {
            // Drop the oldest chunk of the stream that is over.
            let over = self.bytes[1] > RING_BYTES;
            let Some(i) = self.chunks.iter().position(|c| c.0 == over) else {
                break;
            };
            if let Some((s, _, d)) = self.chunks.remove(i) {
                self.bytes[s as usize] -= d.len() + CHUNK_OVERHEAD;
            }
        }
    }
}

struct Hub {
    ring: Ring,
    subs: Vec<mpsc::Sender<Event>>,
    exit: Option<ExitStatus>,
}

/// How a process ended: exit code or signal.
pub(crate) type Ended = (Option<i32>, Option<i32>);

/// Input for the process: stdin bytes in order, then EOF (None).
type StdinTx = mpsc::Sender<Option<Vec<u8>>>;

pub(crate) struct Proc {
    id: String,
    pid: i32,
    argv: Vec<String>,
    background: bool,
    started_micros: u64,
    hub: Mutex<Hub>,
    stdin: Mutex<Option<StdinTx>>,
    pty: Option<OwnedFd>,
}

impl Proc {
    fn info(&self) -> ProcInfo {
        ProcInfo {
            id: self.id.clone(),
            pid: self.pid,
            argv: self.argv.clone(),
            background: self.background,
            started_micros: self.started_micros,
            exit: lock(&self.hub).exit.clone(),
        }
    }

    fn kill_group(&self, signal: i32) -> io::Result<()> {
        hull_sys::process::signal_process_group(self.pid, signal)
    }

    /// Subscribe to output; `replay` first sends what the ring holds.
    fn subscribe(&self, replay: bool) -> mpsc::Receiver<Event> {
        let mut hub = lock(&self.hub);
        let backlog: Vec<Event> = if replay {
            hub.ring
                .chunks
                .iter()
                .map(|(s, ts, d)| Event::Out {
                    stderr: *s,
                    ts: *ts,
                    data: Arc::new(d.clone()),
                })
                .collect()
        } else {
            Vec::new()
        };
        let (tx, rx) = mpsc::channel(backlog.len() + 64);
        for ev in backlog {
            let _ = tx.try_send(ev);
        }
        match &hub.exit {
            Some(st) => {
                let _ = tx.try_send(Event::Exit(st.clone()));
            }
            None => hub.subs.push(tx),
        }
        rx
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// All processes started through the agent, and the reaper's waiters.
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<RegistryInner>,
    next: AtomicU64,
}

#[derive(Default)]
struct RegistryInner {
    procs: HashMap<String, Arc<Proc>>,
    order: VecDeque<String>,
    /// pid -> where its exit status goes.
    waiters: HashMap<i32, oneshot::Sender<Ended>>,
}

impl Registry {
    pub(crate) fn list(&self) -> Vec<ProcInfo> {
        let inner = lock(&self.inner);
        inner
            .order
            .iter()
            .filter_map(|id| inner.procs.get(id))
            .map(|p| p.info())
            .collect()
    }

    fn get(&self, id: &str) -> Option<Arc<Proc>> {
        lock(&self.inner).procs.get(id).cloned()
    }

    pub(crate) fn signal(&self, id: &str, signal: i32) -> Result<(), GuestError> {
        if !(1..=64).contains(&signal) {
            return Err(GuestError::new(
                GuestErrorKind::InvalidArgument,
                format!("invalid signal {signal}"),
            ));
        }
        let p = self.get(id).ok_or_else(|| unknown(id))?;
        if lock(&p.hub).exit.is_some() {
            return Err(GuestError::new(
                GuestErrorKind::Conflict,
                format!("process {id} has already exited"),
            ));
        }
        p.kill_group(signal)
            .map_err(|e| super::os_error(e, format!("signalling process {id}")))
    }

    /// Forget finished foreground processes; evict the oldest finished
    /// background ones beyond [`MAX_KEPT`].
    fn prune(inner: &mut RegistryInner) {
        let finished: Vec<String> = inner
            .order
            .iter()
            .filter(|id| {
                inner
                    .procs
                    .get(*id)
                    .is_some_and(|p| lock(&p.hub).exit.is_some())
            })
            .cloned()
            .collect();
        let mut kept_bg = finished
            .iter()
            .filter(|id| inner.procs[*id].background)
            .count();
        for id in finished {
            let bg = inner.procs[&id].background;
            if !bg || kept_bg > MAX_KEPT {
                if bg {
                    kept_bg -= 1;
                }
                inner.procs.remove(&id);
                inner.order.retain(|o| o != &id);
            }
        }
    }
}

fn unknown(id: &str) -> GuestError {
    GuestError::new(
        GuestErrorKind::NotFound,
        format!("no process {id:?} in this sandbox (see `procs`)"),
    )
}

/// Reap children on SIGCHLD.
pub(crate) fn start_reaper(agent: Arc<Agent>, pid1: bool) -> io::Result<()> {
    let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            reap(&agent.procs, pid1);
            // Also poll now and then: a SIGCHLD can coalesce with one that
            // arrived while we were reaping.
            let _ = tokio::time::timeout(Duration::from_millis(500), sig.recv()).await;
        }
    });
    Ok(())
}

fn decode(status: nix::sys::wait::WaitStatus) -> Option<(i32, Ended)> {
    use nix::sys::wait::WaitStatus::*;
    match status {
        Exited(pid, code) => Some((pid.as_raw(), (Some(code), None))),
        Signaled(pid, sig, _) => Some((pid.as_raw(), (None, Some(sig as i32)))),
        _ => None,
    }
}

fn reap(reg: &Registry, pid1: bool) {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let mut inner = lock(&reg.inner);
    if pid1 {
        while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            let Some((pid, result)) = decode(st) else {
                break;
            };
            if let Some(tx) = inner.waiters.remove(&pid) {
                let _ = tx.send(result);
            }
        }
    } else {
        let pids: Vec<i32> = inner.waiters.keys().copied().collect();
        for pid in pids {
            if let Ok(st) = waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
                && let Some((pid, result)) = decode(st)
                && let Some(tx) = inner.waiters.remove(&pid)
            {
                let _ = tx.send(result);
            }
        }
    }
}

/// Forward termination-style signals to every running process group.
pub(crate) fn start_signal_forwarding(agent: Arc<Agent>) -> io::Result<()> {
    for signo in FORWARDED {
        let mut s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(signo))?;
        let agent = agent.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let procs: Vec<Arc<Proc>> =
                    lock(&agent.procs.inner).procs.values().cloned().collect();
                for p in procs {
                    if lock(&p.hub).exit.is_none() {
                        let _ = p.kill_group(signo);
                    }
                }
            }
        });
    }
    Ok(())
}

/// Register a descriptor we own exclusively with the reactor.
/// `AsyncFd::new` is deprecated because it accepts any `AsRawFd`; with an
/// `OwnedFd` nothing else can close or re-register the descriptor, which is
/// exactly `AsyncFd::register`'s contract (unsafe, and unsafe code is
/// confined to `hull-sys`).
#[allow(deprecated)]
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    set_nonblocking(&fd)?;
    AsyncFd::new(fd)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let fl = fcntl_getfl(fd)?;
    fcntl_setfl(fd, fl | OFlags::NONBLOCK)?;
    Ok(())
}

/// Read once from a non-blocking descriptor; 0 at end (EIO from a PTY
/// master whose peer closed counts as the end).
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard
            .try_io(|inner| rustix::io::read(inner.get_ref(), &mut *buf).map_err(io::Error::from))
        {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| rustix::io::write(inner.get_ref(), data).map_err(io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Look `prog` up in `path` (a `PATH` value) the way a shell would.
pub(crate) fn lookup(prog: &str, path: &str, cwd: &str) -> Option<String> {
    if prog.contains('/') {
        return Some(prog.to_string());
    }
    for dir in path.split(':') {
        let dir = if dir.is_empty() { cwd } else { dir };
        let cand = format!("{}/{prog}", dir.trim_end_matches('/'));
        if let Ok(m) = std::fs::metadata(&cand)
            && m.is_file()
        {
            use std::os::unix::fs::PermissionsExt;
            if m.permissions().mode() & 0o111 != 0 {
                return Some(cand);
            }
        }
    }
    None
}

fn not_found(program: &str) -> GuestError {
    GuestError::new(
        GuestErrorKind::NotFound,
        format!("{program}: command not found"),
    )
    .with_reason(GuestErrorReason::CommandNotFound)
}

/// The error for a spawn that failed, with the reason a host needs to
/// exit as a shell would: `ENOENT` is a missing program (127); the errors
/// of a program that exists but cannot be run are "not executable" (126).
/// Anything else (out of memory, a failed credential switch) is hull's own
/// failure and carries no reason. The working directory is entered in the
/// same step, so its `EACCES` cannot be told from the program's.
fn spawn_error(e: io::Error, program: &str, user: &str, cwd: &str) -> GuestError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => not_found(program),
        Some(libc::EACCES) => GuestError::new(
            GuestErrorKind::PermissionDenied,
            format!(
                "{program}: permission denied (running as {user}: the program or the working directory {cwd} is not accessible)"
            ),
        )
        .with_reason(GuestErrorReason::CommandNotExecutable),
        Some(libc::ENOEXEC | libc::EISDIR | libc::ENOTDIR | libc::ELOOP | libc::ETXTBSY) => {
            super::os_error(e, format!("{program}: cannot execute"))
                .with_reason(GuestErrorReason::CommandNotExecutable)
        }
        _ => super::os_error(e, format!("starting {program}")),
    }
}

struct Started {
    proc: Arc<Proc>,
    sub: Option<mpsc::Receiver<Event>>,
}

/// Who a process runs as, with what environment, where.
pub(crate) struct Launch {
    pub user: Option<user::User>,
    /// The user as the request (or the agent's default) named it.
    pub user_spec: Option<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
}

/// Check and resolve a request's identity, environment and working
/// directory: the base environment, then `HOME`/`USER`/`LOGNAME`, then
/// `extra` (defaults the request can override), then the request's own.
pub(crate) fn launch(
    agent: &Agent,
    user_req: Option<&String>,
    req_env: &[(String, String)],
    cwd_req: Option<&String>,
    extra: &[(&str, &str)],
) -> Result<Launch, GuestError> {
    let invalid = |m: String| GuestError::new(GuestErrorKind::InvalidArgument, m);
    if req_env
        .iter()
        .flat_map(|(k, v)| [k, v])
        .any(|s| s.contains('\0'))
    {
        return Err(invalid(
            "arguments and environment must not contain NUL bytes".into(),
        ));
    }
    if req_env.iter().any(|(k, _)| k.is_empty() || k.contains('=')) {
        return Err(invalid(
            "environment names must be non-empty and contain no '='".into(),
        ));
    }
    let cfg = &agent.config;
    let user_spec = user_req.cloned().or_else(|| cfg.default_user.clone());
    let user = match &user_spec {
        Some(u) => Some(user::resolve(agent.root.as_fd(), u)?),
        None => None,
    };
    // Environment: base, identity, then the request.
    let mut env: Vec<(String, String)> = cfg.base_env.clone();
    let mut set = |k: &str, v: String| {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v));
    };
    let (home, name) = match &user {
        Some(u) => (u.home.clone(), u.name.clone()),
        None => ("/root".to_string(), "root".to_string()),
    };
    set("HOME", home.clone());
    set("USER", name.clone());
    set("LOGNAME", name);
    for (k, v) in extra {
        if !req_env.iter().any(|(rk, _)| rk == k) {
            set(k, v.to_string());
        }
    }
    for (k, v) in req_env {
        set(k, v.clone());
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    let cwd = match cwd_req.cloned().or_else(|| cfg.default_cwd.clone()) {
        Some(c) => {
            if !c.starts_with('/') {
                return Err(invalid(format!(
                    "working directory {c:?} must be an absolute path"
                )));
            }
            match std::fs::metadata(&c) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(invalid(format!("working directory {c} is not a directory")));
                }
                Err(e) => return Err(super::os_error(e, format!("working directory {c}"))),
            }
            c
        }
        None if std::path::Path::new(&home).is_dir() => home,
        None => "/".to_string(),
    };
    Ok(Launch {
        user,
        user_spec,
        env,
        cwd,
    })
}

/// The `PATH` of an environment.
pub(crate) fn path_of(env: &[(String, String)]) -> String {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Spawn `cmd` and register its pid with the reaper under the registry
/// lock (see the module docs); the receiver gets its exit status.
pub(crate) fn spawn_tracked(
    agent: &Agent,
    cmd: &mut Command,
) -> io::Result<(std::process::Child, oneshot::Receiver<Ended>)> {
    let mut inner = lock(&agent.procs.inner);
    let child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    inner.waiters.insert(child.id() as i32, tx);
    Ok((child, rx))
}

/// Spawn a process per `spec` and its supervisor.
fn start(agent: &Arc<Agent>, spec: &ExecSpec) -> Result<Started, GuestError> {
    let invalid = |m: String| GuestError::new(GuestErrorKind::InvalidArgument, m);
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(invalid("exec needs a command (argv is empty)".into()));
    }
    if spec.argv.iter().any(|s| s.contains('\0')) {
        return Err(invalid(
            "arguments and environment must not contain NUL bytes".into(),
        ));
    }
    let tty_env: &[(&str, &str)] = if spec.pty.is_some() {
        &[("TERM", "xterm-256color")]
    } else {
        &[]
    };
    let Launch {
        user,
        user_spec,
        env,
        cwd,
    } = launch(
        agent,
        spec.user.as_ref(),
        &spec.env,
        spec.cwd.as_ref(),
        tty_env,
    )?;
    let path = path_of(&env);
    let prog = lookup(&spec.argv[0], &path, &cwd).ok_or_else(|| not_found(&spec.argv[0]))?;

    let mut cmd = Command::new(&prog);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)));
    let os = |e: io::Error, what: &str| super::os_error(e, what);
    let (pty_master, out_fds): (Option<OwnedFd>, Vec<(bool, OwnedFd)>);
    let mut stdin_fd: Option<OwnedFd> = None;
    if let Some(size) = spec.pty {
        let pty = hull_sys::pty::open(size.rows.max(1), size.cols.max(1))
            .map_err(|e| os(e, "opening a terminal"))?;
        let peer = pty.peer;
        cmd.stdin(Stdio::from(peer.try_clone().map_err(|e| os(e, "dup"))?));
        cmd.stdout(Stdio::from(peer.try_clone().map_err(|e| os(e, "dup"))?));
        cmd.stderr(Stdio::from(peer));
        let reader = pty.master.try_clone().map_err(|e| os(e, "dup"))?;
        if spec.stdin || spec.background {
            stdin_fd = Some(pty.master.try_clone().map_err(|e| os(e, "dup"))?);
        }
        pty_master = Some(pty.master);
        out_fds = vec![(false, reader)];
    } else {
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        pty_master = None;
        out_fds = vec![];
    }
    let cwd_c =
        CString::new(cwd.clone()).map_err(|_| invalid("working directory contains NUL".into()))?;
    hull_sys::process::prepare(
        &mut cmd,
        hull_sys::process::ChildSetup {
            controlling_tty: spec.pty.is_some(),
            credentials: user.as_ref().map(|u| hull_sys::process::Credentials {
                uid: u.uid,
                gid: u.gid,
                groups: u.groups.clone(),
            }),
            cwd: Some(cwd_c),
        },
    );

    // Spawn and register under the registry lock (see the module docs).
    let mut inner = lock(&agent.procs.inner);
    let mut child = cmd.spawn().map_err(|e| {
        spawn_error(
            e,
            &spec.argv[0],
            user_spec.as_deref().unwrap_or("root"),
            &cwd,
        )
    })?;
    let pid = child.id() as i32;
    let (exit_tx, exit_rx) = oneshot::channel();
    inner.waiters.insert(pid, exit_tx);
    let n = agent.procs.next.fetch_add(1, Ordering::Relaxed) + 1;
    let id = format!("p{n}");
    let mut out_fds = out_fds;
    if let Some(o) = child.stdout.take() {
        out_fds.push((false, OwnedFd::from(o)));
    }
    if let Some(e) = child.stderr.take() {
        out_fds.push((true, OwnedFd::from(e)));
    }
    if let Some(i) = child.stdin.take() {
        stdin_fd = Some(OwnedFd::from(i));
    }
    drop(child); // std's Child does not wait on drop; the reaper does.
    drop(cmd); // closes the parent's copies of the terminal peer

    let (stdin_tx, stdin_rx) = mpsc::channel::<Option<Vec<u8>>>(16);
    let proc = Arc::new(Proc {
        id: id.clone(),
        pid,
        argv: spec.argv.clone(),
        background: spec.background,
        started_micros: now_micros(),
        hub: Mutex::new(Hub {
            ring: Ring::default(),
            subs: Vec::new(),
            exit: None,
        }),
        stdin: Mutex::new(stdin_fd.as_ref().map(|_| stdin_tx)),
        pty: pty_master,
    });
    let sub = if spec.background {
        None
    } else {
        Some(proc.subscribe(false))
    };
    Registry::prune(&mut inner);
    inner.procs.insert(id.clone(), proc.clone());
    inner.order.push_back(id);
    drop(inner);

    if let Some(fd) = stdin_fd {
        tokio::spawn(stdin_writer(fd, stdin_rx));
    }
    let timeout = spec.timeout_ms.map(Duration::from_millis);
    tokio::spawn(supervise(proc.clone(), out_fds, exit_rx, timeout));
    Ok(Started { proc, sub })
}

async fn stdin_writer(fd: OwnedFd, mut rx: mpsc::Receiver<Option<Vec<u8>>>) {
    let Ok(fd) = async_fd(fd) else { return };
    while let Some(Some(chunk)) = rx.recv().await {
        if write_all(&fd, &chunk).await.is_err() {
            return;
        }
    }
    // None (EOF) or the sender dropped: closing a pipe is the EOF; a
    // terminal's EOF is its EOF character (the master stays open for output).
    if rustix::termios::isatty(fd.get_ref()) {
        let _ = write_all(&fd, &[4]).await;
    }
}

/// Read output until the pipes close (or shortly after exit), apply the
/// timeout, then publish the exit status.
async fn supervise(
    proc: Arc<Proc>,
    fds: Vec<(bool, OwnedFd)>,
    exit_rx: oneshot::Receiver<Ended>,
    timeout: Option<Duration>,
) {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<(bool, Option<Vec<u8>>)>(8);
    for (stderr, fd) in fds {
        let tx = tx.clone();
        tokio::spawn(async move {
            let fd = match async_fd(fd) {
                Ok(fd) => fd,
                Err(_) => {
                    let _ = tx.send((stderr, None)).await;
                    return;
                }
            };
            let mut buf = vec![0u8; hull_proto::CHUNK];
            loop {
                match read_some(&fd, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((stderr, Some(buf[..n].to_vec()))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send((stderr, None)).await;
        });
    }
    drop(tx);
    let mut exit: Option<Ended> = None;
    let mut exit_rx = Some(exit_rx);
    let mut timed_out = false;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let timer = async {
            match (drain_until, deadline, timed_out) {
                (Some(d), _, _) => tokio::time::sleep_until(d).await,
                (None, Some(d), false) => tokio::time::sleep_until(d).await,
                _ => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((stderr, Some(data))) => publish(&proc, Event::Out { stderr, ts: now_micros(), data: Arc::new(data) }).await,
                Some((_, None)) => {}
                None => {
                    // Every stream is closed: only the exit status may be missing.
                    if exit.is_none()
                        && let Some(r) = exit_rx.take()
                    {
                        exit = Some(wait_exit(r, deadline, &proc, &mut timed_out).await);
                    }
                    break;
                }
            },
            st = async { exit_rx.as_mut().expect("present until taken").await }, if exit_rx.is_some() => {
                exit_rx = None;
                exit = Some(st.unwrap_or((None, None)));
                drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = timer => {
                if drain_until.is_some() { break; }
                timed_out = true;
                let _ = proc.kill_group(libc::SIGKILL);
            }
        }
    }
    let (code, signal) = match exit {
        Some(e) => e,
        None => match exit_rx.take() {
            Some(r) => wait_exit(r, deadline, &proc, &mut timed_out).await,
            None => (None, None),
        },
    };
    let status = ExitStatus {
        code,
        signal,
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let subs = {
        let mut hub = lock(&proc.hub);
        hub.exit = Some(status.clone());
        std::mem::take(&mut hub.subs)
    };
    *lock(&proc.stdin) = None;
    for s in subs {
        let _ = s.send(Event::Exit(status.clone())).await;
    }
}

async fn wait_exit(
    r: oneshot::Receiver<Ended>,
    deadline: Option<tokio::time::Instant>,
    proc: &Proc,
    timed_out: &mut bool,
) -> Ended {
    tokio::pin!(r);
    if let Some(d) = deadline
        && !*timed_out
    {
        tokio::select! {
            st = &mut r => return st.unwrap_or((None, None)),
            () = tokio::time::sleep_until(d) => {
                *timed_out = true;
                let _ = proc.kill_group(libc::SIGKILL);
            }
        }
    }
    r.await.unwrap_or((None, None))
}

async fn publish(proc: &Proc, ev: Event) {
    let subs = {
        let mut hub = lock(&proc.hub);
        if proc.background
            && let Event::Out { stderr, ts, data } = &ev
        {
            hub.ring.push(*stderr, *ts, data);
        }
        hub.subs.retain(|s| !s.is_closed());
        hub.subs.clone()
    };
    for s in subs {
        // Back-pressure: a slow foreground reader slows the process down.
        let _ = s.send(ev.clone()).await;
    }
}

/// `exec`: start, answer `started`, then stream (foreground) or return.
pub(crate) async fn exec(agent: Arc<Agent>, mut conn: UnixStream, spec: ExecSpec) {
    let started = match start(&agent, &spec) {
        Ok(s) => s,
        Err(e) => return send_error(&mut conn, e).await,
    };
    let proc = started.proc;
    if send(
        &mut conn,
        &Response::Started {
            id: proc.id.clone(),
            pid: proc.pid,
        },
    )
    .await
    .is_err()
    {
        if !spec.background {
            let _ = proc.kill_group(libc::SIGKILL);
        }
        return;
    }
    if let Some(sub) = started.sub {
        let finished = stream(conn, &proc, sub, true).await;
        if !finished {
            // The host went away from a foreground process: end it.
            let _ = proc.kill_group(libc::SIGKILL);
        }
    }
}

/// `attach`: replay and follow a process's output.
pub(crate) async fn attach(agent: Arc<Agent>, mut conn: UnixStream, id: &str, replay: bool) {
    let Some(proc) = agent.procs.get(id) else {
        return send_error(&mut conn, unknown(id)).await;
    };
    if send(
        &mut conn,
        &Response::Started {
            id: proc.id.clone(),
            pid: proc.pid,
        },
    )
    .await
    .is_err()
    {
        return;
    }
    let sub = proc.subscribe(replay);
    stream(conn, &proc, sub, false).await;
}

/// How the host's sending side of an exec connection ended.
enum InputEnd {
    /// Reads see end of stream: the host half-closed or closed entirely.
    Eof,
    /// The host sent something that is not a frame.
    Broken,
}

/// Forward the host's frames to the process: stdin, EOF, signals, resizes.
/// Ends when the host stops sending.
async fn input_loop(mut rd: tokio::net::unix::OwnedReadHalf, proc: Arc<Proc>) -> InputEnd {
    loop {
        match read_frame(&mut rd).await {
            Ok(Frame::Data(d)) => {
                let tx = lock(&proc.stdin).clone();
                if let Some(tx) = tx {
                    let _ = tx.send(Some(d)).await;
                }
            }
            Ok(Frame::Eof) => {
                let tx = lock(&proc.stdin).take();
                if let Some(tx) = tx {
                    let _ = tx.send(None).await;
                }
            }
            Ok(f @ Frame::Control(_)) => match f.parse::<ExecInput>() {
                Ok(ExecInput::Signal { signal }) if (1..=64).contains(&signal) => {
                    let _ = proc.kill_group(signal);
                }
                Ok(ExecInput::Resize { rows, cols }) => {
                    if let Some(m) = &proc.pty {
                        let _ = hull_sys::pty::set_window_size(m, rows.max(1), cols.max(1));
                    }
                }
                _ => {}
            },
            Ok(_) => {}
            Err(ProtoError::Closed) => return InputEnd::Eof,
            Err(_) => return InputEnd::Broken,
        }
    }
}

/// Resolves once the peer of the socket `fd` (a duplicate of the exec
/// connection) has closed it entirely, as opposed to only shutting down
/// its sending side; also when the socket cannot be watched.
async fn hangup(fd: Option<OwnedFd>) {
    #[allow(deprecated)] // see `async_fd`
    let fd = match fd.map(|fd| AsyncFd::with_interest(fd, Interest::WRITABLE)) {
        Some(Ok(fd)) => fd,
        _ => return,
    };
    loop {
        // Edge-triggered: every wakeup of the socket (the peer reading,
        // the peer closing) is one event; only a hang-up ends the wait.
        let Ok(mut guard) = fd.writable().await else {
            return;
        };
        if guard.ready().is_write_closed() {
            return;
        }
        guard.clear_ready();
    }
}

/// Pump output to the host and input from it. True when the exit status
/// was delivered; false when the host went away first. A host that only
/// half-closes (stops sending) keeps receiving output; when `owns_stdin`
/// (the connection that started the process) that also closes stdin.
async fn stream(
    conn: UnixStream,
    proc: &Arc<Proc>,
    mut sub: mpsc::Receiver<Event>,
    owns_stdin: bool,
) -> bool {
    let watch = conn.as_fd().try_clone_to_owned().ok();
    let (rd, mut wr) = conn.into_split();
    let mut input = tokio::spawn(input_loop(rd, proc.clone()));
    let mut input_open = true;
    let hung_up = hangup(watch);
    tokio::pin!(hung_up);
    let delivered = loop {
        tokio::select! {
            ev = sub.recv() => {
                let frame = match ev {
                    None => break false,
                    Some(Event::Out { stderr: false, ts, data }) => Frame::Stdout { ts_micros: ts, data: data.to_vec() },
                    Some(Event::Out { stderr: true, ts, data }) => Frame::Stderr { ts_micros: ts, data: data.to_vec() },
                    Some(Event::Exit(st)) => match Frame::control(&Response::Exited(st)) {
                        Ok(f) => break write_frame(&mut wr, &f).await.is_ok(),
                        Err(_) => break false,
                    },
                };
                if write_frame(&mut wr, &frame).await.is_err() {
                    break false;
                }
            }
            end = &mut input, if input_open => {
                input_open = false;
                if !matches!(end, Ok(InputEnd::Eof)) {
                    break false;
                }
                if owns_stdin {
                    // No more input can come: that is the end of stdin.
                    let tx = lock(&proc.stdin).take();
                    if let Some(tx) = tx {
                        let _ = tx.send(None).await;
                    }
                }
            }
            () = &mut hung_up, if !input_open => break false,
        }
    };
    input.abort();
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_bytes(r: &Ring, stderr: bool) -> Vec<u8> {
        r.chunks
            .iter()
            .filter(|c| c.0 == stderr)
            .flat_map(|c| c.2.iter().copied())
            .collect()
    }

    #[test]
    fn ring_merges_small_writes_and_stays_bounded() {
        let mut r = Ring::default();
        // Three million one-byte writes, alternating streams every 1000.
        for i in 0..3_000_000u32 {
            let stderr = (i / 1000) % 2 == 1;
            r.push(stderr, u64::from(i), &[b'a' + (i % 26) as u8]);
        }
        assert!(r.bytes[0] <= RING_BYTES && r.bytes[1] <= RING_BYTES);
        // Merged: a handful of chunks, not a million.
        assert!(r.chunks.len() < 4 * RING_BYTES / 1000, "{}", r.chunks.len());
        let out = stream_bytes(&r, false);
        let err = stream_bytes(&r, true);
        assert!(out.len() > RING_BYTES / 2 && err.len() > RING_BYTES / 2);
        // The newest bytes are kept: the last write was i = 2_999_999 (stderr).
        assert_eq!(*err.last().unwrap(), b'a' + (2_999_999u32 % 26) as u8);
        // Timestamps stay in order.
        assert!(
            r.chunks
                .iter()
                .zip(r.chunks.iter().skip(1))
                .all(|(a, b)| a.1 <= b.1)
        );
    }

    #[test]
    fn one_noisy_stream_does_not_evict_the_other() {
        let mut r = Ring::default();
        r.push(true, 0, b"the error that matters\n");
        for i in 0..100u64 {
            r.push(false, i + 1, &vec![b'x'; hull_proto::CHUNK]);
        }
        assert_eq!(stream_bytes(&r, true), b"the error that matters\n");
        assert!(r.bytes[0] <= RING_BYTES);
    }

    #[test]
    fn lookup_follows_path_like_a_shell() {
        assert_eq!(
            lookup("sh", "/nonexistent:/bin", "/").as_deref(),
            Some("/bin/sh")
        );
        assert_eq!(lookup("./x", "/bin", "/").as_deref(), Some("./x"));
        assert_eq!(lookup("no-such-program-here", "/bin:/usr/bin", "/"), None);
        // Not executable.
        assert_eq!(lookup("passwd", "/etc", "/"), None);
    }
}
