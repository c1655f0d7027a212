//! The HTTP layer: axum handlers for every route of the API contract, request tracing,
//! readiness and graceful shutdown. It speaks in topics, partitions and records; byte layouts
//! stay in the engine.

mod consume;
pub mod error;
mod groups;
mod listener;
mod ops;
mod produce;
mod topics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::{watch, Semaphore};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::broker::Broker;
use crate::config::Config;
use crate::metrics::Metrics;
use error::{ApiError, ApiResult, ErrorCode};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Arc<Config>,
    /// Set once every partition has been recovered.
    broker: OnceLock<Arc<Broker>>,
    shutting_down: AtomicBool,
    /// Becomes true when shutdown begins: wakes long-polls and SSE streams.
    shutdown: watch::Sender<bool>,
    /// Permits for consumers blocked in a long-poll or an SSE stream.
    waiters: Arc<Semaphore>,
    metrics: Metrics,
    tokens: crate::auth::Tokens,
}

impl AppState {
    pub fn new(config: Arc<Config>, metrics: Metrics) -> Self {
        let waiters = Arc::new(Semaphore::new(config.max_long_poll_waiters as usize));
        // Validated when the configuration was loaded.
        let tokens = crate::auth::Tokens::new(&config.tokens).unwrap_or_default();
        AppState(Arc::new(Inner {
            tokens,
            config,
            broker: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            shutdown: watch::Sender::new(false),
            waiters,
            metrics,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The broker, once recovery has finished and while not shutting down.
    pub fn broker(&self) -> ApiResult<Arc<Broker>> {
        if self.0.shutting_down.load(Ordering::Acquire) {
            return Err(ApiError::shutting_down());
        }
        self.0.broker.get().cloned().ok_or_else(ApiError::not_ready)
    }

    /// The broker even while shutting down (reads finish during a graceful stop).
    pub fn broker_for_read(&self) -> ApiResult<Arc<Broker>> {
        self.0.broker.get().cloned().ok_or_else(ApiError::not_ready)
    }

    pub fn set_broker(&self, broker: Arc<Broker>) {
        let _ = self.0.broker.set(broker);
    }

    pub fn is_ready(&self) -> bool {
        self.0.broker.get().is_some() && !self.0.shutting_down.load(Ordering::Acquire)
    }

    pub fn begin_shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::Release);
        self.0.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.0.shutdown.subscribe()
    }

    pub fn waiters(&self) -> &Arc<Semaphore> {
        &self.0.waiters
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mapq",
        description = "HTTP API of mapq, a message queue on memory-mapped, segmented log files."
    ),
    tags(
        (name = "topics"), (name = "records"), (name = "groups"), (name = "operations")
    ),
    components(schemas(crate::config::Durability))
)]
struct ApiDoc;

/// The router with every route, and the OpenAPI document generated from the same handlers.
pub fn router(state: AppState) -> Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(topics::create_topic, topics::list_topics))
        .routes(routes!(topics::describe_topic, topics::delete_topic))
        .routes(routes!(produce::produce))
        .routes(routes!(consume::consume))
        .routes(routes!(consume::stream))
        .routes(routes!(groups::commit_offsets, groups::get_offsets))
        .routes(routes!(groups::list_groups))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .split_for_parts();
    let api = Arc::new(api);
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), trace_request))
        // Produce enforces `max_request_bytes` itself, answering 413 in the contract's shape.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::Extension(api))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Authenticates the bearer token (401 without a valid one) and checks the permission the
/// route needs on its topic (403). Routes whose check needs the body (topic creation,
/// group commits) finish it in their handler, with the [`Principal`] left in the request.
async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    use crate::auth::{Permission, Principal};
    use axum::http::Method;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", |p| p.as_str())
        .to_owned();
    if state.0.tokens.is_empty() || state.config().open_routes.contains(&route) {
        req.extensions_mut().insert(Principal::Anyone);
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(principal) = state.0.tokens.authenticate(bearer) else {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return resp;
    };
    let topic = req.uri().path().split('/').nth(3).unwrap_or("").to_owned();
    let method = req.method().clone();
    let allowed = match (method, route.as_str()) {
        (Method::POST, "/v1/topics/{topic}/records") => principal.may(Permission::Produce, &topic),
        (Method::GET, "/v1/topics/{topic}")
        | (Method::GET, "/v1/topics/{topic}/partitions/{partition}/records")
        | (Method::GET, "/v1/topics/{topic}/partitions/{partition}/stream") => {
            principal.may(Permission::Consume, &topic)
        }
        (Method::DELETE, "/v1/topics/{topic}") => principal.may(Permission::Admin, &topic),
        (Method::GET, "/v1/topics") => principal.holds(Permission::Consume),
        (_, r) if r.starts_with("/v1/groups") => principal.holds(Permission::Admin),
        // Topic creation: checked on the name in the body, by the handler.
        // Operations routes that are not open: any valid token.
        _ => true,
    };
    if !allowed {
        return forbidden(&principal).into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// One span per request, with the route template, topic, partition, status and latency;
/// the request metrics. No per-record logging.
async fn trace_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        topic = tracing::field::Empty,
        partition = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    );
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = resp.status();
    let elapsed = start.elapsed();
    span.record("status", status.as_u16());
    span.record("latency_us", elapsed.as_micros() as u64);
    let code = resp.extensions().get::<ErrorCode>().map(|c| c.0);
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(code, "request failed");
        } else {
            tracing::debug!(code, "request");
        }
    });
    state
        .metrics()
        .observe_request(method.as_str(), &route, status.as_u16(), elapsed);
    resp
}

/// Records the topic (and partition) of the request on its span.
pub(crate) fn record_target(topic: &str, partition: Option<u32>) {
    let span = tracing::Span::current();
    span.record("topic", topic);
    if let Some(p) = partition {
        span.record("partition", p);
    }
}

/// 403 for a principal that lacks a permission a handler checked.
pub(crate) fn forbidden(principal: &crate::auth::Principal) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "token {:?} lacks the permission for this request",
            principal.name()
        ),
    )
}

/// Largest body accepted by the administrative routes (topics, group offsets).
const ADMIN_BODY_LIMIT: usize = 1 << 20;

/// Reads a small JSON body, whatever its `Content-Type`, with the same error wording as the
/// produce route.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    body: axum::body::Body,
) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(body, ADMIN_BODY_LIMIT)
        .await
        .map_err(|_| {
            ApiError::too_large(format!("request body is over {ADMIN_BODY_LIMIT} bytes"))
        })?;
    serde_json::from_slice(&bytes)
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

/// Serves until SIGTERM or SIGINT, then stops accepting, finishes in-flight requests, msyncs
/// every partition and returns.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Metrics::new()?;
    let state = AppState::new(Arc::clone(&config), metrics);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    if config.tokens.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "no tokens configured: anyone who can reach this address can produce, consume and delete topics"
        );
    }
    // Tests and scripts read the bound address (port 0 picks one) from this line.
    println!("mapq listening on http://{addr}");

    // Recovery runs while /healthz already answers and /readyz says 503.
    let recovering = {
        let state = state.clone();
        let config = Arc::clone(&config);
        tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<Broker>> {
            let started = Instant::now();
            let broker = Arc::new(Broker::open(config)?);
            state.metrics().register_broker(&broker);
            state.set_broker(Arc::clone(&broker));
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "ready");
            Ok(broker)
        })
    };

    let app = router(state.clone());
    let shutdown_state = state.clone();
    let listener = listener::LimitedListener::new(
        listener,
        config.max_connections as usize,
        Duration::from_millis(config.connection_idle_timeout_ms),
    );
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_requested().await;
        tracing::info!("shutting down: finishing in-flight requests");
        shutdown_state.begin_shutdown();
    });
    let server = tokio::spawn(async move { server.await });

    let broker = match recovering.await? {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the data directory");
            return Err(e);
        }
    };
    let maintenance = crate::maintenance::spawn(Arc::clone(&broker), state.shutdown_signal());

    server.await??;
    let _ = maintenance.await;
    tokio::task::spawn_blocking(move || broker.flush_all()).await??;
    tracing::info!("all partitions flushed; bye");
    Ok(())
}

async fn shutdown_requested() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state() -> AppState {
        let config = Arc::new(Config::defaults());
        AppState::new(config, Metrics::new().unwrap())
    }

    async fn call(app: Router, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(r#"{"records":[{"value":1}]}"#))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn not_ready_until_recovered_then_503_while_shutting_down() {
        let s = state();
        let (status, body) = call(router(s.clone()), "GET", "/readyz").await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::SERVICE_UNAVAILABLE, &"recovering".into())
        );
        let (status, body) = call(router(s.clone()), "POST", "/v1/topics/t/records").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::SERVICE_UNAVAILABLE, &"not_ready".into())
        );
        assert_eq!(
            call(router(s.clone()), "GET", "/healthz").await.0,
            StatusCode::OK
        );

        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.data_dir = dir.path().to_owned();
        s.set_broker(Arc::new(Broker::open(Arc::new(config)).unwrap()));
        assert_eq!(
            call(router(s.clone()), "GET", "/readyz").await.0,
            StatusCode::OK
        );
        let (status, _) = call(router(s.clone()), "POST", "/v1/topics/t/records").await;
        assert_eq!(status, StatusCode::OK);

        s.begin_shutdown();
        let (status, body) = call(router(s.clone()), "GET", "/readyz").await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::SERVICE_UNAVAILABLE, &"shutting_down".into())
        );
        let (status, body) = call(router(s.clone()), "POST", "/v1/topics/t/records").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::SERVICE_UNAVAILABLE, &"shutting_down".into())
        );
        // Reads still finish while shutting down.
        let (status, _) = call(router(s), "GET", "/v1/topics/t/partitions/0/records").await;
        assert_eq!(status, StatusCode::OK);
    }
}
