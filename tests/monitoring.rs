//! The dashboard and alerting rules in `monitoring/` against what cdc really exposes: the
//! `/metrics` of a running `cdc run` and of `cdc sync --every` are captured, every series the
//! dashboard, the rules and the rules' tests name must be there with the same labels, and
//! Debian's `promtool` checks the rules and runs their tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{wait_for, Pipeline};
use crate::run::{start, wait_synced, FAST};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Series names of an exposition, each with the names of its labels.
fn series(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let head = line.rsplit_once(' ').map_or(line, |(h, _)| h);
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let names = labels
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_owned()))
            .filter(|k| k != "le");
        out.entry(name.to_owned()).or_default().extend(names);
    }
    out
}

/// Every `cdc_…` metric name in `text` (a rule, a query, a test's series).
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("cdc_") {
        let starts_word = i == 0
            || !rest.as_bytes()[i - 1].is_ascii_alphanumeric() && rest.as_bytes()[i - 1] != b'_';
        let end = rest[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(rest.len(), |e| i + e);
        if starts_word {
            out.insert(rest[i..end].to_owned());
        }
        rest = &rest[end..];
    }
    out
}

fn monitoring(file: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("monitoring")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    (path, text)
}

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian's `prometheus` package; .ci/run installs it)")
}

#[tokio::test]
async fn the_dashboard_and_alerts_read_what_cdc_really_exposes_and_promtool_passes_the_rules() {
    // `cdc run`, with changes applied and a status tick past (slot state, WAL retained).
    let run_port = free_port();
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v int);";
    let table = format!("[[tables]]\nsource = \"public.t\"{FAST}");
    let p = Pipeline::new("monitor", ddl, &table).await;
    let p = Pipeline {
        config_text: p
            .config_text
            .replace("127.0.0.1:0", &format!("127.0.0.1:{run_port}")),
        ..p
    };
    let r = start(&p).await;
    p.src_sql
        .batch_execute("INSERT INTO t SELECT g, g FROM generate_series(1, 100) g")
        .await
        .unwrap();
    wait_synced(&p, "SELECT count(*)::text FROM t").await;
    wait_for("the slot on /metrics", Duration::from_secs(60), || async {
        metrics(run_port).await.contains("cdc_slot_active{")
    })
    .await;
    let run = metrics(run_port).await;
    r.stop().await;

    // `cdc sync --every`, after a pass.
    let sync_port = free_port();
    let s = Pipeline::new(
        "monitor_sync",
        ddl,
        "[[tables]]\nsource = \"public.t\"\nstrategy = \"new_rows\"",
    )
    .await;
    s.src_sql
        .batch_execute("INSERT INTO t SELECT g, g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let config = s.config_file();
    std::fs::write(
        &config,
        s.config_text
            .replace("127.0.0.1:0", &format!("127.0.0.1:{sync_port}")),
    )
    .unwrap();
    let mut sync = Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "sync",
            "--every",
            "2s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "a sync pass on /metrics",
        Duration::from_secs(60),
        || async {
            metrics(sync_port)
                .await
                .contains("cdc_sync_passes_total{result=\"ok\"} ")
        },
    )
    .await;
    let synced = metrics(sync_port).await;
    let _ = sync.kill();
    let _ = sync.wait();
    assert!(
        synced
            .lines()
            .any(|l| l.starts_with("cdc_sync_rows_total ") && !l.ends_with(" 0")),
        "{synced}"
    );

    let mut exposed = series(&run);
    for (name, labels) in series(&synced) {
        exposed.entry(name).or_default().extend(labels);
    }
    let missing = |text: &str| -> Vec<String> {
        named(text)
            .into_iter()
            .filter(|n| !exposed.contains_key(n))
            .collect()
    };
    let (_, dashboard) = monitoring("grafana-cdc.json");
    let (rules_path, rules) = monitoring("cdc-alerts.yml");
    let (tests_path, tests) = monitoring("cdc-alerts.test.yml");
    for (what, text) in [
        ("dashboard", &dashboard),
        ("rules", &rules),
        ("rule tests", &tests),
    ] {
        assert!(named(text).len() >= 3, "{what} names cdc's metrics");
        assert_eq!(
            missing(text),
            Vec::<String>::new(),
            "{what} queries series cdc does not expose:\n{run}\n{synced}"
        );
    }
    for want in [
        "cdc_lag_bytes",
        "cdc_lag_seconds",
        "cdc_rows_applied_total",
        "cdc_batch_rows_bucket",
        "cdc_apply_seconds_bucket",
        "cdc_errors_total",
        "cdc_slot_active",
        "cdc_slot_wal_retained_bytes",
        "cdc_sync_passes_total",
    ] {
        assert!(
            named(&dashboard).contains(want),
            "the dashboard shows {want}"
        );
    }
    // The rules' test series carry the labels cdc gives them (plus Prometheus's own).
    for line in tests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- series: '"))
    {
        let given = series(line.trim_end_matches('\''));
        for (name, labels) in given {
            let Some(real) = exposed.get(&name) else {
                assert_eq!(name, "up", "only Prometheus's own series besides cdc's");
                continue;
            };
            let own: BTreeSet<String> = labels
                .into_iter()
                .filter(|l| l != "instance" && l != "job")
                .collect();
            assert_eq!(&own, real, "labels of {name} in the rule tests");
        }
    }

    let check = promtool(&["check", "rules", rules_path.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = promtool(&["test", "rules", tests_path.to_str().unwrap()]);
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn series_and_names_are_read_from_expositions_and_queries() {
    let s = series("# HELP x\ncdc_a{slot=\"s\",kind=\"k\"} 1\ncdc_b_bucket{le=\"1\"} 0\ncdc_c 3\n");
    assert_eq!(
        s["cdc_a"],
        BTreeSet::from(["kind".to_owned(), "slot".to_owned()])
    );
    assert!(s["cdc_b_bucket"].is_empty() && s.contains_key("cdc_c"));
    assert_eq!(
        named("rate(cdc_x_total{a=\"1\"}[5m]) / my_cdc_y + cdc_z"),
        BTreeSet::from(["cdc_x_total".to_owned(), "cdc_z".to_owned()])
    );
}
