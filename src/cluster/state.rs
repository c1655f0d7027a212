//! What etcd holds for a cluster, and the view of it each node reads: the live nodes, the
//! controller, the topics and each partition's leader, leader epoch and in-sync replicas.
//!
//! Keys, under `/mapq/`:
//! - `nodes/<node_id>`: a live node (attached to its lease, so it goes when the node does).
//! - `controller`: the node that moves leaderships (attached to its lease).
//! - `topics/<topic>`: partitions, replication factor, minimum in-sync replicas, overrides.
//! - `partitions/<topic>/<partition>`: a [`PartitionState`], changed only by transactions
//!   that compare its `mod_revision` (the fence).
//! - `offsets/<group>/<topic>/<partition>`: a committed offset (decimal), as Kafka kept
//!   them in ZooKeeper: every node serves them, and they survive any node.
//! - `groups/<group>`: a group with members (its settings, members, assignments and
//!   epochs), written by its coordinator with a fence on the revision it last wrote.
//! - `queues/<group>`: a queue group's settings; its journal is the partition
//!   `partitions/@queue.<group>/0`, whose leader coordinates the group.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::etcd::Kv;
use crate::broker::topic::TopicOverrides;

pub const PREFIX: &str = "/mapq/";
pub const CONTROLLER_KEY: &str = "/mapq/controller";

pub fn node_key(node: &str) -> String {
    format!("{PREFIX}nodes/{node}")
}

pub fn topic_key(topic: &str) -> String {
    format!("{PREFIX}topics/{topic}")
}

pub fn partition_key(topic: &str, partition: u32) -> String {
    format!("{PREFIX}partitions/{topic}/{partition}")
}

pub fn queue_key(group: &str) -> String {
    format!("{PREFIX}queues/{group}")
}

/// The name, in the cluster's state, of a queue group's journal: `@` is in no topic's name.
pub fn journal_topic(group: &str) -> String {
    format!("{JOURNAL_PREFIX}{group}")
}

/// The queue group whose journal `topic` names, if it names one.
pub fn group_of_journal(topic: &str) -> Option<&str> {
    topic.strip_prefix(JOURNAL_PREFIX)
}

pub const JOURNAL_PREFIX: &str = "@queue.";

pub fn group_key(group: &str) -> String {
    format!("{PREFIX}groups/{group}")
}

pub fn offset_key(group: &str, topic: &str, partition: u32) -> String {
    format!("{PREFIX}offsets/{group}/{topic}/{partition}")
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub advertised_http: String,
    pub advertised_kafka: String,
    /// Identifies the data directory the node runs on: a restart on the same directory
    /// takes over its own registration; another directory under the same id is refused.
    pub instance: String,
}

impl NodeInfo {
    /// The host and port of its advertised Kafka address; `None` when that is not
    /// `host:port`.
    pub fn kafka_host_port(&self) -> Option<(&str, i32)> {
        let (host, port) = self.advertised_kafka.rsplit_once(':')?;
        Some((host, port.parse().ok()?))
    }
}

/// A queue group as the cluster knows it: its settings, and its journal's replication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpec {
    pub settings: crate::broker::queues::QueueSettings,
    pub replication_factor: u32,
    pub min_insync_replicas: u32,
}

/// A topic as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    pub partitions: u32,
    pub replication_factor: u32,
    pub min_insync_replicas: u32,
    #[serde(default)]
    pub overrides: TopicOverrides,
}

/// One partition's replication state. Every leader change bumps `leader_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// `None` while no in-sync replica is alive (the partition is offline: there is no
    /// unclean election).
    pub leader: Option<String>,
    pub leader_epoch: u32,
    pub replicas: Vec<String>,
    pub isr: Vec<String>,
}

/// A partition's state and the revision its key was last written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub state: PartitionState,
    pub mod_revision: i64,
}

/// Everything under the prefix, as read at one revision.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub revision: i64,
    pub nodes: BTreeMap<String, NodeInfo>,
    pub controller: Option<String>,
    pub topics: BTreeMap<String, TopicSpec>,
    pub partitions: BTreeMap<(String, u32), Versioned>,
    /// Committed offsets by group.
    pub offsets: BTreeMap<String, crate::broker::groups::GroupOffsets>,
    /// Groups with members: their state (JSON) and its revision.
    pub member_groups: BTreeMap<String, (Vec<u8>, i64)>,
    /// Queue groups.
    pub queues: BTreeMap<String, QueueSpec>,
}

impl ClusterView {
    /// The view of the keys read from etcd; keys that do not parse are skipped (and logged).
    pub fn from_kvs(revision: i64, kvs: &[Kv]) -> Self {
        let mut view = ClusterView {
            revision,
            ..ClusterView::default()
        };
        for kv in kvs {
            let Some(rest) = kv.key.strip_prefix(PREFIX) else {
                continue;
            };
            let parsed = if rest == "controller" {
                serde_json::from_slice::<ControllerRecord>(&kv.value)
                    .map(|c| view.controller = Some(c.node_id))
            } else if let Some(id) = rest.strip_prefix("nodes/") {
                serde_json::from_slice::<NodeInfo>(&kv.value).map(|n| {
                    view.nodes.insert(id.to_owned(), n);
                })
            } else if let Some(t) = rest.strip_prefix("topics/") {
                serde_json::from_slice::<TopicSpec>(&kv.value).map(|s| {
                    view.topics.insert(t.to_owned(), s);
                })
            } else if let Some(g) = rest.strip_prefix("queues/") {
                serde_json::from_slice::<QueueSpec>(&kv.value).map(|q| {
                    view.queues.insert(g.to_owned(), q);
                })
            } else if let Some(g) = rest.strip_prefix("groups/") {
                view.member_groups
                    .insert(g.to_owned(), (kv.value.clone(), kv.mod_revision));
                Ok(())
            } else if let Some(gtp) = rest.strip_prefix("offsets/") {
                let parsed = gtp.split_once('/').and_then(|(g, tp)| {
                    let (t, p) = tp.rsplit_once('/')?;
                    let offset = std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok()?;
                    Some((g, t, p.parse::<u32>().ok()?, offset))
                });
                match parsed {
                    Some((g, t, p, offset)) => {
                        view.offsets
                            .entry(g.to_owned())
                            .or_default()
                            .insert((t.to_owned(), p), offset);
                    }
                    None => {
                        tracing::warn!(key = %kv.key, "an etcd offset key that does not parse; skipped")
                    }
                }
                Ok(())
            } else if let Some(tp) = rest.strip_prefix("partitions/") {
                let Some((t, p)) = tp
                    .rsplit_once('/')
                    .and_then(|(t, p)| Some((t, p.parse().ok()?)))
                else {
                    continue;
                };
                serde_json::from_slice::<PartitionState>(&kv.value).map(|state| {
                    view.partitions.insert(
                        (t.to_owned(), p),
                        Versioned {
                            state,
                            mod_revision: kv.mod_revision,
                        },
                    );
                })
            } else {
                Ok(())
            };
            if let Err(e) = parsed {
                tracing::warn!(key = %kv.key, error = %e, "an etcd key that does not parse; skipped");
            }
        }
        view
    }

    /// The minimum in-sync replicas of a topic's (or a queue group journal's) partitions.
    pub fn min_isr(&self, topic: &str) -> u32 {
        match group_of_journal(topic) {
            Some(g) => self.queues.get(g).map_or(1, |q| q.min_insync_replicas),
            None => self.topics.get(topic).map_or(1, |t| t.min_insync_replicas),
        }
    }

    pub fn is_alive(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<&Versioned> {
        self.partitions.get(&(topic.to_owned(), partition))
    }

    /// The node leading a partition, with its registration, when it is alive.
    pub fn leader_of(&self, topic: &str, partition: u32) -> Option<&NodeInfo> {
        let leader = self.partition(topic, partition)?.state.leader.as_deref()?;
        self.nodes.get(leader)
    }
}

/// The controller key's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControllerRecord {
    pub node_id: String,
}

/// Replicas for each of `partitions` partitions of `topic` over `nodes` (sorted): `rf`
/// distinct nodes each, consecutive from a start that moves one node per partition (and
/// with the topic), so that leaderships (the first replica) spread over the nodes.
pub fn place(topic: &str, partitions: u32, rf: usize, nodes: &[String]) -> Vec<Vec<String>> {
    let n = nodes.len();
    let offset = topic
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    (0..partitions as usize)
        .map(|p| {
            (0..rf.min(n))
                .map(|i| nodes[(offset + p + i) % n].clone())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_gives_distinct_replicas_and_spreads_the_leaders() {
        let nodes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let placed = place("orders", 6, 3, &nodes);
        for replicas in &placed {
            let mut r = replicas.clone();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), 3, "{replicas:?}");
        }
        for node in &nodes {
            let leads = placed.iter().filter(|r| &r[0] == node).count();
            assert_eq!(leads, 2, "{node} leads {leads} of 6: {placed:?}");
        }
    }

    #[test]
    fn the_view_reads_each_kind_of_key_and_skips_what_does_not_parse() {
        let kv = |key: &str, value: &str, rev| Kv {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            mod_revision: rev,
        };
        let view = ClusterView::from_kvs(
            9,
            &[
                kv("/mapq/controller", r#"{"node_id":"a"}"#, 2),
                kv(
                    "/mapq/nodes/a",
                    r#"{"node_id":"a","advertised_http":"http://h:1","advertised_kafka":"h:2","instance":"x"}"#,
                    3,
                ),
                kv(
                    "/mapq/topics/t",
                    r#"{"partitions":1,"replication_factor":1,"min_insync_replicas":1}"#,
                    4,
                ),
                kv(
                    "/mapq/partitions/t/0",
                    r#"{"leader":"a","leader_epoch":1,"replicas":["a"],"isr":["a"]}"#,
                    7,
                ),
                kv("/mapq/partitions/t/x", "{}", 8),
                kv("/mapq/offsets/g/t/0", "41", 9),
                kv("/mapq/nodes/b", "not json", 8),
            ],
        );
        assert_eq!(view.controller.as_deref(), Some("a"));
        assert_eq!(view.nodes.len(), 1);
        assert_eq!(view.topics["t"].partitions, 1);
        assert_eq!(view.partition("t", 0).unwrap().mod_revision, 7);
        assert_eq!(
            view.leader_of("t", 0).unwrap().advertised_http,
            "http://h:1"
        );
        assert_eq!(view.offsets["g"][&("t".to_owned(), 0)], 41);
    }
}
