//! `mapq produce`: records read from stdin, one per line, in batches.

use std::io::BufRead;

use base64::Engine;
use serde_json::{json, Value};

use super::{print_json, Api, ClientArgs, ClientError, Result};
use crate::api::records::ProduceResponse;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// The topic to produce to (created on first use when the server allows it).
    pub topic: String,
    /// Send every record to this partition (default: by key, else round-robin).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Each line is a JSON value (default: each line is a string value).
    #[arg(long)]
    pub json_values: bool,
    /// The key of every record (records with a key go to the partition its hash picks).
    #[arg(long, conflicts_with = "key_separator")]
    pub key: Option<String>,
    /// Each line is `KEY<SEP>VALUE`: split at the first SEP (a line without it has no key).
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Records per request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// `memory` or `fsync`.
    #[arg(long)]
    pub durability: Option<String>,
    /// Retry a request this many times when it gets no answer, or a 408, 409, 429 or 5xx:
    /// each request carries an `Idempotency-Key`, so a retry never stores a record twice.
    #[arg(long, default_value_t = 10)]
    pub retries: u32,
}

/// Whether an answer with this status may be retried with the same idempotency key.
fn retryable(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
}

/// Reads records from stdin, one per line, and produces them in batches.
pub async fn produce(args: &ClientArgs, p: &ProduceArgs) -> Result<()> {
    let api = Api::new(args)?;
    let mut query = Vec::new();
    if let Some(d) = &p.durability {
        query.push(format!("durability={d}"));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    let url = api.url(&format!("/v1/topics/{}/records{query}", p.topic));
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} records sent ({per_sec}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut sent = 0u64;
    let mut retries = 0u64;
    // Keys are this run's id and the request's number: unique per request, the same for
    // every retry of it.
    let run = format!(
        "mapq-produce-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut request_no = 0u64;
    loop {
        let mut records = Vec::with_capacity(p.batch);
        for line in lines.by_ref().take(p.batch.max(1)) {
            let line = line.map_err(|e| ClientError(format!("cannot read stdin: {e}")))?;
            let (key, line) = match (&p.key, p.key_separator.as_deref()) {
                (Some(k), _) => (Some(k.as_str()), line.as_str()),
                (None, Some(sep)) if !sep.is_empty() => match line.split_once(sep) {
                    Some((k, v)) => (Some(k), v),
                    None => (None, line.as_str()),
                },
                _ => (None, line.as_str()),
            };
            let mut record = if p.json_values {
                let value: Value = serde_json::from_str(line).map_err(|e| {
                    ClientError(format!(
                        "line {}: not JSON: {e}",
                        sent as usize + records.len() + 1
                    ))
                })?;
                json!({ "value": value })
            } else {
                json!({ "value_b64": base64::engine::general_purpose::STANDARD.encode(line) })
            };
            if let Some(partition) = p.partition {
                record["partition"] = json!(partition);
            }
            if let Some(key) = key {
                record["key"] = json!(key);
            }
            records.push(record);
        }
        if records.is_empty() {
            break;
        }
        let n = records.len() as u64;
        let body = json!({ "records": records });
        let key = format!("{run}-{request_no}");
        request_no += 1;
        let mut attempt = 0u32;
        let answer: ProduceResponse = loop {
            let req = api
                .http
                .post(&url)
                .header("idempotency-key", &key)
                // A hung connection counts as no answer: retried, with the same key.
                .timeout(std::time::Duration::from_secs(60))
                .json(&body);
            if attempt >= p.retries {
                break api.call_as(req).await.map_err(|e| {
                    ClientError(format!(
                        "{} (request {key} given up after {attempt} retries with its idempotency key; {sent} records sent before it)",
                        e.0
                    ))
                })?;
            }
            match req.send().await {
                // A success, or an error a retry cannot cure (which `check` reports).
                Ok(resp) if !retryable(resp.status()) => {
                    let resp = api.check(resp).await?;
                    // An answer cut off on the way is no answer: retried.
                    if let Ok(bytes) = resp.bytes().await {
                        break serde_json::from_slice(&bytes).map_err(|e| {
                            ClientError(format!("unexpected answer from the server: {e}"))
                        })?;
                    }
                }
                _ => {}
            }
            attempt += 1;
            retries += 1;
            progress.set_message(format!("{retries} retries"));
            tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(5))).await;
        };
        if answer.offsets.len() as u64 != n {
            return Err(ClientError(format!(
                "the server acknowledged {} of {n} records",
                answer.offsets.len()
            )));
        }
        sent += n;
        progress.set_position(sent);
    }
    progress.finish_and_clear();
    if args.json {
        print_json(&json!({ "records_sent": sent, "retries": retries }));
    } else {
        let records = if sent == 1 { "record" } else { "records" };
        let retried = match retries {
            0 => String::new(),
            1 => " (1 request retried, with its idempotency key)".to_owned(),
            n => format!(" ({n} retries, each with its request's idempotency key)"),
        };
        eprintln!("{sent} {records} sent to {}{retried}", p.topic);
    }
    Ok(())
}
