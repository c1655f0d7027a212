//! The system calls mapq makes outside its mapped files (those live in `log::mmap`): group
//! lookup, umask, the data directory's lock, the open-file limit, signal handlers. Every
//! `unsafe` block here states its contract; nothing else in the crate but `log::mmap`
//! calls libc.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The id of the group called `name`, if there is one.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a group name"))?;
    // SAFETY: a zeroed `group` is a valid out-value; getgrnam_r fills it, pointing into
    // `buf`, which outlives every read below; `result` is set to the struct or null.
    unsafe {
        let mut group: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok((!result.is_null()).then_some(group.gr_gid))
    }
}

/// Sets this process's file-creation mask.
pub fn set_umask(mask: u32) {
    // SAFETY: umask only sets a process attribute; it cannot fail.
    unsafe {
        libc::umask(mask as libc::mode_t);
    }
}

/// Takes an exclusive `flock` on `file` without waiting; false when another holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Raises the soft limit of open files to the hard one; returns the limit in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we own, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// The signal that asked to stop (0: none yet), set by [`stop_on_signals`]' handler.
pub static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Set by [`stop_on_signals`]' handler when one of its signals arrives.
pub static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// The handler of [`stop_on_signals`]: async-signal-safe, it only stores to two atomics.
extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::Relaxed);
    STOP_REQUESTED.store(true, Ordering::Relaxed);
}

/// On each of `signals`, records it in [`STOP_SIGNAL`] and sets [`STOP_REQUESTED`] instead
/// of the default action, without `SA_RESTART` (a blocking call in progress returns with
/// `EINTR`, so a waiting loop looks at the flag).
pub fn stop_on_signals(signals: &[libc::c_int]) {
    for &signal in signals {
        // SAFETY: a zeroed sigaction with an empty mask is valid; the handler is ours and
        // async-signal-safe (two atomic stores); sigaction reads the struct we own.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_locks() {
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("no-such-group-mapq").unwrap(), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = File::create(&path).unwrap();
        let second = File::open(&path).unwrap();
        assert!(try_lock_exclusive(&first).unwrap());
        assert!(!try_lock_exclusive(&second).unwrap());
        drop(first);
        assert!(try_lock_exclusive(&second).unwrap());
    }
}
