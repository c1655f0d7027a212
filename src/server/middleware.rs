//! The middleware every request passes, as one layer ([`every_request`]): tracing with the
//! request metrics, the request timeout, authorization (by the access its route declared)
//! and, in a cluster, the redirection of a group's requests to its coordinator.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};

use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::access::{Access, Declared};
use super::error::{ApiError, ErrorCode, InternalDetail};
use super::state::AppState;

/// The middleware of every API request, as one layer (each layer of its own boxed the
/// request's future and was polled through again at each wake-up, a cost paid several times
/// by a request that waits, as a durable producer does): tracing with the request metrics
/// (outermost), then the request timeout, then authorization, then, in a cluster, the
/// redirection of a group's requests to its coordinator.
pub(super) async fn every_request(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let limit = Duration::from_millis(state.config().request_timeout_ms);
    traced(&state, req, async |req| {
        time_limited(limit, req, async |req| {
            match authorize(&state, req).and_then(|req| route_to_coordinator(&state, req)) {
                Ok(req) => next.run(req).await,
                Err(refused) => *refused,
            }
        })
        .await
    })
    .await
}

/// Authenticates the bearer token (401 without a valid one) and checks the permission the
/// route needs on its topic (403). Routes whose check needs the body (topic creation,
/// group commits) finish it in their handler, with the [`Principal`] left in the request.
fn authorize(state: &AppState, mut req: Request) -> Result<Request, Box<Response>> {
    use crate::auth::Principal;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let access = match (&route, state.access()) {
        // No route matched (the router answers 404), or not with this method (405): only
        // a valid token learns that, when tokens are configured.
        (None, _) => None,
        (Some(route), Some(table)) => match table.lookup(req.method(), route) {
            Declared::Access(a) => Some(a),
            Declared::OtherMethod => None,
            Declared::Undeclared => return Err(Box::new(undeclared(route))),
        },
        (Some(route), None) => return Err(Box::new(undeclared(route))),
    };
    let route = route.unwrap_or_default();
    if state.tokens().is_empty() || state.config().open_routes.contains(&route) {
        req.extensions_mut().insert(Principal::Anyone);
        return Ok(req);
    }
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(principal) = state.tokens().authenticate(bearer) else {
        let mut resp = ApiError::new(ErrorCode::Unauthorized, "a valid bearer token is required")
            .into_response();
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return Err(Box::new(resp));
    };
    let allowed = match access {
        None | Some(Access::AnyToken) => true,
        Some(Access::Holds(what)) => principal.holds(what),
        Some(Access::Topic(what)) => {
            let topic = req.uri().path().split('/').nth(3).unwrap_or("").to_owned();
            // The check runs on the raw path segment: a name that is not valid as it stands
            // (one percent-encoded, say) is refused here, before a pattern could match its
            // encoding and the handler serve the decoded name.
            if let Err(e) = crate::broker::validate_name(&topic) {
                return Err(Box::new(ApiError::from(e).into_response()));
            }
            principal.may(what, &topic)
        }
    };
    if !allowed {
        return Err(Box::new(forbidden(&principal).into_response()));
    }
    req.extensions_mut().insert(principal);
    Ok(req)
}

/// A route registered without a declared access: refused, whoever asks.
fn undeclared(route: &str) -> Response {
    tracing::error!(route, "route registered without a declared access: refused");
    ApiError::new(
        ErrorCode::Forbidden,
        "this route declares no access; it is refused",
    )
    .into_response()
}

/// `503 request_timed_out` for a request not answered within `limit` (`request_timeout_ms`)
/// plus its own `wait_ms`. A handler that returns a stream has answered once the stream
/// starts.
pub(super) async fn time_limited(
    limit: Duration,
    req: Request,
    run: impl AsyncFnOnce(Request) -> Response,
) -> Response {
    let wait_ms = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("wait_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(super::routes::consume::MAX_WAIT_MS);
    let limit = limit + Duration::from_millis(wait_ms);
    match tokio::time::timeout(limit, run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(ErrorCode::RequestTimedOut,
            format!(
                "no answer within request_timeout_ms ({} ms); the request may or may not have taken effect",
                limit.as_millis() - wait_ms as u128
            ),
        )
        .into_response(),
    }
}

tokio::task_local! {
    /// The topic (and partition) of the request this task serves, once its handler knows it.
    static TARGET: std::cell::RefCell<Target>;
}

/// What a request is about, for its log lines.
#[derive(Debug, Default)]
struct Target {
    topic: Option<String>,
    partition: Option<u32>,
}

/// The request metrics, and a log line for each failed request with its method, route
/// template, topic, partition, status and latency. No per-record logging. The request's span
/// (the same fields, around everything logged while it runs) is at `debug` level: at the
/// default `info` it is not built, since building one per request cost about a twentieth of
/// a small produce's CPU.
async fn traced(
    state: &AppState,
    req: Request,
    run: impl AsyncFnOnce(Request) -> Response,
) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", |p| p.as_str());
    let span = tracing::debug_span!(
        "request",
        method = %method,
        route = %route,
        topic = tracing::field::Empty,
        partition = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    );
    let run = tracing::Instrument::instrument(run(req), span.clone());
    let (resp, target) = TARGET
        .scope(Default::default(), async {
            let resp = run.await;
            (resp, TARGET.with(|t| t.take()))
        })
        .await;
    let status = resp.status();
    let elapsed = start.elapsed();
    let latency_us = elapsed.as_micros() as u64;
    span.record("status", status.as_u16());
    span.record("latency_us", latency_us);
    let code = resp.extensions().get::<ErrorCode>().map(|c| c.as_str());
    let detail = resp
        .extensions()
        .get::<InternalDetail>()
        .map(|d| d.0.as_str());
    let topic = target.topic.as_deref();
    let partition = target.partition;
    let status = status.as_u16();
    span.in_scope(|| {
        if let Some(detail) = detail {
            tracing::error!(%method, route, topic, partition, status, latency_us, code, error = detail, "request failed");
        } else if status >= 500 && route != "/readyz" {
            // (A readiness probe's 503 while recovering or stopping is an answer, not a
            // failure.)
            tracing::warn!(%method, route, topic, partition, status, latency_us, code, "request failed");
        } else {
            tracing::debug!(code, "request");
        }
    });
    state
        .metrics()
        .observe_request(method.as_str(), route, status, elapsed);
    resp
}

/// Records the topic (and partition) of the request, for its log lines and its span.
pub(crate) fn record_target(topic: &str, partition: Option<u32>) {
    let _ = TARGET.try_with(|t| {
        *t.borrow_mut() = Target {
            topic: Some(topic.to_owned()),
            partition,
        }
    });
    let span = tracing::Span::current();
    span.record("topic", topic);
    if let Some(p) = partition {
        span.record("partition", p);
    }
}

/// 403 for a principal that lacks a permission a handler checked.
pub(crate) fn forbidden(principal: &crate::auth::Principal) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "token {:?} lacks the permission for this request",
            principal.name()
        ),
    )
}

/// In a cluster, every request about one group (`/v1/groups/{group}/...`: members, leases,
/// acks, offsets) goes to the node that coordinates it, the one Kafka's FindCoordinator
/// names too: elsewhere it gets `307 not_leader` there. Outside a cluster, and for other
/// routes, nothing changes.
fn route_to_coordinator(state: &AppState, req: Request) -> Result<Request, Box<Response>> {
    let Some(cluster) = state.cluster() else {
        return Ok(req);
    };
    let in_group = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str().starts_with("/v1/groups/{group}"));
    let group = in_group
        .then(|| req.uri().path().strip_prefix("/v1/groups/"))
        .flatten()
        .and_then(|rest| rest.split('/').next())
        .map(str::to_owned);
    let Some(group) = group else {
        return Ok(req);
    };
    match cluster.coordinator_of(&group) {
        Some(n) if n.node_id == cluster.node_id() => Ok(req),
        Some(n) => Err(Box::new(
            super::routes::cluster::redirect_to(
                &n,
                &super::routes::cluster::request_target(req.uri()),
                &format!("the coordination of group {group}"),
            )
            .into_response(),
        )),
        None => Err(Box::new(
            ApiError::new(
                ErrorCode::LeaderNotAvailable,
                "no node of the cluster is alive to coordinate this group",
            )
            .into_response(),
        )),
    }
}
