//! The E2B code interpreter (port 49999 behind the sandbox URL) on hull's
//! code contexts: `POST /execute` (NDJSON lines `stdout`, `stderr`,
//! `result`, `error`, `number_of_executions`), `POST/GET /contexts`,
//! `DELETE /contexts/{id}`, `POST /contexts/{id}/restart` and
//! `/interrupt`. A run without a context uses hull's `default` context,
//! created on first use.
//!
//! Runs are streamed (hull's `code_run_stream`): each output is a line as
//! the kernel produces it, so the SDK's `on_stdout` / `on_stderr` /
//! `on_result` callbacks fire while the code runs; the `execute_result`
//! is the `is_main_result`, `display_data` outputs are not. A client that
//! disconnects (the SDK's `timeout`) interrupts the code.
//!
//! Limits: Python only; `env_vars` per run are refused; a context's `cwd`
//! is set with `os.chdir` when it is created.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hull_api::{ApiError, CodeContextRequest, CodeEvent, CodeRunRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{E2b, api_error, from_api};
use crate::MAX_JSON;

#[derive(Debug, Default, Deserialize)]
struct ExecuteRequest {
    #[serde(default)]
    code: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct ContextRequest {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

async fn body<T: for<'de> Deserialize<'de> + Default>(b: Body) -> Result<T, Response> {
    let bytes = axum::body::to_bytes(b, MAX_JSON).await.map_err(|_| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!(
                "request body unreadable or larger than {} MiB",
                MAX_JSON >> 20
            ),
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn python_only(language: Option<&str>) -> Result<(), Response> {
    match language {
        None | Some("python") | Some("python3") => Ok(()),
        Some(l) => Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("language {l:?} is not supported: hull's code interpreter runs Python"),
        )),
    }
}

/// One call to the code interpreter.
pub(crate) async fn call(s: E2b, sid: String, rest: String, req: Request) -> Response {
    let method = req.method().clone();
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let b = req.into_body();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["health"]) => (StatusCode::OK, "OK").into_response(),
        (&Method::POST, ["execute"]) => match body::<ExecuteRequest>(b).await {
            Ok(r) => execute(&s, &sid, r).await,
            Err(r) => r,
        },
        (&Method::POST, ["contexts"]) => match body::<ContextRequest>(b).await {
            Ok(r) => create_context(&s, &sid, r).await,
            Err(r) => r,
        },
        (&Method::GET, ["contexts"]) => match s.app.rt.code_contexts(&sid).await {
            Ok(list) => {
                let v: Vec<Value> = list
                    .contexts
                    .iter()
                    .map(|c| json!({"id": c.context, "language": c.language, "cwd": "/root"}))
                    .collect();
                axum::Json(v).into_response()
            }
            Err(e) => from_api(e),
        },
        (&Method::DELETE, ["contexts", id]) => match s.app.rt.code_context_delete(&sid, id).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => from_api(e),
        },
        (&Method::POST, ["contexts", id, "restart"]) => match s.app.rt.code_restart(&sid, id).await
        {
            Ok(_) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => from_api(e),
        },
        (&Method::POST, ["contexts", id, "interrupt"]) => {
            match s.app.rt.code_interrupt(&sid, id).await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => from_api(e),
            }
        }
        _ => api_error(
            StatusCode::NOT_FOUND,
            format!("the code interpreter has no route {method} /{rest} in hull"),
        ),
    }
}

/// A fresh context id: 32 hex digits.
fn new_context_id() -> Result<String, ApiError> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)
        .map_err(|e| ApiError::internal(format!("no randomness for a context id: {e}")))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

async fn create_context(s: &E2b, sid: &str, r: ContextRequest) -> Response {
    if let Err(resp) = python_only(r.language.as_deref()) {
        return resp;
    }
    let id = match new_context_id() {
        Ok(id) => id,
        Err(e) => return from_api(e),
    };
    let req = CodeContextRequest {
        context: id.clone(),
        language: None,
    };
    if let Err(e) = s.app.rt.code_context_create(sid, req).await {
        return from_api(e);
    }
    let cwd = r.cwd.filter(|c| !c.is_empty());
    if let Some(c) = &cwd {
        let code = format!(
            "import os as _hull_os; _hull_os.chdir({}); del _hull_os",
            serde_json::to_string(c).unwrap_or_default()
        );
        let run = CodeRunRequest {
            code,
            timeout_ms: Some(30_000),
            context: None,
        };
        match s.app.rt.code_run(sid, &id, run).await {
            Ok(res) if res.error.is_none() => {}
            Ok(res) => {
                let _ = s.app.rt.code_context_delete(sid, &id).await;
                let why = res.error.map(|e| format!("{}: {}", e.name, e.value));
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot use cwd {c:?}: {}", why.unwrap_or_default()),
                );
            }
            Err(e) => return from_api(e),
        }
    }
    axum::Json(json!({
        "id": id,
        "language": "python",
        "cwd": cwd.unwrap_or_else(|| "/root".into()),
    }))
    .into_response()
}

/// The field of E2B's `Result` for a MIME type, if it has one.
fn field_of(mime: &str) -> Option<&'static str> {
    Some(match mime {
        "text/plain" => "text",
        "text/html" => "html",
        "text/markdown" => "markdown",
        "image/svg+xml" => "svg",
        "image/png" => "png",
        "image/jpeg" => "jpeg",
        "application/pdf" => "pdf",
        "text/latex" => "latex",
        "application/json" => "json",
        "application/javascript" => "javascript",
        _ => return None,
    })
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// An E2B `result` line for a MIME bundle.
fn result_line(bundle: Map<String, Value>, main: bool) -> Value {
    let mut v = Map::new();
    v.insert("type".into(), json!("result"));
    let mut extra = Map::new();
    for (mime, data) in bundle {
        match field_of(&mime) {
            Some(f) => {
                v.insert(f.into(), data);
            }
            None => {
                extra.insert(mime, data);
            }
        }
    }
    if !extra.is_empty() {
        v.insert("extra".into(), Value::Object(extra));
    }
    v.insert("is_main_result".into(), json!(main));
    Value::Object(v)
}

/// The E2B lines for one event of a streamed run. `raised` remembers
/// whether the code raised, so that a timeout adds no second error.
fn event_lines(ev: CodeEvent, raised: &mut bool) -> Vec<Value> {
    let ts = now_micros();
    match ev {
        CodeEvent::Stdout { text } => {
            vec![json!({"type": "stdout", "text": text, "timestamp": ts})]
        }
        CodeEvent::Stderr { text } => {
            vec![json!({"type": "stderr", "text": text, "timestamp": ts})]
        }
        // The `execute_result` (the value of the last expression) is the
        // main result; `display_data` outputs are not.
        CodeEvent::Result { data, .. } => vec![result_line(data, true)],
        CodeEvent::Display { data } => vec![result_line(data, false)],
        CodeEvent::Exception(e) => {
            *raised = true;
            vec![json!({
                "type": "error",
                "name": e.name,
                "value": e.value,
                "traceback": e.traceback.join("\n"),
            })]
        }
        CodeEvent::End {
            execution_count,
            timed_out,
            truncated,
        } => {
            let mut out = Vec::new();
            if truncated {
                out.push(json!({"type": "stderr", "text": "[hull: output past the run's limit was dropped]\n", "timestamp": ts}));
            }
            if timed_out && !*raised {
                out.push(json!({
                    "type": "error",
                    "name": "TimeoutError",
                    "value": "the run's timeout passed: it was interrupted (the context keeps its state)",
                    "traceback": "",
                }));
            }
            if let Some(n) = execution_count {
                out.push(json!({"type": "number_of_executions", "execution_count": n}));
            }
            out
        }
        // The run failed in hull (the kernel died, the guest is gone).
        CodeEvent::Error { error } => vec![json!({
            "type": "error",
            "name": format!("hull.{}", error.kind.as_str()),
            "value": error.message,
            "traceback": "",
        })],
    }
}

async fn execute(s: &E2b, sid: &str, r: ExecuteRequest) -> Response {
    if let Err(resp) = python_only(r.language.as_deref()) {
        return resp;
    }
    if r.context_id.is_some() && r.language.is_some() {
        return api_error(
            StatusCode::BAD_REQUEST,
            "give a context_id or a language, not both",
        );
    }
    if r.env_vars.as_ref().is_some_and(|m| !m.is_empty()) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "env_vars per run are not supported by hull: set them in the sandbox (envs) or with os.environ",
        );
    }
    let run = CodeRunRequest {
        code: r.code,
        timeout_ms: None,
        context: None,
    };
    let events = match &r.context_id {
        Some(c) => s.app.rt.code_run_stream(sid, c, run).await,
        None => s.app.rt.code_run_stream_default(sid, run).await,
    };
    let events = match events {
        Ok(rx) => rx,
        Err(e) => return from_api(e),
    };
    // One NDJSON line per output as the kernel produces it. The body owns
    // the receiver: a client that goes away (the SDK's `timeout`) drops
    // it, which interrupts the code.
    let body =
        futures_util::stream::unfold((events, false), |(mut events, mut raised)| async move {
            let ev = events.recv().await?;
            let mut text = Vec::new();
            for l in event_lines(ev, &mut raised) {
                text.extend_from_slice(l.to_string().as_bytes());
                text.push(b'\n');
            }
            Some((
                Ok::<_, std::io::Error>(axum::body::Bytes::from(text)),
                (events, raised),
            ))
        });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_events_become_e2b_lines() {
        let mut raised = false;
        let mut plain = Map::new();
        plain.insert("text/plain".into(), json!("42"));
        let mut fig = Map::new();
        fig.insert("image/png".into(), json!("iVBOR"));
        fig.insert("text/plain".into(), json!("<Figure>"));
        fig.insert("application/x-custom".into(), json!({"a": 1}));
        let l = event_lines(
            CodeEvent::Stdout {
                text: "hi\n".into(),
            },
            &mut raised,
        );
        assert_eq!(
            (l[0]["type"].as_str(), l[0]["text"].as_str()),
            (Some("stdout"), Some("hi\n"))
        );
        let l = event_lines(CodeEvent::Display { data: fig }, &mut raised);
        assert_eq!(l[0]["png"], "iVBOR");
        assert_eq!(l[0]["is_main_result"], false);
        assert_eq!(l[0]["extra"]["application/x-custom"]["a"], 1);
        let l = event_lines(
            CodeEvent::Result {
                data: plain,
                execution_count: Some(3),
            },
            &mut raised,
        );
        assert_eq!(
            (l[0]["text"].as_str(), &l[0]["is_main_result"]),
            (Some("42"), &json!(true))
        );
        let end = || CodeEvent::End {
            execution_count: Some(3),
            timed_out: true,
            truncated: false,
        };
        let l = event_lines(end(), &mut raised);
        assert_eq!(l[0]["name"], "TimeoutError");
        assert_eq!(l[1]["execution_count"], 3);
        // After an exception, a timeout adds no second error.
        let l = event_lines(
            CodeEvent::Exception(hull_api::CodeRunError {
                name: "KeyboardInterrupt".into(),
                value: String::new(),
                traceback: vec!["a".into(), "b".into()],
            }),
            &mut raised,
        );
        assert_eq!(l[0]["traceback"], "a\nb");
        let l = event_lines(end(), &mut raised);
        assert_eq!(l.len(), 1);
        let l = event_lines(
            CodeEvent::Error {
                error: ApiError::unavailable("gone"),
            },
            &mut raised,
        );
        assert_eq!(
            (l[0]["name"].as_str(), l[0]["value"].as_str()),
            (Some("hull.unavailable"), Some("gone"))
        );
    }
}
