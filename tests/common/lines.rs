//! A child process whose stdout lines arrive on a channel and whose stderr is collected: the
//! readers the tests run beside a server (`mapq tail`, the Python format reader).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub struct LineProcess {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl LineProcess {
    /// Starts `cmd` with its stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> LineProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the process");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let err = child.stderr.take().unwrap();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&line);
            }
        });
        LineProcess {
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// The next `n` lines as JSON, each within `limit`.
    pub fn records(&self, n: usize, limit: Duration) -> Vec<Value> {
        (0..n)
            .map(|i| {
                let line = self.lines.recv_timeout(limit).unwrap_or_else(|_| {
                    panic!(
                        "record {i} of {n} did not arrive; stderr: {}",
                        self.stderr.lock().unwrap()
                    )
                });
                serde_json::from_str(&line).unwrap()
            })
            .collect()
    }

    /// After the process has exited: its stdout ends with no further line.
    pub fn expect_no_more_lines(&self, what: &str) {
        match self.lines.recv_timeout(Duration::from_secs(5)) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Ok(line) => panic!("{what}: got {line}"),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: stdout never closed"),
        }
    }

    /// Waits for the process to exit (within `limit`), and for everything it wrote on
    /// stderr.
    pub fn exit_code(&mut self, limit: Duration) -> i32 {
        let code = super::server::wait_with_deadline(&mut self.child, limit);
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        code
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
