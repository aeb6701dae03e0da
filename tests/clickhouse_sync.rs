//! `cdc sync` into a real ClickHouse 26.9: every strategy from a Postgres source and a SQLite
//! file, the views showing the source's rows after each pass, `diff` deletes as tombstones, a
//! table that `cdc run` streamed before (its rows at WAL-position versions) synced on, kill -9
//! inside passes, `cdc verify` and `cdc tables --destination` on synced tables, and refusals.

use cdc::destination::clickhouse::http::Client;
use cdc::sync::{Options, Summary};

use crate::clickhouse_stream::{ch_pipeline, ch_rows, row, wait_ch, RunProcess};
use crate::duckdb::cdc;
use crate::harness::Pipeline;
use crate::sync::kill_when;

/// The same table under each strategy's name.
const TABLES: [&str; 7] = [
    "m_items", "n_items", "d_items", "x_items", "r_items", "w_items", "s_items",
];

fn items_ddl() -> String {
    TABLES
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE {t} (id bigint PRIMARY KEY, name text, price numeric(10,2),
                     updated_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00');
                 INSERT INTO {t} (id, name, price) SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 100) g;"
            )
        })
        .collect()
}

async fn pass(p: &Pipeline) -> Summary {
    let summary = cdc::sync::pass(&p.config(), &Options::default())
        .await
        .expect("sync pass");
    for t in &summary.tables {
        assert!(t.error.is_none(), "{} failed: {:?}", t.destination, t.error);
    }
    summary
}

fn by<'a>(s: &'a Summary, name: &str) -> &'a cdc::sync::TableSummary {
    s.tables
        .iter()
        .find(|t| t.destination == format!("public.{name}"))
        .unwrap_or_else(|| panic!("{name} not in {s:?}"))
}

fn owned(rows: &[&Vec<String>]) -> Vec<Vec<String>> {
    rows.iter().map(|r| (*r).clone()).collect()
}

/// The rows of a view that the changes touch, as ClickHouse prints them.
async fn touched(c: &Client, t: &str) -> Vec<Vec<String>> {
    ch_rows(
        c,
        &format!(
            "SELECT id, name, price, toDate(updated_at) FROM `{t}` WHERE id IN (3, 5, 7, 8, 101, 1000) ORDER BY id"
        ),
    )
    .await
    .unwrap_or_else(|| panic!("reading {t}"))
}

#[tokio::test]
async fn every_strategy_keeps_its_promise_in_clickhouse() {
    let config = "[[tables]]\nsource = \"public.m_items\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"
[[tables]]\nsource = \"public.n_items\"\nstrategy = \"new_rows\"
[[tables]]\nsource = \"public.d_items\"
[[tables]]\nsource = \"public.x_items\"\nstrategy = \"xmin\"
[[tables]]\nsource = \"public.r_items\"\nstrategy = \"reload\"
[[tables]]\nsource = \"public.w_items\"\nwhere = \"updated_at >= '2024-01-01'\"
[[tables]]\nsource = \"public.s_items\"\nstrategy = \"skip\"\n";
    let (p, c, db) = ch_pipeline("ch_sync", &items_ddl(), config).await;
    crate::sync::wait_for_older_transactions(&p, "x_items").await;
    let first = pass(&p).await;
    for t in &TABLES[..6] {
        let s = by(&first, t);
        assert!(s.full_copy && s.inserted == 100, "{t}: {s:?}");
    }
    assert_eq!(by(&first, "s_items").strategy, "skip");
    for t in TABLES {
        p.src_sql
            .batch_execute(&format!(
                "INSERT INTO {t} (id, name, price, updated_at) VALUES (101, 'new', 1, '2024-01-02 00:00:00+00');
                 UPDATE {t} SET price = 99, updated_at = '2024-01-03 00:00:00+00' WHERE id = 5;
                 DELETE FROM {t} WHERE id = 7;
                 UPDATE {t} SET id = 1000, updated_at = '2024-01-03 00:00:00+00' WHERE id = 8;
                 UPDATE {t} SET updated_at = '2023-12-31 00:00:00+00' WHERE id = 3;"
            ))
            .await
            .unwrap();
    }
    let second = pass(&p).await;
    let d = by(&second, "d_items");
    assert_eq!((d.inserted, d.updated, d.deleted), (2, 2, 2), "{d:?}");
    assert_eq!(by(&second, "x_items").rows_read, 4);
    let (old3, new3) = (
        row(&["3", "item 3", "4.50", "2024-01-01"]),
        row(&["3", "item 3", "4.50", "2023-12-31"]),
    );
    let r5 = row(&["5", "item 5", "99.00", "2024-01-03"]);
    let (r7, r8) = (
        row(&["7", "item 7", "10.50", "2024-01-01"]),
        row(&["8", "item 8", "12.00", "2024-01-01"]),
    );
    let r101 = row(&["101", "new", "1.00", "2024-01-02"]);
    let r1000 = row(&["1000", "item 8", "12.00", "2024-01-03"]);
    // modified: inserts and updates, deletes not seen; rows at the boundary re-read.
    assert_eq!(
        touched(&c, "m_items").await,
        owned(&[&old3, &r5, &r7, &r8, &r101, &r1000])
    );
    assert_eq!(
        touched(&c, "x_items").await,
        owned(&[&new3, &r5, &r7, &r8, &r101, &r1000])
    );
    let r5_old = row(&["5", "item 5", "7.50", "2024-01-01"]);
    assert_eq!(
        touched(&c, "n_items").await,
        owned(&[&old3, &r5_old, &r7, &r8, &r101, &r1000])
    );
    // diff and reload: exactly the source; the moving window dropped the row that left it.
    let exact = owned(&[&new3, &r5, &r101, &r1000]);
    assert_eq!(touched(&c, "d_items").await, exact);
    assert_eq!(touched(&c, "r_items").await, exact);
    assert_eq!(touched(&c, "w_items").await, owned(&[&r5, &r101, &r1000]));
    // A key updated again: the later pass's write wins over the earlier one.
    for t in ["m_items", "d_items"] {
        p.src_sql
            .batch_execute(&format!(
                "UPDATE {t} SET price = 100, updated_at = '2024-01-04 00:00:00+00' WHERE id = 5"
            ))
            .await
            .unwrap();
    }
    pass(&p).await;
    for t in ["m_items", "d_items"] {
        assert_eq!(
            touched(&c, t).await[1],
            row(&["5", "item 5", "100.00", "2024-01-04"]),
            "{t}"
        );
    }
    // Nothing of the skipped table, no staging table left, the state in the state database.
    let tables = ch_rows(
        &c,
        &format!("SELECT name FROM system.tables WHERE database = '{db}' AND engine = 'View' ORDER BY name"),
    )
    .await
    .unwrap();
    let mut views: Vec<Vec<String>> = TABLES[..6].iter().map(|t| row(&[t])).collect();
    views.sort();
    assert_eq!(tables, views);
    let out = cdc(&p, &["tables", "--destination"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("public.m_items"))
        .unwrap();
    assert!(
        line.contains(" 102 ")
            && line.contains("modified")
            && line.contains("2024-01-04 00:00:00+00"),
        "{line}"
    );
    // verify compares the synced tables that promise the source's rows.
    let out = cdc(
        &p,
        &[
            "verify",
            "--table",
            "public.d_items",
            "--table",
            "public.r_items",
            "--table",
            "public.w_items",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cdc(&p, &["verify", "--table", "public.m_items"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "modified does not see deletes");
}

#[tokio::test]
async fn a_table_streamed_before_is_refused_then_synced_on_after_teardown() {
    let (p, c, _db) = ch_pipeline(
        "ch_sync_after_run",
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;",
        "[[tables]]\nsource = \"public.t\"\n",
    )
    .await;
    let mut run = RunProcess::start(&p);
    // The copy is in (its rows have version 0), so what follows is streamed.
    wait_ch(&c, "SELECT count() FROM t", vec![row(&["50"])]).await;
    // Streamed changes carry versions from the WAL, far above a snapshot's.
    p.src_sql
        .batch_execute("UPDATE t SET v = 'streamed' WHERE id <= 10")
        .await
        .unwrap();
    wait_ch(
        &c,
        "SELECT count() FROM t WHERE v = 'streamed'",
        vec![row(&["10"])],
    )
    .await;
    run.kill();
    let out = cdc(&p, &["sync"]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("cdc teardown"), "{text}");
    let out = cdc(&p, &["teardown", "--yes"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.src_sql
        .batch_execute("UPDATE t SET v = 'synced' WHERE id <= 5; DELETE FROM t WHERE id = 50;")
        .await
        .unwrap();
    let s = pass(&p).await;
    assert_eq!((s.tables[0].updated, s.tables[0].deleted), (5, 1));
    assert_eq!(
        ch_rows(
            &c,
            "SELECT countIf(v = 'streamed'), countIf(v = 'synced'), count() FROM t"
        )
        .await
        .unwrap(),
        [row(&["5", "5", "49"])],
        "the sync's writes order after the stream's"
    );
}

/// Count, key sum and a hash of every `id:v` in key order: the same on both sides when the
/// tables hold the same rows.
async fn same_rows(p: &Pipeline, c: &Client, table: &str) {
    let pg = crate::conformance::text_rows(
        &p.src_sql,
        &format!(
            "SELECT count(*)::text, sum(id)::text, md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM {table}"
        ),
    )
    .await
    .unwrap();
    let ch = ch_rows(
        c,
        &format!(
            "SELECT toString(count()), toString(sum(id)), lower(hex(MD5(arrayStringConcat(arrayMap(x -> \
             concat(toString(x.1), ':', x.2), arraySort(x -> x.1, groupArray((id, v)))), ',')))) FROM `{table}`"
        ),
    )
    .await
    .unwrap();
    assert_eq!(pg, ch, "{table}");
}

#[tokio::test]
async fn kill_9_inside_passes_into_clickhouse_then_a_rerun_is_identical() {
    let (p, c, db) = ch_pipeline(
        "ch_sync_kill",
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, updated_at timestamptz NOT NULL DEFAULT '2024-01-01');
         CREATE INDEX ON t (updated_at);
         INSERT INTO t (id, v) SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 60000) g;
         CREATE TABLE u AS SELECT * FROM t; ALTER TABLE u ADD PRIMARY KEY (id);",
        "[[tables]]\nsource = \"public.t\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"\nbatch_rows = 100
[[tables]]\nsource = \"public.u\"\nbatch_rows = 100",
    )
    .await;
    // Inside the first copy: the staging table is there, nothing is swapped in yet.
    kill_when(&p, &["sync", "public.t"], "the copy to start", || async {
        ch_rows(
            &c,
            &format!("SELECT count() FROM system.tables WHERE database = '{db}' AND name LIKE 't\\\\_\\\\_cdc\\\\_staging%'"),
        )
        .await
        .is_some_and(|r| r[0][0] != "0")
    })
    .await;
    assert_eq!(
        ch_rows(
            &c,
            &format!("SELECT count() FROM system.tables WHERE database = '{db}' AND name = 't'")
        )
        .await,
        Some(vec![row(&["0"])]),
        "no half table is visible"
    );
    pass(&p).await;
    same_rows(&p, &c, "t").await;
    same_rows(&p, &c, "u").await;
    // Inside a `modified` pass and a `diff` repair: some batches written, the rest not.
    p.src_sql
        .batch_execute(
            "UPDATE t SET v = 'changed', updated_at = '2024-02-01' WHERE id % 3 = 0;
             UPDATE u SET v = 'changed' WHERE id % 3 = 0; DELETE FROM u WHERE id % 7 = 0;",
        )
        .await
        .unwrap();
    for table in ["t", "u"] {
        let args = ["sync".to_owned(), format!("public.{table}")];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kill_when(&p, &args, "some batches of the pass", || async {
            ch_rows(
                &c,
                &format!("SELECT count() FROM `{table}` WHERE v = 'changed'"),
            )
            .await
            .is_some_and(|r| r[0][0] != "0")
        })
        .await;
    }
    // Written again after the kill, on the source, before the rerun: the rerun's versions
    // must win over the killed pass's.
    p.src_sql
        .batch_execute(
            "UPDATE t SET v = 'again', updated_at = '2024-03-01' WHERE id % 6 = 0;
             UPDATE u SET v = 'again' WHERE id % 6 = 0;",
        )
        .await
        .unwrap();
    pass(&p).await;
    same_rows(&p, &c, "t").await;
    same_rows(&p, &c, "u").await;
}

#[tokio::test]
async fn a_sqlite_file_syncs_into_clickhouse_and_verifies_by_meaning() {
    let mut f = crate::sqlite::Fixture::new(
        "sqlite_ch",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price DECIMAL(10,2),
             at TIMESTAMP WITH TIME ZONE, ok BOOLEAN, raw BLOB, ref UUID);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO items SELECT i, 'item ' || i, i * 1.25, '2024-03-0' || (i % 9 + 1) || ' 10:00:00+02',
             i % 2, CASE WHEN i % 3 = 0 THEN NULL ELSE x'00ff10' END,
             printf('%08x-0000-4000-8000-%012x', i, i) FROM n;
         CREATE TABLE events (code TEXT PRIMARY KEY, n INTEGER);
         INSERT INTO events VALUES ('b', 1), ('a', 2), ('B', 3), ('é', 4);",
        "",
        "",
    )
    .await;
    let db = crate::harness::unique("sqlite_ch");
    let admin = Client::new(
        cdc::destination::clickhouse::ClickHouseUrl::parse(
            &crate::clickhouse::server().url("default"),
        )
        .unwrap(),
    )
    .unwrap();
    admin
        .query(&format!("CREATE DATABASE `{db}`"))
        .await
        .unwrap();
    let url = crate::clickhouse::server().url(&db);
    let c = Client::new(cdc::destination::clickhouse::ClickHouseUrl::parse(&url).unwrap()).unwrap();
    f.config_text = format!(
        "[source]\nurl = \"sqlite:{}\"\n[destination]\nurl = \"{url}\"
[[tables]]\nsource = \"main.items\"
[[tables]]\nsource = \"main.events\"\nstrategy = \"new_rows\"\nreload_on = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n",
        f.file.display(),
    );
    let first = crate::sqlite::pass(&f).await;
    assert!(first.tables.iter().all(|t| t.full_copy), "{first:?}");
    let second = crate::sqlite::pass(&f).await;
    let items = second
        .tables
        .iter()
        .find(|t| t.source == "main.items")
        .unwrap();
    assert_eq!(items.rows_read, 0, "unchanged: nothing read twice");
    let events = second
        .tables
        .iter()
        .find(|t| t.source == "main.events")
        .unwrap();
    assert!(events.full_copy, "reload_on today reloads: {events:?}");
    f.sqlite(
        "UPDATE items SET name = 'changed', at = '2024-03-01 12:00:00+04' WHERE id = 7;
         DELETE FROM items WHERE id = 8;
         INSERT INTO items VALUES (51, 'new', 0.5, NULL, 1, NULL, NULL);
         DELETE FROM events WHERE code = 'a';",
    );
    let third = crate::sqlite::pass(&f).await;
    let t = third
        .tables
        .iter()
        .find(|t| t.source == "main.items")
        .unwrap();
    assert_eq!((t.inserted, t.updated, t.deleted), (1, 1, 1));
    assert_eq!(
        ch_rows(&c, "SELECT id, name, toString(at), raw, ref FROM main_items WHERE id IN (6, 7, 8, 51) ORDER BY id")
            .await
            .unwrap(),
        [
            row(&["6", "item 6", "2024-03-07 08:00:00.000000", "NULL", "00000006-0000-4000-8000-000000000006"]),
            row(&["7", "changed", "2024-03-01 08:00:00.000000", "\\x00ff10", "00000007-0000-4000-8000-000000000007"]),
            row(&["51", "new", "NULL", "NULL", "NULL"]),
        ]
    );
    assert_eq!(
        ch_rows(&c, "SELECT code FROM main_events ORDER BY code")
            .await
            .unwrap(),
        [row(&["B"]), row(&["b"]), row(&["é"])],
        "the reload left out the deleted row"
    );
    let report = crate::sqlite::verify(&f).await.unwrap();
    assert!(report.equal, "{}", report.human(5));
    // A value changed on the destination by hand (a newer version) is seen, by meaning.
    let fields = "id, name, price, at, ok, raw, ref";
    c.query(&format!(
        "INSERT INTO main_items__cdc_versions ({fields}, _cdc_version, _cdc_deleted) \
         SELECT {}, toUInt128('340282366920938463463374607431768211455'), 0 FROM main_items WHERE id = 9",
        fields.replace("at,", "at + INTERVAL 1 SECOND,")
    ))
    .await
    .unwrap();
    let report = crate::sqlite::verify(&f).await.unwrap();
    assert_eq!(report.tables[0].different.len(), 1, "{}", report.human(5));
    assert_eq!(report.tables[0].different[0].columns[0].column, "at");
}

#[tokio::test]
async fn pgwarehouse_variables_sync_all_and_max_records_make_a_trial_run() {
    let (mut p, c, db) = ch_pipeline(
        "ch_sync_pgw",
        "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 100) g;
         CREATE TABLE small (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO small VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        "[[tables]]\nsource = \"public.big\"\n[[tables]]\nsource = \"public.small\"\n",
    )
    .await;
    // No URL in the file: the source from libpq's variables, the destination from
    // pgwarehouse's; the cap for every table from the source stanza.
    p.config_text = p
        .config_text
        .lines()
        .filter(|l| !l.starts_with("url = "))
        .map(|l| {
            if l == "[source]" {
                "[source]\nmax_records = 10".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ch =
        cdc::destination::clickhouse::ClickHouseUrl::parse(&crate::clickhouse::server().url(&db))
            .unwrap();
    let with_env = |args: &[&str]| {
        let mut cmd = cdc(&p, args);
        cmd.env("PGHOST", &p.src.host)
            .env("PGPORT", p.src.port.to_string())
            .env("PGDATABASE", &p.src.dbname)
            .env("PGUSER", &p.src.user)
            .env("CLICKHOUSE_HOST", format!("{}:{}", ch.host, ch.port))
            .env("CLICKHOUSE_DATABASE", &db)
            .env("CLICKHOUSE_USER", "default");
        if let Some(pw) = &p.src.password {
            cmd.env("PGPASSWORD", pw.expose());
        }
        cmd.output().unwrap()
    };
    let out = with_env(&["sync", "all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.matches("TRIAL: stopped at max_records = 10").count(),
        1,
        "{text}"
    );
    assert_eq!(
        ch_rows(
            &c,
            "SELECT (SELECT count() FROM big), (SELECT count() FROM small)"
        )
        .await,
        Some(vec![row(&["10", "3"])])
    );
    // The stream copies every row: a capped config is refused before anything starts.
    let out = with_env(&["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("source.max_records") && err.contains("cdc sync"),
        "{err}"
    );
    assert_eq!(p.slot_count().await, 0, "no slot left behind");
}

#[tokio::test]
async fn a_keyless_table_is_refused_with_the_fix_and_the_others_sync() {
    let (p, c, db) = ch_pipeline(
        "ch_sync_keyless",
        "CREATE TABLE logs (at timestamptz, line text);
         INSERT INTO logs VALUES ('2024-01-01', 'a'), ('2024-01-01', 'a');
         CREATE TABLE keyed (id int PRIMARY KEY);
         INSERT INTO keyed VALUES (1), (2);",
        "[[tables]]\nsource = \"public.logs\"\n[[tables]]\nsource = \"public.keyed\"\n",
    )
    .await;
    let summary = cdc::sync::pass(&p.config(), &Options::default())
        .await
        .unwrap();
    let logs = summary
        .tables
        .iter()
        .find(|t| t.source == "public.logs")
        .unwrap();
    let error = logs.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("has no primary key") && error.contains("ADD PRIMARY KEY"),
        "{error}"
    );
    assert!(summary
        .tables
        .iter()
        .any(|t| t.source == "public.keyed" && t.error.is_none() && t.inserted == 2));
    // Nothing of the refused table was created, not even its staging table.
    assert_eq!(
        ch_rows(
            &c,
            &format!(
                "SELECT count() FROM system.tables WHERE database = '{db}' AND name LIKE 'logs%'"
            )
        )
        .await,
        Some(vec![row(&["0"])])
    );
}
