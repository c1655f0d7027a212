//! A disk quota shared by every partition of a data directory (`max_disk_bytes`).
//!
//! Blocks are charged when a segment or index file is created and when a chunk is allocated
//! ahead of a writer, and given back when blocks are released (sealing, retention, topic
//! deletion). A charge that would exceed the limit fails like a full disk: the append gets
//! `NoSpace` (HTTP 507) with nothing written, and succeeds again once retention has freed
//! enough.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct DiskQuota {
    limit_bytes: u64,
    used_bytes: AtomicU64,
}

impl DiskQuota {
    pub fn new(limit_bytes: u64) -> Self {
        DiskQuota {
            limit_bytes,
            used_bytes: AtomicU64::new(0),
        }
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Charges `bytes` if they fit under the limit.
    pub fn try_take(&self, bytes: u64) -> bool {
        // Relaxed: the counter guards no other memory, only its own value matters.
        self.used_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit_bytes)
            })
            .is_ok()
    }

    /// Charges `bytes` whatever the limit (blocks that already exist on disk).
    pub fn take(&self, bytes: u64) {
        self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn give_back(&self, bytes: u64) {
        let _ = self
            .used_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_the_limit_and_resume_after_release() {
        let q = DiskQuota::new(100);
        assert!(q.try_take(60));
        assert!(!q.try_take(41));
        assert!(q.try_take(40));
        q.give_back(50);
        assert_eq!(q.used_bytes(), 50);
        assert!(q.try_take(50));
        q.take(10);
        assert_eq!(q.used_bytes(), 110);
    }
}
