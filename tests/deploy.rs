//! The files in `deploy/` are checked, not just written: YAML and JSON parse, Prometheus
//! accepts the config and the rules and the rules pass their unit tests (`promtool`, from
//! PATH or unpacked from Debian's package by `deploy/install-promtool.sh`), every metric the
//! dashboard and the alerts use is one the server exports, the config files of compose and
//! Kubernetes load in the real server and turn tokens on, `systemd-analyze verify` accepts
//! the unit and its syscall filter allows what the server calls, and the manifests carry
//! the probes, volumes and hardening they promise.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{commit_offset, get_text, post_json, Server};
use reqwest::Client;
use serde_json::json;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn k8s_doc<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in kubernetes/mapq.yaml"))
}

fn yaml_docs(rel: &str) -> Vec<serde_yaml::Value> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
        })
        .collect()
}

/// Every `mapq_*` and `process_*` metric name in a text (PromQL expressions).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = (rest.starts_with("mapq_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn yaml_and_json_files_parse_and_manifests_say_what_they_promise() {
    for rel in [
        "docker-compose.yml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
        "prometheus/cluster-alerts.yml",
        "prometheus/cluster-alerts_test.yml",
        "prometheus/blackbox.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/mapq.yml",
    ] {
        assert_eq!(yaml_docs(rel).len(), 1, "{rel}");
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/mapq.json")).expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);

    let k8s = yaml_docs("kubernetes/mapq.yaml");
    let kinds: Vec<&str> = k8s.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Secret", "Service", "Service", "StatefulSet"]
    );
    let sts = k8s_doc(&k8s, "StatefulSet");
    // Each pod is an independent server: more than one behind a Service splits the data.
    assert_eq!(sts["spec"]["replicas"], 1);
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    // Not the unpublished mapq:latest, which a cluster would look for on Docker Hub.
    let image = container["image"].as_str().unwrap();
    assert!(
        image.contains(".invalid/"),
        "image {image} is a placeholder"
    );
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        k8s_doc(&k8s, "ConfigMap")["metadata"]["name"]
    );
    // The config file read with --config is the Secret's mapq.toml, mounted where it is read.
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let secret = k8s_doc(&k8s, "Secret");
    let config_volume = sts["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == secret["metadata"]["name"])
        .expect("a volume from the Secret");
    let config_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == config_volume["name"])
        .expect("the Secret is mounted");
    assert_eq!(
        format!("{}/mapq.toml", config_mount["mountPath"].as_str().unwrap()),
        config_path
    );
    assert!(secret["stringData"]["mapq.toml"].is_string());
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    // The claimed volume is the one mounted where the data lives.
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].as_str(),
        Some("data")
    );
    let mount = &container["volumeMounts"][0];
    assert_eq!(
        (mount["name"].as_str(), mount["mountPath"].as_str()),
        (Some("data"), Some("/var/lib/mapq"))
    );
    assert_eq!(
        sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );

    let compose = &yaml_docs("docker-compose.yml")[0];
    for service in ["mapq", "prometheus", "blackbox", "grafana"] {
        assert!(
            compose["services"][service].is_mapping(),
            "compose has {service}"
        );
    }
    // mapq reads the bind-mounted config file.
    let mapq = &compose["services"]["mapq"];
    let command: Vec<&str> = mapq["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = command[command.iter().position(|a| *a == "--config").unwrap() + 1];
    assert!(
        mapq["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v.as_str() == Some(&format!("./mapq/mapq.toml:{config_path}:ro"))),
        "compose mounts mapq/mapq.toml at {config_path}"
    );
    // The readiness probe: the job's module is one the blackbox exporter has, asking /readyz.
    let prometheus = &yaml_docs("prometheus/prometheus.yml")[0];
    let ready_job = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "mapq-ready")
        .expect("a mapq-ready job");
    let module = ready_job["params"]["module"][0].as_str().unwrap();
    let blackbox = &yaml_docs("prometheus/blackbox.yml")[0];
    assert_eq!(blackbox["modules"][module]["prober"], "http");
    assert!(ready_job["static_configs"][0]["targets"][0]
        .as_str()
        .unwrap()
        .ends_with("/readyz"));

    // The build context is the repository: target/ and .git stay out of it, and nothing the
    // Dockerfile copies is left out.
    let ignored: Vec<String> = std::fs::read_to_string(deploy().join("../.dockerignore"))
        .expect("a .dockerignore at the top of the repository")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches("**/")
                .trim_start_matches('/')
                .to_owned()
        })
        .collect();
    for needed in ["target", ".git"] {
        assert!(
            ignored.iter().any(|p| p == needed),
            ".dockerignore lacks {needed}"
        );
    }

    let dockerfile = read("Dockerfile");
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
    assert!(dockerfile.contains("USER mapq"), "runs as a non-root user");
    assert!(dockerfile.contains("VOLUME"));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/healthz"));
    for copy in dockerfile.lines().filter_map(|l| l.strip_prefix("COPY ")) {
        if copy.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = copy.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(
                !ignored.iter().any(|p| p == source.trim_end_matches('/')),
                ".dockerignore leaves out {source}, which the Dockerfile copies"
            );
        }
    }

    let unit = read("systemd/mapq.service");
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "KillSignal=SIGTERM",
        "StateDirectory=mapq",
    ] {
        assert!(unit.contains(directive), "unit lacks {directive}");
    }
}

#[test]
fn promtool_accepts_the_config_and_the_rules() {
    // Unpacked (if needed) next to the build output, which may be a CARGO_TARGET_DIR.
    let tools = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("tools");
    let found = Command::new(deploy().join("install-promtool.sh"))
        .arg(&tools)
        .stderr(Stdio::inherit())
        .output()
        .expect("run deploy/install-promtool.sh");
    let stdout = String::from_utf8_lossy(&found.stdout);
    assert!(
        found.status.success(),
        "promtool could not be had (deploy/install-promtool.sh: {}; its messages are above)",
        found.status
    );
    let promtool = stdout
        .lines()
        .last()
        .expect("the script prints promtool's path");
    for args in [
        vec!["check", "config", "prometheus/prometheus.yml"],
        vec!["check", "rules", "prometheus/alerts.yml"],
        // Among them: an empty but ready server raises no MapqNotReady.
        vec!["test", "rules", "prometheus/alerts_test.yml"],
        vec!["check", "rules", "prometheus/cluster-alerts.yml"],
        vec!["test", "rules", "prometheus/cluster-alerts_test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(&args)
            .current_dir(deploy())
            .output()
            .unwrap_or_else(|e| panic!("run {promtool}: {e}"));
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("MAPQ_MAX_DISK_BYTES", "1000000000")]);
    let http = Client::new();
    let base = &server.base;
    // A workload that gives every labelled family at least one series.
    let r = post_json(
        &http,
        format!("{base}/v1/topics/d/records?durability=fsync"),
        &json!({"records": [{"value": 1}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/v1/topics/d/partitions/0/records"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    commit_offset(&http, base, "g", ("d", 0, 1)).await;
    let text = get_text(&http, format!("{base}/metrics")).await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let used: Vec<String> = metric_names(&read("grafana/dashboards/mapq.json"))
        .into_iter()
        .chain(metric_names(&read("prometheus/alerts.yml")))
        .collect();
    // The scan found the dashboard's and the alerts' metrics (a broken scan checks nothing).
    assert!(used.len() >= 10, "{used:?}");
    assert!(
        used.iter().any(|n| n == "mapq_records_appended_total"),
        "{used:?}"
    );
    for name in used {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| exported.contains(*base))
            .unwrap_or(&name);
        assert!(
            exported.contains(family),
            "{name} is used by deploy/ but not exported (exported: {exported:?})"
        );
    }
}

/// `mapq serve --config FILE` with `env` on top (as a container gets them), on a free port.
fn serve_like_a_container(data_dir: &Path, config: &Path, env: &[(String, String)]) -> Server {
    // The flags win over MAPQ_LISTEN and MAPQ_DATA_DIR, which hold the container's values.
    let mut cmd = common::server::serve_command("127.0.0.1:0", "127.0.0.1:0");
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("MAPQ_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd.spawn().expect("start mapq serve");
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("mapq listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(30));
    let server = Server {
        child,
        base: base.unwrap_or_default(),
        data_dir: data_dir.to_owned(),
        log,
        kafka: Default::default(),
    };
    assert!(
        !server.base.is_empty(),
        "the server did not start with {}: {}",
        config.display(),
        server.log_text()
    );
    server
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert.pem, key.pem, a client trusting it).
fn certificate(dir: &Path) -> (PathBuf, PathBuf, reqwest::Client) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let http = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    (cert_file, key_file, http)
}

/// Waits for /readyz, then checks that tokens are on: the API refuses a request without a
/// token and one with a wrong token, and the probes and /metrics stay open.
async fn assert_tokens_on(http: &Client, server: &Server, scheme: &str) {
    assert!(
        server.base.starts_with(&format!("{scheme}://")),
        "{} speaks {scheme}",
        server.base
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = match http.get(server.url("/readyz")).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for path in ["/healthz", "/metrics"] {
        let r = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "{path} stays open for probes and Prometheus"
        );
    }
    let r = http.get(server.url("/v1/topics")).send().await.unwrap();
    assert_eq!(r.status(), 401, "a request without a token");
    let r = http
        .post(server.url("/v1/topics/t/records"))
        .bearer_auth("not-the-secret")
        .json(&json!({"records": [{"value": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a request with a wrong token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_config_turns_tokens_on_and_tls_is_two_lines_away() {
    let compose = &yaml_docs("docker-compose.yml")[0];
    let env: Vec<(String, String)> = compose["services"]["mapq"]["environment"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_like_a_container(
        &dir.path().join("data"),
        &deploy().join("mapq/mapq.toml"),
        &env,
    );
    assert_tokens_on(&Client::new(), &server, "http").await;
    drop(server);

    // Uncommenting the two tls_*_file lines, as the file says, gives an HTTPS server (they sit
    // above [[tokens]], so they are settings, not fields of a token).
    let (cert, key, https) = certificate(dir.path());
    let shipped = read("mapq/mapq.toml");
    let mut uncommented = 0;
    let text: String = shipped
        .lines()
        .map(|l| match l.strip_prefix("# tls_") {
            Some(rest) if rest.starts_with("cert_file = ") => {
                uncommented += 1;
                format!("tls_cert_file = {:?}\n", cert.to_str().unwrap())
            }
            Some(rest) if rest.starts_with("key_file = ") => {
                uncommented += 1;
                format!("tls_key_file = {:?}\n", key.to_str().unwrap())
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert_eq!(uncommented, 2, "mapq/mapq.toml has the two TLS lines");
    let config = dir.path().join("tls.toml");
    std::fs::write(&config, text).unwrap();
    let server = serve_like_a_container(&dir.path().join("data"), &config, &env);
    assert_tokens_on(&https, &server, "https").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_config_turns_tokens_on_and_its_settings_are_settings() {
    let k8s = yaml_docs("kubernetes/mapq.yaml");
    let settings = k8s_doc(&k8s, "ConfigMap")["data"].as_mapping().unwrap();
    let mut env: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect();
    // Every MAPQ_ key, set or commented out, names a setting (an unknown one stops the server).
    let known: toml::Table = std::fs::read_to_string(deploy().join("../config/mapq.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let manifest = read("kubernetes/mapq.yaml");
    let commented: Vec<(String, &str)> = manifest
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("# MAPQ_"))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (format!("MAPQ_{k}"), v.trim()))
        .collect();
    assert!(commented.len() >= 2, "the TLS settings, commented out");
    // They name files of the TLS Secret's volume.
    let sts = k8s_doc(&k8s, "StatefulSet");
    let tls_volume = sts["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == "mapq-tls")
        .expect("a volume from the Secret mapq-tls");
    let tls_mount = sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == tls_volume["name"])
        .expect("the TLS Secret is mounted");
    let tls_dir = tls_mount["mountPath"].as_str().unwrap();
    for file in ["tls.crt", "tls.key"] {
        assert!(
            commented
                .iter()
                .any(|(_, v)| *v == format!("{tls_dir}/{file}")),
            "a commented setting names {tls_dir}/{file}"
        );
    }
    for key in env
        .iter()
        .map(|(k, _)| k)
        .chain(commented.iter().map(|(k, _)| k))
    {
        let name = key.strip_prefix("MAPQ_").unwrap().to_ascii_lowercase();
        assert!(known.contains_key(&name), "{key} is not a setting");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mapq.toml");
    let secret = k8s_doc(&k8s, "Secret");
    std::fs::write(&config, secret["stringData"]["mapq.toml"].as_str().unwrap()).unwrap();
    // The ConfigMap's data directory and address are the pod's; the flags put them here.
    let server = serve_like_a_container(&dir.path().join("data"), &config, &env);
    assert_tokens_on(&Client::new(), &server, "http").await;
    drop(server);

    // With the TLS Secret's files and the two commented settings set: HTTPS.
    let (cert, key, https) = certificate(dir.path());
    for (name, file) in [("MAPQ_TLS_CERT_FILE", &cert), ("MAPQ_TLS_KEY_FILE", &key)] {
        assert!(commented.iter().any(|(c, _)| c == name), "{name} is shown");
        env.push((name.into(), file.to_str().unwrap().into()));
    }
    let server = serve_like_a_container(&dir.path().join("data"), &config, &env);
    assert_tokens_on(&https, &server, "https").await;
}

/// `systemd-analyze`, or a failure that says what to install.
fn systemd_analyze() -> Command {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => Command::new("systemd-analyze"),
        other => panic!(
            "systemd-analyze does not run ({other:?}): the systemd unit checks need it; \
             install Debian's `systemd` package (apt-get install systemd)"
        ),
    }
}

/// The unit's `[Service]` settings named `key`, in order.
fn unit_settings<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let mut section = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            if let Some(value) = line.strip_prefix(key).and_then(|l| l.strip_prefix('=')) {
                values.push(value);
            }
        }
    }
    values
}

/// What `systemd-analyze verify` says about a copy of the unit (`edit` applied to its text)
/// whose ExecStart is the binary just built: (exit status ok, lines about the unit).
fn verify_unit(edit: impl Fn(&str) -> String) -> (bool, Vec<String>) {
    let unit = read("systemd/mapq.service");
    let shipped_binary = "ExecStart=/usr/local/bin/mapq ";
    assert!(
        unit.contains(shipped_binary),
        "the unit runs {shipped_binary}"
    );
    let unit = unit.replace(
        shipped_binary,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_mapq")),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapq.service");
    std::fs::write(&path, edit(&unit)).unwrap();
    let out = systemd_analyze()
        .args(["verify", "--recursive-errors=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Other units it loads (targets) may have their own complaints on some hosts.
    let mut about_unit: Vec<String> = text
        .lines()
        .filter(|l| l.contains("mapq.service"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() {
        about_unit.push(format!("{}: {text}", out.status));
    }
    (out.status.success(), about_unit)
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let (ok, complaints) = verify_unit(str::to_owned);
    assert!(
        ok && complaints.is_empty(),
        "systemd-analyze verify: {complaints:#?}"
    );

    // The check hears a broken directive (a misspelled key or syscall group is only warned
    // about, with exit status 0, so the output is what counts).
    let (_, complaints) = verify_unit(|u| {
        u.replace(
            "[Service]\n",
            "[Service]\nSystemCallFilter=@no-such-group\nStateDirectoryMod=0750\n",
        )
    });
    for broken in ["@no-such-group", "StateDirectoryMod"] {
        assert!(
            complaints.iter().any(|c| c.contains(broken)),
            "{broken} goes unnoticed: {complaints:#?}"
        );
    }
}

/// Syscall groups as this systemd defines them (`@name` -> its members, groups included).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = systemd_analyze()
        .arg("syscall-filter")
        .output()
        .expect("run systemd-analyze syscall-filter");
    assert!(out.status.success());
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_owned());
            groups.insert(line.trim().to_owned(), Vec::new());
        } else if let (Some(group), name) = (&current, line.trim()) {
            if !name.is_empty() && !name.starts_with('#') && line.starts_with(' ') {
                groups.get_mut(group).unwrap().push(name.to_owned());
            }
        }
    }
    assert!(groups.len() > 10 && groups["@chown"].contains(&"chown".to_owned()));
    groups
}

fn expand(name: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
    match groups.get(name) {
        Some(members) => members.iter().for_each(|m| expand(m, groups, out)),
        None => {
            assert!(!name.starts_with('@'), "unknown syscall group {name}");
            out.insert(name.to_owned());
        }
    }
}

/// Whether the unit's SystemCallFilter= lines let `syscall` through, as systemd reads them:
/// the first line decides allow-list (plus @default) or deny-list; each later line adds to
/// or takes from the list (`~` inverts); an empty value starts over.
fn filter_allows(unit: &str, groups: &BTreeMap<String, Vec<String>>) -> impl Fn(&str) -> bool {
    let mut allow_list: Option<bool> = None;
    let mut listed = BTreeSet::new();
    for value in unit_settings(unit, "SystemCallFilter") {
        if value.is_empty() {
            allow_list = None;
            listed.clear();
            continue;
        }
        let (invert, names) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let allowing = *allow_list.get_or_insert_with(|| {
            if !invert {
                expand("@default", groups, &mut listed);
            }
            !invert
        });
        for name in names.split_whitespace() {
            let name = name.split(':').next().unwrap(); // `name:errno`
            let mut set = BTreeSet::new();
            expand(name, groups, &mut set);
            if invert != allowing {
                listed.extend(set);
            } else {
                listed.retain(|s| !set.contains(s));
            }
        }
    }
    move |syscall: &str| match allow_list {
        None => true,
        Some(true) => listed.contains(syscall),
        Some(false) => !listed.contains(syscall),
    }
}

/// System calls the server makes: those `strace -f` saw on `mapq serve` with data_group
/// set (start-up, produce with both durabilities, consume as JSON and as frames, a long
/// poll, a group commit, /metrics, a local tailer following, a topic delete, SIGTERM), and
/// then the other forms libc may use for the calls mapq's own code makes (data_group's chown
/// and chmod, the engine's fsync).
const SERVER_SYSCALLS: &str = "\
    accept4 access arch_prctl bind brk chmod chown clone3 close epoll_create1 epoll_ctl \
    epoll_wait eventfd2 execve exit exit_group fallocate fcntl flock fsync ftruncate futex \
    getdents64 getpid getrandom getsockname gettid ioctl listen lseek madvise mkdir mmap \
    mprotect msync munmap newfstatat openat poll prctl pread64 prlimit64 read readlinkat \
    recvfrom rename rseq rt_sigaction rt_sigprocmask rt_sigreturn sched_getaffinity sendto \
    set_robust_list set_tid_address setsockopt shutdown sigaltstack socket socketpair statx \
    umask unlink unlinkat write writev \
    fchown fchownat fchmod fchmodat fdatasync mkdirat renameat renameat2 epoll_pwait mremap";

#[test]
fn the_units_syscall_filter_allows_what_the_server_calls() {
    let unit = read("systemd/mapq.service");
    let groups = syscall_groups();
    let allows = filter_allows(&unit, &groups);
    // The evaluation itself: the unit does filter, and denies what it means to deny.
    assert!(!allows("reboot") && !allows("setuid") && !allows("init_module"));
    let denied: Vec<&str> = SERVER_SYSCALLS
        .split_whitespace()
        .filter(|s| !allows(s))
        .collect();
    assert!(
        denied.is_empty(),
        "the unit's SystemCallFilter refuses {denied:?}, which the server calls"
    );
    // data_group also sets the setgid bit on the data directory, which RestrictSUIDSGID
    // refuses (EPERM, and the server stops).
    for value in unit_settings(&unit, "RestrictSUIDSGID") {
        assert!(
            ["no", "false", "off", "0"].contains(&value),
            "RestrictSUIDSGID={value} refuses data_group's chmod 02750"
        );
    }
    // The group the unit runs as is the data group it documents: systemd re-owns the state
    // directory to User:Group at each start, undoing any other group.
    let group = unit_settings(&unit, "Group");
    assert_eq!(group.len(), 1);
    assert!(
        unit.contains(&format!("data_group = \"{}\"", group[0])),
        "the unit documents data_group = {:?}",
        group[0]
    );
    assert!(unit_settings(&unit, "DynamicUser")
        .iter()
        .all(|v| *v == "no"));
    assert_eq!(unit_settings(&unit, "StateDirectory"), ["mapq"]);
    assert!(unit.contains("install -D "), "install -D creates /etc/mapq");
}

#[test]
fn sysusers_creates_the_user_and_group_the_unit_runs_as() {
    let root = tempfile::tempdir().unwrap();
    let conf_dir = root.path().join("etc/sysusers.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::copy(
        deploy().join("systemd/mapq.sysusers.conf"),
        conf_dir.join("mapq.conf"),
    )
    .unwrap();
    // Into a scratch root: the host's users are not touched.
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .output()
        .expect("systemd-sysusers (Debian package systemd) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("ignoring") && !stderr.contains("Failed"),
        "systemd-sysusers: {stderr}"
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let unit = read("systemd/mapq.service");
    let (user, group_name) = (
        *unit_settings(&unit, "User")
            .first()
            .expect("the unit names User="),
        *unit_settings(&unit, "Group")
            .first()
            .expect("the unit names Group="),
    );
    let gid = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == group_name)
        .unwrap_or_else(|| panic!("no group {group_name}: {group}"))[2]
        .to_owned();
    let entry: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == user)
        .unwrap_or_else(|| panic!("no user {user}: {passwd}"));
    assert_eq!(entry[3], gid, "{user}'s group is {group_name}");
    assert_eq!(entry[5], "/var/lib/mapq");
}

/// The settings a cluster node of `deploy/` gets: `env` over the config file `config`.
fn cluster_node_config(config: &str, env: Vec<(String, String)>) -> mapq::config::Config {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mapq.toml");
    std::fs::write(&file, config).unwrap();
    let loaded = mapq::config::Config::load(Some(&file), env, &Default::default())
        .unwrap_or_else(|e| panic!("a cluster node's settings do not load: {e}"));
    assert!(loaded.cluster, "not a cluster node");
    assert!(!loaded.tokens.is_empty(), "tokens are off");
    assert!(
        !loaded.cluster_token.is_empty(),
        "no token to replicate with"
    );
    loaded
}

#[test]
fn the_cluster_files_make_three_distinct_nodes_of_one_cluster() {
    // Compose: three nodes and an etcd; each node's settings load, with its own id and
    // addresses, the same etcd, and the cluster token compose insists on.
    let mut compose = yaml_docs("docker-compose.cluster.yml").remove(0);
    // The nodes share their settings through YAML anchors and merge keys, as compose reads them.
    compose.apply_merge().unwrap();
    let compose = &compose;
    let services = compose["services"].as_mapping().unwrap();
    assert!(services.contains_key("etcd"));
    let mut ids = BTreeSet::new();
    for name in ["mapq-1", "mapq-2", "mapq-3"] {
        let s = &compose["services"][name];
        let command: Vec<&str> = s["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(command.contains(&"--cluster"), "{name}: {command:?}");
        let mut env: Vec<(String, String)> = s["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().unwrap();
                // Compose substitutes the exported secret; it refuses to start without it.
                let v = if v.starts_with("${MAPQ_CLUSTER_TOKEN:?") {
                    "the-secret"
                } else {
                    v
                };
                (k.as_str().unwrap().to_owned(), v.to_owned())
            })
            .collect();
        env.push(("MAPQ_CLUSTER".into(), "true".into()));
        let c = cluster_node_config(&read("mapq/mapq.toml"), env);
        assert_eq!(c.etcd_endpoints, vec!["http://etcd:2379"]);
        assert_eq!(c.advertised_http, format!("http://{name}:8080"));
        ids.insert(c.node_id);
    }
    assert_eq!(ids.len(), 3, "node ids must differ: {ids:?}");

    // Kubernetes: an etcd StatefulSet and three mapq pods named after themselves.
    let k8s = yaml_docs("kubernetes/mapq-cluster.yaml");
    let sets: Vec<&serde_yaml::Value> = k8s.iter().filter(|d| d["kind"] == "StatefulSet").collect();
    assert_eq!(sets.len(), 2);
    let mapq = sets
        .iter()
        .find(|s| s["metadata"]["name"] == "mapq")
        .unwrap();
    assert_eq!(mapq["spec"]["replicas"], 3);
    let settings = k8s.iter().find(|d| d["kind"] == "ConfigMap").unwrap()["data"]
        .as_mapping()
        .unwrap()
        .clone();
    let secret = k8s.iter().find(|d| d["kind"] == "Secret").unwrap()["stringData"]["mapq.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let container = &mapq["spec"]["template"]["spec"]["containers"][0];
    let mut ids = BTreeSet::new();
    for pod in ["mapq-0", "mapq-1", "mapq-2"] {
        let mut env: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
            .collect();
        for e in container["env"].as_sequence().unwrap() {
            let name = e["name"].as_str().unwrap();
            let value = match e["value"].as_str() {
                Some(v) => v.replace("$(POD_NAME)", pod),
                // From the Secret mapq-cluster-token (made by hand, step 2) or the pod.
                None => "from-a-secret".to_owned(),
            };
            env.push((name.to_owned(), value));
        }
        let c = cluster_node_config(&secret, env);
        assert_eq!(
            c.advertised_http,
            format!("http://{pod}.mapq-cluster-headless:8080")
        );
        ids.insert(c.node_id);
    }
    assert_eq!(ids.len(), 3, "node ids must differ: {ids:?}");
}
