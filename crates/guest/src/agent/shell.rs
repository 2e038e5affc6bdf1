//! Persistent shell sessions: a named, long-lived `bash` per session, kept
//! by the agent (so it outlives host connections), in which the working
//! directory, variables, functions and background jobs persist across
//! calls.
//!
//! The shell runs interactively (`bash --noprofile --norc --noediting -i`)
//! on a pseudo-terminal, so job control is on: every command is its own
//! foreground job, and an interrupt reaches the command, not the shell.
//! Echo and `\n` -> `\r\n` translation are off, history is off, and the
//! prompts (`PS0`, `PS1`, `PS2`, `PROMPT_COMMAND`) are emptied after every
//! command, so a command that sets them changes nothing visible.
//!
//! End of command: a call writes the command text, NUL-terminated, to a
//! pipe the shell holds as fd 62, and types one fixed line on the terminal
//! that reads it (`read -d ''`), restores the previous `$?`, `eval`s it
//! and then runs `__hull_mark NONCE`, which writes `NONCE <$?> <$PWD>` and
//! a NUL to a second pipe (fd 63). The nonce is fresh per call and the
//! marker never travels through the terminal, so nothing a command prints
//! (or a changed `PS1`, or a closed stdout) can fake or hide it; a marker
//! with another nonce (a stale one) is ignored. The command text never
//! passes through the terminal either, so the terminal's line-length limit
//! and its control characters do not apply to it.
//!
//! Interrupts (timeout, idle timeout): SIGINT to the terminal's foreground
//! process group; after [`GRACE`] SIGKILL to it (never to the shell
//! itself); after another [`GRACE`], if the marker still has not come
//! (the shell abandoned the rest of the line), a fresh `__hull_mark` line
//! is typed. Background jobs are not touched.
//!
//! `exec`: the shell's `/proc/PID/cmdline` is compared with the armed one
//! while a call waits. A new `bash` (it inherits fds 62 and 63) is armed
//! again and the session goes on; anything else ends the session. A shell
//! that exits (`exit`, `kill $$`) ends the session, reported in the result.
//!
//! Limits: at most [`MAX_SHELL_SESSIONS`] sessions; calls on one session
//! run one at a time; output is capped per call (head and tail kept, the
//! cut marked by a visible line); `expect` patterns are compiled with
//! bounded size and match within the last [`MATCH_WINDOW`] bytes of
//! output. A `shell_run` refuses to start while a program `shell_send`
//! started still runs in the foreground. Output printed between calls is
//! dropped by `shell_run` and returned by `shell_send`. Processes that
//! leave the shell's session (`setsid`) are not killed by `shell_close`.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_proto::{
    CHUNK, DEFAULT_SHELL_OUTPUT, Frame, GuestError, GuestErrorKind, GuestErrorReason,
    MAX_SHELL_INPUT, MAX_SHELL_OUTPUT, MAX_SHELL_SESSIONS, Response, ShellInfo, ShellOpenSpec,
    ShellRunDone, ShellRunSpec, ShellSendDone, ShellSendSpec, now_micros, valid_session_name,
    write_frame,
};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::exec::{self, Ended};
use super::{Agent, send, send_error};

/// How long an interrupt step waits before escalating.
const GRACE: Duration = Duration::from_millis(500);
/// `shell_run` timeout when the request names none.
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// `shell_send` timeout when the request names none.
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest timeout a call may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// A `shell_send` without `expect` returns once output has paused this long.
const QUIET: Duration = Duration::from_millis(200);
/// How long a new (or replaced) shell may take to answer its first marker.
const ARM_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting call checks whether the shell was replaced.
const EXEC_CHECK: Duration = Duration::from_millis(100);
/// `expect` matches within this many trailing bytes of output.
pub(crate) const MATCH_WINDOW: usize = 64 * 1024;
/// Largest `expect` pattern and its compiled size.
const MAX_PATTERN: usize = 4096;
const MAX_REGEX_BYTES: usize = 1 << 20;
/// Marker bytes kept while no terminator comes (a hostile writer on fd 63).
const MAX_MARKER_BUF: usize = 64 * 1024;
/// Terminal size of a session.
const ROWS: u16 = 40;
const COLS: u16 = 200;

/// Run by `bash -c` with stdout the marker pipe and stderr the command
/// pipe: move them to 63 and 62, make the terminal all of stdio, and
/// become the interactive shell (same pid, still the session leader).
const BOOT: &str = r#"exec 62<&2 63>&1 1>&0 2>&0; exec "$BASH" --noprofile --norc --noediting -i"#;

/// Defaults of a session's environment (the request may override them).
const SESSION_ENV: [(&str, &str); 3] = [("TERM", "dumb"), ("PAGER", "cat"), ("GIT_PAGER", "cat")];

/// The line that prepares a (new) shell and answers with `nonce`.
fn arm_line(nonce: &str) -> String {
    format!(
        "PS0= PS1= PS2= PS3= PS4='+ ' HISTFILE=; unset PROMPT_COMMAND HISTFILE; set +o history +o emacs +o vi; \
         __hull_ret() {{ return \"$1\"; }}; \
         __hull_mark() {{ local __hull_rc=$?; PS0= PS1= PS2=; unset PROMPT_COMMAND; printf '%s %d %s\\0' \"$1\" \"$__hull_rc\" \"$PWD\" >&63; return $__hull_rc; }}; \
         __hull_mark {nonce}\n"
    )
}

/// The line that runs the command waiting in the command pipe.
fn run_line(nonce: &str) -> String {
    format!(
        "__hull_r=$?; IFS= read -r -d '' __hull_c <&62; __hull_ret $__hull_r; eval \"$__hull_c\"; __hull_mark {nonce}\n"
    )
}

/// A fresh, unpredictable nonce (hex).
fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut out = String::with_capacity(36);
    out.push_str("hull");
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(N.fetch_add(1, Ordering::Relaxed));
        h.write_u64(now_micros());
        h.write_u64(i);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Take complete markers out of `buf`; the exit code and directory of the
/// one carrying `nonce`, if any. Others (stale, malformed) are dropped.
pub(crate) fn take_marker(buf: &mut Vec<u8>, nonce: &str) -> Option<(i32, String)> {
    let mut found = None;
    while let Some(end) = buf.iter().position(|&b| b == 0) {
        let rec: Vec<u8> = buf.drain(..=end).collect();
        let rec = &rec[..rec.len() - 1];
        if found.is_some() {
            continue;
        }
        found = parse_marker(rec, nonce);
    }
    if buf.len() > MAX_MARKER_BUF {
        buf.clear();
    }
    found
}

fn parse_marker(rec: &[u8], nonce: &str) -> Option<(i32, String)> {
    let rest = rec.strip_prefix(nonce.as_bytes())?.strip_prefix(b" ")?;
    let sp = rest.iter().position(|&b| b == b' ')?;
    let code = std::str::from_utf8(&rest[..sp]).ok()?;
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) || code.len() > 3 {
        return None;
    }
    let code: i32 = code.parse().ok()?;
    let cwd = String::from_utf8_lossy(&rest[sp + 1..]).into_owned();
    Some((code, cwd))
}

/// Output of one call within a byte budget: the first half and the last
/// half are kept, what lies between is counted.
pub(crate) struct Capture {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    pub(crate) fn new(budget: usize) -> Capture {
        Capture {
            head_cap: budget - budget / 2,
            tail_cap: budget / 2,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    pub(crate) fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap - self.head.len();
        let n = room.min(data.len());
        self.head.extend_from_slice(&data[..n]);
        data = &data[n..];
        if data.len() >= self.tail_cap {
            self.tail.clear();
            self.tail
                .extend(data[data.len() - self.tail_cap..].iter().copied());
            return;
        }
        self.tail.extend(data.iter().copied());
        let over = self.tail.len().saturating_sub(self.tail_cap);
        self.tail.drain(..over);
    }

    pub(crate) fn truncated(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }

    /// The text (lossy UTF-8), with a visible line where output was cut.
    pub(crate) fn finish(self) -> (String, bool) {
        let truncated = self.truncated();
        let kept = (self.head.len() + self.tail.len()) as u64;
        let (tail, _) = self.tail.as_slices();
        let mut tail_bytes = tail.to_vec();
        tail_bytes.extend_from_slice(self.tail.as_slices().1);
        if !truncated {
            let mut all = self.head;
            all.extend_from_slice(&tail_bytes);
            return (String::from_utf8_lossy(&all).into_owned(), false);
        }
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&format!(
            "[hull: output truncated: {} bytes omitted]\n",
            self.total - kept
        ));
        s.push_str(&String::from_utf8_lossy(&tail_bytes));
        (s, true)
    }
}

/// A mutex's guard, also after a panic elsewhere poisoned it (the data it
/// guards stays consistent: maps of sessions and contexts).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sessions of one agent.
#[derive(Default)]
pub(crate) struct Shells {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

struct Session {
    name: String,
    /// The shell's pid; also its session and process group id.
    pid: i32,
    started_micros: u64,
    cwd: Mutex<String>,
    io: Arc<tokio::sync::Mutex<Io>>,
}

/// What a call drives. Held (locked) for the whole call.
struct Io {
    master: AsyncFd<OwnedFd>,
    /// The terminal reported end of output (every peer closed).
    master_closed: bool,
    marker: AsyncFd<OwnedFd>,
    marker_closed: bool,
    marker_buf: Vec<u8>,
    cmd: AsyncFd<OwnedFd>,
    exit: Option<oneshot::Receiver<Ended>>,
    /// How the shell ended, once it has.
    ended: Option<Ended>,
    /// `/proc/PID/cmdline` of the armed shell.
    cmdline: Vec<u8>,
}

fn err(kind: GuestErrorKind, m: impl Into<String>) -> GuestError {
    GuestError::new(kind, m)
}

fn unknown(name: &str) -> GuestError {
    err(
        GuestErrorKind::NotFound,
        format!("no shell session {name:?} in this sandbox (see shell_list)"),
    )
}

fn check_name(name: &str) -> Result<(), GuestError> {
    if valid_session_name(name) {
        Ok(())
    } else {
        Err(err(
            GuestErrorKind::InvalidArgument,
            format!("invalid session name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ . -"),
        ))
    }
}

fn timeout_of(ms: Option<u64>, default: Duration) -> Duration {
    ms.map(Duration::from_millis)
        .unwrap_or(default)
        .min(MAX_TIMEOUT)
}

fn budget(max_output: Option<u64>) -> usize {
    max_output
        .unwrap_or(DEFAULT_SHELL_OUTPUT)
        .clamp(64, MAX_SHELL_OUTPUT) as usize
}

/// Echo and output translation off, so output is what programs wrote.
fn quiet_terminal(fd: impl AsFd) -> io::Result<()> {
    use rustix::termios::{LocalModes, OptionalActions, OutputModes};
    let mut t = rustix::termios::tcgetattr(&fd)?;
    if !t.local_modes.contains(LocalModes::ECHO) && !t.output_modes.contains(OutputModes::ONLCR) {
        return Ok(());
    }
    t.local_modes.remove(LocalModes::ECHO);
    t.output_modes.remove(OutputModes::ONLCR);
    rustix::termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
    Ok(())
}

fn cmdline(pid: i32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

/// Process groups with a live member in the session `sid`.
fn session_groups(sid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for ent in dir.flatten() {
        let name = ent.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if f.len() > 3
            && f[0] != "Z"
            && f[3].parse::<i32>() == Ok(sid)
            && let Ok(pg) = f[2].parse::<i32>()
            && !out.contains(&pg)
        {
            out.push(pg);
        }
    }
    out
}

/// SIGKILL every process group of the shell's session until none is left.
async fn kill_session(sid: i32) {
    for _ in 0..100 {
        let _ = hull_sys::process::signal_process_group(sid, libc::SIGKILL);
        let groups = session_groups(sid);
        if groups.is_empty() {
            return;
        }
        for g in groups {
            let _ = hull_sys::process::signal_process_group(g, libc::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One read attempt without waiting: `Ok(None)` when nothing is there.
fn try_read(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::io::read(fd.get_ref(), &mut *buf) {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::IO) => return Ok(Some(0)),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut g = fd.readable().await?;
        match try_read(fd, buf)? {
            Some(n) => return Ok(n),
            None => g.clear_ready(),
        }
    }
}

async fn write_some(fd: &AsyncFd<OwnedFd>, data: &[u8]) -> io::Result<usize> {
    loop {
        let mut g = fd.writable().await?;
        match rustix::io::write(fd.get_ref(), data) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::AGAIN) => g.clear_ready(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// How a wait for a marker ended.
enum Waited {
    Marker(i32, String),
    Ended,
    /// The shell's program changed (`exec`).
    Replaced,
    /// Every interrupt step passed without a marker.
    GaveUp,
}

/// Why a run's command is being interrupted.
#[derive(Clone, Copy, PartialEq)]
enum Cause {
    Timeout,
    Idle,
}

impl Io {
    /// Read what the terminal holds now, without waiting (bounded).
    fn drain_now(&mut self, cap: &mut Capture) {
        let mut buf = vec![0u8; CHUNK];
        for _ in 0..64 {
            if self.master_closed {
                return;
            }
            match try_read(&self.master, &mut buf) {
                Ok(Some(0)) | Err(_) => self.master_closed = true,
                Ok(Some(n)) => cap.push(&buf[..n]),
                Ok(None) => return,
            }
        }
    }

    /// True once the shell has exited (checked without waiting).
    fn poll_exited(&mut self) -> bool {
        if self.ended.is_none()
            && let Some(rx) = &mut self.exit
        {
            match rx.try_recv() {
                Ok(st) => {
                    self.ended = Some(st);
                    self.exit = None;
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.ended = Some((None, None));
                    self.exit = None;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        self.ended.is_some()
    }

    /// Type `data` on the terminal, within `limit`.
    async fn type_line(&mut self, data: &[u8], limit: Duration) -> Result<(), GuestError> {
        let fut = async {
            let mut rest = data;
            while !rest.is_empty() {
                let n = write_some(&self.master, rest).await?;
                rest = &rest[n..];
            }
            Ok::<_, io::Error>(())
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(super::os_error(e, "writing to the session's terminal")),
            Err(_) => Err(err(
                GuestErrorKind::Unavailable,
                "the session's terminal does not take input (its input queue is full)",
            )),
        }
    }

    /// Wait for the marker with `nonce`, collecting output into `cap`,
    /// feeding `payload` to the command pipe, and interrupting the
    /// foreground job at `deadline` or after `idle` without output.
    #[allow(clippy::too_many_arguments)]
    async fn wait_marker(
        &mut self,
        pid: i32,
        nonce: &str,
        mut payload: &[u8],
        cap: &mut Capture,
        deadline: Instant,
        idle: Option<Duration>,
        check_exec: bool,
    ) -> (Waited, Option<Cause>) {
        let mut obuf = vec![0u8; CHUNK];
        let mut mbuf = vec![0u8; 4096];
        let mut idle_at = idle.map(|d| Instant::now() + d);
        let mut next_check = Instant::now() + EXEC_CHECK;
        let mut cause: Option<Cause> = None;
        let mut stage = 0u8;
        let mut step_at = deadline;
        loop {
            let mut wake = step_at;
            if stage == 0
                && let Some(i) = idle_at
            {
                wake = wake.min(i);
            }
            if check_exec {
                wake = wake.min(next_check);
            }
            let Io {
                master,
                master_closed,
                marker,
                marker_closed,
                marker_buf,
                cmd,
                exit,
                ended,
                ..
            } = self;
            tokio::select! {
                r = read_some(master, &mut obuf), if !*master_closed => match r {
                    Ok(0) | Err(_) => *master_closed = true,
                    Ok(n) => {
                        cap.push(&obuf[..n]);
                        if let Some(d) = idle {
                            idle_at = Some(Instant::now() + d);
                        }
                    }
                },
                r = read_some(marker, &mut mbuf), if !*marker_closed => match r {
                    Ok(0) | Err(_) => *marker_closed = true,
                    Ok(n) => {
                        marker_buf.extend_from_slice(&mbuf[..n]);
                        if let Some((code, cwd)) = take_marker(marker_buf, nonce) {
                            self.drain_now(cap);
                            return (Waited::Marker(code, cwd), cause);
                        }
                    }
                },
                r = write_some(cmd, payload), if !payload.is_empty() => match r {
                    Ok(n) => payload = &payload[n..],
                    Err(_) => payload = &[],
                },
                st = async { exit.as_mut().expect("present until taken").await }, if exit.is_some() && ended.is_none() => {
                    *ended = Some(st.unwrap_or((None, None)));
                    *exit = None;
                    self.drain_now(cap);
                    return (Waited::Ended, cause);
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if check_exec && now >= next_check {
                        next_check = now + EXEC_CHECK;
                        let cl = cmdline(pid);
                        if !cl.is_empty() && cl != self.cmdline {
                            self.drain_now(cap);
                            return (Waited::Replaced, cause);
                        }
                    }
                    let idle_fired = stage == 0 && idle_at.is_some_and(|i| now >= i);
                    if now < step_at && !idle_fired {
                        continue;
                    }
                    if stage == 0 {
                        cause = Some(if idle_fired && now < deadline { Cause::Idle } else { Cause::Timeout });
                    }
                    match stage {
                        0 => self.signal_foreground(pid, libc::SIGINT),
                        1 => self.signal_foreground(pid, libc::SIGKILL),
                        2 => {
                            // The shell may have dropped the rest of the line.
                            let line = format!("\n__hull_mark {nonce}\n");
                            let _ = rustix::io::write(self.master.get_ref(), line.as_bytes());
                        }
                        _ => return (Waited::GaveUp, cause),
                    }
                    stage += 1;
                    step_at = now + if stage == 3 { 2 * GRACE } else { GRACE };
                }
            }
        }
    }

    /// Signal the terminal's foreground job; SIGKILL never goes to the
    /// shell itself (it gets SIGINT instead, which abandons the line).
    fn signal_foreground(&self, pid: i32, sig: i32) {
        let fg = rustix::termios::tcgetpgrp(&self.master)
            .map(|p| p.as_raw_nonzero().get())
            .unwrap_or(pid);
        let sig = if fg == pid { libc::SIGINT } else { sig };
        let _ = hull_sys::process::signal_process_group(fg, sig);
    }

    /// Prepare the shell now on the terminal and wait for its first marker.
    async fn arm(&mut self, pid: i32) -> Result<(), GuestError> {
        let n = nonce();
        let _ = quiet_terminal(&self.master);
        self.type_line(arm_line(&n).as_bytes(), ARM_TIMEOUT).await?;
        let mut junk = Capture::new(0);
        let deadline = Instant::now() + ARM_TIMEOUT;
        match self
            .wait_marker(pid, &n, &[], &mut junk, deadline, None, false)
            .await
        {
            (Waited::Marker(..), _) => {
                self.cmdline = cmdline(pid);
                let _ = quiet_terminal(&self.master);
                Ok(())
            }
            (Waited::Ended, _) => Err(err(
                GuestErrorKind::Internal,
                format!(
                    "bash exited as the session started ({})",
                    ended_text(self.ended)
                ),
            )),
            _ => Err(err(
                GuestErrorKind::Unavailable,
                "bash did not answer as the session started",
            )),
        }
    }
}

fn ended_text(e: Option<Ended>) -> String {
    match e {
        Some((Some(c), _)) => format!("exit code {c}"),
        Some((None, Some(s))) => format!("killed by signal {s}"),
        _ => "status unknown".into(),
    }
}

fn no_bash() -> GuestError {
    err(
        GuestErrorKind::NotFound,
        "shell sessions need `bash`, and `bash` is not in this sandbox's template \
         (the `busybox` template has only `sh`): use a template that has bash, such as `host` or a Debian one",
    )
    .with_reason(GuestErrorReason::CommandNotFound)
}

impl Shells {
    fn get(&self, name: &str) -> Result<Arc<Session>, GuestError> {
        check_name(name)?;
        lock(&self.map)
            .get(name)
            .cloned()
            .ok_or_else(|| unknown(name))
    }

    /// Forget `s` if it is still the session under its name.
    fn forget(&self, s: &Arc<Session>) {
        let mut map = lock(&self.map);
        if map.get(&s.name).is_some_and(|cur| Arc::ptr_eq(cur, s)) {
            map.remove(&s.name);
        }
    }

    /// Drop sessions whose shell has exited and no call holds.
    fn prune(map: &mut HashMap<String, Arc<Session>>) {
        map.retain(|_, s| match s.io.try_lock() {
            Ok(mut io) => !io.poll_exited(),
            Err(_) => true,
        });
    }
}

/// `shell_open`: start and arm a session; the shell's pid.
async fn open(agent: &Arc<Agent>, spec: ShellOpenSpec) -> Result<i32, GuestError> {
    check_name(&spec.session)?;
    let l = exec::launch(
        agent,
        spec.user.as_ref(),
        &spec.env,
        spec.cwd.as_ref(),
        &SESSION_ENV,
    )?;
    let bash = exec::lookup("bash", &exec::path_of(&l.env), &l.cwd).ok_or_else(no_bash)?;
    let os = |e: io::Error, what: &str| super::os_error(e, what);
    let pty = hull_sys::pty::open(ROWS, COLS).map_err(|e| os(e, "opening a terminal"))?;
    quiet_terminal(&pty.master).map_err(|e| os(e, "setting up the terminal"))?;
    let cloexec = rustix::pipe::PipeFlags::CLOEXEC;
    let (marker_r, marker_w) =
        rustix::pipe::pipe_with(cloexec).map_err(|e| os(e.into(), "creating a pipe"))?;
    let (cmd_r, cmd_w) =
        rustix::pipe::pipe_with(cloexec).map_err(|e| os(e.into(), "creating a pipe"))?;
    let cwd_c = CString::new(l.cwd.clone()).map_err(|_| {
        err(
            GuestErrorKind::InvalidArgument,
            "working directory contains NUL",
        )
    })?;
    let mut cmd = Command::new(&bash);
    cmd.arg0("bash")
        .args(["--noprofile", "--norc", "-c", BOOT])
        .env_clear()
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(pty.peer))
        .stdout(Stdio::from(marker_w))
        .stderr(Stdio::from(cmd_r));
    hull_sys::process::prepare(
        &mut cmd,
        hull_sys::process::ChildSetup {
            controlling_tty: true,
            credentials: l.user.as_ref().map(|u| hull_sys::process::Credentials {
                uid: u.uid,
                gid: u.gid,
                groups: u.groups.clone(),
            }),
            cwd: Some(cwd_c),
        },
    );
    let afd = |fd: OwnedFd| exec::async_fd(fd).map_err(|e| os(e, "watching a descriptor"));
    let master = afd(pty.master)?;
    let marker = afd(marker_r)?;
    let cmd_w = afd(cmd_w)?;

    let (session, mut io) = {
        let mut map = lock(&agent.shells.map);
        Shells::prune(&mut map);
        if map.contains_key(&spec.session) {
            return Err(err(
                GuestErrorKind::Conflict,
                format!(
                    "a shell session named {:?} already exists in this sandbox",
                    spec.session
                ),
            ));
        }
        if map.len() >= MAX_SHELL_SESSIONS {
            return Err(err(
                GuestErrorKind::ResourceExhausted,
                format!(
                    "this sandbox already has {MAX_SHELL_SESSIONS} shell sessions, the limit: close one first"
                ),
            ));
        }
        let user = l.user_spec.as_deref().unwrap_or("root");
        let (child, exit_rx) =
            exec::spawn_tracked(agent, &mut cmd).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => no_bash(),
                _ => super::os_error(e, format!("starting bash as {user} in {}", l.cwd)),
            })?;
        drop(cmd); // the parent's copies of the terminal peer and pipe ends
        let pid = child.id() as i32;
        drop(child); // the reaper collects it
        let session = Arc::new(Session {
            name: spec.session.clone(),
            pid,
            started_micros: now_micros(),
            cwd: Mutex::new(l.cwd.clone()),
            io: Arc::new(tokio::sync::Mutex::new(Io {
                master,
                master_closed: false,
                marker,
                marker_closed: false,
                marker_buf: Vec::new(),
                cmd: cmd_w,
                exit: Some(exit_rx),
                ended: None,
                cmdline: Vec::new(),
            })),
        });
        let io = session
            .io
            .clone()
            .try_lock_owned()
            .expect("a new session's lock is free");
        map.insert(spec.session.clone(), session.clone());
        (session, io)
    };
    if let Err(e) = io.arm(session.pid).await {
        drop(io);
        agent.shells.forget(&session);
        kill_session(session.pid).await;
        return Err(e);
    }
    Ok(session.pid)
}

/// `shell_run`: the command's output and how it ended.
async fn run(agent: &Arc<Agent>, spec: ShellRunSpec) -> Result<(String, ShellRunDone), GuestError> {
    let s = agent.shells.get(&spec.session)?;
    if spec.command.len() > MAX_SHELL_INPUT {
        return Err(err(
            GuestErrorKind::InvalidArgument,
            format!(
                "the command is {} bytes; the limit is {MAX_SHELL_INPUT}",
                spec.command.len()
            ),
        ));
    }
    if spec.command.contains('\0') {
        return Err(err(
            GuestErrorKind::InvalidArgument,
            "a command cannot contain NUL bytes",
        ));
    }
    let started = std::time::Instant::now();
    let deadline = Instant::now() + timeout_of(spec.timeout_ms, DEFAULT_RUN_TIMEOUT);
    let idle = spec
        .idle_timeout_ms
        .map(|ms| Duration::from_millis(ms.max(1)).min(MAX_TIMEOUT));
    let mut io = s.io.clone().lock_owned().await;
    let mut cap = Capture::new(budget(spec.max_output));
    let mut done = ShellRunDone::default();
    // Output printed since the last call is not this command's.
    io.drain_now(&mut Capture::new(0));
    if !io.poll_exited() {
        if let Ok(fg) = rustix::termios::tcgetpgrp(&io.master)
            && fg.as_raw_nonzero().get() != s.pid
        {
            let fg = fg.as_raw_nonzero().get();
            let prog = std::fs::read_to_string(format!("/proc/{fg}/comm")).unwrap_or_default();
            return Err(err(
                GuestErrorKind::Conflict,
                format!(
                    "a program ({}, process group {fg}) is running in the foreground of session {:?}: \
                     drive it with shell_send (or end it), or close the session",
                    prog.trim(),
                    s.name
                ),
            ));
        }
        let _ = quiet_terminal(&io.master);
        let n = nonce();
        let mut payload = spec.command.clone().into_bytes();
        payload.push(0);
        io.type_line(run_line(&n).as_bytes(), Duration::from_secs(5))
            .await?;
        let (waited, cause) = io
            .wait_marker(s.pid, &n, &payload, &mut cap, deadline, idle, true)
            .await;
        done.timed_out = cause == Some(Cause::Timeout);
        done.idle_timed_out = cause == Some(Cause::Idle);
        match waited {
            Waited::Marker(code, cwd) => {
                done.exit_code = Some(code);
                *lock(&s.cwd) = cwd;
            }
            Waited::Ended => {}
            Waited::GaveUp => {
                cap.push(b"\n[hull: the command did not stop after SIGINT and SIGKILL; the session may be unusable]\n");
            }
            Waited::Replaced => {
                done.shell_replaced = true;
                let exe = std::fs::read_link(format!("/proc/{}/exe", s.pid))
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                if exe.starts_with("bash") {
                    if let Err(e) = io.arm(s.pid).await {
                        cap.push(format!("\n[hull: the shell was replaced by a new bash that could not be taken over: {}]\n", e.message).as_bytes());
                        kill_session(s.pid).await;
                        io.ended.get_or_insert((None, None));
                    }
                } else {
                    cap.push(format!("\n[hull: the shell was replaced by `{exe}`; shell sessions need bash, so the session has ended]\n").as_bytes());
                    kill_session(s.pid).await;
                    io.ended.get_or_insert((None, None));
                }
            }
        }
    }
    if io.ended.is_some() {
        done.session_ended = true;
        if done.exit_code.is_none() {
            done.exit_code = io.ended.and_then(|e| e.0);
        }
        drop(io);
        agent.shells.forget(&s);
        // Jobs the shell left behind go with it.
        kill_session(s.pid).await;
    }
    done.cwd = lock(&s.cwd).clone();
    done.duration_ms = started.elapsed().as_millis() as u64;
    let (out, truncated) = cap.finish();
    done.truncated = truncated;
    Ok((out, done))
}

/// `shell_send`: type input, then collect output until `expect` matches,
/// output pauses (no `expect`), the shell ends, or the timeout.
async fn send_input(
    agent: &Arc<Agent>,
    spec: ShellSendSpec,
) -> Result<(String, ShellSendDone), GuestError> {
    let s = agent.shells.get(&spec.session)?;
    if spec.input.len() > MAX_SHELL_INPUT {
        return Err(err(
            GuestErrorKind::InvalidArgument,
            format!("input is limited to {MAX_SHELL_INPUT} bytes"),
        ));
    }
    let re = match &spec.expect {
        Some(p) if p.len() > MAX_PATTERN => {
            return Err(err(
                GuestErrorKind::InvalidArgument,
                format!("the expect pattern is limited to {MAX_PATTERN} bytes"),
            ));
        }
        Some(p) => Some(
            regex::RegexBuilder::new(p)
                .size_limit(MAX_REGEX_BYTES)
                .dfa_size_limit(MAX_REGEX_BYTES)
                .build()
                .map_err(|e| {
                    err(
                        GuestErrorKind::InvalidArgument,
                        format!("invalid expect pattern: {e}"),
                    )
                })?,
        ),
        None => None,
    };
    let deadline = Instant::now() + timeout_of(spec.timeout_ms, DEFAULT_SEND_TIMEOUT);
    let mut io = s.io.clone().lock_owned().await;
    let mut cap = Capture::new(budget(spec.max_output));
    let mut window: VecDeque<u8> = VecDeque::new();
    let mut done = ShellSendDone::default();
    let mut input = spec.input.as_bytes();
    let mut obuf = vec![0u8; CHUNK];
    let mut quiet_at = Instant::now() + QUIET;
    // Output waiting since the last call belongs to this one.
    let mut pending = Capture::new(MAX_SHELL_OUTPUT as usize);
    io.drain_now(&mut pending);
    let (pending, _) = pending.finish();
    let matched = |window: &mut VecDeque<u8>, data: &[u8]| -> bool {
        window.extend(data.iter().copied());
        let over = window.len().saturating_sub(MATCH_WINDOW);
        window.drain(..over);
        let Some(re) = &re else { return false };
        let (a, b) = window.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        re.is_match(&String::from_utf8_lossy(&bytes))
    };
    cap.push(pending.as_bytes());
    if matched(&mut window, pending.as_bytes()) {
        done.matched = true;
    }
    while !done.matched && !io.poll_exited() {
        let wake = if re.is_none() && input.is_empty() {
            deadline.min(quiet_at)
        } else {
            deadline
        };
        let Io {
            master,
            master_closed,
            exit,
            ended,
            ..
        } = &mut *io;
        tokio::select! {
            r = read_some(master, &mut obuf), if !*master_closed => match r {
                Ok(0) | Err(_) => *master_closed = true,
                Ok(n) => {
                    cap.push(&obuf[..n]);
                    quiet_at = Instant::now() + QUIET;
                    if matched(&mut window, &obuf[..n]) {
                        done.matched = true;
                    }
                }
            },
            r = write_some(master, input), if !input.is_empty() => match r {
                Ok(n) => {
                    input = &input[n..];
                    quiet_at = Instant::now() + QUIET;
                }
                Err(_) => input = &[],
            },
            st = async { exit.as_mut().expect("present until taken").await }, if exit.is_some() && ended.is_none() => {
                *ended = Some(st.unwrap_or((None, None)));
                *exit = None;
            }
            () = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline {
                    done.timed_out = re.is_some() || !input.is_empty();
                }
                break;
            }
        }
    }
    io.drain_now(&mut cap);
    if io.ended.is_some() {
        done.session_ended = true;
        drop(io);
        agent.shells.forget(&s);
        kill_session(s.pid).await;
    }
    let (out, truncated) = cap.finish();
    done.truncated = truncated;
    Ok((out, done))
}

/// `shell_close`: end the session and every process in it.
async fn close(agent: &Arc<Agent>, name: &str) -> Result<(), GuestError> {
    let s = agent.shells.get(name)?;
    agent.shells.forget(&s);
    kill_session(s.pid).await;
    Ok(())
}

fn list(agent: &Agent) -> Vec<ShellInfo> {
    let mut map = lock(&agent.shells.map);
    Shells::prune(&mut map);
    let mut out: Vec<ShellInfo> = map
        .values()
        .map(|s| ShellInfo {
            session: s.name.clone(),
            pid: s.pid,
            cwd: lock(&s.cwd).clone(),
            busy: s.io.try_lock().is_err(),
            started_micros: s.started_micros,
        })
        .collect();
    out.sort_by(|a, b| a.session.cmp(&b.session));
    out
}

/// Send a call's output as data frames, then its answer.
async fn answer(conn: &mut UnixStream, out: &str, resp: &Response) {
    for chunk in out.as_bytes().chunks(CHUNK) {
        if write_frame(conn, &Frame::Data(chunk.to_vec()))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = send(conn, resp).await;
}

/// Serve one shell operation on `conn`. A call runs to its end even if the
/// host goes away, so the session stays consistent.
pub(crate) async fn serve(agent: Arc<Agent>, mut conn: UnixStream, op: hull_proto::Op) {
    use hull_proto::Op;
    match op {
        Op::ShellOpen(spec) => match open(&agent, spec).await {
            Ok(pid) => {
                let _ = send(&mut conn, &Response::ShellOpened { pid }).await;
            }
            Err(e) => send_error(&mut conn, e).await,
        },
        Op::ShellRun(spec) => match run(&agent, spec).await {
            Ok((out, done)) => answer(&mut conn, &out, &Response::ShellRan(done)).await,
            Err(e) => send_error(&mut conn, e).await,
        },
        Op::ShellSend(spec) => match send_input(&agent, spec).await {
            Ok((out, done)) => answer(&mut conn, &out, &Response::ShellSent(done)).await,
            Err(e) => send_error(&mut conn, e).await,
        },
        Op::ShellClose { session } => match close(&agent, &session).await {
            Ok(()) => {
                let _ = send(&mut conn, &Response::Ok).await;
            }
            Err(e) => send_error(&mut conn, e).await,
        },
        Op::ShellList => {
            let sessions = list(&agent);
            let _ = send(&mut conn, &Response::Shells { sessions }).await;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_must_carry_the_nonce() {
        let mut buf = b"hullold 0 /tmp\0junk".to_vec();
        assert_eq!(take_marker(&mut buf, "hullnew"), None);
        assert_eq!(buf, b"junk", "complete records are consumed");
        buf.clear();
        buf.extend_from_slice(b"hullnew 0 /a\0hullnew 12 /dir with spaces\nand newline\0");
        // The first matching record wins; the rest are consumed.
        assert_eq!(take_marker(&mut buf, "hullnew"), Some((0, "/a".into())));
        assert!(buf.is_empty());
        let mut buf = b"hullnew 130 /x y\0".to_vec();
        assert_eq!(take_marker(&mut buf, "hullnew"), Some((130, "/x y".into())));
        // Malformed: no code, negative, huge, missing separator, prefix only.
        for bad in [
            &b"hullnew  /x\0"[..],
            b"hullnew -1 /x\0",
            b"hullnew 99999 /x\0",
            b"hullnew 0\0",
            b"hullnewer 0 /x\0",
            b"xhullnew 0 /x\0",
        ] {
            let mut buf = bad.to_vec();
            assert_eq!(take_marker(&mut buf, "hullnew"), None, "{bad:?}");
        }
        // A partial record waits for its terminator.
        let mut buf = b"hullnew 1 /p".to_vec();
        assert_eq!(take_marker(&mut buf, "hullnew"), None);
        buf.push(0);
        assert_eq!(take_marker(&mut buf, "hullnew"), Some((1, "/p".into())));
        // Junk without a terminator is bounded.
        let mut buf = vec![b'x'; MAX_MARKER_BUF + 1];
        assert_eq!(take_marker(&mut buf, "n"), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn nonces_differ() {
        let a = nonce();
        let b = nonce();
        assert_ne!(a, b);
        assert!(a.len() >= 36 && a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn capture_keeps_everything_within_budget() {
        let mut c = Capture::new(10);
        c.push(b"hello");
        c.push(b" you");
        assert_eq!(c.finish(), ("hello you".to_string(), false));
        let mut c = Capture::new(10);
        c.push(b"0123456789");
        assert_eq!(c.finish(), ("0123456789".to_string(), false));
    }

    #[test]
    fn capture_keeps_head_and_tail_and_marks_the_cut() {
        let mut c = Capture::new(10);
        for i in 0..1000u32 {
            c.push(format!("{}", i % 10).as_bytes());
        }
        c.push(b"ENDXY");
        assert!(c.truncated());
        let (s, t) = c.finish();
        assert!(t);
        assert!(s.starts_with("01234\n"), "{s:?}");
        assert!(s.ends_with("ENDXY"), "{s:?}");
        assert!(
            s.contains("[hull: output truncated: 995 bytes omitted]"),
            "{s:?}"
        );
        // One big push that overflows both halves.
        let mut c = Capture::new(6);
        c.push(b"abcdefghijklmnop");
        let (s, _) = c.finish();
        assert!(s.starts_with("abc\n[hull") && s.ends_with("\nnop"), "{s:?}");
        // A zero budget keeps nothing.
        let mut c = Capture::new(0);
        c.push(b"abc");
        assert!(c.finish().0.contains("3 bytes omitted"));
    }

    #[test]
    fn capture_output_is_lossy_utf8() {
        let mut c = Capture::new(100);
        c.push(&[0xff, b'a', 0xc3]);
        c.push(&[0xa9, 0x00]);
        assert_eq!(c.finish().0, "\u{fffd}a\u{e9}\u{0}");
    }

    #[test]
    fn session_names() {
        for ok in ["a", "main", "A-b_c.9", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ü", &"x".repeat(65), "a\0"] {
            assert_eq!(
                check_name(bad).unwrap_err().kind,
                GuestErrorKind::InvalidArgument,
                "{bad:?}"
            );
        }
    }
}
