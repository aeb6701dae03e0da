//! `cdc sync` against real servers: each strategy over two passes with inserts, updates (equal
//! timestamps at the boundary), deletes and a key update between them, checking exactly what
//! each promises; diff's moving window; reload's swap under a concurrent reader; kill -9 inside
//! a pass; `--every` with SIGTERM and `--json`; bad input; Postgres and DuckDB destinations.

use std::process::Stdio;
use std::time::Duration;

use cdc::config::Strategy;
use cdc::sync::{Options, Summary};

use crate::duckdb::{cdc, duck_pipeline, read};
use crate::harness::{rows_text, wait_for, Pipeline};

const ITEMS: &str = "CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(10,2),
        updated_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00', code char(4) DEFAULT 'ab');
    CREATE INDEX ON items (updated_at);
    INSERT INTO items (id, name, price)
        SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 100) g;";

/// Every row of `table` on `client`, as text, in key order.
async fn all_rows(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    rows_text(client, &format!("SELECT t::text FROM {table} t ORDER BY 1")).await
}

async fn pass(p: &Pipeline, strategy: Option<Strategy>) -> Summary {
    let summary = cdc::sync::pass(
        &p.config(),
        &Options {
            strategy,
            jobs: 2,
            ..Options::default()
        },
    )
    .await
    .expect("sync pass");
    for t in &summary.tables {
        assert!(t.error.is_none(), "{} failed: {:?}", t.destination, t.error);
    }
    summary
}

/// Inserts, updates (one at the boundary timestamp), a delete and a key update.
async fn change(p: &Pipeline) {
    p.src_sql
        .batch_execute(
            "INSERT INTO items (id, name, price, updated_at) VALUES
                 (101, 'new', 1, '2024-01-02 00:00:00+00'), (102, 'new too', 2, '2024-01-01 00:00:00+00');
             UPDATE items SET price = 99, updated_at = '2024-01-03 00:00:00+00' WHERE id = 5;
             UPDATE items SET name = 'same time' WHERE id = 6;
             DELETE FROM items WHERE id = 7;
             UPDATE items SET id = 1000, updated_at = '2024-01-03 00:00:00+00' WHERE id = 8;",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn new_rows_brings_only_rows_above_the_highest_key() {
    let p = Pipeline::new(
        "sync_new",
        ITEMS,
        "[[tables]]\nsource = \"public.items\"\nstrategy = \"new_rows\"",
    )
    .await;
    let first = pass(&p, None).await;
    assert!(first.tables[0].full_copy, "a first pass is a full copy");
    assert_eq!(first.tables[0].rows_read, 100);
    assert_eq!(first.tables[0].position.as_deref(), Some("100"));
    change(&p).await;
    let second = pass(&p, None).await;
    let t = &second.tables[0];
    assert!(!t.full_copy);
    // 101, 102 and the moved key 1000: the keys above 100.
    assert_eq!((t.rows_read, t.inserted), (3, 3));
    assert_eq!(t.position.as_deref(), Some("1000"));
    let ids = rows_text(&p.dst_sql, "SELECT string_agg(id::text, ',' ORDER BY id) FROM items WHERE id > 99 OR id BETWEEN 5 AND 8").await;
    assert_eq!(
        ids,
        ["5,6,7,8,100,101,102,1000"],
        "old keys stay: new_rows sees no update or delete"
    );
    let price = rows_text(&p.dst_sql, "SELECT price::text FROM items WHERE id = 5").await;
    assert_eq!(
        price,
        ["7.50"],
        "an update of an old row is not new_rows' business"
    );
}

#[tokio::test]
async fn modified_rereads_the_boundary_value_and_upserts() {
    let p = Pipeline::new(
        "sync_mod",
        ITEMS,
        "[[tables]]\nsource = \"public.items\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"",
    )
    .await;
    let first = pass(&p, None).await;
    assert_eq!(
        first.tables[0].position.as_deref(),
        Some("2024-01-01 00:00:00+00")
    );
    change(&p).await;
    let second = pass(&p, None).await;
    let t = &second.tables[0];
    // Every row at or after the boundary: the 97 untouched rows share it (equal timestamps are
    // re-read), plus 101, 102 (at the boundary), 5, 1000.
    assert_eq!(t.rows_read, 101);
    assert_eq!(t.position.as_deref(), Some("2024-01-03 00:00:00+00"));
    let got = rows_text(&p.dst_sql, "SELECT id || ':' || name || ':' || price FROM items WHERE id IN (5, 6, 7, 8, 101, 102, 1000) ORDER BY id").await;
    assert_eq!(
        got,
        [
            "5:item 5:99.00",
            "6:same time:9.00",
            "7:item 7:10.50",
            "8:item 8:12.00",
            "101:new:1.00",
            "102:new too:2.00",
            "1000:item 8:12.00"
        ],
        "updates and inserts arrive; a delete and the old key of a moved row stay"
    );
    // A third pass reads only the rows at the new boundary.
    p.src_sql
        .batch_execute("INSERT INTO items (id, name, price, updated_at) VALUES (103, 'same instant', 3, '2024-01-03 00:00:00+00')")
        .await
        .unwrap();
    let third = pass(&p, None).await;
    assert_eq!(
        third.tables[0].rows_read, 3,
        "5, 1000 and 103 share the boundary"
    );
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT name FROM items WHERE id = 103").await,
        ["same instant"]
    );
}

#[tokio::test]
async fn xmin_reads_only_rows_written_since_the_last_pass() {
    // A source server of its own: the xmin horizon is the oldest transaction open anywhere on
    // the server, so another test's transaction (on the shared server) would rightly make the
    // third pass re-read the second pass's rows, and this test could not say "nothing new".
    let source = tokio::task::spawn_blocking(|| {
        cdc::local_pg::LocalPostgres::start(&cdc::local_pg::Options::default()).unwrap()
    })
    .await
    .unwrap();
    let p = Pipeline::on(
        &source,
        &crate::harness::servers().destination,
        "sync_xmin",
        ITEMS,
        "[[tables]]\nsource = \"public.items\"\nstrategy = \"xmin\"",
    )
    .await;
    let first = pass(&p, None).await;
    assert!(first.tables[0].position.is_some());
    change(&p).await;
    let second = pass(&p, None).await;
    let t = &second.tables[0];
    // 101, 102, 5, 6 and the moved row 1000.
    assert_eq!(
        t.rows_read, 5,
        "only rows written after the first pass are read"
    );
    assert_eq!(
        rows_text(
            &p.dst_sql,
            "SELECT id || ':' || name FROM items WHERE id IN (5, 6, 7, 8, 1000) ORDER BY id"
        )
        .await,
        [
            "5:item 5",
            "6:same time",
            "7:item 7",
            "8:item 8",
            "1000:item 8"
        ]
    );
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT price::text FROM items WHERE id = 5").await,
        ["99.00"]
    );
    let third = pass(&p, None).await;
    assert_eq!(third.tables[0].rows_read, 0, "nothing written since");
}

#[tokio::test]
async fn diff_leaves_the_destination_identical() {
    let p = Pipeline::new("sync_diff", ITEMS, "[[tables]]\nsource = \"public.items\"").await;
    let first = pass(&p, None).await;
    assert_eq!(
        first.tables[0].strategy, "diff",
        "the default for a table with a key"
    );
    change(&p).await;
    let second = pass(&p, None).await;
    let t = &second.tables[0];
    // Missing: 101, 102, 1000; different: 5, 6; extra: 7, 8.
    assert_eq!((t.inserted, t.updated, t.deleted), (3, 2, 2));
    assert_eq!(
        all_rows(&p.src_sql, "items").await,
        all_rows(&p.dst_sql, "items").await
    );
    let third = pass(&p, None).await;
    assert_eq!(
        (
            third.tables[0].inserted,
            third.tables[0].updated,
            third.tables[0].deleted
        ),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn diff_in_several_rounds_when_more_rows_differ_than_a_batch() {
    let p = Pipeline::new(
        "sync_diff_big",
        ITEMS,
        "[[tables]]\nsource = \"public.items\"\n[apply]\nbatch_max_rows = 7",
    )
    .await;
    pass(&p, None).await;
    p.src_sql
        .batch_execute("UPDATE items SET price = price + 1 WHERE id % 3 = 0; DELETE FROM items WHERE id % 10 = 1;
                        INSERT INTO items (id, name) SELECT g, 'more' FROM generate_series(200, 230) g")
        .await
        .unwrap();
    let t = pass(&p, None).await.tables.remove(0);
    assert_eq!((t.inserted, t.updated, t.deleted), (31, 30, 10));
    assert_eq!(
        all_rows(&p.src_sql, "items").await,
        all_rows(&p.dst_sql, "items").await
    );
}

#[tokio::test]
async fn diff_keeps_exactly_a_moving_window() {
    let p = Pipeline::new(
        "sync_window",
        "CREATE TABLE lo (d date); INSERT INTO lo VALUES ('2024-01-05');
         CREATE TABLE visits (id int PRIMARY KEY, d date NOT NULL);
         INSERT INTO visits SELECT g, date '2024-01-01' + g FROM generate_series(0, 9) g;",
        "[[tables]]\nsource = \"public.visits\"\nwhere = \"d >= (SELECT d FROM public.lo)\"",
    )
    .await;
    pass(&p, None).await;
    let days = |c| async move {
        rows_text(
            c,
            "SELECT string_agg(extract(day FROM d)::text, ',' ORDER BY d) FROM visits",
        )
        .await
    };
    assert_eq!(days(&p.dst_sql).await, ["5,6,7,8,9,10"]);
    p.src_sql
        .batch_execute("UPDATE lo SET d = '2024-01-08'; INSERT INTO visits VALUES (10, '2024-01-11'), (11, '2024-01-02')")
        .await
        .unwrap();
    let t = pass(&p, None).await.tables.remove(0);
    assert_eq!((t.inserted, t.deleted), (1, 3));
    assert_eq!(
        days(&p.dst_sql).await,
        ["8,9,10,11"],
        "rows that left the window are gone"
    );
}

#[tokio::test]
async fn reload_swaps_the_table_in_while_readers_read() {
    let p = Pipeline::new(
        "sync_reload",
        "CREATE TABLE big (id int PRIMARY KEY, v text); CREATE INDEX big_v ON big (v);
         INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
        "[[tables]]\nsource = \"public.big\"\nstrategy = \"reload\"",
    )
    .await;
    pass(&p, None).await;
    let reader = cdc::pg::connect(&p.dst).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = reader
                    .query_one("SELECT count(*) FROM big", &[])
                    .await
                    .unwrap()
                    .get(0);
                seen.push(n);
            }
            seen
        })
    };
    for _ in 0..3 {
        let t = pass(&p, None).await.tables.remove(0);
        assert!(t.full_copy);
        assert_eq!(t.rows_read, 20000);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    assert!(seen.len() > 3, "the reader ran during the reloads");
    assert!(
        seen.iter().all(|&n| n == 20000),
        "a reader saw a partial table: {seen:?}"
    );
    // The key and the index moved with the table; no staging table is left.
    let idx = rows_text(&p.dst_sql, "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'big'").await;
    assert_eq!(idx, ["big_pkey,big_v"]);
    let left = rows_text(
        &p.dst_sql,
        "SELECT count(*)::text FROM pg_tables WHERE schemaname LIKE 'cdc_reload%'",
    )
    .await;
    assert_eq!(left, ["0"]);
}

#[tokio::test]
async fn a_keyless_table_is_reloaded_by_default_and_skip_skips() {
    let p = Pipeline::new(
        "sync_keyless",
        "CREATE TABLE log (msg text); INSERT INTO log VALUES ('a'), ('a'), ('b');
         CREATE TABLE ignored (id int PRIMARY KEY);",
        "[[tables]]\nsource = \"public.log\"\n[[tables]]\nsource = \"public.ignored\"\nstrategy = \"skip\"",
    )
    .await;
    pass(&p, None).await;
    p.src_sql
        .batch_execute("DELETE FROM log WHERE msg = 'b'; INSERT INTO log VALUES ('c')")
        .await
        .unwrap();
    let s = pass(&p, None).await;
    assert_eq!(s.tables[0].strategy, "reload");
    assert_eq!(s.tables[1].strategy, "skip");
    assert_eq!(all_rows(&p.dst_sql, "log").await, ["(a)", "(a)", "(c)"]);
    let exists = rows_text(
        &p.dst_sql,
        "SELECT (to_regclass('public.ignored') IS NOT NULL)::text",
    )
    .await;
    assert_eq!(exists, ["false"]);
}

/// The xmin strategy's window starts at the oldest transaction still running when a pass
/// reads: a long one of another test on the shared server would put the rows of `table` inside
/// the next window. Wait until every transaction older than them has ended.
pub(crate) async fn wait_for_older_transactions(p: &Pipeline, table: &str) {
    let sql = format!(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint
            > (SELECT max(xmin::text::bigint) FROM {table})"
    );
    crate::harness::wait_for(
        "older transactions to end",
        Duration::from_secs(300),
        || async {
            p.src_sql
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, bool>(0)
        },
    )
    .await;
}

#[tokio::test]
async fn into_duckdb_every_strategy_keeps_its_promise() {
    let ddl = format!(
        "{ITEMS} CREATE TABLE d_items AS SELECT * FROM items; ALTER TABLE d_items ADD PRIMARY KEY (id);
         CREATE TABLE x_items AS SELECT * FROM items; ALTER TABLE x_items ADD PRIMARY KEY (id);
         CREATE TABLE r_items AS SELECT * FROM items;"
    );
    let (p, file) = duck_pipeline(
        "sync_duck",
        &ddl,
        "[[tables]]\nsource = \"public.items\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"
[[tables]]\nsource = \"public.d_items\"
[[tables]]\nsource = \"public.x_items\"\nstrategy = \"xmin\"
[[tables]]\nsource = \"public.r_items\"",
    )
    .await;
    wait_for_older_transactions(&p, "x_items").await;
    pass(&p, None).await;
    for t in ["items", "d_items", "x_items", "r_items"] {
        p.src_sql
            .batch_execute(&format!(
                "INSERT INTO {t} (id, name, price, updated_at) VALUES (101, 'new', 1, '2024-01-02 00:00:00+00');
                 UPDATE {t} SET price = 99, updated_at = '2024-01-03 00:00:00+00' WHERE id = 5;
                 DELETE FROM {t} WHERE id = 7;
                 UPDATE {t} SET id = 1000, updated_at = '2024-01-03 00:00:00+00' WHERE id = 8;"
            ))
            .await
            .unwrap();
    }
    let s = pass(&p, None).await;
    let by = |name: &str| {
        s.tables
            .iter()
            .find(|t| t.destination.ends_with(name))
            .unwrap()
            .clone()
    };
    assert_eq!(
        by(".items").rows_read,
        100,
        "97 at the boundary + 101, 5, 1000"
    );
    assert_eq!(by(".x_items").rows_read, 3);
    let d = by(".d_items");
    assert_eq!((d.inserted, d.updated, d.deleted), (2, 1, 2));
    assert!(by(".r_items").full_copy, "a keyless table is reloaded");
    let q = |t: &str| {
        format!("SELECT id::VARCHAR, name, price::VARCHAR, strftime(updated_at::TIMESTAMP, '%Y-%m-%d') FROM public.{t} WHERE id IN (5, 7, 8, 101, 1000) ORDER BY id")
    };
    let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let upserted = vec![
        r(&["5", "item 5", "99.00", "2024-01-03"]),
        r(&["7", "item 7", "10.50", "2024-01-01"]),
        r(&["8", "item 8", "12.00", "2024-01-01"]),
        r(&["101", "new", "1.00", "2024-01-02"]),
        r(&["1000", "item 8", "12.00", "2024-01-03"]),
    ];
    assert_eq!(read(&file, &q("items")).unwrap(), upserted);
    assert_eq!(read(&file, &q("x_items")).unwrap(), upserted);
    let exact = vec![
        r(&["5", "item 5", "99.00", "2024-01-03"]),
        r(&["101", "new", "1.00", "2024-01-02"]),
        r(&["1000", "item 8", "12.00", "2024-01-03"]),
    ];
    assert_eq!(read(&file, &q("d_items")).unwrap(), exact);
    assert_eq!(read(&file, &q("r_items")).unwrap(), exact);
    // char(n) keeps its padding whichever way a row came (a cast to text would trim it).
    for t in ["items", "d_items", "x_items", "r_items"] {
        let lengths = read(
            &file,
            &format!(
                "SELECT DISTINCT length(code)::VARCHAR FROM public.{t} WHERE code IS NOT NULL"
            ),
        )
        .unwrap();
        assert_eq!(lengths, vec![r(&["4"])], "{t}");
    }
    // The staging table of the reload is gone, and the state is in the file.
    let tables = read(&file, "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM duckdb_tables() WHERE schema_name = 'public'").unwrap();
    assert_eq!(tables, vec![r(&["d_items,items,r_items,x_items"])]);
    let state = read(
        &file,
        "SELECT strategy, position FROM cdc.sync_tables WHERE destination_table = 'public.items'",
    )
    .unwrap();
    assert_eq!(state, vec![r(&["modified", "2024-01-03 00:00:00+00"])]);
}

fn sync_cmd(p: &Pipeline, args: &[&str]) -> std::process::Command {
    let mut c = cdc(p, args);
    c.env("CDC_LOG", "error");
    c
}

#[tokio::test]
async fn every_repeats_passes_until_sigterm_and_json_summarises_each() {
    let p = Pipeline::new("sync_every", ITEMS, "[[tables]]\nsource = \"public.items\"").await;
    let mut child = sync_cmd(&p, &["sync", "--every", "1s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a pass summary within 30 s")
        .expect("cdc sync still running");
    let first: serde_json::Value = serde_json::from_str(&line).unwrap();
    let t = &first["tables"][0];
    assert_eq!(t["destination"], "public.items");
    assert_eq!(t["strategy"], "diff");
    assert_eq!(t["full_copy"], true);
    assert_eq!(t["rows_read"], 100);
    p.src_sql
        .batch_execute("DELETE FROM items WHERE id = 1")
        .await
        .unwrap();
    // Some pass after the delete removes the row.
    wait_for(
        "the next pass to delete the row",
        Duration::from_secs(30),
        || async { rows_text(&p.dst_sql, "SELECT count(*)::text FROM items").await == ["99"] },
    )
    .await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "cdc sync did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code.code(), Some(0), "SIGTERM is a clean stop");
}

#[tokio::test]
async fn a_failed_table_is_named_and_the_others_still_sync() {
    let p = Pipeline::new(
        "sync_fail",
        &format!("{ITEMS} CREATE TABLE pairs (a int, b int, PRIMARY KEY (a, b)); INSERT INTO pairs VALUES (1, 2);"),
        "[[tables]]\nsource = \"public.items\"\n[[tables]]\nsource = \"public.pairs\"\nstrategy = \"new_rows\"",
    )
    .await;
    let out = sync_cmd(&p, &["sync", "--jobs", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("public.pairs")
            && stderr.contains("single-column key")
            && stderr.contains("modified"),
        "{stderr}"
    );
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM items").await,
        ["100"]
    );
    // Every table failing with a definite problem: 65.
    let out = sync_cmd(&p, &["sync", "public.pairs"]).output().unwrap();
    assert_eq!(out.status.code(), Some(65));
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let p = Pipeline::new(
        "sync_bad",
        &format!("{ITEMS} CREATE TABLE log (msg text);"),
        "[[tables]]\nsource = \"public.items\"\n[[tables]]\nsource = \"public.log\"",
    )
    .await;
    // Configuration: unknown strategy, modified without its column.
    let bad = |extra: &str| {
        let text = p.config_text.replace(
            "source = \"public.items\"",
            &format!("source = \"public.items\"\n{extra}"),
        );
        let path = crate::harness::scratch().join(format!("{}_bad.toml", p.slot));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc"))
            .args(["--config", path.to_str().unwrap(), "sync", "public.items"])
            .env("CDC_LOG", "error")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = bad("strategy = \"newest\"");
    assert_eq!(code, Some(78));
    assert!(err.contains("newest") && err.contains("new_rows"), "{err}");
    let (code, err) = bad("strategy = \"modified\"");
    assert_eq!(code, Some(78));
    assert!(err.contains("modified_column"), "{err}");
    let (code, err) = bad("strategy = \"modified\"\nmodified_column = \"nope\"");
    assert_eq!(code, Some(65));
    assert!(err.contains("\"nope\" is not a column"), "{err}");
    let (code, err) = bad("where = \"price >>> 1\"");
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("public.items"), "{err}");
    // A keyless table cannot be diffed.
    let out = sync_cmd(&p, &["sync", "public.log", "--strategy", "diff"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no primary key") && err.contains("reload"),
        "{err}"
    );
    // A destination table changed by hand: the columns are named, nothing is written.
    assert_eq!(
        sync_cmd(&p, &["sync"]).output().unwrap().status.code(),
        Some(0)
    );
    p.dst_sql
        .batch_execute("ALTER TABLE items ADD COLUMN note text; ALTER TABLE items DROP COLUMN name")
        .await
        .unwrap();
    p.src_sql
        .batch_execute("UPDATE items SET price = 0 WHERE id = 1")
        .await
        .unwrap();
    let out = sync_cmd(&p, &["sync", "public.items"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("only in the source: [name]")
            && err.contains("only in the destination: [note]"),
        "{err}"
    );
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT price::text FROM items WHERE id = 1").await,
        ["1.50"]
    );
}

#[tokio::test]
async fn verify_repair_fixes_a_streamed_pipeline_and_sync_refuses_its_tables() {
    let p = Pipeline::new(
        "sync_repair",
        ITEMS,
        "[[tables]]\nsource = \"public.items\"",
    )
    .await;
    let out = sync_cmd(&p, &["snapshot"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // While the slot exists the table belongs to `cdc run`.
    let out = sync_cmd(&p, &["sync"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("streamed by `cdc run`"), "{err}");
    // An incident: rows lost, changed and invented on the destination.
    p.dst_sql
        .batch_execute(
            "DELETE FROM items WHERE id IN (1, 2); UPDATE items SET name = 'oops' WHERE id = 3;
                        INSERT INTO items (id, name, updated_at) VALUES (500, 'ghost', now())",
        )
        .await
        .unwrap();
    let out = sync_cmd(&p, &["verify", "--repair", "--recheck-after-ms", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "differences were found: {stdout}"
    );
    assert!(
        stdout.contains("Repaired public.items: 2 inserted, 1 updated, 1 deleted"),
        "{stdout}"
    );
    assert_eq!(
        all_rows(&p.src_sql, "items").await,
        all_rows(&p.dst_sql, "items").await
    );
    let out = sync_cmd(&p, &["verify", "--recheck-after-ms", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // Without the slot, sync may take the table over.
    let out = sync_cmd(&p, &["teardown", "--yes"]).output().unwrap();
    assert!(out.status.success());
    let out = sync_cmd(&p, &["sync"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn reload_and_tables_destination_commands() {
    let p = Pipeline::new(
        "sync_cmds",
        &format!("{ITEMS} CREATE TABLE other (id int PRIMARY KEY);"),
        "[[tables]]\nsource = \"public.items\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"\n[[tables]]\nsource = \"public.other\"",
    )
    .await;
    let out = sync_cmd(&p, &["tables", "--destination"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("public.items") && text.contains("(missing)") && text.contains("never"),
        "{text}"
    );
    let out = sync_cmd(&p, &["reload", "public.items"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("reload*") && text.contains("100"), "{text}");
    assert_eq!(
        rows_text(
            &p.dst_sql,
            "SELECT (to_regclass('public.other') IS NULL)::text"
        )
        .await,
        ["true"],
        "only the named table"
    );
    let out = sync_cmd(&p, &["tables", "--destination"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("public.items"))
        .unwrap();
    assert!(
        line.contains(" 100 ")
            && line.contains("modified")
            && line.contains("MiB")
            && line.contains("2024-01-01 00:00:00+00 (100 rows"),
        "{line}"
    );
    assert!(!text
        .lines()
        .find(|l| l.starts_with("public.other"))
        .unwrap()
        .contains("MiB"));
    let out = sync_cmd(&p, &["reload"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "reload needs table names");
}

#[tokio::test]
async fn extract_then_load_moves_a_table_through_files() {
    let ddl =
        "CREATE TABLE notes (id int PRIMARY KEY, body text, at timestamptz, tags text[], n numeric,
                   updated_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00');
        INSERT INTO notes (id, body, at, tags, n) VALUES
            (1, '', '2021-06-16 20:14:09.221838+00', '{a,\"b c\"}', 1.50),
            (2, NULL, NULL, NULL, NULL),
            (3, E'line\\nbreak, \"quoted\" and é', '2020-01-01 00:00:00+00', '{}', -0.000001);";
    let tables = "[[tables]]\nsource = \"public.notes\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"";
    let a = Pipeline::new("sync_extract", ddl, tables).await;
    let dir = crate::harness::scratch().join(crate::harness::unique("cdc-extract"));
    let out = sync_cmd(
        &a,
        &["extract", "public.notes", "--to", dir.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Wrote 3 rows"));
    let csv = std::fs::read_to_string(dir.join("public.notes.csv")).unwrap();
    assert!(
        csv.starts_with(
            "id,body,at,tags,n,updated_at\n\"1\",\"\",\"2021-06-16 20:14:09.221838+00\""
        ),
        "{csv}"
    );
    assert!(
        csv.contains("\n\"2\",,,,,"),
        "NULL is an unquoted empty field: {csv}"
    );
    // Loaded into another destination (the air gap), twice: the same rows, no duplicates.
    let b = Pipeline::new("sync_load", "SELECT 1", tables).await;
    for _ in 0..2 {
        let out = sync_cmd(
            &b,
            &["load", "public.notes", "--from", dir.to_str().unwrap()],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        all_rows(&a.src_sql, "notes").await,
        all_rows(&b.dst_sql, "notes").await
    );
    // A delta: what the next `modified` pass would move.
    assert_eq!(
        sync_cmd(&a, &["sync"]).output().unwrap().status.code(),
        Some(0)
    );
    a.src_sql
        .batch_execute(
            "UPDATE notes SET body = 'changed', updated_at = '2024-02-01 00:00:00+00' WHERE id = 2",
        )
        .await
        .unwrap();
    let out = sync_cmd(
        &a,
        &[
            "extract",
            "public.notes",
            "--to",
            dir.to_str().unwrap(),
            "--delta",
        ],
    )
    .output()
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Wrote 3 rows"),
        "boundary rows are re-read"
    );
    let out = sync_cmd(
        &b,
        &["load", "public.notes", "--from", dir.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    assert_eq!(
        rows_text(&b.dst_sql, "SELECT body FROM notes WHERE id = 2").await,
        ["changed"]
    );
    // A missing schema file means an incomplete extract.
    std::fs::remove_file(dir.join("public.notes.schema.json")).unwrap();
    let out = sync_cmd(
        &b,
        &["load", "public.notes", "--from", dir.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("incomplete"));
}

#[tokio::test]
async fn sync_reads_from_a_hot_standby() {
    use cdc::local_pg::{LocalPostgres, Options as PgOptions};
    let primary = tokio::task::spawn_blocking(|| LocalPostgres::start(&PgOptions::default()))
        .await
        .unwrap()
        .expect("primary");
    let admin = cdc::pg::connect(&primary.conninfo("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("{ITEMS} CREATE TABLE items2 AS SELECT * FROM items; ALTER TABLE items2 ADD PRIMARY KEY (id);"))
        .await
        .unwrap();
    let primary = std::sync::Arc::new(primary);
    let standby = {
        let primary = primary.clone();
        tokio::task::spawn_blocking(move || LocalPostgres::start_standby(&primary))
            .await
            .unwrap()
            .expect("standby")
    };
    let replica = cdc::pg::connect(&standby.conninfo("postgres"))
        .await
        .unwrap();
    let in_recovery = rows_text(&replica, "SELECT pg_is_in_recovery()::text").await;
    assert_eq!(in_recovery, ["true"]);
    let mut p = Pipeline::new("sync_standby", "SELECT 1", "").await;
    let dst = p
        .config_text
        .split("[destination]")
        .nth(1)
        .unwrap()
        .to_owned();
    p.config_text = format!(
        "[source]\nurl = {:?}\n[destination]{dst}\n[[tables]]\nsource = \"public.items\"\n[[tables]]\nsource = \"public.items2\"\nstrategy = \"xmin\"\n",
        standby.url("postgres")
    );
    let wait_replayed = || async {
        let lsn: String = admin
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        wait_for("the standby to replay", Duration::from_secs(30), || async {
            replica
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&lsn],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        })
        .await;
    };
    wait_replayed().await;
    pass(&p, None).await;
    admin
        .batch_execute("DELETE FROM items WHERE id = 1; UPDATE items SET name = 'on the primary' WHERE id = 2; INSERT INTO items (id) VALUES (300);
                        UPDATE items2 SET name = 'on the primary' WHERE id = 2; INSERT INTO items2 (id, updated_at) VALUES (300, now())")
        .await
        .unwrap();
    wait_replayed().await;
    let s = pass(&p, None).await;
    assert_eq!(
        (
            s.tables[0].inserted,
            s.tables[0].updated,
            s.tables[0].deleted
        ),
        (1, 1, 1)
    );
    assert_eq!(s.tables[1].rows_read, 2, "xmin works on a standby too");
    assert_eq!(
        all_rows(&admin, "items").await,
        all_rows(&p.dst_sql, "items").await
    );
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT name FROM items2 WHERE id = 2").await,
        ["on the primary"]
    );
    drop(standby);
}

/// Kill `cdc sync` with SIGKILL as soon as `moment` holds.
pub(crate) async fn kill_when<F, Fut>(p: &Pipeline, args: &[&str], what: &str, moment: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut child = sync_cmd(p, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(what, Duration::from_secs(60), moment).await;
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        None,
        "killed by a signal, not finished before it"
    );
}

#[tokio::test]
async fn kill_9_inside_a_pass_then_a_clean_rerun_is_identical() {
    let p = Pipeline::new(
        "sync_kill",
        "CREATE TABLE t (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL DEFAULT '2024-01-01');
         CREATE INDEX ON t (updated_at);
         INSERT INTO t (id, v) SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 60000) g;
         CREATE TABLE u AS SELECT * FROM t; ALTER TABLE u ADD PRIMARY KEY (id);",
        "[[tables]]\nsource = \"public.t\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"
[[tables]]\nsource = \"public.u\"\n[apply]\nbatch_max_rows = 500\n[snapshot]\njobs = 2",
    )
    .await;
    // Inside the first pass's copy: the staging table exists, nothing is swapped in yet.
    kill_when(&p, &["sync", "public.t"], "the copy to start", || async {
        rows_text(
            &p.dst_sql,
            "SELECT count(*)::text FROM pg_tables WHERE schemaname = 'cdc_reload_public'",
        )
        .await
            == ["1"]
    })
    .await;
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT (to_regclass('public.t') IS NULL)::text").await,
        ["true"],
        "no half table is visible"
    );
    assert!(sync_cmd(&p, &["sync"]).status().unwrap().success());
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM t").await,
        ["60000"]
    );
    // Inside an incremental pass and a diff repair: some batches committed, the rest not.
    p.src_sql
        .batch_execute("UPDATE t SET v = 'changed', updated_at = '2024-02-01' WHERE id % 3 = 0;
                        UPDATE u SET v = 'changed' WHERE id % 3 = 0; DELETE FROM u WHERE id % 7 = 0;")
        .await
        .unwrap();
    // `t` is a `modified` pass, `u` a diff repair.
    for table in ["t", "u"] {
        let args = ["sync".to_owned(), format!("public.{table}")];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kill_when(&p, &args, "some batches of the pass", || async {
            let n: i64 = p
                .dst_sql
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE v = 'changed'"),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n > 0
        })
        .await;
    }
    assert!(sync_cmd(&p, &["sync"]).status().unwrap().success());
    for table in ["t", "u"] {
        let sum = |c| async move {
            rows_text(
                c,
                &format!("SELECT count(*) || ':' || sum(hashtext(x::text)::bigint) FROM {table} x"),
            )
            .await
        };
        assert_eq!(sum(&p.src_sql).await, sum(&p.dst_sql).await, "{table}");
    }
}

#[tokio::test]
async fn reload_on_today_reloads_and_keeps_the_position_of_the_strategy() {
    // Today's weekday, as `reload_on` spells it (UTC).
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let today = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"][(days % 7) as usize];
    let p = Pipeline::new(
        "sync_reload_on",
        ITEMS,
        &format!("[[tables]]\nsource = \"public.items\"\nstrategy = \"new_rows\"\nreload_on = [{today:?}]"),
    )
    .await;
    pass(&p, None).await;
    p.src_sql.batch_execute("UPDATE items SET name = 'seen by a reload' WHERE id = 1; INSERT INTO items (id) VALUES (150)").await.unwrap();
    let t = pass(&p, None).await.tables.remove(0);
    assert!(t.full_copy && t.strategy == "reload", "{t:?}");
    assert_eq!(
        t.position.as_deref(),
        Some("150"),
        "new_rows goes on from the reload"
    );
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT name FROM items WHERE id = 1").await,
        ["seen by a reload"]
    );
    // `--strategy` for one run wins over reload_on.
    let t = pass(&p, Some(Strategy::NewRows)).await.tables.remove(0);
    assert!(!t.full_copy && t.rows_read == 0);
}

#[tokio::test]
async fn a_duckdb_file_named_like_a_schema_works() {
    // DuckDB names the database after the file: in `cdc.duckdb`, `cdc.pipeline` could mean
    // table `pipeline` of database `cdc` or of schema `cdc`, and DuckDB refuses to guess.
    let (mut p, file) = duck_pipeline(
        "sync_duck_name",
        ITEMS,
        "[[tables]]\nsource = \"public.items\"\ndestination = \"cdc.items\"",
    )
    .await;
    let named = file.with_file_name("cdc.duckdb");
    p.config_text = p
        .config_text
        .replace(file.to_str().unwrap(), named.to_str().unwrap());
    pass(&p, None).await;
    p.src_sql
        .batch_execute("DELETE FROM items WHERE id = 3")
        .await
        .unwrap();
    let t = pass(&p, None).await.tables.remove(0);
    assert_eq!(t.deleted, 1);
    let n = read(&named, "SELECT count(*)::VARCHAR FROM cdc.cdc.items").unwrap();
    assert_eq!(n, vec![vec!["99".to_string()]]);
}

#[tokio::test]
async fn diff_finds_changes_scattered_over_many_ranges() {
    // Differences in hundreds of small key ranges: their rows are fetched many ranges per
    // query (one query per range would cost a round trip each).
    let p = Pipeline::new(
        "sync_scatter",
        "CREATE TABLE s (id int PRIMARY KEY, v text);
         INSERT INTO s SELECT g, md5(g::text) FROM generate_series(1, 30000) g;",
        "[[tables]]\nsource = \"public.s\"",
    )
    .await;
    pass(&p, None).await;
    p.src_sql
        .batch_execute(
            "UPDATE s SET v = 'changed' WHERE id % 97 = 0; DELETE FROM s WHERE id % 389 = 1;
                        INSERT INTO s SELECT g, 'new' FROM generate_series(30001, 30100) g",
        )
        .await
        .unwrap();
    let t = pass(&p, None).await.tables.remove(0);
    // 78 ids ≡ 1 (mod 389) deleted; the updated rows still there counted on the source.
    let updated: i64 = p
        .src_sql
        .query_one("SELECT count(*) FROM s WHERE v = 'changed'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (t.inserted, t.updated, t.deleted),
        (100, updated as u64, 78)
    );
    assert_eq!(
        all_rows(&p.src_sql, "s").await,
        all_rows(&p.dst_sql, "s").await
    );
}

#[tokio::test]
async fn foreign_keys_order_tables_and_deletes_go_children_first() {
    // The child is configured first; the destination's tables are prepared with the key, so
    // a child row written before its parent, or a parent deleted before its children, fails.
    let parent = "CREATE TABLE parent (id int PRIMARY KEY, name text)";
    let child = "CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent, note text)";
    let ddl = format!(
        "{parent}; {child};
         INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 50) g;
         INSERT INTO child SELECT g, 1 + g % 50, 'c' || g FROM generate_series(1, 200) g;"
    );
    let p = Pipeline::new(
        "sync_fk",
        &ddl,
        "[[tables]]\nsource = \"public.child\"\nstrategy = \"diff\"\n\n\
         [[tables]]\nsource = \"public.parent\"\nstrategy = \"diff\"",
    )
    .await;
    p.dst_sql
        .batch_execute(&format!("{parent}; {child};"))
        .await
        .unwrap();
    let first = pass(&p, None).await;
    let order: Vec<&str> = first.tables.iter().map(|t| t.source.as_str()).collect();
    assert_eq!(order, ["public.parent", "public.child"], "parents first");
    assert_eq!(first.tables[1].inserted, 200);
    // Parent 7 goes with its four children; a new parent comes with a child.
    p.src_sql
        .batch_execute(
            "DELETE FROM child WHERE parent_id = 7; DELETE FROM parent WHERE id = 7;
             INSERT INTO parent VALUES (51, 'new'); INSERT INTO child VALUES (201, 51, 'new');",
        )
        .await
        .unwrap();
    let second = pass(&p, None).await;
    let counts: Vec<(u64, u64)> = second
        .tables
        .iter()
        .map(|t| (t.inserted, t.deleted))
        .collect();
    assert_eq!(counts, [(1, 1), (1, 4)]);
    for table in ["parent", "child"] {
        assert_eq!(
            all_rows(&p.dst_sql, table).await,
            all_rows(&p.src_sql, table).await,
            "{table}"
        );
    }
}
