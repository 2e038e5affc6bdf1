//! Running commands in a sandbox: buffered, streaming, in the background,
//! and reattaching to background processes.
//!
//! The guest enforces a command's timeout (it kills the whole process
//! group); the daemon adds a grace period on top in case the guest itself
//! stops answering. A process killed by SIGKILL while the sandbox's OOM
//! counter rose is reported as `oom_killed`.
//!
//! A sandbox counts as active for as long as one of its execs (buffered,
//! streaming or attached) runs, so neither its idle timeout nor a
//! session's TTL ends a command midway. A stream whose client goes away
//! (its events are no longer received) closes its guest connection at
//! once, even when the command prints nothing, and the guest then kills a
//! foreground command.

use std::convert::Infallible;
use std::time::Duration;

use base64::Engine;
use hull_api::{
    ApiError, ErrorReason, ExecClientMessage, ExecEvent, ExecRequest, ExecResult, ProcessStarted,
};
use hull_proto::client::{ExecHandle, ExecOutput};
use hull_proto::{ExecSpec, GuestErrorReason};
use tokio::sync::mpsc;

use crate::{Entry, ExecStream, Runtime, guest_error};

/// Output budget of a buffered exec: stdout and stderr together.
pub const EXEC_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;
/// Largest command line (all arguments together).
pub const MAX_ARGV_BYTES: usize = 1024 * 1024;
/// Extra time the daemon waits past a command's timeout for the guest to report.
const TIMEOUT_GRACE: Duration = Duration::from_secs(10);
/// How often a running exec marks its sandbox active. Idle timeouts and
/// TTLs count whole seconds; a mark this recent keeps a 2-second idle
/// timeout from firing while a command runs.
const ACTIVITY_INTERVAL: Duration = Duration::from_millis(250);

/// The API's form of a guest's error reason.
pub(crate) fn reason(r: GuestErrorReason) -> ErrorReason {
    match r {
        GuestErrorReason::CommandNotFound => ErrorReason::CommandNotFound,
        GuestErrorReason::CommandNotExecutable => ErrorReason::CommandNotExecutable,
        GuestErrorReason::Unknown => ErrorReason::Unknown,
    }
}

/// Mark `e` active every [`ACTIVITY_INTERVAL`]. Never returns: run it
/// beside the work it covers (`select!`), which then ends it.
pub(crate) async fn keep_active(e: &Entry) -> Infallible {
    let mut tick = tokio::time::interval(ACTIVITY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        e.touch();
    }
}

/// The output of a buffered exec within [`EXEC_OUTPUT_LIMIT`]: the exact
/// prefix of what the command printed (stdout and stderr together, in the
/// order it arrived), nothing after the first byte over the budget.
#[derive(Default)]
struct Buffered {
    out: Vec<u8>,
    err: Vec<u8>,
    truncated: bool,
}

impl Buffered {
    fn push(&mut self, stderr: bool, data: &[u8]) {
        let room = EXEC_OUTPUT_LIMIT.saturating_sub(self.out.len() + self.err.len());
        if data.len() > room {
            self.truncated = true;
        }
        let keep = &data[..data.len().min(room)];
        if stderr {
            self.err.extend_from_slice(keep);
        } else {
            self.out.extend_from_slice(keep);
        }
    }
}

fn validate(req: &ExecRequest) -> Result<(), ApiError> {
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return Err(ApiError::invalid(
            "cmd is empty: give the program and its arguments",
        ));
    }
    let total: usize = req.cmd.iter().map(|a| a.len() + 1).sum();
    if total > MAX_ARGV_BYTES {
        return Err(ApiError::invalid(format!(
            "the command line is {total} bytes; the limit is {MAX_ARGV_BYTES}"
        )));
    }
    if req.cmd.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::invalid(
            "command arguments cannot contain NUL bytes",
        ));
    }
    crate::validate_env(&req.env)?;
    if let Some(t) = req.timeout_seconds
        && (!t.is_finite() || t <= 0.0 || t > hull_api::MAX_TTL_SECONDS as f64)
    {
        return Err(ApiError::invalid(format!(
            "timeout_seconds {t} must be positive and at most 30 days"
        )));
    }
    check_cwd_user(req.cwd.as_deref(), req.user.as_deref())?;
    if let Some(s) = &req.stdin
        && s.len() > EXEC_OUTPUT_LIMIT
    {
        return Err(ApiError::invalid(format!(
            "stdin is limited to {EXEC_OUTPUT_LIMIT} bytes in a buffered exec; stream larger input"
        )));
    }
    Ok(())
}

fn spec(req: &ExecRequest, stdin: bool) -> ExecSpec {
    ExecSpec {
        argv: req.cmd.clone(),
        env: req
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: req.cwd.clone(),
        user: req.user.clone(),
        stdin,
        pty: req.tty.then(|| hull_proto::PtySize {
            rows: req.rows.unwrap_or(24),
            cols: req.cols.unwrap_or(80),
        }),
        timeout_ms: req.timeout_seconds.map(|t| (t * 1000.0).ceil() as u64),
        background: req.background,
    }
}

fn text_event(stdout: bool, ts_micros: u64, data: &[u8]) -> ExecEvent {
    let text = String::from_utf8_lossy(data).into_owned();
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    if stdout {
        ExecEvent::Stdout {
            ts_micros,
            data: text,
            data_b64: b64,
        }
    } else {
        ExecEvent::Stderr {
            ts_micros,
            data: text,
            data_b64: b64,
        }
    }
}

impl Runtime {
    fn result_of(&self, e: &Entry, status: hull_proto::ExitStatus, oom_before: u64) -> ExecResult {
        let killed = status.signal == Some(9) && !status.timed_out;
        let oom_now = self.host.oom_kills(&e.id());
        let oom_killed = killed && oom_now > oom_before;
        if oom_now > oom_before {
            self.check_oom(e);
        }
        ExecResult {
            stdout: String::new(),
            stderr: String::new(),
            exit_code: status.code,
            signal: status.signal,
            timed_out: status.timed_out,
            oom_killed,
            duration_ms: status.duration_ms,
            truncated: false,
        }
    }

    /// Run a command to completion, buffering at most [`EXEC_OUTPUT_LIMIT`] bytes.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, ApiError> {
        validate(&req)?;
        if req.tty {
            return Err(ApiError::invalid(
                "tty applies to streaming execs (exec/stream, exec/ws) and background processes; \
                 a buffered exec has no terminal: drop `tty` or stream the command",
            ));
        }
        let (e, c) = self.running_client(id, "exec in")?;
        let sid = e.id();
        let oom_before = self.host.oom_kills(&sid);
        let mut req = req;
        req.background = false;
        let mut h = c
            .exec(spec(&req, req.stdin.is_some()))
            .await
            .map_err(|err| guest_error(&sid, err))?;
        if let Some(s) = &req.stdin {
            h.stdin(s.as_bytes())
                .await
                .map_err(|err| guest_error(&sid, err))?;
            h.close_stdin()
                .await
                .map_err(|err| guest_error(&sid, err))?;
        }
        let deadline = req
            .timeout_seconds
            .map(|t| Duration::from_secs_f64(t) + TIMEOUT_GRACE);
        let collect = async {
            let mut buf = Buffered::default();
            let run = async {
                loop {
                    match h.next().await? {
                        ExecOutput::Stdout { data, .. } => buf.push(false, &data),
                        ExecOutput::Stderr { data, .. } => buf.push(true, &data),
                        ExecOutput::Exited(st) => {
                            return Ok::<_, hull_proto::client::ClientError>(st);
                        }
                    }
                }
            };
            let st = tokio::select! {
                r = run => r?,
                never = keep_active(&e) => match never {},
            };
            Ok((buf.out, buf.err, buf.truncated, st))
        };
        let (out, err, truncated, status) = match deadline {
            Some(d) => tokio::time::timeout(d, collect).await.map_err(|_| {
                ApiError::unavailable(format!("the guest agent of sandbox {sid} did not report the command's end after its timeout"))
            })?,
            None => collect.await,
        }
        .map_err(|err| guest_error(&sid, err))?;
        let mut result = self.result_of(&e, status, oom_before);
        result.stdout = String::from_utf8_lossy(&out).into_owned();
        result.stderr = String::from_utf8_lossy(&err).into_owned();
        result.truncated = truncated;
        self.touch(&e);
        Ok(result)
    }

    /// Start a command in the background; it keeps running after the call.
    pub async fn exec_background(
        &self,
        id: &str,
        req: ExecRequest,
    ) -> Result<ProcessStarted, ApiError> {
        validate(&req)?;
        let (e, c) = self.running_client(id, "exec in")?;
        let mut req = req;
        req.background = true;
        let h = c
            .exec(spec(&req, false))
            .await
            .map_err(|err| guest_error(&e.id(), err))?;
        Ok(ProcessStarted {
            id: h.id.clone(),
            pid: h.pid,
        })
    }

    /// Start a command and stream its events; stdin and signals go through `input`.
    pub async fn exec_stream(&self, id: &str, req: ExecRequest) -> Result<ExecStream, ApiError> {
        validate(&req)?;
        let (e, c) = self.running_client(id, "exec in")?;
        let mut req = req;
        req.background = false;
        let oom_before = self.host.oom_kills(&e.id());
        let mut h = c
            .exec(spec(&req, true))
            .await
            .map_err(|err| guest_error(&e.id(), err))?;
        if let Some(s) = &req.stdin {
            h.stdin(s.as_bytes())
                .await
                .map_err(|err| guest_error(&e.id(), err))?;
        }
        Ok(self.pump(e, h, oom_before))
    }

    /// Reattach to a background process: its buffered output, then live output.
    pub async fn attach(&self, id: &str, process: &str) -> Result<ExecStream, ApiError> {
        if process.is_empty() || process.len() > 64 {
            return Err(ApiError::not_found(format!("no process {process:?}")));
        }
        let (e, c) = self.running_client(id, "attach to")?;
        let oom_before = self.host.oom_kills(&e.id());
        let h = c
            .attach(process, true)
            .await
            .map_err(|err| guest_error(&e.id(), err))?;
        Ok(self.pump(e, h, oom_before))
    }

    /// Relay one exec connection: guest output to `events`, `input` to the guest.
    fn pump(&self, e: std::sync::Arc<Entry>, h: ExecHandle, oom_before: u64) -> ExecStream {
        let (ev_tx, ev_rx) = mpsc::channel::<ExecEvent>(64);
        let (in_tx, mut in_rx) = mpsc::channel::<ExecClientMessage>(64);
        let sid = e.id();
        let (mut input, mut output) = h.split();
        let _ = ev_tx.try_send(ExecEvent::Started {
            id: output.id.clone(),
            pid: output.pid,
        });
        // Input: client messages to the guest. Ends with the client or the
        // process, or is ended by the output task below.
        let input_task = tokio::spawn(async move {
            while let Some(msg) = in_rx.recv().await {
                let r = match msg {
                    ExecClientMessage::Stdin { data, data_b64 } => {
                        let bytes = match (data, data_b64) {
                            (_, Some(b)) => {
                                match base64::engine::general_purpose::STANDARD.decode(b) {
                                    Ok(v) => v,
                                    Err(_) => continue,
                                }
                            }
                            (Some(t), None) => t.into_bytes(),
                            (None, None) => continue,
                        };
                        input.stdin(&bytes).await
                    }
                    ExecClientMessage::Eof => input.close_stdin().await,
                    ExecClientMessage::Signal { signal } => input.signal(signal).await,
                    ExecClientMessage::Resize { rows, cols } => input.resize(rows, cols).await,
                };
                if r.is_err() {
                    break;
                }
            }
        });
        let rt_host = self.host.clone();
        let store_entry = e.clone();
        let runtime_oom = move |status: hull_proto::ExitStatus| {
            let killed = status.signal == Some(9) && !status.timed_out;
            let now_kills = rt_host.oom_kills(&store_entry.id());
            ExecResult {
                exit_code: status.code,
                signal: status.signal,
                timed_out: status.timed_out,
                oom_killed: killed && now_kills > oom_before,
                duration_ms: status.duration_ms,
                ..Default::default()
            }
        };
        // Output: guest output to the client, for as long as both are there;
        // meanwhile the sandbox counts as active.
        let active = e;
        tokio::spawn(async move {
            let relay = async {
                loop {
                    let next = tokio::select! {
                        r = output.next() => r,
                        // The client went away, maybe while the command
                        // prints nothing: stop waiting for output.
                        () = ev_tx.closed() => return,
                    };
                    let ev = match next {
                        Ok(ExecOutput::Stdout { ts_micros, data }) => {
                            text_event(true, ts_micros, &data)
                        }
                        Ok(ExecOutput::Stderr { ts_micros, data }) => {
                            text_event(false, ts_micros, &data)
                        }
                        Ok(ExecOutput::Exited(st)) => {
                            let _ = ev_tx.send(ExecEvent::Exit(runtime_oom(st))).await;
                            return;
                        }
                        Err(err) => {
                            let _ = ev_tx
                                .send(ExecEvent::Error {
                                    error: guest_error(&sid, err),
                                })
                                .await;
                            return;
                        }
                    };
                    if ev_tx.send(ev).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                () = relay => {}
                never = keep_active(&active) => match never {},
            }
            // Both halves of the guest connection go: the guest sees it
            // close and kills a foreground process still running.
            drop(output);
            input_task.abort();
        });
        ExecStream {
            events: ev_rx,
            input: in_tx,
        }
    }
}

/// A process's working directory (no NUL, at most 4096 bytes) and user (a
/// name or `uid[:gid]`: 1 to 64 bytes, no NUL, `/` or newline), as exec
/// and shell sessions take them.
pub(crate) fn check_cwd_user(cwd: Option<&str>, user: Option<&str>) -> Result<(), ApiError> {
    if let Some(c) = cwd
        && (c.contains('\0') || c.len() > 4096)
    {
        return Err(ApiError::invalid("cwd must be a path without NUL"));
    }
    if let Some(u) = user
        && (u.is_empty() || u.len() > 64 || u.contains(['\0', '/', '\n']))
    {
        return Err(ApiError::invalid(format!("invalid user {u:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_an_exact_prefix() {
        let mut b = Buffered::default();
        b.push(false, &vec![b'o'; EXEC_OUTPUT_LIMIT - 20]);
        b.push(true, b"0123456789");
        assert!(!b.truncated);
        // Crosses the budget: the part that fits is kept.
        b.push(false, b"abcdefghijklmnop");
        assert!(b.truncated);
        assert_eq!(b.out.len() + b.err.len(), EXEC_OUTPUT_LIMIT);
        assert!(b.out.ends_with(b"oabcdefghij"));
        // Nothing after it, however small.
        b.push(true, b"x");
        b.push(false, b"");
        assert_eq!(b.err, b"0123456789");
        assert_eq!(b.out.len() + b.err.len(), EXEC_OUTPUT_LIMIT);
    }
}
