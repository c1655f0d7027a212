//! Choosing a record's partition: an explicit partition wins; else a keyed record goes to
//! `murmur2(key) & 0x7fffffff mod partitions`, the hash of Kafka's default partitioner, so
//! a key lands where a Kafka client would put it; else round-robin.

use std::sync::atomic::{AtomicU64, Ordering};

/// Kafka's 32-bit murmur2 (seed `0x9747b28c`), over the key bytes.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a record with `key` in a topic of `partitions` partitions.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions
}

/// Round-robin over the partitions, for records with neither a partition nor a key.
#[derive(Debug, Default)]
pub struct RoundRobin(AtomicU64);

impl RoundRobin {
    pub fn next(&self, partitions: u32) -> u32 {
        // Relaxed: only the spread matters, not the order between producers.
        (self.0.fetch_add(1, Ordering::Relaxed) % u64::from(partitions)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafkas_murmur2() {
        // Test vectors of Kafka's own UtilsTest.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn partitions_match_kafkas_default_partitioner() {
        // (key, partitions, expected partition). Computed once, independently of this crate,
        // with a Python transcription of Kafka's `Utils.murmur2` (seed 0x9747b28c, 32-bit
        // wrap-around by masking, checked against the UtilsTest vectors above) and of the
        // default partitioner's `toPositive(murmur2(key)) % partitions`, i.e.
        // `(h & 0x7fffffff) % n`. Several keys hash negative, and for `foobar`/3, `21`/7,
        // `a-little-bit-long-string`/12 and `order-12345`/100 the mask gives a different
        // partition than `h as u32 % n` or `|h| % n` would.
        let vectors: [(&[u8], u32, u32); 10] = [
            (b"user-1", 2, 0),
            (b"foobar", 3, 0),
            (b"21", 7, 3),
            (b"abc", 10, 7),
            (b"", 5, 1),
            (b"user-42", 4, 0),
            (b"a-little-bit-long-string", 12, 8),
            (b"\xff\x0f", 6, 2),
            (b"k 1", 1, 0),
            (b"order-12345", 100, 29),
        ];
        for (key, partitions, expected) in vectors {
            assert_eq!(
                partition_for_key(key, partitions),
                expected,
                "key {:?} over {partitions} partitions",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn keys_are_stable_and_spread() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let key = format!("user-{i}");
            let p = partition_for_key(key.as_bytes(), 4);
            assert_eq!(p, partition_for_key(key.as_bytes(), 4));
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
