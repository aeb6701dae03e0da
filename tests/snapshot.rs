//! `cdc snapshot` against real servers: schema, exact values, consistency under concurrent
//! writes, prerequisites, re-runs and interruption.

use std::collections::BTreeMap;
use std::time::Duration;

use cdc::decode::{Datum, LogicalMessage, PgOutputDecoder};
use cdc::lsn::Lsn;
use cdc::source::postgres::replication::{PgOutputOptions, ReplicationClient, ReplicationEvent};

use crate::harness::{rows_text, servers, unique, wait_for, Pipeline};

const TYPES_DDL: &str = r#"
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
    CREATE TYPE pair AS (a int, b text);
    CREATE TABLE builtin (
        id int PRIMARY KEY, b bool, i2 int2, i4 int4 NOT NULL, i8 int8, n numeric, n102 numeric(10,2),
        f4 float4, f8 float8, t text, vc varchar(20), ch char(5), by bytea, d date, ts timestamp,
        tstz timestamptz, tm time, tmtz timetz, iv interval, u uuid, j json, jb jsonb, ia int[],
        ta text[], ia2 int[], ir int4range, tsr tstzrange, ip inet, net cidr, mac macaddr,
        bits bit(4), vb varbit, cash money, pt point, x xml, o oid, e int[]);
    CREATE UNIQUE INDEX builtin_vc ON builtin (vc);
    CREATE INDEX builtin_lower_t ON builtin (lower(t)) WHERE b;
    CREATE INDEX builtin_i4_desc ON builtin (i4 DESC, i8);
    CREATE TABLE custom (id int PRIMARY KEY, m mood NOT NULL, p posint, pr pair, ma mood[]);
    CREATE TABLE "Mixed Case" ("Id" int PRIMARY KEY, "Value" text);
    INSERT INTO builtin VALUES
      (1, true, 32767, 2147483647, -9223372036854775808, 'NaN', 12345678.91, 'Infinity', '-Infinity',
       E'tab\there\nnew line \\ back ''single'' "double" 😀', 'unique', 'ab', '\x00ff00'::bytea,
       '0044-03-15 BC', '2024-02-29 23:59:59.999999', '2024-01-01 00:00:00+05:30', '24:00:00', '12:00+03',
       '1 year 2 mons -3 days 04:05:06.7', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50, null]}',
       '{"b": {"c": "é"}}', '{}', '{"a,b","c\"d",NULL}', '{{1,2},{3,4}}', '[1,10)', '[2024-01-01,infinity)',
       '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', B'1010', B'101', 12.34, '(1.5,2)', '<a>x</a>', 42, '{}'),
      (2, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
      (3, false, -1, -5, 0, '-0.000001', 0, 'NaN', 4.9e-324, '', '', '', '', '2000-01-01', '-infinity',
       'infinity', '00:00', '00:00+00', '0', '00000000-0000-0000-0000-000000000000', '[]', '[]', '{NULL}', '{""}',
       '{{NULL}}', 'empty', '(,)', '::1', '::/0', '00:00:00:00:00:00', B'0000', B'', -0.01, '(0,0)', '', 0, NULL);
    INSERT INTO custom VALUES (1, 'happy', 5, ROW(1, 'x, "y"'), '{sad,happy}'), (2, 'sad', NULL, NULL, '{}');
    INSERT INTO "Mixed Case" VALUES (1, 'one');
"#;

const TYPES_TABLES: &str = r#"
[[tables]]
source = "public.builtin"
[[tables]]
source = "public.custom"
[[tables]]
source = 'public."Mixed Case"'
destination = 'copy."Mixed Case"'
"#;

async fn columns(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    rows_text(
        client,
        &format!(
            "SELECT format('%s %s %s', attname, format_type(atttypid, atttypmod), attnotnull) FROM pg_attribute
              WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
    )
    .await
}

async fn indexes(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    rows_text(client, &format!("SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = '{table}'::regclass ORDER BY 1"))
        .await
}

#[tokio::test]
async fn snapshot_recreates_schema_and_copies_every_value_exactly() {
    let p = Pipeline::new("snap_types", TYPES_DDL, TYPES_TABLES).await;
    let report = cdc::snapshot::run(&p.config(), false)
        .await
        .expect("snapshot");
    assert!(!report.already_complete);
    let rows: BTreeMap<String, u64> = report
        .tables
        .iter()
        .map(|t| (t.destination.to_string(), t.rows))
        .collect();
    assert_eq!(
        rows,
        BTreeMap::from([
            ("public.builtin".into(), 3),
            ("public.custom".into(), 2),
            ("copy.Mixed Case".into(), 1)
        ])
    );

    for (src_table, dst_table) in [
        ("public.builtin", "public.builtin"),
        ("public.custom", "public.custom"),
        ("public.\"Mixed Case\"", "copy.\"Mixed Case\""),
    ] {
        assert_eq!(
            columns(&p.src_sql, src_table).await,
            columns(&p.dst_sql, dst_table).await,
            "columns of {src_table}"
        );
        let q = |t: &str| format!("SELECT x::text FROM {t} x ORDER BY 1");
        let (s, d) = (
            rows_text(&p.src_sql, &q(src_table)).await,
            rows_text(&p.dst_sql, &q(dst_table)).await,
        );
        assert_eq!(s, d, "values of {src_table}");
    }
    // Same schema and table names: the index definitions must match to the letter.
    assert_eq!(
        indexes(&p.src_sql, "public.builtin").await,
        indexes(&p.dst_sql, "public.builtin").await
    );
    assert_eq!(
        indexes(&p.dst_sql, "public.custom").await,
        ["CREATE UNIQUE INDEX custom_pkey ON public.custom USING btree (id)"]
    );
    // Enum and domain behave as on the source.
    assert!(
        p.dst_sql
            .batch_execute("INSERT INTO public.custom VALUES (9, 'sad', -1)")
            .await
            .is_err(),
        "domain check"
    );
    assert!(
        p.dst_sql
            .batch_execute("INSERT INTO public.custom VALUES (9, 'angry')")
            .await
            .is_err(),
        "enum labels"
    );

    // The state says complete, at the slot's consistent point.
    let state = rows_text(
        &p.dst_sql,
        &format!("SELECT format('%s %s %s', consistent_lsn, applied_lsn, snapshot_completed_at IS NOT NULL) FROM cdc.pipeline WHERE slot = '{}'", p.slot),
    )
    .await;
    assert_eq!(state, [format!("{0} {0} t", report.consistent_lsn)]);
    let slot_lsn = p.confirmed_lsn().await;
    assert_eq!(slot_lsn, [report.consistent_lsn.to_string()]);
}

#[tokio::test]
async fn rerunning_a_complete_snapshot_does_nothing_and_force_redoes_it() {
    let p = Pipeline::new(
        "snap_rerun",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let first = cdc::snapshot::run(&p.config(), false).await.unwrap();
    p.dst_sql
        .batch_execute("INSERT INTO t VALUES (100)")
        .await
        .unwrap();
    let again = cdc::snapshot::run(&p.config(), false).await.unwrap();
    assert!(again.already_complete);
    assert_eq!(again.consistent_lsn, first.consistent_lsn);
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM t").await,
        ["3"],
        "a no-op run touches nothing"
    );

    p.src_sql
        .batch_execute("INSERT INTO t VALUES (3)")
        .await
        .unwrap();
    let forced = cdc::snapshot::run(&p.config(), true).await.unwrap();
    assert!(!forced.already_complete);
    assert!(forced.consistent_lsn > first.consistent_lsn);
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT id::text FROM t ORDER BY id").await,
        ["1", "2", "3"]
    );
    assert_eq!(
        p.slot_count().await,
        1,
        "the old slot was replaced, not added to"
    );
}

#[tokio::test]
async fn where_filter_limits_the_snapshot_copy() {
    let p = Pipeline::new(
        "snap_where",
        "CREATE TABLE sales (id int PRIMARY KEY, at date); INSERT INTO sales SELECT g, date '2024-01-01' + g FROM generate_series(1, 30) g;",
        "[[tables]]\nsource = \"public.sales\"\nwhere = \"at > date '2024-01-24'\"",
    )
    .await;
    cdc::snapshot::run(&p.config(), false).await.unwrap();
    assert_eq!(
        rows_text(
            &p.dst_sql,
            "SELECT min(id)::text || '-' || max(id)::text FROM sales"
        )
        .await,
        ["24-30"]
    );
}

/// Apply decoded changes of `table` (int key `id`, int column `v`) to a model of its rows.
fn apply(model: &mut BTreeMap<i32, i32>, msg: &LogicalMessage) {
    let int = |d: &Datum| match d {
        Datum::Text(t) => std::str::from_utf8(t).unwrap().parse::<i32>().unwrap(),
        other => panic!("unexpected datum {other:?}"),
    };
    match msg {
        LogicalMessage::Insert(i) => assert!(
            model.insert(int(&i.new.0[0]), int(&i.new.0[1])).is_none(),
            "duplicate insert {i:?}"
        ),
        LogicalMessage::Update(u) => {
            if let Some(old) = &u.old {
                model.remove(&int(&old.tuple().0[0]));
            }
            model.insert(int(&u.new.0[0]), int(&u.new.0[1]));
        }
        LogicalMessage::Delete(d) => assert!(
            model.remove(&int(&d.old.tuple().0[0])).is_some(),
            "delete of a missing row"
        ),
        _ => {}
    }
}

#[tokio::test]
async fn snapshot_under_concurrent_writes_ends_exactly_where_the_stream_begins() {
    let p = Pipeline::new(
        "snap_busy",
        "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL); INSERT INTO acct SELECT g, 0 FROM generate_series(1, 20000) g;",
        "[[tables]]\nsource = \"public.acct\"\n[snapshot]\njobs = 3",
    )
    .await;
    // A writer that keeps inserting, updating and deleting while the snapshot runs.
    let writer_db = p.src.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_w = stop.clone();
    let writer = tokio::spawn(async move {
        let c = cdc::pg::connect(&writer_db).await.unwrap();
        let mut next = 100_000;
        while !stop_w.load(std::sync::atomic::Ordering::Relaxed) {
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO acct VALUES ({next}, 1); UPDATE acct SET v = v + 1 WHERE id = {}; \
                 DELETE FROM acct WHERE id = {}; COMMIT;",
                next % 20000 + 1,
                next - 50
            ))
            .await
            .unwrap();
            next += 1;
        }
        next - 100_000
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = cdc::snapshot::run(&p.config(), false)
        .await
        .expect("snapshot under load");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(
        written > 20,
        "the writer must overlap the snapshot (wrote {written} transactions)"
    );

    // Destination + every change streamed after the consistent point == source now.
    let mut model: BTreeMap<i32, i32> = p
        .dst_sql
        .query("SELECT id, v FROM acct", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let target: Lsn = rows_text(&p.src_sql, "SELECT pg_current_wal_lsn()::text").await[0]
        .parse()
        .unwrap();
    let mut repl = ReplicationClient::connect(&p.src).await.unwrap();
    let mut stream = repl_start(&mut repl, &p.slot).await;
    let mut decoder = PgOutputDecoder::new();
    let mut pending = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("stream silent")
            .unwrap()
            .unwrap()
        {
            ReplicationEvent::XLogData { data, .. } => match decoder.decode(data).unwrap() {
                LogicalMessage::Commit(c) => {
                    assert!(c.commit_lsn >= report.consistent_lsn);
                    pending.drain(..).for_each(|m| apply(&mut model, &m));
                    if c.end_lsn >= target {
                        break;
                    }
                }
                m => pending.push(m),
            },
            ReplicationEvent::Keepalive { wal_end, .. }
                if wal_end >= target && pending.is_empty() =>
            {
                break
            }
            ReplicationEvent::Keepalive { .. } => {}
        }
    }
    let source: BTreeMap<i32, i32> = p
        .src_sql
        .query("SELECT id, v FROM acct", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(model.len(), source.len());
    assert!(
        model == source,
        "destination + stream differs from the source"
    );
}

async fn repl_start(
    repl: &mut ReplicationClient,
    slot: &str,
) -> cdc::source::postgres::replication::ReplicationStream {
    let client = std::mem::replace(
        repl,
        ReplicationClient::connect(&servers().source.conninfo("postgres"))
            .await
            .unwrap(),
    );
    let options = PgOutputOptions {
        proto_version: 1,
        streaming: false,
        ..PgOutputOptions::for_server(150000, slot)
    };
    client
        .start_logical_replication(slot, Lsn::INVALID, &options, Duration::from_secs(30))
        .await
        .unwrap()
}

#[tokio::test]
async fn every_missing_prerequisite_is_reported_at_once_and_nothing_is_created() {
    let weak = unique("weak");
    let p = Pipeline::new(
        "snap_prereq",
        &format!(
            "CREATE TABLE nokey (a int); CREATE TABLE secret (id int PRIMARY KEY); CREATE TABLE ok (id int PRIMARY KEY);
             CREATE ROLE {weak} LOGIN PASSWORD 'weakpw'; GRANT SELECT ON nokey, ok TO {weak};"
        ),
        "[[tables]]\nsource = \"public.nokey\"\n[[tables]]\nsource = \"public.missing\"\n[[tables]]\nsource = \"public.secret\"\n[[tables]]\nsource = \"public.ok\"",
    )
    .await;
    let src_url = format!(
        "postgresql://{weak}:weakpw@127.0.0.1:{}/{}?sslmode=disable",
        servers().source.port(),
        p.src.dbname
    );
    let mut config = p.config();
    config.source.url = cdc::config::ConnString(src_url);
    let err = cdc::snapshot::run(&config, false)
        .await
        .expect_err("prerequisites are missing");
    let Some(problems) = err.prerequisites() else {
        panic!("{err:?}")
    };
    let text = err.to_string();
    for expected in [
        format!("role {weak} may not replicate: run ALTER ROLE \"{weak}\" REPLICATION"),
        "table public.nokey has no primary key".into(),
        "REPLICA IDENTITY FULL".into(),
        "table public.missing does not exist on the source".into(),
        format!("role {weak} cannot read public.secret: GRANT SELECT ON \"public\".\"secret\""),
        format!("role {weak} cannot create publication"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!err.is_transient());
    assert!(problems.len() >= 5, "{problems:#?}");
    assert_eq!(p.slot_count().await, 0, "no slot may be left");
    assert_eq!(p.publication_count().await, 0, "no publication may be left");
    assert!(!text.contains("weakpw"));
}

#[tokio::test]
async fn a_source_without_logical_wal_is_refused_with_the_fix() {
    // The destination server runs with wal_level = replica.
    let p = Pipeline::new("snap_wal", "SELECT 1", "[[tables]]\nsource = \"public.t\"").await;
    let other = crate::harness::fresh_db(&servers().destination, "snap_wal_src").await;
    let c = cdc::pg::connect(&other).await.unwrap();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut config = p.config();
    config.source.url = cdc::config::ConnString(servers().destination.url(&other.dbname));
    let err = cdc::snapshot::run(&config, false)
        .await
        .expect_err("wal_level replica");
    assert!(err.to_string().contains("wal_level is 'replica' on the source; logical replication needs 'logical': run ALTER SYSTEM SET wal_level = logical;"), "{err}");
    assert_eq!(
        rows_text(&c, "SELECT count(*)::text FROM pg_publication").await,
        ["0"]
    );
}

#[tokio::test]
async fn an_existing_destination_table_is_never_overwritten_without_force() {
    let p = Pipeline::new(
        "snap_exists",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    p.dst_sql
        .batch_execute("CREATE TABLE t (precious text); INSERT INTO t VALUES ('keep me')")
        .await
        .unwrap();
    let err = cdc::snapshot::run(&p.config(), false)
        .await
        .expect_err("table exists");
    assert!(
        err.to_string().contains(
            "destination table public.t already exists: drop it, or run `cdc snapshot --force`"
        ),
        "{err}"
    );
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT precious FROM t").await,
        ["keep me"]
    );
    assert_eq!(p.slot_count().await, 0);
}

#[tokio::test]
async fn a_snapshot_killed_mid_copy_is_redone_cleanly() {
    // A slow filter keeps the copy running long enough to kill the process in the middle.
    let p = Pipeline::new(
        "snap_kill",
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g;
         CREATE FUNCTION slow(int) RETURNS bool LANGUAGE sql AS 'SELECT pg_sleep(0.002) IS NOT NULL';",
        "[[tables]]\nsource = \"public.big\"\nwhere = \"public.slow(id)\"",
    )
    .await;
    let config_file = p.config_file();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args(["--config", config_file.to_str().unwrap(), "snapshot"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the slot exists and rows are flowing, but before completion.
    wait_for("the copy to be under way", Duration::from_secs(30), || async {
        let row = p.dst_sql.query_opt(
            "SELECT 1 FROM cdc.pipeline WHERE slot = $1 AND consistent_lsn IS NOT NULL AND snapshot_completed_at IS NULL",
            &[&p.slot],
        ).await;
        matches!(row, Ok(Some(_)))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        p.slot_count().await,
        1,
        "kill -9 leaves the slot (nothing can clean up)"
    );

    // The rerun (without the slow filter) cleans up and completes.
    let text = p.config_text.replace("where = \"public.slow(id)\"", "");
    let config =
        cdc::config::Config::from_toml(&text, std::path::Path::new("t"), &crate::harness::NO_ENV)
            .unwrap();
    let report = cdc::snapshot::run(&config, false)
        .await
        .expect("rerun after kill");
    assert_eq!(report.tables[0].rows, 3000);
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM big").await,
        ["3000"]
    );
    assert_eq!(p.slot_count().await, 1);
    let slot_lsn = p.confirmed_lsn().await;
    assert_eq!(
        slot_lsn,
        [report.consistent_lsn.to_string()],
        "the state points at the new slot"
    );
}

#[tokio::test]
async fn the_log_shows_cdc_progress_without_the_servers_routine_notices() {
    let p = Pipeline::new(
        "snap_log",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let config_file = p.config_file();
    let snapshot = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cdc"))
            .args(["--config", config_file.to_str().unwrap(), "snapshot"])
            .args(extra)
            .env("CDC_LOG_FORMAT", "json")
            .env_remove("CDC_LOG")
            .output()
            .unwrap()
    };
    assert!(snapshot(&[]).status.success());
    // Redoing it re-runs `CREATE ... IF NOT EXISTS`, which the server answers with NOTICEs.
    let again = snapshot(&["--force"]);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{log}");
    assert!(log.contains("snapshot complete"), "{log}");
    assert!(!log.contains("already exists, skipping"), "{log}");
}

#[tokio::test]
async fn a_snapshot_that_fails_mid_copy_drops_its_slot_and_publication() {
    // The filter passes EXPLAIN but divides by zero on row 500, after the slot exists.
    let p = Pipeline::new(
        "snap_fail",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000);",
        "[[tables]]\nsource = \"public.t\"\nwhere = \"1 / (id - 500) > -1000\"",
    )
    .await;
    let err = cdc::snapshot::run(&p.config(), false)
        .await
        .expect_err("division by zero");
    assert!(format!("{err:?}").contains("division by zero"), "{err:?}");
    assert_eq!(
        p.slot_count().await,
        0,
        "a failed snapshot must not leave its slot"
    );
    assert_eq!(
        p.publication_count().await,
        0,
        "the publication this run created is removed"
    );
    let state = rows_text(
        &p.dst_sql,
        &format!(
            "SELECT (snapshot_completed_at IS NULL)::text FROM cdc.pipeline WHERE slot = '{}'",
            p.slot
        ),
    )
    .await;
    assert_eq!(
        state,
        ["true"],
        "the state shows an unfinished snapshot, never a complete one"
    );
    // Fixing the filter and re-running succeeds.
    let text = p
        .config_text
        .replace("where = \"1 / (id - 500) > -1000\"", "");
    let config =
        cdc::config::Config::from_toml(&text, std::path::Path::new("t"), &crate::harness::NO_ENV)
            .unwrap();
    assert_eq!(
        cdc::snapshot::run(&config, false).await.unwrap().tables[0].rows,
        1000
    );
}

#[tokio::test]
async fn failover_slots_from_postgres_17_and_a_clear_refusal_before() {
    let mut p = crate::harness::Pipeline::new(
        "snap_failover",
        "CREATE TABLE t (id int PRIMARY KEY)",
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    p.config_text = p
        .config_text
        .replace("[destination]", "failover = true\n[destination]");
    let version: i32 = p
        .src_sql
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let result = cdc::snapshot::run(&p.config(), false).await;
    if version >= 170000 {
        result.expect("a failover slot");
        let failover = crate::harness::rows_text(
            &p.src_sql,
            &format!(
                "SELECT failover::text FROM pg_replication_slots WHERE slot_name = '{}'",
                p.slot
            ),
        )
        .await;
        assert_eq!(failover, ["true"]);
    } else {
        let e = result.unwrap_err().to_string();
        assert!(e.contains("source.failover needs Postgres 17"), "{e}");
        assert_eq!(p.slot_count().await, 0);
        assert_eq!(p.publication_count().await, 0, "nothing was created");
    }
}
