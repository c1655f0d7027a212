//! The Kafka wire protocol, on a listener of its own beside the HTTP one: Kafka clients
//! (kcat, librdkafka, kafka-python, kafkajs, ...) produce to and consume from the same
//! topics, with the same offsets and committed group offsets, as HTTP clients and local
//! tailers.
//!
//! Messages are decoded and encoded by the `kafka-protocol` crate; this module maps them onto
//! the broker. Each connection is served in order, one request at a time, as Kafka brokers
//! do: a long-polling fetch holds back the requests behind it on the same connection.
//! Records convert at the edge ([`records`]): the log holds mapq frames, whichever protocol
//! wrote them.

mod admin;
mod fetch;
mod groups;
mod produce;
mod records;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
    SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::auth::Principal;
use crate::broker::{Broker, BrokerError};
use crate::server::AppState;

/// The node id of this server in Metadata and FindCoordinator answers.
const NODE_ID: i32 = 1;
/// A connection that sends nothing for this long is closed (Kafka's
/// `connections.max.idle.ms`); clients reconnect when they need to.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Room for the parts of a request beside its records.
const REQUEST_OVERHEAD: usize = 1 << 20;
/// The largest request other than Produce. The protocol crate decodes a request into
/// structs several times its size on the wire (an array entry of a few bytes becomes a
/// struct of a hundred): metadata, commits and fetches of thousands of partitions fit.
const MAX_OTHER_REQUEST: usize = 1 << 20;

/// The versions this server speaks of each API it answers, as its ApiVersions advertises
/// them: within what the protocol crate can decode, and up to the versions whose fields
/// mapq fills in (no topic ids, no fetch sessions, no transactions, no ListOffsets by
/// largest timestamp). OffsetFetch from version 2, the first with a top-level error.
const API_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 9),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 2, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 5),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::SaslAuthenticate, 0, 2),
];

fn advertised_range(key: ApiKey) -> Option<(i16, i16)> {
    API_VERSIONS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Binds the Kafka listener when `kafka_listen` is set, and prints its address (tests and
/// scripts read it, as they read the HTTP one).
pub async fn bind(state: &AppState) -> anyhow::Result<Option<TcpListener>> {
    let config = state.config();
    if config.kafka_listen.is_empty() {
        return Ok(None);
    }
    let addr = crate::config::resolve_addr(&config.kafka_listen).map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for Kafka clients on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "listening for Kafka clients");
    // Not println!: a closed standard output (a supervisor that read the first line and
    // went away) must not stop the server.
    let _ = writeln!(std::io::stdout(), "mapq kafka listening on {bound}");
    Ok(Some(listener))
}

/// What every Kafka connection shares.
pub struct Kafka {
    broker: Arc<Broker>,
    state: AppState,
    /// Host and port clients are told to connect to.
    host: StrBytes,
    port: i32,
    groups: groups::ClassicGroups,
    producers: produce::Producers,
}

/// Serves Kafka clients on `listener` until shutdown begins; then each connection finishes
/// the request it is on and closes.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    state: AppState,
    tls: Option<TlsAcceptor>,
) {
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "Kafka listener has no address");
            return;
        }
    };
    let (host, port) = advertised(&state.config().kafka_advertised_listener, bound);
    let delay = Duration::from_millis(state.config().kafka_group_initial_rebalance_delay_ms);
    let kafka = Arc::new(Kafka {
        groups: groups::ClassicGroups::new(delay),
        producers: produce::Producers::default(),
        broker,
        state: state.clone(),
        host: StrBytes::from_string(host),
        port,
    });
    let weak = Arc::downgrade(&kafka);
    kafka
        .broker
        .set_kafka_groups(crate::broker::KafkaGroups(Box::new(move |group| {
            weak.upgrade().is_some_and(|k| k.groups.has_members(group))
        })));
    tokio::spawn(groups::expire_members(Arc::clone(&kafka)));
    let connections = Arc::new(Semaphore::new(state.config().max_connections as usize));
    let mut shutdown = state.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: wait a moment rather than spin.
                tracing::warn!(error = %e, "Kafka accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, "Kafka connection refused: max_connections reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let kafka = Arc::clone(&kafka);
        let tls = tls.clone();
        tokio::spawn(async move {
            let metrics = kafka.state.metrics().clone();
            metrics.kafka_connection_opened();
            match tls {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        Duration::from_millis(kafka.state.config().request_header_timeout_ms),
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(s)) => Connection::new(&kafka, peer).run(s).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "Kafka TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "Kafka TLS handshake timed out"),
                    }
                }
                None => Connection::new(&kafka, peer).run(stream).await,
            }
            metrics.kafka_connection_closed();
            drop(permit);
        });
    }
    tracing::info!("Kafka listener closed");
}

/// The host and port to advertise: the configured `host:port`, else the bound address.
fn advertised(configured: &str, bound: SocketAddr) -> (String, i32) {
    if let Some((host, port)) = configured.rsplit_once(':') {
        if let Ok(port) = port.parse::<u16>() {
            return (host.trim_matches(['[', ']']).to_owned(), i32::from(port));
        }
    }
    let ip = if bound.ip().is_unspecified() {
        // Bound to every interface: loopback is the one address sure to reach it here.
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        bound.ip()
    };
    (ip.to_string(), i32::from(bound.port()))
}

/// Why a connection is closed rather than answered.
#[derive(Debug, thiserror::Error)]
enum Close {
    /// The request could not be parsed, or breaks the protocol (a request before SASL).
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Io(std::io::Error),
}

/// SASL progress of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sasl {
    /// No tokens configured: nothing to do.
    Off,
    /// Waiting for SaslHandshake.
    Start,
    /// SaslHandshake v1 done: SaslAuthenticate carries the PLAIN message.
    Authenticate,
    /// SaslHandshake v0 done: the next frame is the bare PLAIN message.
    Raw,
    Done,
}

/// One client connection.
struct Connection<'k> {
    kafka: &'k Arc<Kafka>,
    peer: SocketAddr,
    principal: Option<Principal>,
    sasl: Sasl,
}

/// What one request did, for its metrics: the errors its answer carries.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    errors: Vec<ResponseError>,
}

impl Outcome {
    /// The code of `e`, counted as an error of this request.
    pub(crate) fn error(&mut self, e: ResponseError) -> i16 {
        self.errors.push(e);
        e.code()
    }

    /// 0, or the code of `e` counted.
    pub(crate) fn result(&mut self, r: Result<(), ResponseError>) -> i16 {
        match r {
            Ok(()) => 0,
            Err(e) => self.error(e),
        }
    }
}

impl<'k> Connection<'k> {
    fn new(kafka: &'k Arc<Kafka>, peer: SocketAddr) -> Self {
        let (principal, sasl) = if kafka.state.tokens().is_empty() {
            (Some(Principal::Anyone), Sasl::Off)
        } else {
            (None, Sasl::Start)
        };
        Connection {
            kafka,
            peer,
            principal,
            sasl,
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, mut stream: S) {
        let mut shutdown = self.kafka.state.shutdown_signal();
        let max = self.kafka.state.config().max_request_bytes as usize + REQUEST_OVERHEAD;
        loop {
            let frame = tokio::select! {
                f = tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut stream, max)) => match f {
                    Ok(Ok(Some(f))) => f,
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "Kafka connection closed");
                        return;
                    }
                    Err(_) => return,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let answer = match self.answer(frame).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::info!(peer = %self.peer, error = %e, "Kafka connection closed");
                    return;
                }
            };
            if let Some(bytes) = answer {
                if let Err(e) = write_frame(&mut stream, &bytes).await {
                    tracing::debug!(peer = %self.peer, error = %e, "Kafka connection closed");
                    return;
                }
            }
        }
    }

    /// The encoded answer to one frame (`None`: no answer, as for `acks=0`).
    async fn answer(&mut self, mut frame: Bytes) -> Result<Option<BytesMut>, Close> {
        if self.sasl == Sasl::Raw {
            // After SaslHandshake v0 the PLAIN message comes bare, and so does the answer.
            self.authenticate(&frame)
                .map_err(|e| Close::Protocol(format!("SASL/PLAIN: {e}")))?;
            return Ok(Some(BytesMut::new()));
        }
        if frame.len() < 8 {
            return Err(Close::Protocol("a request shorter than its header".into()));
        }
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        if key != ApiKey::Produce as i16 && frame.len() > MAX_OTHER_REQUEST {
            return Err(Close::Protocol(format!(
                "a request of {} bytes (at most {MAX_OTHER_REQUEST} but for Produce)",
                frame.len()
            )));
        }
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let api =
            ApiKey::try_from(key).map_err(|_| Close::Protocol(format!("unknown API key {key}")))?;
        let Some((min, max)) = advertised_range(api) else {
            return Err(Close::Protocol(format!("{api:?} is not supported")));
        };
        if !(min..=max).contains(&version) {
            if api == ApiKey::ApiVersions {
                // KIP-511: answer in version 0 with the supported range, so the client retries.
                let mut out = Outcome::default();
                let mut r = api_versions();
                r.error_code = out.error(ResponseError::UnsupportedVersion);
                self.count(api, Instant::now(), &out);
                return encode(correlation_id, api, 0, ResponseKind::ApiVersions(r)).map(Some);
            }
            return Err(Close::Protocol(format!(
                "{api:?} version {version} is not supported (this server speaks {min} to {max})"
            )));
        }
        let header_version = api.request_header_version(version);
        let header = RequestHeader::decode(&mut frame, header_version)
            .map_err(|e| Close::Protocol(format!("{api:?} v{version} header: {e}")))?;
        let request = RequestKind::decode(api, &mut frame, version)
            .map_err(|e| Close::Protocol(format!("{api:?} v{version}: {e}")))?;
        let started = Instant::now();
        let mut out = Outcome::default();
        let response = self.dispatch(&header, request, &mut out).await?;
        self.count(api, started, &out);
        match response {
            Some(r) => encode(header.correlation_id, api, version, r).map(Some),
            None => Ok(None),
        }
    }

    fn count(&self, api: ApiKey, started: Instant, out: &Outcome) {
        self.kafka
            .state
            .metrics()
            .observe_kafka(api_name(api), &out.errors, started.elapsed());
    }

    async fn dispatch(
        &mut self,
        header: &RequestHeader,
        request: RequestKind,
        out: &mut Outcome,
    ) -> Result<Option<ResponseKind>, Close> {
        let v = header.request_api_version;
        // Before SASL is done only the handshake itself is answered.
        let principal =
            match (&self.principal, &request) {
                (_, RequestKind::ApiVersions(_)) => {
                    return Ok(Some(ResponseKind::ApiVersions(api_versions())))
                }
                (_, RequestKind::SaslHandshake(r)) => {
                    let mut answer = SaslHandshakeResponse::default();
                    answer.mechanisms = vec![StrBytes::from_static_str("PLAIN")];
                    if self.sasl != Sasl::Start {
                        answer.error_code = out.error(ResponseError::IllegalSaslState);
                    } else if r.mechanism.as_str() != "PLAIN" {
                        answer.error_code = out.error(ResponseError::UnsupportedSaslMechanism);
                    } else {
                        self.sasl = if v == 0 {
                            Sasl::Raw
                        } else {
                            Sasl::Authenticate
                        };
                    }
                    return Ok(Some(ResponseKind::SaslHandshake(answer)));
                }
                (_, RequestKind::SaslAuthenticate(r)) => {
                    let mut answer = SaslAuthenticateResponse::default();
                    if self.sasl != Sasl::Authenticate {
                        answer.error_code = out.error(ResponseError::IllegalSaslState);
                    } else if let Err(why) = self.authenticate(&r.auth_bytes) {
                        answer.error_code = out.error(ResponseError::SaslAuthenticationFailed);
                        answer.error_message = Some(StrBytes::from_string(why));
                    }
                    return Ok(Some(ResponseKind::SaslAuthenticate(answer)));
                }
                (Some(p), _) => p.clone(),
                (None, _) => return Err(Close::Protocol(
                    "a request before SASL authentication (tokens are configured: use SASL/PLAIN)"
                        .into(),
                )),
            };
        let k = self.kafka;
        let ctx = Ctx {
            kafka: k,
            principal: &principal,
            version: v,
            client_id: header
                .client_id
                .as_ref()
                .map_or_else(String::new, |c| c.to_string()),
            peer: self.peer,
        };
        Ok(match request {
            RequestKind::Metadata(r) => Some(ResponseKind::Metadata(ctx.metadata(r, out).await)),
            RequestKind::Produce(r) => ctx.produce(r, out).await.map(ResponseKind::Produce),
            RequestKind::Fetch(r) => Some(ResponseKind::Fetch(ctx.fetch(r, out).await)),
            RequestKind::ListOffsets(r) => {
                Some(ResponseKind::ListOffsets(ctx.list_offsets(r, out).await))
            }
            RequestKind::CreateTopics(r) => {
                Some(ResponseKind::CreateTopics(ctx.create_topics(r, out).await))
            }
            RequestKind::DeleteTopics(r) => {
                Some(ResponseKind::DeleteTopics(ctx.delete_topics(r, out).await))
            }
            RequestKind::DescribeConfigs(r) => {
                Some(ResponseKind::DescribeConfigs(ctx.describe_configs(r, out)))
            }
            RequestKind::InitProducerId(r) => Some(ResponseKind::InitProducerId(
                ctx.init_producer_id(r, out).await,
            )),
            RequestKind::FindCoordinator(r) => {
                Some(ResponseKind::FindCoordinator(ctx.find_coordinator(r, out)))
            }
            RequestKind::OffsetCommit(r) => {
                Some(ResponseKind::OffsetCommit(ctx.offset_commit(r, out).await))
            }
            RequestKind::OffsetFetch(r) => {
                Some(ResponseKind::OffsetFetch(ctx.offset_fetch(r, out).await))
            }
            RequestKind::JoinGroup(r) => {
                Some(ResponseKind::JoinGroup(ctx.join_group(r, out).await))
            }
            RequestKind::SyncGroup(r) => {
                Some(ResponseKind::SyncGroup(ctx.sync_group(r, out).await))
            }
            RequestKind::Heartbeat(r) => Some(ResponseKind::Heartbeat(ctx.heartbeat(r, out))),
            RequestKind::LeaveGroup(r) => Some(ResponseKind::LeaveGroup(ctx.leave_group(r, out))),
            RequestKind::ListGroups(r) => Some(ResponseKind::ListGroups(ctx.list_groups(r, out))),
            RequestKind::DescribeGroups(r) => {
                Some(ResponseKind::DescribeGroups(ctx.describe_groups(r, out)))
            }
            other => {
                return Err(Close::Protocol(format!(
                    "no handler for {:?}",
                    std::mem::discriminant(&other)
                )))
            }
        })
    }

    /// Checks a SASL/PLAIN message (`authzid NUL user NUL password`): the password must be
    /// a configured token's secret, and the user that token's name.
    fn authenticate(&mut self, message: &[u8]) -> Result<(), String> {
        let mut parts = message.split(|&b| b == 0);
        let (Some(_authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed PLAIN message".into());
        };
        let user = std::str::from_utf8(user).map_err(|_| "user is not UTF-8".to_owned())?;
        let password =
            std::str::from_utf8(password).map_err(|_| "password is not UTF-8".to_owned())?;
        match self.kafka.state.tokens().authenticate(Some(password)) {
            Some(p) if p.name() == user => {
                tracing::debug!(peer = %self.peer, token = user, "Kafka client authenticated");
                self.principal = Some(p);
                self.sasl = Sasl::Done;
                Ok(())
            }
            _ => {
                tracing::info!(peer = %self.peer, user, "Kafka SASL/PLAIN authentication failed");
                Err("authentication failed: unknown user or wrong password".into())
            }
        }
    }
}

/// What a request's handler needs: the server, who asks, and the version asked in.
pub(crate) struct Ctx<'a> {
    kafka: &'a Arc<Kafka>,
    principal: &'a Principal,
    version: i16,
    client_id: String,
    peer: SocketAddr,
}

impl Ctx<'_> {
    fn broker(&self) -> &Arc<Broker> {
        &self.kafka.broker
    }
}

fn api_versions() -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = API_VERSIONS
        .iter()
        .map(|&(key, min, max)| {
            let mut v = kafka_protocol::messages::api_versions_response::ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    r
}

/// The metric label of an API.
fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        _ => "other",
    }
}

/// The Kafka error code of a broker error.
pub(crate) fn kafka_error(e: &BrokerError) -> ResponseError {
    use crate::log::LogError;
    match e {
        BrokerError::TopicNotFound(_) | BrokerError::PartitionNotFound { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        BrokerError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        BrokerError::InvalidName(_) => ResponseError::InvalidTopicException,
        BrokerError::InvalidConfig(_) | BrokerError::InvalidSetting { .. } => {
            ResponseError::InvalidConfig
        }
        BrokerError::TooManyTopics(_) => ResponseError::PolicyViolation,
        BrokerError::OffsetBeyondEnd { .. } => ResponseError::OffsetOutOfRange,
        BrokerError::Log(LogError::OffsetOutOfRange { .. }) => ResponseError::OffsetOutOfRange,
        BrokerError::Log(LogError::RecordTooLarge(_)) => ResponseError::MessageTooLarge,
        BrokerError::Log(LogError::NoSpace { .. }) => ResponseError::KafkaStorageError,
        BrokerError::Log(LogError::Deleted) => ResponseError::UnknownTopicOrPartition,
        BrokerError::TooManyWaiters => ResponseError::ThrottlingQuotaExceeded,
        BrokerError::ClusterStore(_) => ResponseError::CoordinatorNotAvailable,
        BrokerError::WrongGroupType { .. }
        | BrokerError::GroupExists(_)
        | BrokerError::MembersOnly(_)
        | BrokerError::Member(_) => ResponseError::InconsistentGroupProtocol,
        _ => ResponseError::UnknownServerError,
    }
}

/// Reads one size-prefixed frame; `None` at a clean end of stream.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Option<Bytes>, Close> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Close::Io(e)),
    }
    let len = i32::from_be_bytes(len);
    if len < 0 || len as usize > max {
        return Err(Close::Protocol(format!(
            "a request of {len} bytes (at most {max}: max_request_bytes and 1 MiB)"
        )));
    }
    let mut buf = BytesMut::zeroed(len as usize);
    stream.read_exact(&mut buf).await.map_err(Close::Io)?;
    Ok(Some(buf.freeze()))
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, body: &[u8]) -> std::io::Result<()> {
    stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// A response's header and body.
fn encode(
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    response: ResponseKind,
) -> Result<BytesMut, Close> {
    // A fetch answer is mostly its records: room for them up front, not a buffer that
    // doubles (and faults fresh pages in) as it fills.
    let records: usize = match &response {
        ResponseKind::Fetch(f) => f
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.records.as_ref().map_or(0, bytes::Bytes::len))
            .sum(),
        _ => 0,
    };
    let mut buf = BytesMut::with_capacity(records + 4096);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header
        .encode(&mut buf, api.response_header_version(version))
        .and_then(|()| response.encode(&mut buf, version))
        .map_err(|e| {
            Close::Protocol(format!("cannot encode the {api:?} v{version} answer: {e}"))
        })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_ranges_are_within_what_the_crate_decodes() {
        for &(key, min, max) in API_VERSIONS {
            let valid = key.valid_versions();
            assert!(
                valid.min <= min && max <= valid.max && min <= max,
                "{key:?}: {min}..={max} is outside {valid:?}"
            );
        }
    }

    #[test]
    fn advertised_address_defaults_to_the_bound_one() {
        let bound: SocketAddr = "0.0.0.0:9092".parse().unwrap();
        assert_eq!(advertised("", bound), ("127.0.0.1".into(), 9092));
        assert_eq!(
            advertised("kafka.example.com:19092", bound),
            ("kafka.example.com".into(), 19092)
        );
    }
}
