//! A small etcd v3 client over etcd's JSON gateway (`/v3/...`, served by every etcd on its
//! client port since 3.3): leases, ranges and transactions, which is all mapq asks of etcd.
//! The gateway keeps the build free of protobuf tooling; keys and values travel in base64,
//! 64-bit numbers as strings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (connection refused, timeout).
    #[error("etcd unreachable ({endpoints}): {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// An endpoint answered with an error.
    #[error("etcd refused {path}: {status} {body}")]
    Refused {
        path: String,
        status: u16,
        body: String,
    },
    #[error("etcd answered {path} with something unexpected: {0}", path = .1)]
    BadAnswer(String, String),
}

pub type Result<T> = std::result::Result<T, EtcdError>;

/// One key and its value, with the revisions that fence updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key was last changed at this revision (it exists and nobody wrote it since).
    ModRevision(String, i64),
}

/// A write of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Puts `value` at `key`, attached to `lease` (0: none).
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    /// Deletes `key`, or every key under it when `prefix`.
    Delete { key: String, prefix: bool },
}

/// The client: endpoints tried in turn, each call bounded by a timeout.
#[derive(Debug)]
pub struct Etcd {
    http: reqwest::Client,
    endpoints: Vec<String>,
    /// The endpoint that answered last: tried first.
    current: AtomicUsize,
}

impl Etcd {
    /// A client for `endpoints` (`http://host:port`), each call given at most `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| EtcdError::Unreachable {
                endpoints: endpoints.join(","),
                reason: e.to_string(),
            })?;
        Ok(Etcd {
            http,
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            current: AtomicUsize::new(0),
        })
    }

    /// POSTs `body` to `path` on the current endpoint, then on the others in turn.
    async fn call(&self, path: &str, body: Value) -> Result<Value> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = String::from("no endpoints");
        for i in 0..n {
            let at = (first + i) % n;
            let url = format!("{}{path}", self.endpoints[at]);
            match self.http.post(&url).json(&body).send().await {
                // A member that cannot serve (no leader, cut off from the others): the
                // next one may.
                Ok(resp) if resp.status().is_server_error() && i + 1 < n => {
                    last_error = format!("{}: {}", self.endpoints[at], resp.status());
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.map_err(|e| EtcdError::Unreachable {
                        endpoints: self.endpoints[at].clone(),
                        reason: e.to_string(),
                    })?;
                    if !status.is_success() {
                        return Err(EtcdError::Refused {
                            path: path.to_owned(),
                            status: status.as_u16(),
                            body: text,
                        });
                    }
                    self.current.store(at, Ordering::Relaxed);
                    return serde_json::from_str(&text)
                        .map_err(|e| EtcdError::BadAnswer(e.to_string(), path.to_owned()));
                }
                Err(e) => last_error = format!("{}: {e}", self.endpoints[at]),
            }
        }
        Err(EtcdError::Unreachable {
            endpoints: self.endpoints.join(","),
            reason: last_error,
        })
    }

    /// Grants a lease of `ttl_s` seconds: its id.
    pub async fn grant(&self, ttl_s: u64) -> Result<i64> {
        let v = self
            .call("/v3/lease/grant", json!({ "TTL": ttl_s }))
            .await?;
        number(&v["ID"]).ok_or_else(|| bad(&v, "/v3/lease/grant"))
    }

    /// Renews a lease: its remaining TTL in seconds, 0 when it has expired (or never was).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64> {
        let v = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        // The gateway streams the answers; one request gives one `result`, or an `error`
        // (a failure, not an expired lease). An expired lease has no TTL (or 0).
        if !v["error"].is_null() {
            return Err(bad(&v, "/v3/lease/keepalive"));
        }
        Ok(number(&v["result"]["TTL"]).unwrap_or(0))
    }

    /// Revokes a lease: every key attached to it goes.
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        self.call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .await
            .map(drop)
    }

    /// Every key under `prefix`, and the store's revision they were read at.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>)> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
            )
            .await?;
        let revision = number(&v["header"]["revision"]).unwrap_or(0);
        Ok((revision, kvs(&v["kvs"])))
    }

    /// One key, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>> {
        let v = self
            .call("/v3/kv/range", json!({ "key": B64.encode(key) }))
            .await?;
        Ok(kvs(&v["kvs"]).into_iter().next())
    }

    /// Runs `ops` if every comparison holds: the store's revision after them (the
    /// `mod_revision` of the keys they wrote), or `None` when a comparison failed.
    pub async fn txn(&self, compare: &[Compare], ops: &[Op]) -> Result<Option<i64>> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::Absent(key) => json!({
                    "key": B64.encode(key), "target": "CREATE", "result": "EQUAL",
                    "create_revision": "0"
                }),
                Compare::ModRevision(key, rev) => json!({
                    "key": B64.encode(key), "target": "MOD", "result": "EQUAL",
                    "mod_revision": rev.to_string()
                }),
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => json!({ "request_put": {
                    "key": B64.encode(key), "value": B64.encode(value), "lease": lease.to_string()
                }}),
                Op::Delete { key, prefix } => {
                    let mut d = json!({ "key": B64.encode(key) });
                    if *prefix {
                        d["range_end"] = Value::String(B64.encode(prefix_end(key)));
                    }
                    json!({ "request_delete_range": d })
                }
            })
            .collect();
        let v = self
            .call(
                "/v3/kv/txn",
                json!({ "compare": compare, "success": success }),
            )
            .await?;
        if v["succeeded"].as_bool().unwrap_or(false) {
            Ok(Some(number(&v["header"]["revision"]).unwrap_or(0)))
        } else {
            Ok(None)
        }
    }
}

/// Writes per transaction at most: etcd refuses more than `--max-txn-ops` (128 by default).
pub const MAX_TXN_OPS: usize = 100;

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A 64-bit number the gateway sends as a string (or, rarely, as a number).
fn number(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn bad(v: &Value, path: &str) -> EtcdError {
    EtcdError::BadAnswer(v.to_string(), path.to_owned())
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: Value,
}

fn kvs(v: &Value) -> Vec<Kv> {
    // An absent list comes as nothing at all.
    let Ok(raw) = Vec::<RawKv>::deserialize(v) else {
        return Vec::new();
    };
    raw.into_iter()
        .filter_map(|r| {
            let key = String::from_utf8(B64.decode(r.key).ok()?).ok()?;
            Some(Kv {
                key,
                value: B64.decode(r.value).ok()?,
                mod_revision: number(&r.mod_revision).unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_every_key_that_starts_with_it() {
        assert_eq!(prefix_end("/mapq/"), b"/mapq0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn gateway_key_values_decode_and_a_missing_list_is_empty() {
        let v = json!([{"key": "L21hcHEveA==", "create_revision": "2", "mod_revision": "5",
                        "version": "1", "value": "aGVsbG8=", "lease": "77"}]);
        assert_eq!(
            kvs(&v),
            vec![Kv {
                key: "/mapq/x".into(),
                value: b"hello".to_vec(),
                mod_revision: 5,
            }]
        );
        assert!(kvs(&Value::Null).is_empty());
    }
}
