//! A real `mapq serve` process on a port chosen by the OS, for end-to-end tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `mapq serve` listening for HTTP on `listen` and for Kafka on `kafka` (port 0: a free
/// one), its data directory still to give (`--data-dir DIR`).
pub fn serve_command(listen: &str, kafka: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mapq"));
    cmd.args(["serve", "--listen", listen, "--kafka-listen", kafka]);
    cmd
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    /// Lines the server printed on stderr (its log), collected in the background.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The Kafka listener's address, once the server printed it.
    pub kafka: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Server {
    /// Starts a server on `data_dir` with extra `MAPQ_*` settings, and waits until it is ready.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::spawn(data_dir, env, None, "127.0.0.1:0")
    }

    /// Starts a server on a given address (a client started before it must find it there).
    pub fn start_at(data_dir: &Path, listen: &str) -> Server {
        Self::spawn(data_dir, &[], None, listen)
    }

    /// Starts a server on a given address with extra `MAPQ_*` settings.
    pub fn start_env_at(data_dir: &Path, env: &[(&str, &str)], listen: &str) -> Server {
        Self::spawn(data_dir, env, None, listen)
    }

    /// Starts a server with a configuration file.
    pub fn start_with_config(data_dir: &Path, config: &Path) -> Server {
        Self::spawn(data_dir, &[], Some(config), "127.0.0.1:0")
    }

    fn spawn(data_dir: &Path, env: &[(&str, &str)], config: Option<&Path>, listen: &str) -> Server {
        // Every server listens for Kafka clients on a free port, unless the test names one.
        let kafka = env
            .iter()
            .find(|(k, _)| *k == "MAPQ_KAFKA_LISTEN")
            .map_or("127.0.0.1:0", |(_, v)| v);
        let mut cmd = serve_command(listen, kafka);
        cmd.arg("--data-dir").arg(data_dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("MAPQ_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start mapq serve");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let kafka = std::sync::Arc::new(std::sync::Mutex::new(None));
        let kafka_slot = kafka.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("mapq listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
                if let Some(addr) = line.strip_prefix("mapq kafka listening on ") {
                    *kafka_slot.lock().unwrap() = Some(addr.to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        let server = Server {
            child,
            base,
            data_dir: data_dir.to_owned(),
            log,
            kafka,
        };
        // An https server has no raw-HTTP readiness probe: its tests wait with their client.
        if server.base.starts_with("http://") {
            server.wait_ready();
        }
        server
    }

    /// The Kafka listener's `host:port` (it is printed right after the HTTP address).
    pub fn kafka_addr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(addr) = self.kafka.lock().unwrap().clone() {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "the server printed no Kafka address: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while raw_get_status(&self.base, "/readyz") != Some(200) {
            assert!(
                Instant::now() < deadline,
                "server not ready in time: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit code.
    pub fn terminate(mut self) -> i32 {
        signal(&self.child, libc::SIGTERM);
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(30));
        std::mem::forget(self);
        status
    }

    /// SIGKILL, no goodbye. The server must still be running: one that already died (a
    /// crash) is not "killed", it fails the test with its log; and it must die of the SIGKILL.
    pub fn kill(mut self) {
        self.assert_alive("before the kill");
        self.child.kill().expect("send SIGKILL");
        let status = self.child.wait().expect("wait for the killed server");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the server ended with {status}, not by the SIGKILL: {}",
            self.log_text()
        );
        std::mem::forget(self);
    }

    /// Fails the test, with the server's log, if the server is no longer running.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!(
                "the server died {when} ({status}); its log:\n{}",
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (at most 10 s) until the server's log contains `needle`; the log is read by a
    /// background thread, so a line written a moment ago may not have arrived yet.
    pub fn log_contains(&self, needle: &str) -> bool {
        log_contains(&self.log, needle)
    }
}

/// [`Server::log_contains`] on a log kept after the server is gone.
pub fn log_contains(log: &std::sync::Mutex<Vec<String>>, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if log.lock().unwrap().join("\n").contains(needle) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to the end like [`Command::output`], with `stdin` as its input, but kills it
/// and fails the test if it has not exited within `limit`: a regression that makes a command
/// hang (a lock not refused, a pipe not noticed) fails instead of hanging the test run.
pub fn output_with_deadline(
    cmd: &mut Command,
    stdin: &[u8],
    limit: Duration,
) -> std::process::Output {
    use std::io::{Read, Write};
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // (A command that exits without reading its input is fine: the write error is ignored.)
    std::thread::spawn(move || input.write_all(&stdin));
    fn read_all(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            from.read_to_end(&mut v).expect("read the command's output");
            v
        })
    }
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes one byte (`byte(i)`) every 100 ms on `s` until the server closes the connection
/// (at most 10 s after `started`); returns how long after `started` that was. Whatever the
/// server sends meanwhile is read and dropped.
pub fn trickle(s: std::net::TcpStream, started: Instant, byte: impl Fn(usize) -> u8) -> Duration {
    trickle_until_closed(s, started, byte).closed
}

/// What [`trickle_until_closed`] saw.
pub struct Trickled {
    /// When the connection was closed, after `started`.
    pub closed: Duration,
    /// When the first byte of an answer arrived, after `started`.
    pub answered: Option<Duration>,
    /// Everything the server sent.
    pub answer: Vec<u8>,
}

/// [`trickle`], keeping what the server sent and when it started to.
pub fn trickle_until_closed(
    mut s: std::net::TcpStream,
    started: Instant,
    byte: impl Fn(usize) -> u8,
) -> Trickled {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut answered = None;
    let mut answer = Vec::new();
    let closed = |answered, answer| Trickled {
        closed: started.elapsed(),
        answered,
        answer,
    };
    for i in 0.. {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the connection was never closed; the server sent: {}",
            String::from_utf8_lossy(&answer)
        );
        if std::io::Write::write_all(&mut s, &[byte(i)]).is_err() {
            return closed(answered, answer);
        }
        let mut buf = [0u8; 256];
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => return closed(answered, answer),
            Ok(n) => {
                answered.get_or_insert_with(|| started.elapsed());
                answer.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return closed(answered, answer),
        }
    }
    unreachable!()
}

/// Reads one whole HTTP/1.1 answer with a `content-length` from `s`; returns its status.
pub fn read_response(s: &mut std::net::TcpStream) -> u16 {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("an answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    let mut body = vec![0; length];
    s.read_exact(&mut body).expect("the body");
    head[9..12].parse().expect("a status code")
}

/// The status code of a plain HTTP/1.1 GET, without an HTTP client library.
pub fn raw_get_status(base: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://")?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).ok()?;
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

/// Sends `sig` to `child`, a process this test started (never one found by name).
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of our own child, which we have not waited for yet.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", child.id());
}

/// GET `url` and parse the answer as JSON.
pub async fn get_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET `url` and return the answer as text.
pub async fn get_text(http: &reqwest::Client, url: String) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Creates a topic from its description (`{"name": ..., "partitions": ..., "config": ...}`),
/// asserting `201 Created`.
pub async fn create_topic(http: &reqwest::Client, base: &str, topic: serde_json::Value) {
    let r = post_json(http, format!("{base}/v1/topics"), &topic).await;
    assert_eq!(r.status(), 201, "creating {topic}");
}

/// Deletes `topic`, asserting `204`.
pub async fn delete_topic(http: &reqwest::Client, base: &str, topic: &str) {
    let r = http
        .delete(format!("{base}/v1/topics/{topic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "deleting {topic}");
}

/// Waits until a tailer has registered as a blocked waiter in the header of `segment`.
pub fn wait_for_blocked_tailer(segment: &Path) {
    use mapq::log::format::{get_u32, segment_header as sh};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bytes = std::fs::read(segment).unwrap();
        if get_u32(&bytes, sh::WAITERS) > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the tailer never blocked");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Commits `offset` for `group` on partition `partition` of `topic`, asserting `204`.
pub async fn commit_offset(
    http: &reqwest::Client,
    base: &str,
    group: &str,
    (topic, partition, offset): (&str, u32, u64),
) {
    let r = http
        .put(format!("{base}/v1/groups/{group}/offsets"))
        .json(&serde_json::json!({"offsets": [{"topic": topic, "partition": partition, "offset": offset}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "committing {offset} for {group}");
}

/// POST `body` as JSON to `url`.
pub async fn post_json(
    http: &reqwest::Client,
    url: String,
    body: &serde_json::Value,
) -> reqwest::Response {
    http.post(url).json(body).send().await.unwrap()
}
