//! The one place where errors become HTTP responses, with the contract's stable codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

pub use crate::api::{ErrorBody, ErrorCode, ErrorDetail};

use crate::broker::coordinator::CoordinatorError;
use crate::broker::BrokerError;
use crate::log::LogError;

/// An error answer: a code (which fixes the status) and a message; for internal errors, a
/// detail for the log that the client never sees.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub range: Option<(u64, u64)>,
    /// On `not_leader`: the leader's node id and the URL the request goes to there.
    pub redirect: Option<Box<(String, String)>>,
    detail: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            range: None,
            redirect: None,
            detail: None,
        }
    }

    /// `307 not_leader` to `url` on the node `leader`.
    pub fn not_leader(leader: &str, url: String, what: &str) -> Self {
        ApiError {
            redirect: Some(Box::new((leader.to_owned(), url))),
            ..Self::new(
                ErrorCode::NotLeader,
                format!("node {leader} leads {what}; send it there"),
            )
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }

    pub fn shutting_down() -> Self {
        Self::new(ErrorCode::ShuttingDown, "the server is shutting down")
    }

    pub fn not_ready() -> Self {
        Self::new(
            ErrorCode::NotReady,
            "the server is still recovering its partitions",
        )
    }

    /// An internal failure: the detail goes to the log once, with the request's span (see
    /// `trace_request`); the client gets none of it.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError {
            detail: Some(detail.to_string()),
            ..Self::new(
                ErrorCode::InternalError,
                "internal error; see the server log",
            )
        }
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
        let msg = e.to_string();
        match e {
            BrokerError::TopicNotFound(_) => Self::new(ErrorCode::TopicNotFound, msg),
            BrokerError::TopicExists(_) => Self::new(ErrorCode::TopicExists, msg),
            BrokerError::IdempotencyKeyMismatch => {
                Self::new(ErrorCode::IdempotencyKeyMismatch, msg)
            }
            BrokerError::IdempotencyKeyInFlight => {
                Self::new(ErrorCode::IdempotencyKeyInFlight, msg)
            }
            BrokerError::PartitionNotFound { .. } => Self::new(ErrorCode::PartitionNotFound, msg),
            BrokerError::InvalidName(_) => Self::new(ErrorCode::InvalidName, msg),
            BrokerError::InvalidConfig(_) => Self::new(ErrorCode::InvalidConfig, msg),
            BrokerError::GroupNotFound(_) => Self::new(ErrorCode::GroupNotFound, msg),
            BrokerError::Member(e) => Self::new(
                match e {
                    CoordinatorError::Fenced => ErrorCode::FencedMember,
                    CoordinatorError::UnknownMember => ErrorCode::UnknownMember,
                    CoordinatorError::StaleEpoch => ErrorCode::StaleMemberEpoch,
                    CoordinatorError::NotOwned => ErrorCode::PartitionNotOwned,
                },
                msg,
            ),
            BrokerError::GroupExists(_) | BrokerError::WrongGroupType { .. } => {
                Self::new(ErrorCode::GroupExists, msg)
            }
            BrokerError::MembersOnly(_) => Self::new(ErrorCode::PartitionNotOwned, msg),
            BrokerError::OffsetBeyondEnd { .. } => Self::bad_request(msg),
            BrokerError::Io { ref source, .. } if out_of_files(source) => too_many_open_files(msg),
            BrokerError::TooManyTopics(_) => Self::new(ErrorCode::TooManyTopics, msg),
            BrokerError::FlushFailed(_) => {
                tracing::error!(error = %msg, "a flush for durable producers failed");
                Self::new(
                    ErrorCode::PartitionUnavailable,
                    "the flush that would have made these records durable failed; they are not acknowledged as durable (retry: a later flush may succeed)",
                )
            }
            BrokerError::TooManyWaiters => Self::new(ErrorCode::TooManyWaiters, msg),
            BrokerError::NotEnoughReplicas { .. } => Self::new(ErrorCode::NotEnoughReplicas, msg),
            BrokerError::ClusterStore(_)
            | BrokerError::NotCoordinator(_)
            | BrokerError::DeadLetter(_) => Self::new(ErrorCode::LeaderNotAvailable, msg),
            BrokerError::Log(e) => e.into(),
            BrokerError::Corrupt(_)
            | BrokerError::Locked { .. }
            | BrokerError::TaskFailed(_)
            | BrokerError::InvalidSetting { .. }
            | BrokerError::Io { .. } => Self::internal(msg),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        let msg = e.to_string();
        match e {
            LogError::NoSpace { .. } => Self::new(
                ErrorCode::InsufficientStorage,
                "no disk space left for these records; nothing was appended",
            ),
            LogError::OffsetOutOfRange {
                earliest, latest, ..
            } => ApiError {
                range: Some((earliest, latest)),
                ..Self::new(ErrorCode::OffsetOutOfRange, msg)
            },
            LogError::RecordTooLarge(_) => Self::too_large(msg),
            LogError::Deleted => Self::new(
                ErrorCode::TopicNotFound,
                "the topic was deleted while the request ran",
            ),
            LogError::InvalidFrame { .. } | LogError::InvalidBatchHead(_) => Self::bad_request(msg),
            LogError::Stopped(_) => {
                tracing::error!(error = %msg, "write to a stopped partition");
                Self::new(ErrorCode::PartitionUnavailable,
                    "this partition stopped accepting writes after a failed flush; see the server log",
                )
            }
            LogError::Io { ref source, .. } if out_of_files(source) => too_many_open_files(msg),
            // Replication operations: the cluster layer's, never a client request's.
            LogError::AlreadyOpen(_)
            | LogError::BelowReplicated { .. }
            | LogError::InsideBatch { .. }
            | LogError::OldFormat { .. }
            | LogError::NotReplicated
            | LogError::ReplicaMismatch(_)
            | LogError::Corrupt { .. }
            | LogError::UnsupportedVersion { .. }
            | LogError::Io { .. } => Self::internal(msg),
        }
    }
}

/// Whether an I/O error is the process (or system) running out of file descriptors.
fn out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn too_many_open_files(detail: String) -> ApiError {
    tracing::error!(error = %detail, "out of file descriptors");
    ApiError::new(
        ErrorCode::TooManyOpenFiles,
        "the server has reached its limit of open files; raise it (LimitNOFILE, ulimit -n) or use fewer partitions. Nothing was changed",
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                earliest: self.range.map(|r| r.0),
                latest: self.range.map(|r| r.1),
                leader: self.redirect.as_ref().map(|r| r.0.clone()),
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(url) = self.redirect.as_ref().map(|r| &r.1) {
            if let Ok(v) = axum::http::HeaderValue::try_from(url.as_str()) {
                resp.headers_mut().insert(axum::http::header::LOCATION, v);
            }
        }
        resp.extensions_mut().insert(self.code);
        if let Some(detail) = self.detail {
            resp.extensions_mut().insert(InternalDetail(detail));
        }
        resp
    }
}

/// What went wrong inside, for the request log only.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

pub type ApiResult<T> = Result<T, ApiError>;
