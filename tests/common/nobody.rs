//! Running a child process as another user, `nobody`: tests run as root use it to show
//! that a reader needs no write permission. That user must reach the binary and the data
//! directory, which it cannot through a private checkout (the binary lives under `target/`)
//! or a private `TMPDIR`. So both go under fresh directories in a place every user can
//! search, removed afterwards.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The uid and primary gid of user `nobody`, from the user database (the group is often
/// `nogroup` or `nobody`, and not always 65534).
pub fn ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        // SAFETY: `passwd` is a plain C struct; all-zero bytes (null pointers) are a valid value.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the strings `entry` points to live in
        // `buf`, and only the integer fields are read afterwards.
        let rc = unsafe {
            libc::getpwnam_r(
                c"nobody".as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        assert!(
            rc == 0 && !found.is_null(),
            "user nobody is not in the user database (getpwnam_r returned {rc}); \
             the tests that run a reader as another user need it"
        );
        (entry.pw_uid, entry.pw_gid)
    })
}

/// Why `dir` is out of reach for other users: the first of `dir` and its ancestors that
/// others may not search (no `x` bit for others), or `None` if every one may be crossed.
fn unreachable_through(dir: &Path) -> Option<String> {
    let dir = match dir.canonicalize() {
        Ok(d) => d,
        Err(e) => return Some(format!("{}: {e}", dir.display())),
    };
    dir.ancestors().find_map(|a| match std::fs::metadata(a) {
        Ok(m) if m.permissions().mode() & 0o001 != 0 => None,
        Ok(m) => Some(format!(
            "{} (mode {:o}) is not searchable by others",
            a.display(),
            m.permissions().mode() & 0o7777
        )),
        Err(e) => Some(format!("{}: {e}", a.display())),
    })
}

/// A directory every user can reach: `std::env::temp_dir()` if it and its ancestors are
/// searchable by others, else `/tmp`.
fn reachable_base() -> PathBuf {
    let mut refusals = Vec::new();
    for candidate in [std::env::temp_dir(), PathBuf::from("/tmp")] {
        match unreachable_through(&candidate) {
            None => return candidate.canonicalize().unwrap(),
            Some(why) => refusals.push(why),
        }
    }
    panic!(
        "no directory that user nobody can reach for this test: {}. Set TMPDIR to a \
         directory whose every ancestor others may search (chmod o+x).",
        refusals.join("; ")
    )
}

/// A fresh directory that every user may enter (mode 0711: they can open what they know
/// the name of, not list it), in a place they can reach; removed when dropped.
pub fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mapq-shared-")
        .tempdir_in(reachable_base())
        .expect("create a directory other users can reach");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

static BINARY_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_binary_dir() {
    if let Some(dir) = BINARY_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The `mapq` binary at a path user nobody can execute: a copy made once per test process
/// in a [`shared_dir`], removed when the process exits.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let dir = BINARY_DIR.get_or_init(|| shared_dir().keep());
        // SAFETY: registers a plain function with no captured state, run once at exit.
        let rc = unsafe { libc::atexit(remove_binary_dir) };
        assert_eq!(rc, 0, "atexit");
        let copy = dir.join("mapq");
        std::fs::copy(env!("CARGO_BIN_EXE_mapq"), &copy).expect("copy the mapq binary");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    })
}

/// A `mapq` command that runs as user nobody, with nobody's group and no supplementary
/// groups, from the copy of the binary it can reach.
pub fn mapq() -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = ids();
    let mut cmd = std::process::Command::new(binary());
    cmd.uid(uid).gid(gid).current_dir("/");
    cmd
}
