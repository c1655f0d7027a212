//! `mapq topics list|create|describe|delete`.

use serde_json::{json, Value};

use super::{print_json, say, table, Api, ClientArgs, ClientError, Result};
use crate::api::topics::{TopicDescription, TopicList};

#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// List the topics.
    List,
    /// Create a topic.
    Create {
        /// The topic's name (`[A-Za-z0-9._-]`, at most 200 characters).
        name: String,
        /// Number of partitions (default: the server's `default_partitions`).
        #[arg(long)]
        partitions: Option<u32>,
        /// A topic setting, `key=value` (`retention_ms`, `retention_bytes`, `segment_bytes`,
        /// `segment_ms`, `idempotency_window_ms`; `null` for no limit). Repeatable.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// Show a topic's settings and partitions.
    Describe {
        /// The topic.
        name: String,
    },
    /// Delete a topic and its files.
    Delete {
        /// The topic.
        name: String,
    },
}

fn parse_config(pairs: &[String]) -> Result<Value> {
    let mut config = serde_json::Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ClientError(format!("--config {pair}: expected KEY=VALUE")))?;
        let value = if v == "null" {
            Value::Null
        } else {
            v.parse::<u64>()
                .map(Value::from)
                .map_err(|_| ClientError(format!("--config {pair}: expected a number or null")))?
        };
        config.insert(k.to_owned(), value);
    }
    Ok(Value::Object(config))
}

/// A topic's description: its JSON with `--json`, else a table.
fn show_topic(args: &ClientArgs, t: &TopicDescription) {
    if args.json {
        print_json(&serde_json::to_value(t).unwrap_or_default());
    } else {
        describe(t);
    }
}

fn describe(t: &TopicDescription) {
    say!("topic {}  partitions {}", t.name, t.partitions);
    let limit = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
    let c = &t.config;
    say!(
        "config retention_bytes={} retention_ms={} segment_bytes={} segment_ms={} idempotency_window_ms={}",
        limit(c.retention_bytes),
        limit(c.retention_ms),
        c.segment_bytes,
        limit(c.segment_ms),
        c.idempotency_window_ms
    );
    say!("idempotency keys remembered {}", t.idempotency_keys);
    let rows = t
        .partition_stats
        .iter()
        .map(|p| {
            [
                p.partition.into(),
                p.start_offset,
                p.end_offset,
                p.size_bytes,
                p.segments,
            ]
            .iter()
            .map(u64::to_string)
            .collect()
        })
        .collect();
    table(&["PARTITION", "START", "END", "BYTES", "SEGMENTS"], rows);
}

pub async fn topics(args: &ClientArgs, cmd: &TopicsCommand) -> Result<()> {
    let api = Api::new(args)?;
    match cmd {
        TopicsCommand::List => {
            let list: TopicList = api.call_as(api.http.get(api.url("/v1/topics"))).await?;
            if args.json {
                print_json(&serde_json::to_value(&list).unwrap_or_default());
                return Ok(());
            }
            let rows = list
                .topics
                .iter()
                .map(|t| vec![t.name.clone(), t.partitions.to_string()])
                .collect();
            table(&["TOPIC", "PARTITIONS"], rows);
        }
        TopicsCommand::Create {
            name,
            partitions,
            config,
        } => {
            let mut body = json!({ "name": name, "config": parse_config(config)? });
            if let Some(p) = partitions {
                body["partitions"] = json!(p);
            }
            let t = api
                .call_as(api.http.post(api.url("/v1/topics")).json(&body))
                .await?;
            show_topic(args, &t);
        }
        TopicsCommand::Describe { name } => {
            let t = api
                .call_as(api.http.get(api.url(&format!("/v1/topics/{name}"))))
                .await?;
            show_topic(args, &t);
        }
        TopicsCommand::Delete { name } => {
            api.call(api.http.delete(api.url(&format!("/v1/topics/{name}"))))
                .await?;
            if !args.json {
                say!("deleted topic {name}");
            }
        }
    }
    Ok(())
}
