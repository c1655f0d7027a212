//! The HTTP layer: axum handlers for every route of the API contract, request tracing,
//! readiness and graceful shutdown. It speaks in topics, partitions and records; byte layouts
//! stay in the engine.

mod consume;
pub mod error;
mod groups;
mod http;
mod listener;
pub mod metrics;
mod ops;
mod produce;
mod tls;
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
use error::{ApiError, ApiResult, ErrorCode};
use metrics::Metrics;

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
        // Validated when the configuration was loaded; never fall back to no authentication.
        let tokens = crate::auth::Tokens::new(&config.tokens)
            .expect("tokens are checked by Config::validate");
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
    let api = Arc::new(with_security(api));
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(
            Duration::from_millis(state.config().request_timeout_ms),
            request_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), trace_request))
        // Produce enforces `max_request_bytes` itself, answering 413 in the contract's shape.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::Extension(api))
        .with_state(state)
}

/// Declares the optional bearer-token scheme: every route takes a token when the server has
/// tokens configured (`401 unauthorized` without a valid one, `403 forbidden` without the
/// permission), and none when it has none.
fn with_security(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::{RefOr, ResponseBuilder};
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A token from the server's `tokens` setting; not needed when none is configured",
                ))
                .build(),
        ),
    );
    api.security = Some(vec![
        SecurityRequirement::new("bearer", Vec::<String>::new()),
        SecurityRequirement::default(),
    ]);
    let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "ErrorBody",
                    ))))
                    .build(),
            )
            .build()
            .into()
    };
    for item in api.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut op.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                error("`unauthorized`: tokens are configured and none valid was sent")
            });
            responses
                .entry("403".into())
                .or_insert_with(|| error("`forbidden`: the token lacks the permission"));
        }
    }
    api
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
    // The check runs on the raw path segment: a name that is not valid as it stands (one
    // percent-encoded, say) is refused here, before a pattern could match its encoding
    // and the handler serve the decoded name.
    if route.contains("{topic}") {
        if let Err(e) = crate::broker::validate_name(&topic) {
            return ApiError::from(e).into_response();
        }
    }
    let method = req.method().clone();
    let allowed = match (method, route.as_str()) {
        (Method::POST, "/v1/topics/{topic}/records") => principal.may(Permission::Produce, &topic),
        (Method::GET, "/v1/topics/{topic}")
        | (Method::GET, "/v1/topics/{topic}/partitions/{partition}/records")
        | (Method::GET, "/v1/topics/{topic}/partitions/{partition}/stream") => {
            principal.may(Permission::Consume, &topic)
        }
        (Method::DELETE, "/v1/topics/{topic}") => principal.may(Permission::Admin, &topic),
        // Group offsets: `consume` on each topic concerned, checked by the handlers.
        (_, r) if r.starts_with("/v1/groups") => principal.holds(Permission::Consume),
        // The topic list: any token, which sees the topics it holds a permission on.
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

/// `503 request_timed_out` for a request not answered within `request_timeout_ms` (plus its
/// own `wait_ms`). A handler that returns a stream has answered once the stream starts.
async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let wait_ms = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("wait_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(consume::MAX_WAIT_MS);
    let limit = limit + Duration::from_millis(wait_ms);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timed_out",
            format!(
                "no answer within request_timeout_ms ({} ms); the request may or may not have taken effect",
                limit.as_millis() - wait_ms as u128
            ),
        )
        .into_response(),
    }
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

/// Reads a request body of at most `limit` bytes (`413` beyond, with `limit_name` in the
/// message), within `request_body_timeout_ms` (`408 request_timeout` after).
pub(crate) async fn read_body(
    config: &Config,
    body: axum::body::Body,
    limit: usize,
    limit_name: &str,
) -> ApiResult<bytes::Bytes> {
    let timeout = Duration::from_millis(config.request_body_timeout_ms);
    tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body took longer than request_body_timeout_ms ({} ms)",
                    timeout.as_millis()
                ),
            )
        })?
        .map_err(|e| {
            let source = std::error::Error::source(&e);
            if source.is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
                ApiError::too_large(format!("request body is over {limit_name}"))
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
    let limit_name = format!("{ADMIN_BODY_LIMIT} bytes");
    let bytes = read_body(config, body, ADMIN_BODY_LIMIT, &limit_name).await?;
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
    // Many connections each hold a file; segments close theirs once named.
    let open_files = crate::sys::raise_open_file_limit();
    tracing::info!(open_files, "limit of open files");
    let mut signals = Signals::new()?;
    let config = Arc::new(config);
    let metrics = Metrics::new()?;
    let state = AppState::new(Arc::clone(&config), metrics);
    let tls = if config.tls_cert_file.as_os_str().is_empty() {
        None
    } else {
        Some(tls::acceptor(&config.tls_cert_file, &config.tls_key_file)?)
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // A data directory in use by another server is refused before this one listens.
    let lock = {
        let config = Arc::clone(&config);
        tokio::task::spawn_blocking(move || Broker::claim(&config)).await??
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, scheme, "listening");
    if config.tokens.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "no tokens configured: anyone who can reach this address can produce, consume and delete topics"
        );
    }
    // Tests and scripts read the bound address (port 0 picks one) from this line.
    println!("mapq listening on {scheme}://{addr}");

    // Recovery runs while /healthz already answers and /readyz says 503.
    let recovering = {
        let state = state.clone();
        let config = Arc::clone(&config);
        tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<Broker>> {
            let started = Instant::now();
            let broker = Arc::new(Broker::open_claimed(config, lock)?);
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
        tls.is_none(),
    );
    let options = http::HttpOptions {
        header_timeout: Duration::from_millis(config.request_header_timeout_ms),
        keep_alive_timeout: Duration::from_millis(
            config
                .connection_idle_timeout_ms
                .max(config.request_header_timeout_ms),
        ),
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        tls,
    };
    let server = tokio::spawn(http::run(listener, app, options, async move {
        signals.next().await;
        shutdown_state.begin_shutdown();
        tokio::spawn(async move {
            signals.next().await;
            // Acknowledged records are in the page cache already: they survive the exit.
            tracing::warn!("second signal: exiting without waiting");
            std::process::exit(1);
        });
        tracing::info!("shutting down: finishing in-flight requests");
    }));

    let broker = match recovering.await? {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the data directory");
            return Err(e);
        }
    };
    let maintenance = crate::maintenance::spawn(Arc::clone(&broker), state.shutdown_signal());

    server.await?;
    let _ = maintenance.await;
    tokio::task::spawn_blocking(move || broker.flush_all()).await??;
    tracing::info!("all partitions flushed; bye");
    Ok(())
}

/// SIGTERM and SIGINT, listened to from start-up on: a signal that arrives while nobody is
/// waiting is kept for the next wait, so a second signal is never lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
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
    async fn a_request_not_answered_in_time_gets_503_and_wait_ms_extends_the_limit() {
        let slow = Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    "done"
                }),
            )
            .layer(middleware::from_fn_with_state(
                Duration::from_millis(100),
                request_timeout,
            ));
        let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        let resp = slow.clone().oneshot(get("/slow")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "request_timed_out", "{body}");
        let resp = slow.oneshot(get("/slow?wait_ms=2000")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
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
