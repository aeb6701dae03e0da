//! `cdc verify` against real servers: planted differences reported exactly, bisection that
//! fetches few rows, byte-order key ranges across collations, second looks for a running
//! pipeline, and the command line (formats, exit codes, standalone mode).

use std::process::Command;
use std::time::Duration;

use cdc::verify::{self, Event, Options, Report, TablePair};

use crate::harness::{fresh_db, servers, unique, Pipeline};

/// A source and a destination database holding the same `ddl`, with SQL connections.
async fn two_dbs(
    ddl: &str,
) -> (
    cdc::conninfo::ConnInfo,
    tokio_postgres::Client,
    cdc::conninfo::ConnInfo,
    tokio_postgres::Client,
) {
    let src = fresh_db(&servers().source, "verify").await;
    let dst = fresh_db(&servers().destination, "verify").await;
    let src_sql = cdc::pg::connect(&src).await.unwrap();
    let dst_sql = cdc::pg::connect(&dst).await.unwrap();
    for c in [&src_sql, &dst_sql] {
        c.batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e:?}"));
    }
    (src, src_sql, dst, dst_sql)
}

fn pair(name: &str) -> Vec<TablePair> {
    verify::pairs_from_args(&[name.to_owned()]).unwrap()
}

async fn compare(
    src: &cdc::conninfo::ConnInfo,
    dst: &cdc::conninfo::ConnInfo,
    table: &str,
    options: &Options,
) -> Report {
    verify::verify(src, dst, &pair(table), options, &|_| {})
        .await
        .expect("verify runs")
}

fn keys<T>(rows: &[T], key: impl Fn(&T) -> String) -> Vec<String> {
    rows.iter().map(key).collect()
}

/// `{id}` is the key's type: integer keys take the by-value descent, others the quantile one.
const TYPED_TABLE: &str = "
    CREATE TABLE public.items (
        id {id} PRIMARY KEY,
        note text,
        price numeric(12,3),
        doc jsonb,
        at timestamptz,
        ratio float8
    );";

/// The same 3,000 rows on both sides; the destination's jsonb is written with other spacing
/// and key order, and its timestamps in another time zone: equal values, different input.
const TYPED_ROWS_SRC: &str = "
    INSERT INTO public.items
    SELECT g, 'note ' || g, g * 1.125, jsonb_build_object('a', g, 'b', 'x'),
           '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute', g / 7.0
      FROM generate_series(1, 3000) g;";
const TYPED_ROWS_DST: &str = "
    SET TimeZone = 'Asia/Kolkata';
    INSERT INTO public.items
    SELECT g, 'note ' || g, g * 1.125, format('{ \"b\" : \"x\",  \"a\": %s }', g)::jsonb,
           ('2024-01-01 05:30:00'::timestamp + g * interval '1 minute')::timestamptz, g / 7.0
      FROM generate_series(1, 3000) g;
    RESET TimeZone;";

#[tokio::test]
async fn planted_differences_of_each_kind_are_reported_exactly_with_an_integer_key() {
    planted_differences_are_reported_exactly("int").await;
}

#[tokio::test]
async fn planted_differences_of_each_kind_are_reported_exactly_with_a_numeric_key() {
    planted_differences_are_reported_exactly("numeric").await;
}

async fn planted_differences_are_reported_exactly(id_type: &str) {
    let (src, src_sql, dst, dst_sql) = two_dbs(&TYPED_TABLE.replace("{id}", id_type)).await;
    src_sql.batch_execute(TYPED_ROWS_SRC).await.unwrap();
    dst_sql.batch_execute(TYPED_ROWS_DST).await.unwrap();
    // Small leaves make the comparison descend several levels.
    let options = Options {
        leaf_rows: 20,
        fanout: 4,
        ..Options::default()
    };
    let equal = compare(&src, &dst, "public.items", &options).await;
    assert!(equal.equal, "{}", equal.human(50));
    assert_eq!(equal.tables[0].stats.rows_fetched, 0);

    src_sql
        .batch_execute("UPDATE public.items SET note = NULL WHERE id = 2500")
        .await
        .unwrap();
    dst_sql
        .batch_execute(
            "DELETE FROM public.items WHERE id = 17;
             INSERT INTO public.items (id, note) VALUES (5000, 'only here');
             UPDATE public.items SET price = price + 0.001 WHERE id = 1234;
             UPDATE public.items SET note = NULL WHERE id = 2000;
             UPDATE public.items SET note = '' WHERE id = 2500;",
        )
        .await
        .unwrap();
    let report = compare(&src, &dst, "public.items", &options).await;
    let t = &report.tables[0];
    assert!(!report.equal);
    assert_eq!(keys(&t.missing, |m| m.key.0[0].1.clone().unwrap()), ["17"]);
    assert_eq!(
        t.missing[0].source.0[1],
        ("note".to_owned(), Some("note 17".to_owned()))
    );
    assert_eq!(keys(&t.extra, |e| e.key.0[0].1.clone().unwrap()), ["5000"]);
    let changed: Vec<(String, String, Option<String>, Option<String>)> = t
        .different
        .iter()
        .flat_map(|d| {
            d.columns.iter().map(|c| {
                (
                    d.key.0[0].1.clone().unwrap(),
                    c.column.clone(),
                    c.source.clone(),
                    c.destination.clone(),
                )
            })
        })
        .collect();
    assert_eq!(
        changed,
        vec![
            (
                "1234".into(),
                "price".into(),
                Some("1388.250".into()),
                Some("1388.251".into())
            ),
            ("2000".into(), "note".into(), Some("note 2000".into()), None),
            ("2500".into(), "note".into(), None, Some("".into())),
        ]
    );
    assert_eq!((t.source_rows, t.destination_rows), (3000, 3000));
    assert!(
        t.stats.rows_fetched < 600,
        "bisection should fetch a few leaves, fetched {}",
        t.stats.rows_fetched
    );
}

#[tokio::test]
async fn composite_text_keys_range_alike_whatever_each_sides_collation() {
    // The source sorts `region` by an ICU collation, the destination by the database default:
    // a range must still select the same keys on both sides.
    let (src, src_sql, dst, dst_sql) = two_dbs("").await;
    src_sql
        .batch_execute(
            "CREATE TABLE public.sales (region text COLLATE \"und-x-icu\", n int, amount int, PRIMARY KEY (region, n));",
        )
        .await
        .unwrap();
    dst_sql
        .batch_execute(
            "CREATE TABLE public.sales (region text COLLATE \"C\", n int, amount int, PRIMARY KEY (region, n));",
        )
        .await
        .unwrap();
    let fill = "INSERT INTO public.sales
                SELECT r, n, n * 3 FROM unnest(ARRAY['a', 'B', 'b', 'Z', 'é', 'E', 'e', '_x', '10', '9']) r,
                       generate_series(1, 200) n;";
    src_sql.batch_execute(fill).await.unwrap();
    dst_sql.batch_execute(fill).await.unwrap();
    dst_sql
        .batch_execute("UPDATE public.sales SET amount = -1 WHERE region = 'é' AND n = 150")
        .await
        .unwrap();
    let report = compare(
        &src,
        &dst,
        "public.sales",
        &Options {
            leaf_rows: 10,
            fanout: 3,
            ..Options::default()
        },
    )
    .await;
    let t = &report.tables[0];
    assert!(
        t.missing.is_empty() && t.extra.is_empty(),
        "{}",
        report.human(20)
    );
    assert_eq!(t.different.len(), 1, "{}", report.human(20));
    let key: Vec<(String, Option<String>)> = t.different[0].key.0.clone();
    assert_eq!(
        key,
        vec![
            ("region".to_owned(), Some("é".to_owned())),
            ("n".to_owned(), Some("150".to_owned()))
        ]
    );
}

#[tokio::test]
async fn a_million_equal_rows_are_proven_without_fetching_rows_and_differences_cost_little() {
    let ddl = "CREATE TABLE public.big (id int8 PRIMARY KEY, payload text, n int);
               INSERT INTO public.big SELECT g, md5(g::text), g % 1000 FROM generate_series(1, 1000000) g;";
    let (src, _src_sql, dst, dst_sql) = two_dbs(ddl).await;
    let report = compare(&src, &dst, "public.big", &Options::default()).await;
    let t = &report.tables[0];
    assert!(report.equal);
    assert_eq!((t.source_rows, t.destination_rows), (1_000_000, 1_000_000));
    assert_eq!(t.stats.rows_fetched, 0);

    dst_sql
        .batch_execute(
            "UPDATE public.big SET n = -1 WHERE id IN (3, 500000, 999999);
             DELETE FROM public.big WHERE id = 123456;",
        )
        .await
        .unwrap();
    let report = compare(&src, &dst, "public.big", &Options::default()).await;
    let t = &report.tables[0];
    assert_eq!(
        keys(&t.different, |d| d.key.0[0].1.clone().unwrap()),
        ["3", "500000", "999999"]
    );
    assert_eq!(
        keys(&t.missing, |m| m.key.0[0].1.clone().unwrap()),
        ["123456"]
    );
    assert!(t.extra.is_empty());
    // Four leaves of at most 1,000 rows per side: under 1% of the 2 million rows.
    assert!(
        t.stats.rows_fetched <= 8_000,
        "fetched {} rows",
        t.stats.rows_fetched
    );
}

#[tokio::test]
async fn differences_that_heal_before_the_second_look_are_not_reported() {
    let ddl = "CREATE TABLE public.t (id int PRIMARY KEY, v text);
               INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 100) g;";
    let (src, _src_sql, dst, dst_sql) = two_dbs(ddl).await;
    dst_sql
        .batch_execute("UPDATE public.t SET v = 'late' WHERE id IN (10, 20)")
        .await
        .unwrap();
    // When the first look ends, "the pipeline" catches up on row 10 only.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let healer = tokio::spawn(async move {
        rx.recv().await.expect("first pass reported");
        dst_sql
            .batch_execute("UPDATE public.t SET v = 'v10' WHERE id = 10")
            .await
            .unwrap();
    });
    let options = Options {
        recheck_after: Duration::from_millis(1500),
        recheck_rounds: 2,
        ..Options::default()
    };
    let observe = move |e: &Event<'_>| {
        if let Event::PassDone {
            round: 0,
            differences,
            recheck_in: Some(_),
            ..
        } = e
        {
            assert_eq!(*differences, 2);
            let _ = tx.send(());
        }
    };
    let report = verify::verify(&src, &dst, &pair("public.t"), &options, &observe)
        .await
        .unwrap();
    healer.await.unwrap();
    let t = &report.tables[0];
    assert_eq!(
        keys(&t.different, |d| d.key.0[0].1.clone().unwrap()),
        ["20"]
    );
    assert_eq!(t.rechecks, 2, "the persisting row was looked at twice more");
}

#[tokio::test]
async fn verify_agrees_with_a_running_pipeline_under_write_load() {
    let p = Pipeline::new(
        "verify_run",
        "CREATE TABLE public.acct (id int PRIMARY KEY, balance int8 NOT NULL, touched timestamptz);
         INSERT INTO public.acct SELECT g, 0, now() FROM generate_series(1, 20000) g;",
        "[[tables]]\nsource = \"public.acct\"\n[apply]\nbatch_max_wait_ms = 50\n",
    )
    .await;
    let running = crate::run::start(&p).await;
    let (stop_load, mut stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let src = p.src.clone();
        tokio::spawn(async move {
            let sql = cdc::pg::connect(&src).await.unwrap();
            let mut i: i64 = 0;
            while !*stopped.borrow_and_update() {
                i += 1;
                sql.batch_execute(&format!(
                    "UPDATE public.acct SET balance = balance + 1, touched = now() WHERE id = {}",
                    (i * 7919) % 20000 + 1
                ))
                .await
                .unwrap();
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let config = p.config();
    let options = Options {
        recheck_after: Duration::from_secs(2),
        leaf_rows: 200,
        ..Options::default()
    };
    let report = verify::verify(
        &config.source_conninfo().unwrap(),
        &config.destination_conninfo().unwrap(),
        &verify::pairs_from_config(&config, &[]).unwrap(),
        &options,
        &|_| {},
    )
    .await
    .unwrap();
    let _ = stop_load.send(true);
    let updates = writer.await.unwrap();
    running.stop().await;
    assert!(updates > 100, "the load ran ({updates} updates)");
    assert!(report.equal, "{}", report.human(20));
}

fn cdc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cdc"))
        .args(args)
        .env_remove("CDC_CONFIG")
        .env("CDC_LOG_FORMAT", "human")
        .output()
        .expect("run cdc")
}

#[tokio::test]
async fn the_command_reports_in_each_format_with_diff_style_exit_codes() {
    let ddl = "CREATE TABLE public.t (id int PRIMARY KEY, v text);
               INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 50) g;";
    let (src, _s, dst, dst_sql) = two_dbs(ddl).await;
    let src_url = servers().source.url(&src.dbname);
    let dst_url = servers().destination.url(&dst.dbname);
    let base = [
        "verify",
        "--source",
        &src_url,
        "--destination",
        &dst_url,
        "--table",
        "public.t",
    ];

    let out = cdc(&base);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("public.t -> public.t: equal"), "{stdout}");

    dst_sql
        .batch_execute(
            "DELETE FROM public.t WHERE id = 7; UPDATE public.t SET v = NULL WHERE id = 8",
        )
        .await
        .unwrap();
    let dir = crate::harness::scratch().join(unique("verify_out"));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("report.json");
    let out = cdc(&[
        &base[..],
        &["--format", "json", "--output", json_path.to_str().unwrap()],
    ]
    .concat());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("1 missing, 1 different, 0 extra"),
        "{stdout}"
    );
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(servers().source.password()),
            "password leaked: {text}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json["equal"], false);
    assert_eq!(json["tables"][0]["missing"][0]["source"]["v"], "v7");
    assert_eq!(
        json["tables"][0]["different"][0]["columns"][0]["destination"],
        serde_json::Value::Null
    );

    let out = cdc(&[&base[..], &["--format", "csv"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        csv.contains("\"public.t\",\"different\",\"{\"\"id\"\":\"\"8\"\"}\",\"v\",\"v8\",\n"),
        "{csv}"
    );

    // A reader that goes away early (`cdc verify | head -0`) gets the verdict, not a panic.
    for format in ["human", "csv"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cdc"))
            .args(base)
            .args(["--format", format])
            .env_remove("CDC_CONFIG")
            .env("CDC_LOG_FORMAT", "human")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format}: {stderr}");
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
    }

    let out = cdc(&[
        "verify",
        "--source",
        &src_url,
        "--destination",
        &dst_url,
        "--table",
        "public.nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("source table public.nope does not exist"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_command_verifies_a_configured_pipeline_after_its_snapshot() {
    let p = Pipeline::new(
        "verify_cfg",
        "CREATE TABLE public.a (id int PRIMARY KEY, v text);
         CREATE TABLE public.b (k text PRIMARY KEY, n int);
         INSERT INTO public.a SELECT g, 'x' || g FROM generate_series(1, 500) g;
         INSERT INTO public.b SELECT 'k' || g, g FROM generate_series(1, 500) g;",
        "[[tables]]\nsource = \"public.a\"\n[[tables]]\nsource = \"public.b\"\ndestination = \"public.b_copy\"\n",
    )
    .await;
    cdc::snapshot::run(&p.config(), false).await.unwrap();
    let config = p.config_file();
    let out = cdc(&["verify", "--config", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("public.b -> public.b_copy: equal"),
        "{stdout}"
    );
    assert!(stdout.contains("All 2 tables are equal."), "{stdout}");

    p.dst_sql
        .batch_execute("DELETE FROM public.b_copy WHERE k = 'k42'")
        .await
        .unwrap();
    let out = cdc(&[
        "verify",
        "--config",
        config.to_str().unwrap(),
        "--table",
        "public.b",
        "--recheck-after-ms",
        "100",
        "--recheck-rounds",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("missing    k='k42'"), "{stdout}");
    assert!(
        !stdout.contains("public.a"),
        "only the chosen table: {stdout}"
    );
}

#[tokio::test]
async fn integer_keys_at_the_limits_of_their_types_and_empty_sides_are_handled() {
    let (src, src_sql, dst, dst_sql) = two_dbs(
        "CREATE TABLE public.i4 (id int PRIMARY KEY, v int);
         CREATE TABLE public.i8 (id bigint PRIMARY KEY, v int);
         CREATE TABLE public.gone (id int PRIMARY KEY);",
    )
    .await;
    // Sparse int4 keys up to the type's maximum (the range end is one past it), and int8 keys
    // spanning the whole type (too wide for 64-bit arithmetic: the general descent takes over).
    let fill = "INSERT INTO public.i4 SELECT (g::int8 * 1000003 % 2147483647)::int, g FROM generate_series(1, 3000) g;
                INSERT INTO public.i4 VALUES (2147483647, 0), (-2147483648, 0);
                INSERT INTO public.i8 SELECT g::int8 * 3074457345618258, g FROM generate_series(-2999, 2999) g;
                INSERT INTO public.i8 VALUES (9223372036854775807, 0), (-9223372036854775808, 0);";
    src_sql.batch_execute(fill).await.unwrap();
    dst_sql.batch_execute(fill).await.unwrap();
    src_sql
        .batch_execute("INSERT INTO public.gone SELECT generate_series(1, 50)")
        .await
        .unwrap();
    dst_sql
        .batch_execute(
            "UPDATE public.i4 SET v = -1 WHERE id IN (2147483647, -2147483648, 1000003);
             UPDATE public.i8 SET v = -1 WHERE id IN (9223372036854775807, -9223372036854775808, 0);",
        )
        .await
        .unwrap();
    let options = Options {
        leaf_rows: 16,
        fanout: 8,
        max_differences: 10,
        ..Options::default()
    };
    for (table, expected) in [
        ("public.i4", vec!["-2147483648", "1000003", "2147483647"]),
        (
            "public.i8",
            vec!["-9223372036854775808", "0", "9223372036854775807"],
        ),
    ] {
        let report = compare(&src, &dst, table, &options).await;
        let t = &report.tables[0];
        assert!(
            t.missing.is_empty() && t.extra.is_empty(),
            "{}",
            report.human(10)
        );
        assert_eq!(
            keys(&t.different, |d| d.key.0[0].1.clone().unwrap()),
            expected,
            "{table}"
        );
    }
    let report = compare(&src, &dst, "public.gone", &options).await;
    let t = &report.tables[0];
    assert_eq!((t.source_rows, t.destination_rows), (50, 0));
    assert_eq!(t.missing.len(), 10, "stops at max_differences");
    assert!(t.truncated);
    assert!(report.human(5).contains("stopped at the difference limit"));
}
