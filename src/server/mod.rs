//! The HTTP layer: the router of every route of the API contract with the access each
//! declares, the middleware, the handlers, and the transport. It speaks in topics,
//! partitions and records; byte layouts stay in the engine.
//!
//! - [`routes`](mod@routes): the handlers, one module per resource;
//! - `access`: what each route needs of a token, declared with the route;
//! - `middleware`: authorization, the request timeout, tracing;
//! - `state`, `body`: what handlers share, and bounded request bodies;
//! - [`error`]: the one place errors become responses;
//! - [`metrics`]: the Prometheus metrics;
//! - [`transport`]: the listener, HTTP/1.1 and TLS.

pub mod access;
mod body;
pub mod console;
pub mod error;
pub mod metrics;
mod middleware;
pub mod routes;
mod state;
pub mod transport;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware as mw;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) use body::{blocking, parse_json, read_body, read_json, read_small_body};
pub(crate) use middleware::{forbidden, record_target};
pub use state::AppState;

use crate::auth::Permission;
use access::{Access, Routes};
use error::{ApiError, ErrorCode};
use routes::{cluster, consume, groups, members, ops, produce, queues, topics};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mapq",
        description = "HTTP API of mapq, a message queue on memory-mapped, segmented log files."
    ),
    tags(
        (name = "topics"), (name = "records"), (name = "groups"), (name = "operations"), (name = "cluster")
    ),
    components(schemas(crate::config::Durability, routes::produce::Acks, crate::api::ErrorBody, crate::api::ErrorDetail, crate::api::ErrorCode))
)]
struct ApiDoc;

/// The router with every route, and the OpenAPI document generated from the same handlers.
pub fn router(state: AppState) -> Router {
    use Permission::{Admin, Consume, Produce};
    let (router, access) = Routes::new(OpenApiRouter::with_openapi(ApiDoc::openapi()))
        // The list shows each token the topics it holds a permission on; creation is
        // checked by the handler on the name in the body (after the body is found valid).
        .add(
            Access::AnyToken,
            topics::LIST_TOPICS_ERRORS,
            routes!(topics::list_topics),
        )
        .add(
            Access::Holds(Admin),
            topics::CREATE_TOPIC_ERRORS,
            routes!(topics::create_topic),
        )
        .add(
            Access::Topic(Consume),
            topics::DESCRIBE_TOPIC_ERRORS,
            routes!(topics::describe_topic),
        )
        .add(
            Access::Topic(Admin),
            topics::DELETE_TOPIC_ERRORS,
            routes!(topics::delete_topic),
        )
        .add(
            Access::Topic(Produce),
            produce::PRODUCE_ERRORS,
            routes!(produce::produce),
        )
        .add(
            Access::Topic(Consume),
            consume::CONSUME_ERRORS,
            routes!(consume::consume),
        )
        .add(
            Access::Topic(Consume),
            consume::STREAM_ERRORS,
            routes!(consume::stream),
        )
        // Group offsets: `consume` on each topic concerned, checked by the handlers.
        .add(
            Access::Holds(Consume),
            groups::COMMIT_OFFSETS_ERRORS,
            routes!(groups::commit_offsets),
        )
        .add(
            Access::Holds(Consume),
            groups::GET_OFFSETS_ERRORS,
            routes!(groups::get_offsets),
        )
        .add(
            Access::Holds(Consume),
            groups::LIST_GROUPS_ERRORS,
            routes!(groups::list_groups),
        )
        // Groups with members: `consume` on the topics a join names (checked by the
        // handler); fetches and descriptions show only topics the token may consume.
        .add(
            Access::Holds(Consume),
            members::PUT_GROUP_ERRORS,
            routes!(members::put_group),
        )
        .add(
            Access::Holds(Consume),
            members::DESCRIBE_GROUP_ERRORS,
            routes!(members::describe_group),
        )
        .add(
            Access::Holds(Consume),
            members::JOIN_ERRORS,
            routes!(members::join),
        )
        .add(
            Access::Holds(Consume),
            members::LEAVE_ERRORS,
            routes!(members::leave),
        )
        .add(
            Access::Holds(Consume),
            members::MEMBER_RECORDS_ERRORS,
            routes!(members::member_records),
        )
        // Queue groups: `consume` on every topic of the group, checked by the handlers.
        .add(
            Access::Holds(Consume),
            queues::LEASE_ERRORS,
            routes!(queues::lease),
        )
        .add(
            Access::Holds(Consume),
            queues::ACK_ERRORS,
            routes!(queues::ack),
        )
        .add(
            Access::AnyToken,
            cluster::CLUSTER_ERRORS,
            routes!(cluster::get_cluster),
        )
        // What followers call on leaders: a token that holds admin (`cluster_token`).
        .add(
            Access::Holds(Admin),
            cluster::REPLICATE_ERRORS,
            routes!(cluster::replicate),
        )
        .add(
            Access::Holds(Admin),
            cluster::REPLICATE_ERRORS,
            routes!(cluster::epoch_end),
        )
        .add(Access::AnyToken, ops::HEALTHZ_ERRORS, routes!(ops::healthz))
        .add(Access::AnyToken, ops::READYZ_ERRORS, routes!(ops::readyz))
        .add(Access::AnyToken, ops::METRICS_ERRORS, routes!(ops::metrics))
        .add(Access::AnyToken, ops::OPENAPI_ERRORS, routes!(ops::openapi))
        .into_parts();
    assemble(state, router, access)
}

/// The router of `routes` with the middleware, the fallbacks and the OpenAPI document;
/// `access` holds what each route declared.
fn assemble(
    state: AppState,
    routes: OpenApiRouter<AppState>,
    access: access::AccessTable,
) -> Router {
    let (router, mut api) = routes.split_for_parts();
    access.document_errors(&mut api);
    state.set_access(access);
    let api = Arc::new(with_security(api));
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(mw::from_fn_with_state(
            state.clone(),
            middleware::every_request,
        ))
        // Produce enforces `max_request_bytes` itself, answering 413 in the contract's shape.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::Extension(api))
        // The web console's files and whoami, outside the API's authorization.
        .merge(console::routes())
        .with_state(state)
}

/// Declares the optional bearer-token scheme: every route takes a token when the server has
/// tokens configured (`401 unauthorized` without a valid one, `403 forbidden` without the
/// permission; see `access::EVERY_ROUTE_ERRORS`), and none when it has none.
fn with_security(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
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
    api
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use crate::config::Config;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use metrics::Metrics;
    use std::time::Duration;
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
            .layer(mw::from_fn(|req: Request<Body>, next: mw::Next| {
                middleware::time_limited(Duration::from_millis(100), req, async |req| {
                    next.run(req).await
                })
            }));
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
    async fn a_route_registered_without_declared_access_is_refused() {
        let undeclared = OpenApiRouter::new().routes(routes!(ops::healthz));
        let app = assemble(state(), undeclared, access::AccessTable::default());
        let (status, body) = call(app, "GET", "/healthz").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        // Declared, the same route answers (no tokens configured: anyone may call it).
        let declared = Routes::new(OpenApiRouter::new())
            .add(Access::AnyToken, ops::HEALTHZ_ERRORS, routes!(ops::healthz))
            .into_parts();
        let (status, _) = call(assemble(state(), declared.0, declared.1), "GET", "/healthz").await;
        assert_eq!(status, StatusCode::OK);
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
