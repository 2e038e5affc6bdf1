//! Code-interpreter contexts in a sandbox: Jupyter kernels kept by the
//! guest agent (see the guest's `kernel` module), passed through with the
//! API's error kinds.
//!
//! A context outlives host connections (the guest keeps it). A sandbox
//! counts as active while a run is in progress. The daemon waits past a
//! run's own timeout for at most [`REPLY_GRACE`] before it reports the
//! guest unavailable.
//!
//! A streamed run ([`Runtime::code_run_stream`]) relays each output as a
//! [`CodeEvent`] as the guest reports it; dropping the receiver closes the
//! guest connection, which interrupts the code (the context stays usable).
//! A guest older than protocol version 4 cannot stream: its run is done
//! buffered and its outputs come as events at the end.

use std::time::Duration;

use hull_api::{
    ApiError, CodeContext, CodeContextRequest, CodeContexts, CodeEvent, CodeRunError,
    CodeRunRequest, CodeRunResult,
};
use hull_proto::client::{ClientError, CodeStreamItem};
use hull_proto::{
    CodeError, CodeOutput, CodeRunDone, CodeRunSpec, DEFAULT_CODE_TIMEOUT_MS, MAX_CODE_INPUT,
    valid_session_name,
};
use tokio::sync::mpsc;

use crate::exec::keep_active;
use crate::{Runtime, guest_error};

/// Extra time the daemon waits past a run's timeout (the interrupt's
/// grace is 5 s of it), and the bound of the other calls (a kernel's start
/// takes up to 20 s).
const REPLY_GRACE: Duration = Duration::from_secs(30);
/// Longest timeout a run may ask for (one day).
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// The context `code_run_default` uses when the request names none.
pub const DEFAULT_CONTEXT: &str = "default";

fn check_context(name: &str) -> Result<(), ApiError> {
    if valid_session_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid context name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ . -"
        )))
    }
}

/// A run's context name, code size and timeout.
fn check_run(context: &str, req: &CodeRunRequest) -> Result<(), ApiError> {
    check_context(context)?;
    if req.code.len() > MAX_CODE_INPUT {
        return Err(ApiError::invalid(format!(
            "the code is {} bytes; the limit is {MAX_CODE_INPUT}",
            req.code.len()
        )));
    }
    if let Some(t) = req.timeout_ms
        && (t == 0 || t > MAX_TIMEOUT_MS)
    {
        return Err(ApiError::invalid(format!(
            "timeout_ms {t} must be between 1 and {MAX_TIMEOUT_MS} milliseconds"
        )));
    }
    Ok(())
}

fn run_error(e: CodeError) -> CodeRunError {
    CodeRunError {
        name: e.name,
        value: e.value,
        traceback: e.traceback,
    }
}

fn output_event(o: CodeOutput) -> CodeEvent {
    match o {
        CodeOutput::Stdout { text } => CodeEvent::Stdout { text },
        CodeOutput::Stderr { text } => CodeEvent::Stderr { text },
        CodeOutput::Result {
            data,
            execution_count,
        } => CodeEvent::Result {
            data,
            execution_count,
        },
        CodeOutput::Display { data } => CodeEvent::Display { data },
        CodeOutput::Error(e) => CodeEvent::Exception(run_error(e)),
    }
}

fn end_event(d: &CodeRunDone) -> CodeEvent {
    CodeEvent::End {
        execution_count: d.execution_count,
        timed_out: d.timed_out,
        truncated: d.truncated,
    }
}

/// The events of a buffered run (a guest that cannot stream): all at once.
fn buffered_events(d: CodeRunDone) -> Vec<CodeEvent> {
    let mut v = Vec::new();
    if !d.stdout.is_empty() {
        v.push(CodeEvent::Stdout {
            text: d.stdout.clone(),
        });
    }
    if !d.stderr.is_empty() {
        v.push(CodeEvent::Stderr {
            text: d.stderr.clone(),
        });
    }
    // Results and displays are not told apart in a buffered run.
    for data in d.results.iter().cloned() {
        v.push(CodeEvent::Display { data });
    }
    if let Some(e) = d.error.clone() {
        v.push(CodeEvent::Exception(run_error(e)));
    }
    v.push(end_event(&d));
    v
}

impl Runtime {
    /// Start a code-interpreter context (a Python kernel) in a running
    /// sandbox.
    pub async fn code_context_create(
        &self,
        id: &str,
        req: CodeContextRequest,
    ) -> Result<CodeContext, ApiError> {
        check_context(&req.context)?;
        let language = req.language.unwrap_or_else(|| "python".into());
        if language != "python" {
            return Err(ApiError::invalid(format!(
                "language {language:?} is not supported: use \"python\""
            )));
        }
        let (e, c) = self.running_client(id, "start a code context in")?;
        let sid = e.id();
        let call = async {
            tokio::select! {
                r = c.kernel_start(&req.context, &language) => r,
                never = keep_active(&e) => match never {},
            }
        };
        let pid = tokio::time::timeout(REPLY_GRACE, call)
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the guest agent of sandbox {sid} did not start the kernel in time"
                ))
            })?
            .map_err(|err| guest_error(&sid, err))?;
        Ok(CodeContext {
            context: req.context,
            language,
            pid,
            alive: true,
        })
    }

    /// Run code in a context and wait for it to finish (or its timeout,
    /// which interrupts it and keeps the context's state).
    pub async fn code_run(
        &self,
        id: &str,
        context: &str,
        req: CodeRunRequest,
    ) -> Result<CodeRunResult, ApiError> {
        check_run(context, &req)?;
        let (e, c) = self.running_client(id, "run code in")?;
        let sid = e.id();
        let bound =
            Duration::from_millis(req.timeout_ms.unwrap_or(DEFAULT_CODE_TIMEOUT_MS)) + REPLY_GRACE;
        let spec = CodeRunSpec {
            context: context.to_string(),
            code: req.code,
            timeout_ms: req.timeout_ms,
        };
        let call = async {
            tokio::select! {
                r = c.code_run(spec) => r,
                never = keep_active(&e) => match never {},
            }
        };
        let d = tokio::time::timeout(bound, call)
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the guest agent of sandbox {sid} did not report the run's end after its timeout"
                ))
            })?
            .map_err(|err| guest_error(&sid, err))?;
        self.touch(&e);
        Ok(CodeRunResult {
            stdout: d.stdout,
            stderr: d.stderr,
            results: d.results,
            error: d.error.map(run_error),
            execution_count: d.execution_count,
            timed_out: d.timed_out,
            truncated: d.truncated,
        })
    }

    /// Run code in `req.context` (or `default`), creating that context on
    /// first use.
    pub async fn code_run_default(
        &self,
        id: &str,
        mut req: CodeRunRequest,
    ) -> Result<CodeRunResult, ApiError> {
        let context = req
            .context
            .take()
            .unwrap_or_else(|| DEFAULT_CONTEXT.to_string());
        check_run(&context, &req)?;
        self.ensure_context(id, &context).await?;
        self.code_run(id, &context, req).await
    }

    /// Start `context` unless it exists.
    async fn ensure_context(&self, id: &str, context: &str) -> Result<(), ApiError> {
        let exists = self
            .code_contexts(id)
            .await?
            .contexts
            .iter()
            .any(|c| c.context == context);
        if !exists {
            let create = CodeContextRequest {
                context: context.to_string(),
                language: None,
            };
            match self.code_context_create(id, create).await {
                Ok(_) => {}
                // Created by a concurrent call: use it.
                Err(e) if e.kind == hull_api::ErrorKind::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Run code in a context and stream its outputs as the kernel produces
    /// them: returns once the run is under way (an unknown context, a bad
    /// request or a stopped sandbox is an error here); the events end with
    /// `end` (or `error`). Dropping the receiver interrupts the code.
    pub async fn code_run_stream(
        &self,
        id: &str,
        context: &str,
        req: CodeRunRequest,
    ) -> Result<mpsc::Receiver<CodeEvent>, ApiError> {
        check_run(context, &req)?;
        let (e, c) = self.running_client(id, "run code in")?;
        let sid = e.id();
        let started = tokio::time::Instant::now();
        let bound =
            Duration::from_millis(req.timeout_ms.unwrap_or(DEFAULT_CODE_TIMEOUT_MS)) + REPLY_GRACE;
        let spec = CodeRunSpec {
            context: context.to_string(),
            code: req.code,
            timeout_ms: req.timeout_ms,
        };
        let late = move || {
            ApiError::unavailable(format!(
                "the guest agent of sandbox {sid} did not report the run's end after its timeout"
            ))
        };
        let (tx, rx) = mpsc::channel::<CodeEvent>(64);
        let stream = match tokio::time::timeout(bound, c.code_run_stream(spec.clone())).await {
            Err(_) => return Err(late()),
            Ok(Ok(s)) => Some(s),
            Ok(Err(ClientError::Unsupported { .. })) => None,
            Ok(Err(err)) => return Err(guest_error(&e.id(), err)),
        };
        tokio::spawn(async move {
            let sid = e.id();
            let relay = async {
                let Some(mut stream) = stream else {
                    // An older guest: one buffered run, its events at the end.
                    let evs = match c.code_run(spec).await {
                        Ok(d) => buffered_events(d),
                        Err(err) => vec![CodeEvent::Error {
                            error: guest_error(&sid, err),
                        }],
                    };
                    for ev in evs {
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                    return;
                };
                loop {
                    let next = tokio::select! {
                        r = stream.next() => r,
                        // The client went away: dropping the stream closes
                        // the guest connection, which interrupts the code.
                        () = tx.closed() => return,
                    };
                    let (ev, last) = match next {
                        Ok(CodeStreamItem::Output(o)) => (output_event(o), false),
                        Ok(CodeStreamItem::Done(d)) => (end_event(&d), true),
                        Err(err) => (
                            CodeEvent::Error {
                                error: guest_error(&sid, err),
                            },
                            true,
                        ),
                    };
                    if tx.send(ev).await.is_err() || last {
                        return;
                    }
                }
            };
            let failed = tokio::select! {
                () = relay => false,
                () = tokio::time::sleep_until(started + bound) => true,
                never = keep_active(&e) => match never {},
            };
            if failed {
                let _ = tx.send(CodeEvent::Error { error: late() }).await;
            }
            e.touch();
        });
        Ok(rx)
    }

    /// [`Runtime::code_run_stream`] in `req.context` (or `default`),
    /// creating that context on first use.
    pub async fn code_run_stream_default(
        &self,
        id: &str,
        mut req: CodeRunRequest,
    ) -> Result<mpsc::Receiver<CodeEvent>, ApiError> {
        let context = req
            .context
            .take()
            .unwrap_or_else(|| DEFAULT_CONTEXT.to_string());
        check_run(&context, &req)?;
        self.ensure_context(id, &context).await?;
        self.code_run_stream(id, &context, req).await
    }

    async fn code_simple<T, F>(
        &self,
        id: &str,
        what: &str,
        context: Option<&str>,
        f: impl FnOnce(std::sync::Arc<hull_proto::client::GuestClient>) -> F,
    ) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = Result<T, hull_proto::client::ClientError>>,
    {
        if let Some(c) = context {
            check_context(c)?;
        }
        let (e, c) = self.running_client(id, what)?;
        let sid = e.id();
        tokio::time::timeout(REPLY_GRACE, f(c))
            .await
            .map_err(|_| {
                ApiError::unavailable(format!(
                    "the guest agent of sandbox {sid} did not answer in time"
                ))
            })?
            .map_err(|err| guest_error(&sid, err))
    }

    /// Interrupt what a context is running.
    pub async fn code_interrupt(&self, id: &str, context: &str) -> Result<(), ApiError> {
        let name = context.to_string();
        self.code_simple(id, "interrupt code in", Some(context), |c| async move {
            c.kernel_interrupt(&name).await
        })
        .await
    }

    /// Restart a context's kernel: its state is gone, the name stays.
    pub async fn code_restart(&self, id: &str, context: &str) -> Result<CodeContext, ApiError> {
        let name = context.to_string();
        let pid = self
            .code_simple(
                id,
                "restart a code context in",
                Some(context),
                |c| async move { c.kernel_restart(&name).await },
            )
            .await?;
        Ok(CodeContext {
            context: context.to_string(),
            language: "python".into(),
            pid,
            alive: true,
        })
    }

    /// Stop a context's kernel.
    pub async fn code_context_delete(&self, id: &str, context: &str) -> Result<(), ApiError> {
        let name = context.to_string();
        self.code_simple(
            id,
            "stop a code context in",
            Some(context),
            |c| async move { c.kernel_stop(&name).await },
        )
        .await
    }

    /// The sandbox's code contexts.
    pub async fn code_contexts(&self, id: &str) -> Result<CodeContexts, ApiError> {
        let list = self
            .code_simple(id, "list the code contexts of", None, |c| async move {
                c.kernel_list().await
            })
            .await?;
        Ok(CodeContexts {
            contexts: list
                .into_iter()
                .map(|k| CodeContext {
                    context: k.context,
                    language: k.language,
                    pid: k.pid,
                    alive: k.alive,
                })
                .collect(),
        })
    }
}
