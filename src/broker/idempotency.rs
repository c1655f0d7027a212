//! Idempotent produce: the keys of recent produce requests, each with where its records
//! went, so that a retry is answered from the log instead of appended again (API.md,
//! "Idempotent produce").
//!
//! The key is stored with its records: in the batch head of each partition's part of the
//! request (FORMAT.md section 2.3), in the same publication. Records and key are thus kept
//! or lost together, and this index is rebuilt from the log when a topic opens
//! ([`Idempotency::remember`], from `PartitionLog::scan_batch_heads`): there is no other
//! store that could disagree with the log. A request whose parts a crash cut in the middle
//! leaves the parts it wrote; its retry appends only the records they lack.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::BrokerError;

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// Checks an `Idempotency-Key`: 1 to 128 visible ASCII characters.
pub fn check_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_BYTES} characters, not {}",
            key.len()
        ));
    }
    if let Some(b) = key.iter().find(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "Idempotency-Key must be visible ASCII characters; it holds byte {b:#04x}"
        ));
    }
    Ok(())
}

/// The digest that tells a retry of a request from another request under the same key: of
/// everything that decides its records (the body's type, the query's key and partition, the
/// body), not of how it is acknowledged. XXH3-128: a collision needs the same key and a
/// crafted body, and a cryptographic hash cost a fifth of produce throughput (SHA-256 of
/// every body; `cargo bench --bench idempotency`).
pub fn request_digest(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.digest128().to_le_bytes()
}

/// A batch head that stores a request's key with one partition's part of it.
pub fn request_head<'a>(
    key: &'a [u8],
    digest: [u8; 16],
    records: u32,
    count: u32,
    positions: Option<&'a [u32]>,
    now: i64,
) -> crate::log::format::BatchHead<'a> {
    use crate::log::format;
    format::BatchHead {
        record_count: count,
        appended_ms: now,
        request: Some(format::RequestTag {
            key,
            digest,
            records,
            positions,
        }),
        ..format::BatchHead::default()
    }
}

/// One partition's part of a request: its `count` records lie at `first_offset ..` in
/// order, record `i` being record `positions[i]` of the request (with `None`, record `i`
/// of the request: the whole request in one partition, the common case, kept small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub partition: u32,
    pub first_offset: u64,
    pub count: u32,
    pub positions: Option<Box<[u32]>>,
}

impl Piece {
    /// The request position of the piece's record `i`.
    pub fn position(&self, i: u32) -> u32 {
        self.positions
            .as_ref()
            .and_then(|p| p.get(i as usize).copied())
            .unwrap_or(i)
    }

    /// `(request position, offset)` of each of its records.
    pub fn records(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        (0..self.count).map(|i| (self.position(i), self.first_offset + u64::from(i)))
    }
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 16],
    /// Records in the whole request.
    records: u32,
    pieces: Vec<Piece>,
    /// A request with this key is being appended now.
    in_flight: bool,
    /// When its last part was appended (ms since the Unix epoch).
    appended_ms: i64,
}

impl Entry {
    /// Whether every record of the request is stored, position by position.
    fn complete(&self) -> bool {
        let mut seen = vec![false; self.records as usize];
        for p in &self.pieces {
            for (pos, _) in p.records() {
                if let Some(s) = seen.get_mut(pos as usize) {
                    *s = true;
                }
            }
        }
        seen.iter().all(|&s| s)
    }
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Claim<'a> {
    /// Every record of the request is stored: their `(partition, offset)` in request order,
    /// and the parts (to wait until they are durable).
    Replay {
        offsets: Vec<(u32, u64)>,
        pieces: Vec<Piece>,
    },
    /// Append the request's records that are not stored yet (all of them, for a new key);
    /// the key is held as in flight until the append ends.
    Append(Pending<'a>),
}

/// A key held in flight while its request is appended: [`Pending::complete`] records where
/// the new records went; dropped without it (the append failed), the key is released as it
/// was.
#[derive(Debug)]
pub struct Pending<'a> {
    index: &'a Idempotency,
    key: Vec<u8>,
    stored: Vec<Piece>,
    /// The request positions `stored` covers.
    stored_positions: std::collections::BTreeSet<u32>,
    done: bool,
}

impl Pending<'_> {
    /// The parts already stored (after a crash cut the request in the middle).
    pub fn stored(&self) -> &[Piece] {
        &self.stored
    }

    /// Whether the request position `i` is stored already.
    pub fn is_stored(&self, i: u32) -> bool {
        self.stored_positions.contains(&i)
    }

    /// Records where the rest of the request went: the key is remembered, complete.
    pub fn complete(mut self, new: Vec<Piece>, appended_ms: i64) {
        self.done = true;
        let mut entries = self.index.lock();
        if let Some(e) = entries.get_mut(self.key.as_slice()) {
            e.pieces.extend(new);
            e.in_flight = false;
            e.appended_ms = appended_ms;
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut entries = self.index.lock();
        if self.stored.is_empty() {
            entries.remove(self.key.as_slice());
        } else if let Some(e) = entries.get_mut(self.key.as_slice()) {
            e.in_flight = false;
        }
    }
}

/// The keys, by key. Hashed with XXH3 under a seed drawn at start-up: a SipHash of every
/// key was a sixth of the start-up rebuild, and the seed keeps clients from choosing keys
/// that collide.
type Keys = HashMap<Box<[u8]>, Entry, KeyHasher>;

fn seeded_hasher() -> KeyHasher {
    let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
    seed.write_u64(0x6d61_7071);
    KeyHasher(seed.finish())
}

/// Builds [`KeyHash`]es under one seed.
#[derive(Debug, Clone, Copy)]
struct KeyHasher(u64);

impl BuildHasher for KeyHasher {
    type Hasher = KeyHash;

    fn build_hasher(&self) -> KeyHash {
        KeyHash(self.0)
    }
}

/// XXH3 of each piece a key hashes as, chained through the seed: a word of state (the
/// streaming XXH3 hasher carries a buffer that each hash would copy).
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.0);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The remembered keys of one topic.
#[derive(Debug)]
pub struct Idempotency {
    window_ms: u64,
    entries: Mutex<Keys>,
    last_purge_ms: AtomicI64,
    /// Retries answered from the log.
    pub replays: AtomicU64,
    /// Requests refused: the key named another request.
    pub mismatches: AtomicU64,
    /// Requests refused: the key's first request was still being appended.
    pub in_flight_conflicts: AtomicU64,
    /// How long rebuilding the keys from the log took when the topic opened.
    pub rebuild_ms: AtomicU64,
}

impl Idempotency {
    /// Keys are remembered for `window_ms` after their records were appended.
    pub fn new(window_ms: u64) -> Self {
        Idempotency {
            window_ms,
            entries: Mutex::new(Keys::with_hasher(seeded_hasher())),
            last_purge_ms: AtomicI64::new(0),
            replays: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            in_flight_conflicts: AtomicU64::new(0),
            rebuild_ms: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keys remembered now (within the window, or being appended).
    /// (Counting walks the keys under the lock the produce path takes: it runs at most once
    /// a second, with the purge of expired keys; in between the count is the table's size.)
    pub fn len(&self) -> usize {
        let now = crate::log::now_ms();
        let mut entries = self.lock();
        self.purge_if_due(&mut entries, now);
        entries.len()
    }

    /// Forgets expired keys, at most once a second.
    fn purge_if_due(&self, entries: &mut Keys, now_ms: i64) {
        if now_ms.saturating_sub(self.last_purge_ms.load(Ordering::Relaxed)) > 1000 {
            self.last_purge_ms.store(now_ms, Ordering::Relaxed);
            entries.retain(|_, e| !self.expired(e, now_ms));
        }
    }

    /// Keys remembered at `now_ms` (for the tests: it walks every key).
    #[cfg(test)]
    fn len_at(&self, now_ms: i64) -> usize {
        self.lock()
            .values()
            .filter(|e| !self.expired(e, now_ms))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, e: &Entry, now_ms: i64) -> bool {
        !e.in_flight && now_ms.saturating_sub(e.appended_ms) > window(self.window_ms)
    }

    /// Decides what to do with a request of `records` records carrying `key`.
    pub fn claim(
        &self,
        key: &[u8],
        digest: [u8; 16],
        records: u32,
        now_ms: i64,
    ) -> Result<Claim<'_>, BrokerError> {
        let mut entries = self.lock();
        self.purge_if_due(&mut entries, now_ms);
        if let Some(e) = entries.get(key) {
            if self.expired(e, now_ms) {
                entries.remove(key);
            }
        }
        let pending = |stored: Vec<Piece>| {
            Claim::Append(Pending {
                index: self,
                key: key.to_vec(),
                stored_positions: stored
                    .iter()
                    .flat_map(|p| p.records().map(|(pos, _)| pos))
                    .collect(),
                stored,
                done: false,
            })
        };
        let Some(e) = entries.get_mut(key) else {
            entries.insert(
                key.into(),
                Entry {
                    digest,
                    records,
                    pieces: Vec::new(),
                    in_flight: true,
                    appended_ms: now_ms,
                },
            );
            return Ok(pending(Vec::new()));
        };
        if e.in_flight {
            self.in_flight_conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(BrokerError::IdempotencyKeyInFlight);
        }
        if e.digest != digest || e.records != records {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            return Err(BrokerError::IdempotencyKeyMismatch);
        }
        if e.complete() {
            self.replays.fetch_add(1, Ordering::Relaxed);
            return Ok(Claim::Replay {
                offsets: offsets_of(records, &e.pieces),
                pieces: e.pieces.clone(),
            });
        }
        e.in_flight = true;
        Ok(pending(e.pieces.clone()))
    }

    /// Makes room for `keys` more keys (before a rebuild).
    pub fn reserve(&self, keys: usize) {
        self.lock().reserve(keys);
    }

    /// How far back the log must be read to rebuild the keys: the parts of one request were
    /// appended within a window of each other (a key is forgotten a window after its last
    /// part), and a key lives a window after its newest part.
    pub fn rebuild_since(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(window(self.window_ms).saturating_mul(2))
    }

    /// Ends a rebuild: keys whose newest part was appended before the window are forgotten,
    /// whole (a key's older parts, from before a crash, count by its newest).
    pub fn finish_rebuild(&self, now_ms: i64) {
        self.lock().retain(|_, e| !self.expired(e, now_ms));
    }

    /// Remembers a part of a request found in the log (when the topic opens). Parts whose
    /// digest or request size disagree with the key's first part are left out (they cannot
    /// come from mapq). Then [`Idempotency::finish_rebuild`] forgets the keys whose newest
    /// part is older than the window.
    pub fn remember(
        &self,
        key: &[u8],
        digest: [u8; 16],
        records: u32,
        piece: Piece,
        appended_ms: i64,
    ) {
        let mut entries = self.lock();
        match entries.get_mut(key) {
            Some(e) if e.digest == digest && e.records == records => {
                // Learned again (a cluster node taking up a leadership): once.
                let known = e.pieces.iter().any(|p| {
                    p.partition == piece.partition && p.first_offset == piece.first_offset
                });
                if !known {
                    e.pieces.push(piece);
                }
                e.appended_ms = e.appended_ms.max(appended_ms);
            }
            Some(_) => {}
            None => {
                // Most keys have one part: a list of exactly one (a pushed first part would
                // take room for four, which a million keys at start-up feel).
                entries.insert(
                    key.into(),
                    Entry {
                        digest,
                        records,
                        pieces: vec![piece],
                        in_flight: false,
                        appended_ms,
                    },
                );
            }
        }
    }
}

impl Idempotency {
    /// Forgets the parts stored in `partition` at or after `offset` (a cluster follower cut
    /// its log there), and the keys left with none.
    pub fn forget_from(&self, partition: u32, offset: u64) {
        self.lock().retain(|_, e| {
            e.pieces
                .retain(|p| p.partition != partition || p.first_offset < offset);
            !e.pieces.is_empty() || e.in_flight
        });
    }
}

/// Where each of a request's `records` records lies, `(partition, offset)` in request order,
/// from the parts it was stored in.
pub fn offsets_of(records: u32, pieces: &[Piece]) -> Vec<(u32, u64)> {
    let mut offsets = vec![(0, 0); records as usize];
    for p in pieces {
        for (pos, offset) in p.records() {
            if let Some(slot) = offsets.get_mut(pos as usize) {
                *slot = (p.partition, offset);
            }
        }
    }
    offsets
}

/// A window in milliseconds as a signed span (settings are checked to fit).
fn window(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(partition: u32, first_offset: u64, positions: &[u32]) -> Piece {
        Piece {
            partition,
            first_offset,
            count: positions.len() as u32,
            positions: Some(positions.into()),
        }
    }

    #[test]
    fn a_key_is_appended_once_then_replayed_in_request_order() {
        let idx = Idempotency::new(60_000);
        let d = request_digest(&[b"body"]);
        let Claim::Append(p) = idx.claim(b"k", d, 3, 1_000).unwrap() else {
            panic!("a new key appends");
        };
        assert!(matches!(
            idx.claim(b"k", d, 3, 1_001),
            Err(BrokerError::IdempotencyKeyInFlight)
        ));
        p.complete(vec![piece(1, 40, &[0, 2]), piece(0, 7, &[1])], 1_002);
        match idx.claim(b"k", d, 3, 2_000).unwrap() {
            Claim::Replay { offsets, .. } => assert_eq!(offsets, [(1, 40), (0, 7), (1, 41)]),
            other => panic!("{other:?}"),
        }
        let other = request_digest(&[b"other body"]);
        assert!(matches!(
            idx.claim(b"k", other, 3, 2_000),
            Err(BrokerError::IdempotencyKeyMismatch)
        ));
        // Forgotten after the window.
        assert!(matches!(
            idx.claim(b"k", other, 3, 70_000).unwrap(),
            Claim::Append(_)
        ));
    }

    #[test]
    fn a_failed_append_releases_the_key_and_a_cut_request_resumes() {
        let idx = Idempotency::new(60_000);
        let d = request_digest(&[b"x"]);
        match idx.claim(b"k", d, 2, 0).unwrap() {
            Claim::Append(p) => drop(p),
            other => panic!("{other:?}"),
        }
        assert!(idx.is_empty(), "released");
        // Found in the log after a crash: one of the two parts.
        idx.remember(b"k", d, 2, piece(0, 5, &[1]), 10);
        idx.finish_rebuild(20);
        let Claim::Append(p) = idx.claim(b"k", d, 2, 30).unwrap() else {
            panic!("the rest is appended");
        };
        assert!(p.is_stored(1) && !p.is_stored(0));
        p.complete(vec![piece(1, 0, &[0])], 40);
        let claim = idx.claim(b"k", d, 2, 50).unwrap();
        match claim {
            Claim::Replay { offsets, .. } => assert_eq!(offsets, [(1, 0), (0, 5)]),
            other => panic!("{other:?}"),
        };
    }

    /// A request cut by a crash and finished after the restart has parts a window apart at
    /// most: a rebuild keeps or forgets the key whole, by its newest part.
    #[test]
    fn a_rebuild_keeps_a_key_by_its_newest_part() {
        let idx = Idempotency::new(1_000);
        let d = request_digest(&[b"x"]);
        assert_eq!(idx.rebuild_since(10_000), 8_000);
        idx.remember(b"split", d, 2, piece(0, 0, &[0]), 8_500);
        idx.remember(b"split", d, 2, piece(1, 0, &[1]), 9_400);
        idx.remember(b"old", d, 1, piece(0, 1, &[0]), 8_900);
        // A part with another digest cannot be the same request's.
        idx.remember(
            b"split",
            request_digest(&[b"y"]),
            2,
            piece(2, 0, &[0]),
            9_000,
        );
        idx.finish_rebuild(10_000);
        assert_eq!(
            idx.len_at(10_000),
            1,
            "only the key whose newest part is in the window"
        );
        let claim = idx.claim(b"split", d, 2, 10_000).unwrap();
        match claim {
            Claim::Replay { offsets, .. } => assert_eq!(offsets, [(0, 0), (1, 0)]),
            other => panic!("{other:?}"),
        };
    }

    /// A key stored whole needs no position list: its records are the request's in order.
    #[test]
    fn a_contiguous_piece_replays_without_positions() {
        let idx = Idempotency::new(1_000);
        let d = request_digest(&[b"z"]);
        let Claim::Append(p) = idx.claim(b"k", d, 3, 0).unwrap() else {
            panic!("a new key appends");
        };
        p.complete(
            vec![Piece {
                partition: 4,
                first_offset: 10,
                count: 3,
                positions: None,
            }],
            0,
        );
        let claim = idx.claim(b"k", d, 3, 1).unwrap();
        match claim {
            Claim::Replay { offsets, .. } => assert_eq!(offsets, [(4, 10), (4, 11), (4, 12)]),
            other => panic!("{other:?}"),
        };
    }

    #[test]
    fn keys_are_visible_ascii_of_at_most_128_bytes() {
        assert!(check_key(b"order-7781").is_ok());
        assert!(check_key(&[b'a'; 128]).is_ok());
        for bad in [
            &b""[..],
            &[b'a'; 129][..],
            b"has space",
            b"tab\t",
            "é".as_bytes(),
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
