//! Real `mapq serve --cluster` nodes, for the cluster tests (etcd: `etcd.rs`).
#![allow(dead_code)]

use std::path::Path;

use super::server::Server;

/// The environment of a cluster node: `MAPQ_*` settings that make it `node_id` of the
/// cluster at `etcd`, plus `extra`.
pub fn node_env(etcd: &str, node_id: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("MAPQ_CLUSTER".into(), "true".into()),
        ("MAPQ_ETCD_ENDPOINTS".into(), etcd.into()),
        ("MAPQ_NODE_ID".into(), node_id.into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Starts a cluster node on `port` (so that a restart comes back at the same address).
pub fn start_node(
    data_dir: &Path,
    port: u16,
    etcd: &str,
    node_id: &str,
    extra: &[(&str, &str)],
) -> Server {
    let env = node_env(etcd, node_id, extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_env_at(data_dir, &env, &format!("127.0.0.1:{port}"))
}
