//! Server configuration: embedded defaults, then a TOML file, then `MAPQ_<KEY>` environment
//! variables, then command-line flags. Every key, its unit and its default are documented in
//! `config/mapq.toml`, which is also the embedded default file, so the two cannot disagree.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// The documented default configuration, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/mapq.toml");

/// Durability of a produce acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged once published in the mapping (page cache): survives a process crash.
    Memory,
    /// Acknowledged once msync has made it durable: survives power loss.
    Fsync,
}

/// Every setting. Sizes and durations carry their unit in their name. See
/// `config/mapq.toml` for what each one means.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// An address, or a host name resolved at start-up (`localhost:8080`).
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    pub segment_bytes: u64,
    #[serde(deserialize_with = "nullable")]
    pub segment_ms: Option<u64>,
    /// How long an `Idempotency-Key` is remembered after its records were appended.
    pub idempotency_window_ms: u64,
    /// Events after which a queue group's journal is compacted into a snapshot.
    pub queue_snapshot_every: u64,
    #[serde(deserialize_with = "nullable")]
    pub retention_ms: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub retention_bytes: Option<u64>,
    pub retention_check_interval_ms: u64,
    pub flush_interval_ms: u64,
    #[serde(deserialize_with = "nullable")]
    pub flush_messages: Option<u64>,
    pub default_durability: Durability,
    pub max_request_bytes: u64,
    pub max_record_bytes: u64,
    pub max_long_poll_waiters: u64,
    /// Produce requests with `durability=fsync` handled at once; more wait their turn.
    pub max_fsync_in_flight: u64,
    pub max_partitions_per_topic: u32,
    pub reserve_chunk_bytes: u64,
    pub prefault_bytes: u64,
    #[serde(deserialize_with = "nullable")]
    pub max_disk_bytes: Option<u64>,
    pub max_open_segments: u64,
    pub segment_idle_close_ms: u64,
    pub log_level: String,
    /// Bearer tokens (none: no authentication). Only from a config file.
    pub tokens: Vec<crate::auth::TokenConfig>,
    /// Route templates answered without a token.
    pub open_routes: Vec<String>,
    pub max_connections: u64,
    pub max_topics: u64,
    /// A group (name or number) whose members may read the data directory (local
    /// tailers); empty: files are readable by everyone, as the umask allows.
    pub data_group: String,
    pub connection_idle_timeout_ms: u64,
    pub request_body_timeout_ms: u64,
    pub request_header_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    /// PEM certificate chain; with `tls_key_file`, the server speaks only TLS. Empty: no TLS.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// The Kafka listener's address (`host:port`); empty: none.
    pub kafka_listen: String,
    /// The `host:port` Kafka clients are told to connect to; empty: the bound address.
    pub kafka_advertised_listener: String,
    pub kafka_group_initial_rebalance_delay_ms: u64,
    /// Join a cluster (see the `cluster` section of `config/mapq.toml`).
    pub cluster: bool,
    pub etcd_endpoints: Vec<String>,
    pub node_id: String,
    /// The URL other nodes and redirected clients use; empty: `http://` and the bound
    /// address.
    pub advertised_http: String,
    /// `host:port` Kafka clients are told for this node; empty: as `kafka_advertised_listener`.
    pub advertised_kafka: String,
    pub default_replication_factor: u32,
    pub default_min_insync_replicas: u32,
    pub cluster_lease_ms: u64,
    pub replica_lag_ms: u64,
    /// A token secret nodes send to each other when tokens are configured.
    pub cluster_token: String,
}

/// Variables of the `mapq` client commands (`--token`, `--cacert`, `--server`): a shell that
/// exports them for the CLI may also start the server, which ignores them.
pub const CLIENT_VARIABLES: &[&str] = &["MAPQ_TOKEN", "MAPQ_CACERT", "MAPQ_SERVER"];

/// Resolves `host:port` (an IP address or a name such as `localhost`) to its first
/// address, IPv4 first.
pub fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| {
            format!("{text:?} is not an address such as 127.0.0.1:8080 or localhost:8080: {e}")
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve_addr(&text).map_err(serde::de::Error::custom)
}

/// The setting closest in spelling to `key`, if one is close enough to be a likely typo.
fn nearest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 4))
        .min()
        .map(|(_, k)| k.as_str())
}

/// `null`, expressed in TOML (which has no null) as the string `"null"` or `"none"`.
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(Some(n)),
        Raw::Text(t) if t == "null" || t == "none" => Ok(None),
        Raw::Text(t) => Err(serde::de::Error::custom(format!(
            "expected a non-negative integer or \"null\", found {t:?}"
        ))),
    }
}

/// A configuration that cannot be used, with the key at fault named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// A configuration and what was odd about its sources without stopping start-up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// For example an unknown `MAPQ_*` variable (a misspelled key, with the nearest one).
    pub warnings: Vec<String>,
}

/// Overrides from the command line, highest precedence.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// An address or `host:port`, resolved like the `listen` setting.
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Like `listen`, for the Kafka listener; empty turns it off.
    pub kafka_listen: Option<String>,
    /// `--cluster`: join the cluster the settings name.
    pub cluster: bool,
}

impl Config {
    /// The embedded defaults.
    pub fn defaults() -> Self {
        toml::from_str(DEFAULT_TOML).expect("the embedded config/mapq.toml is valid")
    }

    /// Loads defaults, then `file`, then `MAPQ_*` variables from `env`, then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        Self::load_with_warnings(file, env, overrides).map(|l| l.config)
    }

    /// [`Config::load`], with the warnings to log once logging is set up. An unknown key in
    /// the file stops start-up; an unknown `MAPQ_*` variable is only a warning, since the
    /// environment also serves other programs (the client commands' own variables are
    /// ignored silently).
    pub fn load_with_warnings(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Loaded, ConfigError> {
        let mut warnings = Vec::new();
        let mut table: toml::Table = DEFAULT_TOML.parse().expect("embedded config parses");
        let known: Vec<String> = table.keys().cloned().collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let origin = path.display().to_string();
            let file_table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Invalid {
                        origin: origin.clone(),
                        message: toml_error(&text, &e),
                    })?;
            for (key, value) in file_table {
                if !known.contains(&key) {
                    let hint = nearest(&key, &known)
                        .map(|k| format!(" (did you mean `{k}`?)"))
                        .unwrap_or_default();
                    return Err(ConfigError::Invalid {
                        origin,
                        message: format!("unknown key `{key}`{hint}"),
                    });
                }
                table.insert(key, value);
            }
        }
        for (name, raw) in env {
            let Some(key) = name.strip_prefix("MAPQ_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if CLIENT_VARIABLES.contains(&name.as_str()) {
                continue;
            }
            if !known.contains(&key) {
                let hint = nearest(&key, &known)
                    .map(|k| format!("; did you mean MAPQ_{}?", k.to_ascii_uppercase()))
                    .unwrap_or_default();
                warnings.push(format!(
                    "environment variable {name} ignored: no setting `{key}`{hint}"
                ));
                continue;
            }
            // A setting whose default is text stays text ("8080" as a group name, say);
            // others (numbers, booleans, and numbers that may be "null") are parsed.
            let value = match table.get(&key) {
                Some(toml::Value::String(d)) if d != "null" => toml::Value::String(raw),
                // Lists are comma-separated.
                Some(toml::Value::Array(_)) => toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                ),
                _ => env_value(&raw),
            };
            table.insert(key, value);
        }
        if let Some(listen) = &overrides.listen {
            table.insert("listen".into(), toml::Value::String(listen.clone()));
        }
        if overrides.cluster {
            table.insert("cluster".into(), toml::Value::Boolean(true));
        }
        if let Some(kafka) = &overrides.kafka_listen {
            table.insert("kafka_listen".into(), toml::Value::String(kafka.clone()));
        }
        if let Some(dir) = &overrides.data_dir {
            table.insert(
                "data_dir".into(),
                toml::Value::String(dir.display().to_string()),
            );
        }
        let config = Config::deserialize(table.clone()).map_err(|e| {
            // Name the key at fault: the defaults are valid, so swap values in one by one.
            let defaults: toml::Table = DEFAULT_TOML.parse().expect("embedded config parses");
            let culprit = table.iter().find(|(key, value)| {
                let mut one = defaults.clone();
                one.insert((*key).clone(), (*value).clone());
                Config::deserialize(one).is_err()
            });
            match culprit {
                // Tokens hold hashes (or, pasted by mistake, secrets): never print them.
                Some((key, _)) if key == "tokens" => ConfigError::Invalid {
                    origin: "key `tokens`".into(),
                    message: e.message().to_owned(),
                },
                Some((key, value)) => ConfigError::Invalid {
                    origin: format!("key `{key}`"),
                    message: format!("bad value {value}: {}", e.message()),
                },
                None => ConfigError::Invalid {
                    origin: "configuration".into(),
                    message: e.message().to_owned(),
                },
            }
        })?;
        config.validate()?;
        Ok(Loaded { config, warnings })
    }

    /// The settings as `key = value` pairs in TOML syntax, separated by `; `, for the
    /// start-up log: tokens are
    /// shown by name only, never their hashes.
    pub fn summary(&self) -> String {
        let Ok(toml::Value::Table(mut table)) = toml::Value::try_from(self) else {
            return String::new();
        };
        // Settings set to no limit serialize to nothing: show them as the "null" they are.
        let keys: toml::Table = DEFAULT_TOML.parse().expect("embedded config parses");
        for key in keys.keys() {
            table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::String("null".into()));
        }
        let mut pairs: Vec<(String, toml::Value)> = table.into_iter().collect();
        pairs.sort_by_key(|(key, _)| keys.keys().position(|k| k == key));
        pairs
            .iter()
            .map(|(key, value)| match key.as_str() {
                "tokens" => {
                    let names: Vec<String> = self
                        .tokens
                        .iter()
                        .map(|t| format!("{:?}", t.name))
                        .collect();
                    format!("tokens = [{}] (hashes not shown)", names.join(", "))
                }
                _ => format!("{key} = {value}"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                origin: format!("key `{key}`"),
                message: message.to_owned(),
            })
        };
        if !(64 << 10..=crate::log::MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(
                "segment_bytes",
                "must be between 65536 and 68719476736 (64 GiB)",
            );
        }
        if self.default_partitions == 0 || self.default_partitions > self.max_partitions_per_topic {
            return bad(
                "default_partitions",
                "must be between 1 and max_partitions_per_topic",
            );
        }
        if self.queue_snapshot_every < 10 {
            return bad("queue_snapshot_every", "must be at least 10");
        }
        if self.max_record_bytes > self.max_request_bytes {
            return bad("max_record_bytes", "must not exceed max_request_bytes");
        }
        if self.max_record_bytes >= u32::MAX as u64 / 2 {
            return bad("max_record_bytes", "must be below 2 GiB");
        }
        for (key, value) in [
            ("segment_ms", self.segment_ms),
            ("idempotency_window_ms", Some(self.idempotency_window_ms)),
            ("retention_ms", self.retention_ms),
            ("retention_bytes", self.retention_bytes),
            ("max_disk_bytes", self.max_disk_bytes),
            ("segment_bytes", Some(self.segment_bytes)),
            ("flush_interval_ms", Some(self.flush_interval_ms)),
            (
                "retention_check_interval_ms",
                Some(self.retention_check_interval_ms),
            ),
            ("segment_idle_close_ms", Some(self.segment_idle_close_ms)),
        ] {
            if value.is_some_and(|v| v > i64::MAX as u64) {
                return bad(key, "must be at most 9223372036854775807");
            }
        }
        if let Err(e) = crate::auth::Tokens::new(&self.tokens) {
            return bad("tokens", &e);
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if !(1..=1_000_000).contains(&self.max_fsync_in_flight) {
            return bad("max_fsync_in_flight", "must be between 1 and 1000000");
        }
        if self.connection_idle_timeout_ms < 1000 {
            return bad("connection_idle_timeout_ms", "must be at least 1000");
        }
        for (key, value) in [
            ("request_body_timeout_ms", self.request_body_timeout_ms),
            ("request_header_timeout_ms", self.request_header_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if value == 0 || value > u32::MAX as u64 {
                return bad(key, "must be between 1 and 4294967295");
            }
        }
        if self.request_timeout_ms <= self.request_body_timeout_ms {
            return bad(
                "request_timeout_ms",
                "must be greater than request_body_timeout_ms (a slow body gets 408 first)",
            );
        }
        if self.tls_cert_file.as_os_str().is_empty() != self.tls_key_file.as_os_str().is_empty() {
            return bad(
                "tls_cert_file",
                "tls_cert_file and tls_key_file must be set together",
            );
        }
        if !self.kafka_listen.is_empty() {
            if let Err(e) = resolve_addr(&self.kafka_listen) {
                return bad("kafka_listen", &e);
            }
        }
        if !self.kafka_advertised_listener.is_empty() {
            let port = self
                .kafka_advertised_listener
                .rsplit_once(':')
                .and_then(|(host, port)| (!host.is_empty()).then(|| port.parse::<u16>().ok()))
                .flatten();
            if port.is_none() {
                return bad(
                    "kafka_advertised_listener",
                    "must be host:port, such as kafka.example.com:9092",
                );
            }
        }
        if self.cluster {
            if crate::broker::validate_name(&self.node_id).is_err() {
                return bad(
                    "node_id",
                    "a cluster node needs a node_id: letters, digits, `.`, `_`, `-` (unique and stable across restarts)",
                );
            }
            if self.etcd_endpoints.is_empty() {
                return bad(
                    "etcd_endpoints",
                    "a cluster needs at least one etcd endpoint",
                );
            }
            if let Some(e) = self
                .etcd_endpoints
                .iter()
                .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
            {
                return bad(
                    "etcd_endpoints",
                    &format!("{e:?} is not a URL such as http://127.0.0.1:2379"),
                );
            }
            let url = &self.advertised_http;
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return bad(
                    "advertised_http",
                    "must be a URL such as http://10.0.0.5:8080",
                );
            }
            if self.default_replication_factor == 0 || self.default_min_insync_replicas == 0 {
                return bad(
                    "default_replication_factor",
                    "default_replication_factor and default_min_insync_replicas must be at least 1",
                );
            }
            if self.cluster_lease_ms < 2000 {
                return bad(
                    "cluster_lease_ms",
                    "must be at least 2000 (etcd counts leases in whole seconds)",
                );
            }
            if self.replica_lag_ms == 0 {
                return bad("replica_lag_ms", "must be at least 1");
            }
        }
        if self.flush_interval_ms == 0 {
            return bad("flush_interval_ms", "must be at least 1");
        }
        if self.retention_check_interval_ms == 0 {
            return bad("retention_check_interval_ms", "must be at least 1");
        }
        if self.flush_messages == Some(0) {
            return bad("flush_messages", "must be at least 1, or null");
        }
        Ok(())
    }

    /// The engine settings for a partition of a topic with `segment_bytes`.
    pub fn log_config(&self, segment_bytes: u64) -> crate::log::LogConfig {
        crate::log::LogConfig {
            segment_bytes,
            reserve_chunk_bytes: self.reserve_chunk_bytes,
            prefault_bytes: self.prefault_bytes,
            replicated: self.cluster,
            ..crate::log::LogConfig::default()
        }
    }
}

/// A TOML syntax error with its line and column, and the fix for the likeliest mistake.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let position = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        let source = text.lines().nth(line - 1).unwrap_or("");
        (line, column, source)
    });
    let mut message = match position {
        Some((line, column, source)) => {
            format!(
                "line {line}, column {column}: {} (in `{}`)",
                e.message(),
                source.trim()
            )
        }
        None => e.message().to_owned(),
    };
    if position.is_some_and(|(_, _, source)| {
        source
            .split_once('=')
            .is_some_and(|(_, v)| matches!(v.trim(), "null" | "none" | "nil"))
    }) {
        message.push_str("; TOML has no null: write \"null\" in quotes for no limit");
    }
    message
}

/// An environment value as TOML: a number, a boolean, or else a string.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(n) = raw.parse::<i64>() {
        return toml::Value::Integer(n);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(None, env, &Overrides::default())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::defaults();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.auto_create_topics);
        assert_eq!(c.default_partitions, 1);
        assert_eq!(c.segment_bytes, 1_073_741_824);
        assert_eq!(c.segment_ms, Some(604_800_000));
        assert_eq!(c.retention_ms, Some(604_800_000));
        assert_eq!(c.retention_bytes, None);
        assert_eq!(c.retention_check_interval_ms, 30_000);
        assert_eq!(c.flush_interval_ms, 1000);
        assert_eq!(c.flush_messages, None);
        assert_eq!(c.default_durability, Durability::Memory);
        assert_eq!(c.max_request_bytes, 16_777_216);
        assert_eq!(c.max_record_bytes, 1_048_576);
        c.validate().unwrap();
    }

    #[test]
    fn environment_overrides_and_null() {
        let c = load_env(&[
            ("MAPQ_FLUSH_INTERVAL_MS", "100"),
            ("MAPQ_RETENTION_MS", "null"),
            ("MAPQ_AUTO_CREATE_TOPICS", "false"),
            ("MAPQ_DEFAULT_DURABILITY", "fsync"),
            ("PATH", "/usr/bin"),
        ])
        .unwrap();
        assert_eq!(c.flush_interval_ms, 100);
        assert_eq!(c.retention_ms, None);
        assert!(!c.auto_create_topics);
        assert_eq!(c.default_durability, Durability::Fsync);
    }

    #[test]
    fn unknown_variables_are_warnings_that_name_the_nearest_key() {
        let env = [
            ("MAPQ_FLUSH_INTERVALL_MS", "1"),
            ("MAPQ_TOKEN", "secret"),
            ("MAPQ_CACERT", "ca.pem"),
            ("MAPQ_SERVER", "http://127.0.0.1:1"),
            ("MAPQ_FROBNICATE", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let loaded = Config::load_with_warnings(None, env, &Overrides::default()).unwrap();
        assert_eq!(loaded.config.flush_interval_ms, 1000);
        assert_eq!(
            loaded.warnings,
            [
                "environment variable MAPQ_FLUSH_INTERVALL_MS ignored: no setting `flush_intervall_ms`; did you mean MAPQ_FLUSH_INTERVAL_MS?",
                "environment variable MAPQ_FROBNICATE ignored: no setting `frobnicate`",
            ]
        );
    }

    #[test]
    fn toml_errors_say_where_and_null_how() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "flush_interval_ms = 5\nretention_ms = null\n").unwrap();
        let e = Config::load(Some(&f), [], &Overrides::default()).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("retention_ms = null"), "{e}");
        assert!(e.contains("write \"null\" in quotes"), "{e}");
        std::fs::write(&f, "flush_intervall_ms = 5\n").unwrap();
        let e = Config::load(Some(&f), [], &Overrides::default()).unwrap_err();
        assert!(
            e.to_string().contains("did you mean `flush_interval_ms`"),
            "{e}"
        );
    }

    #[test]
    fn cluster_settings_come_from_the_environment_and_a_node_needs_an_id() {
        let c = load_env(&[
            ("MAPQ_CLUSTER", "true"),
            ("MAPQ_NODE_ID", "n1"),
            (
                "MAPQ_ETCD_ENDPOINTS",
                "http://127.0.0.1:2379, http://127.0.0.1:22379",
            ),
        ])
        .unwrap();
        assert!(c.cluster);
        assert_eq!(
            c.etcd_endpoints,
            vec!["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
        );
        assert!(c.log_config(1 << 20).replicated);
        let e = load_env(&[("MAPQ_CLUSTER", "true")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("node_id"), "{e}");
        let e = load_env(&[
            ("MAPQ_CLUSTER", "true"),
            ("MAPQ_NODE_ID", "n1"),
            ("MAPQ_ETCD_ENDPOINTS", "127.0.0.1:2379"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("etcd_endpoints"), "{e}");
        // Outside a cluster nothing is asked of them, and partitions are not replicated.
        assert!(!Config::defaults().log_config(1 << 20).replicated);
    }

    #[test]
    fn listen_takes_host_names() {
        let c = load_env(&[("MAPQ_LISTEN", "localhost:18090")]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:18090".parse().unwrap());
        let flags = Overrides {
            listen: Some("localhost:0".into()),
            data_dir: None,
            kafka_listen: None,
            cluster: false,
        };
        let c = Config::load(None, [], &flags).unwrap();
        assert!(c.listen.ip().is_loopback());
        let e = load_env(&[("MAPQ_LISTEN", "localhost")]).unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
    }

    #[test]
    fn the_summary_is_key_value_lines_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let hash = "ab".repeat(32);
        std::fs::write(
            &f,
            format!("[[tokens]]\nname = \"app\"\nsha256 = \"{hash}\"\ngrants = []\n"),
        )
        .unwrap();
        let c = Config::load(Some(&f), [], &Overrides::default()).unwrap();
        let summary = c.summary();
        assert!(summary.contains("listen = \"127.0.0.1:8080\""), "{summary}");
        assert!(summary.contains("flush_interval_ms = 1000"), "{summary}");
        assert!(summary.contains("tokens = [\"app\"]"), "{summary}");
        assert!(summary.contains("retention_bytes = \"null\""), "{summary}");
        // A bad value inside a token is named without printing the token.
        std::fs::write(
            &f,
            format!("[[tokens]]\nname = \"app\"\nsha256 = \"{hash}\"\ngrants = []\nbogus = 1\n"),
        )
        .unwrap();
        let e = Config::load(Some(&f), [], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokens"), "{e}");
        assert!(!e.contains(&hash), "{e}");
        assert!(!summary.contains(&hash), "{summary}");
        assert!(!summary.contains("Config {"), "{summary}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = load_env(&[("MAPQ_FLUSH_INTERVAL_MS", "soon")]).unwrap_err();
        assert!(e.to_string().contains("flush_interval_ms"), "{e}");
        let e = load_env(&[("MAPQ_SEGMENT_BYTES", "10")]).unwrap_err();
        assert!(e.to_string().contains("segment_bytes"), "{e}");
        // Settings that only make sense together.
        for (vars, key) in [
            (&[("MAPQ_TLS_CERT_FILE", "cert.pem")][..], "tls_cert_file"),
            (
                &[("MAPQ_REQUEST_TIMEOUT_MS", "30000")][..],
                "request_timeout_ms",
            ),
            (
                &[("MAPQ_REQUEST_HEADER_TIMEOUT_MS", "0")][..],
                "request_header_timeout_ms",
            ),
        ] {
            let e = load_env(vars).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9\"\nbogus = 1\n").unwrap();
        let e = Config::load(Some(&f), [], &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn flags_beat_environment_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:1\"\nflush_interval_ms = 5\n").unwrap();
        let env = [("MAPQ_LISTEN".to_string(), "127.0.0.1:2".to_string())];
        let c = Config::load(Some(&f), env.clone(), &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.flush_interval_ms, 5);
        let flags = Overrides {
            listen: Some("127.0.0.1:3".into()),
            data_dir: Some("/tmp/x".into()),
            kafka_listen: Some(String::new()),
            cluster: false,
        };
        let c = Config::load(Some(&f), env, &flags).unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.kafka_listen, "", "the flag turns the Kafka listener off");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }
}
