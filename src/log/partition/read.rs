//! Reading a partition: records from an offset, or the offset of a timestamp, from a
//! snapshot of the segment list. Never waits for the writer.

use bytes::Bytes;

use super::PartitionLog;
use crate::log::error::{LogError, Result};
use crate::log::format::{self, decode_frame_unchecked_crc, FrameView, HeaderIter};

/// Records read from a partition: zero-copy views of the mappings.
#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    /// The frames as they lie in the segments, one chunk per segment touched. Each `Bytes`
    /// points into a mapping and keeps it alive.
    pub chunks: Vec<Bytes>,
    pub record_count: usize,
    /// The offset to read next.
    pub next_offset: u64,
    /// The partition's end offset when the read happened.
    pub high_watermark: u64,
}

/// One record of a [`ReadBatch`], its parts sliced (not copied) from the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub attributes: u32,
    pub key: Option<Bytes>,
    /// `None` when the value is null.
    pub value: Option<Bytes>,
    headers: Bytes,
    /// The batch head block, on the first record of a batch that has one.
    batch: Option<Bytes>,
}

impl StoredRecord {
    pub fn value_is_json(&self) -> bool {
        self.attributes & format::attributes::VALUE_JSON != 0
    }

    /// The `(name, value)` headers.
    pub fn headers(&self) -> HeaderIter<'_> {
        HeaderIter::new_validated(&self.headers)
    }

    /// The batch head, on the first record of a batch that has one.
    pub fn batch(&self) -> Option<format::BatchView<'_>> {
        // Checked when the frame was read.
        self.batch
            .as_deref()
            .and_then(|b| format::decode_batch_head(b).ok())
    }
}

impl ReadBatch {
    /// Total bytes of frames.
    pub fn byte_len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// The frames, borrowed. The read already checked each one.
    pub fn frames(&self) -> impl Iterator<Item = FrameView<'_>> {
        self.chunks.iter().flat_map(|chunk| frames_of(chunk))
    }

    /// The records as owned, zero-copy `Bytes` slices.
    pub fn records(&self) -> impl Iterator<Item = StoredRecord> + '_ {
        self.chunks.iter().flat_map(|chunk| {
            frames_of(chunk).map(move |f| {
                let base = f.bytes.as_ptr() as usize - chunk.as_ptr() as usize;
                let slice = |r: std::ops::Range<usize>| chunk.slice(base + r.start..base + r.end);
                StoredRecord {
                    offset: f.offset,
                    timestamp_ms: f.timestamp_ms,
                    attributes: f.attributes,
                    key: f.key_range.clone().map(slice),
                    value: f.value().is_some().then(|| slice(f.value_range.clone())),
                    headers: slice(f.headers_range.clone()),
                    batch: f.batch_range().map(slice),
                }
            })
        })
    }
}

/// Walks the frames of a chunk that was validated when it was read.
fn frames_of(chunk: &[u8]) -> impl Iterator<Item = FrameView<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let f = decode_frame_unchecked_crc(chunk.get(at..)?).ok()?;
        at += f.padded_len;
        Some(f)
    })
}

impl PartitionLog {
    /// Reads from `offset`: at most `max_records` records and `max_bytes` bytes of frames,
    /// but always at least one record when one exists. Never waits for the writer.
    pub fn read(&self, offset: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch> {
        // The end first, then the segments: every record below the loaded end lies in a
        // segment that was in the list before the end was stored.
        let end = self.end_offset();
        let segs = self.segments.load_full();
        let start = segs.first().map_or(end, |s| s.base_offset());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                earliest: start,
                latest: end,
            });
        }
        let mut batch = ReadBatch {
            next_offset: offset,
            high_watermark: end,
            ..ReadBatch::default()
        };
        if offset == end || max_records == 0 {
            return Ok(batch);
        }
        let mut i = segs.partition_point(|s| s.base_offset() <= offset) - 1;
        let mut bytes = 0;
        while i < segs.len() && batch.record_count < max_records {
            let seg = &segs[i];
            let budget = if batch.record_count == 0 {
                max_bytes
            } else {
                max_bytes.saturating_sub(bytes)
            };
            let read = seg.read_from(
                batch.next_offset,
                max_records - batch.record_count,
                budget,
                batch.record_count == 0,
            );
            let read = match read {
                // A closed segment deleted by retention since we loaded the list.
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && batch.record_count == 0 =>
                {
                    return Err(LogError::OffsetOutOfRange {
                        offset,
                        earliest: self.start_offset(),
                        latest: self.end_offset(),
                    });
                }
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    break;
                }
                other => other?,
            };
            let Some(read) = read else {
                break;
            };
            if read.count == 0 {
                break;
            }
            bytes += read.frames.len();
            batch.chunks.push(read.frames);
            batch.record_count += read.count;
            batch.next_offset = read.next_offset;
            let at_end = read.at_end;
            // Go on to the next segment when this one is fully read and a newer one exists:
            // the writer moved on before the newer segment entered the list we loaded, so the
            // committed end we loaded is this segment's last.
            if !at_end || i + 1 >= segs.len() {
                break;
            }
            i += 1;
        }
        batch.high_watermark = end.max(batch.next_offset);
        Ok(batch)
    }
    /// Bytes of frames from `offset` to the end (a follower's lag, in bytes). Blocks (it
    /// may map the segment holding `offset` and scan from its nearest index checkpoint).
    pub fn bytes_from(&self, offset: u64) -> Result<u64> {
        let segs = self.segments.load_full();
        let mut total = 0u64;
        for seg in segs.iter().rev() {
            if seg.base_offset() >= offset {
                total += seg.size_bytes();
                continue;
            }
            let m = seg.map_or_reopen()?;
            let committed = m.committed_end();
            if let Some(pos) = m.locate(offset, committed)? {
                total += (committed - pos) as u64;
            }
            break;
        }
        Ok(total)
    }

    /// Calls `f` with the first offset and the head of every batch that has one and was
    /// appended at or after `since_ms` (its `appended_ms`), oldest first: for what is rebuilt
    /// from the log when a partition opens (idempotency keys, producer sequences). A segment
    /// whose successor was created before `since_ms` is skipped unread: everything in it was
    /// appended before that. Reads every frame of the others (their structure, not CRCs,
    /// which recovery checked).
    pub fn scan_batch_heads(
        &self,
        since_ms: i64,
        mut f: impl FnMut(u64, &format::BatchView<'_>),
    ) -> Result<()> {
        let segs = self.segments.load_full();
        for (i, seg) in segs.iter().enumerate() {
            if segs
                .get(i + 1)
                .is_some_and(|next| next.header().created_ms < since_ms)
            {
                continue;
            }
            let m = seg.map_or_reopen()?;
            for item in m.walk(crate::log::DATA_START, m.committed_end()) {
                let (_, frame) = item?;
                if let Some(head) = frame.batch() {
                    if head.appended_ms >= since_ms {
                        f(frame.offset, &head);
                    }
                }
            }
        }
        Ok(())
    }

    /// The offset of the first record with a timestamp at or after `timestamp_ms`, or `None`
    /// when there is none yet.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>> {
        let end = self.end_offset();
        for seg in self.segments.load().iter() {
            if let Some((offset, _)) = seg.find_timestamp(timestamp_ms)? {
                return Ok((offset < end).then_some(offset));
            }
        }
        Ok(None)
    }
}
