//! `mapq groups list|describe`.

use super::{print_json, say, table, Api, ClientArgs, Result};
use crate::api::groups::{
    GroupDescriptionOut, GroupList, GroupOut, QueueGroupOut, TopicPartitionRef,
};

#[derive(Debug, clap::Subcommand)]
pub enum GroupsCommand {
    /// List the groups (with members, or with committed offsets).
    List,
    /// Show a group: its settings, members with their assignment, and the committed offset
    /// and lag of each partition.
    Describe {
        /// The group.
        name: String,
    },
}

fn list(parts: &[TopicPartitionRef]) -> String {
    if parts.is_empty() {
        return "-".to_owned();
    }
    parts
        .iter()
        .map(|p| format!("{}/{}", p.topic, p.partition))
        .collect::<Vec<_>>()
        .join(",")
}

fn describe(g: &GroupDescriptionOut) {
    let s = &g.settings;
    say!(
        "group {}  type partitioned  epoch {}  members {}  lag {}",
        g.name,
        g.epoch,
        g.members.len(),
        g.lag
    );
    say!(
        "settings session_timeout_ms={} rebalance_timeout_ms={} auto_offset_reset={}",
        s.session_timeout_ms,
        s.rebalance_timeout_ms,
        serde_json::to_value(s.auto_offset_reset)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    if !g.members.is_empty() {
        let now = crate::log::now_ms();
        let rows = g
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member.clone(),
                    m.member_epoch.to_string(),
                    list(&m.assignment),
                    list(&m.revoking),
                    format!("{} ms ago", now.saturating_sub(m.last_seen_ms).max(0)),
                ]
            })
            .collect();
        table(
            &["MEMBER", "EPOCH", "ASSIGNMENT", "REVOKING", "LAST SEEN"],
            rows,
        );
    }
    let rows = g
        .offsets
        .iter()
        .map(|o| {
            vec![
                o.topic.clone(),
                o.partition.to_string(),
                o.offset.map_or("-".to_owned(), |o| o.to_string()),
                o.lag.to_string(),
            ]
        })
        .collect();
    table(&["TOPIC", "PARTITION", "COMMITTED", "LAG"], rows);
}

fn describe_queue(q: &QueueGroupOut) {
    let s = &q.settings;
    say!(
        "group {}  type queue  backlog {}  in flight {}  oldest unacked {} ms  dead-lettered {}{}",
        q.name,
        q.backlog,
        q.in_flight,
        q.oldest_unacked_age_ms,
        q.dead_lettered,
        if q.window_full { "  WINDOW FULL" } else { "" }
    );
    say!(
        "settings topics={} lease_ms={} max_deliveries={} dead_letter_topic={} max_in_flight={}",
        s.topics.join(","),
        s.lease_ms,
        s.max_deliveries,
        s.dead_letter_topic.as_deref().unwrap_or("null"),
        s.max_in_flight
    );
    let rows = q
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                p.backlog.to_string(),
                p.in_flight.to_string(),
                p.oldest_unacked_age_ms.to_string(),
                p.dead_lettered.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "TOPIC",
            "PARTITION",
            "BACKLOG",
            "IN FLIGHT",
            "OLDEST MS",
            "DEAD",
        ],
        rows,
    );
}

pub async fn groups(args: &ClientArgs, cmd: &GroupsCommand) -> Result<()> {
    let api = Api::new(args)?;
    match cmd {
        GroupsCommand::List => {
            let list: GroupList = api.call_as(api.http.get(api.url("/v1/groups"))).await?;
            if args.json {
                print_json(&serde_json::to_value(&list).unwrap_or_default());
            } else {
                table(
                    &["GROUP"],
                    list.groups.into_iter().map(|g| vec![g]).collect(),
                );
            }
        }
        GroupsCommand::Describe { name } => {
            let g: GroupOut = api
                .call_as(api.http.get(api.url(&format!("/v1/groups/{name}"))))
                .await?;
            match (args.json, g) {
                (true, g) => print_json(&serde_json::to_value(&g).unwrap_or_default()),
                (false, GroupOut::Partitioned(g)) => describe(&g),
                (false, GroupOut::Queue(q)) => describe_queue(&q),
            }
        }
    }
    Ok(())
}
