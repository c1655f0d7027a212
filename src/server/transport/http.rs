//! Serving connections: HTTP/1.1 and HTTP/2 (by prior knowledge in cleartext, by ALPN over
//! TLS) on the [`LimitedListener`], with the timeouts that keep a slow client from holding a
//! connection: a TLS handshake and the first request's headers must arrive within
//! `request_header_timeout_ms` of the connection; a later HTTP/1.1 request's headers within
//! `connection_idle_timeout_ms` of the previous response (hyper's header timer starts when
//! the connection goes back to waiting for a request, so it is also the keep-alive limit);
//! and a connection on which nothing moves is closed after `connection_idle_timeout_ms`
//! (the server sends no HTTP/2 pings of its own, which would keep it busy for ever). A
//! graceful stop lets in-flight requests finish, for at most `shutdown_grace_ms`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::listener::LimitedListener;

/// How connections are served.
pub struct HttpOptions {
    /// From accepting a connection to the end of its first request's headers (TLS handshake
    /// included).
    pub header_timeout: Duration,
    /// From a response to the end of the next HTTP/1.1 request's headers on the same
    /// connection (the keep-alive limit).
    pub keep_alive_timeout: Duration,
    /// How long a graceful stop waits for open connections to finish their requests before
    /// it closes them.
    pub shutdown_grace: Duration,
    /// TLS, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
}

/// Concurrent requests on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 256;

/// Accepts and serves connections until `shutdown` completes, then stops accepting and waits
/// for the open connections to finish their in-flight requests.
pub async fn run(
    mut listener: LimitedListener,
    app: Router,
    options: HttpOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.keep_alive_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(None)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let builder = Arc::new(builder);
    let options = Arc::new(options);
    let graceful = GracefulShutdown::new();
    // Every connection's task, so that those still busy after the grace period can be
    // stopped before the final flush.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (io, addr) = listener.accept() => {
                let conn = serve_connection(
                    io,
                    app.clone(),
                    Arc::clone(&builder),
                    Arc::clone(&options),
                    graceful.watcher(),
                );
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, error = %e, "connection ended with an error");
                    }
                });
            }
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = options.shutdown_grace.as_millis() as u64,
            "connections still busy after shutdown_grace_ms; closing them"
        );
    }
    connections.shutdown().await;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve_connection(
    io: super::listener::Connection,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    options: Arc<HttpOptions>,
    watcher: Watcher,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + options.header_timeout;
    match &options.tls {
        None => serve_io(io, app, &builder, deadline, watcher).await,
        Some(acceptor) => {
            let tls = tokio::time::timeout_at(deadline, acceptor.accept(io))
                .await
                .map_err(|_| "TLS handshake timed out")??;
            serve_io(tls, app, &builder, deadline, watcher).await
        }
    }
}

async fn serve_io<I>(
    io: I,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    deadline: Instant,
    watcher: Watcher,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first_request = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&first_request);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        let mut app = app.clone();
        async move { app.call(req.map(Body::new)).await }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let conn = watcher.watch(conn);
    tokio::pin!(conn);
    let header_deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(header_deadline);
    let mut waiting_for_headers = true;
    loop {
        tokio::select! {
            result = &mut conn => return result,
            () = &mut header_deadline, if waiting_for_headers => {
                if !first_request.load(Ordering::Relaxed) {
                    // Dropping the connection closes it.
                    return Err("no complete request headers within request_header_timeout_ms".into());
                }
                waiting_for_headers = false;
            }
        }
    }
}
