//! The README's examples run as printed, in order, against a fresh server.
//!
//! Every ` ```sh ` block of README.md is a step of one sequence that a newcomer pastes into a
//! terminal next to `cargo run --release -- serve` started in the project directory. This
//! test runs them the same way: one real server on a port chosen by the OS, with its data in
//! `<tmp>/data`, and each block in `bash -euo pipefail` with `<tmp>` as working directory (so
//! `./data` is the server's data), `localhost:8080` and `127.0.0.1:8080` rewritten to the
//! server's address (and `localhost:9092` to its Kafka listener's), `MAPQ_SERVER` set to it and the freshly built `mapq` first on `PATH`.
//!
//! What the README promises and this test holds it to:
//! - Fences: `sh` blocks are run; `shell` blocks (servers, endless followers, benchmarks,
//!   deployment) and `rust`, `toml`, `text`, `json` are shown only. Any other tag fails, so
//!   a shell example cannot escape the test by a new spelling.
//! - Every `curl` is `curl -s ...`; the test runs it as `curl -sS --fail-with-body`, so an
//!   HTTP error (a 404 or 409 that the README did not mean) fails the step.
//! - A comment after a command (at the end of its line, or on the lines right after it)
//!   that starts with `{` or `[` is its exact JSON answer (`timestamp_ms` may be any number:
//!   the server's clock); one that starts with a status code and `{` (`# 409 {"error":...}`)
//!   is an error shown on purpose, whose status and body are checked; one that starts with
//!   `→` is its exact output. Other comments are prose.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use serde_json::Value;

const README: &str = include_str!("../README.md");

/// Longest a block may run (the slowest, the CLI's, takes a few seconds).
const BLOCK_DEADLINE: Duration = Duration::from_secs(60);

/// Fence tags of blocks that are shown, not run.
const SHOWN_ONLY: &[&str] = &["shell", "rust", "toml", "text", "json", "c", "python"];

/// Printed after each step (with `\036`, the ASCII record separator, in front), so that the
/// output of a block can be cut into the outputs of its steps.
const MARK: &str = "\u{1e}mapq-readme-step ";

/// A fenced block of the README.
#[derive(Debug)]
struct Block {
    /// README line of the opening fence.
    line: usize,
    tag: String,
    body: String,
}

/// One command of an `sh` block, as printed.
#[derive(Debug)]
struct Step {
    /// README line where it starts.
    line: usize,
    /// The command with its continuation lines and comments.
    text: String,
    /// The same without comments (what the checks on `curl` look at).
    code: String,
    expect: Option<Expect>,
}

/// What a step's comment says it prints.
#[derive(Debug, PartialEq)]
enum Expect {
    /// `# {...}`: this JSON.
    Json(Value),
    /// `# 409 {...}`: an HTTP error shown on purpose.
    Error { status: u16, body: Value },
    /// `# → text`: this output.
    Text(String),
}

fn fenced_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(tag)) => {
                assert!(
                    !tag.trim().is_empty(),
                    "README line {line_no}: a code block without a language tag (use sh to run it, shell to show it)"
                );
                open = Some(Block {
                    line: line_no,
                    tag: tag.trim().to_owned(),
                    body: String::new(),
                });
            }
            (Some(_), Some(rest)) => {
                assert!(
                    rest.trim().is_empty(),
                    "README line {line_no}: a fence opens inside a block"
                );
                blocks.push(open.take().unwrap());
            }
            (Some(block), None) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README: a code block is never closed");
    blocks
}

/// Splits a line into code and comment, given the quote open at its start; returns the
/// code, the comment (after `#`, if any) and the quote still open at its end.
fn scan_line(line: &str, mut quote: Option<char>) -> (&str, Option<&str>, Option<char>) {
    let mut chars = line.char_indices().peekable();
    let mut previous = None;
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (Some(_), '\\') | (None, '\\') => {
                chars.next();
            }
            (Some(_), '"') => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') if previous.is_none_or(char::is_whitespace) => {
                return (&line[..i], Some(&line[i + 1..]), None);
            }
            (None, _) => {}
        }
        previous = Some(c);
    }
    (line, None, quote)
}

/// The expected output a comment states, if it states one.
fn expectation(comment: &str, line: usize) -> Option<Expect> {
    let c = comment.trim();
    if let Some(text) = c.strip_prefix('→') {
        return Some(Expect::Text(text.trim().to_owned()));
    }
    let (status, json) = match c.split_once(' ') {
        Some((code, rest))
            if code.len() == 3
                && code.bytes().all(|b| b.is_ascii_digit())
                && rest.trim_start().starts_with('{') =>
        {
            (Some(code.parse::<u16>().unwrap()), rest.trim_start())
        }
        _ if c.starts_with('{') || c.starts_with('[') => (None, c),
        _ => return None,
    };
    let mut values = serde_json::Deserializer::from_str(json).into_iter::<Value>();
    let value = match values.next() {
        Some(Ok(v)) => v,
        other => panic!("README line {line}: an expected output that is not JSON ({other:?}): {c}"),
    };
    let rest = &json[values.byte_offset()..];
    assert!(
        rest.is_empty() || rest.starts_with(char::is_whitespace),
        "README line {line}: text glued to the JSON of an expected output: {c}"
    );
    Some(match status {
        Some(status) => {
            assert!(
                status >= 400,
                "README line {line}: `# {status} {{...}}` is for errors shown on purpose"
            );
            Expect::Error {
                status,
                body: value,
            }
        }
        None => Expect::Json(value),
    })
}

/// The commands of an `sh` block, each with the output its comments promise.
fn steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let (mut text, mut code) = (String::new(), String::new());
    let mut start = 0;
    let mut quote = None;
    for (i, line) in block.body.lines().enumerate() {
        let line_no = block.line + 1 + i;
        if text.is_empty() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                // A comment line: the output of the command above it, or prose.
                if let Some(expect) = expectation(comment, line_no) {
                    let step = steps.last_mut().unwrap_or_else(|| {
                        panic!("README line {line_no}: an expected output before any command")
                    });
                    assert!(
                        step.expect.is_none(),
                        "README line {line_no}: a second expected output for the command of line {}",
                        step.line
                    );
                    step.expect = Some(expect);
                }
                continue;
            }
            start = line_no;
        }
        let (line_code, comment, open) = scan_line(line, quote);
        quote = open;
        text.push_str(line);
        text.push('\n');
        code.push_str(line_code);
        code.push('\n');
        let end = line_code.trim_end();
        if quote.is_some()
            || end.ends_with('\\')
            || end.ends_with('|')
            || end.ends_with("&&")
            || end.ends_with("||")
        {
            continue;
        }
        steps.push(Step {
            line: start,
            text: std::mem::take(&mut text),
            code: std::mem::take(&mut code),
            expect: comment.and_then(|c| expectation(c, line_no)),
        });
    }
    assert!(
        text.is_empty(),
        "README line {start}: a command that never ends (an open quote or a trailing \\)"
    );
    steps
}

/// The step as the test runs it: against `addr` (and the Kafka listener at `kafka`), with
/// curl failing on HTTP errors (or, for an error shown on purpose, printing the status after
/// the body).
fn runnable(step: &Step, addr: &str, kafka: &str) -> String {
    let curls = step.code.matches("curl").count();
    assert_eq!(
        curls,
        step.code.matches("curl -s ").count(),
        "README line {}: every curl of an sh block is `curl -s ...`, which the test turns into \
         `curl -sS --fail-with-body ...`:\n{}",
        step.line,
        step.text
    );
    let curl = match step.expect {
        Some(Expect::Error { .. }) => {
            assert_eq!(
                curls, 1,
                "README line {}: an error shown on purpose comes from one curl",
                step.line
            );
            r"curl -sS -w '\n%{http_code}' "
        }
        _ => "curl -sS --fail-with-body ",
    };
    step.text
        .replace("localhost:8080", addr)
        .replace("127.0.0.1:8080", addr)
        .replace("localhost:9092", kafka)
        .replace("curl -s ", curl)
}

/// JSON equality, except that a `timestamp_ms` may be any number (the server's clock).
fn same_json(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter().all(|(key, ev)| {
                    a.get(key).is_some_and(|av| {
                        if key == "timestamp_ms" {
                            av.is_number()
                        } else {
                            same_json(ev, av)
                        }
                    })
                })
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| same_json(e, a))
        }
        _ => expected == actual,
    }
}

/// Whether `output` is what `expect` promises; else why not.
fn check(expect: &Expect, output: &str) -> Result<(), String> {
    let json = |text: &str| -> Result<Value, String> {
        serde_json::from_str(text.trim()).map_err(|e| format!("the output is not JSON ({e})"))
    };
    match expect {
        Expect::Json(want) => {
            let got = json(output)?;
            if same_json(want, &got) {
                Ok(())
            } else {
                Err(format!("expected {want}\n     got {got}"))
            }
        }
        Expect::Error { status, body } => {
            let (text, code) = output
                .rsplit_once('\n')
                .ok_or_else(|| "no status code after the body".to_owned())?;
            let got = json(text)?;
            if code.trim() == status.to_string() && same_json(body, &got) {
                Ok(())
            } else {
                Err(format!(
                    "expected {status} {body}\n     got {} {got}",
                    code.trim()
                ))
            }
        }
        Expect::Text(want) => {
            if output.trim() == want {
                Ok(())
            } else {
                Err(format!("expected {want:?}\n     got {:?}", output.trim()))
            }
        }
    }
}

/// What running a block gave: the exit status (None: killed at the deadline), stdout and
/// stderr.
struct Ran {
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs `script` in `bash -euo pipefail` in its own process group, killing that group (and
/// nothing else) if it is still running at the deadline.
fn run_script(script: &str, dir: &Path, server: &Server) -> Ran {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_mapq")).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (key, _) in std::env::vars() {
        if key.starts_with("MAPQ_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("MAPQ_SERVER", &server.base);
    let mut child = cmd.spawn().expect("run bash");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + BLOCK_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if Instant::now() > deadline {
            // SAFETY: a signal to the process group this test created for this block (its
            // id is the child's pid), so only bash and the commands it started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Runs one `sh` block and checks every step's promised output; the error names the block,
/// the step and what it printed.
fn run_block(block: &Block, dir: &Path, server: &Server) -> Result<usize, String> {
    let steps = steps(block);
    assert!(
        !steps.is_empty(),
        "README line {}: an sh block without a command",
        block.line
    );
    let addr = server.base.trim_start_matches("http://");
    let kafka = server.kafka_addr();
    let mut script = String::new();
    for (i, step) in steps.iter().enumerate() {
        script.push_str(&runnable(step, addr, &kafka));
        script.push_str(&format!("printf '\\n\\036mapq-readme-step {i}\\n'\n"));
    }
    let ran = run_script(&script, dir, server);
    // The output of each finished step, in order.
    let mut outputs = Vec::new();
    let mut rest = ran.stdout.as_str();
    for i in 0..steps.len() {
        let mark = format!("\n{MARK}{i}\n");
        let Some(at) = rest.find(&mark) else { break };
        outputs.push(&rest[..at]);
        rest = &rest[at + mark.len()..];
    }
    let failed = |i: usize, why: &str, output: &str| {
        let step = &steps[i];
        format!(
            "README sh block of line {} (step {} of {}, line {}):\n{}{why}\n--- its output:\n{output}\n--- stderr of the block:\n{}",
            block.line,
            i + 1,
            steps.len(),
            step.line,
            step.text,
            ran.stderr
        )
    };
    let complete = ran.status.is_some_and(|s| s.success()) && outputs.len() == steps.len();
    if !complete {
        let i = outputs.len().min(steps.len() - 1);
        let why = match ran.status {
            None => format!("still running after {BLOCK_DEADLINE:?}: stopped"),
            Some(s) if s.success() => "the block ended before this step".to_owned(),
            Some(s) => format!("failed: {s}"),
        };
        return Err(failed(i, &why, rest));
    }
    let mut checked = 0;
    for (i, (step, output)) in steps.iter().zip(&outputs).enumerate() {
        if let Some(expect) = &step.expect {
            check(expect, output).map_err(|why| failed(i, &why, output))?;
            checked += 1;
        }
    }
    Ok(checked)
}

#[test]
fn every_sh_block_runs_in_order_against_a_fresh_server_and_prints_what_it_says() {
    let blocks = fenced_blocks(README);
    for b in &blocks {
        assert!(
            b.tag == "sh" || SHOWN_ONLY.contains(&b.tag.as_str()),
            "README line {}: code block tagged {:?}: use sh for a step of the tested sequence, \
             or one of {SHOWN_ONLY:?} for what is shown only",
            b.line,
            b.tag
        );
    }
    let runnable: Vec<&Block> = blocks.iter().filter(|b| b.tag == "sh").collect();
    // The quick start's output and the topic list are promised exactly: make sure they
    // are still checked.
    let first = steps(runnable[0]);
    assert!(
        first
            .iter()
            .filter(|s| matches!(s.expect, Some(Expect::Json(_))))
            .count()
            >= 2,
        "the quick start shows the answers of its produce and consume"
    );
    assert!(
        runnable.iter().flat_map(|b| steps(b)).any(|s| matches!(
            &s.expect,
            Some(Expect::Json(v)) if v.get("topics").is_some()
        )),
        "a topic list with its exact answer"
    );

    // The Kafka examples use kcat, installed as for tests/kafka.rs.
    if README.contains("kcat ") {
        common::kafka::clients();
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut checked = 0;
    for block in &runnable {
        match run_block(block, dir.path(), &server) {
            Ok(n) => checked += n,
            Err(e) => {
                let log = server.log_text();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                panic!("{e}\n--- the server's last log lines:\n{tail}")
            }
        }
    }
    assert!(checked >= 8, "only {checked} outputs checked");
    assert_eq!(
        server.terminate(),
        0,
        "the server stops cleanly after the examples"
    );
}

#[test]
fn commands_are_split_at_the_end_of_their_last_line() {
    let block = Block {
        line: 10,
        tag: "sh".into(),
        body: concat!(
            "# prose\n",
            "curl -s -XPOST x -d '{\"a\": 1,\n",
            "  \"b\": \"#\"}'   # {\"ok\": true}\n",
            "printf 'a\\nb\\n' | wc -l \\\n",
            "   | cat\n",
            "# → 2\n",
            "echo \"it's # here\" # 404 text, not an expectation\n",
            "curl -s y\n",
            "# 409 {\"error\": {\"code\": \"x\"}}   (why)\n",
        )
        .into(),
    };
    let steps = steps(&block);
    assert_eq!(steps.len(), 4, "{steps:#?}");
    assert_eq!(steps[0].line, 12);
    assert!(steps[0].code.contains("\"#\"}'"), "{:?}", steps[0].code);
    assert_eq!(
        steps[0].expect,
        Some(Expect::Json(serde_json::json!({"ok": true})))
    );
    assert_eq!(steps[1].expect, Some(Expect::Text("2".into())));
    assert_eq!(steps[2].expect, None);
    assert_eq!(
        steps[3].expect,
        Some(Expect::Error {
            status: 409,
            body: serde_json::json!({"error": {"code": "x"}})
        })
    );
    assert!(runnable(&steps[0], "h:1", "k:2").starts_with("curl -sS --fail-with-body -XPOST"));
    assert!(runnable(&steps[3], "h:1", "k:2").starts_with(r"curl -sS -w '\n%{http_code}' y"));
    assert!(check(
        &Expect::Json(serde_json::json!({"timestamp_ms": 1})),
        "{\"timestamp_ms\": 7}\n"
    )
    .is_ok());
    assert!(check(&Expect::Json(serde_json::json!({"a": 1})), "{\"a\": 2}").is_err());
    assert!(check(
        &Expect::Error {
            status: 409,
            body: serde_json::json!({})
        },
        "{}\n404"
    )
    .is_err());
}
