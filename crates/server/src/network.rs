//! `GET`/`PUT /v1/sandboxes/{id}/network`: a sandbox's network policy
//! (header values redacted) and replacing it on a running sandbox. The
//! body of a `PUT` is a policy in either form (docs/network.md): the JSON
//! object or the compact string (`"allow:example.com,10.0.0.0/8"`).

use axum::extract::{Path, State};
use hull_api::*;

use crate::AppState;
use crate::error::{ApiResult, Json};

#[utoipa::path(get, path = "/v1/sandboxes/{id}/network", params(("id" = String, Path)),
    responses((status = 200, body = SandboxNetwork), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_network(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<SandboxNetwork>> {
    Ok(axum::Json(s.rt.network(&id).await?))
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/network", params(("id" = String, Path)), request_body = NetworkPolicy,
    responses((status = 200, body = SandboxNetwork), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(crate) async fn set_network(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json(policy): Json<NetworkPolicy>,
) -> ApiResult<axum::Json<SandboxNetwork>> {
    Ok(axum::Json(s.rt.set_network(&id, policy).await?))
}
