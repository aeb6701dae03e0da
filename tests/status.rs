//! `cdc status` against real pipelines: healthy, lagging, inactive, slot missing.

use std::process::{Command, Output};

use crate::harness::{rows_text, Pipeline};
use crate::run::{start, wait_synced, FAST};

fn status(p: &Pipeline, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args(["--config", p.config_file().to_str().unwrap(), "status"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn status_reports_a_healthy_pipeline_field_by_field() {
    let p = Pipeline::new(
        "status_ok",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 42); CREATE TABLE other (id int PRIMARY KEY);",
        &format!("[[tables]]\nsource = \"public.t\"{FAST}"),
    )
    .await;
    let r = start(&p).await;
    p.src_sql
        .batch_execute("INSERT INTO t VALUES (100)")
        .await
        .unwrap();
    wait_synced(&p, "SELECT count(*)::text FROM t").await;
    // Someone added a table to the publication that the config does not list.
    p.src_sql
        .batch_execute(&format!("ALTER PUBLICATION \"{}\" ADD TABLE other", p.slot))
        .await
        .unwrap();
    let out = status(
        &p,
        &["--json", "--max-lag-bytes", "100000000", "--require-active"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["verdict"], "healthy");
    assert_eq!(j["slot"], p.slot.as_str());
    assert_eq!(j["slot_exists"], true);
    assert_eq!(j["slot_active"], true);
    assert!(j["slot_active_pid"].as_i64().unwrap() > 0);
    assert_eq!(j["wal_status"], "reserved");
    assert_eq!(j["snapshot_complete"], true);
    assert_eq!(j["tables"][0]["source"], "public.t");
    assert_eq!(j["tables"][0]["snapshot_rows"], 42);
    assert_eq!(j["publication_exists"], true);
    assert_eq!(j["publication_missing"], serde_json::json!([]));
    assert_eq!(j["publication_extra"], serde_json::json!(["public.other"]));
    // The pipeline keeps running, so the position can only have moved forward since.
    let reported: cdc::lsn::Lsn = j["applied_lsn"].as_str().unwrap().parse().unwrap();
    let now: cdc::lsn::Lsn = p.applied_lsn().await[0].parse().unwrap();
    assert!(
        !reported.is_invalid() && reported <= now,
        "{reported} vs {now}"
    );
    assert!(j["lag_bytes"].as_i64().unwrap() >= 0);
    assert!(j["retained_wal_bytes"].as_i64().unwrap() >= j["lag_bytes"].as_i64().unwrap());
    assert!(j["applied_commit_time"].is_string());
    r.stop().await;
}

#[tokio::test]
async fn status_exits_1_when_lagging_and_2_when_inactive_or_missing() {
    let p = Pipeline::new(
        "status_lag",
        "CREATE TABLE t (id int PRIMARY KEY);",
        &format!("[[tables]]\nsource = \"public.t\"{FAST}"),
    )
    .await;
    let r = start(&p).await;
    r.stop().await;
    // Writes while nothing consumes the slot.
    p.src_sql
        .batch_execute("INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    let out = status(&p, &["--max-lag-bytes", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("LAGGING: ") && text.contains("bytes of WAL behind (limit 1)"),
        "{text}"
    );
    assert!(text.contains("inactive"), "{text}");

    let out = status(&p, &["--require-active"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("is not being consumed"),
        "{}",
        stdout(&out)
    );

    p.src_sql
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{}')", p.slot))
        .await
        .unwrap();
    let out = status(&p, &["--json"]);
    assert_eq!(out.status.code(), Some(2));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["verdict"], "slot_problem");
    assert_eq!(j["slot_exists"], false);
    assert_eq!(
        rows_text(&p.src_sql, "SELECT count(*)::text FROM t").await,
        ["1000"],
        "status changes nothing"
    );
}

#[tokio::test]
async fn teardown_drops_slot_and_publication_only_when_confirmed() {
    let p = Pipeline::new(
        "teardown",
        "CREATE TABLE t (id int PRIMARY KEY);",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    cdc::snapshot::run(&p.config(), false).await.unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cdc"))
            .args(["--config", p.config_file().to_str().unwrap(), "teardown"])
            .args(args)
            .output()
            .unwrap()
    };
    let dry = run(&[]);
    assert!(dry.status.success());
    assert!(
        stdout(&dry).contains("would be dropped") && stdout(&dry).contains("nothing was changed"),
        "{}",
        stdout(&dry)
    );
    assert_eq!((p.slot_count().await, p.publication_count().await), (1, 1));
    let real = run(&["--yes"]);
    assert!(
        real.status.success(),
        "{}",
        String::from_utf8_lossy(&real.stderr)
    );
    assert_eq!(
        (p.slot_count().await, p.publication_count().await),
        (0, 0),
        "teardown leaves nothing pinning WAL"
    );
}

#[test]
fn init_writes_a_template_that_parses_and_never_overwrites_silently() {
    let dir = crate::harness::scratch().join(format!("cdc-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let _ = std::fs::remove_file(&path);
    let init = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cdc"))
            .args(["init", "--output", path.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(init(&[]).status.success());
    let text = std::fs::read_to_string(&path).unwrap();
    cdc::config::Config::from_toml(&text, &path, &crate::harness::NO_ENV)
        .expect("the template is a valid config");
    std::fs::write(&path, "mine").unwrap();
    let again = init(&[]);
    assert_eq!(
        again.status.code(),
        Some(cdc::cli::exit::USAGE),
        "an existing file is refused as a usage error"
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    assert!(init(&["--force"]).status.success());
}

#[tokio::test]
async fn an_update_that_cannot_be_written_whole_is_counted_and_never_filled_with_null() {
    // An update that leaves a TOAST value unchanged carries no value for it. If the row is
    // missing on the destination, the row cannot be written without inventing that value:
    // it must be counted (and logged), not inserted with NULL.
    let (p, port) = pipeline_serving_status(
        "missing_toast",
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text NOT NULL);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs VALUES (1, 'one', repeat('body one ', 2000)), (2, 'two', repeat('body two ', 2000));",
        "public.docs",
    )
    .await;
    let r = start(&p).await;
    p.dst_sql
        .batch_execute("DELETE FROM public.docs WHERE id = 2")
        .await
        .unwrap();
    p.src_sql
        .batch_execute("UPDATE docs SET title = title || '!'")
        .await
        .unwrap();
    let series = "cdc_rows_missing_on_destination_total";
    crate::harness::wait_for(
        "the missing row to be counted",
        std::time::Duration::from_secs(30),
        || async { counter(&http_get(port, "/metrics").await.1, series) == 1 },
    )
    .await;
    // The counter moves when the batch is written, before it commits: wait for the commit.
    crate::harness::wait_for(
        "the present row to be updated, the missing one not invented",
        std::time::Duration::from_secs(30),
        || async {
            rows_text(
                &p.dst_sql,
                "SELECT id || ' ' || title || ' ' || length(body) FROM public.docs ORDER BY id",
            )
            .await
                == ["1 one! 18000"]
        },
    )
    .await;
    r.stop().await;
}

/// A pipeline of one table whose `cdc run` serves /metrics and /healthz on a free port.
async fn pipeline_serving_status(prefix: &str, ddl: &str, table: &str) -> (Pipeline, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Pipeline::new(
        prefix,
        ddl,
        &format!("[[tables]]\nsource = \"{table}\"{FAST}"),
    )
    .await;
    let p = Pipeline {
        config_text: p
            .config_text
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
        ..p
    };
    (p, port)
}

async fn http_get(port: u16, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn metrics_count_exactly_the_rows_written_and_healthz_follows_the_stream() {
    let (p, port) = pipeline_serving_status(
        "metrics",
        "CREATE TABLE t (id int PRIMARY KEY, v int);",
        "public.t",
    )
    .await;
    let r = start(&p).await;
    crate::harness::wait_for(
        "healthz to report streaming",
        std::time::Duration::from_secs(30),
        || async { http_get(port, "/healthz").await.0.contains("200") },
    )
    .await;
    let (_, before) = http_get(port, "/metrics").await;
    p.src_sql
        .batch_execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 250) g; UPDATE t SET v = 1 WHERE id <= 40; DELETE FROM t WHERE id <= 5;")
        .await
        .unwrap();
    wait_synced(&p, "SELECT count(*)::text || ' ' || sum(v)::text FROM t").await;
    let (status, after) = http_get(port, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let delta = |s: &str| counter(&after, s) - counter(&before, s);
    assert_eq!(
        delta("cdc_rows_applied_total{table=\"public.t\",op=\"insert\"}"),
        250,
        "{after}"
    );
    assert_eq!(
        delta("cdc_rows_applied_total{table=\"public.t\",op=\"update\"}"),
        40
    );
    assert_eq!(
        delta("cdc_rows_applied_total{table=\"public.t\",op=\"delete\"}"),
        5
    );
    // One simple query with three statements is one implicit source transaction.
    assert_eq!(delta("cdc_transactions_applied_total"), 1);
    assert!(
        counter(&after, "cdc_batch_rows_count") >= 1 && counter(&after, "cdc_confirmed_lsn") > 0,
        "{after}"
    );
    assert_eq!(http_get(port, "/nope").await.0, "HTTP/1.1 404 Not Found");
    r.stop().await;
    // Stopped: nothing listens any more.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
}

#[tokio::test]
async fn tables_lists_what_can_be_replicated_and_why_not() {
    let p = Pipeline::new(
        "tables_cmd",
        "CREATE TABLE keyed (a int, b int, PRIMARY KEY (a, b)); CREATE TABLE bare (x int);
         CREATE TABLE full_rows (x int); ALTER TABLE full_rows REPLICA IDENTITY FULL; ANALYZE;",
        "[[tables]]\nsource = \"public.keyed\"",
    )
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args(["--config", p.config_file().to_str().unwrap(), "tables"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .to_owned()
    };
    let keyed = line("public.keyed ");
    assert!(
        keyed.contains("primary key (a, b)")
            && keyed.contains(" yes ")
            && keyed.ends_with("replicable"),
        "{keyed}"
    );
    let bare = line("public.bare ");
    assert!(
        bare.contains("NOT replicable: no primary key") && bare.contains(" no "),
        "{bare}"
    );
    assert!(
        line("public.full_rows ").contains("replica identity full"),
        "{text}"
    );
}

#[tokio::test]
async fn a_table_configured_after_the_snapshot_makes_status_unhealthy() {
    let mut p = Pipeline::new(
        "status_added",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);",
        &format!("[[tables]]\nsource = \"public.t\"{FAST}"),
    )
    .await;
    let r = start(&p).await;
    r.stop().await;
    assert_eq!(status(&p, &[]).status.code(), Some(0));
    p.config_text
        .push_str("\n[[tables]]\nsource = \"public.u\"\n");
    let out = status(&p, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("configured tables public.u are neither copied nor streamed"),
        "{}",
        stdout(&out)
    );
}
