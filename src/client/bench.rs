//! `mapq bench`: an HTTP load generator. Produces N records of S bytes in batches of B over C
//! concurrent connections, then consumes them all back as binary frames and as JSON, and
//! prints throughput and latency percentiles, ending with `RESULT` lines:
//! `RESULT <scenario> records_per_s=<n> mb_per_s=<n> p50_us=<n> p99_us=<n> p999_us=<n>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::{Api, ClientArgs};
use crate::log::format::{encode_frame, Record};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The server, and the token and certificate to reach it with.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Topic to use (created with `--partitions`, and kept); default: a fresh
    /// `bench-<pid>` topic, deleted at the end unless `--keep-topic`.
    #[arg(long)]
    pub topic: Option<String>,
    /// Keep the fresh `bench-<pid>` topic after the run.
    #[arg(long)]
    pub keep_topic: bool,
    /// Records to produce.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records per produce request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent connections (producers, then consumers).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Partitions of the topic; default: one per connection.
    #[arg(long)]
    pub partitions: Option<u32>,
    /// `memory` or `fsync`.
    #[arg(long, default_value = "memory")]
    pub durability: String,
    /// Produce body: `frames` (application/vnd.mapq.frames) or `json`.
    #[arg(long, default_value = "frames")]
    pub produce_format: String,
    /// Records per consume request.
    #[arg(long, default_value_t = 5000)]
    pub fetch_records: usize,
    /// Skip the consume phases.
    #[arg(long)]
    pub produce_only: bool,
    /// Send an `Idempotency-Key` with every produce request (unique per request), to
    /// measure what idempotent produce costs.
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Run a consume probe every this many milliseconds: a plain consume request on a
    /// connection and a thread of its own, first for two seconds before the load (the idle
    /// baseline), then while the records are produced. Reports the probe's latency in both.
    #[arg(long, value_name = "MS")]
    pub probe_ms: Option<u64>,
    /// After the produce, work the records off as a queue group with this many workers
    /// (instead of the consume phases): each leases `--batch` records at a time and accepts
    /// them in one ack request, until every record is acked.
    #[arg(long, value_name = "N")]
    pub queue_workers: Option<usize>,
}

struct Phase {
    name: String,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Phase {
    /// Records/s, MB/s, and the p50, p99 and p99.9 latencies in µs.
    fn figures(&self) -> (f64, f64, [u64; 3]) {
        let secs = self.elapsed.as_secs_f64();
        let h = &self.latency_us;
        (
            self.records as f64 / secs,
            self.bytes as f64 / secs / 1e6,
            [0.5, 0.99, 0.999].map(|q| h.value_at_quantile(q)),
        )
    }

    fn print(&self) {
        let (rps, mbs, [p50, p99, p999]) = self.figures();
        if self.name.starts_with("probe_") {
            // A probe's "records" are its requests.
            println!(
                "{:<40} {rps:>12.0} probes/s   latency p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs ({} requests)",
                self.name,
                self.latency_us.len(),
            );
            return;
        }
        println!(
            "{:<40} {rps:>12.0} records/s {mbs:>9.1} MB/s   latency p50 {p50} µs, p99 {p99} µs, p99.9 {p999} µs ({} requests)",
            self.name,
            self.latency_us.len(),
        );
    }

    fn result_line(&self) -> String {
        let (rps, mbs, [p50, p99, p999]) = self.figures();
        format!(
            "RESULT {} records_per_s={rps:.0} mb_per_s={mbs:.1} p50_us={p50} p99_us={p99} p999_us={p999}",
            self.name
        )
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

/// Runs the benchmark against a running server.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.client)?;
    let http = api.http().clone();
    let partitions = args.partitions.unwrap_or(args.connections as u32).max(1);
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("bench-{}", std::process::id()));
    let r = http
        .post(api.url("/v1/topics"))
        .json(&json!({"name": topic, "partitions": partitions}))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", api.url("")))?;
    if !(r.status().is_success() || r.status().as_u16() == 409) {
        anyhow::bail!("creating topic {topic}: {} {}", r.status(), r.text().await?);
    }
    let result = phases(&api, &args, &topic, partitions).await;
    if args.topic.is_none() && !args.keep_topic {
        let r = http
            .delete(api.url(&format!("/v1/topics/{topic}")))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => eprintln!("mapq bench: could not delete topic {topic}: {}", r.status()),
            Err(e) => eprintln!("mapq bench: could not delete topic {topic}: {e}"),
        }
    }
    result
}

/// Produce, then consume as frames and as JSON, printing each phase's figures.
async fn phases(api: &Api, args: &BenchArgs, topic: &str, partitions: u32) -> anyhow::Result<()> {
    let label = format!(
        "{}_batch{}_c{}",
        size_label(args.record_bytes),
        args.batch,
        args.connections
    );
    println!(
        "mapq bench: {} records of {} bytes, batches of {}, {} connections, {} partitions, durability={}, against {}",
        args.records, args.record_bytes, args.batch, args.connections, partitions, args.durability, api.url("")
    );
    let probe = |name: &str| {
        args.probe_ms.map(|ms| {
            Probe::start(
                api.clone(),
                format!(
                    "{}?offset=earliest&max_records=1",
                    api.url(&format!("/v1/topics/{topic}/partitions/0/records"))
                ),
                Duration::from_millis(ms.max(1)),
                format!("probe_{name}_{label}"),
            )
        })
    };
    let mut probes = Vec::new();
    if let Some(idle) = probe("idle") {
        tokio::time::sleep(Duration::from_secs(2)).await;
        probes.push(idle.stop()?);
    }
    let under_load = probe("under_load");
    let produce = produce(api, args, topic, partitions).await;
    if let Some(p) = under_load {
        probes.push(p.stop()?);
    }
    let produce = Phase {
        name: format!("produce_{}_{label}", args.produce_format),
        ..produce?
    };
    produce.print();
    for p in &probes {
        p.print();
    }
    if let Some(workers) = args.queue_workers {
        let q = queue(api, args, topic, workers).await?;
        let q = Phase {
            name: format!("queue_{label}_w{workers}"),
            ..q
        };
        q.print();
        for p in [&produce, &q] {
            println!("{}", p.result_line());
        }
        return Ok(());
    }
    if args.produce_only {
        for p in std::iter::once(&produce).chain(&probes) {
            println!("{}", p.result_line());
        }
        return Ok(());
    }
    let binary = consume(api, args, topic, partitions, true).await?;
    let binary = Phase {
        name: format!("consume_binary_{label}"),
        ..binary
    };
    binary.print();
    let json_phase = consume(api, args, topic, partitions, false).await?;
    let json_phase = Phase {
        name: format!("consume_json_{label}"),
        ..json_phase
    };
    json_phase.print();
    for p in [&produce, &binary, &json_phase].into_iter().chain(&probes) {
        println!("{}", p.result_line());
    }
    Ok(())
}

/// Works the topic's records off as a queue group: `workers` tasks, each leasing
/// `args.batch` records and accepting them in one ack request, until all are acked. The
/// latency is one lease plus its ack.
async fn queue(api: &Api, args: &BenchArgs, topic: &str, workers: usize) -> anyhow::Result<Phase> {
    let group = format!("bench-q-{}", std::process::id());
    let r = api
        .http()
        .put(api.url(&format!("/v1/groups/{group}")))
        .json(&json!({"type": "queue", "topics": [topic], "lease_ms": 600_000, "max_in_flight": 1_000_000}))
        .send()
        .await?;
    if !r.status().is_success() {
        anyhow::bail!(
            "creating queue group {group}: {} {}",
            r.status(),
            r.text().await?
        );
    }
    let acked = Arc::new(AtomicU64::new(0));
    let bar = progress(args.records, "queue");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (api, acked, bar) = (api.clone(), acked.clone(), bar.clone());
        let (group, records, batch) = (group.clone(), args.records, args.batch);
        let http = api.fresh_client()?;
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            while acked.load(Ordering::Relaxed) < records {
                let t = Instant::now();
                // The binary answer: the leases in a small JSON prelude, then the frames.
                let body = http
                    .post(api.url(&format!("/v1/groups/{group}/leases")))
                    .header("accept", "application/vnd.mapq.leases")
                    .json(&json!({"max_records": batch, "wait_ms": 100}))
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?;
                let len = body
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
                // Typed and borrowing, as a worker in Rust would read it: the load
                // generator's own cost must not be what is measured.
                let got: LeasePrelude<'_> = serde_json::from_slice(
                    body.get(4..4 + len)
                        .ok_or_else(|| anyhow::anyhow!("a lease answer cut short"))?,
                )?;
                let acks: Vec<AcceptAck<'_>> = got
                    .records
                    .iter()
                    .map(|r| AcceptAck {
                        lease: &r.lease,
                        kind: "accept",
                    })
                    .collect();
                if acks.is_empty() {
                    continue;
                }
                http.post(api.url(&format!("/v1/groups/{group}/acks")))
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&AckBody { acks: &acks })?)
                    .send()
                    .await?
                    .error_for_status()?;
                latency.record(t.elapsed().as_micros() as u64).ok();
                acked.fetch_add(acks.len() as u64, Ordering::Relaxed);
                bar.inc(acks.len() as u64);
            }
            Ok::<_, anyhow::Error>(latency)
        }));
    }
    let mut latency_us = histogram();
    for t in tasks {
        latency_us.add(t.await??)?;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    Ok(Phase {
        name: String::new(),
        records: args.records,
        bytes: args.records * args.record_bytes as u64,
        elapsed,
        latency_us,
    })
}

/// The JSON prelude of a binary lease answer, as far as the bench reads it.
#[derive(serde::Deserialize)]
struct LeasePrelude<'a> {
    #[serde(borrow)]
    records: Vec<LeaseToken<'a>>,
}

#[derive(serde::Deserialize)]
struct LeaseToken<'a> {
    #[serde(borrow)]
    lease: std::borrow::Cow<'a, str>,
}

#[derive(serde::Serialize)]
struct AcceptAck<'a> {
    lease: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(serde::Serialize)]
struct AckBody<'a> {
    acks: &'a [AcceptAck<'a>],
}

/// A consume probe on a thread, a runtime and a connection of its own, so that the load
/// generator's own queue of tasks does not delay it: what it measures is the server.
struct Probe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Phase>>,
}

impl Probe {
    fn start(api: Api, url: String, every: Duration, name: String) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                // A client of its own: its own connection, not one of the load's.
                let http = api.fresh_client()?;
                let mut latency_us = histogram();
                let started = Instant::now();
                let mut bytes = 0u64;
                while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    let resp = http.get(&url).send().await?;
                    let status = resp.status();
                    bytes += resp.bytes().await?.len() as u64;
                    if !status.is_success() {
                        anyhow::bail!("probe failed: {status}");
                    }
                    latency_us.record(t.elapsed().as_micros().max(1) as u64)?;
                    tokio::time::sleep(every.saturating_sub(t.elapsed())).await;
                }
                Ok(Phase {
                    name,
                    records: latency_us.len(),
                    bytes,
                    elapsed: started.elapsed(),
                    latency_us,
                })
            })
        });
        Probe { stop, thread }
    }

    fn stop(self) -> anyhow::Result<Phase> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    }
}

/// One produce request body for `n` records of the given size.
fn produce_body(args: &BenchArgs, n: usize, seq: u64) -> (Vec<u8>, &'static str) {
    let value: Vec<u8> = (0..args.record_bytes)
        .map(|i| (seq as usize + i) as u8)
        .collect();
    if args.produce_format == "json" {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
        let records: Vec<Value> = (0..n).map(|_| json!({"value_b64": b64})).collect();
        let body = serde_json::to_vec(&json!({ "records": records })).expect("serializes");
        (body, "application/json")
    } else {
        let r = Record::value(&value, 0);
        let len = r.padded_len().expect("record fits a frame");
        let mut body = vec![0u8; len * n];
        for chunk in body.chunks_mut(len) {
            encode_frame(chunk, 0, &r);
        }
        (body, "application/vnd.mapq.frames")
    }
}

async fn produce(
    api: &Api,
    args: &BenchArgs,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<Phase> {
    let batches = args.records.div_ceil(args.batch as u64);
    let bar = Arc::new(progress(args.records, "produce"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let http = api.http().clone();
        let args = args.clone();
        let bar = Arc::clone(&bar);
        let url_base = api.url(&format!("/v1/topics/{topic}/records"));
        let key_prefix = format!("bench-{}-{topic}", std::process::id());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut records = 0u64;
            let mut bytes = 0u64;
            // Each connection sends every `connections`-th batch.
            let mut b = c as u64;
            let (body, content_type) = produce_body(&args, args.batch, c as u64);
            let body = bytes::Bytes::from(body);
            while b < batches {
                let n = (args.records - b * args.batch as u64).min(args.batch as u64);
                let body = if n as usize == args.batch {
                    body.clone()
                } else {
                    bytes::Bytes::from(produce_body(&args, n as usize, b).0)
                };
                // Frames name their partition in the query; JSON records would carry it in the
                // body: these go round-robin.
                let partition = (b % u64::from(partitions)) as u32;
                let url = if args.produce_format == "json" {
                    format!("{url_base}?durability={}", args.durability)
                } else {
                    format!(
                        "{url_base}?partition={partition}&durability={}",
                        args.durability
                    )
                };
                let t = Instant::now();
                let sent = body.len();
                let mut req = http.post(&url).header("content-type", content_type);
                if args.idempotency_keys {
                    req = req.header("idempotency-key", format!("{key_prefix}-{b}"));
                }
                let resp = req.body(body).send().await?;
                let status = resp.status();
                let text = resp.bytes().await?;
                if !status.is_success() {
                    anyhow::bail!(
                        "produce failed: {status} {}",
                        String::from_utf8_lossy(&text)
                    );
                }
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
                records += n;
                bytes += sent as u64;
                bar.inc(n);
                b += args.connections as u64;
            }
            Ok::<_, anyhow::Error>((hist, records, bytes))
        }));
    }
    gather(tasks, started, &bar).await
}

async fn consume(
    api: &Api,
    args: &BenchArgs,
    topic: &str,
    partitions: u32,
    binary: bool,
) -> anyhow::Result<Phase> {
    let bar = Arc::new(progress(
        args.records,
        if binary { "binary" } else { "json" },
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let http = api.http().clone();
        let args = args.clone();
        let bar = Arc::clone(&bar);
        let base = api.url(&format!("/v1/topics/{topic}/partitions"));
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut records = 0u64;
            let mut bytes = 0u64;
            // Connection c reads partitions c, c + connections, ...
            let mut partition = c as u32;
            while partition < partitions {
                let mut offset = 0u64;
                loop {
                    let url = format!(
                        "{base}/{partition}/records?offset={offset}&max_records={}&max_bytes={}",
                        args.fetch_records,
                        64 << 20
                    );
                    let accept = if binary {
                        "application/octet-stream"
                    } else {
                        "application/json"
                    };
                    let t = Instant::now();
                    let resp = http.get(&url).header("accept", accept).send().await?;
                    let status = resp.status();
                    let next = resp
                        .headers()
                        .get("x-mapq-next-offset")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    if !status.is_success() {
                        let body = resp.text().await.unwrap_or_default();
                        anyhow::bail!("consume failed: {status} {body}");
                    }
                    let (n, next, len) = if binary {
                        // The frames are taken as they arrive, chunk by chunk, as a consumer
                        // that processes them in place would; not gathered into one buffer.
                        let next = next.ok_or_else(|| anyhow::anyhow!("no X-Mapq-Next-Offset"))?;
                        let mut resp = resp;
                        let mut frames = FrameWalker::default();
                        while let Some(chunk) = resp.chunk().await? {
                            frames.feed(&chunk);
                        }
                        let n = next - offset;
                        anyhow::ensure!(
                            frames.complete() && frames.frames == n,
                            "expected {n} whole frames, got {} ({} bytes)",
                            frames.frames,
                            frames.bytes
                        );
                        (n, next, frames.bytes)
                    } else {
                        let body = resp.bytes().await?;
                        let v: Value = serde_json::from_slice(&body)?;
                        let n = v["records"].as_array().map_or(0, Vec::len) as u64;
                        (
                            n,
                            v["next_offset"].as_u64().unwrap_or(offset),
                            body.len() as u64,
                        )
                    };
                    hist.record(t.elapsed().as_micros().max(1) as u64)?;
                    if n == 0 {
                        break;
                    }
                    records += n;
                    bytes += len;
                    bar.inc(n);
                    offset = next;
                }
                partition += args.connections as u32;
            }
            Ok::<_, anyhow::Error>((hist, records, bytes))
        }));
    }
    gather(tasks, started, &bar).await
}

/// Walks a stream of record frames as it arrives, chunk by chunk, from each frame's length
/// to the next frame, counting them (as a consumer that processes frames in place would,
/// without gathering the body into one buffer).
#[derive(Default)]
struct FrameWalker {
    frames: u64,
    bytes: u64,
    /// A length below a frame's fixed part was met: the stream is not frames.
    invalid: bool,
    /// Bytes of the current frame still to skip.
    skip: usize,
    /// The first bytes of a length field split across chunks.
    partial: Vec<u8>,
}

impl FrameWalker {
    fn feed(&mut self, mut chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        while !self.invalid {
            let n = self.skip.min(chunk.len());
            chunk = &chunk[n..];
            self.skip -= n;
            if chunk.is_empty() {
                return;
            }
            let want = 4 - self.partial.len();
            let take = want.min(chunk.len());
            self.partial.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.partial.len() < 4 {
                return;
            }
            let len = u32::from_le_bytes(self.partial[..4].try_into().unwrap_or_default());
            self.partial.clear();
            if (len as usize) < crate::log::format::frame::FIXED_SIZE {
                self.invalid = true;
                return;
            }
            self.frames += 1;
            self.skip = crate::log::format::align_up(len as usize) - 4;
        }
    }

    /// Whether the stream was whole frames, ending on a frame boundary.
    fn complete(&self) -> bool {
        !self.invalid && self.skip == 0 && self.partial.is_empty()
    }
}

/// What one connection measured: latencies, records and bytes.
type ConnectionResult = anyhow::Result<(Histogram<u64>, u64, u64)>;

/// Waits for every connection's task and adds up what they measured.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<ConnectionResult>>,
    started: Instant,
    bar: &ProgressBar,
) -> anyhow::Result<Phase> {
    let mut phase = Phase {
        name: String::new(),
        records: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        latency_us: histogram(),
    };
    for t in tasks {
        let (h, r, b) = t.await??;
        phase.latency_us.add(h)?;
        phase.records += r;
        phase.bytes += b;
    }
    phase.elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(phase)
}

#[cfg(test)]
mod tests {
    use super::FrameWalker;
    use crate::log::format::{encode_frame, Record};

    #[test]
    fn frame_walker_counts_frames_whatever_the_chunking() {
        let mut stream = Vec::new();
        for (i, value) in [&b""[..], b"a", b"hello world", &[7u8; 1000][..]]
            .iter()
            .enumerate()
        {
            let record = Record::value(value, i as i64);
            let mut frame = vec![0; record.padded_len().unwrap()];
            encode_frame(&mut frame, i as u64, &record);
            stream.extend(frame);
        }
        for chunk in 1..=stream.len() {
            let mut walker = FrameWalker::default();
            stream.chunks(chunk).for_each(|c| walker.feed(c));
            assert_eq!(
                (walker.frames, walker.complete()),
                (4, true),
                "chunks of {chunk}"
            );
            assert_eq!(walker.bytes, stream.len() as u64);
        }
        let mut cut = FrameWalker::default();
        cut.feed(&stream[..stream.len() - 3]);
        assert!(!cut.complete(), "a stream cut inside a frame is incomplete");
        let mut zeros = FrameWalker::default();
        zeros.feed(&[0; 64]);
        assert!(!zeros.complete(), "zeros are not frames");
    }
}
