//! `mapq cluster status`.

use super::{print_json, say, table, Api, ClientArgs, Result};
use crate::api::cluster::ClusterOut;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// The nodes (alive or not), the controller, and each partition's leader, leader epoch,
    /// replicas, in-sync replicas and high watermark; under-replicated partitions marked.
    Status,
}

pub async fn cluster(args: &ClientArgs, cmd: &ClusterCommand) -> Result<()> {
    let api = Api::new(args)?;
    match cmd {
        ClusterCommand::Status => {
            let c: ClusterOut = api.call_as(api.http.get(api.url("/v1/cluster"))).await?;
            if args.json {
                print_json(&serde_json::to_value(&c).unwrap_or_default());
                return Ok(());
            }
            let under = c
                .partitions
                .iter()
                .filter(|p| p.isr.len() < p.replicas.len())
                .count();
            let offline = c.partitions.iter().filter(|p| p.leader.is_none()).count();
            say!(
                "cluster  controller {}  nodes {} ({} alive)  partitions {}  under-replicated {}  offline {}  (asked {})",
                c.controller.as_deref().unwrap_or("none"),
                c.nodes.len(),
                c.nodes.iter().filter(|n| n.alive).count(),
                c.partitions.len(),
                under,
                offline,
                c.node_id
            );
            table(
                &["NODE", "ALIVE", "HTTP", "KAFKA"],
                c.nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.node_id.clone(),
                            if n.alive { "yes" } else { "no" }.to_owned(),
                            n.advertised_http.clone(),
                            n.advertised_kafka.clone(),
                        ]
                    })
                    .collect(),
            );
            table(
                &[
                    "TOPIC",
                    "PARTITION",
                    "LEADER",
                    "EPOCH",
                    "REPLICAS",
                    "ISR",
                    "HW",
                    "",
                ],
                c.partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            p.leader.clone().unwrap_or_else(|| "-".to_owned()),
                            p.leader_epoch.to_string(),
                            p.replicas.join(","),
                            p.isr.join(","),
                            p.high_watermark.map_or("-".to_owned(), |h| h.to_string()),
                            match (&p.leader, p.isr.len() < p.replicas.len()) {
                                (None, _) => "OFFLINE",
                                (_, true) => "UNDER-REPLICATED",
                                _ => "",
                            }
                            .to_owned(),
                        ]
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}
