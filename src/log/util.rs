//! Small helpers of the engine that other layers use too.

use std::fs;
use std::path::Path;

use super::error::{LogError, Result};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// fsyncs a directory so that entries created or renamed in it survive power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    super::failpoint::check("dirsync")
        .and_then(|()| fs::File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}
