//! `cdc run` as a process under faults: kill -9 at random moments, SIGTERM, a destination
//! outage, a source restart, a pgbench load, and a transaction larger than its memory.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{own_servers, rows_text, wait_for, Pipeline};
use crate::run::{start, wait_synced, FAST};

fn spawn_run(p: &Pipeline) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args([
            "--config",
            p.config_file().to_str().unwrap(),
            "--log-format",
            "json",
            "run",
        ])
        .env("CDC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cdc run")
}

/// A pseudo-random number of milliseconds in `lo..hi` (no RNG dependency needed).
fn random_ms(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + nanos % (hi - lo)
}

/// Peak resident memory of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn table_digest(table: &str) -> String {
    format!("SELECT count(*)::text || ' ' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {table} x")
}

#[tokio::test]
async fn killing_cdc_run_repeatedly_under_load_loses_and_duplicates_nothing() {
    let p = Pipeline::new(
        "fault_kill",
        "CREATE TABLE orders (id bigserial PRIMARY KEY, v int NOT NULL);
         CREATE TABLE events (n bigint, note text); ALTER TABLE events REPLICA IDENTITY FULL;
         INSERT INTO orders (v) SELECT 0 FROM generate_series(1, 1000);",
        &format!(
            "[[tables]]\nsource = \"public.orders\"\n[[tables]]\nsource = \"public.events\"{FAST}"
        ),
    )
    .await;
    let writer_db = p.src.clone();
    let writer = tokio::spawn(async move {
        let c = cdc::pg::connect(&writer_db).await.unwrap();
        let until = Instant::now() + Duration::from_secs(8);
        let mut n = 0i64;
        while Instant::now() < until {
            n += 1;
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO orders (v) VALUES ({n}); INSERT INTO events VALUES ({n}, 'e'), ({n}, 'e');
                 UPDATE orders SET v = v + 1 WHERE id = {}; COMMIT;",
                n % 1000 + 1
            ))
            .await
            .unwrap();
        }
        n
    });
    // kill -9 at random moments, including during the initial snapshot.
    let mut kills = 0;
    while !writer.is_finished() {
        let mut child = spawn_run(&p);
        tokio::time::sleep(Duration::from_millis(random_ms(300, 1500))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let written = writer.await.unwrap();
    assert!(
        kills >= 4 && written > 100,
        "{kills} kills, {written} transactions"
    );
    let mut child = spawn_run(&p);
    wait_synced(&p, &table_digest("orders")).await;
    wait_synced(&p, &table_digest("events")).await;
    child.kill().unwrap();
    child.wait().unwrap();
    // events has no key: a transaction applied twice would leave duplicate pairs.
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM events").await,
        [(written * 2).to_string()]
    );
}

#[tokio::test]
async fn sigterm_commits_what_it_has_and_exits_zero() {
    let p = Pipeline::new(
        "fault_term",
        "CREATE TABLE t (id int PRIMARY KEY);",
        &format!("[[tables]]\nsource = \"public.t\"{FAST}"),
    )
    .await;
    let mut child = spawn_run(&p);
    p.src_sql
        .batch_execute("INSERT INTO t SELECT generate_series(1, 500)")
        .await
        .unwrap();
    wait_synced(&p, "SELECT count(*)::text FROM t").await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    assert_eq!(code.code(), Some(0), "SIGTERM is a clean stop");
    assert_eq!(
        p.applied_lsn().await,
        p.confirmed_lsn().await,
        "what was committed was confirmed before exit"
    );
}

#[tokio::test]
async fn a_destination_outage_and_a_source_restart_are_survived() {
    let (source, destination) = own_servers().await;
    let p = Pipeline::on(
        &source,
        &destination,
        "fault_outage",
        "CREATE TABLE t (id int PRIMARY KEY, at timestamptz);",
        &format!("[[tables]]\nsource = \"public.t\"{FAST}"),
    )
    .await;
    let r = start(&p).await;
    // A writer that keeps going, retrying while the source is down.
    let writer_db = p.src.clone();
    let writer = tokio::spawn(async move {
        let mut c = cdc::pg::connect(&writer_db).await.unwrap();
        let (mut id, until) = (0, Instant::now() + Duration::from_secs(12));
        while Instant::now() < until {
            if c.batch_execute(&format!("INSERT INTO t VALUES ({}, now())", id + 1))
                .await
                .is_ok()
            {
                id += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(n) = cdc::pg::connect(&writer_db).await {
                    c = n;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        id
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    destination.stop_server(false).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    destination.start_server().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    source.stop_server(true).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    source.start_server().unwrap();
    let written = writer.await.unwrap();
    assert!(written > 100, "writer wrote {written}");
    // Fresh SQL connections: the old ones died with the restarts.
    let p = Pipeline {
        src_sql: cdc::pg::connect(&p.src).await.unwrap(),
        dst_sql: cdc::pg::connect(&p.dst).await.unwrap(),
        ..p
    };
    assert!(
        !r.task.is_finished(),
        "cdc run must recover by itself, not exit"
    );
    wait_synced(&p, &table_digest("t")).await;
    r.stop().await;
}

#[tokio::test]
async fn pgbench_during_snapshot_and_streaming_replicates_every_row() {
    let p = Pipeline::new(
        "fault_pgbench",
        "SELECT 1",
        &format!(
            "[[tables]]\nsource = \"public.pgbench_accounts\"\n[[tables]]\nsource = \"public.pgbench_branches\"\n\
             [[tables]]\nsource = \"public.pgbench_tellers\"\n[[tables]]\nsource = \"public.pgbench_history\"{FAST}"
        ),
    )
    .await;
    let pgbench = |args: &[&str]| p.pgbench(args);
    p.pgbench_init(1).await;
    // The load starts before the snapshot and runs on while streaming.
    let mut load = pgbench(&["-T", "8", "-c", "2", "-j", "1"]).spawn().unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let config = p.config();
    let task = tokio::spawn(async move { cdc::run::run(&config, shutdown).await });
    let exit = tokio::task::spawn_blocking(move || load.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "pgbench run failed");
    for table in [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ] {
        wait_synced(&p, &table_digest(table)).await;
    }
    let history: i64 = rows_text(&p.dst_sql, "SELECT count(*)::text FROM pgbench_history").await[0]
        .parse()
        .unwrap();
    assert!(history > 100, "the load wrote {history} history rows");
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_million_row_transaction_is_applied_with_bounded_memory() {
    let p = Pipeline::new(
        "fault_big",
        "CREATE TABLE big (id int PRIMARY KEY, v text);",
        "[[tables]]\nsource = \"public.big\"\n[apply]\nmax_memory_bytes = 16000000\nbatch_max_rows = 20000",
    )
    .await;
    let mut child = spawn_run(&p);
    p.wait_snapshot_complete().await;
    p.src_sql
        .batch_execute("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1000000) g")
        .await
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    wait_for(
        "the million rows on the destination",
        Duration::from_secs(300),
        || {
            peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
            async { rows_text(&p.dst_sql, "SELECT count(*)::text FROM big").await == ["1000000"] }
        },
    )
    .await;
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("1M-row transaction: peak RSS of cdc run {} KiB", peak);
    // Bound: 16 MB of buffered transaction, 20k-row batches and the runtime, with room to spare.
    assert!(
        peak > 0 && peak < 200 * 1024,
        "peak RSS {peak} KiB exceeds the 200 MiB bound"
    );
    wait_synced(&p, &table_digest("big")).await;
}
