//! A real etcd for the cluster tests and benchmark: Debian's (installed by
//! `tests/tools/install-etcd.sh` when missing), started on free loopback ports with a data
//! directory of its own, and killed by its pid. Standalone (the benchmark includes it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A port the OS says is free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Installs etcd (once per test binary) and returns its path.
pub fn etcd_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/install-etcd.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .expect("run tests/tools/install-etcd.sh");
        assert!(status.success(), "tests/tools/install-etcd.sh failed");
        let out = Command::new("sh")
            .args(["-c", "command -v etcd"])
            .output()
            .expect("find etcd");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// One etcd member on loopback, stopped (SIGKILL, by pid) when dropped.
pub struct Etcd {
    child: Child,
    pub url: String,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data = dir.path().join("data").display().to_string();
        let args: Vec<String> = [
            "--name",
            "test",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("test={peer_url}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = Self::spawn(&args, dir.path());
        let etcd = Etcd {
            child,
            url,
            args,
            dir,
        };
        etcd.wait_healthy();
        etcd
    }

    fn spawn(args: &[String], dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))
            .unwrap();
        Command::new(etcd_binary())
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd")
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !health(&self.url) {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Stops etcd (SIGKILL, to its pid) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the member again, on the same ports and data (after [`Etcd::kill`]).
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.args, self.dir.path());
        self.wait_healthy();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether etcd at `url` answers `GET /health` with 200 (a plain HTTP/1.1 request).
fn health(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(addr) = url.strip_prefix("http://") else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && &buf[9..12] == b"200"
}
