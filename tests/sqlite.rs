//! SQLite files as a `cdc sync` source, against a real Postgres destination: the movies
//! migration of the seed (into a schema written by hand, with other column names), a first
//! pass that creates the tables, every strategy, bad values, bad files, and the streaming
//! commands' refusal.

use std::path::{Path, PathBuf};
use std::process::Command;

use cdc::sync::{OnError, Options, Summary};

use crate::harness::{fresh_db, rows_text, servers, unique};

/// A SQLite file in a temporary directory, a fresh destination database, and a config.
pub(crate) struct Fixture {
    pub(crate) dir: PathBuf,
    pub(crate) file: PathBuf,
    dst_sql: tokio_postgres::Client,
    pub(crate) config_text: String,
}

impl Fixture {
    pub(crate) async fn new(
        prefix: &str,
        sqlite_ddl: &str,
        dest_ddl: &str,
        tables: &str,
    ) -> Fixture {
        let dir = crate::harness::scratch().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.db");
        let conn = rusqlite::Connection::open(&file).unwrap();
        conn.execute_batch(sqlite_ddl)
            .unwrap_or_else(|e| panic!("{sqlite_ddl}: {e}"));
        let dst = fresh_db(&servers().destination, prefix).await;
        let dst_sql = cdc::pg::connect(&dst).await.unwrap();
        dst_sql.batch_execute(dest_ddl).await.unwrap();
        let config_text = format!(
            "[source]\nurl = \"sqlite://{}\"\n[destination]\nurl = {:?}\n{tables}\n",
            file.display(),
            servers().destination.url(&dst.dbname),
        );
        Fixture {
            dir,
            file,
            dst_sql,
            config_text,
        }
    }

    fn config(&self) -> cdc::config::Config {
        cdc::config::Config::from_toml(
            &self.config_text,
            Path::new("test.toml"),
            &crate::harness::NO_ENV,
        )
        .expect("valid config")
    }

    pub(crate) fn sqlite(&self, sql: &str) {
        rusqlite::Connection::open(&self.file)
            .unwrap()
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub(crate) fn cdc(&self, args: &[&str]) -> std::process::Output {
        let config = self.dir.join("cdc.toml");
        std::fs::write(&config, &self.config_text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_cdc"))
            .current_dir(&self.dir)
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .env("CDC_LOG", "error")
            .output()
            .unwrap()
    }

    async fn rows(&self, sql: &str) -> Vec<String> {
        rows_text(&self.dst_sql, sql).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A pass with tables synced four at once, as Postgres sources' are: foreign-key order and
/// the deferred deletes must hold with them.
pub(crate) async fn pass(f: &Fixture) -> Summary {
    let options = Options {
        jobs: 4,
        ..Options::default()
    };
    let summary = cdc::sync::pass(&f.config(), &options)
        .await
        .expect("sync pass");
    for t in &summary.tables {
        assert!(t.error.is_none(), "{} failed: {:?}", t.source, t.error);
    }
    summary
}

fn table<'a>(s: &'a Summary, name: &str) -> &'a cdc::sync::TableSummary {
    s.tables
        .iter()
        .find(|t| t.source == name)
        .unwrap_or_else(|| panic!("{name} not in {s:?}"))
}

/// Lower-case text UUIDs, as an application writes them.
fn uuid(n: u32, kind: u32) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// The seed's movies database: text UUID keys, foreign keys between five tables, zoned
/// timestamps as text, NULLs, non-ASCII titles, a REAL rating, a text type column.
fn movies() -> String {
    let mut sql = String::from(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE film_work (id TEXT PRIMARY KEY, title TEXT NOT NULL, description TEXT,
             creation_date DATE, file_path TEXT, rating FLOAT, type TEXT NOT NULL,
             created_at timestamp with time zone, updated_at timestamp with time zone);
         CREATE TABLE genre (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
             created_at timestamp with time zone, updated_at timestamp with time zone);
         CREATE TABLE person (id TEXT PRIMARY KEY, full_name TEXT NOT NULL,
             created_at timestamp with time zone, updated_at timestamp with time zone);
         CREATE TABLE genre_film_work (id TEXT PRIMARY KEY,
             film_work_id TEXT NOT NULL REFERENCES film_work (id) ON DELETE CASCADE,
             genre_id TEXT NOT NULL REFERENCES genre (id) ON DELETE CASCADE,
             created_at timestamp with time zone);
         CREATE UNIQUE INDEX film_work_genre ON genre_film_work (film_work_id, genre_id);
         CREATE TABLE person_film_work (id TEXT PRIMARY KEY,
             film_work_id TEXT NOT NULL REFERENCES film_work (id) ON DELETE CASCADE,
             person_id TEXT NOT NULL REFERENCES person (id) ON DELETE CASCADE,
             role TEXT NOT NULL, created_at timestamp with time zone);
         BEGIN;",
    );
    let ts = "2021-06-16 20:14:09.221838+00";
    for g in 0..5 {
        sql.push_str(&format!(
            "INSERT INTO genre VALUES ('{}', 'Genre {g}', {}, '{ts}', '{ts}');",
            uuid(g, 1),
            if g % 2 == 0 { "NULL" } else { "'about it'" }
        ));
    }
    for p in 0..40 {
        sql.push_str(&format!(
            "INSERT INTO person VALUES ('{}', 'Person {p} Ødegård', '{ts}', '{ts}');",
            uuid(p, 2)
        ));
    }
    for m in 0..200 {
        let rating = if m % 7 == 0 {
            "NULL".to_owned()
        } else {
            format!("{}", 0.5657108450925572 + m as f64)
        };
        sql.push_str(&format!(
            "INSERT INTO film_work VALUES ('{}', 'Фильм {m} «{m}»', {}, {}, NULL, {rating}, '{}', '{ts}', '2021-06-16 20:14:{:02}.5+00');",
            uuid(m, 3),
            if m % 3 == 0 { "NULL" } else { "'A film.'" },
            if m % 5 == 0 { "NULL".to_owned() } else { format!("'20{:02}-01-{:02}'", m % 24, m % 28 + 1) },
            if m % 4 == 0 { "tv_show" } else { "movie" },
            m % 60
        ));
        sql.push_str(&format!(
            "INSERT INTO genre_film_work VALUES ('{}', '{}', '{}', '{ts}');",
            uuid(m, 4),
            uuid(m, 3),
            uuid(m % 5, 1)
        ));
        for r in 0..2 {
            sql.push_str(&format!(
                "INSERT INTO person_film_work VALUES ('{}', '{}', '{}', '{}', '{ts}');",
                uuid(m * 2 + r, 5),
                uuid(m, 3),
                uuid((m + r * 7) % 40, 2),
                if r == 0 { "actor" } else { "director" }
            ));
        }
    }
    sql.push_str("COMMIT;");
    sql
}

/// The destination schema written by hand: schema `content`, `created`/`modified`, uuid keys,
/// one link table's foreign keys declared, the other's left for cdc.
const CONTENT: &str = "CREATE SCHEMA content;
    CREATE TABLE content.film_work (id uuid PRIMARY KEY, title text NOT NULL, description text,
        creation_date date, rating double precision, type text NOT NULL,
        created timestamptz, modified timestamptz);
    CREATE TABLE content.genre (id uuid PRIMARY KEY, name text NOT NULL, description text,
        created timestamptz, modified timestamptz);
    CREATE TABLE content.person (id uuid PRIMARY KEY, full_name text NOT NULL,
        created timestamptz, modified timestamptz);
    CREATE TABLE content.genre_film_work (id uuid PRIMARY KEY,
        genre_id uuid NOT NULL REFERENCES content.genre (id) ON DELETE CASCADE,
        film_work_id uuid NOT NULL REFERENCES content.film_work (id) ON DELETE CASCADE,
        created timestamptz);
    CREATE TABLE content.person_film_work (id uuid PRIMARY KEY, film_work_id uuid NOT NULL,
        person_id uuid NOT NULL, role text NOT NULL, created timestamptz);";

/// Link tables first in the config: the pass orders them after the tables they point at.
const CONTENT_TABLES: &str = r#"
[[tables]]
source = "main.person_film_work"
destination = "content.person_film_work"
columns = { created_at = "created" }
[[tables]]
source = "main.genre_film_work"
destination = "content.genre_film_work"
columns = { created_at = "created" }
[[tables]]
source = "main.film_work"
destination = "content.film_work"
columns = { created_at = "created", updated_at = "modified" }
ignore_columns = ["file_path"]
[[tables]]
source = "main.genre"
destination = "content.genre"
columns = { created_at = "created", updated_at = "modified" }
[[tables]]
source = "main.person"
destination = "content.person"
columns = { created_at = "created", updated_at = "modified" }
"#;

async fn foreign_keys(f: &Fixture, table: &str) -> Vec<String> {
    f.rows(&format!(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' \
         AND conrelid = '{table}'::regclass ORDER BY 1"
    ))
    .await
}

#[tokio::test]
async fn movies_migrate_into_a_prepared_schema_and_stay_in_sync() {
    let f = Fixture::new("sqlite_movies", &movies(), CONTENT, CONTENT_TABLES).await;
    let first = pass(&f).await;
    for (name, rows) in [
        ("main.film_work", 200),
        ("main.genre", 5),
        ("main.person", 40),
        ("main.genre_film_work", 200),
        ("main.person_film_work", 400),
    ] {
        let t = table(&first, name);
        assert!(!t.full_copy, "existing tables are filled, not replaced");
        assert_eq!((t.inserted, t.updated, t.deleted), (rows, 0, 0), "{name}");
    }
    // Parents before children: the declared foreign keys held during the load.
    let order: Vec<&str> = first.tables.iter().map(|t| t.source.as_str()).collect();
    let pos = |n: &str| order.iter().position(|o| *o == n).unwrap();
    assert!(pos("main.film_work") < pos("main.person_film_work"));
    assert!(pos("main.genre") < pos("main.genre_film_work"));
    // Foreign keys: the declared ones kept (not doubled), the missing ones created.
    assert_eq!(foreign_keys(&f, "content.genre_film_work").await.len(), 2);
    assert_eq!(
        foreign_keys(&f, "content.person_film_work").await,
        [
            "FOREIGN KEY (film_work_id) REFERENCES content.film_work(id) ON DELETE CASCADE",
            "FOREIGN KEY (person_id) REFERENCES content.person(id) ON DELETE CASCADE"
        ]
    );
    // Values arrive exactly: doubles, non-ASCII text, zoned timestamps, NULLs, dates.
    assert_eq!(
        f.rows(&format!(
            "SELECT concat_ws('|', title, rating::text, description IS NULL, creation_date, type, created, modified)
             FROM content.film_work WHERE id = '{}'",
            uuid(1, 3)
        ))
        .await,
        ["Фильм 1 «1»|1.5657108450925572|f|2001-01-02|movie|2021-06-16 20:14:09.221838+00|2021-06-16 20:14:01.5+00"]
    );
    assert_eq!(
        f.rows("SELECT count(*)::text || ',' || count(rating)::text FROM content.film_work")
            .await,
        ["200,171"]
    );

    // Twice: nothing moves, nothing doubles, and the unchanged file is not compared row by row.
    let second = pass(&f).await;
    for t in &second.tables {
        assert_eq!(
            (t.rows_read, t.inserted, t.updated, t.deleted),
            (0, 0, 0, 0),
            "{}",
            t.source
        );
    }
    assert_eq!(
        f.rows("SELECT count(*)::text FROM content.person_film_work")
            .await,
        ["400"]
    );

    // cdc verify: equal by meaning (…+00 in SQLite, a timestamptz here; text UUIDs, uuid here).
    let verify = f.cdc(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // A changed row, a new one and a deleted parent with its children: only those move.
    f.sqlite(&format!(
        "PRAGMA foreign_keys = ON;
         UPDATE film_work SET title = 'Renamed', updated_at = '2022-01-01 00:00:00+03' WHERE id = '{}';
         INSERT INTO person VALUES ('{}', 'New Person', NULL, NULL);
         DELETE FROM person_film_work WHERE person_id = '{}';
         DELETE FROM person WHERE id = '{}';",
        uuid(2, 3),
        uuid(99, 2),
        uuid(3, 2),
        uuid(3, 2),
    ));
    let removed: i64 = f
        .dst_sql
        .query_one(
            &format!(
                "SELECT count(*) FROM content.person_film_work WHERE person_id = '{}'",
                uuid(3, 2)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(removed > 0);
    let verify = f.cdc(&["verify"]);
    assert_eq!(verify.status.code(), Some(1), "the change is seen");
    let third = pass(&f).await;
    let fw = table(&third, "main.film_work");
    assert_eq!((fw.inserted, fw.updated, fw.deleted), (0, 1, 0));
    let p = table(&third, "main.person");
    assert_eq!((p.inserted, p.updated, p.deleted), (1, 0, 1));
    let pfw = table(&third, "main.person_film_work");
    assert_eq!(
        (pfw.inserted, pfw.updated, pfw.deleted),
        (0, 0, removed as u64)
    );
    assert_eq!(
        f.rows(&format!(
            "SELECT title || ' ' || modified FROM content.film_work WHERE id = '{}'",
            uuid(2, 3)
        ))
        .await,
        ["Renamed 2021-12-31 21:00:00+00"]
    );
    let verify = f.cdc(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

const TYPED: &str = "CREATE TABLE things (id INTEGER PRIMARY KEY, name VARCHAR(20) NOT NULL,
        price DECIMAL(10,2), ratio REAL, active BOOLEAN, born DATE, seen DATETIME,
        at TIMESTAMP WITH TIME ZONE, ref UUID, doc JSON, raw BLOB, note, count BIGINT);
    CREATE UNIQUE INDEX things_name ON things (name);
    CREATE TABLE events (at TEXT, what TEXT);
    CREATE TABLE pairs (a TEXT, b INTEGER, v REAL, PRIMARY KEY (a, b)) WITHOUT ROWID;
    INSERT INTO pairs VALUES ('x', 2, 0.25), ('x', 10, NULL), ('Y', 1, 1.0), ('é', 0, -2.5);
    INSERT INTO things VALUES
        (1, 'first', '12.50', 0.1, 1, '2020-02-29', '2021-01-02 03:04:05.123456',
         '2021-06-16 20:14:09+02:00', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{\"a\": [1, 2]}', x'00ff', 7, 9007199254740993),
        (2, 'second', NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, 'x', NULL),
        (3, 'third', 3, 1e300, 'true', '1999-12-31', '2000-01-01', '2000-01-01T00:00:00Z', NULL, '[]', NULL, 2.5, -1);
    INSERT INTO events VALUES ('2024-01-01', 'a'), ('2024-01-01', 'a'), (NULL, 'b');";

#[tokio::test]
async fn a_first_pass_creates_tables_typed_from_declarations() {
    let f = Fixture::new(
        "sqlite_types",
        TYPED,
        "",
        "[[tables]]\nsource = \"main.things\"\n[[tables]]\nsource = \"main.events\"\ndestination = \"public.events\"\n\
         [[tables]]\nsource = \"main.pairs\"",
    )
    .await;
    let first = pass(&f).await;
    assert!(first.tables.iter().all(|t| t.full_copy));
    assert_eq!(table(&first, "main.things").strategy, "diff");
    assert_eq!(
        table(&first, "main.events").strategy,
        "reload",
        "keyless: reload"
    );
    assert_eq!(
        f.rows(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' NN' ELSE '' END, ', ' ORDER BY attnum)
             FROM pg_attribute WHERE attrelid = 'main.things'::regclass AND attnum > 0"
        )
        .await,
        ["id bigint NN, name character varying(20) NN, price numeric(10,2), ratio double precision, \
          active boolean, born date, seen timestamp without time zone, at timestamp with time zone, \
          ref uuid, doc jsonb, raw bytea, note text, count bigint"]
    );
    assert_eq!(
        f.rows("SELECT indexdef FROM pg_indexes WHERE tablename = 'things' ORDER BY 1")
            .await,
        [
            "CREATE UNIQUE INDEX things_name ON main.things USING btree (name)",
            "CREATE UNIQUE INDEX things_pkey ON main.things USING btree (id)"
        ]
    );
    assert_eq!(
        f.rows("SELECT concat_ws('|', id, name, price, ratio, active, born, seen, at, ref, doc, raw, note, count) FROM main.things ORDER BY id").await,
        [
            "1|first|12.50|0.1|t|2020-02-29|2021-01-02 03:04:05.123456|2021-06-16 18:14:09+00|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|{\"a\": [1, 2]}|\\x00ff|7|9007199254740993",
            "2|second|f|x",
            "3|third|3.00|1e+300|t|1999-12-31|2000-01-01 00:00:00|2000-01-01 00:00:00+00|[]|2.5|-1",
        ]
    );
    assert_eq!(
        f.rows("SELECT count(*)::text FROM public.events").await,
        ["3"]
    );
    // WITHOUT ROWID, a two-column key: text by bytes ('Y' < 'x' < 'é'), then integers by value.
    assert_eq!(
        f.rows("SELECT string_agg(concat_ws(':', a, b, v), ',' ORDER BY a COLLATE \"C\", b) FROM main.pairs")
            .await,
        ["Y:1:1,x:2:0.25,x:10,é:0:-2.5"]
    );
    // Unchanged: the keyed table moves nothing; the keyless one is reloaded (whole, no doubles).
    f.sqlite(
        "INSERT INTO events VALUES ('2024-01-02', 'c');
         UPDATE pairs SET v = 3 WHERE a = 'x' AND b = 10;
         DELETE FROM pairs WHERE a = 'Y';
         INSERT INTO pairs VALUES ('x', 3, NULL);",
    );
    let second = pass(&f).await;
    assert_eq!(table(&second, "main.things").rows_read, 0);
    let pairs = table(&second, "main.pairs");
    assert_eq!((pairs.inserted, pairs.updated, pairs.deleted), (1, 1, 1));
    // cdc reload: copied whole again, swapped in.
    let out = f.cdc(&["reload", "main.things", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tables"][0]["full_copy"], true);
    assert_eq!(json["tables"][0]["inserted"], 3);
    assert_eq!(
        f.rows("SELECT count(*)::text FROM public.events").await,
        ["4"]
    );
    let verify = f.cdc(&["verify", "--table", "main.things", "--table", "main.pairs"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // cdc tables lists the file's tables; cdc extract writes one as CSV + schema file.
    let out = f.cdc(&["tables"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("main.things")
            && listing.contains("primary key (id)")
            && listing.contains("main.events")
            && listing.contains("no primary key"),
        "{listing}"
    );
    let out = f.cdc(&["extract", "main.things", "--to", "x"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(f.dir.join("x/main.things.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("\"id\",\"name\",\"price\""), "{csv}");
    assert!(lines[2].starts_with("\"2\",\"second\",,,\"f\""), "{csv}");
    let schema = std::fs::read_to_string(f.dir.join("x/main.things.schema.json")).unwrap();
    assert!(
        schema.contains("\"rows\": 3") && schema.contains("double precision"),
        "{schema}"
    );
}

#[tokio::test]
async fn new_rows_and_modified_read_past_their_position() {
    let f = Fixture::new(
        "sqlite_incr",
        "CREATE TABLE log (id INTEGER PRIMARY KEY, msg TEXT);
         CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, updated_at DATETIME NOT NULL);
         INSERT INTO log VALUES (1, 'a'), (2, 'b'), (10, 'c');
         INSERT INTO docs VALUES (1, 'one', '2024-01-01 00:00:00'), (2, 'two', '2024-01-02 00:00:00');",
        "",
        "[[tables]]\nsource = \"main.log\"\nstrategy = \"new_rows\"\n\
         [[tables]]\nsource = \"main.docs\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"\nbatch_rows = 1",
    )
    .await;
    let first = pass(&f).await;
    assert_eq!(table(&first, "main.log").position.as_deref(), Some("10"));
    assert_eq!(
        table(&first, "main.docs").position.as_deref(),
        Some("2024-01-02 00:00:00")
    );
    f.sqlite(
        "INSERT INTO log VALUES (11, 'd'), (9, 'below');
         UPDATE docs SET body = 'two again' WHERE id = 2;
         INSERT INTO docs VALUES (3, 'three', '2024-01-02 00:00:00');
         UPDATE docs SET body = 'one again' WHERE id = 1;",
    );
    let second = pass(&f).await;
    let log = table(&second, "main.log");
    assert_eq!((log.rows_read, log.inserted), (1, 1), "only keys above 10");
    let docs = table(&second, "main.docs");
    // The boundary value is read again (equal timestamps); id 1 is older and not seen.
    assert_eq!((docs.rows_read, docs.upserted), (2, 2));
    // batch_rows = 1: the two upserts in two destination transactions (each its own xmin).
    assert_eq!(
        f.rows("SELECT count(DISTINCT xmin::text)::text FROM main.docs WHERE id IN (2, 3)")
            .await,
        ["2"]
    );
    assert_eq!(
        f.rows("SELECT string_agg(id || '=' || body, ',' ORDER BY id) FROM main.docs")
            .await,
        ["1=one,2=two again,3=three"]
    );
    assert_eq!(
        f.rows("SELECT string_agg(id::text, ',' ORDER BY id) FROM main.log")
            .await,
        ["1,2,10,11"]
    );
}

#[tokio::test]
async fn a_value_that_does_not_fit_is_named_or_rejected() {
    let f = Fixture::new(
        "sqlite_bad",
        "CREATE TABLE m (id TEXT PRIMARY KEY, n INTEGER, at DATETIME);
         INSERT INTO m VALUES ('a', 1, '2024-01-01 00:00:00'), ('b', 'lots', '2024-01-01'),
             ('c', 3, 'tomorrow'), ('d', 4, NULL);",
        "",
        "[[tables]]\nsource = \"main.m\"",
    )
    .await;
    let summary = cdc::sync::pass(&f.config(), &Options::default())
        .await
        .unwrap();
    let error = summary.tables[0]
        .error
        .clone()
        .expect("a bad value fails the table");
    assert!(
        error.contains("main.m")
            && error.contains("id=\"b\"")
            && error.contains("column n")
            && error.contains("\"lots\"")
            && error.contains("--on-error skip"),
        "{error}"
    );
    let rejects = f.dir.join("rejects.jsonl");
    let options = Options {
        on_error: OnError::Skip,
        rejects: rejects.clone(),
        ..Options::default()
    };
    let summary = cdc::sync::pass(&f.config(), &options).await.unwrap();
    let t = &summary.tables[0];
    assert!(t.error.is_none(), "{:?}", t.error);
    assert_eq!((t.rejected, t.inserted), (2, 2));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["table"], "main.m");
    assert_eq!(lines[0]["key"], "id=\"b\"");
    assert_eq!(lines[0]["column"], "n");
    assert_eq!(lines[1]["column"], "at");
    assert_eq!(lines[1]["value"], "\"tomorrow\"");
    assert_eq!(
        f.rows("SELECT string_agg(id, ',' ORDER BY id) FROM main.m")
            .await,
        ["a,d"]
    );
    // The binary: exit 1 naming the table; with --on-error skip, exit 0.
    let out = f.cdc(&["sync"]);
    assert_eq!(
        out.status.code(),
        Some(65),
        "every table failed: a data error"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("main.m"));
    let out = f.cdc(&["sync", "--on-error", "skip"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(f.dir.join("cdc-rejects.jsonl").exists());
}

#[tokio::test]
async fn bad_files_and_streaming_commands_get_clear_errors() {
    let f = Fixture::new(
        "sqlite_files",
        "PRAGMA journal_mode = delete; CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);",
        "",
        "[[tables]]\nsource = \"main.t\"",
    )
    .await;
    // verify before any pass: the table is missing (an error), and nothing was written.
    let out = f.cdc(&["verify"]);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(
        f.rows("SELECT count(*)::text FROM pg_namespace WHERE nspname = 'cdc'")
            .await,
        ["0"],
        "verify writes nothing on the destination"
    );
    // snapshot and run refuse, pointing at cdc sync --every.
    for cmd in ["snapshot", "run"] {
        let out = f.cdc(&[cmd]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0));
        assert!(
            err.contains("SQLite") && err.contains("cdc sync --every"),
            "{cmd}: {err}"
        );
    }
    // A locked file: a writer holding the rollback journal's exclusive lock.
    let writer = rusqlite::Connection::open(&f.file).unwrap();
    writer
        .execute_batch("BEGIN EXCLUSIVE; INSERT INTO t VALUES (2);")
        .unwrap();
    let summary = cdc::sync::pass(&f.config(), &Options::default()).await;
    let text = match summary {
        Err(e) => e.to_string(),
        Ok(s) => s.tables[0].error.clone().unwrap_or_default(),
    };
    assert!(text.contains("locked by another process"), "{text}");
    writer.execute_batch("ROLLBACK").unwrap();
    drop(writer);
    // Not a SQLite file; a missing one.
    let junk = f.dir.join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    for (path, expected) in [
        (junk.clone(), "is not a SQLite database"),
        (f.dir.join("missing.db"), "does not exist"),
    ] {
        let text = f.config_text.replace(
            &format!("sqlite://{}", f.file.display()),
            &format!("sqlite://{}", path.display()),
        );
        let config =
            cdc::config::Config::from_toml(&text, Path::new("t.toml"), &crate::harness::NO_ENV)
                .unwrap();
        let err = cdc::sync::pass(&config, &Options::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
    // A rename naming a column that does not exist.
    let text = format!("{}columns = {{ nope = \"x\" }}\n", f.config_text);
    let config =
        cdc::config::Config::from_toml(&text, Path::new("t.toml"), &crate::harness::NO_ENV)
            .unwrap();
    let s = cdc::sync::pass(&config, &Options::default()).await.unwrap();
    let e = s.tables[0].error.clone().unwrap_or_default();
    assert!(e.contains("nope") && e.contains("its columns: id"), "{e}");
}

#[tokio::test]
async fn into_duckdb_passes_diff_and_verify_compare_by_meaning() {
    let mut f = Fixture::new(
        "sqlite_duck",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price DECIMAL(10,2),
             at TIMESTAMP WITH TIME ZONE, ok BOOLEAN, raw BLOB, ref UUID);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO items SELECT i, 'item ' || i, i * 1.25, '2024-03-0' || (i % 9 + 1) || ' 10:00:00+02',
             i % 2, CASE WHEN i % 3 = 0 THEN NULL ELSE x'00ff10' END,
             printf('%08x-0000-4000-8000-%012x', i, i) FROM n;",
        "",
        "",
    )
    .await;
    let duck = f.dir.join("analytics.duckdb");
    f.config_text = format!(
        "[source]\nurl = \"sqlite:{}\"\n[destination]\nurl = \"duckdb://{}\"\n[[tables]]\nsource = \"main.items\"\n",
        f.file.display(),
        duck.display()
    );
    let first = pass(&f).await;
    assert!(first.tables[0].full_copy);
    assert_eq!(first.tables[0].inserted, 50);
    let second = pass(&f).await;
    assert_eq!(
        second.tables[0].rows_read, 0,
        "unchanged: nothing read twice"
    );
    f.sqlite(
        "UPDATE items SET name = 'changed', at = '2024-03-01 12:00:00+04' WHERE id = 7;
         DELETE FROM items WHERE id = 8;
         INSERT INTO items VALUES (51, 'new', 0.5, NULL, 1, NULL, NULL);",
    );
    let third = pass(&f).await;
    let t = &third.tables[0];
    assert_eq!((t.inserted, t.updated, t.deleted), (1, 1, 1));
    let rows = crate::duckdb::read(
        &duck,
        "SELECT count(*)::VARCHAR, max(name)::VARCHAR FROM main.items WHERE id IN (7, 8, 51)",
    )
    .unwrap();
    assert_eq!(rows, [["2", "new"]]);
    let report = verify(&f).await.unwrap();
    assert!(report.equal, "{}", report.human(5));
    // A change made on the destination by hand is seen, by meaning: a different instant.
    let conn = duckdb::Connection::open(&duck).unwrap();
    conn.execute_batch("UPDATE main.items SET \"at\" = \"at\" + INTERVAL 1 SECOND WHERE id = 9")
        .unwrap();
    drop(conn);
    let report = verify(&f).await.unwrap();
    assert_eq!(report.tables[0].different.len(), 1, "{}", report.human(5));
    assert_eq!(report.tables[0].different[0].columns[0].column, "at");
}

/// `cdc verify`'s comparison of every configured table.
pub(crate) async fn verify(f: &Fixture) -> cdc::error::Result<cdc::verify::Report> {
    let options = cdc::verify::Options {
        max_differences: 100,
        ..Default::default()
    };
    cdc::verify::configured(&f.config(), &[], &options, &|_| {})
        .await
        .map(|(report, _)| report)
}

#[tokio::test]
async fn kill_9_inside_a_diff_pass_then_a_rerun_is_identical() {
    let f = Fixture::new(
        "sqlite_kill",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, n REAL);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
         INSERT INTO t SELECT i, 'v' || i, i / 3.0 FROM s;",
        "",
        "[[tables]]\nsource = \"main.t\"\nbatch_rows = 10",
    )
    .await;
    pass(&f).await;
    f.sqlite(
        "UPDATE t SET v = v || ' changed', n = n + 1;
         DELETE FROM t WHERE id % 10 = 0;
         WITH RECURSIVE s(i) AS (SELECT 20001 UNION ALL SELECT i + 1 FROM s WHERE i < 21000)
         INSERT INTO t SELECT i, 'new', NULL FROM s;",
    );
    let config = f.dir.join("cdc.toml");
    std::fs::write(&config, &f.config_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args(["--config", config.to_str().unwrap(), "sync"])
        .env("CDC_LOG", "error")
        .spawn()
        .unwrap();
    crate::harness::wait_for(
        "some updates committed",
        std::time::Duration::from_secs(60),
        || async {
            let n = f
                .rows("SELECT count(*)::text FROM main.t WHERE v LIKE '% changed'")
                .await;
            n[0] != "0"
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = f
        .rows("SELECT count(*)::text FROM main.t WHERE v LIKE '% changed'")
        .await;
    assert_ne!(partial, ["18000"], "killed before the pass ended");
    let verify = f.cdc(&["verify"]);
    assert_eq!(verify.status.code(), Some(1), "the pass was cut short");
    let rerun = pass(&f).await;
    assert!(rerun.tables[0].updated > 0);
    let verify = f.cdc(&["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert_eq!(f.rows("SELECT count(*)::text FROM main.t").await, ["19000"]);
    // The fingerprint was stored by the finished pass: the next one reads nothing more.
    assert_eq!(pass(&f).await.tables[0].rows_read, 0);
}
