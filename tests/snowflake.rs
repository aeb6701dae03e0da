//! Postgres → Snowflake end to end, against the emulator (fakesnow's server, a DuckDB-backed
//! implementation of the REST protocol Snowflake's drivers speak) or, when
//! `CDC_TEST_SNOWFLAKE_URL` is set (`snowflake://USER@ACCOUNT/ANYDB/ANYSCHEMA?warehouse=W`, the
//! password in `CDC_DESTINATION_PASSWORD` or a `private_key_file=`), a real account, where each
//! test creates its own database and drops it afterwards.
//!
//! `cdc snapshot` + `cdc run` (every type, every change kind, TOAST-unchanged values, key
//! changes, TRUNCATE, an added column, kill -9 under load), `cdc sync` (every strategy, kill -9
//! inside a pass), `cdc verify`, `cdc tables`, `cdc status`, `cdc teardown`, and refusals.

use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cdc::destination::snowflake::client::Client;
use cdc::destination::snowflake::local::LocalSnowflake;
use cdc::destination::snowflake::types::{quote, read, to_postgres};
use cdc::destination::snowflake::SnowflakeUrl;

use crate::duckdb::cdc;
use crate::harness::{unique, wait_for, Pipeline};
use crate::run::FAST;

fn emulator() -> &'static LocalSnowflake {
    static SERVER: OnceLock<LocalSnowflake> = OnceLock::new();
    SERVER.get_or_init(|| LocalSnowflake::start().expect("start the Snowflake emulator"))
}

/// The URL of a fresh database (created here) and a client of it.
pub(crate) async fn fresh_database(prefix: &str) -> (String, Arc<Client>) {
    let db = unique(prefix).to_uppercase();
    let url = match std::env::var("CDC_TEST_SNOWFLAKE_URL") {
        Ok(real) => {
            let mut u =
                SnowflakeUrl::parse(&real).expect("CDC_TEST_SNOWFLAKE_URL is a snowflake:// URL");
            u.database = db.clone();
            let (head, query) = real.split_once('?').unwrap_or((&real, ""));
            let base = head.rsplitn(3, '/').nth(2).unwrap();
            format!("{base}/{db}/PUBLIC?{query}")
        }
        Err(_) => emulator().url(&db, "PUBLIC"),
    };
    let mut parsed = SnowflakeUrl::parse(&url).unwrap();
    if let Ok(pw) = std::env::var("CDC_DESTINATION_PASSWORD") {
        parsed.password = Some(cdc::conninfo::Secret::new(pw));
    } else if parsed.private_key_file.is_none() {
        parsed.password = Some(cdc::conninfo::Secret::new("emulator"));
    }
    let client = Arc::new(Client::new(parsed).unwrap());
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {}", quote(&db)))
        .await
        .expect("create the test database");
    (url, client)
}

/// A pipeline into a fresh Snowflake database.
pub(crate) async fn sf_pipeline(prefix: &str, ddl: &str, tables: &str) -> (Pipeline, Arc<Client>) {
    let mut p = Pipeline::new(prefix, ddl, &format!("{tables}{FAST}")).await;
    let (url, client) = fresh_database(prefix).await;
    let start = p.config_text.find("[destination]\nurl = ").unwrap();
    let end = start + p.config_text[start..].find("\n[status]").unwrap();
    p.config_text.replace_range(
        start..end,
        &format!(
            "[destination]\nurl = \"{url}\"\npassword_file = {:?}",
            password_file()
        ),
    );
    (p, client)
}

/// The emulator takes any password; a real account's comes from the environment.
pub(crate) fn password_file() -> String {
    let path = crate::harness::scratch().join("cdc-snowflake-test-password");
    let pw = std::env::var("CDC_DESTINATION_PASSWORD").unwrap_or_else(|_| "emulator".into());
    std::fs::write(&path, pw).unwrap();
    path.display().to_string()
}

/// Rows of `public.<table>` as Postgres would print them, ordered by `order`.
pub(crate) async fn sf_rows(
    c: &Client,
    table: &str,
    cols: &[(&str, &str)],
    order: &str,
) -> Option<Vec<Vec<String>>> {
    let db = c.url().database.clone();
    let select: Vec<String> = cols.iter().map(|(n, t)| read(t, &quote(n))).collect();
    let rows = c
        .query(&format!(
            "SELECT {} FROM {}.\"public\".{} ORDER BY {order}",
            select.join(", "),
            quote(&db),
            quote(table)
        ))
        .await
        .ok()?;
    Some(
        rows.into_iter()
            .map(|r| {
                r.into_iter()
                    .zip(cols)
                    .map(|(v, (_, t))| v.map_or("NULL".into(), |v| to_postgres(t, v)))
                    .collect()
            })
            .collect(),
    )
}

async fn pg_rows(p: &Pipeline, sql: &str) -> Vec<Vec<String>> {
    crate::conformance::text_rows(&p.src_sql, sql)
        .await
        .unwrap()
}

async fn wait_same(p: &Pipeline, c: &Client, table: &str, cols: &[(&str, &str)], order: &str) {
    let names: Vec<String> = cols.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let want = pg_rows(
            p,
            &format!("SELECT {} FROM {table} ORDER BY {order}", names.join(", ")),
        )
        .await;
        let got = sf_rows(c, table, cols, order).await;
        if got.as_ref() == Some(&want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{table} differs:\n source: {want:?}\n snowflake: {got:?}\n emulator errors:\n{}",
            if std::env::var("CDC_TEST_SNOWFLAKE_URL").is_ok() {
                String::new()
            } else {
                emulator().errors()
            }
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn verify_ok(p: &Pipeline) {
    let out = cdc(p, &["verify", "--format", "json"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Run(std::process::Child);

impl Run {
    fn start(p: &Pipeline) -> Run {
        Run(cdc(p, &["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TYPES_DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, b boolean, s smallint, r real,
     d double precision, n numeric(20,6), u numeric, day date, ts timestamp, tz timestamptz,
     tm time, id2 uuid, j jsonb, raw bytea, arr int[], txt text, big text);
     ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
     INSERT INTO t VALUES
       (1, true, -5, 1.5, 'Infinity', 12345.678901, 'NaN', '2299-12-31', '1900-01-01 00:00:00.000001',
        '2024-06-16 23:14:09.221838+03', '12:34:56.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
        '{\"k\": [1, \"x\"], \"n\": 2.5}', '\\x00ff', '{1,NULL,3}', E'tab\\there\\nnew \\\\ back''s', repeat('big', 3000)),
       (2, NULL, NULL, NULL, 0.1, NULL, 1e-30, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL);
     CREATE TABLE k (id int PRIMARY KEY, v text);
     INSERT INTO k VALUES (1, 'one'), (2, 'two');";

const TYPE_COLS: &[(&str, &str)] = &[
    ("id", "NUMBER(19,0)"),
    ("b", "BOOLEAN"),
    ("s", "NUMBER(5,0)"),
    ("n", "NUMBER(20,6)"),
    ("u", "VARCHAR"),
    ("day", "DATE"),
    ("ts", "TIMESTAMP_NTZ"),
    ("tz", "TIMESTAMP_TZ"),
    ("id2", "VARCHAR"),
    ("raw", "BINARY"),
    ("arr", "VARCHAR"),
    ("txt", "VARCHAR"),
    ("big", "VARCHAR"),
];

#[tokio::test]
async fn snapshot_then_stream_every_change_and_type_into_snowflake() {
    let (p, c) = sf_pipeline(
        "sf_stream",
        TYPES_DDL,
        "[[tables]]\nsource = \"public.t\"\n[[tables]]\nsource = \"public.k\"\n",
    )
    .await;
    let _run = Run::start(&p);
    p.wait_snapshot_complete_in(&c).await;
    wait_same(&p, &c, "t", TYPE_COLS, "\"id\"").await;
    // Floats, times and JSON compare as values (their text differs between the two).
    let typed = c
        .query(&format!(
            "SELECT \"r\"::VARCHAR, (\"d\" = 'inf'::FLOAT)::VARCHAR, TO_VARCHAR(\"tm\"), \"j\":\"n\"::VARCHAR, \"j\":\"k\"[1]::VARCHAR \
             FROM {}.\"public\".\"t\" WHERE \"id\" = 1",
            quote(&c.url().database)
        ))
        .await
        .unwrap();
    assert_eq!(
        typed[0],
        vec![
            Some("1.5".into()),
            Some("true".into()),
            Some("12:34:56.789".into()),
            Some("2.5".into()),
            Some("x".into())
        ]
    );

    // Every change kind, a TOAST value left unchanged by updates (also one that moves its key),
    // a key swap, a delete and re-insert in one transaction, TRUNCATE, and an added column.
    p.src_sql
        .batch_execute(
            "INSERT INTO t (id, txt, big) VALUES (3, 'three', repeat('x', 9000));
             UPDATE t SET txt = 'kept big' WHERE id = 1;
             UPDATE t SET id = 10, txt = 'moved' WHERE id = 1;
             UPDATE t SET n = -0.5, day = '2024-02-29', tz = '2020-01-01 00:00:00-03:30' WHERE id = 2;
             BEGIN; DELETE FROM t WHERE id = 3; INSERT INTO t (id, txt) VALUES (3, 'again'); COMMIT;
             UPDATE k SET id = id + 10;
             TRUNCATE k; INSERT INTO k VALUES (100, 'after');
             ALTER TABLE t ADD COLUMN extra numeric(8,2);
             INSERT INTO t (id, txt, extra) VALUES (4, 'four', 1.25);",
        )
        .await
        .unwrap();
    let mut cols = TYPE_COLS.to_vec();
    cols.push(("extra", "NUMBER(8,2)"));
    wait_same(&p, &c, "t", &cols, "\"id\"").await;
    wait_same(
        &p,
        &c,
        "k",
        &[("id", "NUMBER(10,0)"), ("v", "VARCHAR")],
        "\"id\"",
    )
    .await;
    let big = sf_rows(&c, "t", &[("big", "VARCHAR")], "\"id\"")
        .await
        .unwrap();
    assert_eq!(
        big[3][0],
        "big".repeat(3000),
        "the unchanged TOAST value moved with its key: {big:?}"
    );

    verify_ok(&p);
    let status = cdc(&p, &["status", "--json"]).output().unwrap();
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let tables = cdc(&p, &["tables", "--destination"]).output().unwrap();
    let listing = String::from_utf8_lossy(&tables.stdout);
    assert!(
        tables.status.success() && listing.contains("public.t"),
        "{listing}{}",
        String::from_utf8_lossy(&tables.stderr)
    );

    // `cdc verify` sees a row changed behind cdc's back.
    drop(_run);
    c.query(&format!(
        "UPDATE {}.\"public\".\"k\" SET \"v\" = 'tampered'",
        quote(&c.url().database)
    ))
    .await
    .unwrap();
    let out = cdc(&p, &["verify", "--format", "json"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tampered"));

    // Teardown drops the slot and the state.
    let down = cdc(&p, &["teardown", "--yes"]).output().unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(p.slot_count().await, 0);
}

#[tokio::test]
async fn kill_9_under_load_then_snowflake_holds_each_change_once() {
    let (p, c) = sf_pipeline(
        "sf_kill",
        "CREATE TABLE acc (id int PRIMARY KEY, balance bigint NOT NULL, note text);
         INSERT INTO acc SELECT g, 0, 'n' FROM generate_series(1, 200) g;
         CREATE TABLE log (id bigserial PRIMARY KEY, acc int, delta int);",
        "[[tables]]\nsource = \"public.acc\"\n[[tables]]\nsource = \"public.log\"\n",
    )
    .await;
    let mut run = Run::start(&p);
    p.wait_snapshot_complete_in(&c).await;
    // Each transaction moves balance and logs it: the sums can only agree if every change
    // arrived exactly once.
    for round in 0..4 {
        for i in 0..40 {
            let id = (round * 40 + i) % 200 + 1;
            p.src_sql
                .batch_execute(&format!(
                    "BEGIN; UPDATE acc SET balance = balance + {i} WHERE id = {id};
                     INSERT INTO log (acc, delta) VALUES ({id}, {i}); COMMIT;"
                ))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300 + 200 * round as u64)).await;
        let _ = run.0.kill();
        let _ = run.0.wait();
        run = Run::start(&p);
    }
    wait_same(
        &p,
        &c,
        "log",
        &[
            ("id", "NUMBER(19,0)"),
            ("acc", "NUMBER(10,0)"),
            ("delta", "NUMBER(10,0)"),
        ],
        "\"id\"",
    )
    .await;
    wait_same(
        &p,
        &c,
        "acc",
        &[("id", "NUMBER(10,0)"), ("balance", "NUMBER(19,0)")],
        "\"id\"",
    )
    .await;
    drop(run);
    verify_ok(&p);
}

#[tokio::test]
async fn values_snowflake_cannot_hold_and_keyless_tables_are_refused() {
    // A keyless table: refused before anything is created.
    let (p, _c) = sf_pipeline(
        "sf_keyless",
        "CREATE TABLE nokey (a int, b text); ALTER TABLE nokey REPLICA IDENTITY FULL;",
        "[[tables]]\nsource = \"public.nokey\"\n",
    )
    .await;
    let out = cdc(&p, &["snapshot"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no primary key") && err.contains("nokey"),
        "{err}"
    );
    assert_eq!(p.slot_count().await, 0, "a refused snapshot left a slot");

    // NaN cannot be a NUMBER(10,2): the column is named, the snapshot fails, no slot stays.
    let (p, c) = sf_pipeline(
        "sf_nan",
        "CREATE TABLE price (id int PRIMARY KEY, p numeric(10,2)); INSERT INTO price VALUES (1, 'NaN');",
        "[[tables]]\nsource = \"public.price\"\n",
    )
    .await;
    let out = cdc(&p, &["snapshot"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("column p") && err.contains("NaN"),
        "{err}"
    );
    assert_eq!(p.slot_count().await, 0, "a failed snapshot left a slot");
    let state = c
        .query(&format!(
            "SELECT COUNT(*)::VARCHAR FROM {}.\"cdc\".\"pipeline\" WHERE completed",
            quote(&c.url().database)
        ))
        .await;
    if let Ok(rows) = state {
        assert_eq!(
            rows[0][0].as_deref(),
            Some("0"),
            "no completed snapshot recorded"
        );
    }

    // A URL Snowflake's form does not allow, and a missing password: clear errors.
    let mut bad = p.config_text.replace("protocol=http", "protocol=ftp");
    let path = crate::harness::scratch().join(format!("{}-bad.toml", p.slot));
    std::fs::write(&path, &bad).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args(["--config", path.to_str().unwrap(), "snapshot"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("protocol=ftp"),
        "{err}"
    );
    bad = p
        .config_text
        .lines()
        .filter(|l| !l.starts_with("password_file"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, &bad).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args(["--config", path.to_str().unwrap(), "snapshot"])
        .env_remove("CDC_DESTINATION_PASSWORD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("private_key_file"),
        "{err}"
    );
    assert_eq!(p.slot_count().await, 0);
}

impl Pipeline {
    /// Wait until the Snowflake state records a completed snapshot of this pipeline.
    pub(crate) async fn wait_snapshot_complete_in(&self, c: &Client) {
        let sql = format!(
            "SELECT COUNT(*)::VARCHAR FROM {}.\"cdc\".\"pipeline\" WHERE slot = '{}' AND completed",
            quote(&c.url().database),
            self.slot
        );
        wait_for("the initial snapshot", Duration::from_secs(180), || async {
            matches!(c.query(&sql).await, Ok(rows) if rows.first().and_then(|r| r[0].as_deref()) == Some("1"))
        })
        .await;
    }
}

#[tokio::test]
async fn a_key_pair_logs_in_and_a_wrong_account_is_named() {
    if std::env::var("CDC_TEST_SNOWFLAKE_URL").is_ok() {
        return; // The key set on a real user is the account's own business.
    }
    let (mut p, c) = sf_pipeline(
        "sf_key",
        "CREATE TABLE kp (id int PRIMARY KEY, v text); INSERT INTO kp VALUES (1, 'signed');",
        "[[tables]]\nsource = \"public.kp\"\n",
    )
    .await;
    let key = crate::harness::scratch().join(format!("{}.p8", p.slot));
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .expect("openssl makes the test key");
    assert!(made.status.success());
    // No password at all: the login is the JWT signed with the key.
    p.config_text = p
        .config_text
        .lines()
        .map(|l| {
            if l.starts_with("password_file") {
                format!("private_key_file = {:?}", key.display().to_string())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let out = cdc(&p, &["snapshot"])
        .env_remove("CDC_DESTINATION_PASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = sf_rows(&c, "kp", &[("v", "VARCHAR")], "\"id\"")
        .await
        .unwrap();
    assert_eq!(rows, vec![vec!["signed".to_owned()]]);

    // An account that does not resolve: named, with what to check.
    let bad = p.config_text.replace("host=127.0.0.1&", "").replace(
        "snowflake://cdc@emulator",
        "snowflake://cdc@no-such-account-cdc-test",
    );
    let path = crate::harness::scratch().join(format!("{}-account.toml", p.slot));
    std::fs::write(&path, bad).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "tables",
            "--destination",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("check the account"),
        "{err}"
    );
}
