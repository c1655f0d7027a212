//! `mapq consume`: a topic's records over HTTP, every partition or one, optionally following
//! and committing a group's offsets.

use std::io::Write;

use base64::Engine;
use serde_json::{json, Value};

use super::{Api, ClientArgs, ClientError, Result};

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// The topic to read.
    pub topic: String,
    /// Only this partition (default: every partition of the topic, one after the other;
    /// all at once with `--follow`).
    #[arg(long)]
    pub partition: Option<u32>,
    /// `earliest`, `latest` or an offset (an offset needs `--partition`). Default: the
    /// group's committed offset with `--group`, else `earliest`.
    #[arg(long)]
    pub from: Option<String>,
    /// `value`: the value, as text (a JSON value as its JSON text, bytes as they are) and a
    /// newline; `json`: the record object of the JSON consume API, one a line; `raw`: the
    /// frames as on disk (needs `--partition`: frames do not say their partition).
    #[arg(long, value_enum, default_value = "value")]
    pub format: OutputFormat,
    /// Wait for new records (long-poll) instead of stopping at the end.
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Consumer group. Alone: join it as a member, print the records of the partitions
    /// the group assigns (several `mapq consume --group` share the topic), commit after
    /// each batch, and leave on Ctrl-C. With `--partition`: read that partition from the
    /// group's committed offset (and commit with `--commit`) without joining.
    #[arg(long)]
    pub group: Option<String>,
    /// With `--group`: the member id (default: `mapq-<pid>-<time>`).
    #[arg(long, requires = "group")]
    pub member: Option<String>,
    /// With `--group --partition`: commit the offset after each batch printed.
    #[arg(long, requires = "group")]
    pub commit: bool,
}

/// How `mapq consume` prints records (like `mapq tail --format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Value,
    Json,
    Raw,
}

/// A client command failed: the message says why.
/// Prints records: every partition of the topic (or the one asked for), each from the
/// group's committed offset or `--from`, one after the other, or all at once with
/// `--follow`.
pub async fn consume(args: &ClientArgs, c: &ConsumeArgs) -> Result<()> {
    let api = Api::new(args)?;
    let format = if args.json {
        OutputFormat::Json
    } else {
        c.format
    };
    if let (Some(group), None) = (&c.group, c.partition) {
        return super::member::consume_as_member(&api, c, format, group).await;
    }
    let partitions: Vec<u32> = match c.partition {
        Some(p) => vec![p],
        None => {
            let topic = api
                .call(api.http.get(api.url(&format!("/v1/topics/{}", c.topic))))
                .await?;
            let n = topic["partitions"].as_u64().unwrap_or(1) as u32;
            if n > 1 {
                if format == OutputFormat::Raw {
                    return Err(ClientError(format!(
                        "--format raw needs --partition: {} has {n} partitions and frames do not say theirs",
                        c.topic
                    )));
                }
                if c.from.as_deref().is_some_and(|f| f.parse::<u64>().is_ok()) {
                    return Err(ClientError(format!(
                        "--from OFFSET needs --partition: {} has {n} partitions",
                        c.topic
                    )));
                }
            }
            (0..n).collect()
        }
    };
    let committed = match (&c.from, &c.group) {
        (None, Some(group)) => {
            let url = api.url(&format!("/v1/groups/{group}/offsets?topic={}", c.topic));
            match api.call(api.http.get(url)).await {
                Ok(v) => v["offsets"].as_array().cloned().unwrap_or_default(),
                // A group that has not committed yet starts at the earliest record.
                Err(e) if e.0.contains("group_not_found") => Vec::new(),
                Err(e) => return Err(e),
            }
        }
        _ => Vec::new(),
    };
    let start = |partition: u32| -> String {
        if let Some(from) = &c.from {
            return from.clone();
        }
        committed
            .iter()
            .find(|o| o["partition"] == json!(partition))
            .and_then(|o| o["offset"].as_u64())
            .map_or_else(|| "earliest".to_owned(), |o| o.to_string())
    };
    let printed = std::cell::Cell::new(0u64);
    let shared = Printer {
        api: &api,
        c,
        format,
        printed: &printed,
    };
    if c.follow {
        let all = partitions.iter().map(|&p| shared.partition(p, start(p)));
        for result in futures_util::future::join_all(all).await {
            result?;
        }
    } else {
        for &p in &partitions {
            shared.partition(p, start(p)).await?;
        }
    }
    Ok(())
}

/// What the partitions of one `mapq consume` share: the client, the arguments, and the count
/// of records printed (for `--count`).
struct Printer<'a> {
    api: &'a Api,
    c: &'a ConsumeArgs,
    format: OutputFormat,
    printed: &'a std::cell::Cell<u64>,
}

impl Printer<'_> {
    fn done(&self) -> bool {
        self.c.count.is_some_and(|n| self.printed.get() >= n)
    }

    /// Prints one partition's records from `offset` to its end (or for ever with
    /// `--follow`), committing after each batch with `--group --commit`.
    async fn partition(&self, partition: u32, mut offset: String) -> Result<()> {
        let (api, c) = (self.api, self.c);
        loop {
            if self.done() {
                return Ok(());
            }
            let wait = if c.follow { "&wait_ms=30000" } else { "" };
            let url = api.url(&format!(
                "/v1/topics/{}/partitions/{partition}/records?offset={offset}{wait}",
                c.topic
            ));
            let (count, next, stop) = if self.format == OutputFormat::Raw {
                self.print_frames(url).await?
            } else {
                self.print_records(partition, url).await?
            };
            let Some(next) = next else {
                return Ok(());
            };
            offset = next.to_string();
            if let (Some(group), true) = (&c.group, c.commit && count > 0) {
                let body = json!({"offsets": [{"topic": c.topic, "partition": partition, "offset": next}]});
                api.call(
                    api.http
                        .put(api.url(&format!("/v1/groups/{group}/offsets")))
                        .json(&body),
                )
                .await?;
            }
            if stop || self.done() || (count == 0 && !c.follow) {
                return Ok(());
            }
        }
    }

    /// One JSON consume request: prints its records, and returns how many it printed, the
    /// offset to go on from, and whether stdout was closed.
    async fn print_records(&self, partition: u32, url: String) -> Result<(u64, Option<u64>, bool)> {
        let v = self.api.call(self.api.http.get(url)).await?;
        let records = v["records"].as_array().cloned().unwrap_or_default();
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut position = None;
        let mut count = 0;
        for r in &records {
            if self.done() {
                break;
            }
            let written = match self.format {
                OutputFormat::Json => writeln!(out, "{}", with_partition(partition, r)),
                _ => write_value(&mut out, r),
            };
            if written.is_err() {
                // The reader went away (`| head`): not an error.
                return Ok((count, position, true));
            }
            position = r["offset"].as_u64().map(|o| o + 1);
            count += 1;
            self.printed.set(self.printed.get() + 1);
        }
        let _ = out.flush();
        // Resume (and commit) right after the last record printed.
        Ok((count, position.or(v["next_offset"].as_u64()), false))
    }

    /// One binary consume request: writes the frames as served (cut at `--count`).
    async fn print_frames(&self, url: String) -> Result<(u64, Option<u64>, bool)> {
        let resp = self
            .api
            .send(
                self.api
                    .http
                    .get(url)
                    .header(reqwest::header::ACCEPT, "application/octet-stream"),
            )
            .await?;
        let body = resp.bytes().await.map_err(|e| ClientError(e.to_string()))?;
        let mut at = 0;
        let mut count = 0;
        let mut position = None;
        while at < body.len() && !self.done() {
            let f = crate::log::format::decode_frame(&body[at..]).map_err(|e| {
                ClientError(format!("the server sent a frame that does not decode: {e}"))
            })?;
            at += f.padded_len;
            position = Some(f.offset + 1);
            count += 1;
            self.printed.set(self.printed.get() + 1);
        }
        let mut out = std::io::stdout().lock();
        if out
            .write_all(&body[..at])
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok((count, position, true));
        }
        Ok((count, position, false))
    }
}

/// The record object of the JSON consume API, with the partition it came from first.
fn with_partition(partition: u32, r: &Value) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("partition".into(), json!(partition));
    if let Some(fields) = r.as_object() {
        out.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Value::Object(out)
}

/// A record's value as a shell user expects it: a string as its text, other JSON as its
/// JSON text, bytes as they are; then a newline.
pub(super) fn write_value(out: &mut impl Write, r: &Value) -> std::io::Result<()> {
    out.write_all(&value_bytes(r).unwrap_or_else(|| b"null".to_vec()))?;
    out.write_all(b"\n")
}

/// A record object's value as bytes: a string as its text, other JSON as its JSON text,
/// `value_b64` decoded; `None` for a null value (neither field).
pub(super) fn value_bytes(r: &Value) -> Option<Vec<u8>> {
    if let Some(b64) = r["value_b64"].as_str() {
        return Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|_| b64.as_bytes().to_vec()),
        );
    }
    match r.get("value")? {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        v => Some(v.to_string().into_bytes()),
    }
}
