//! The E2B control plane (REST, `E2B_API_URL`): create, list, get, kill,
//! set the timeout, pause, connect (resuming a paused sandbox). Each
//! handler checks the API key, translates the request and calls one or two
//! `Runtime` methods.
//!
//! Mapping: an E2B template is a hull template, except the SDKs' defaults
//! `base` and `code-interpreter-v1`, which are hull's `host` template; the
//! timeout is the TTL (hull's `session` profile: activity pushes it back);
//! metadata are labels; `envVars` the sandbox's environment. Refused with
//! 400 (hull has no such feature): `mcp`, `volumeMounts`, `autoPause`, and
//! network `allowOut`/`denyOut` rules (E2B's precedence rules are not
//! mapped; set a hull policy with `PUT /v1/sandboxes/{id}/network`).
//! `allow_internet_access` picks hull's network mode: `false` -> `none`,
//! `true` -> `open`, absent -> the daemon's default for the `session`
//! profile. Limits: request bodies at most
//! [`MAX_JSON`](crate::MAX_JSON); a list page holds at most 100 sandboxes.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hull_api::{ApiError, CreateSandbox, ErrorKind, Profile, Sandbox, SandboxState};
use serde_json::{Value, json};

use super::{E2b, ENVD_VERSION, api_error, from_api, rfc3339};
use crate::MAX_JSON;

/// The hull template an E2B template name stands for.
fn hull_template(e2b: &str) -> &str {
    match e2b {
        "base" | "code-interpreter-v1" | "code-interpreter" => "host",
        other => other,
    }
}

/// Largest page of a list.
const MAX_PAGE: usize = 100;

fn parse_body(body: &Bytes) -> Result<Value, Response> {
    if body.len() > MAX_JSON {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("request body larger than {} MiB", MAX_JSON >> 20),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(api_error(
            StatusCode::BAD_REQUEST,
            "request body must be a JSON object",
        )),
        Err(e) => Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {e}"),
        )),
    }
}

fn bad(msg: impl Into<String>) -> Response {
    api_error(StatusCode::BAD_REQUEST, msg)
}

/// A map of strings from an optional JSON object field.
fn string_map(v: &Value, field: &str) -> Result<BTreeMap<String, String>, Response> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(bad(format!("{field}.{k} must be a string"))),
            })
            .collect(),
        Some(_) => Err(bad(format!("{field} must be an object of strings"))),
    }
}

/// A timeout in seconds from an optional field.
fn timeout(v: &Value) -> Result<Option<u64>, Response> {
    match v.get("timeout") {
        None | Some(Value::Null) => Ok(None),
        Some(t) => t
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad("timeout must be a whole number of seconds")),
    }
}

/// The create request's features hull does not have, refused by name.
fn refuse_unsupported(v: &Value) -> Result<(), Response> {
    let set = |f: &str| v.get(f).is_some_and(|x| !x.is_null());
    if set("mcp") {
        return Err(bad(
            "mcp is not supported by hull's E2B layer (docs/compat-e2b.md)",
        ));
    }
    if v.get("volumeMounts")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(bad("volumeMounts are not supported by hull's E2B layer"));
    }
    if v.get("autoPause").and_then(Value::as_bool) == Some(true) {
        return Err(bad(
            "autoPause is not supported: a hull sandbox is destroyed at its timeout",
        ));
    }
    for rule in ["allowOut", "denyOut"] {
        if v.pointer(&format!("/network/{rule}"))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return Err(bad(format!(
                "network.{rule} is not mapped by hull's E2B layer: use allow_internet_access, \
                 or set the sandbox's policy with PUT /v1/sandboxes/{{id}}/network (docs/network.md)"
            )));
        }
    }
    Ok(())
}

/// `Sandbox` (create and connect answers).
fn created(s: &E2b, sb: &Sandbox, template: &str) -> Value {
    let token = s.access_token(&sb.id);
    json!({
        "templateID": template,
        "sandboxID": sb.id,
        "clientID": "hull",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": token,
        "trafficAccessToken": token,
        "alias": template,
        "domain": null,
    })
}

fn e2b_state(st: SandboxState) -> Option<&'static str> {
    match st {
        SandboxState::Running => Some("running"),
        SandboxState::Paused => Some("paused"),
        SandboxState::Creating
        | SandboxState::Stopping
        | SandboxState::Stopped
        | SandboxState::Failed => None,
    }
}

/// When a sandbox ends: its TTL, or (no TTL) the far future.
fn end_at(sb: &Sandbox) -> String {
    match sb.expires_at {
        Some(t) => rfc3339(t),
        None => "9999-12-31T23:59:59Z".into(),
    }
}

/// `ListedSandbox`, and with `detail` the `SandboxDetail` fields.
fn listed(s: &E2b, sb: &Sandbox, detail: bool) -> Value {
    let mut v = json!({
        "templateID": sb.template,
        "alias": sb.template,
        "sandboxID": sb.id,
        "clientID": "hull",
        "startedAt": rfc3339(sb.created_at),
        "endAt": end_at(sb),
        "cpuCount": sb.limits.cpus.ceil().max(1.0) as u64,
        "memoryMB": sb.limits.memory_bytes >> 20,
        "diskSizeMB": sb.limits.disk_bytes >> 20,
        "state": e2b_state(sb.state).unwrap_or("running"),
        "envdVersion": ENVD_VERSION,
        "metadata": sb.labels,
    });
    if detail {
        v["envdAccessToken"] = json!(s.access_token(&sb.id));
        v["domain"] = Value::Null;
        v["allowInternetAccess"] = json!(sb.network.mode != hull_api::NetworkMode::None);
    }
    v
}

/// `POST /sandboxes`, `POST /v2/sandboxes`.
pub(crate) async fn create(State(s): State<E2b>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = s.check_api_key(&headers) {
        return r;
    }
    let v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(template) = v.get("templateID").and_then(Value::as_str) else {
        return bad("templateID is required");
    };
    if let Err(r) = refuse_unsupported(&v) {
        return r;
    }
    let (labels, env, ttl) = match (
        string_map(&v, "metadata"),
        string_map(&v, "envVars"),
        timeout(&v),
    ) {
        (Ok(l), Ok(e), Ok(t)) => (l, e, t),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let req = CreateSandbox {
        template: Some(hull_template(template).to_string()),
        profile: Some(Profile::Session),
        labels,
        env,
        // E2B's default is 300 s.
        ttl_seconds: Some(ttl.unwrap_or(300)),
        // `allow_internet_access=False`: no network at all (also the
        // cheapest create: no namespace from the pool, no firewall state);
        // `True`: full egress; absent: the profile's default.
        network: match v.get("allow_internet_access").and_then(Value::as_bool) {
            Some(false) => Some(hull_api::NetworkPolicy::none()),
            Some(true) => Some(hull_api::NetworkPolicy::open()),
            None => None,
        },
        ..Default::default()
    };
    match s.app.rt.create(req).await {
        Ok(sb) => (StatusCode::CREATED, axum::Json(created(&s, &sb, template))).into_response(),
        Err(e) => from_api(e),
    }
}

/// Decode `application/x-www-form-urlencoded` text.
fn pct_decode(s: &str) -> String {
    let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `metadata` filter: `k=v&k2=v2`, keys and values percent-encoded.
fn metadata_filter(m: &str) -> Result<BTreeMap<String, String>, Response> {
    let mut out = BTreeMap::new();
    for pair in m.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("metadata filter {pair:?} must be key=value")))?;
        out.insert(pct_decode(&pct_decode(k)), pct_decode(&pct_decode(v)));
    }
    Ok(out)
}

/// `GET /sandboxes`, `GET /v2/sandboxes`: running and paused sandboxes,
/// filtered by `metadata`, `state`, `template`; paged by `limit` and
/// `nextToken` (the `x-next-token` header names the next page).
pub(crate) async fn list(
    State(s): State<E2b>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = s.check_api_key(&headers) {
        return r;
    }
    let labels = match q.get("metadata").map(|m| metadata_filter(m)).transpose() {
        Ok(l) => l.unwrap_or_default(),
        Err(r) => return r,
    };
    let states: Vec<String> = match q.get("state") {
        Some(st) => {
            let v: Vec<String> = st.split(',').map(|x| x.trim().to_string()).collect();
            if let Some(bad_state) = v.iter().find(|x| *x != "running" && *x != "paused") {
                return bad(format!(
                    "unknown state {bad_state:?}: use running and/or paused"
                ));
            }
            v
        }
        None => vec!["running".into(), "paused".into()],
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => MAX_PAGE,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => return bad(format!("limit must be 1 to {MAX_PAGE}")),
    };
    let desc = match q.get("order").map(String::as_str) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => return bad(format!("order {o:?} must be asc or desc")),
    };
    let mut all = match s.app.rt.list(&labels).await {
        Ok(v) => v,
        Err(e) => return from_api(e),
    };
    all.retain(|sb| {
        e2b_state(sb.state).is_some_and(|st| states.iter().any(|x| x == st))
            && q.get("template")
                .is_none_or(|t| hull_template(t) == sb.template)
    });
    all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    if desc {
        all.reverse();
    }
    if let Some(tok) = q.get("nextToken") {
        match all.iter().position(|sb| &sb.id == tok) {
            Some(i) => {
                all.drain(..=i);
            }
            None => return bad(format!("nextToken {tok:?} is not from a previous page")),
        }
    }
    let more = all.len() > limit;
    all.truncate(limit);
    let body: Vec<Value> = all.iter().map(|sb| listed(&s, sb, false)).collect();
    let mut resp = axum::Json(body).into_response();
    if more
        && let Some(last) = all.last()
        && let Ok(v) = HeaderValue::from_str(&last.id)
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    resp
}

/// A missing sandbox is a 404 on the control plane.
fn lookup_error(e: ApiError) -> Response {
    if e.kind == ErrorKind::NotFound {
        api_error(StatusCode::NOT_FOUND, e.message)
    } else {
        from_api(e)
    }
}

/// `GET /sandboxes/{id}`.
pub(crate) async fn get_info(
    State(s): State<E2b>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = s.check_api_key(&headers) {
        return r;
    }
    match s.app.rt.get(&id).await {
        Ok(sb) if e2b_state(sb.state).is_some() => {
            axum::Json(listed(&s, &sb, true)).into_response()
        }
        Ok(sb) => api_error(
            StatusCode::NOT_FOUND,
            format!(
                "sandbox {id} is {} (E2B knows running and paused sandboxes)",
                sb.state
            ),
        ),
        Err(e) => lookup_error(e),
    }
}

/// `DELETE /sandboxes/{id}`.
pub(crate) async fn kill(
    State(s): State<E2b>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = s.check_api_key(&headers) {
        return r;
    }
    match s.app.rt.destroy(&id).await {
        Ok(()) => {
            s.procs.forget_sandbox(&id);
            s.watchers.forget_sandbox(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => lookup_error(e),
    }
}

/// `POST /sandboxes/{id}/timeout` `{"timeout": seconds}`: the sandbox ends
/// that long from now.
pub(crate) async fn set_timeout(
    State(s): State<E2b>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = s.check_api_key(&headers) {
        return r;
    }
    let v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let t = match timeout(&v) {
        Ok(Some(t)) => t,
        Ok(None) => return bad("timeout is required"),
        Err(r) => return r,
    };
    match s.app.rt.set_ttl(&id, t).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => lookup_error(e),
    }
}

/// `POST /sandboxes/{id}/pause`: freeze it; 409 when it is not running.
pub(crate) async fn pause(
    State(s): State<E2b>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = s.check_api_key(&headers) {
        return r;
    }
    match s.app.rt.pause(&id).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => lookup_error(e),
    }
}

/// `POST /v2/sandboxes/{id}/connect` (and the older `/sandboxes/{id}/connect`,
/// `/resume`): resume a paused sandbox (201), or answer for a running one
/// (200); a `timeout` extends its life, never shortens it.
pub(crate) async fn connect(
    State(s): State<E2b>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = s.check_api_key(&headers) {
        return r;
    }
    let v = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let t = match timeout(&v) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut sb = match s.app.rt.get(&id).await {
        Ok(sb) => sb,
        Err(e) => return lookup_error(e),
    };
    let status = match sb.state {
        SandboxState::Running => StatusCode::OK,
        SandboxState::Paused => match s.app.rt.resume(&id).await {
            Ok(r) => {
                sb = r;
                StatusCode::CREATED
            }
            Err(e) => return lookup_error(e),
        },
        other => {
            return api_error(
                StatusCode::NOT_FOUND,
                format!("sandbox {id} is {other}: it cannot be connected to"),
            );
        }
    };
    if let Some(t) = t {
        let want = hull_runtime_now() + t;
        if sb.expires_at.is_some_and(|e| e < want)
            && let Err(e) = s.app.rt.set_ttl(&id, t).await
        {
            return lookup_error(e);
        }
    }
    (status, axum::Json(created(&s, &sb, &sb.template))).into_response()
}

fn hull_runtime_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_filters() {
        assert_eq!(hull_template("base"), "host");
        assert_eq!(hull_template("code-interpreter-v1"), "host");
        assert_eq!(hull_template("busybox"), "busybox");
        let m = metadata_filter("a=b&c%2520d=e%2526f").unwrap();
        assert_eq!(m.get("a").map(String::as_str), Some("b"));
        assert_eq!(m.get("c d").map(String::as_str), Some("e&f"));
        assert!(metadata_filter("novalue").is_err());
    }

    #[test]
    fn unsupported_features_are_refused() {
        assert!(refuse_unsupported(&json!({"templateID": "base"})).is_ok());
        assert!(refuse_unsupported(&json!({"mcp": null, "autoPause": false})).is_ok());
        for v in [
            json!({"mcp": {"x": 1}}),
            json!({"autoPause": true}),
            json!({"volumeMounts": [{"name": "v", "path": "/v"}]}),
            json!({"network": {"allowOut": ["1.1.1.1"]}}),
            json!({"network": {"denyOut": ["0.0.0.0/0"]}}),
        ] {
            assert!(refuse_unsupported(&v).is_err(), "{v}");
        }
    }
}
