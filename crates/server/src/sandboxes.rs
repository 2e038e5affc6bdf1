//! Sandbox resources and the daemon's own: health, version, host info,
//! create/list/get/destroy, pause/resume/stop, TTL, system reset. Each
//! handler is one runtime call. Limits: at most [`MAX_LABEL_FILTERS`] label
//! filters in a list query (as many as a sandbox can carry labels).

use std::collections::BTreeMap;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use hull_api::*;
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiResult, Json, json};

#[utoipa::path(get, path = "/v1/health", security(()), responses((status = 200, body = Health)))]
pub(crate) async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/v1/version", responses((status = 200, body = Version)))]
pub(crate) async fn version() -> axum::Json<Version> {
    axum::Json(Version {
        version: env!("CARGO_PKG_VERSION").into(),
        api: "v1".into(),
        protocol_min: hull_proto::MIN_PROTOCOL_VERSION,
        protocol_max: hull_proto::PROTOCOL_VERSION,
    })
}

#[utoipa::path(get, path = "/v1/info", responses((status = 200, body = HostInfo)))]
pub(crate) async fn info(State(s): State<AppState>) -> axum::Json<HostInfo> {
    axum::Json(s.rt.host_info())
}

#[utoipa::path(post, path = "/v1/sandboxes", request_body = CreateSandbox,
    responses((status = 201, body = Sandbox), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create(
    State(s): State<AppState>,
    Json(req): Json<CreateSandbox>,
) -> ApiResult<Response> {
    Ok(json(StatusCode::CREATED, s.rt.create(req).await?))
}

/// Label filters one list query may give: no sandbox carries more labels,
/// so more filters could never match.
pub(crate) const MAX_LABEL_FILTERS: usize = hull_runtime::MAX_LABELS;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by `label_filters`; here for the OpenAPI document
pub(crate) struct ListQuery {
    /// `key=value`; repeat to require several labels (at most 64).
    #[serde(default)]
    #[param(required = false)]
    label: Vec<String>,
}

#[utoipa::path(get, path = "/v1/sandboxes", params(ListQuery), responses((status = 200, body = SandboxList)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    req: Request,
) -> ApiResult<axum::Json<SandboxList>> {
    let labels = label_filters(req.uri().query(), "sandbox")?;
    Ok(axum::Json(SandboxList {
        sandboxes: s.rt.list(&labels).await?,
    }))
}

/// The label filters of a list query (`label=key=value`, repeatable; no
/// other parameter): `noun` names what is listed, for the error messages.
/// Parsed by hand: serde_urlencoded keeps only one value per key.
pub(crate) fn label_filters(
    query: Option<&str>,
    noun: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut labels = BTreeMap::new();
    for (k, v) in url_pairs(query.unwrap_or("")) {
        if k != "label" {
            return Err(ApiError::invalid(format!("unknown query parameter {k:?}")));
        }
        let (lk, lv) = v
            .split_once('=')
            .ok_or_else(|| ApiError::invalid(format!("label filter {v:?} must be key=value")))?;
        if labels.insert(lk.to_string(), lv.to_string()).is_some() {
            return Err(ApiError::invalid(format!(
                "label filter {lk:?} is given twice: a {noun} has one value per label"
            )));
        }
        if labels.len() > MAX_LABEL_FILTERS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_LABEL_FILTERS} label filters (no {noun} carries more labels)"
            )));
        }
    }
    Ok(labels)
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

/// Decode `application/x-www-form-urlencoded` text (`+` is a space, `%XX`
/// a byte); a `%` not followed by two hex digits stays as it is.
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

#[utoipa::path(get, path = "/v1/sandboxes/{id}", params(("id" = String, Path, description = "sandbox id or name")),
    responses((status = 200, body = Sandbox), (status = 404, body = ErrorBody)))]
pub(crate) async fn inspect(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.get(&id).await?))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn destroy(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.rt.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", params(("id" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 409, body = ErrorBody)))]
pub(crate) async fn pause(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.pause(&id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", params(("id" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 409, body = ErrorBody)))]
pub(crate) async fn resume(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.resume(&id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/stop", params(("id" = String, Path)),
    responses((status = 200, body = Sandbox), (status = 409, body = ErrorBody)))]
pub(crate) async fn stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.stop(&id).await?))
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/ttl", params(("id" = String, Path)), request_body = SetTtl,
    responses((status = 200, body = Sandbox), (status = 400, body = ErrorBody)))]
pub(crate) async fn set_ttl(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<SetTtl>,
) -> ApiResult<axum::Json<Sandbox>> {
    Ok(axum::Json(s.rt.set_ttl(&id, req.ttl_seconds).await?))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ResetResult {
    /// What was removed.
    removed: Vec<String>,
}

#[utoipa::path(post, path = "/v1/system/reset", responses((status = 200, body = ResetResult)))]
pub(crate) async fn system_reset(State(s): State<AppState>) -> ApiResult<Response> {
    let removed = s.rt.system_reset().await?;
    Ok(json(StatusCode::OK, ResetResult { removed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_pairs() {
        assert_eq!(
            url_pairs("label=a%3Db&label=c=d+e&&x"),
            vec![
                ("label".into(), "a=b".into()),
                ("label".into(), "c=d e".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(pct_decode("%zz%4"), "%zz%4");
        assert_eq!(
            pct_decode("%+1"),
            "% 1",
            "a `%` without two hex digits stays"
        );
        assert_eq!(pct_decode("%41%c3%a9"), "A\u{e9}");
        assert_eq!(pct_decode("%ff"), "\u{fffd}");
    }
}
