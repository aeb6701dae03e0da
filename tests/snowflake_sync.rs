//! `cdc sync` into Snowflake (the emulator, or a real account with `CDC_TEST_SNOWFLAKE_URL`):
//! every strategy from a Postgres source, kill -9 inside passes, a SQLite file's `diff`, and
//! `cdc verify` / `cdc tables --destination` on synced tables.

use cdc::destination::snowflake::client::Client;
use cdc::destination::snowflake::types::quote;
use cdc::sync::{Options, Summary};

use crate::duckdb::cdc;
use crate::harness::Pipeline;
use crate::snowflake::{fresh_database, sf_pipeline, sf_rows};
use crate::sync::kill_when;

const TABLES: [&str; 7] = [
    "m_items", "n_items", "d_items", "x_items", "r_items", "w_items", "s_items",
];

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

fn row(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The rows the changes touch, as Postgres prints them.
async fn touched(c: &Client, t: &str) -> Vec<Vec<String>> {
    let all = sf_rows(
        c,
        t,
        &[
            ("id", "NUMBER(19,0)"),
            ("name", "VARCHAR"),
            ("price", "NUMBER(10,2)"),
            ("updated_at", "TIMESTAMP_TZ"),
        ],
        "\"id\"",
    )
    .await
    .unwrap_or_else(|| panic!("reading {t}"));
    all.into_iter()
        .filter(|r| ["3", "5", "7", "8", "101", "1000"].contains(&r[0].as_str()))
        .map(|mut r| {
            r[3].truncate(10);
            r
        })
        .collect()
}

#[tokio::test]
async fn every_strategy_keeps_its_promise_in_snowflake() {
    let ddl: String = TABLES
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE {t} (id bigint PRIMARY KEY, name text, price numeric(10,2),
                     updated_at timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00');
                 INSERT INTO {t} (id, name, price) SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 100) g;"
            )
        })
        .collect();
    let config = "[[tables]]\nsource = \"public.m_items\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"
[[tables]]\nsource = \"public.n_items\"\nstrategy = \"new_rows\"
[[tables]]\nsource = \"public.d_items\"
[[tables]]\nsource = \"public.x_items\"\nstrategy = \"xmin\"
[[tables]]\nsource = \"public.r_items\"\nstrategy = \"reload\"
[[tables]]\nsource = \"public.w_items\"\nwhere = \"updated_at >= '2024-01-01'\"
[[tables]]\nsource = \"public.s_items\"\nstrategy = \"skip\"\n";
    let (p, c) = sf_pipeline("sf_sync", &ddl, config).await;
    crate::sync::wait_for_older_transactions(&p, "x_items").await;
    let first = pass(&p).await;
    for t in &TABLES[..6] {
        let s = by(&first, t);
        assert!(s.full_copy && s.inserted == 100, "{t}: {s:?}");
    }
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
    let r5_old = row(&["5", "item 5", "7.50", "2024-01-01"]);
    let exact = vec![new3.clone(), r5.clone(), r101.clone(), r1000.clone()];
    // modified: inserts and updates, deletes not seen; new_rows: inserts only.
    assert_eq!(
        touched(&c, "m_items").await,
        vec![
            old3.clone(),
            r5.clone(),
            r7.clone(),
            r8.clone(),
            r101.clone(),
            r1000.clone()
        ]
    );
    assert_eq!(
        touched(&c, "x_items").await,
        vec![
            new3.clone(),
            r5.clone(),
            r7.clone(),
            r8.clone(),
            r101.clone(),
            r1000.clone()
        ]
    );
    assert_eq!(
        touched(&c, "n_items").await,
        vec![old3, r5_old, r7, r8, r101.clone(), r1000.clone()]
    );
    // diff and reload: exactly the source; the moving window dropped the row that left it.
    assert_eq!(touched(&c, "d_items").await, exact);
    assert_eq!(touched(&c, "r_items").await, exact);
    assert_eq!(touched(&c, "w_items").await, vec![r5, r101, r1000]);
    let s_items = c
        .query(&format!(
            "SELECT COUNT(*)::VARCHAR FROM {}.INFORMATION_SCHEMA.TABLES WHERE TABLE_NAME IN ('s_items', 'r_items__cdc_reload')",
            quote(&c.url().database)
        ))
        .await
        .unwrap();
    assert_eq!(
        s_items[0][0].as_deref(),
        Some("0"),
        "nothing of the skipped table, no staging table left"
    );
    let out = cdc(&p, &["tables", "--destination"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("public.m_items"))
        .unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        line.contains(" 102 ") && line.contains("modified"),
        "{line}"
    );
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

/// Count, key sum and a hash of every `id:v` in key order, on both sides.
async fn same_rows(p: &Pipeline, c: &Client, table: &str) {
    let pg = crate::conformance::text_rows(
        &p.src_sql,
        &format!("SELECT count(*)::text, coalesce(sum(id), 0)::text, md5(coalesce(string_agg(id || ':' || v, ',' ORDER BY id), '')) FROM {table}"),
    )
    .await
    .unwrap();
    let sf = c
        .query(&format!(
            "SELECT COUNT(*)::VARCHAR, COALESCE(SUM(\"id\"), 0)::NUMBER(38,0)::VARCHAR, MD5(COALESCE(LISTAGG(\"id\" || ':' || \"v\", ',') WITHIN GROUP (ORDER BY \"id\"), '')) FROM {}.\"public\".{}",
            quote(&c.url().database),
            quote(table)
        ))
        .await
        .unwrap();
    let sf: Vec<Vec<String>> = sf
        .into_iter()
        .map(|r| r.into_iter().map(|v| v.unwrap_or_default()).collect())
        .collect();
    assert_eq!(pg, sf, "{table}");
}

#[tokio::test]
async fn kill_9_inside_passes_into_snowflake_then_a_rerun_is_identical() {
    let (p, c) = sf_pipeline(
        "sf_sync_kill",
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL, updated_at timestamptz NOT NULL DEFAULT '2024-01-01');
         INSERT INTO t (id, v) SELECT g, md5(g::text) FROM generate_series(1, 3000) g;
         CREATE TABLE u AS SELECT * FROM t; ALTER TABLE u ADD PRIMARY KEY (id);",
        "[[tables]]\nsource = \"public.t\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"\nbatch_rows = 50
[[tables]]\nsource = \"public.u\"\nbatch_rows = 50",
    )
    .await;
    pass(&p).await;
    same_rows(&p, &c, "t").await;
    same_rows(&p, &c, "u").await;
    p.src_sql
        .batch_execute(
            "UPDATE t SET v = 'changed', updated_at = '2024-02-01' WHERE id % 3 = 0;
             UPDATE u SET v = 'changed' WHERE id % 3 = 0; DELETE FROM u WHERE id % 7 = 0;",
        )
        .await
        .unwrap();
    let db = quote(&c.url().database);
    for table in ["t", "u"] {
        let args = ["sync".to_owned(), format!("public.{table}")];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let sql = format!(
            "SELECT COUNT(*)::VARCHAR FROM {db}.\"public\".\"{table}\" WHERE \"v\" = 'changed'"
        );
        kill_when(&p, &args, "some batches of the pass", || async {
            c.query(&sql)
                .await
                .is_ok_and(|r| r[0][0].as_deref() != Some("0"))
        })
        .await;
    }
    pass(&p).await;
    same_rows(&p, &c, "t").await;
    same_rows(&p, &c, "u").await;
}

#[tokio::test]
async fn a_sqlite_file_syncs_into_snowflake_and_verifies() {
    let mut f = crate::sqlite::Fixture::new(
        "sqlite_sf",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price DECIMAL(10,2), raw BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO items SELECT i, 'item ' || i, i * 1.25, CASE WHEN i % 3 = 0 THEN NULL ELSE x'00ff10' END FROM n;",
        "",
        "",
    )
    .await;
    let (url, c) = fresh_database("sqlite_sf").await;
    f.config_text = format!(
        "[source]\nurl = \"sqlite:{}\"\n[destination]\nurl = \"{url}\"\npassword_file = {:?}\n[[tables]]\nsource = \"main.items\"\n",
        f.file.display(),
        crate::snowflake::password_file(),
    );
    let first = crate::sqlite::pass(&f).await;
    assert!(first.tables.iter().all(|t| t.full_copy), "{first:?}");
    f.sqlite(
        "UPDATE items SET name = 'changed' WHERE id = 7;
         DELETE FROM items WHERE id = 8;
         INSERT INTO items VALUES (51, 'new', 0.5, NULL);",
    );
    let third = crate::sqlite::pass(&f).await;
    let t = &third.tables[0];
    assert_eq!((t.inserted, t.updated, t.deleted), (1, 1, 1), "{t:?}");
    let rows = c
        .query(&format!(
            "SELECT \"id\"::VARCHAR, \"name\", \"price\"::VARCHAR, HEX_ENCODE(\"raw\") FROM {}.\"main\".\"items\" WHERE \"id\" IN (6, 7, 8, 51) ORDER BY \"id\"",
            quote(&c.url().database)
        ))
        .await
        .unwrap();
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows,
        vec![
            vec![s("6"), s("item 6"), s("7.50"), None],
            vec![s("7"), s("changed"), s("8.75"), s("00FF10")],
            vec![s("51"), s("new"), s("0.50"), None],
        ]
    );
    let out = f.cdc(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
