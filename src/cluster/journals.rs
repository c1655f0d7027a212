//! Queue groups in a cluster. A queue group's state (leases, delivery counts, acks, dead
//! letters) is journalled in a partition that the cluster replicates, places and fails
//! over like any topic's (`@queue.<group>` in its state, a name no topic can have), and the
//! group's coordinator is that journal's leader: each change is appended under its
//! leadership and held by every in-sync replica before the answer, and the node that
//! leads the journal next replays it. The settings are at `queues/<group>` in etcd.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::etcd::{Compare, Op};
use super::replica::{Refusal, Replica, Role};
use super::state::{self, ClusterView, PartitionState, QueueSpec};
use super::{Cluster, ClusterError};
use crate::broker::queues::{DeadLetterSink, JournalReplication, QueueSettings, Replicated};
use crate::broker::{BrokerError, PartitionAppend};
use crate::config::Durability;

/// The replication of a queue group's journal this node leads, under one leadership.
#[derive(Debug)]
struct JournalLeader {
    group: String,
    cluster: Weak<Cluster>,
    replica: Arc<Replica>,
    generation: u64,
}

impl JournalLeader {
    fn refusal(&self, r: Refusal) -> BrokerError {
        refusal(&self.group, r)
    }
}

/// Why a queue group's journal refused a change.
fn refusal(group: &str, r: Refusal) -> BrokerError {
    match r {
        Refusal::NotEnoughReplicas { isr, min } => BrokerError::NotEnoughReplicas {
            what: format!("the journal of queue group {group}"),
            isr,
            min,
        },
        Refusal::NotLeader | Refusal::LeaseLapsed => BrokerError::NotCoordinator(group.to_owned()),
    }
}

impl JournalReplication for JournalLeader {
    fn check(&self) -> Result<(), BrokerError> {
        let Some(cluster) = self.cluster.upgrade() else {
            return Err(BrokerError::NotCoordinator(self.group.clone()));
        };
        if !cluster.lease_valid() {
            return Err(self.refusal(Refusal::LeaseLapsed));
        }
        match self.replica.check_writable() {
            Ok((_, generation)) if generation == self.generation => Ok(()),
            Ok(_) => Err(self.refusal(Refusal::NotLeader)),
            Err(r) => Err(self.refusal(r)),
        }
    }

    fn as_leader(
        &self,
        append: &mut dyn FnMut() -> Result<(), BrokerError>,
    ) -> Result<(), BrokerError> {
        self.check()?;
        self.replica
            .under_role(self.generation, append)
            .unwrap_or_else(|| Err(self.refusal(Refusal::NotLeader)))
    }

    fn wait_replicated(&self, end: u64, fsync: bool) -> Replicated {
        let (cluster, replica, generation, group) = (
            self.cluster.upgrade(),
            Arc::clone(&self.replica),
            self.generation,
            self.group.clone(),
        );
        Box::pin(async move {
            let Some(cluster) = cluster else {
                return Err(BrokerError::NotCoordinator(group));
            };
            let appended = PartitionAppend {
                partition: replica.partition,
                first_offset: end,
                count: 0,
                bytes: 0,
            };
            let durability = if fsync {
                Durability::Fsync
            } else {
                Durability::Memory
            };
            let generations = HashMap::from([(replica.partition, generation)]);
            cluster
                .wait_committed(&replica.topic, &[appended], durability, &generations)
                .await
                .map_err(|r| refusal(&group, r))
        })
    }

    fn committed(&self) -> u64 {
        self.replica.marks().hw
    }

    fn generation(&self) -> u64 {
        self.generation
    }
}

/// Sends queue groups' dead letters to the leader of their dead-letter partition, over
/// HTTP (the node itself, when it leads it): `acks=all`, with the dead letter's
/// Idempotency-Key, so that a retry after any failure stores it once.
#[derive(Debug)]
pub(super) struct DeadLetterForward {
    pub(super) cluster: Weak<Cluster>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl DeadLetterSink for DeadLetterForward {
    fn append(&self, topic: &str, record: serde_json::Value, key: &str) -> Result<(), BrokerError> {
        let fail = BrokerError::DeadLetter;
        let Some(cluster) = self.cluster.upgrade() else {
            return Err(fail("the node is stopping".into()));
        };
        let partition = record["partition"].as_u64().unwrap_or(0) as u32;
        let Some(leader) = cluster.view().leader_of(topic, partition).cloned() else {
            return Err(fail(format!(
                "partition {partition} of topic {topic} has no leader now"
            )));
        };
        let url = format!(
            "{}/v1/topics/{topic}/records?acks=all",
            leader.advertised_http.trim_end_matches('/')
        );
        let body = serde_json::json!({ "records": [record] });
        // Dead-lettering runs on the blocking pool, where waiting on the runtime is allowed.
        self.runtime.block_on(async {
            let resp = cluster
                .http()
                .post(&url)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .map_err(|e| fail(format!("sending it to {url}: {e}")))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            let text = resp.text().await.unwrap_or_default();
            Err(fail(format!("{url} answered {status}: {text}")))
        })
    }
}

impl Cluster {
    /// Opens or closes the queue group whose journal `r` is, as this node's role there
    /// says: open while it leads the journal (its state replayed under that leadership),
    /// closed otherwise.
    pub(super) async fn sync_queue_group(self: &Arc<Self>, view: &ClusterView, r: &Arc<Replica>) {
        let Some(group) = state::group_of_journal(&r.topic) else {
            return;
        };
        let queues = self.broker.queue_groups();
        let generation = r.generation();
        let spec = view.queues.get(group);
        match (r.role(), spec) {
            (Role::Leader(_), Some(spec)) => {
                if queues.active_generation(group) == Some(generation) {
                    return;
                }
                let leader = Arc::new(JournalLeader {
                    group: group.to_owned(),
                    cluster: Arc::downgrade(self),
                    replica: Arc::clone(r),
                    generation,
                });
                let (broker, group2, settings) = (
                    Arc::clone(&self.broker),
                    group.to_owned(),
                    spec.settings.clone(),
                );
                let opened = tokio::task::spawn_blocking(move || {
                    broker.queue_groups().activate(&group2, settings, leader)
                })
                .await;
                if let Ok(Err(e)) = opened {
                    tracing::error!(group, error = %e, "cannot take up the queue group's coordination (retried every poll)");
                }
            }
            _ => queues.deactivate(group),
        }
    }

    /// Starts this node's replica of a queue group's journal again, empty, at `start`, its
    /// leader's first offset (a snapshot: the leader deleted what came before it once every
    /// in-sync replica held it, while this node was away): the replica leaves this node's
    /// roles, and the next poll takes it up again on the new journal, which then fetches
    /// from the leader.
    pub(super) async fn restart_journal(
        self: &Arc<Self>,
        r: &Arc<Replica>,
        start: u64,
    ) -> Result<(), ClusterError> {
        let Some(group) = state::group_of_journal(&r.topic).map(str::to_owned) else {
            return Err(ClusterError::Refused(format!(
                "{} is not a journal",
                r.topic
            )));
        };
        {
            let mut replicas = self.lock_replicas();
            let key = (r.topic.clone(), r.partition);
            if replicas.get(&key).is_some_and(|held| Arc::ptr_eq(held, r)) {
                replicas.remove(&key);
            }
        }
        let (r2, broker) = (Arc::clone(r), Arc::clone(&self.broker));
        tokio::task::spawn_blocking(move || {
            r2.become_idle();
            broker.queue_groups().restart_journal(&group, start)
        })
        .await
        .map_err(|e| ClusterError::Refused(e.to_string()))??;
        tracing::warn!(topic = %r.topic, start, "this journal's replica started again at its leader's first offset");
        Ok(())
    }

    /// Creates a queue group in the cluster (`true`), or finds it with the same settings
    /// (`false`): its journal placed with this node as its first leader, so that this node,
    /// which the group's requests were routed to, coordinates it.
    pub async fn create_queue_group(
        self: &Arc<Self>,
        group: &str,
        settings: QueueSettings,
    ) -> Result<bool, ClusterError> {
        crate::broker::validate_name(group)?;
        let settings = settings.normalized()?;
        self.poll_once().await;
        let view = self.view();
        if let Some(spec) = view.queues.get(group) {
            return if spec.settings == settings {
                Ok(false)
            } else {
                Err(BrokerError::GroupExists(group.to_owned()).into())
            };
        }
        if view.member_groups.contains_key(group)
            || view.offsets.contains_key(group)
            || self.broker.has_kafka_members(group)
        {
            return Err(BrokerError::GroupExists(group.to_owned()).into());
        }
        for t in &settings.topics {
            if !view.topics.contains_key(t) {
                return Err(BrokerError::TopicNotFound(t.clone()).into());
            }
        }
        if let Some(dlq) = &settings.dead_letter_topic {
            self.ensure_topic(dlq).await?;
        }
        let me = self.settings.node_id.clone();
        let mut others: Vec<String> = view.nodes.keys().filter(|n| **n != me).cloned().collect();
        // Spread over the nodes: the group's hash with each picks the followers.
        others.sort_by_key(|n| crc32c::crc32c(format!("{group}\0{n}").as_bytes()));
        let rf = self
            .settings
            .default_replication_factor
            .clamp(1, others.len() as u32 + 1);
        let min_isr = self.settings.default_min_insync_replicas.clamp(1, rf);
        let mut replicas = vec![me.clone()];
        replicas.extend(others.into_iter().take(rf as usize - 1));
        let spec = QueueSpec {
            settings: settings.clone(),
            replication_factor: rf,
            min_insync_replicas: min_isr,
        };
        let journal = state::journal_topic(group);
        let partition = PartitionState {
            leader: Some(me),
            leader_epoch: 1,
            isr: replicas.clone(),
            replicas,
        };
        let (queue_key, partition_key) =
            (state::queue_key(group), state::partition_key(&journal, 0));
        let created = self
            .etcd
            .txn(
                &[
                    Compare::Absent(queue_key.clone()),
                    Compare::Absent(state::group_key(group)),
                    Compare::Absent(partition_key.clone()),
                ],
                &[
                    Op::Put {
                        key: queue_key,
                        value: serde_json::to_vec(&spec).expect("serializable"),
                        lease: 0,
                    },
                    Op::Put {
                        key: partition_key,
                        value: serde_json::to_vec(&partition).expect("serializable"),
                        lease: 0,
                    },
                ],
            )
            .await?;
        self.poll_once().await;
        if created.is_none() {
            // Created meanwhile through another node (or a group with members took the name).
            return match self.view().queues.get(group) {
                Some(s) if s.settings == settings => Ok(false),
                _ => Err(BrokerError::GroupExists(group.to_owned()).into()),
            };
        }
        tracing::info!(
            group,
            replication_factor = rf,
            min_insync_replicas = min_isr,
            "queue group created in the cluster"
        );
        Ok(true)
    }

    /// Makes sure topic `name` exists in the cluster: created with the defaults when
    /// missing and `auto_create_topics` is on.
    pub async fn ensure_topic(self: &Arc<Self>, name: &str) -> Result<(), ClusterError> {
        let known =
            |c: &Cluster| c.view().topics.contains_key(name) && c.broker.topic(name).is_ok();
        if known(self) {
            return Ok(());
        }
        // Perhaps created a moment ago through another node.
        self.poll_once().await;
        if known(self) {
            return Ok(());
        }
        let config = self.broker.config();
        if !config.auto_create_topics {
            return Err(BrokerError::TopicNotFound(name.to_owned()).into());
        }
        let partitions = config.default_partitions;
        match self
            .create_topic(name, partitions, None, None, Default::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(ClusterError::TopicExists(_)) => {
                self.poll_once().await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
