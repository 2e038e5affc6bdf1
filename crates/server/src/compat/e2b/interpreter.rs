//! The E2B code interpreter (port 49999 behind the sandbox URL) on hull's
//! code contexts: `POST /execute` (NDJSON lines `stdout`, `stderr`,
//! `result`, `error`, `number_of_executions`), `POST/GET /contexts`,
//! `DELETE /contexts/{id}`, `POST /contexts/{id}/restart` and
//! `/interrupt`. A run without a context uses hull's `default` context,
//! created on first use.
//!
//! Limits: Python only; outputs arrive when the run ends (hull's runs are
//! not streamed yet), so `on_stdout`-style callbacks fire at the end; a
//! result is marked `is_main_result` when it is the last one that has
//! `text/plain` and no image (hull's result list does not tell
//! `execute_result` from `display_data`); `env_vars` per run are refused;
//! a context's `cwd` is set with `os.chdir` when it is created.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hull_api::{ApiError, CodeContextRequest, CodeRunRequest, CodeRunResult};
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

/// The NDJSON lines of one run.
fn lines(r: CodeRunResult) -> Vec<Value> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut out = Vec::new();
    if !r.stdout.is_empty() {
        out.push(json!({"type": "stdout", "text": r.stdout, "timestamp": ts}));
    }
    if !r.stderr.is_empty() {
        out.push(json!({"type": "stderr", "text": r.stderr, "timestamp": ts}));
    }
    if r.truncated {
        out.push(json!({"type": "stderr", "text": "[hull: output past the run's limit was dropped]\n", "timestamp": ts}));
    }
    let main = r
        .results
        .iter()
        .rposition(|b| b.contains_key("text/plain") && !b.keys().any(|k| k.starts_with("image/")));
    for (i, bundle) in r.results.into_iter().enumerate() {
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
        v.insert("is_main_result".into(), json!(Some(i) == main));
        out.push(Value::Object(v));
    }
    if let Some(e) = r.error {
        out.push(json!({
            "type": "error",
            "name": e.name,
            "value": e.value,
            "traceback": e.traceback.join("\n"),
        }));
    } else if r.timed_out {
        out.push(json!({
            "type": "error",
            "name": "TimeoutError",
            "value": "the run's timeout passed: it was interrupted (the context keeps its state)",
            "traceback": "",
        }));
    }
    if let Some(n) = r.execution_count {
        out.push(json!({"type": "number_of_executions", "execution_count": n}));
    }
    out
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
    let res = match &r.context_id {
        Some(c) => s.app.rt.code_run(sid, c, run).await,
        None => s.app.rt.code_run_default(sid, run).await,
    };
    match res {
        Ok(result) => {
            let mut text = String::new();
            for l in lines(result) {
                text.push_str(&l.to_string());
                text.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response()
        }
        Err(e) => from_api(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_results_become_e2b_lines() {
        let mut plain = Map::new();
        plain.insert("text/plain".into(), json!("42"));
        let mut fig = Map::new();
        fig.insert("image/png".into(), json!("iVBOR"));
        fig.insert("text/plain".into(), json!("<Figure>"));
        fig.insert("application/x-custom".into(), json!({"a": 1}));
        let r = CodeRunResult {
            stdout: "hi\n".into(),
            results: vec![plain, fig],
            execution_count: Some(3),
            ..Default::default()
        };
        let l = lines(r);
        assert_eq!(l[0]["type"], "stdout");
        assert_eq!(l[1]["text"], "42");
        assert_eq!(l[1]["is_main_result"], true);
        assert_eq!(l[2]["png"], "iVBOR");
        assert_eq!(l[2]["is_main_result"], false);
        assert_eq!(l[2]["extra"]["application/x-custom"]["a"], 1);
        assert_eq!(l[3]["execution_count"], 3);
    }
}
