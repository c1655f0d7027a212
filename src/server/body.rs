//! Request bodies (bounded in size and time) and blocking work off the async workers.

use std::time::Duration;

use super::error::{ApiError, ApiResult, ErrorCode};
use crate::config::Config;

/// Largest body accepted by the administrative routes (topics, group offsets).
const ADMIN_BODY_LIMIT: usize = 1 << 20;

/// Reads a request body of at most `limit` bytes (`413` beyond, with `limit_name()` in the
/// message), within `request_body_timeout_ms` (`408 request_timeout` after).
pub(crate) async fn read_body(
    config: &Config,
    body: axum::body::Body,
    limit: usize,
    limit_name: impl FnOnce() -> String,
) -> ApiResult<bytes::Bytes> {
    let timeout = Duration::from_millis(config.request_body_timeout_ms);
    tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body took longer than request_body_timeout_ms ({} ms)",
                    timeout.as_millis()
                ),
            )
        })?
        .map_err(|e| {
            let source = std::error::Error::source(&e);
            if source.is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
                ApiError::too_large(format!("request body is over {}", limit_name()))
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })
}

/// Reads a small JSON body, whatever its `Content-Type`, with the same error wording as the
/// produce route.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    config: &Config,
    body: axum::body::Body,
) -> ApiResult<T> {
    parse_json(&read_small_body(config, body).await?)
}

/// Reads a small body whole, whatever its `Content-Type`, for [`parse_json`] into a type that
/// borrows from it.
pub(crate) async fn read_small_body(
    config: &Config,
    body: axum::body::Body,
) -> ApiResult<bytes::Bytes> {
    let limit_name = || format!("{ADMIN_BODY_LIMIT} bytes");
    read_body(config, body, ADMIN_BODY_LIMIT, limit_name).await
}

/// Parses a JSON body, with the same error wording as [`read_json`].
pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// Runs blocking file work (append with possible segment creation, msync, fsync, file
/// creation and deletion) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("blocking task failed: {e}"))))
}
