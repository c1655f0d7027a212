//! The server process: claims the data directory, listens, recovers the partitions while
//! `/readyz` says 503, serves, runs the maintenance task, and on SIGTERM or SIGINT stops
//! accepting, finishes in-flight requests and msyncs every partition.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::config::Config;
use crate::server::metrics::Metrics;
use crate::server::transport::{http, listener, tls};
use crate::server::{router, AppState};

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
    // The Kafka listener speaks TLS with the same certificate.
    let kafka_tls = tls.clone();
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
    let kafka_listener = crate::kafka::bind(&state).await?;

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
    let mut stopped = state.shutdown_signal();
    let server = tokio::spawn(http::run(listener, app, options, async move {
        // A signal, or a start-up that failed after the listener began (the cluster).
        tokio::select! {
            _ = signals.next() => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
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
    if config.cluster {
        let kafka_bound = kafka_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let kafka = if config.kafka_advertised_listener.is_empty() {
            kafka_bound
        } else {
            config.kafka_advertised_listener.clone()
        };
        let settings = crate::cluster::Settings::of(&config, &format!("{scheme}://{addr}"), &kafka);
        match crate::cluster::Cluster::join(settings, Arc::clone(&broker), state.shutdown_signal())
            .await
        {
            Ok(cluster) => {
                state.metrics().register_cluster(&cluster);
                state.set_cluster(cluster);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot join the cluster");
                state.begin_shutdown();
                let _ = server.await;
                return Err(anyhow::anyhow!("cannot join the cluster: {e}"));
            }
        }
    }
    let maintenance = crate::maintenance::spawn(Arc::clone(&broker), state.shutdown_signal());
    let kafka = kafka_listener.map(|l| {
        tokio::spawn(crate::kafka::serve(
            l,
            Arc::clone(&broker),
            state.clone(),
            kafka_tls,
        ))
    });

    server.await?;
    if let Some(k) = kafka {
        let _ = k.await;
    }
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
