//! Postgres → DuckDB against a real source and a real DuckDB file: every type by snapshot and
//! by stream, each change kind, a concurrent reader in another process, kill -9, bad input.
//!
//! `cdc run` runs as its own process here (DuckDB allows one process to write *or* several
//! to read a file), and this test process is the other reader: it opens the file read-only
//! between cdc's batches, as an analyst's process would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use duckdb::{AccessMode, Config, Connection};

use crate::harness::{unique, wait_for, Pipeline};
use crate::run::FAST;

/// A pipeline whose destination is a DuckDB file in a fresh temporary directory.
pub(crate) async fn duck_pipeline(prefix: &str, ddl: &str, tables: &str) -> (Pipeline, PathBuf) {
    let mut p = Pipeline::new(prefix, ddl, &format!("{tables}{FAST}")).await;
    let dir = crate::harness::scratch().join(unique("cdc-duckdb"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("analytics.duckdb");
    let start = p.config_text.find("[destination]\nurl = ").unwrap();
    let end = start + p.config_text[start..].find("\n[status]").unwrap();
    p.config_text.replace_range(
        start..end,
        &format!("[destination]\nurl = \"duckdb://{}\"", file.display()),
    );
    (p, file)
}

pub(crate) fn cdc(p: &Pipeline, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cdc"));
    c.args([
        "--config",
        p.config_file().to_str().unwrap(),
        "--log-format",
        "json",
    ])
    .args(args)
    .env("CDC_LOG", "warn");
    c
}

/// A `cdc run` process, killed when dropped (also when a test fails).
struct RunProcess(Child);

impl RunProcess {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_run(p: &Pipeline) -> RunProcess {
    RunProcess(
        cdc(p, &["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cdc run"),
    )
}

/// `sql` on the file opened read-only, every value as DuckDB prints it (`NULL` for null);
/// `None` while the file or the table is not there yet. Waits while cdc holds the file.
pub(crate) fn read(file: &Path, sql: &str) -> Option<Vec<Vec<String>>> {
    if !file.exists() {
        return None;
    }
    let conn = loop {
        let config = Config::default().access_mode(AccessMode::ReadOnly).unwrap();
        match Connection::open_with_flags(file, config) {
            Ok(c) => break c,
            Err(e) if e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("opening {}: {e}", file.display()),
        }
    };
    let mut stmt = conn.prepare(sql).ok()?;
    let mut rows = stmt.query([]).ok()?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        let n = r.as_ref().column_count();
        out.push(
            (0..n)
                .map(|i| {
                    r.get::<_, Option<String>>(i)
                        .unwrap()
                        .unwrap_or_else(|| "NULL".into())
                })
                .collect(),
        );
    }
    Some(out)
}

async fn wait_rows(file: &Path, sql: &str, expected: Vec<Vec<String>>) {
    wait_for(
        &format!("DuckDB to show {expected:?} for {sql}"),
        Duration::from_secs(60),
        || {
            let ok = read(file, sql).as_ref() == Some(&expected);
            async move { ok }
        },
    )
    .await;
}

fn row(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// Every column of `types` as VARCHAR, for one id.
const TYPES_ROW: &str = "SELECT i2::VARCHAR, i8::VARCHAR, n::VARCHAR, nw::VARCHAR, f4::VARCHAR, f8::VARCHAR, f8n::VARCHAR,
        b::VARCHAR, t::VARCHAR, c::VARCHAR, \"by\"::VARCHAR, d::VARCHAR, dbc::VARCHAR, ts::VARCHAR, tstz::VARCHAR,
        tm::VARCHAR, iv::VARCHAR, u::VARCHAR, j::VARCHAR, arr::VARCHAR, arr2::VARCHAR, tarr::VARCHAR,
        mood::VARCHAR, ip::VARCHAR, m::VARCHAR, r::VARCHAR, dinf::VARCHAR, length(bigtext)::VARCHAR, md5(bigtext)
   FROM public.types WHERE id = ";

const TYPES_DDL: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE TABLE types (
        id int PRIMARY KEY, i2 int2, i8 int8, n numeric(12,3), nw numeric, f4 float4, f8 float8, f8n float8,
        b bool, t text, c char(3), by bytea, d date, dbc date, ts timestamp, tstz timestamptz, tm time,
        iv interval, u uuid, j jsonb, arr int[], arr2 int[][], tarr text[], mood mood, ip inet, m money,
        r int4range, dinf date, bigtext text);
    ALTER TABLE types ALTER COLUMN bigtext SET STORAGE EXTERNAL;";

fn types_insert(id: i32) -> String {
    format!(
        "INSERT INTO types VALUES ({id}, -32768, 9223372036854775807, 123456789.125,
            123456789012345678901234567890123456789012.000000000000000000000001, 1.5, 0.1, 'NaN',
            true, E'tab\\there \"q\" ''s'' é😀', 'ab', '\\x00ff41', '2024-02-29', '0044-03-15 BC',
            '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5+02', '23:59:59.999999',
            '1 year 2 mons -3 days -04:05:06.5', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '{{\"b\": [1, 2], \"a\": null}}', '{{1,NULL,3}}', '{{{{1,2}},{{3,4}}}}', '{{\"x y\",NULL,\"q\\\"z\"}}',
            'happy', '192.168.0.1/24', 12.34, '[1,5)', 'infinity', repeat('toast', 20000))"
    )
}

/// How DuckDB prints the row `types_insert` writes.
fn types_expected() -> Vec<String> {
    row(&[
        "-32768",
        "9223372036854775807",
        "123456789.125",
        "123456789012345678901234567890123456789012.000000000000000000000001",
        "1.5",
        "0.1",
        "nan",
        "true",
        "tab\there \"q\" 's' é😀",
        "ab ",
        "\\x00\\xFFA",
        "2024-02-29",
        "0044-03-15 (BC)",
        "2024-01-02 03:04:05.123456",
        "2024-01-02 01:04:05.5+00",
        "23:59:59.999999",
        "1 year 2 months -3 days -04:05:06.5",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "{\"a\": null, \"b\": [1, 2]}",
        "[1, NULL, 3]",
        "[[1, 2], [3, 4]]",
        "[x y, NULL, 'q\"z']",
        "happy",
        "192.168.0.1/24",
        "$12.34",
        "[1,5)",
        "infinity",
        "100000",
        "395ef85816b3ae1f321360959cacbf6d", // md5 of the 100,000-byte TOASTed text,
    ])
}

#[tokio::test]
async fn every_type_and_change_kind_arrives_exactly_in_duckdb() {
    let (p, file) = duck_pipeline(
        "duck_types",
        &format!(
            "{TYPES_DDL}
             {};
             CREATE TABLE k (id int PRIMARY KEY, v text);
             INSERT INTO k SELECT g, 'v' || g FROM generate_series(1, 5) g;
             CREATE TABLE dup (a int, b text); ALTER TABLE dup REPLICA IDENTITY FULL;
             INSERT INTO dup VALUES (1, 'x'), (1, 'x'), (2, NULL);
             -- Without intervals and arrays, the snapshot takes DuckDB's CSV path.
             CREATE TABLE flat AS SELECT * FROM types;
             ALTER TABLE flat DROP COLUMN iv, DROP COLUMN arr, DROP COLUMN arr2, DROP COLUMN tarr, ADD PRIMARY KEY (id);",
            types_insert(1)
        ),
        "[[tables]]\nsource = \"public.types\"\n[[tables]]\nsource = \"public.k\"\n[[tables]]\nsource = \"public.dup\"\n\
         [[tables]]\nsource = \"public.flat\"\n",
    )
    .await;
    let mut child = spawn_run(&p);

    // By snapshot, through the text path and through DuckDB's CSV reader.
    wait_rows(&file, &format!("{TYPES_ROW}1"), vec![types_expected()]).await;
    let flat_row = TYPES_ROW
        .replace("FROM public.types", "FROM public.flat")
        .replace(" iv::VARCHAR,", "")
        .replace(" arr::VARCHAR, arr2::VARCHAR, tarr::VARCHAR,", "");
    let mut flat_expected = types_expected();
    flat_expected.drain(19..22); // arr, arr2, tarr
    flat_expected.remove(16); // iv
    wait_rows(&file, &format!("{flat_row}1"), vec![flat_expected]).await;
    let types: Vec<Vec<String>> = read(
        &file,
        "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'types' AND column_name IN ('n', 'nw', 'tstz', 'arr2', 'by', 'j') ORDER BY column_name",
    )
    .unwrap();
    assert_eq!(
        types,
        vec![
            row(&["arr2", "INTEGER[][]"]),
            row(&["by", "BLOB"]),
            row(&["j", "JSON"]),
            row(&["n", "DECIMAL(12,3)"]),
            row(&["nw", "VARCHAR"]),
            row(&["tstz", "TIMESTAMP WITH TIME ZONE"]),
        ],
        "native types where exact, text where DuckDB has no exact type"
    );

    // By stream: the same values arrive the same way.
    p.src_sql.batch_execute(&types_insert(2)).await.unwrap();
    wait_rows(&file, &format!("{TYPES_ROW}2"), vec![types_expected()]).await;

    // TOAST-unchanged: an update of another column keeps the large value.
    p.src_sql
        .batch_execute("UPDATE types SET i2 = 7 WHERE id = 2")
        .await
        .unwrap();
    let mut expected = types_expected();
    expected[0] = "7".into();
    wait_rows(&file, &format!("{TYPES_ROW}2"), vec![expected]).await;

    // Each change kind, a key change, and duplicates in a keyless table.
    p.src_sql
        .batch_execute(
            "BEGIN;
             UPDATE k SET v = 'changed' WHERE id = 1;
             DELETE FROM k WHERE id = 2;
             UPDATE k SET id = 30 WHERE id = 3;
             INSERT INTO k VALUES (6, 'six');
             INSERT INTO k VALUES (7, 'seven'); UPDATE k SET v = 'seven!' WHERE id = 7; DELETE FROM k WHERE id = 7;
             COMMIT;
             DELETE FROM dup WHERE ctid = (SELECT ctid FROM dup WHERE a = 1 LIMIT 1);
             UPDATE dup SET b = 'was null' WHERE a = 2;
             INSERT INTO dup VALUES (1, 'x');",
        )
        .await
        .unwrap();
    wait_rows(
        &file,
        "SELECT id::VARCHAR, v FROM public.k ORDER BY id",
        vec![
            row(&["1", "changed"]),
            row(&["4", "v4"]),
            row(&["5", "v5"]),
            row(&["6", "six"]),
            row(&["30", "v3"]),
        ],
    )
    .await;
    wait_rows(
        &file,
        "SELECT a::VARCHAR, b FROM public.dup ORDER BY a, b",
        vec![row(&["1", "x"]), row(&["1", "x"]), row(&["2", "was null"])],
    )
    .await;

    // An added column, then TRUNCATE.
    p.src_sql
        .batch_execute(
            "ALTER TABLE k ADD COLUMN extra numeric(5,1); INSERT INTO k VALUES (8, 'eight', 2.5)",
        )
        .await
        .unwrap();
    wait_rows(
        &file,
        "SELECT id::VARCHAR, extra::VARCHAR FROM public.k WHERE id IN (1, 8) ORDER BY id",
        vec![row(&["1", "NULL"]), row(&["8", "2.5"])],
    )
    .await;
    p.src_sql
        .batch_execute("ALTER TABLE k DROP COLUMN extra; INSERT INTO k VALUES (9, 'nine')")
        .await
        .unwrap();
    wait_rows(
        &file,
        "SELECT count(*)::VARCHAR FROM duckdb_columns() WHERE table_name = 'k' AND column_name = 'extra'",
        vec![row(&["0"])],
    )
    .await;
    wait_rows(
        &file,
        "SELECT v FROM public.k WHERE id = 9",
        vec![row(&["nine"])],
    )
    .await;
    p.src_sql.batch_execute("TRUNCATE dup").await.unwrap();
    wait_rows(
        &file,
        "SELECT count(*)::VARCHAR FROM public.dup",
        vec![row(&["0"])],
    )
    .await;

    // `cdc status` reads the same file while `cdc run` streams into it.
    let status = cdc(&p, &["status", "--json"]).output().unwrap();
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["snapshot_complete"], true);
    assert!(report["applied_lsn"].is_string());

    // `cdc tables` reads the source only; `cdc verify` compares every row of every type while
    // `cdc run` keeps streaming into the file.
    let tables = cdc(&p, &["tables"]).output().unwrap();
    assert_eq!(
        tables.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&tables.stderr)
    );
    let verify = cdc(
        &p,
        &[
            "verify",
            "--format",
            "json",
            "--table",
            "public.types",
            "--table",
            "public.k",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    child.kill();
    let teardown = cdc(&p, &["teardown", "--yes"]).output().unwrap();
    assert_eq!(
        teardown.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&teardown.stderr)
    );
    assert_eq!(p.slot_count().await, 0, "teardown dropped the slot");
}

#[tokio::test]
async fn killing_cdc_run_into_duckdb_loses_and_duplicates_nothing() {
    let (p, file) = duck_pipeline(
        "duck_kill",
        "CREATE TABLE orders (id bigserial PRIMARY KEY, v int NOT NULL);
         CREATE TABLE events (n bigint, note text); ALTER TABLE events REPLICA IDENTITY FULL;
         INSERT INTO orders (v) SELECT 0 FROM generate_series(1, 1000);",
        "[[tables]]\nsource = \"public.orders\"\n[[tables]]\nsource = \"public.events\"\n",
    )
    .await;
    let mut child = spawn_run(&p);
    let mut kills = 0;
    for round in 0..40 {
        // Each transaction: one new order, one changed order, one event (duplicates allowed).
        p.src_sql
            .batch_execute(&format!(
                "BEGIN; INSERT INTO orders (v) VALUES ({round});
                 UPDATE orders SET v = v + 1 WHERE id = {};
                 INSERT INTO events VALUES ({}, 'e'); COMMIT;",
                round % 50 + 1,
                round % 7
            ))
            .await
            .unwrap();
        if round % 8 == 7 {
            child.kill();
            kills += 1;
            child = spawn_run(&p);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let src_orders: (i64, i64) = {
        let r = p
            .src_sql
            .query_one("SELECT count(*), sum(v)::int8 FROM orders", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    wait_rows(
        &file,
        "SELECT count(*)::VARCHAR, sum(v)::VARCHAR FROM public.orders",
        vec![row(&[&src_orders.0.to_string(), &src_orders.1.to_string()])],
    )
    .await;
    let events: Vec<Vec<String>> = {
        let rows = p
            .src_sql
            .query(
                "SELECT n::text, count(*)::text FROM events GROUP BY n ORDER BY n",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| vec![r.get(0), r.get(1)]).collect()
    };
    wait_rows(
        &file,
        "SELECT n::VARCHAR, count(*)::VARCHAR FROM public.events GROUP BY n ORDER BY n",
        events,
    )
    .await;
    assert!(kills >= 4);
    child.kill();
}

#[tokio::test]
async fn bad_duckdb_destinations_are_refused_clearly_and_leave_no_slot() {
    let (mut p, file) = duck_pipeline(
        "duck_bad",
        "CREATE TABLE t (id int PRIMARY KEY)",
        "[[tables]]\nsource = \"public.t\"\n",
    )
    .await;
    // A directory that does not exist.
    let missing = file.parent().unwrap().join("no/such/dir/x.duckdb");
    let good = p.config_text.clone();
    p.config_text = good.replace(&file.display().to_string(), &missing.display().to_string());
    let out = cdc(&p, &["snapshot"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    // A file that is not a DuckDB database.
    std::fs::write(&file, "not a database at all, just text").unwrap();
    p.config_text = good.clone();
    let out = cdc(&p, &["snapshot"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("cannot open DuckDB file"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "not a database at all, just text",
        "the file is left as it was"
    );
    assert_eq!(p.slot_count().await, 0, "no slot left behind");

    // A file another process holds: cdc waits (30 s), then says so with the transient exit
    // code, and leaves nothing behind.
    std::fs::remove_file(&file).unwrap();
    let holder = Connection::open(&file).unwrap();
    let out = cdc(&p, &["snapshot"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("held by another process"), "{err}");
    drop(holder);
    assert_eq!(p.slot_count().await, 0, "no slot left behind");
}

#[tokio::test]
async fn a_file_from_a_newer_duckdb_is_refused_with_how_to_write_one_cdc_reads() {
    let (p, file) = duck_pipeline(
        "duck_newer",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
        "[[tables]]\nsource = \"public.t\"\n",
    )
    .await;
    // DuckDB 2.x (the Snowflake emulator's Python has it) writes storage version 69.
    let python = cdc::destination::snowflake::local::python().expect("python with duckdb 2.x");
    let duckdb2 = |script: &str| {
        let out = Command::new(&python).args(["-c", script]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    duckdb2(&format!(
        "import duckdb; c = duckdb.connect({:?}); c.execute('CREATE TABLE kept AS SELECT 42 AS x'); c.close()",
        file.display().to_string()
    ));
    let out = cdc(&p, &["snapshot"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("written by a newer DuckDB") && err.contains("1.5.6 cdc links"),
        "{err}"
    );
    assert!(
        !err.contains("writable directory"),
        "not a path problem: {err}"
    );
    assert_eq!(p.slot_count().await, 0, "no slot left behind");

    // The advice, followed with the DuckDB that wrote the file, gives a file cdc reads.
    let sql = err
        .split("with the DuckDB that wrote it: ")
        .nth(1)
        .and_then(|rest| rest.split("; then point").next())
        .unwrap_or_else(|| panic!("no statements in: {err}"));
    duckdb2(&format!(
        "import duckdb; c = duckdb.connect(); [c.execute(s) for s in {:?}.split('; ')]",
        sql
    ));
    let copy = file.with_file_name(format!(
        "{}-v1.5.duckdb",
        file.file_stem().unwrap().to_string_lossy()
    ));
    assert!(copy.exists(), "{} not written", copy.display());
    let mut p = p;
    p.config_text = p
        .config_text
        .replace(&file.display().to_string(), &copy.display().to_string());
    let out = cdc(&p, &["snapshot"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = Connection::open(&copy).unwrap();
    let kept: i32 = c.query_row("SELECT x FROM kept", [], |r| r.get(0)).unwrap();
    let rows: i64 = c
        .query_row("SELECT count(*) FROM public.t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (kept, rows),
        (42, 2),
        "the old data kept, the new table copied"
    );
}

#[tokio::test]
async fn verify_finds_missing_changed_and_extra_rows_in_a_duckdb_file() {
    let (p, file) = duck_pipeline(
        "duck_verify",
        "CREATE TABLE t (id int PRIMARY KEY, name text, amount numeric(10,2), at timestamptz, tags text[],
                         cdc_kind int DEFAULT 1);
         INSERT INTO t SELECT g, 'n' || g, g / 3.0, '2024-01-01 00:00+00'::timestamptz + g * interval '1 minute',
                              ARRAY['a', NULL] FROM generate_series(1, 2000) g;",
        "[[tables]]\nsource = \"public.t\"\n",
    )
    .await;
    let out = cdc(&p, &["snapshot"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = |p: &Pipeline| {
        let out = cdc(p, &["verify", "--format", "json"]).output().unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (code, report) = verify(&p);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["tables"][0]["source_rows"], 2000);

    // Plant one difference of each kind in the file (nothing else has it open). The table has
    // a column named like the comparison's own words (`cdc_kind`), which must not matter.
    let conn = Connection::open(&file).unwrap();
    conn.execute_batch(
        "DELETE FROM public.t WHERE id = 7;
         UPDATE public.t SET amount = 1.01 WHERE id = 1500;
         INSERT INTO public.t VALUES (5000, 'extra', 0, NULL, NULL, 1);",
    )
    .unwrap();
    drop(conn);
    let (code, report) = verify(&p);
    assert_eq!(code, Some(1), "{report}");
    let t = &report["tables"][0];
    assert_eq!(t["missing"][0]["key"]["id"], "7", "{t}");
    assert_eq!(t["missing"][0]["source"]["name"], "n7", "{t}");
    assert_eq!(t["different"][0]["key"]["id"], "1500", "{t}");
    assert_eq!(t["different"][0]["columns"][0]["column"], "amount", "{t}");
    assert_eq!(t["different"][0]["columns"][0]["source"], "500.00", "{t}");
    assert_eq!(
        t["different"][0]["columns"][0]["destination"], "1.01",
        "{t}"
    );
    assert_eq!(t["extra"][0]["key"]["id"], "5000", "{t}");
    let count = |kind: &str| t[kind].as_array().unwrap().len();
    assert_eq!(
        (count("missing"), count("different"), count("extra")),
        (1, 1, 1),
        "{t}"
    );

    // More differences than `--max-differences`: missing rows are reported first, then extra,
    // then changed ones, each kind in key order, and the report says it stopped.
    let conn = Connection::open(&file).unwrap();
    conn.execute_batch(
        "DELETE FROM public.t WHERE id IN (3, 11);
         UPDATE public.t SET name = 'x' WHERE id IN (20, 10, 30);
         INSERT INTO public.t VALUES (4000, 'extra', 0, NULL, NULL, 1);",
    )
    .unwrap();
    drop(conn);
    let capped = |max: &str| {
        let out = cdc(
            &p,
            &["verify", "--format", "json", "--max-differences", max],
        )
        .output()
        .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        report["tables"][0].clone()
    };
    let ids = |t: &serde_json::Value, kind: &str| -> Vec<String> {
        t[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["key"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let t = capped("7");
    assert_eq!(ids(&t, "missing"), ["3", "7", "11"], "{t}");
    assert_eq!(ids(&t, "extra"), ["4000", "5000"], "{t}");
    assert_eq!(ids(&t, "different"), ["10", "20"], "{t}");
    assert_eq!(t["truncated"], true, "{t}");
    let t = capped("100");
    assert_eq!(ids(&t, "different"), ["10", "20", "30", "1500"], "{t}");
    assert_eq!(t["truncated"], false, "{t}");

    // A `--key` whose first column is NULL on the destination: that row matches nothing, so it
    // is extra, and the source's row is missing (not a missing row of NULLs).
    let conn = Connection::open(&file).unwrap();
    conn.execute_batch("UPDATE public.t SET name = NULL WHERE id = 42")
        .unwrap();
    drop(conn);
    let out = cdc(
        &p,
        &[
            "verify",
            "--format",
            "json",
            "--key",
            "name,id",
            "--max-differences",
            "100",
        ],
    )
    .output()
    .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let t = &report["tables"][0];
    let with_id_42 = |kind: &str, side: &str| -> Vec<serde_json::Value> {
        t[kind]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["key"]["id"] == "42")
            .map(|d| d[side]["name"].clone())
            .collect()
    };
    assert_eq!(
        with_id_42("extra", "destination"),
        [serde_json::Value::Null],
        "{t}"
    );
    assert_eq!(with_id_42("missing", "source"), ["n42"], "{t}");
    let missing = t["missing"].as_array().unwrap();
    assert!(missing.iter().all(|d| !d["source"]["id"].is_null()), "{t}");
    cdc(&p, &["teardown", "--yes"]).output().unwrap();
}

#[tokio::test]
async fn pgbench_during_snapshot_and_streaming_into_duckdb_leaves_identical_tables() {
    let (p, file) = duck_pipeline(
        "duck_pgbench",
        "SELECT 1",
        "[[tables]]\nsource = \"public.pgbench_accounts\"\n[[tables]]\nsource = \"public.pgbench_branches\"\n\
         [[tables]]\nsource = \"public.pgbench_tellers\"\n[[tables]]\nsource = \"public.pgbench_history\"\n",
    )
    .await;
    let pgbench = |args: &[&str]| p.pgbench(args);
    p.pgbench_init(1).await;
    // The load starts with the snapshot and goes on while changes stream.
    let mut load = pgbench(&["-T", "6", "-c", "2", "-j", "1"]).spawn().unwrap();
    let _run = spawn_run(&p);
    assert!(load.wait().unwrap().success(), "pgbench run failed");
    for (table, digest) in [
        (
            "pgbench_accounts",
            "count(*)::text || ' ' || sum(aid::bigint * 7 + abalance)::text",
        ),
        (
            "pgbench_branches",
            "count(*)::text || ' ' || sum(bid::bigint * 7 + bbalance)::text",
        ),
        (
            "pgbench_tellers",
            "count(*)::text || ' ' || sum(tid::bigint * 7 + tbalance)::text",
        ),
        (
            "pgbench_history",
            "count(*)::text || ' ' || sum(tid::bigint * 7 + delta)::text",
        ),
    ] {
        let expected: String = p
            .src_sql
            .query_one(&format!("SELECT {digest} FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        let duck = digest
            .replace("::text", "::VARCHAR")
            .replace("::bigint", "::BIGINT");
        wait_rows(
            &file,
            &format!("SELECT {duck} FROM public.{table}"),
            vec![vec![expected]],
        )
        .await;
    }
}

#[tokio::test]
async fn added_columns_with_defaults_are_backfilled_in_duckdb() {
    let (p, file) = duck_pipeline(
        "duck_add_default",
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t SELECT g, g FROM generate_series(1, 2000) g;",
        "[[tables]]\nsource = \"public.t\"\n",
    )
    .await;
    let _run = spawn_run(&p);
    wait_rows(
        &file,
        "SELECT count(*)::VARCHAR FROM public.t",
        vec![row(&["2000"])],
    )
    .await;
    p.src_sql
        .batch_execute(
            "ALTER TABLE t ADD COLUMN score int DEFAULT 7, ADD COLUMN tag uuid DEFAULT gen_random_uuid();
             UPDATE t SET v = -1 WHERE id = 1;",
        )
        .await
        .unwrap();
    let expected: String = p
        .src_sql
        .query_one(
            "SELECT count(*) FILTER (WHERE score = 7)::text || ' ' || md5(string_agg(tag::text, ',' ORDER BY id)) FROM t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_rows(
        &file,
        "SELECT count(*) FILTER (WHERE score = 7)::VARCHAR || ' ' || md5(string_agg(tag::VARCHAR, ',' ORDER BY id)) FROM public.t",
        vec![vec![expected]],
    )
    .await;
}

#[tokio::test]
async fn a_key_change_of_a_row_with_unchanged_toast_values_keeps_the_row_in_duckdb() {
    let (p, file) = duck_pipeline(
        "duck_toast_key",
        "CREATE TABLE k (id int PRIMARY KEY, v text, doc text);
         ALTER TABLE k ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO k SELECT g, 'v', repeat(md5(g::text), 200) FROM generate_series(1, 6) g;",
        "[[tables]]\nsource = \"public.k\"\n",
    )
    .await;
    let _child = spawn_run(&p);
    wait_rows(
        &file,
        "SELECT count(*)::VARCHAR FROM public.k",
        vec![row(&["6"])],
    )
    .await;
    p.src_sql
        .batch_execute(
            "UPDATE k SET id = 10 WHERE id = 1;
             BEGIN; UPDATE k SET id = 20 WHERE id = 2; UPDATE k SET id = 21 WHERE id = 20; COMMIT;
             BEGIN; DELETE FROM k WHERE id = 4; UPDATE k SET id = 4, v = 'moved' WHERE id = 3; COMMIT;
             BEGIN; UPDATE k SET id = 50 WHERE id = 5; UPDATE k SET id = 5, v = 'back' WHERE id = 50; COMMIT;",
        )
        .await
        .unwrap();
    let expected: Vec<Vec<String>> = p
        .src_sql
        .query("SELECT id::text, v, md5(doc) FROM k ORDER BY k.id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| vec![r.get(0), r.get(1), r.get(2)])
        .collect();
    wait_rows(
        &file,
        "SELECT id::VARCHAR, v, md5(doc) FROM public.k AS t ORDER BY t.id",
        expected,
    )
    .await;
}
