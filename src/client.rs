//! The admin and client commands, over the HTTP API: `mapq topics ...`, `mapq produce`,
//! `mapq consume`. Human-readable output unless `--json`.

use std::io::{BufRead, Write};

use base64::Engine;
use serde_json::{json, Value};

/// Where the server is, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's base URL (`http://` is assumed when no scheme is given).
    #[arg(
        long,
        global = true,
        env = "MAPQ_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Print JSON: the server's answers instead of tables (`consume`: records as JSON lines,
    /// like `--format json`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Bearer token, for a server with tokens configured.
    #[arg(long, global = true, env = "MAPQ_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM CA certificate to trust besides the system's (for an https server with a
    /// private or self-signed certificate).
    #[arg(
        long,
        global = true,
        env = "MAPQ_CACERT",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub cacert: Option<std::path::PathBuf>,
}

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
        /// `segment_ms`; `null` for no limit). Repeatable.
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
}

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
    /// Consumer group: start where it left off.
    #[arg(long)]
    pub group: Option<String>,
    /// With `--group`: commit the offset after each batch printed.
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
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// An error and its causes, outermost first: reqwest's own message rarely says why (a
/// refused connection, an untrusted certificate).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

struct Api {
    http: reqwest::Client,
    base: String,
    /// Whether `--cacert` was given (for the hint on certificate errors).
    has_cacert: bool,
}

impl Api {
    fn new(args: &ClientArgs) -> Result<Self> {
        let mut builder = reqwest::Client::builder().tcp_nodelay(true);
        if let Some(token) = &args.token {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| ClientError("the token holds characters a header cannot".into()))?;
            value.set_sensitive(true);
            let headers =
                reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
            builder = builder.default_headers(headers);
        }
        if let Some(path) = &args.cacert {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError(format!("cannot read {}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| ClientError(e.to_string()))?;
        // `--server 127.0.0.1:8080` means plain HTTP, as a browser would take it.
        let base = args.server.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        Ok(Api {
            http,
            base,
            has_cacert: args.cacert.is_some(),
        })
    }

    /// Sends a request; an error answer becomes its `message` (and `code`).
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let body = self
            .send(req)
            .await?
            .bytes()
            .await
            .map_err(|e| ClientError(e.to_string()))?;
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Sends a request and returns the answer if it is a success; an error answer becomes
    /// its `message` (and `code`).
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            let why = causes(&e);
            let hint = if why.contains("CaUsedAsEndEntity") {
                " (the server's certificate is marked as a CA: make it with CA:FALSE)"
            } else if !self.has_cacert && why.contains("certificate") {
                " (a private or self-signed server certificate? pass --cacert FILE)"
            } else if why.contains("invalid HTTP version") && self.base.starts_with("http://") {
                " (does the server speak TLS? use an https:// --server)"
            } else {
                ""
            };
            ClientError(format!("cannot reach {}: {why}{hint}", self.base))
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let e = &value["error"];
        Err(ClientError(format!(
            "{} ({}, {})",
            e["message"].as_str().unwrap_or("request failed"),
            e["code"].as_str().unwrap_or("error"),
            status.as_u16()
        )))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints rows as left-aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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
fn show_topic(args: &ClientArgs, v: &Value) {
    if args.json {
        print_json(v);
    } else {
        describe(v);
    }
}

fn describe(v: &Value) {
    println!(
        "topic {}  partitions {}",
        cell(&v["name"]),
        cell(&v["partitions"])
    );
    if let Some(config) = v["config"].as_object() {
        let settings: Vec<String> = config
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect();
        println!("config {}", settings.join(" "));
    }
    let rows = v["partition_stats"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    [
                        "partition",
                        "start_offset",
                        "end_offset",
                        "size_bytes",
                        "segments",
                    ]
                    .iter()
                    .map(|k| cell(&p[*k]))
                    .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["PARTITION", "START", "END", "BYTES", "SEGMENTS"], rows);
}

pub async fn topics(args: &ClientArgs, cmd: &TopicsCommand) -> Result<()> {
    let api = Api::new(args)?;
    match cmd {
        TopicsCommand::List => {
            let v = api.call(api.http.get(api.url("/v1/topics"))).await?;
            if args.json {
                print_json(&v);
                return Ok(());
            }
            let rows = v["topics"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .map(|t| vec![cell(&t["name"]), cell(&t["partitions"])])
                        .collect()
                })
                .unwrap_or_default();
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
            let v = api
                .call(api.http.post(api.url("/v1/topics")).json(&body))
                .await?;
            show_topic(args, &v);
        }
        TopicsCommand::Describe { name } => {
            let v = api
                .call(api.http.get(api.url(&format!("/v1/topics/{name}"))))
                .await?;
            show_topic(args, &v);
        }
        TopicsCommand::Delete { name } => {
            api.call(api.http.delete(api.url(&format!("/v1/topics/{name}"))))
                .await?;
            if !args.json {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(())
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
        indicatif::ProgressStyle::with_template("{spinner} {pos} records sent ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut sent = 0u64;
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
        api.call(api.http.post(&url).json(&json!({ "records": records })))
            .await?;
        sent += n;
        progress.set_position(sent);
    }
    progress.finish_and_clear();
    if args.json {
        print_json(&json!({ "records_sent": sent }));
    } else {
        let records = if sent == 1 { "record" } else { "records" };
        eprintln!("{sent} {records} sent to {}", p.topic);
    }
    Ok(())
}

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
fn write_value(out: &mut impl Write, r: &Value) -> std::io::Result<()> {
    match (&r["value"], r["value_b64"].as_str()) {
        (_, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|_| b64.as_bytes().to_vec());
            out.write_all(&bytes)?;
        }
        (Value::String(s), None) => out.write_all(s.as_bytes())?,
        (v, None) => write!(out, "{v}")?,
    }
    out.write_all(b"\n")
}
