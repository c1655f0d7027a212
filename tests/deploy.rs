//! The files in `deploy/` are checked, not just written: YAML and JSON parse, Prometheus
//! accepts the config and the rules and the rules pass their unit tests (`promtool`, from
//! PATH or unpacked from Debian's package by `deploy/install-promtool.sh`), every metric the
//! dashboard and the alerts use is one the server exports, `systemd-analyze verify` accepts the unit and its syscall filter allows
//! what the server calls, and the manifests carry the probes, volumes and hardening they
//! promise.

mod common;

use std::collections::{BTreeMap, BTreeSet};
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
        "prometheus/alerts_test.yml",
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
    for service in ["mapq", "prometheus", "blackbox", "grafana"] {
        assert!(
            compose["services"][service].is_mapping(),
            "compose has {service}"
        );
    }

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
