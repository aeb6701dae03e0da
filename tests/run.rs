//! `cdc run` against real servers: every change kind, schema changes, streamed transactions,
//! resume rules. Process-level faults (kill -9, restarts, signals) are in `run_faults.rs`.

use std::time::Duration;

use tokio::sync::watch;

use crate::harness::{rows_text, wait_for, Pipeline};

/// Fast batches so tests see changes quickly.
pub const FAST: &str = "\n[apply]\nbatch_max_wait_ms = 20\n";

pub struct Running {
    pub task: tokio::task::JoinHandle<cdc::error::Result<()>>,
    pub stop: watch::Sender<bool>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("run stops")
            .unwrap()
            .expect("run ends cleanly");
    }
}

/// Start `cdc run` in this process and wait until its snapshot is complete, so that every
/// change the test makes afterwards travels through the stream.
pub async fn start(p: &Pipeline) -> Running {
    let config = p.config();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(async move { cdc::run::run(&config, shutdown).await });
    p.wait_snapshot_complete().await;
    Running { task, stop }
}

/// Wait until `query` gives the same rows on both sides.
pub async fn wait_synced(p: &Pipeline, query: &str) {
    // Until the initial snapshot has created it, the destination table may not exist yet.
    wait_for(
        &format!("destination to match source for {query}"),
        Duration::from_secs(60),
        || async {
            let dst = try_rows(&p.dst_sql, query).await;
            dst.is_some() && try_rows(&p.src_sql, query).await == dst
        },
    )
    .await;
}

async fn try_rows(c: &tokio_postgres::Client, query: &str) -> Option<Vec<Option<String>>> {
    c.query(query, &[])
        .await
        .ok()
        .map(|r| r.iter().map(|r| r.get(0)).collect())
}

async fn pipeline(prefix: &str, ddl: &str, tables: &str) -> Pipeline {
    Pipeline::new(prefix, ddl, &format!("{tables}{FAST}")).await
}

#[tokio::test]
async fn inserts_updates_and_deletes_are_applied_exactly() {
    let p = pipeline(
        "run_basic",
        "CREATE TABLE t (id int PRIMARY KEY, name text, amount numeric(10,2), at timestamptz);
         INSERT INTO t VALUES (1, 'before snapshot', 1.5, '2024-01-01 00:00+00');",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let r = start(&p).await;
    p.src_sql
        .batch_execute(
            "INSERT INTO t VALUES (2, E'tab\\t ''q'' 😀', 2.25, now()), (3, NULL, NULL, NULL);
             UPDATE t SET amount = 9.99 WHERE id = 1;
             BEGIN; INSERT INTO t VALUES (4, 'four', 4, now()); DELETE FROM t WHERE id = 3; UPDATE t SET name = 'x' WHERE id = 4; COMMIT;",
        )
        .await
        .unwrap();
    wait_synced(&p, "SELECT t::text FROM t ORDER BY id").await;
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT id::text FROM t ORDER BY id").await,
        ["1", "2", "4"]
    );
    r.stop().await;
    // The confirmed position equals what the destination recorded.
    assert_eq!(p.applied_lsn().await, p.confirmed_lsn().await);
}

#[tokio::test]
async fn enum_labels_added_on_the_source_after_the_snapshot_are_added_on_the_destination() {
    let p = pipeline(
        "run_enum",
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE t (id int PRIMARY KEY, m mood, ms mood[]);
         INSERT INTO t VALUES (1, 'ok', '{sad}');",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let r = start(&p).await;
    // Each label in its own transaction: a label cannot be used by the transaction adding it.
    for sql in [
        "ALTER TYPE mood ADD VALUE 'happy'",
        "ALTER TYPE mood ADD VALUE 'meh' BEFORE 'sad'",
        "INSERT INTO t VALUES (2, 'happy', '{meh,happy}')",
        "UPDATE t SET m = 'meh' WHERE id = 1",
    ] {
        p.src_sql.batch_execute(sql).await.unwrap();
    }
    wait_synced(&p, "SELECT t::text FROM t ORDER BY id").await;
    let order = "SELECT enum_range(NULL::public.mood)::text";
    assert_eq!(
        rows_text(&p.dst_sql, order).await,
        ["{meh,sad,ok,happy}"],
        "the destination's labels sort as the source's"
    );
    r.stop().await;
}

#[tokio::test]
async fn partitioned_tables_are_copied_and_streamed_through_their_root() {
    let p = pipeline(
        "run_parts",
        "CREATE TABLE m (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         INSERT INTO m VALUES (1, '2025-03-01', 'a'), (2, '2026-03-01', 'b');",
        "[[tables]]\nsource = \"public.m\"",
    )
    .await;
    let r = start(&p).await;
    // Both partitions are copied by the snapshot.
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT m::text FROM m ORDER BY id").await,
        ["(1,2025-03-01,a)", "(2,2026-03-01,b)"]
    );
    p.src_sql
        .batch_execute(
            "INSERT INTO m VALUES (3, '2026-05-01', 'c');
             UPDATE m SET v = 'a!' WHERE id = 1;
             UPDATE m SET at = '2026-01-02' WHERE id = 1;
             DELETE FROM m WHERE id = 2;",
        )
        .await
        .unwrap();
    wait_synced(&p, "SELECT m::text FROM m ORDER BY id").await;
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT m::text FROM m ORDER BY id").await,
        ["(1,2026-01-02,a!)", "(3,2026-05-01,c)"]
    );
    // The destination holds one plain table with the root's key.
    assert_eq!(
        rows_text(
            &p.dst_sql,
            "SELECT c.relkind::text || ' ' || pg_get_constraintdef(k.oid) FROM pg_class c \
             JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p' WHERE c.oid = 'public.m'::regclass"
        )
        .await,
        ["r PRIMARY KEY (id, at)"]
    );
    r.stop().await;
    // `cdc verify` compares the partitioned root with the plain copy row by row.
    let config = p.config();
    let verify = || async {
        cdc::verify::verify(
            &config.source_conninfo().unwrap(),
            &config.destination_conninfo().unwrap(),
            &cdc::verify::pairs_from_config(&config, &[]).unwrap(),
            &cdc::verify::Options::default(),
            &|_| {},
        )
        .await
        .unwrap()
    };
    let report = verify().await;
    assert!(report.equal, "{}", report.human(20));
    p.src_sql.batch_execute("TRUNCATE m_2026").await.unwrap();
    let report = verify().await;
    assert!(
        !report.equal,
        "a partition truncated on the source shows as a difference"
    );
}

#[tokio::test]
async fn an_update_that_changes_the_primary_key_moves_the_row() {
    let p = pipeline(
        "run_pk",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let r = start(&p).await;
    p.src_sql
        .batch_execute("UPDATE t SET id = 10 WHERE id = 1; UPDATE t SET id = id + 100;")
        .await
        .unwrap();
    wait_synced(&p, "SELECT t::text FROM t ORDER BY id").await;
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT t::text FROM t ORDER BY id").await,
        ["(102,b)", "(110,a)"]
    );
    r.stop().await;
}

#[tokio::test]
async fn an_update_of_a_row_missing_on_the_destination_writes_it() {
    // Updates of existing keys are applied with a plain UPDATE; one that finds no row (the
    // destination diverged, or a snapshot `where` filter left the row out) must still write it.
    let p = pipeline(
        "run_missing",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let r = start(&p).await;
    p.dst_sql
        .batch_execute("DELETE FROM public.t WHERE id = 2")
        .await
        .unwrap();
    p.src_sql
        .batch_execute("UPDATE t SET v = v || '!'")
        .await
        .unwrap();
    wait_synced(&p, "SELECT t::text FROM t ORDER BY id").await;
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT t::text FROM t ORDER BY id").await,
        ["(1,a!)", "(2,b!)", "(3,c!)"]
    );
    r.stop().await;
}

#[tokio::test]
async fn unchanged_toast_columns_keep_their_value() {
    let p = pipeline(
        "run_toast",
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs VALUES (1, 'old', repeat('snapshot body ', 2000));",
        "[[tables]]\nsource = \"public.docs\"",
    )
    .await;
    let r = start(&p).await;
    p.src_sql
        .batch_execute(
            "INSERT INTO docs VALUES (2, 'two', repeat('streamed body ', 2000));
             UPDATE docs SET title = 'new' WHERE id = 1;
             BEGIN; UPDATE docs SET title = 'newer' WHERE id = 2; UPDATE docs SET title = 'newest' WHERE id = 2; COMMIT;",
        )
        .await
        .unwrap();
    let q = "SELECT format('%s %s %s', id, title, md5(body)) FROM docs ORDER BY id";
    wait_synced(&p, q).await;
    let lens = rows_text(
        &p.dst_sql,
        "SELECT length(body)::text FROM docs ORDER BY id",
    )
    .await;
    assert_eq!(
        lens,
        ["28000", "28000"],
        "TOASTed bodies survive updates of other columns"
    );
    r.stop().await;
}

#[tokio::test]
async fn keyless_tables_with_replica_identity_full_match_on_old_values() {
    let p = pipeline(
        "run_full",
        "CREATE TABLE log (a int, b text, j json); ALTER TABLE log REPLICA IDENTITY FULL;
         INSERT INTO log VALUES (1, 'dup', '{\"x\": 1}'), (1, 'dup', '{\"x\": 1}'), (2, 'two', NULL);",
        "[[tables]]\nsource = \"public.log\"",
    )
    .await;
    let r = start(&p).await;
    p.src_sql
        .batch_execute(
            "DELETE FROM log WHERE ctid = (SELECT ctid FROM log WHERE a = 1 LIMIT 1);
             UPDATE log SET b = 'changed' WHERE a = 2;
             INSERT INTO log VALUES (3, 'three', '[]'), (3, 'three', '[]');",
        )
        .await
        .unwrap();
    let q = "SELECT log::text FROM log ORDER BY 1";
    wait_synced(&p, q).await;
    assert_eq!(
        rows_text(&p.dst_sql, q).await,
        [
            "(1,dup,\"{\"\"x\"\": 1}\")",
            "(2,changed,)",
            "(3,three,[])",
            "(3,three,[])"
        ]
    );
    r.stop().await;
}

#[tokio::test]
async fn truncate_of_several_tables_is_applied_in_order() {
    let p = pipeline(
        "run_trunc",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);
         INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (1);",
        "[[tables]]\nsource = \"public.a\"\n[[tables]]\nsource = \"public.b\"",
    )
    .await;
    let r = start(&p).await;
    p.src_sql
        .batch_execute("BEGIN; INSERT INTO a VALUES (3); TRUNCATE a, b RESTART IDENTITY CASCADE; INSERT INTO a VALUES (7); COMMIT;")
        .await
        .unwrap();
    wait_synced(
        &p,
        "SELECT 'a' || id FROM a UNION ALL SELECT 'b' || id FROM b ORDER BY 1",
    )
    .await;
    assert_eq!(rows_text(&p.dst_sql, "SELECT id::text FROM a").await, ["7"]);
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM b").await,
        ["0"]
    );
    r.stop().await;
}

#[tokio::test]
async fn schema_changes_are_applied_before_the_rows_that_use_them() {
    let p = pipeline(
        "run_ddl",
        "CREATE TABLE t (id int PRIMARY KEY, v int, gone text); INSERT INTO t VALUES (1, 1, 'x');",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let r = start(&p).await;
    p.src_sql
        .batch_execute(
            "INSERT INTO t VALUES (2, 2, 'y');
             ALTER TABLE t ADD COLUMN note text; INSERT INTO t VALUES (3, 3, 'z', 'with note');
             ALTER TABLE t ALTER COLUMN v TYPE bigint; UPDATE t SET v = 5000000000 WHERE id = 1;
             ALTER TABLE t DROP COLUMN gone; INSERT INTO t VALUES (4, 4, 'four');",
        )
        .await
        .unwrap();
    wait_synced(&p, "SELECT t::text FROM t ORDER BY id").await;
    let cols = "SELECT format('%s %s', attname, format_type(atttypid, atttypmod)) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum";
    assert_eq!(
        rows_text(&p.dst_sql, cols).await,
        ["id integer", "v bigint", "note text"]
    );
    r.stop().await;
}

#[tokio::test]
async fn a_rename_is_refused_with_instructions() {
    let p = pipeline(
        "run_rename",
        "CREATE TABLE t (id int PRIMARY KEY, old_name text);",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let r = start(&p).await;
    p.src_sql
        .batch_execute(
            "ALTER TABLE t RENAME COLUMN old_name TO new_name; INSERT INTO t VALUES (1, 'x');",
        )
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), r.task)
        .await
        .expect("run stops")
        .unwrap()
        .expect_err("rename");
    assert!(
        err.to_string()
            .contains("apply the change to public.t by hand"),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM t").await,
        ["0"],
        "nothing half-applied"
    );
}

#[tokio::test]
async fn streamed_transactions_apply_only_their_committed_parts() {
    // logical_decoding_work_mem is 64kB on the test source: these transactions are streamed.
    let p = pipeline(
        "run_streamed",
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
        "[[tables]]\nsource = \"public.t\"\n[apply]\nmax_memory_bytes = 50000\nbatch_max_rows = 500\nbatch_max_wait_ms = 20",
    )
    .await;
    let p = Pipeline {
        config_text: p.config_text.replace(FAST, ""),
        ..p
    };
    let r = start(&p).await;
    let sql = &p.src_sql;
    sql.batch_execute("BEGIN; INSERT INTO t SELECT g, repeat('a', 100) FROM generate_series(1, 3000) g; ROLLBACK;").await.unwrap();
    sql.batch_execute(
        "BEGIN; INSERT INTO t SELECT g, repeat('b', 100) FROM generate_series(1, 2000) g;
         SAVEPOINT s; INSERT INTO t SELECT g, 'gone' FROM generate_series(2001, 4000) g; ROLLBACK TO SAVEPOINT s;
         UPDATE t SET v = 'updated' WHERE id <= 10; COMMIT;",
    )
    .await
    .unwrap();
    wait_synced(
        &p,
        "SELECT count(*)::text || ' ' || sum(length(v))::text FROM t",
    )
    .await;
    assert_eq!(
        rows_text(
            &p.dst_sql,
            "SELECT count(*)::text FROM t WHERE v = 'updated'"
        )
        .await,
        ["10"]
    );
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT max(id)::text FROM t").await,
        ["2000"]
    );
    r.stop().await;
}

/// The destination session that holds written but uncommitted rows, if any.
async fn uncommitted_writer(p: &Pipeline) -> bool {
    !rows_text(
        &p.dst_sql,
        "SELECT pid::text FROM pg_stat_activity
          WHERE datname = current_database() AND backend_xid IS NOT NULL
            AND state = 'idle in transaction' AND pid <> pg_backend_pid()",
    )
    .await
    .is_empty()
}

#[tokio::test]
async fn a_streamed_transaction_is_applied_while_it_runs_and_shows_only_at_its_commit() {
    let p = Pipeline::new(
        "run_ahead",
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
        "[[tables]]\nsource = \"public.t\"\n[apply]\nbatch_max_rows = 500\nbatch_max_wait_ms = 20",
    )
    .await;
    let r = start(&p).await;
    // A source transaction left open, large enough to be streamed (64kB decoding memory).
    let open = cdc::pg::connect(&p.src).await.unwrap();
    open.batch_execute(
        "BEGIN; INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    wait_for(
        "the open transaction's rows to be written ahead on the destination",
        Duration::from_secs(60),
        || uncommitted_writer(&p),
    )
    .await;
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM t").await,
        ["0"]
    );
    // A transaction committing meanwhile reaches the destination first.
    p.src_sql
        .batch_execute("INSERT INTO t VALUES (100000, 'meanwhile')")
        .await
        .unwrap();
    wait_synced(&p, "SELECT v FROM t WHERE id = 100000").await;
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM t").await,
        ["1"]
    );
    open.batch_execute("COMMIT").await.unwrap();
    wait_synced(
        &p,
        "SELECT count(*)::text || ' ' || sum(length(v))::text FROM t",
    )
    .await;

    // Written ahead, then rolled back on the source: nothing of it ever shows.
    open.batch_execute("BEGIN; UPDATE t SET v = 'never' WHERE id <= 5000;")
        .await
        .unwrap();
    wait_for(
        "the aborting transaction to be written ahead",
        Duration::from_secs(60),
        || uncommitted_writer(&p),
    )
    .await;
    open.batch_execute("ROLLBACK").await.unwrap();
    p.src_sql
        .batch_execute("INSERT INTO t VALUES (100001, 'after')")
        .await
        .unwrap();
    wait_synced(&p, "SELECT count(*)::text FROM t").await;
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM t WHERE v = 'never'").await,
        ["0"]
    );
    r.stop().await;
}

#[tokio::test]
async fn a_large_transaction_streams_early_even_with_the_servers_default_decoding_memory() {
    // The test server streams at 64kB; give this database the stock 64MB back. cdc lowers its
    // own walsender's setting to 8MB, so ~20MB of uncommitted changes arrive (and are written
    // ahead) before the commit; with 64MB nothing would arrive until then.
    let p = Pipeline::new(
        "run_early",
        "CREATE TABLE t (id int PRIMARY KEY, v text);",
        "[[tables]]\nsource = \"public.t\"\n[apply]\nbatch_max_wait_ms = 20",
    )
    .await;
    let db = rows_text(&p.src_sql, "SELECT current_database()::text").await;
    p.src_sql
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET logical_decoding_work_mem = '64MB'",
            db[0]
        ))
        .await
        .unwrap();
    let r = start(&p).await;
    let open = cdc::pg::connect(&p.src).await.unwrap();
    open.batch_execute(
        "BEGIN; INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g;",
    )
    .await
    .unwrap();
    wait_for(
        "the open transaction's rows to be written ahead on the destination",
        Duration::from_secs(60),
        || uncommitted_writer(&p),
    )
    .await;
    open.batch_execute("COMMIT").await.unwrap();
    wait_synced(&p, "SELECT count(*)::text FROM t").await;
    r.stop().await;
}

#[tokio::test]
async fn restarting_resumes_without_duplicates_or_gaps() {
    let p = pipeline("run_resume", "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE log (n int); ALTER TABLE log REPLICA IDENTITY FULL;", "[[tables]]\nsource = \"public.t\"\n[[tables]]\nsource = \"public.log\"").await;
    for round in 0..3 {
        let r = start(&p).await;
        p.src_sql.batch_execute(&format!("INSERT INTO t SELECT g FROM generate_series({0} * 100 + 1, {0} * 100 + 100) g; INSERT INTO log SELECT generate_series(1, 10);", round)).await.unwrap();
        wait_synced(&p, "SELECT count(*)::text FROM t").await;
        wait_synced(&p, "SELECT count(*)::text FROM log").await;
        r.stop().await;
        // Changes made while stopped are picked up by the next round.
        p.src_sql
            .batch_execute("INSERT INTO log VALUES (-1)")
            .await
            .unwrap();
    }
    let r = start(&p).await;
    wait_synced(&p, "SELECT count(*)::text || ' ' || sum(n)::text FROM log").await;
    r.stop().await;
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM log").await,
        ["33"],
        "keyless rows: a double apply would show"
    );
}

#[tokio::test]
async fn a_slot_ahead_of_the_destination_stops_with_an_explanation() {
    let p = pipeline(
        "run_ahead",
        "CREATE TABLE t (id int PRIMARY KEY);",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    cdc::snapshot::run(&p.config(), false).await.unwrap();
    // Someone else consumes the slot past what the destination has.
    p.src_sql
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    p.src_sql
        .batch_execute(&format!(
            "SELECT pg_replication_slot_advance('{}', pg_current_wal_lsn())",
            p.slot
        ))
        .await
        .unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let err = cdc::run::run(&p.config(), shutdown)
        .await
        .expect_err("must refuse");
    assert!(
        err.to_string().contains("Refusing to skip them silently"),
        "{err}"
    );

    p.src_sql
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{}')", p.slot))
        .await
        .unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let err = cdc::run::run(&p.config(), shutdown)
        .await
        .expect_err("slot gone");
    assert!(
        err.to_string().contains("does not exist on the source"),
        "{err}"
    );
}

#[tokio::test]
async fn added_columns_with_defaults_get_the_sources_values_for_existing_rows() {
    let p = pipeline(
        "run_add_default",
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t SELECT g, g FROM generate_series(1, 3000) g;",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let r = start(&p).await;
    // A constant default (kept as the column's missing value), volatile defaults (the table is
    // rewritten with a value per row), a stored generated column (not in Relation messages
    // before Postgres 18: recomputed by the destination), and a plain nullable column.
    p.src_sql
        .batch_execute(
            "ALTER TABLE t ADD COLUMN score int DEFAULT 0;
             ALTER TABLE t ADD COLUMN tag uuid DEFAULT gen_random_uuid(),
                           ADD COLUMN at timestamptz DEFAULT clock_timestamp(),
                           ADD COLUMN twice int GENERATED ALWAYS AS (v * 2) STORED,
                           ADD COLUMN note text;",
        )
        .await
        .unwrap();
    // Writes race the backfill: updates of existing rows (some change the new columns),
    // inserts, deletes; the first of them brings the new Relation.
    let writer = {
        let db = p.src.clone();
        tokio::spawn(async move {
            let c = cdc::pg::connect(&db).await.unwrap();
            for i in 0..60 {
                c.batch_execute(&format!(
                    "UPDATE t SET v = v + 1 WHERE id % 50 = {i} % 50 AND id <= 500;
                     UPDATE t SET score = {i} WHERE id = {};
                     INSERT INTO t (id, v) VALUES ({}, 0);
                     DELETE FROM t WHERE id = {};",
                    100 + i,
                    10_000 + i,
                    2000 + i
                ))
                .await
                .unwrap();
            }
        })
    };
    writer.await.unwrap();
    wait_synced(
        &p,
        // By name: the generated column is appended after the others on the destination.
        "SELECT count(*)::text || ' ' || md5(string_agg(row(id, v, score, tag, at, twice, note)::text, ',' ORDER BY id)) FROM t",
    )
    .await;
    let zeros = rows_text(&p.dst_sql, "SELECT count(*)::text FROM t WHERE score = 0").await;
    assert!(zeros[0].parse::<i64>().unwrap() > 2800, "{zeros:?}");
    r.stop().await;
}

#[tokio::test]
async fn retyped_columns_show_the_sources_converted_values() {
    let p = pipeline(
        "run_retype",
        "CREATE TABLE t (id int PRIMARY KEY, v int, w text);
         INSERT INTO t SELECT g, g, 'w' || g FROM generate_series(1, 2000) g;",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let r = start(&p).await;
    // The source converts with an expression the destination cannot guess from the old text.
    p.src_sql
        .batch_execute(
            "ALTER TABLE t ALTER COLUMN v TYPE numeric(10,2) USING v / 4.0;
             UPDATE t SET w = 'first change after' WHERE id = 1;",
        )
        .await
        .unwrap();
    wait_synced(
        &p,
        "SELECT count(*)::text || ' ' || md5(string_agg(t::text, ',' ORDER BY id)) FROM t",
    )
    .await;
    r.stop().await;
}

/// Count and a hash of every row of `table`: equal on both sides when the tables are.
fn fingerprint(table: &str) -> String {
    format!("SELECT count(*) || ':' || coalesce(sum(hashtext(t::text)::bigint), 0) FROM {table} t")
}

#[tokio::test]
async fn a_table_added_to_the_configuration_joins_the_running_pipeline_under_load() {
    let mut p = pipeline(
        "run_join",
        "SELECT 1",
        "[[tables]]\nsource = \"public.pgbench_accounts\"\n[[tables]]\nsource = \"public.pgbench_branches\"",
    )
    .await;
    p.pgbench_init(1).await;
    let r = start(&p).await;
    // A write load on every table, the new ones included, across the restart and the copy.
    let mut load = p.pgbench(&["-n", "-c", "2", "-T", "6"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    r.stop().await;
    // pgbench_tellers has a key; pgbench_history has none (its copy must not double a row).
    p.config_text = p.config_text.replace(
        "[[tables]]\nsource = \"public.pgbench_branches\"",
        "[[tables]]\nsource = \"public.pgbench_branches\"\n[[tables]]\nsource = \"public.pgbench_tellers\"\n[[tables]]\nsource = \"public.pgbench_history\"",
    );
    let r = start(&p).await;
    assert!(tokio::task::spawn_blocking(move || load.wait())
        .await
        .unwrap()
        .unwrap()
        .success());
    if r.task.is_finished() {
        panic!("cdc run ended: {:?}", r.task.await);
    }
    for t in [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ] {
        wait_synced(&p, &fingerprint(t)).await;
    }
    let joined = rows_text(
        &p.dst_sql,
        &format!("SELECT string_agg(source_table, ',' ORDER BY source_table) FROM cdc.snapshot_tables WHERE slot = '{}' AND joined_lsn IS NOT NULL", p.slot),
    )
    .await;
    assert_eq!(joined, ["public.pgbench_history,public.pgbench_tellers"]);
    r.stop().await;

    // A table removed from the configuration stops being applied; its destination table stays.
    p.config_text = p
        .config_text
        .replace("[[tables]]\nsource = \"public.pgbench_branches\"\n", "");
    let r = start(&p).await;
    let before = rows_text(&p.dst_sql, &fingerprint("pgbench_branches")).await;
    p.src_sql
        .batch_execute("UPDATE pgbench_branches SET bbalance = bbalance + 1; UPDATE pgbench_tellers SET tbalance = tbalance + 1")
        .await
        .unwrap();
    wait_synced(&p, &fingerprint("pgbench_tellers")).await;
    assert_eq!(
        rows_text(&p.dst_sql, &fingerprint("pgbench_branches")).await,
        before
    );
    let published = rows_text(
        &p.src_sql,
        &format!("SELECT count(*)::text FROM pg_publication_tables WHERE pubname = '{}' AND tablename = 'pgbench_branches'", p.slot),
    )
    .await;
    assert_eq!(published, ["0"]);
    r.stop().await;
}

#[tokio::test]
async fn a_key_change_of_a_row_with_unchanged_toast_values_keeps_the_row() {
    let p = pipeline(
        "run_toast_key",
        "CREATE TABLE k (id int PRIMARY KEY, v text, doc text);
         ALTER TABLE k ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO k SELECT g, 'v', repeat(md5(g::text), 200) FROM generate_series(1, 6) g;",
        "[[tables]]\nsource = \"public.k\"",
    )
    .await;
    let r = start(&p).await;
    // One move; two moves in one transaction; a move onto a key deleted just before it; a move
    // there and back.
    p.src_sql
        .batch_execute(
            "UPDATE k SET id = 10 WHERE id = 1;
             BEGIN; UPDATE k SET id = 20 WHERE id = 2; UPDATE k SET id = 21 WHERE id = 20; COMMIT;
             BEGIN; DELETE FROM k WHERE id = 4; UPDATE k SET id = 4, v = 'moved' WHERE id = 3; COMMIT;
             BEGIN; UPDATE k SET id = 50 WHERE id = 5; UPDATE k SET id = 5, v = 'back' WHERE id = 50; COMMIT;",
        )
        .await
        .unwrap();
    wait_synced(
        &p,
        "SELECT string_agg(id || ':' || v || ':' || md5(doc), ',' ORDER BY id) FROM k",
    )
    .await;
    r.stop().await;
}
