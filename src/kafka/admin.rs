//! Metadata, CreateTopics, DeleteTopics, DescribeConfigs and FindCoordinator: one node that
//! leads every partition and coordinates every group.

use std::sync::Arc;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{kafka_error, Ctx, Outcome, NODE_ID};
use crate::auth::Permission;
use crate::broker::{Topic, TopicOverrides};

/// DescribeConfigs' resource type of a topic, and of a broker.
const TOPIC_RESOURCE: i8 = 2;
const BROKER_RESOURCE: i8 = 4;
/// DescribeConfigs' config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

impl Ctx<'_> {
    pub(super) async fn metadata(
        &self,
        req: MetadataRequest,
        out: &mut Outcome,
    ) -> MetadataResponse {
        let mut r = MetadataResponse::default();
        let cluster = self.kafka.state.cluster().map(|c| c.view());
        match &cluster {
            // In a cluster: every live node, by its broker id and advertised Kafka address.
            Some(view) => {
                for n in view.nodes.values() {
                    let Some((host, port)) = n.kafka_host_port() else {
                        continue;
                    };
                    let mut b = MetadataResponseBroker::default();
                    b.node_id = BrokerId(crate::cluster::kafka_broker_id(&n.node_id));
                    b.host = StrBytes::from_string(host.to_owned());
                    b.port = port;
                    r.brokers.push(b);
                }
                r.controller_id = BrokerId(
                    view.controller
                        .as_deref()
                        .map_or(-1, crate::cluster::kafka_broker_id),
                );
            }
            None => {
                let mut broker = MetadataResponseBroker::default();
                broker.node_id = BrokerId(NODE_ID);
                broker.host = self.kafka.host.clone();
                broker.port = self.kafka.port;
                r.brokers = vec![broker];
                r.controller_id = BrokerId(NODE_ID);
            }
        }
        r.cluster_id = Some(StrBytes::from_static_str("mapq"));
        // Version 0 asks for every topic with an empty list, later versions with null.
        let names: Option<Vec<String>> = match req.topics {
            Some(t) if !(t.is_empty() && self.version == 0) => Some(
                t.into_iter()
                    .map(|t| t.name.map(|n| n.0.to_string()).unwrap_or_default())
                    .collect(),
            ),
            _ => None,
        };
        let create = self.version < 4 || req.allow_auto_topic_creation;
        match names {
            None => {
                for t in self.broker().topics() {
                    if self.principal.sees(t.name()) {
                        r.topics.push(topic_metadata(&t, cluster.as_deref()));
                    }
                }
            }
            Some(names) => {
                for name in names {
                    let found = if !self.principal.sees(&name) {
                        Err(ResponseError::TopicAuthorizationFailed)
                    } else {
                        let broker = Arc::clone(self.broker());
                        let n = name.clone();
                        let may_create = create && self.principal.may(Permission::Produce, &name);
                        match self.kafka.state.cluster() {
                            // In a cluster, a topic is created in etcd, then on every node.
                            Some(c) if may_create && broker.topic(&n).is_err() => {
                                crate::server::routes::cluster::ensure_topic(c, &n)
                                    .await
                                    .map_err(|e| match e.code {
                                        crate::api::ErrorCode::TopicNotFound => {
                                            ResponseError::UnknownTopicOrPartition
                                        }
                                        _ => ResponseError::LeaderNotAvailable,
                                    })
                                    .and_then(|()| broker.topic(&n).map_err(|e| kafka_error(&e)))
                            }
                            _ => crate::broker::blocking(move || match broker.topic(&n) {
                                Err(crate::broker::BrokerError::TopicNotFound(_)) if may_create => {
                                    broker.topic_for_produce(&n, [])
                                }
                                other => other,
                            })
                            .await
                            .map_err(|e| kafka_error(&e)),
                        }
                    };
                    let view = self.kafka.state.cluster().map(|c| c.view());
                    match found {
                        Ok(t) => r.topics.push(topic_metadata(&t, view.as_deref())),
                        Err(e) => {
                            let mut t = MetadataResponseTopic::default();
                            t.name = Some(TopicName(StrBytes::from_string(name)));
                            t.error_code = out.error(e);
                            r.topics.push(t);
                        }
                    }
                }
            }
        }
        r
    }

    pub(super) async fn create_topics(
        &self,
        req: CreateTopicsRequest,
        out: &mut Outcome,
    ) -> CreateTopicsResponse {
        let mut r = CreateTopicsResponse::default();
        for topic in req.topics {
            let mut t = CreatableTopicResult::default();
            t.name = topic.name.clone();
            let name = topic.name.0.to_string();
            let created = if !self.principal.may(Permission::Admin, &name) {
                Err((ResponseError::TopicAuthorizationFailed, None))
            } else {
                let cluster = self.kafka.state.cluster();
                match (overrides_of(&topic, cluster.is_some()), cluster) {
                    (Err(e), _) => Err(e),
                    // In a cluster the topic is created in etcd, then on every node.
                    (Ok(c), Some(cluster)) if !req.validate_only => {
                        let partitions = u32::try_from(topic.num_partitions)
                            .unwrap_or(self.broker().config().default_partitions);
                        let rf = c.replication_factor;
                        match cluster
                            .create_topic(&name, partitions, rf, c.min_insync_replicas, c.overrides)
                            .await
                        {
                            Ok(t) => Ok(Some(t)),
                            Err(e) => {
                                use crate::cluster::ClusterError as E;
                                let code = match &e {
                                    E::TopicExists(_) => ResponseError::TopicAlreadyExists,
                                    E::InvalidConfig(_) => ResponseError::InvalidReplicationFactor,
                                    E::Broker(b) => kafka_error(b),
                                    _ => ResponseError::LeaderNotAvailable,
                                };
                                Err((code, Some(e.to_string())))
                            }
                        }
                    }
                    (Ok(Creation { overrides, .. }), _) => {
                        let broker = Arc::clone(self.broker());
                        let partitions = u32::try_from(topic.num_partitions).ok();
                        let validate_only = req.validate_only;
                        crate::broker::blocking(move || {
                            overrides.validate()?;
                            if validate_only {
                                crate::broker::validate_name(&name)?;
                                return match broker.topic(&name) {
                                    Ok(_) => Err(crate::broker::BrokerError::TopicExists(name)),
                                    Err(_) => Ok(None),
                                };
                            }
                            broker.create_topic(&name, partitions, overrides).map(Some)
                        })
                        .await
                        .map_err(|e| (kafka_error(&e), Some(e.to_string())))
                    }
                }
            };
            match created {
                Ok(topic) => {
                    t.num_partitions = topic.as_ref().map_or(-1, |t| t.partition_count() as i32);
                    t.replication_factor = match (self.kafka.state.cluster(), &topic) {
                        (Some(c), Some(topic)) => c
                            .view()
                            .topics
                            .get(topic.name())
                            .map_or(-1, |s| s.replication_factor as i16),
                        _ => 1,
                    };
                }
                Err((e, message)) => {
                    t.error_code = out.error(e);
                    t.error_message = message.map(StrBytes::from_string);
                    t.num_partitions = -1;
                    t.replication_factor = -1;
                }
            }
            r.topics.push(t);
        }
        r
    }

    pub(super) async fn delete_topics(
        &self,
        req: DeleteTopicsRequest,
        out: &mut Outcome,
    ) -> DeleteTopicsResponse {
        let mut r = DeleteTopicsResponse::default();
        for name in req.topic_names {
            let mut t = DeletableTopicResult::default();
            t.name = Some(name.clone());
            let name = name.0.to_string();
            let result = if !self.principal.may(Permission::Admin, &name) {
                Err(ResponseError::TopicAuthorizationFailed)
            } else if let Some(c) = self.kafka.state.cluster() {
                // In a cluster: deleted in etcd, then by every node.
                match self.broker().topic(&name) {
                    Err(e) => Err(kafka_error(&e)),
                    Ok(_) => c
                        .delete_topic(&name)
                        .await
                        .map_err(|_| ResponseError::LeaderNotAvailable),
                }
            } else {
                let broker = Arc::clone(self.broker());
                crate::broker::blocking(move || broker.delete_topic(&name))
                    .await
                    .map_err(|e| kafka_error(&e))
            };
            t.error_code = out.result(result);
            r.responses.push(t);
        }
        r
    }

    pub(super) fn describe_configs(
        &self,
        req: DescribeConfigsRequest,
        out: &mut Outcome,
    ) -> DescribeConfigsResponse {
        let mut r = DescribeConfigsResponse::default();
        for res in req.resources {
            let mut result = DescribeConfigsResult::default();
            result.resource_type = res.resource_type;
            result.resource_name = res.resource_name.clone();
            let entries = match res.resource_type {
                TOPIC_RESOURCE => {
                    let name = res.resource_name.to_string();
                    if !self.principal.sees(&name) {
                        Err(ResponseError::TopicAuthorizationFailed)
                    } else {
                        self.broker()
                            .topic(&name)
                            .map(|t| self.topic_configs(&t))
                            .map_err(|e| kafka_error(&e))
                    }
                }
                BROKER_RESOURCE => Ok(self.broker_configs()),
                _ => Err(ResponseError::InvalidRequest),
            };
            match entries {
                // No keys (null, or none listed): every setting.
                Ok(entries) => {
                    result.configs = entries
                        .into_iter()
                        .filter(|e| {
                            res.configuration_keys
                                .as_ref()
                                .is_none_or(|keys| keys.is_empty() || keys.contains(&e.name))
                        })
                        .collect()
                }
                Err(e) => result.error_code = out.error(e),
            }
            r.results.push(result);
        }
        r
    }

    /// A topic's settings under Kafka's names.
    fn topic_configs(&self, t: &Topic) -> Vec<DescribeConfigsResourceResult> {
        let c = t.config();
        let server = self.broker().config();
        let limit = |v: Option<u64>| v.map_or(-1, |v| v as i64).to_string();
        let source = |own: bool| if own { SOURCE_TOPIC } else { SOURCE_DEFAULT };
        vec![
            entry(
                "retention.ms",
                limit(c.retention_ms),
                source(c.retention_ms != server.retention_ms),
            ),
            entry(
                "retention.bytes",
                limit(c.retention_bytes),
                source(c.retention_bytes != server.retention_bytes),
            ),
            entry(
                "segment.bytes",
                c.segment_bytes.to_string(),
                source(c.segment_bytes != server.segment_bytes),
            ),
            entry(
                "segment.ms",
                limit(c.segment_ms),
                source(c.segment_ms != server.segment_ms),
            ),
            entry("cleanup.policy", "delete".into(), SOURCE_DEFAULT),
            entry(
                "max.message.bytes",
                server.max_record_bytes.to_string(),
                SOURCE_DEFAULT,
            ),
            entry(
                "message.timestamp.type",
                "CreateTime".into(),
                SOURCE_DEFAULT,
            ),
            entry("min.insync.replicas", "1".into(), SOURCE_DEFAULT),
        ]
    }

    fn broker_configs(&self) -> Vec<DescribeConfigsResourceResult> {
        let c = self.broker().config();
        vec![
            entry(
                "auto.create.topics.enable",
                c.auto_create_topics.to_string(),
                SOURCE_DEFAULT,
            ),
            entry(
                "num.partitions",
                c.default_partitions.to_string(),
                SOURCE_DEFAULT,
            ),
            entry("default.replication.factor", "1".into(), SOURCE_DEFAULT),
            entry(
                "message.max.bytes",
                c.max_record_bytes.to_string(),
                SOURCE_DEFAULT,
            ),
        ]
    }

    pub(super) fn find_coordinator(
        &self,
        req: FindCoordinatorRequest,
        out: &mut Outcome,
    ) -> FindCoordinatorResponse {
        let mut r = FindCoordinatorResponse::default();
        let mut answer = |key: StrBytes| {
            let mut c = Coordinator::default();
            c.key = key;
            if req.key_type != 0 {
                // Transactions are not offered: no transaction coordinator.
                c.error_code = out.error(ResponseError::CoordinatorNotAvailable);
                c.node_id = BrokerId(-1);
                c.port = -1;
            } else if let Some(cluster) = self.kafka.state.cluster() {
                // In a cluster: the node that coordinates the group (all nodes agree).
                let node = cluster.coordinator_of(c.key.as_str());
                match node.as_ref().and_then(|n| Some((n, n.kafka_host_port()?))) {
                    Some((n, (host, port))) => {
                        c.node_id = BrokerId(crate::cluster::kafka_broker_id(&n.node_id));
                        c.host = StrBytes::from_string(host.to_owned());
                        c.port = port;
                    }
                    None => {
                        c.error_code = out.error(ResponseError::CoordinatorNotAvailable);
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                    }
                }
            } else {
                c.node_id = BrokerId(NODE_ID);
                c.host = self.kafka.host.clone();
                c.port = self.kafka.port;
            }
            c
        };
        if self.version >= 4 {
            r.coordinators = req
                .coordinator_keys
                .iter()
                .cloned()
                .map(&mut answer)
                .collect();
        } else {
            let c = answer(req.key.clone());
            r.error_code = c.error_code;
            r.node_id = c.node_id;
            r.host = c.host;
            r.port = c.port;
        }
        r
    }
}

fn entry(name: &'static str, value: String, source: i8) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default();
    e.name = StrBytes::from_static_str(name);
    e.value = Some(StrBytes::from_string(value));
    e.read_only = true;
    e.config_source = source;
    e
}

/// A topic's metadata: one broker leads every partition, or in a cluster, each
/// partition's leader, epoch, replicas and in-sync replicas as etcd holds them.
fn topic_metadata(
    t: &Topic,
    cluster: Option<&crate::cluster::state::ClusterView>,
) -> MetadataResponseTopic {
    let ids = |nodes: &[String]| -> Vec<BrokerId> {
        nodes
            .iter()
            .map(|n| BrokerId(crate::cluster::kafka_broker_id(n)))
            .collect()
    };
    let mut m = MetadataResponseTopic::default();
    m.name = Some(TopicName(StrBytes::from_string(t.name().to_owned())));
    m.partitions = (0..t.partition_count())
        .map(|i| {
            let mut p = MetadataResponsePartition::default();
            p.partition_index = i as i32;
            match cluster {
                None => {
                    p.leader_id = BrokerId(NODE_ID);
                    p.leader_epoch = 0;
                    p.replica_nodes = vec![BrokerId(NODE_ID)];
                    p.isr_nodes = vec![BrokerId(NODE_ID)];
                }
                Some(view) => match view.partition(t.name(), i) {
                    Some(v) => {
                        let s = &v.state;
                        let alive = s.leader.as_deref().filter(|l| view.is_alive(l));
                        p.leader_id = BrokerId(alive.map_or(-1, crate::cluster::kafka_broker_id));
                        if alive.is_none() {
                            p.error_code = ResponseError::LeaderNotAvailable.code();
                        }
                        p.leader_epoch = s.leader_epoch as i32;
                        p.replica_nodes = ids(&s.replicas);
                        p.isr_nodes = ids(&s.isr);
                    }
                    None => {
                        p.leader_id = BrokerId(-1);
                        p.error_code = ResponseError::LeaderNotAvailable.code();
                    }
                },
            }
            p
        })
        .collect();
    m
}

/// What a CreateTopics entry asks for, in mapq's terms.
struct Creation {
    overrides: TopicOverrides,
    /// In a cluster: the replication factor and `min.insync.replicas`, when given.
    replication_factor: Option<u32>,
    min_insync_replicas: Option<u32>,
}

/// A CreateTopics entry's settings as mapq's topic overrides; Kafka settings mapq has no
/// counterpart for are refused, rather than silently ignored. In a cluster the
/// replication factor and `min.insync.replicas` are taken too.
fn overrides_of(
    topic: &CreatableTopic,
    cluster: bool,
) -> Result<Creation, (ResponseError, Option<String>)> {
    let mut creation = Creation {
        overrides: TopicOverrides::default(),
        replication_factor: u32::try_from(topic.replication_factor)
            .ok()
            .filter(|&r| r > 0),
        min_insync_replicas: None,
    };
    if cluster && (topic.replication_factor == 0 || topic.replication_factor < -1) {
        return Err((
            ResponseError::InvalidReplicationFactor,
            Some("the replication factor must be at least 1 (or -1: the default)".into()),
        ));
    }
    if !cluster && !matches!(topic.replication_factor, -1 | 1) {
        return Err((
            ResponseError::InvalidReplicationFactor,
            Some("mapq keeps one copy of each partition: replication factor 1".into()),
        ));
    }
    if !topic.assignments.is_empty() {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            Some("replica assignments are not taken: this server holds every partition".into()),
        ));
    }
    if topic.num_partitions == 0 || topic.num_partitions < -1 {
        return Err((
            ResponseError::InvalidPartitions,
            Some("the number of partitions must be at least 1 (or -1: the default)".into()),
        ));
    }
    let mut o = TopicOverrides::default();
    for c in &topic.configs {
        let value = c.value.as_ref().map(|v| v.to_string());
        let bad = |why: &str| {
            Err((
                ResponseError::InvalidConfig,
                Some(format!("{}: {why}", c.name.as_str())),
            ))
        };
        let number = |v: &Option<String>| -> Option<i64> { v.as_deref()?.trim().parse().ok() };
        // -1 means no limit, as in Kafka.
        let limit = |v: &Option<String>| match number(v) {
            Some(-1) => Some(None),
            Some(n) if n >= 0 => Some(Some(n as u64)),
            _ => None,
        };
        match c.name.as_str() {
            "retention.ms" => match limit(&value) {
                Some(l) => o.retention_ms = Some(l),
                None => return bad("must be -1 or a number of milliseconds"),
            },
            "retention.bytes" => match limit(&value) {
                Some(l) => o.retention_bytes = Some(l),
                None => return bad("must be -1 or a number of bytes"),
            },
            "segment.ms" => match number(&value) {
                Some(n) if n > 0 => o.segment_ms = Some(Some(n as u64)),
                _ => return bad("must be a positive number of milliseconds"),
            },
            "segment.bytes" => match number(&value) {
                Some(n) if n > 0 => o.segment_bytes = Some(n as u64),
                _ => return bad("must be a positive number of bytes"),
            },
            "cleanup.policy" if value.as_deref() == Some("delete") => {}
            "cleanup.policy" => return bad("only \"delete\" (compaction is not offered)"),
            "min.insync.replicas" if cluster => match number(&value) {
                Some(n) if n > 0 => creation.min_insync_replicas = Some(n as u32),
                _ => return bad("must be a positive number"),
            },
            "min.insync.replicas" if value.as_deref() == Some("1") => {}
            _ => return bad("not a setting mapq has"),
        }
    }
    creation.overrides = o;
    Ok(creation)
}
