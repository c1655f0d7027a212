//! Helpers shared by the engine tests.
#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod fuzz;
pub mod kafka;
pub mod lines;
pub mod nobody;
pub mod prom;
pub mod server;

use mapq::log::{LogConfig, PartitionLog, Record};

/// A number from the environment (the knobs of the long runs), else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Debian's own interpreter when there is one (the machine's other `python3` may lack
/// nothing the tests need, but Debian's is the one the project installs packages for).
pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Small segments and dense checkpoints, so that tests cross rolls and indexes quickly.
pub fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes: 256,
        reserve_chunk_bytes: 16 << 10,
        prefault_bytes: 8 << 10,
        ..LogConfig::default()
    }
}

/// The value of record `i` in generated workloads: varied lengths, recognisable bytes.
pub fn value_for(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    let mut v = format!("value-{i}-").into_bytes();
    v.extend((0..len).map(|j| (i as usize + j) as u8));
    v
}

pub fn key_for(i: u64) -> Option<Vec<u8>> {
    (!i.is_multiple_of(3)).then(|| format!("key-{}", i % 7).into_bytes())
}

/// Appends records `from..to` as one batch with the generated keys and values.
pub fn append_range(log: &PartitionLog, from: u64, to: u64) -> u64 {
    try_append_range(log, from, to).expect("append")
}

/// [`append_range`] that returns the engine's error instead of failing the test.
pub fn try_append_range(
    log: &PartitionLog,
    from: u64,
    to: u64,
) -> Result<u64, mapq::log::LogError> {
    let values: Vec<Vec<u8>> = (from..to).map(value_for).collect();
    let keys: Vec<Option<Vec<u8>>> = (from..to).map(key_for).collect();
    let headers: &[(&[u8], Option<&[u8]>)] = &[(b"h", Some(b"v"))];
    let records: Vec<Record<'_>> = (from..to)
        .zip(values.iter().zip(&keys))
        .map(|(i, (v, k))| Record {
            key: k.as_deref(),
            value: Some(v),
            headers: if i.is_multiple_of(2) { headers } else { &[] },
            timestamp_ms: 1_000 + i as i64,
            value_is_json: false,
            batch: None,
        })
        .collect();
    Ok(log.append(&records)?.first_offset)
}

/// Reads everything from `from` to the end, checking each record against the generator.
pub fn check_all(log: &PartitionLog, from: u64) -> u64 {
    let mut next = from;
    loop {
        let batch = log.read(next, 1000, 1 << 20).expect("read");
        if batch.record_count == 0 {
            return next;
        }
        for r in batch.records() {
            assert_eq!(r.offset, next, "offsets are contiguous");
            assert_eq!(
                r.value.as_deref(),
                Some(value_for(next).as_slice()),
                "value of {next}"
            );
            assert_eq!(r.key.as_deref(), key_for(next).as_deref(), "key of {next}");
            assert_eq!(r.timestamp_ms, 1_000 + next as i64);
            assert_eq!(r.headers().count(), usize::from(next.is_multiple_of(2)));
            next += 1;
        }
        assert_eq!(batch.next_offset, next);
    }
}

/// A configuration file's `[[tokens]]` entries: for each token its name, its secret (only
/// its hash is written), the topic pattern of its one grant and what that grant allows.
pub fn tokens_toml(tokens: &[(&str, &str, &str, &[&str])]) -> String {
    tokens
        .iter()
        .map(|(name, secret, topics, allow)| {
            let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
            format!(
                "[[tokens]]\nname = {name:?}\nsha256 = {:?}\ngrants = [{{ topics = {topics:?}, allow = [{}] }}]\n\n",
                mapq::auth::token_hash(secret),
                allow.join(", ")
            )
        })
        .collect()
}

/// A server's TLS setup for tests: a self-signed certificate and its key in a temporary
/// directory, and a config file that uses them (with `extra` settings after).
pub struct Tls {
    _dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
    pub ca_pem: std::path::PathBuf,
    pub ca: reqwest::Certificate,
}

/// A self-signed certificate for 127.0.0.1 and localhost, and a config file that uses it.
pub fn tls_setup(extra: &str) -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let config = dir.path().join("mapq.toml");
    std::fs::write(
        &config,
        format!(
            "tls_cert_file = {:?}\ntls_key_file = {:?}\n{extra}",
            cert_file.to_str().unwrap(),
            key_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    Tls {
        _dir: dir,
        config,
        ca_pem: cert_file,
        ca,
    }
}
