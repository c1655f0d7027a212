//! Records at the edge: Kafka record batches (magic 2, any codec) into mapq records, and
//! mapq records into uncompressed Kafka record batches. Keys, values and header values keep
//! their null-ness; header names are UTF-8 in both (Kafka's are strings).

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};

use crate::log::format::{BatchHead, Header, ProducerStamp, Record};
use crate::log::ReadBatch;

/// One record of a produce request, owned (its parts share the request's buffer, or the
/// decompressed one).
#[derive(Debug)]
pub struct Incoming {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(StrBytes, Option<Bytes>)>,
    pub timestamp_ms: i64,
}

/// The records of one partition of a produce request.
#[derive(Debug)]
pub struct IncomingBatch {
    pub records: Vec<Incoming>,
    /// The idempotent producer's id, epoch and first sequence, when it sent them.
    pub producer: Option<ProducerStamp>,
    pub transactional: bool,
}

/// What the checks of one request's batches share: the bytes its batches may still
/// decompress to (one budget for the whole request, over all its partitions), and the
/// record count the batch being decoded claims.
#[derive(Debug)]
pub struct Budget {
    bytes: std::sync::atomic::AtomicUsize,
    claimed: std::sync::atomic::AtomicUsize,
}

impl Budget {
    pub fn new(bytes: usize) -> Self {
        Budget {
            bytes: std::sync::atomic::AtomicUsize::new(bytes),
            claimed: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn left(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn spend(&self, n: usize) {
        self.bytes
            .fetch_sub(n.min(self.left()), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Decompresses a batch's records within what is left of the request's budget, and checks
/// the counts inside them before the protocol crate decodes (and allocates for) them: a
/// small request must not expand into gigabytes in memory.
fn decompress_bounded(
    budget: &Budget,
) -> impl Fn(&mut Bytes, Compression) -> anyhow::Result<Bytes> + '_ {
    use std::io::Read;
    move |input: &mut Bytes, codec: Compression| {
        let input = input.split_to(input.len());
        let limit = budget.left();
        let too_big = || anyhow::Error::new(TooLarge(limit));
        let claimed = budget.claimed.load(std::sync::atomic::Ordering::Relaxed);
        let reader: Box<dyn Read + '_> = match codec {
            Compression::None => {
                check_records(&input, claimed)?;
                return Ok(input);
            }
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&input[..])),
            Compression::Lz4 => Box::new(lz4::Decoder::new(&input[..])?),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(&input[..])?),
            Compression::Snappy => {
                // Snappy states each block's length up front: check them, then decode.
                let len = snappy_len(&input)?;
                if len > limit {
                    return Err(too_big());
                }
                budget.spend(len);
                use kafka_protocol::compression::Decompressor;
                let mut b = input;
                let out =
                    kafka_protocol::compression::Snappy::decompress(&mut b, |out: &mut Bytes| {
                        Ok(out.clone())
                    })?;
                check_records(&out, claimed)?;
                return Ok(out);
            }
        };
        let mut out = Vec::new();
        reader.take(limit as u64 + 1).read_to_end(&mut out)?;
        if out.len() > limit {
            return Err(too_big());
        }
        budget.spend(out.len());
        check_records(&out, claimed)?;
        Ok(Bytes::from(out))
    }
}

/// A zigzag varint of a 32-bit field, read exactly as the protocol crate reads it (at most
/// five bytes, bits beyond 32 dropped), so that these checks walk the bytes as the crate
/// will: its value and length.
fn varint32(buf: &[u8]) -> Option<(i32, usize)> {
    let mut raw = 0u32;
    for (i, &b) in buf.iter().take(5).enumerate() {
        raw |= u32::from(b & 0x7f).wrapping_shl(7 * i as u32);
        if b & 0x80 == 0 || i == 4 {
            return Some(((raw >> 1) as i32 ^ -((raw & 1) as i32), i + 1));
        }
    }
    None
}

/// The length of a zigzag varint of a 64-bit field (at most ten bytes, as the crate reads
/// it).
fn varlong_len(buf: &[u8]) -> Option<usize> {
    buf.iter()
        .take(10)
        .position(|&b| b & 0x80 == 0)
        .map(|i| i + 1)
        .or((buf.len() >= 10).then_some(10))
}

/// Walks the records of a batch (magic 2) as the crate will, and checks that each record's
/// header count fits in its bytes (a header takes at least two) and that there are at least
/// the `claimed` records: the crate sizes a map by the header count, and a vector by the
/// batch's record count, before it reads them.
fn check_records(mut rest: &[u8], claimed: usize) -> anyhow::Result<()> {
    let bad = || anyhow::anyhow!("a record's lengths do not fit in its batch");
    let mut walked = 0usize;
    while !rest.is_empty() {
        let (len, n) = varint32(rest).ok_or_else(bad)?;
        let len = usize::try_from(len).map_err(|_| bad())?;
        let record = rest.get(n..n.saturating_add(len)).ok_or_else(bad)?;
        rest = &rest[n + len..];
        walked += 1;
        // Attributes, then the timestamp delta (64 bits) and the offset delta.
        let mut r = record.get(1..).ok_or_else(bad)?;
        r = &r[varlong_len(r).ok_or_else(bad)?..];
        r = &r[varint32(r).ok_or_else(bad)?.1..];
        // The key and the value (-1: null).
        for _ in 0..2 {
            let (len, n) = varint32(r).ok_or_else(bad)?;
            let skip = match len {
                -1 => 0,
                len => usize::try_from(len).map_err(|_| bad())?,
            };
            r = r.get(n.saturating_add(skip)..).ok_or_else(bad)?;
        }
        let (headers, n) = varint32(r).ok_or_else(bad)?;
        if headers < 0 || headers as usize > (r.len() - n) / 2 {
            return Err(bad());
        }
    }
    if walked < claimed {
        return Err(anyhow::anyhow!(
            "the batch claims {claimed} records and holds {walked}"
        ));
    }
    Ok(())
}

/// Checks a batch's record count against its bytes before the crate reserves room for that
/// many records: a record takes at least 7 bytes of the batch (uncompressed) or of what the
/// request may decompress to.
fn check_batch_head(batch: &[u8], limit: usize) -> Result<usize, Refused> {
    // baseOffset, batchLength, then 49 bytes of header up to and including the count.
    let (Some(len), Some(attributes), Some(count)) =
        (batch.get(8..12), batch.get(21..23), batch.get(57..61))
    else {
        return Ok(0); // Too short: the crate says so.
    };
    let len = i32::from_be_bytes(len.try_into().unwrap_or_default());
    let compressed = i16::from_be_bytes(attributes.try_into().unwrap_or_default()) & 7 != 0;
    let count = i32::from_be_bytes(count.try_into().unwrap_or_default());
    let room = if compressed {
        limit
    } else {
        usize::try_from(len).unwrap_or(0).saturating_sub(49)
    };
    if count < 0 || count as usize > room / 7 {
        return Err(Refused::Corrupt(format!(
            "a batch claims {count} records in {len} bytes"
        )));
    }
    Ok(count as usize)
}

/// `seq` plus `n` in Kafka's sequence space: after `i32::MAX` comes 0.
pub fn seq_add(seq: i32, n: u32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// A batch that decompresses to more than the limit.
#[derive(Debug, thiserror::Error)]
#[error("the batch decompresses to more than {0} bytes")]
struct TooLarge(usize);

/// Why a produce's records were refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Decompressed, a batch is larger than a request may be.
    #[error("{0}")]
    TooLarge(String),
    /// Not a valid record batch (CRC, framing, codec, producer fields).
    #[error("{0}")]
    Corrupt(String),
}

/// The decompressed length of Kafka's snappy: xerial's framing (a magic header, then
/// length-prefixed blocks) or, without the header, one raw block.
fn snappy_len(input: &[u8]) -> anyhow::Result<usize> {
    const MAGIC: &[u8] = b"\x82SNAPPY\x00";
    let Some(mut rest) = input.strip_prefix(MAGIC) else {
        return Ok(snap::raw::decompress_len(input)?);
    };
    // The rest of the 16-byte header: two versions.
    rest = rest
        .get(8..)
        .ok_or_else(|| anyhow::anyhow!("short snappy header"))?;
    let mut total = 0usize;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| anyhow::anyhow!("short snappy block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = tail
            .get(..len)
            .ok_or_else(|| anyhow::anyhow!("short snappy block"))?;
        total = total.saturating_add(snap::raw::decompress_len(block)?);
        rest = &tail[len..];
    }
    Ok(total)
}

/// Decodes the record batches of one partition of a produce request: CRCs checked, any codec
/// decompressed (to at most `limit` bytes a batch). Several batches are taken in order as one
/// (Kafka sends one); their producer fields must follow on.
pub fn decode_produce(
    mut bytes: Bytes,
    now_ms: i64,
    budget: &Budget,
) -> Result<IncomingBatch, Refused> {
    let decompress = decompress_bounded(budget);
    let mut sets = Vec::new();
    while !bytes.is_empty() {
        let claimed = check_batch_head(&bytes, budget.left())?;
        budget
            .claimed
            .store(claimed, std::sync::atomic::Ordering::Relaxed);
        sets.push(
            RecordBatchDecoder::decode_with_custom_compression(&mut bytes, Some(&decompress))
                .map_err(|e| match e.downcast_ref::<TooLarge>() {
                    Some(t) => Refused::TooLarge(t.to_string()),
                    None => Refused::Corrupt(format!("{e:#}")),
                })?,
        );
    }
    let mut out = IncomingBatch {
        records: Vec::new(),
        producer: None,
        transactional: false,
    };
    let corrupt = |why: &str| Err(Refused::Corrupt(why.into()));
    // The sequence the next batch must start at, after an idempotent one.
    let mut next_sequence = None;
    for set in sets {
        let Some(first) = set.records.first() else {
            continue;
        };
        // The producer fields are the batch's, the same on each of its records.
        if first.producer_id >= 0 {
            if first.producer_epoch < 0 || first.sequence < 0 {
                return corrupt("an idempotent batch without an epoch or a sequence");
            }
            match (out.producer, next_sequence) {
                (None, None) if out.records.is_empty() => {
                    out.producer = Some(ProducerStamp {
                        id: first.producer_id,
                        epoch: first.producer_epoch,
                        base_sequence: first.sequence,
                    });
                }
                (Some(p), Some(seq))
                    if p.id == first.producer_id
                        && p.epoch == first.producer_epoch
                        && first.sequence == seq => {}
                _ => return corrupt("the batches' producer fields do not follow on"),
            }
            next_sequence = Some(seq_add(first.sequence, set.records.len() as u32));
        } else if out.producer.is_some() {
            return corrupt("the batches' producer fields do not follow on");
        }
        for r in set.records {
            if r.control {
                return corrupt("control records are only written by brokers");
            }
            out.transactional |= r.transactional;
            let headers = r.headers.into_iter().collect();
            out.records.push(Incoming {
                key: r.key,
                value: r.value,
                headers,
                // No timestamp (-1): the server's clock, as for HTTP records without one.
                timestamp_ms: if r.timestamp < 0 { now_ms } else { r.timestamp },
            });
        }
    }
    Ok(out)
}

/// The header lists of `batch`, for [`as_records`] to borrow.
pub fn header_lists(batch: &IncomingBatch) -> Vec<Vec<Header<'_>>> {
    batch
        .records
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .map(|(name, value)| (name.as_bytes(), value.as_deref()))
                .collect()
        })
        .collect()
}

/// The records of `batch` to append, the first carrying `head`.
pub fn as_records<'a>(
    batch: &'a IncomingBatch,
    headers: &'a [Vec<Header<'a>>],
    head: Option<BatchHead<'a>>,
) -> Vec<Record<'a>> {
    batch
        .records
        .iter()
        .zip(headers)
        .enumerate()
        .map(|(i, (r, h))| Record {
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: h,
            timestamp_ms: r.timestamp_ms,
            value_is_json: false,
            batch: if i == 0 { head } else { None },
        })
        .collect()
}

/// Encodes what a read returned as one uncompressed record batch (magic 2, create times),
/// starting at the first record read: a fetch from inside a batch that a producer sent gets
/// exactly the records from its offset on.
pub fn encode_fetch(batch: &ReadBatch, out: &mut BytesMut) -> Result<(), String> {
    if batch.record_count == 0 {
        return Ok(());
    }
    // The batch is smaller than the frames it comes from (a frame's fixed part is larger
    // than a record's varints): one allocation.
    out.reserve(batch.byte_len() + 128);
    let mut first = None;
    let records: Vec<KafkaRecord> = batch
        .records()
        .map(|r| {
            let first = *first.get_or_insert(r.offset);
            let headers: IndexMap<StrBytes, Option<Bytes>> = r
                .headers()
                .map(|(name, value)| {
                    (
                        StrBytes::from_string(String::from_utf8_lossy(name).into_owned()),
                        value.map(Bytes::copy_from_slice),
                    )
                })
                .collect();
            KafkaRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: r.offset as i64,
                // No producer: the batch's base sequence is -1, and the encoder keeps the
                // records of one batch while offset minus sequence stays the same.
                sequence: (r.offset - first) as i32 - 1,
                timestamp: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers,
            }
        })
        .collect();
    RecordBatchEncoder::encode(
        out,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka_record(
        offset: i64,
        key: Option<&'static [u8]>,
        value: Option<&'static [u8]>,
    ) -> KafkaRecord {
        let mut headers = IndexMap::new();
        headers.insert(
            StrBytes::from_static_str("h"),
            Some(Bytes::from_static(b"v")),
        );
        headers.insert(StrBytes::from_static_str("null"), None);
        headers.insert(StrBytes::from_static_str("empty"), Some(Bytes::new()));
        KafkaRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 7,
            producer_epoch: 1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: 40 + offset as i32,
            timestamp: 1_700_000_000_000 + offset,
            key: key.map(Bytes::from_static),
            value: value.map(Bytes::from_static),
            headers,
        }
    }

    fn encoded(records: &[KafkaRecord], compression: Compression) -> BytesMut {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf
    }

    #[test]
    fn every_codec_decodes_to_the_same_records_nulls_kept() {
        let sent = [
            kafka_record(0, Some(b"k"), Some(b"v")),
            kafka_record(1, None, None),
            kafka_record(2, Some(b""), Some(b"")),
        ];
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let buf = encoded(&sent, compression);
            let got = decode_produce(buf.freeze(), 5, &Budget::new(1 << 20)).unwrap();
            assert_eq!(
                got.producer,
                Some(ProducerStamp {
                    id: 7,
                    epoch: 1,
                    base_sequence: 40
                }),
                "{compression:?}"
            );
            assert_eq!(got.records.len(), 3);
            assert_eq!(got.records[0].key.as_deref(), Some(&b"k"[..]));
            assert_eq!(got.records[1].key, None);
            assert_eq!(got.records[1].value, None);
            assert_eq!(got.records[2].key.as_deref(), Some(&b""[..]));
            assert_eq!(got.records[2].value.as_deref(), Some(&b""[..]));
            assert_eq!(got.records[2].timestamp_ms, 1_700_000_000_002);
            let h = &got.records[0].headers;
            assert_eq!(h.len(), 3);
            assert_eq!(h[1], (StrBytes::from_static_str("null"), None));
            assert_eq!(
                h[2],
                (StrBytes::from_static_str("empty"), Some(Bytes::new()))
            );
        }
    }

    #[test]
    fn a_corrupt_batch_is_refused() {
        let mut buf = encoded(
            &[kafka_record(0, Some(b"k"), Some(b"v"))],
            Compression::None,
        );
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert!(decode_produce(buf.freeze(), 0, &Budget::new(1 << 20)).is_err());
        assert!(decode_produce(Bytes::from_static(&[0, 1, 2]), 0, &Budget::new(1 << 20)).is_err());
    }

    #[test]
    fn a_batch_that_decompresses_beyond_the_limit_is_refused_under_every_codec() {
        let big = KafkaRecord {
            value: Some(Bytes::from(vec![0u8; 4 << 20])),
            ..kafka_record(0, None, None)
        };
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let buf = encoded(std::slice::from_ref(&big), compression);
            assert!(buf.len() < 1 << 20, "{compression:?} compresses zeros");
            let e = decode_produce(buf.clone().freeze(), 0, &Budget::new(1 << 20)).unwrap_err();
            assert!(
                matches!(&e, Refused::TooLarge(why) if why.contains("more than 1048576 bytes")),
                "{compression:?}: {e:?}"
            );
            let got = decode_produce(buf.freeze(), 0, &Budget::new(8 << 20)).unwrap();
            assert_eq!(got.records[0].value.as_ref().map(Bytes::len), Some(4 << 20));
        }
    }

    #[test]
    fn counts_that_do_not_fit_their_bytes_are_refused_before_anything_is_allocated() {
        let buf = encoded(
            &[kafka_record(0, Some(b"k"), Some(b"v"))],
            Compression::None,
        );
        // The record count (after the header's first 57 bytes), claimed huge; the CRC is
        // not even looked at.
        let mut huge = buf.to_vec();
        huge[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let e = decode_produce(Bytes::from(huge), 0, &Budget::new(1 << 20)).unwrap_err();
        assert!(
            matches!(&e, Refused::Corrupt(why) if why.contains("claims")),
            "{e:?}"
        );
        // A record's header count beyond its bytes.
        let mut record = Vec::new();
        for v in [0i64, 0, 0, -1, 1] {
            record.extend(zigzag(v));
        }
        record.push(b'v');
        record.extend(zigzag(i32::MAX as i64));
        let mut records = zigzag(record.len() as i64);
        records.extend(&record);
        assert!(check_records(&records, 0).is_err());
        // The same record with the one header it has room for passes.
        let last = record.len() - 1;
        record.truncate(last - 4);
        record.extend(zigzag(1));
        record.extend(zigzag(1));
        record.push(b'h');
        record.extend(zigzag(-1));
        let mut records = zigzag(record.len() as i64);
        records.extend(&record);
        check_records(&records, 1).unwrap();
        // More records claimed than the batch holds.
        assert!(check_records(&records, 2).is_err());
        // An over-long varint is read as the crate reads it: five bytes at most.
        assert_eq!(
            varint32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x0c]),
            Some((0, 5))
        );
        assert_eq!(varint32(&zigzag(-1)), Some((-1, 1)));
        assert_eq!(varint32(&zigzag(i64::from(i32::MAX))), Some((i32::MAX, 5)));
        assert!(varint32(&[0x80, 0x80]).is_none());
        // The review's record: an offset delta of six bytes that the crate reads as five,
        // then a header count of about 2^30 in what follows.
        let body = [
            0x00, 0x00, 0x80, 0x80, 0x80, 0x80, 0x80, 0x0c, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x01, 0xfe, 0xff, 0xff, 0xff, 0x07,
        ];
        let mut records = zigzag(body.len() as i64);
        records.extend(body);
        assert!(check_records(&records, 1).is_err());
    }

    fn zigzag(v: i64) -> Vec<u8> {
        let mut raw = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let b = (raw & 0x7f) as u8;
            raw >>= 7;
            if raw == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }
}
