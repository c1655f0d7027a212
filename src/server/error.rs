//! The one place where errors become HTTP responses, with the contract's stable codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::broker::BrokerError;
use crate::log::LogError;

/// Every error response: `{"error": {"code", "message", ...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case identifier, e.g. `topic_not_found`.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// On `offset_out_of_range`: the earliest offset still stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest: Option<u64>,
    /// On `offset_out_of_range`: the high watermark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<u64>,
}

/// An error answer: status, code, message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub range: Option<(u64, u64)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            range: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
    }

    pub fn not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the server is still recovering its partitions",
        )
    }

    /// An internal failure: the detail goes to the log, the client gets none of it.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }
}

/// A query string that does not parse: `400 bad_request` with the parser's reason.
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request(e.body_text())
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            BrokerError::TopicNotFound(_) => Self::new(S::NOT_FOUND, "topic_not_found", msg),
            BrokerError::TopicExists(_) => Self::new(S::CONFLICT, "topic_exists", msg),
            BrokerError::PartitionNotFound { .. } => {
                Self::new(S::NOT_FOUND, "partition_not_found", msg)
            }
            BrokerError::InvalidName(_) => Self::new(S::BAD_REQUEST, "invalid_name", msg),
            BrokerError::InvalidConfig(_) => Self::new(S::BAD_REQUEST, "invalid_config", msg),
            BrokerError::GroupNotFound(_) => Self::new(S::NOT_FOUND, "group_not_found", msg),
            BrokerError::BadRequest(_) => Self::bad_request(msg),
            BrokerError::TooManyTopics(_) => {
                Self::new(S::TOO_MANY_REQUESTS, "too_many_topics", msg)
            }
            BrokerError::TooManyWaiters => Self::new(S::TOO_MANY_REQUESTS, "too_many_waiters", msg),
            BrokerError::Log(e) => e.into(),
            BrokerError::Corrupt(_) | BrokerError::Locked { .. } | BrokerError::TaskFailed(_) => {
                Self::internal(msg)
            }
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            LogError::NoSpace { .. } => Self::new(
                S::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "no disk space left for these records; nothing was appended",
            ),
            LogError::OffsetOutOfRange {
                earliest, latest, ..
            } => ApiError {
                range: Some((earliest, latest)),
                ..Self::new(S::RANGE_NOT_SATISFIABLE, "offset_out_of_range", msg)
            },
            LogError::RecordTooLarge(_) => Self::too_large(msg),
            LogError::Deleted => Self::new(
                S::NOT_FOUND,
                "topic_not_found",
                "the topic was deleted while the request ran",
            ),
            LogError::InvalidFrame { .. } => Self::bad_request(msg),
            LogError::Stopped(_) => {
                tracing::error!(error = %msg, "write to a stopped partition");
                Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "partition_unavailable",
                    "this partition stopped accepting writes after a failed flush; see the server log",
                )
            }
            LogError::Io { ref source, .. }
                if matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
            {
                tracing::error!(error = %msg, "out of file descriptors");
                Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "too_many_open_files",
                    "the server has reached its limit of open files (each partition keeps its active segment's three files open); raise it (LimitNOFILE, ulimit -n) or use fewer partitions. Nothing was changed",
                )
            }
            LogError::Corrupt { .. }
            | LogError::UnsupportedVersion { .. }
            | LogError::Io { .. } => Self::internal(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                earliest: self.range.map(|r| r.0),
                latest: self.range.map(|r| r.1),
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

/// The error code of a response, for the request log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

pub type ApiResult<T> = Result<T, ApiError>;
