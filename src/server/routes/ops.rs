//! Operations: health, readiness, metrics, the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::server::error::ErrorCode;
use crate::server::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok`, `ready`, `recovering` or `shutting_down`.
    pub status: &'static str,
}

/// The errors `healthz` answers with (besides those of every route).
pub const HEALTHZ_ERRORS: &[ErrorCode] = &[];

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// The errors `readyz` answers with (besides those of every route).
pub const READYZ_ERRORS: &[ErrorCode] = &[];

/// 200 once every partition is recovered and the server accepts traffic; 503 before, and
/// while shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Status), (status = 503, body = Status)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Status>) {
    if state.is_ready() {
        (StatusCode::OK, Json(Status { status: "ready" }))
    } else if state.broker_for_read().is_ok() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Status {
                status: "shutting_down",
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Status {
                status: "recovering",
            }),
        )
    }
}

/// The errors `metrics` answers with (besides those of every route).
pub const METRICS_ERRORS: &[ErrorCode] = &[];

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let waiting = state.config().max_long_poll_waiters - state.waiters().available_permits() as u64;
    // Rendering takes each group's lock, which a commit holds across its fsync.
    let text = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.metrics().render(waiting))
            .await
            .unwrap_or_default()
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// The errors `openapi` answers with (besides those of every route).
pub const OPENAPI_ERRORS: &[ErrorCode] = &[];

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi(
    Extension(api): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> impl IntoResponse {
    Json(api.as_ref().clone())
}
