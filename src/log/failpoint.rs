//! Fault injection for tests: with the `failpoints` feature, the engine's msync, fallocate,
//! rename and directory-sync (`dirsync`) calls fail on demand, so that their error paths are
//! tested end to end.
//!
//! A failpoint `name` fires while a file called `name` exists in the directory named by the
//! `MAPQ_FAILPOINTS_DIR` environment variable (read once): a test creates the file to make
//! the next calls fail, and removes it to let them succeed again. The injected error is
//! `EIO` (`fallocate`: `ENOSPC`). Without the feature, [`check`] compiles to nothing.
//!
//! The crate enables the feature for its own tests (through its dev-dependency on itself);
//! `cargo build --release` leaves it out.

use std::io;

/// Fails as failpoint `name` says: the error the real call would have returned.
#[cfg(feature = "failpoints")]
pub fn check(name: &str) -> io::Result<()> {
    use std::sync::OnceLock;
    static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("MAPQ_FAILPOINTS_DIR").map(Into::into))
    else {
        return Ok(());
    };
    if !dir.join(name).exists() {
        return Ok(());
    }
    let errno = match name {
        "fallocate" => libc::ENOSPC,
        _ => libc::EIO,
    };
    tracing::warn!(failpoint = name, "failpoint fired");
    Err(io::Error::from_raw_os_error(errno))
}

/// Fails as failpoint `name` says (never: built without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn check(_name: &str) -> io::Result<()> {
    Ok(())
}
