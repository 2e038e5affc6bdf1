//! Shell sessions in a sandbox: persistent `bash` sessions kept by the
//! guest agent (see the guest's `shell` module for how commands, markers
//! and interrupts work), passed through with the API's error kinds.
//!
//! A session outlives host connections and daemon restarts (the guest keeps
//! it). A sandbox counts as active while a call runs. The daemon waits past
//! a call's own timeout for at most [`REPLY_GRACE`] before it reports the
//! guest unavailable.

use std::time::Duration;

use hull_api::{
    ApiError, ShellOpenRequest, ShellOpened, ShellRunRequest, ShellRunResult, ShellSendRequest,
    ShellSendResult, ShellSession, ShellSessions,
};
use hull_proto::{
    MAX_SHELL_INPUT, MAX_SHELL_OUTPUT, ShellOpenSpec, ShellRunSpec, ShellSendSpec,
    valid_session_name,
};

use crate::exec::keep_active;
use crate::{Runtime, guest_error};

/// Extra time the daemon waits past a call's timeout (the guest's
/// interrupt steps take up to 2 s of it).
const REPLY_GRACE: Duration = Duration::from_secs(15);
/// The guest's defaults, for the daemon's own bound.
const RUN_TIMEOUT_MS: u64 = 600_000;
const SEND_TIMEOUT_MS: u64 = 30_000;
/// Longest timeout a call may ask for (one day).
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

fn check_session(name: &str) -> Result<(), ApiError> {
    if valid_session_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid session name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ . -"
        )))
    }
}

fn check_timeout(what: &str, ms: Option<u64>) -> Result<(), ApiError> {
    match ms {
        Some(t) if t == 0 || t > MAX_TIMEOUT_MS => Err(ApiError::invalid(format!(
            "{what} {t} must be between 1 and {MAX_TIMEOUT_MS} milliseconds"
        ))),
        _ => Ok(()),
    }
}

fn check_output(max: Option<u64>) -> Result<(), ApiError> {
    match max {
        Some(m) if m == 0 || m > MAX_SHELL_OUTPUT => Err(ApiError::invalid(format!(
            "max_output {m} must be between 1 and {MAX_SHELL_OUTPUT} bytes"
        ))),
        _ => Ok(()),
    }
}

fn check_text(what: &str, s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_SHELL_INPUT {
        return Err(ApiError::invalid(format!(
            "{what} is {} bytes; the limit is {MAX_SHELL_INPUT}",
            s.len()
        )));
    }
    if s.contains('\0') {
        return Err(ApiError::invalid(format!(
            "{what} cannot contain NUL bytes"
        )));
    }
    Ok(())
}

impl Runtime {
    /// Start a named `bash` session in a running sandbox.
    pub async fn shell_open(
        &self,
        id: &str,
        req: ShellOpenRequest,
    ) -> Result<ShellOpened, ApiError> {
        check_session(&req.session)?;
        crate::validate_env(&req.env)?;
        crate::exec::check_cwd_user(req.cwd.as_deref(), req.user.as_deref())?;
        let (e, c) = self.running_client(id, "open a shell in")?;
        let sid = e.id();
        let spec = ShellOpenSpec {
            session: req.session.clone(),
            cwd: req.cwd,
            env: req.env.into_iter().collect(),
            user: req.user,
        };
        let pid = tokio::time::timeout(REPLY_GRACE, c.shell_open(spec))
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the guest agent of sandbox {sid} did not start the shell in time"
                ))
            })?
            .map_err(|err| guest_error(&sid, err))?;
        Ok(ShellOpened {
            session: req.session,
            pid,
        })
    }

    /// Run one command in a session and wait for its end (or its timeout,
    /// which interrupts it and keeps the session).
    pub async fn shell_run(
        &self,
        id: &str,
        session: &str,
        req: ShellRunRequest,
    ) -> Result<ShellRunResult, ApiError> {
        check_session(session)?;
        check_text("the command", &req.command)?;
        check_timeout("timeout_ms", req.timeout_ms)?;
        check_timeout("idle_timeout_ms", req.idle_timeout_ms)?;
        check_output(req.max_output)?;
        let (e, c) = self.running_client(id, "run a shell command in")?;
        let sid = e.id();
        let bound = Duration::from_millis(req.timeout_ms.unwrap_or(RUN_TIMEOUT_MS)) + REPLY_GRACE;
        let spec = ShellRunSpec {
            session: session.to_string(),
            command: req.command,
            timeout_ms: req.timeout_ms,
            idle_timeout_ms: req.idle_timeout_ms,
            max_output: req.max_output,
        };
        let call = async {
            tokio::select! {
                r = c.shell_run(spec) => r,
                never = keep_active(&e) => match never {},
            }
        };
        let (output, d) = tokio::time::timeout(bound, call)
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the guest agent of sandbox {sid} did not report the command's end after its timeout"
                ))
            })?
            .map_err(|err| guest_error(&sid, err))?;
        self.touch(&e);
        Ok(ShellRunResult {
            output,
            exit_code: d.exit_code,
            timed_out: d.timed_out,
            idle_timed_out: d.idle_timed_out,
            truncated: d.truncated,
            cwd: d.cwd,
            shell_replaced: d.shell_replaced,
            session_ended: d.session_ended,
            duration_ms: d.duration_ms,
        })
    }

    /// Type into a session's terminal and collect the output that follows.
    pub async fn shell_send(
        &self,
        id: &str,
        session: &str,
        req: ShellSendRequest,
    ) -> Result<ShellSendResult, ApiError> {
        check_session(session)?;
        check_text("input", &req.input)?;
        check_timeout("timeout_ms", req.timeout_ms)?;
        check_output(req.max_output)?;
        if let Some(p) = &req.expect
            && p.len() > 4096
        {
            return Err(ApiError::invalid(
                "the expect pattern is limited to 4096 bytes",
            ));
        }
        let (e, c) = self.running_client(id, "type into a shell in")?;
        let sid = e.id();
        let bound = Duration::from_millis(req.timeout_ms.unwrap_or(SEND_TIMEOUT_MS)) + REPLY_GRACE;
        let spec = ShellSendSpec {
            session: session.to_string(),
            input: req.input,
            expect: req.expect,
            timeout_ms: req.timeout_ms,
            max_output: req.max_output,
        };
        let call = async {
            tokio::select! {
                r = c.shell_send(spec) => r,
                never = keep_active(&e) => match never {},
            }
        };
        let (output, d) = tokio::time::timeout(bound, call)
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the guest agent of sandbox {sid} did not answer a shell input in time"
                ))
            })?
            .map_err(|err| guest_error(&sid, err))?;
        self.touch(&e);
        Ok(ShellSendResult {
            output,
            matched: d.matched,
            timed_out: d.timed_out,
            truncated: d.truncated,
            session_ended: d.session_ended,
        })
    }

    /// End a session and every process it started.
    pub async fn shell_close(&self, id: &str, session: &str) -> Result<(), ApiError> {
        check_session(session)?;
        let (e, c) = self.running_client(id, "close a shell in")?;
        let sid = e.id();
        tokio::time::timeout(REPLY_GRACE, c.shell_close(session))
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the guest agent of sandbox {sid} did not close the shell in time"
                ))
            })?
            .map_err(|err| guest_error(&sid, err))
    }

    /// The sandbox's shell sessions.
    pub async fn shell_list(&self, id: &str) -> Result<ShellSessions, ApiError> {
        let (e, c) = self.running_client(id, "list the shells of")?;
        let sid = e.id();
        let sessions = tokio::time::timeout(REPLY_GRACE, c.shell_list())
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the guest agent of sandbox {sid} did not list its shells in time"
                ))
            })?
            .map_err(|err| guest_error(&sid, err))?;
        Ok(ShellSessions {
            sessions: sessions
                .into_iter()
                .map(|s| ShellSession {
                    session: s.session,
                    pid: s.pid,
                    cwd: s.cwd,
                    busy: s.busy,
                    started_micros: s.started_micros,
                })
                .collect(),
        })
    }
}
