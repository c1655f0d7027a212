//! The files in `deploy/` are checked, not just written: YAML and JSON parse, Prometheus
//! accepts the config and the rules (`promtool`, from PATH or unpacked from Debian's package
//! by `deploy/install-promtool.sh`), every metric the dashboard and the alerts use is one the server exports,
//! and the manifests carry the probes, volumes and hardening they promise.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::server::{commit_offset, get_text, post_json, Server};
use reqwest::Client;
use serde_json::json;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
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
    assert_eq!(kinds, ["Service", "Service", "StatefulSet"]);
    let sts = &k8s[2];
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        container["volumeMounts"][0]["name"]
    );
    assert_eq!(
        sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );

    let compose = &yaml_docs("docker-compose.yml")[0];
    for service in ["mapq", "prometheus", "grafana"] {
        assert!(
            compose["services"][service].is_mapping(),
            "compose has {service}"
        );
    }

    let dockerfile = read("Dockerfile");
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
    assert!(dockerfile.contains("USER mapq"), "runs as a non-root user");
    assert!(dockerfile.contains("VOLUME"));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/healthz"));

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
