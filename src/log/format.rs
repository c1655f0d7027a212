//! Byte layouts of the on-disk format, as constants and pure encode/decode functions.
//!
//! The normative description is `FORMAT.md` (the rustdoc of [`crate::log`]); this module is its
//! executable form. Nothing here touches files or mappings: it works on byte slices, so the
//! same code checks frames in a segment, in a binary produce request and in a tailer.

use std::ops::Range;

/// The segment format version written by this build.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest segment format version this build reads: version 1 segments are read as they
/// are (their frames are valid version 2 frames that use none of its additions), never
/// written to (FORMAT.md section 7).
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// The version of the index file layout, unchanged since format version 1.
pub const INDEX_VERSION: u32 = 1;

/// Alignment of every frame's start and of every frame's padded length.
pub const FRAME_ALIGN: usize = 8;

/// First eight bytes of a segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MAPQSEG\0";
/// First eight bytes of an offset index file.
pub const OFFSET_INDEX_MAGIC: [u8; 8] = *b"MAPQOIX\0";
/// First eight bytes of a time index file.
pub const TIME_INDEX_MAGIC: [u8; 8] = *b"MAPQTIX\0";

/// File name extensions; the stem is the segment's base offset, zero-padded to 20 digits.
pub const SEGMENT_EXT: &str = "log";
pub const OFFSET_INDEX_EXT: &str = "index";
pub const TIME_INDEX_EXT: &str = "timeindex";
/// Suffix of a file still being created; renamed to its final name once its header is durable.
pub const CREATING_SUFFIX: &str = "new";
/// A cluster's leader-epoch history of a partition (`FORMAT.md` §7), in its directory, and
/// the temporary name it is rewritten under.
pub const LEADER_EPOCHS_FILE: &str = "leader-epochs";
pub const LEADER_EPOCHS_TMP: &str = "leader-epochs.tmp";
/// A segment's three files: its data file and its two index files.
pub const SEGMENT_FILE_EXTS: [&str; 3] = [SEGMENT_EXT, OFFSET_INDEX_EXT, TIME_INDEX_EXT];

/// Field positions of the segment header. Each field starts where the previous one ends, so
/// the positions are derived, not typed twice; the dynamic fields sit on their own 64-byte
/// cache lines so that the writer, the flusher and spinning tailers do not share a line.
pub mod segment_header {
    use std::mem::size_of;

    pub const MAGIC: usize = 0;
    pub const VERSION: usize = MAGIC + size_of::<[u8; 8]>();
    pub const HEADER_BYTES: usize = VERSION + size_of::<u32>();
    pub const BASE_OFFSET: usize = HEADER_BYTES + size_of::<u32>();
    pub const CAPACITY_BYTES: usize = BASE_OFFSET + size_of::<u64>();
    pub const CREATED_MS: usize = CAPACITY_BYTES + size_of::<u64>();
    pub const INDEX_INTERVAL_BYTES: usize = CREATED_MS + size_of::<i64>();
    /// CRC32C of bytes `[0, HEADER_CRC)`: the fields above never change after creation.
    pub const HEADER_CRC: usize = INDEX_INTERVAL_BYTES + size_of::<u32>();
    pub const STATIC_END: usize = HEADER_CRC + size_of::<u32>();

    const CACHE_LINE: usize = 64;
    /// u64, atomic: end of the last published frame (byte position in the file).
    pub const COMMITTED_END: usize = CACHE_LINE;
    /// u64, atomic: position up to which msync has completed.
    pub const DURABLE_END: usize = 2 * CACHE_LINE;
    /// u32, atomic: 0 while records may still be added, 1 once sealed.
    pub const SEALED: usize = 3 * CACHE_LINE;
    /// u32, atomic futex word: bumped by the writer after a publish or seal when WAITERS > 0.
    pub const WAKE_SEQ: usize = 4 * CACHE_LINE;
    /// u32, atomic: number of tailers blocked in a futex wait on WAKE_SEQ.
    pub const WAITERS: usize = WAKE_SEQ + size_of::<u32>();
    /// u32, atomic: 0; 1 once the partition's topic was deleted: the segment never changes
    /// again and no segment follows it.
    pub const DELETED: usize = 5 * CACHE_LINE;
    /// u64, atomic (version 2): 0 when the partition is not replicated; else the byte
    /// position up to which every in-sync replica holds the records (what no failover can
    /// remove).
    pub const REPLICATED_END: usize = 6 * CACHE_LINE;
    /// u64, atomic (version 2): meaningful once `TRUNCATED` is 1: the partition's end
    /// offset right after the truncation (stored before `TRUNCATED`).
    pub const TRUNCATED_TO: usize = 7 * CACHE_LINE;
    /// u32, atomic (version 2): 0; 1 once a truncation removed records of this file, or the
    /// whole file: the file is never written again, and a reader finds its next offset again
    /// from the directory (FORMAT.md section 5.3).
    pub const TRUNCATED: usize = TRUNCATED_TO + size_of::<u64>();

    /// Size of the whole header; the first frame starts here.
    pub const SIZE: usize = 4096;

    const _: () = assert!(STATIC_END <= COMMITTED_END);
    const _: () = assert!(WAITERS + size_of::<u32>() <= DELETED);
    const _: () = assert!(DELETED + size_of::<u32>() <= REPLICATED_END);
    const _: () = assert!(TRUNCATED + size_of::<u32>() <= SIZE);
}

/// Field positions of the header shared by the offset and time index files.
pub mod index_header {
    use std::mem::size_of;

    pub const MAGIC: usize = 0;
    pub const VERSION: usize = MAGIC + size_of::<[u8; 8]>();
    pub const ENTRY_BYTES: usize = VERSION + size_of::<u32>();
    pub const BASE_OFFSET: usize = ENTRY_BYTES + size_of::<u32>();
    pub const CAPACITY_ENTRIES: usize = BASE_OFFSET + size_of::<u64>();
    /// CRC32C of bytes `[0, HEADER_CRC)`.
    pub const HEADER_CRC: usize = CAPACITY_ENTRIES + size_of::<u64>();
    /// u64, atomic: number of published entries.
    pub const COUNT: usize = 64;
    /// Size of the header; entry 0 starts here.
    pub const SIZE: usize = 128;
    /// Every entry is two little-endian 64-bit integers.
    pub const ENTRY_SIZE: usize = 2 * size_of::<u64>();

    const _: () = assert!(HEADER_CRC + size_of::<u32>() <= COUNT);
}

/// Field positions of a record frame.
pub mod frame {
    use std::mem::size_of;

    /// u32: bytes from the frame's start to the end of its headers, padding excluded.
    pub const LENGTH: usize = 0;
    /// u32: CRC32C of bytes `[CRC_START, LENGTH)`.
    pub const CRC: usize = LENGTH + size_of::<u32>();
    /// u64: the record's offset. Not covered by the CRC, so the broker can assign it.
    pub const OFFSET: usize = CRC + size_of::<u32>();
    /// i64: milliseconds since the Unix epoch. First byte covered by the CRC.
    pub const TIMESTAMP_MS: usize = OFFSET + size_of::<u64>();
    /// u32: attribute flags, see [`super::attributes`].
    pub const ATTRIBUTES: usize = TIMESTAMP_MS + size_of::<i64>();
    /// u32: key length in bytes (0 when the key is null).
    pub const KEY_LEN: usize = ATTRIBUTES + size_of::<u32>();
    /// u32: value length in bytes.
    pub const VALUE_LEN: usize = KEY_LEN + size_of::<u32>();
    /// u32: number of headers.
    pub const HEADER_COUNT: usize = VALUE_LEN + size_of::<u32>();
    /// Size of the fixed part; the key starts here.
    pub const FIXED_SIZE: usize = HEADER_COUNT + size_of::<u32>();
    /// The CRC covers everything from here to the end of the headers.
    pub const CRC_START: usize = TIMESTAMP_MS;
}

/// Attribute flag bits of a record frame. Bits not listed must be zero.
pub mod attributes {
    /// The value is the UTF-8 text of a JSON document (produced as JSON, consumed as JSON).
    pub const VALUE_JSON: u32 = 1 << 0;
    /// The record has a key (possibly empty). When clear the key is null and its length is 0.
    pub const HAS_KEY: u32 = 1 << 1;
    /// Version 2: the value is null (its length is 0), as distinct from an empty value.
    pub const VALUE_NULL: u32 = 1 << 2;
    /// Version 2: a batch head follows the headers (see [`super::batch_head`]): this is the
    /// first record of a batch appended with one publication.
    pub const BATCH_HEAD: u32 = 1 << 3;
    /// Every bit defined by version 1.
    pub const KNOWN_V1: u32 = VALUE_JSON | HAS_KEY;
    /// Every bit defined by version 2.
    pub const KNOWN: u32 = KNOWN_V1 | VALUE_NULL | BATCH_HEAD;
}

/// A header entry's value length that means "null value" (version 2); no bytes follow it.
pub const NULL_HEADER_VALUE: u32 = u32::MAX;

/// Field positions of a batch head (version 2): the block at the end of the first frame of
/// a batch, after its headers, covered by the frame's CRC. It describes the whole batch:
/// `record_count` records starting with this one, published together.
pub mod batch_head {
    use std::mem::size_of;

    /// u32: bytes of the block, this field included.
    pub const LEN: usize = 0;
    /// u32: records in the batch, this one included; at least 1.
    pub const RECORD_COUNT: usize = LEN + size_of::<u32>();
    /// u32: the leader epoch under which the batch was appended (0 outside clusters).
    pub const LEADER_EPOCH: usize = RECORD_COUNT + size_of::<u32>();
    /// i16: producer epoch, -1 without a producer.
    pub const PRODUCER_EPOCH: usize = LEADER_EPOCH + size_of::<u32>();
    /// u16: length of the idempotency key, 0 without one.
    pub const KEY_LEN: usize = PRODUCER_EPOCH + size_of::<i16>();
    /// i64: producer id, -1 without a producer.
    pub const PRODUCER_ID: usize = KEY_LEN + size_of::<u16>();
    /// i32: sequence number of the batch's first record, -1 without a producer.
    pub const BASE_SEQUENCE: usize = PRODUCER_ID + size_of::<i64>();
    /// u32: records in the whole request the idempotency key names (0 without a key).
    pub const REQUEST_RECORDS: usize = BASE_SEQUENCE + size_of::<i32>();
    /// 16 bytes: digest of that request, opaque to readers (zeros without a key).
    pub const DIGEST: usize = REQUEST_RECORDS + size_of::<u32>();
    /// i64: the server's clock when the batch was appended, ms since the Unix epoch (the
    /// records' own timestamps may be anything their producer chose).
    pub const APPENDED_MS: usize = DIGEST + 16;
    /// Size of the fixed part: the idempotency key follows, then (optionally) one u32 per
    /// record of the batch: its position in the request.
    pub const FIXED_SIZE: usize = APPENDED_MS + size_of::<i64>();

    const _: () = assert!(FIXED_SIZE == 56);
}

/// A producer's identity and sequence on a batch (Kafka's idempotent producer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    /// At least 0.
    pub id: i64,
    /// At least 0.
    pub epoch: i16,
    /// Sequence of the batch's first record, at least 0; record `i` has `base_sequence + i`,
    /// wrapping from `i32::MAX` to 0 as Kafka's sequences do.
    pub base_sequence: i32,
}

/// The idempotency key of the request a batch came from, stored with its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTag<'a> {
    /// 1 to 65535 bytes.
    pub key: &'a [u8],
    /// A digest of the request, to tell a retry from another request under the same key.
    pub digest: [u8; 16],
    /// Records in the whole request (over every partition), at least the batch's count.
    pub records: u32,
    /// When the request's records were spread over partitions: the request position of
    /// each record of the batch, increasing. `None`: record `i` of the batch is record `i`
    /// of the request.
    pub positions: Option<&'a [u32]>,
}

/// A batch head to write with the first record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchHead<'a> {
    pub record_count: u32,
    pub leader_epoch: u32,
    /// When the batch was appended (the server's clock, ms since the Unix epoch).
    pub appended_ms: i64,
    pub producer: Option<ProducerStamp>,
    pub request: Option<RequestTag<'a>>,
}

impl BatchHead<'_> {
    /// Bytes of the encoded block.
    pub fn encoded_len(&self) -> usize {
        batch_head::FIXED_SIZE
            + self
                .request
                .map_or(0, |r| r.key.len() + r.positions.map_or(0, |p| 4 * p.len()))
    }

    fn encode(&self, buf: &mut [u8]) {
        use batch_head as b;
        let (id, epoch, seq) = self
            .producer
            .map_or((-1, -1, -1), |p| (p.id, p.epoch, p.base_sequence));
        put_u32(buf, b::LEN, self.encoded_len() as u32);
        put_u32(buf, b::RECORD_COUNT, self.record_count);
        put_u32(buf, b::LEADER_EPOCH, self.leader_epoch);
        buf[b::PRODUCER_EPOCH..b::PRODUCER_EPOCH + 2].copy_from_slice(&epoch.to_le_bytes());
        put_u64(buf, b::PRODUCER_ID, id as u64);
        put_u32(buf, b::BASE_SEQUENCE, seq as u32);
        put_u64(buf, b::APPENDED_MS, self.appended_ms as u64);
        let mut at = b::FIXED_SIZE;
        match self.request {
            None => {
                buf[b::KEY_LEN..b::KEY_LEN + 2].fill(0);
                put_u32(buf, b::REQUEST_RECORDS, 0);
                buf[b::DIGEST..b::APPENDED_MS].fill(0);
            }
            Some(r) => {
                buf[b::KEY_LEN..b::KEY_LEN + 2]
                    .copy_from_slice(&(r.key.len() as u16).to_le_bytes());
                put_u32(buf, b::REQUEST_RECORDS, r.records);
                buf[b::DIGEST..b::APPENDED_MS].copy_from_slice(&r.digest);
                buf[at..at + r.key.len()].copy_from_slice(r.key);
                at += r.key.len();
                for &p in r.positions.unwrap_or(&[]) {
                    put_u32(buf, at, p);
                    at += 4;
                }
            }
        }
        debug_assert_eq!(at, self.encoded_len());
    }

    /// Whether the head is one [`decode_batch_head`] accepts for a batch of `count`
    /// records; the writer refuses any other.
    pub fn check(&self, count: usize) -> std::result::Result<(), &'static str> {
        let mut buf = vec![0u8; self.encoded_len()];
        if self
            .request
            .is_some_and(|r| r.key.is_empty() || r.key.len() > u16::MAX as usize)
        {
            return Err("the idempotency key must be 1 to 65535 bytes");
        }
        self.encode(&mut buf);
        let view = decode_batch_head(&buf)?;
        if view.record_count as usize != count {
            return Err("the batch head's record count differs from the batch's");
        }
        Ok(())
    }
}

/// A decoded, validated batch head (see [`BatchHead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchView<'a> {
    pub record_count: u32,
    pub leader_epoch: u32,
    pub appended_ms: i64,
    pub producer: Option<ProducerStamp>,
    pub request: Option<RequestView<'a>>,
}

impl<'a> BatchView<'a> {
    /// The request positions of the batch's records, when the head lists them.
    pub fn positions(&self) -> Option<Vec<u32>> {
        let r = self.request.filter(RequestView::has_positions)?;
        Some(
            (0..self.record_count as usize)
                .map(|i| r.position(i))
                .collect(),
        )
    }

    /// The head this view was decoded from; `positions` as [`BatchView::positions`] gave.
    pub fn to_head<'b>(&self, positions: Option<&'b [u32]>) -> BatchHead<'b>
    where
        'a: 'b,
    {
        BatchHead {
            record_count: self.record_count,
            leader_epoch: self.leader_epoch,
            appended_ms: self.appended_ms,
            producer: self.producer,
            request: self.request.map(|r| RequestTag {
                key: r.key,
                digest: r.digest,
                records: r.records,
                positions,
            }),
        }
    }
}

/// A decoded [`RequestTag`]; the positions stay little-endian bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestView<'a> {
    pub key: &'a [u8],
    pub digest: [u8; 16],
    pub records: u32,
    positions: Option<&'a [u8]>,
}

impl RequestView<'_> {
    /// The request position of record `i` of the batch.
    pub fn position(&self, i: usize) -> u32 {
        match self.positions {
            Some(p) => get_u32(p, 4 * i),
            None => i as u32,
        }
    }

    /// Whether the batch's records are spread-out positions of the request.
    pub fn has_positions(&self) -> bool {
        self.positions.is_some()
    }
}

/// Why binary produce refuses a client's frame with a batch head ([`without_batch_heads`]
/// makes such frames acceptable).
pub const CLIENT_BATCH_HEAD: &str = "batch heads are written by the server, not sent by clients";

/// A client's frames with their batch heads removed: each frame with a head is encoded
/// again without it (its record kept, its CRC computed again), the others copied as they
/// are. For frames copied from a binary consume of a topic whose batches have heads
/// (idempotency keys, producer ids), which only the server writes. `None` if a frame does
/// not decode.
pub fn without_batch_heads(frames: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(frames.len());
    let mut at = 0;
    while at < frames.len() {
        let f = decode_frame(&frames[at..]).ok()?;
        if f.batch_range().is_some() {
            let headers: Vec<Header<'_>> = f.headers().collect();
            let record = f.record(&headers);
            let start = out.len();
            out.resize(start + record.padded_len()?, 0);
            encode_frame(&mut out[start..], f.offset, &record);
        } else {
            out.extend_from_slice(f.bytes);
        }
        at += f.padded_len;
    }
    Some(out)
}

/// Decodes and checks a batch head block (exactly `block`).
pub fn decode_batch_head(block: &[u8]) -> std::result::Result<BatchView<'_>, &'static str> {
    use batch_head as b;
    if block.len() < b::FIXED_SIZE || get_u32(block, b::LEN) as usize != block.len() {
        return Err("batch head length does not fill the frame");
    }
    let record_count = get_u32(block, b::RECORD_COUNT);
    if record_count == 0 {
        return Err("batch head counts no record");
    }
    let epoch = i16::from_le_bytes([block[b::PRODUCER_EPOCH], block[b::PRODUCER_EPOCH + 1]]);
    let id = get_u64(block, b::PRODUCER_ID) as i64;
    let seq = get_u32(block, b::BASE_SEQUENCE) as i32;
    let producer = match (id, epoch, seq) {
        (-1, -1, -1) => None,
        (id, epoch, seq) if id >= 0 && epoch >= 0 && seq >= 0 => Some(ProducerStamp {
            id,
            epoch,
            base_sequence: seq,
        }),
        _ => return Err("batch head producer fields are partly set or negative"),
    };
    let key_len = u16::from_le_bytes([block[b::KEY_LEN], block[b::KEY_LEN + 1]]) as usize;
    let records = get_u32(block, b::REQUEST_RECORDS);
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&block[b::DIGEST..b::APPENDED_MS]);
    let rest = &block[b::FIXED_SIZE..];
    let request = if key_len == 0 {
        if records != 0 || digest != [0; 16] || !rest.is_empty() {
            return Err("batch head has request fields without an idempotency key");
        }
        None
    } else {
        let Some((key, positions)) = rest.split_at_checked(key_len) else {
            return Err("batch head idempotency key overruns the block");
        };
        if records < record_count {
            return Err("batch head counts more records than its request");
        }
        let positions = match positions.len() {
            0 => None,
            n if n == 4 * record_count as usize => {
                let mut prev = None;
                for i in 0..record_count as usize {
                    let p = get_u32(positions, 4 * i);
                    if p >= records || prev.is_some_and(|q| p <= q) {
                        return Err("batch head request positions are out of order or range");
                    }
                    prev = Some(p);
                }
                Some(positions)
            }
            _ => return Err("batch head request positions do not match its record count"),
        };
        Some(RequestView {
            key,
            digest,
            records,
            positions,
        })
    };
    Ok(BatchView {
        record_count,
        leader_epoch: get_u32(block, b::LEADER_EPOCH),
        appended_ms: get_u64(block, b::APPENDED_MS) as i64,
        producer,
        request,
    })
}

/// Rounds `n` up to the frame alignment.
pub const fn align_up(n: usize) -> usize {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// File name of a segment (or index) with the given base offset.
pub fn file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// Parses `00000000000000000042.log` into 42; `None` for any other name.
pub fn parse_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A header: its name, and its value (`None`: null, as distinct from empty).
pub type Header<'a> = (&'a [u8], Option<&'a [u8]>);

/// A record to append: borrowed key, value and headers.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    /// `None`: a null value ([`attributes::VALUE_NULL`]), as distinct from an empty one.
    pub value: Option<&'a [u8]>,
    /// Header names and values; by convention (and in the HTTP API) UTF-8.
    pub headers: &'a [Header<'a>],
    pub timestamp_ms: i64,
    /// Sets [`attributes::VALUE_JSON`]: the value is JSON text.
    pub value_is_json: bool,
    /// A batch head, on the first record of a batch only ([`attributes::BATCH_HEAD`]).
    pub batch: Option<BatchHead<'a>>,
}

impl<'a> Record<'a> {
    /// A record with only a value, no key, no headers.
    pub fn value(value: &'a [u8], timestamp_ms: i64) -> Self {
        Record {
            key: None,
            value: Some(value),
            headers: &[],
            timestamp_ms,
            value_is_json: false,
            batch: None,
        }
    }

    /// Unpadded frame length, or `None` when it does not fit the 32-bit length field.
    pub fn frame_len(&self) -> Option<usize> {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| 8 + n.len() + v.map_or(0, <[u8]>::len))
            .sum();
        let len = frame::FIXED_SIZE
            + self.key.map_or(0, <[u8]>::len)
            + self.value.map_or(0, <[u8]>::len)
            + headers
            + self.batch.map_or(0, |b| b.encoded_len());
        (len <= u32::MAX as usize - FRAME_ALIGN).then_some(len)
    }

    /// Frame length including the padding to the next frame.
    pub fn padded_len(&self) -> Option<usize> {
        self.frame_len().map(align_up)
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Reads a little-endian u32 at `at`. Callers check bounds first.
pub fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Reads a little-endian u64 at `at`. Callers check bounds first.
pub fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Encodes `record` with `offset` into `buf`, which must be exactly `record.padded_len()`
/// bytes long. The padding is zeroed.
pub fn encode_frame(buf: &mut [u8], offset: u64, record: &Record<'_>) {
    let len = record
        .frame_len()
        .expect("caller sized the buffer with padded_len");
    let mut attrs = 0;
    // A null value is not JSON text (a frame with both flags is invalid).
    if record.value_is_json && record.value.is_some() {
        attrs |= attributes::VALUE_JSON;
    }
    let key = record.key.unwrap_or(&[]);
    if record.key.is_some() {
        attrs |= attributes::HAS_KEY;
    }
    if record.value.is_none() {
        attrs |= attributes::VALUE_NULL;
    }
    if record.batch.is_some() {
        attrs |= attributes::BATCH_HEAD;
    }
    let value = record.value.unwrap_or(&[]);
    put_u32(buf, frame::LENGTH, len as u32);
    put_u64(buf, frame::OFFSET, offset);
    put_u64(buf, frame::TIMESTAMP_MS, record.timestamp_ms as u64);
    put_u32(buf, frame::ATTRIBUTES, attrs);
    put_u32(buf, frame::KEY_LEN, key.len() as u32);
    put_u32(buf, frame::VALUE_LEN, value.len() as u32);
    put_u32(buf, frame::HEADER_COUNT, record.headers.len() as u32);
    let mut at = frame::FIXED_SIZE;
    for part in [key, value] {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    for (name, value) in record.headers {
        put_u32(buf, at, name.len() as u32);
        at += 4;
        buf[at..at + name.len()].copy_from_slice(name);
        at += name.len();
        match value {
            Some(value) => {
                put_u32(buf, at, value.len() as u32);
                at += 4;
                buf[at..at + value.len()].copy_from_slice(value);
                at += value.len();
            }
            None => {
                put_u32(buf, at, NULL_HEADER_VALUE);
                at += 4;
            }
        }
    }
    if let Some(head) = &record.batch {
        head.encode(&mut buf[at..len]);
        at = len;
    }
    debug_assert_eq!(at, len);
    buf[len..].fill(0);
    let crc = crc32c::crc32c(&buf[frame::CRC_START..len]);
    put_u32(buf, frame::CRC, crc);
}

/// Overwrites the offset field of an encoded frame (not covered by the CRC).
pub fn set_frame_offset(frame_bytes: &mut [u8], offset: u64) {
    put_u64(frame_bytes, frame::OFFSET, offset);
}

/// Sets the timestamp of an encoded frame and recomputes its CRC.
pub fn set_frame_timestamp(frame_bytes: &mut [u8], timestamp_ms: i64) {
    put_u64(frame_bytes, frame::TIMESTAMP_MS, timestamp_ms as u64);
    let len = get_u32(frame_bytes, frame::LENGTH) as usize;
    let crc = crc32c::crc32c(&frame_bytes[frame::CRC_START..len]);
    put_u32(frame_bytes, frame::CRC, crc);
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame is truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("frame length {0} is out of range")]
    BadLength(u32),
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("frame has unknown attribute bits {0:#x}")]
    UnknownAttributes(u32),
    #[error("frame fields do not add up to its length")]
    BadLayout,
    #[error("padding after the frame is not zero")]
    NonZeroPadding,
    #[error("{0}")]
    BadBatchHead(&'static str),
}

/// A validated frame, borrowing the bytes it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameView<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub attributes: u32,
    /// Position of the key and value inside the frame, for zero-copy slicing by callers that
    /// hold the frame as `Bytes`.
    pub key_range: Option<Range<usize>>,
    pub value_range: Range<usize>,
    pub headers_range: Range<usize>,
    pub header_count: u32,
    /// Length including padding: where the next frame starts.
    pub padded_len: usize,
    pub bytes: &'a [u8],
}

impl<'a> FrameView<'a> {
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key_range.clone().map(|r| &self.bytes[r])
    }

    /// The value; `None` when it is null.
    #[inline]
    pub fn value(&self) -> Option<&'a [u8]> {
        (self.attributes & attributes::VALUE_NULL == 0)
            .then(|| &self.bytes[self.value_range.clone()])
    }

    pub fn value_is_json(&self) -> bool {
        self.attributes & attributes::VALUE_JSON != 0
    }

    /// Position of the batch head block in the frame, on the first record of a batch that
    /// has one: from the end of the headers to the frame's length.
    #[inline]
    pub fn batch_range(&self) -> Option<Range<usize>> {
        (self.attributes & attributes::BATCH_HEAD != 0)
            .then(|| self.headers_range.end..get_u32(self.bytes, frame::LENGTH) as usize)
    }

    /// The record this frame holds, to encode again (without a batch head: set `batch` to
    /// give it one); `headers` are its [`FrameView::headers`], collected by the caller.
    pub fn record<'h>(&self, headers: &'h [Header<'a>]) -> Record<'h>
    where
        'a: 'h,
    {
        Record {
            key: self.key(),
            value: self.value(),
            headers,
            timestamp_ms: self.timestamp_ms,
            value_is_json: self.value_is_json(),
            batch: None,
        }
    }

    /// The batch head, on the first record of a batch that has one.
    pub fn batch(&self) -> Option<BatchView<'a>> {
        // Checked when the frame was decoded.
        self.batch_range()
            .and_then(|r| decode_batch_head(&self.bytes[r]).ok())
    }

    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            rest: &self.bytes[self.headers_range.clone()],
        }
    }
}

/// Iterator over a frame's `(name, value)` headers. Only built for validated frames.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
}

impl<'a> HeaderIter<'a> {
    pub fn new_validated(headers: &'a [u8]) -> Self {
        HeaderIter { rest: headers }
    }
}

fn split_len_prefixed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = get_u32(buf.get(..4)?, 0) as usize;
    let body = buf.get(4..)?;
    (body.len() >= len).then(|| body.split_at(len))
}

/// One header entry at the start of `buf`: name, value (`None` when null), and the rest.
fn split_header(buf: &[u8]) -> Option<(Header<'_>, &[u8])> {
    let (name, rest) = split_len_prefixed(buf)?;
    if get_u32(rest.get(..4)?, 0) == NULL_HEADER_VALUE {
        return Some(((name, None), &rest[4..]));
    }
    let (value, rest) = split_len_prefixed(rest)?;
    Some(((name, Some(value)), rest))
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let (header, rest) = split_header(self.rest)?;
        self.rest = rest;
        Some(header)
    }
}

/// Decodes and fully validates the frame at the start of `buf` (length, layout, attributes,
/// CRC). `buf` ends where readable bytes end, e.g. at the committed end; the frame's padding
/// must fit in it too. Never panics, whatever the bytes.
pub fn decode_frame(buf: &[u8]) -> Result<FrameView<'_>, FrameError> {
    let view = decode_frame_unchecked_crc(buf)?;
    let len = get_u32(buf, frame::LENGTH) as usize;
    let stored = get_u32(buf, frame::CRC);
    let computed = crc32c::crc32c(&buf[frame::CRC_START..len]);
    if stored != computed {
        return Err(FrameError::BadCrc { stored, computed });
    }
    Ok(view)
}

/// [`decode_frame`] without the CRC check, for callers that only need to walk frames they
/// checked before.
pub fn decode_frame_unchecked_crc(buf: &[u8]) -> Result<FrameView<'_>, FrameError> {
    if buf.len() < frame::FIXED_SIZE {
        return Err(FrameError::Truncated {
            needed: frame::FIXED_SIZE,
            available: buf.len(),
        });
    }
    let length = get_u32(buf, frame::LENGTH);
    let len = length as usize;
    if len < frame::FIXED_SIZE || len > u32::MAX as usize - FRAME_ALIGN {
        return Err(FrameError::BadLength(length));
    }
    let padded_len = align_up(len);
    if padded_len > buf.len() {
        return Err(FrameError::Truncated {
            needed: padded_len,
            available: buf.len(),
        });
    }
    if buf[len..padded_len].iter().any(|&b| b != 0) {
        return Err(FrameError::NonZeroPadding);
    }
    let attrs = get_u32(buf, frame::ATTRIBUTES);
    if attrs & !attributes::KNOWN != 0 {
        return Err(FrameError::UnknownAttributes(attrs));
    }
    let key_len = get_u32(buf, frame::KEY_LEN) as usize;
    let value_len = get_u32(buf, frame::VALUE_LEN) as usize;
    let header_count = get_u32(buf, frame::HEADER_COUNT);
    if attrs & attributes::HAS_KEY == 0 && key_len != 0 {
        return Err(FrameError::BadLayout);
    }
    if attrs & attributes::VALUE_NULL != 0
        && (value_len != 0 || attrs & attributes::VALUE_JSON != 0)
    {
        return Err(FrameError::BadLayout);
    }
    let key_end = frame::FIXED_SIZE + key_len;
    let value_end = key_end
        .checked_add(value_len)
        .ok_or(FrameError::BadLayout)?;
    if value_end > len {
        return Err(FrameError::BadLayout);
    }
    // The headers, and the batch head if there is one, must fill the rest exactly.
    let mut rest = &buf[value_end..len];
    for _ in 0..header_count {
        let (_, r) = split_header(rest).ok_or(FrameError::BadLayout)?;
        rest = r;
    }
    let headers_end = len - rest.len();
    if attrs & attributes::BATCH_HEAD != 0 {
        decode_batch_head(rest).map_err(FrameError::BadBatchHead)?;
    } else if !rest.is_empty() {
        return Err(FrameError::BadLayout);
    }
    Ok(FrameView {
        offset: get_u64(buf, frame::OFFSET),
        timestamp_ms: get_u64(buf, frame::TIMESTAMP_MS) as i64,
        attributes: attrs,
        key_range: (attrs & attributes::HAS_KEY != 0).then_some(frame::FIXED_SIZE..key_end),
        value_range: key_end..value_end,
        headers_range: value_end..headers_end,
        header_count,
        padded_len,
        bytes: &buf[..padded_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(offset: u64, r: &Record<'_>) -> Vec<u8> {
        let mut buf = vec![0xAA; r.padded_len().unwrap()];
        encode_frame(&mut buf, offset, r);
        buf
    }

    #[test]
    fn round_trip_with_key_and_headers() {
        let headers: &[Header<'_>] = &[(b"source", Some(b"web")), (b"", Some(b"")), (b"n", None)];
        let r = Record {
            key: Some(b"user-1"),
            value: Some(b"{\"a\":1}"),
            headers,
            timestamp_ms: 1_764_201_600_000,
            value_is_json: true,
            batch: None,
        };
        let buf = encode(41, &r);
        assert_eq!(buf.len() % FRAME_ALIGN, 0);
        let f = decode_frame(&buf).unwrap();
        assert_eq!(f.offset, 41);
        assert_eq!(f.timestamp_ms, 1_764_201_600_000);
        assert_eq!(f.key(), Some(&b"user-1"[..]));
        assert_eq!(f.value(), Some(&b"{\"a\":1}"[..]));
        assert!(f.value_is_json());
        assert_eq!(f.headers().collect::<Vec<_>>(), headers.to_vec());
        assert_eq!(f.padded_len, buf.len());
    }

    #[test]
    fn null_key_differs_from_empty_key() {
        let null = encode(0, &Record::value(b"v", 0));
        let empty = encode(
            0,
            &Record {
                key: Some(b""),
                ..Record::value(b"v", 0)
            },
        );
        assert_eq!(decode_frame(&null).unwrap().key(), None);
        assert_eq!(decode_frame(&empty).unwrap().key(), Some(&b""[..]));
    }

    #[test]
    fn offset_is_outside_the_crc() {
        let mut buf = encode(1, &Record::value(b"hello", 5));
        set_frame_offset(&mut buf, 99);
        assert_eq!(decode_frame(&buf).unwrap().offset, 99);
        set_frame_timestamp(&mut buf, 77);
        assert_eq!(decode_frame(&buf).unwrap().timestamp_ms, 77);
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let buf = encode(3, &Record::value(b"some value bytes", 123));
        for i in 0..buf.len() {
            // Flipping the offset changes what the frame says, not whether it is intact.
            if (frame::OFFSET..frame::OFFSET + 8).contains(&i) {
                continue;
            }
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            // Padding is outside the CRC but must be zero, so it is checked too.
            assert!(decode_frame(&bad).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn truncations_are_errors_not_panics() {
        let buf = encode(3, &Record::value(b"value", 1));
        for n in 0..buf.len() {
            assert!(decode_frame(&buf[..n]).is_err());
        }
    }

    #[test]
    fn crc_is_crc32c_castagnoli() {
        // The check value FORMAT.md gives to implementers in other languages.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn file_names_round_trip() {
        let name = file_name(42, SEGMENT_EXT);
        assert_eq!(name, "00000000000000000042.log");
        assert_eq!(parse_file_name(&name, SEGMENT_EXT), Some(42));
        assert_eq!(parse_file_name("42.log", SEGMENT_EXT), None);
        assert_eq!(parse_file_name(&name, TIME_INDEX_EXT), None);
        assert_eq!(
            parse_file_name("0000000000000000004x.log", SEGMENT_EXT),
            None
        );
    }
}
