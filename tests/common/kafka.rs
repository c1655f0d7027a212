//! A bare Kafka protocol client for tests that need exact requests (versions, sequences,
//! pipelining, bad bytes): messages encoded and decoded by the `kafka-protocol` crate, sent
//! over a plain socket.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Installs the Kafka clients nobody on the team wrote (kcat, confluent-kafka, kafka-python,
/// kafkajs) with `tests/tools/install-kafka-clients.sh`, once per test binary (the script
/// serializes binaries); returns where the PyPI and npm ones are.
pub fn clients() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka-clients");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/install-kafka-clients.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .expect("run tests/tools/install-kafka-clients.sh");
        assert!(
            status.success(),
            "the Kafka clients could not be installed (messages above)"
        );
        dir
    })
}

pub struct KafkaClient {
    pub stream: TcpStream,
    next: i32,
}

impl KafkaClient {
    pub fn connect(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).expect("connect to the Kafka listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        KafkaClient { stream, next: 1 }
    }

    /// Sends `req` in `version` without waiting; returns its correlation id.
    pub fn send<R: Request>(&mut self, version: i16, req: &R) -> i32 {
        let mut body = BytesMut::new();
        req.encode(&mut body, version).unwrap();
        self.send_encoded(ApiKey::try_from(R::KEY).unwrap(), version, &body)
    }

    /// Sends a request body encoded beforehand (a benchmark sends one many times).
    pub fn send_encoded(&mut self, key: ApiKey, version: i16, body: &[u8]) -> i32 {
        let id = self.next;
        self.next += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = id;
        header.client_id = Some(StrBytes::from_static_str("mapq-test"));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        buf.extend_from_slice(body);
        self.send_raw(&buf);
        id
    }

    pub fn send_raw(&mut self, body: &[u8]) {
        self.stream
            .write_all(&(body.len() as u32).to_be_bytes())
            .unwrap();
        self.stream.write_all(body).unwrap();
    }

    /// The next answer's frame, or `None` when the server closed the connection.
    pub fn recv_raw(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let len = u32::from_be_bytes(len) as u64;
        // Read into spare capacity: no zeroing of a large answer first.
        let mut frame = Vec::with_capacity(len as usize);
        (&mut self.stream).take(len).read_to_end(&mut frame).ok()?;
        (frame.len() as u64 == len).then(|| Bytes::from(frame))
    }

    /// Reads the next answer as `R`'s response in `version`: its correlation id and body.
    pub fn recv<R: Request>(&mut self, version: i16) -> (i32, R::Response) {
        let key = ApiKey::try_from(R::KEY).unwrap();
        let mut frame = self.recv_raw().expect("an answer, not a closed connection");
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
            .expect("response header");
        let body = R::Response::decode(&mut frame, version).expect("response body");
        (header.correlation_id, body)
    }

    /// Sends `req` and reads its answer.
    pub fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        let id = self.send(version, req);
        let (got, body) = self.recv::<R>(version);
        assert_eq!(got, id, "answers come in the order of the requests");
        body
    }
}

/// A record with a key and value (and a header), for [`batch`].
pub fn record(offset: i64, key: &str, value: &str) -> Record {
    let mut r = bare_record(
        offset,
        Some(Bytes::from(key.to_owned())),
        Some(Bytes::from(value.to_owned())),
    );
    r.headers.insert(
        StrBytes::from_static_str("h"),
        Some(Bytes::from_static(b"1")),
    );
    r
}

/// A record without headers, timestamped 1_700_000_000_000 plus its offset, no producer.
pub fn bare_record(offset: i64, key: Option<Bytes>, value: Option<Bytes>) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        // No producer: the batch's base sequence is -1, and the encoder keeps records in
        // one batch while offset minus sequence stays the same.
        sequence: offset as i32 - 1,
        timestamp: 1_700_000_000_000 + offset,
        key,
        value,
        headers: Default::default(),
    }
}

/// One record batch of `count` records `k{first+i}`/`v{first+i}`; with `producer` (id,
/// epoch, base sequence) an idempotent one.
pub fn batch(first: usize, count: usize, producer: Option<(i64, i16, i32)>) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| {
            let mut r = record(
                i as i64,
                &format!("k{}", first + i),
                &format!("v{}", first + i),
            );
            if let Some((id, epoch, seq)) = producer {
                r.producer_id = id;
                r.producer_epoch = epoch;
                r.sequence = seq + i as i32;
            }
            r
        })
        .collect();
    encode_batch(&records)
}

/// `records` as one uncompressed record batch.
pub fn encode_batch(records: &[Record]) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

/// The records of a fetch answer.
pub fn decode(records: Option<Bytes>) -> Vec<Record> {
    let Some(mut b) = records else {
        return Vec::new();
    };
    RecordBatchDecoder::decode_all(&mut b)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.records)
        .collect()
}
