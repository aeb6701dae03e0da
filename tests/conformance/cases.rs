//! Cases where a whole-table replicator can diverge, each on every destination it applies to.

use super::{on_every_destination, Case, Col, Dest};

const KEY_DOC: &[Col<'static>] = &[Col::Text("id"), Col::Text("v"), Col::Md5("doc")];

/// Rows trading primary keys inside one batch while their TOASTed column stays unchanged
/// (Postgres sends it as "unchanged"): every row must keep its own large value.
async fn rows_trading_keys_keep_their_own_toast_values(dest: Dest) {
    let mut c = Case::new(
        dest,
        "conf_trade",
        "CREATE TABLE k (id int PRIMARY KEY, v text, doc text);
         ALTER TABLE k ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO k SELECT g, 'v' || g, repeat(md5(g::text), 300) FROM generate_series(1, 40) g;",
        "[[tables]]\nsource = \"public.k\"\n",
    )
    .await;
    c.start().await;
    // All at once in one transaction (so in one batch): a swap through a temporary key, a
    // rotation of three keys, a chain, and a range moved by one statement.
    c.source(
        "BEGIN;
         UPDATE k SET id = 100 WHERE id = 1; UPDATE k SET id = 1 WHERE id = 2; UPDATE k SET id = 2 WHERE id = 100;
         UPDATE k SET id = 103 WHERE id = 3; UPDATE k SET id = 3 WHERE id = 4; UPDATE k SET id = 4 WHERE id = 5;
         UPDATE k SET id = 5 WHERE id = 103;
         UPDATE k SET id = 60 WHERE id = 6; UPDATE k SET id = 6 WHERE id = 7;
         UPDATE k SET id = id + 1000 WHERE id BETWEEN 10 AND 15;
         COMMIT;",
    )
    .await;
    c.wait_same("k", KEY_DOC, "id").await;
    // The same moves each in its own transaction, with a value change on the way.
    c.source(
        "UPDATE k SET id = 200 WHERE id = 1; UPDATE k SET id = 1, v = 'swapped' WHERE id = 2;
         UPDATE k SET id = 2 WHERE id = 200;
         UPDATE k SET id = 130 WHERE id = 3; UPDATE k SET id = 3 WHERE id = 4; UPDATE k SET id = 4 WHERE id = 5;
         UPDATE k SET id = 5 WHERE id = 130;
         UPDATE k SET id = 61 WHERE id = 16; UPDATE k SET id = 16 WHERE id = 17;
         UPDATE k SET id = id - 1000 WHERE id BETWEEN 1010 AND 1015;
         BEGIN; UPDATE k SET id = id + 100 WHERE id BETWEEN 20 AND 26;
                UPDATE k SET id = id - 101 WHERE id BETWEEN 121 AND 126; COMMIT;",
    )
    .await;
    c.wait_same("k", KEY_DOC, "id").await;
}
on_every_destination!(rows_trading_keys_keep_their_own_toast_values);

/// `PRIMARY KEY (a) INCLUDE (b)`: the key is `a` alone; `b` may be NULL.
async fn a_primary_key_with_include_columns_is_keyed_on_its_key_columns(dest: Dest) {
    let mut c = Case::new(
        dest,
        "conf_include",
        "CREATE TABLE inc (a int, b int, c text, PRIMARY KEY (a) INCLUDE (b));
         INSERT INTO inc VALUES (1, NULL, 'x'), (2, 2, 'y');",
        "[[tables]]\nsource = \"public.inc\"\n",
    )
    .await;
    c.start().await;
    c.source(
        "INSERT INTO inc VALUES (3, NULL, 'z');
         UPDATE inc SET b = NULL WHERE a = 2;
         UPDATE inc SET b = 5, c = 'five' WHERE a = 1;
         DELETE FROM inc WHERE a = 3;
         INSERT INTO inc VALUES (4, NULL, NULL);",
    )
    .await;
    let cols = [Col::Text("a"), Col::Text("b"), Col::Text("c")];
    c.wait_same("inc", &cols, "a").await;
    if dest == Dest::Postgres {
        let def = crate::harness::rows_text(
            &c.p.dst_sql,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'public.inc'::regclass AND contype = 'p'",
        )
        .await;
        assert_eq!(def, ["PRIMARY KEY (a) INCLUDE (b)"]);
        let not_null = crate::harness::rows_text(
            &c.p.dst_sql,
            "SELECT attnotnull::text FROM pg_attribute WHERE attrelid = 'public.inc'::regclass AND attname = 'b'",
        )
        .await;
        assert_eq!(not_null, ["false"], "an included column stays nullable");
    }
    assert!(c.alive(), "cdc run still running");
}
on_every_destination!(a_primary_key_with_include_columns_is_keyed_on_its_key_columns);

/// `CREATE TABLE t ()` holds rows but no values: refused up front, by name, nothing created.
#[tokio::test]
async fn a_table_with_no_columns_is_refused_by_name_and_leaves_no_slot() {
    let c = Case::new(
        Dest::Postgres,
        "conf_nocols",
        "CREATE TABLE nocols (); ALTER TABLE nocols REPLICA IDENTITY FULL;
         INSERT INTO nocols DEFAULT VALUES; INSERT INTO nocols DEFAULT VALUES;
         CREATE TABLE fine (id int PRIMARY KEY);",
        "[[tables]]\nsource = \"public.nocols\"\n[[tables]]\nsource = \"public.fine\"\n",
    )
    .await;
    let out = c.cdc(&["snapshot"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("public.nocols has no columns"),
        "names the table: {stderr}"
    );
    assert!(
        stderr.contains("add a key column (ALTER TABLE \"public\".\"nocols\" ADD COLUMN id"),
        "gives the fix in one readable sentence: {stderr}"
    );
    assert_eq!(c.p.slot_count().await, 0, "no slot left behind");
    assert_eq!(
        crate::harness::rows_text(
            &c.p.dst_sql,
            "SELECT count(*)::text FROM pg_tables WHERE tablename = 'fine'"
        )
        .await,
        ["0"],
        "nothing created"
    );
}

/// Keyless (REPLICA IDENTITY FULL) rows that `=` calls equal, or cannot compare at all: the
/// update or delete must hit exactly the row the source changed.
const KEYLESS_DDL: &str = "
    CREATE COLLATION nd (provider = icu, locale = 'und', deterministic = false);
    CREATE TABLE kl (f float8, n numeric, s text COLLATE nd, j json, p point, bx box, x xml,
                     flag bool, c char(4), tag int);
    ALTER TABLE kl REPLICA IDENTITY FULL;
    INSERT INTO kl VALUES
      (0, 1.0, U&'\\00E9', '{\"a\":1}', '(1,1)', '(1,1),(0,0)', '<a/>', true, 'ab', 0),
      (0, 1.0, U&'\\00E9', '{\"a\":1}', '(1,1)', '(1,1),(0,0)', '<a/>', true, 'ab', 0);";

/// The changes: each picks one of two rows that differ in one column only.
const KEYLESS_CHANGES: &str = "
    INSERT INTO kl VALUES
      ('-0', 1.0, U&'\\00E9', '{\"a\":1}', '(1,1)', '(1,1),(0,0)', '<a/>', true, 'ab', 0),
      ('0', 1.00, U&'\\00E9', '{\"a\":1}', '(1,1)', '(1,1),(0,0)', '<a/>', true, 'ab', 0),
      ('0', 1.0, U&'e\\0301', '{\"a\":1}', '(1,1)', '(1,1),(0,0)', '<a/>', true, 'ab', 0),
      ('0', 1.0, U&'\\00E9', '{\"a\": 1}', '(1,1)', '(1,1),(0,0)', '<a/>', true, 'ab', 0),
      ('0', 1.0, U&'\\00E9', '{\"a\":1}', '(1,1.5)', '(1,1),(0,0)', '<a/>', true, 'ab', 0),
      ('0', 1.0, U&'\\00E9', '{\"a\":1}', '(1,1)', '(2,2),(0,0)', '<a/>', true, 'ab', 0),
      ('0', 1.0, U&'\\00E9', '{\"a\":1}', '(1,1)', '(1,1),(0,0)', '<b/>', true, 'ab', 0);
    UPDATE kl SET tag = 1 WHERE f::text = '-0';
    UPDATE kl SET tag = 2 WHERE n::text = '1.00';
    UPDATE kl SET tag = 3 WHERE convert_to(s, 'UTF8') = convert_to(U&'e\\0301', 'UTF8');
    UPDATE kl SET tag = 4 WHERE j::text = '{\"a\": 1}';
    UPDATE kl SET tag = 5 WHERE p[1] = 1.5;
    UPDATE kl SET tag = 6 WHERE bx::text = '(2,2),(0,0)';
    UPDATE kl SET tag = 7 WHERE x::text = '<b/>';
    DELETE FROM kl WHERE f::text = '-0';
    UPDATE kl SET tag = 8 WHERE ctid = (SELECT min(ctid) FROM kl WHERE tag = 0);";

#[tokio::test]
async fn keyless_rows_are_matched_by_exact_representation_on_postgres() {
    let mut c = Case::new(
        Dest::Postgres,
        "conf_keyless",
        KEYLESS_DDL,
        "[[tables]]\nsource = \"public.kl\"\n",
    )
    .await;
    c.start().await;
    c.source(KEYLESS_CHANGES).await;
    // Each row whole, as its output text (exact), sorted bytewise.
    let whole = [Col::Text("kl")];
    c.wait_same("kl", &whole, "kl::text COLLATE \"C\"").await;
    let tags = crate::harness::rows_text(
        &c.p.dst_sql,
        "SELECT string_agg(tag::text, ',' ORDER BY tag) FROM kl",
    )
    .await;
    assert_eq!(tags, ["0,2,3,4,5,6,7,8"], "each change hit its own row");
}

#[tokio::test]
async fn keyless_rows_are_matched_by_exact_representation_in_duckdb() {
    let mut c = Case::new(
        Dest::DuckDb,
        "conf_keyless_duck",
        KEYLESS_DDL,
        "[[tables]]\nsource = \"public.kl\"\n",
    )
    .await;
    c.start().await;
    c.source(KEYLESS_CHANGES).await;
    // Which row carries which tag, told apart by the one column that differs.
    let cols = [
        Col::Text("tag"),
        Col::Text("f"),
        Col::Text("s"),
        Col::Text("j"),
        Col::Text("p"),
        Col::Text("bx"),
        Col::Text("x"),
    ];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let want = c.source_rows("kl", &[Col::Text("tag")], "1").await;
    loop {
        let got = c.dest_rows("kl", &cols, "1, 2, 3, 4, 5, 6, 7").await;
        if let Some(rows) = &got {
            let tags: Vec<Vec<String>> = rows.iter().map(|r| vec![r[0].clone()]).collect();
            if tags == want {
                let by_tag = |t: &str| rows.iter().find(|r| r[0] == t).unwrap().clone();
                assert_eq!(by_tag("3")[2], "e\u{301}", "the NFD spelling got tag 3");
                assert_eq!(by_tag("4")[3], "{\"a\": 1}", "the spaced json got tag 4");
                assert!(by_tag("5")[4].contains("1.5"), "the other point got tag 5");
                assert!(by_tag("6")[5].contains('2'), "the larger box got tag 6");
                assert_eq!(by_tag("7")[6], "<b/>", "the other xml got tag 7");
                assert!(
                    rows.iter().all(|r| !r[1].starts_with('-')),
                    "-0 was deleted, not 0: {rows:?}"
                );
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected tags {want:?}, got {got:?}\n{}",
            c.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A column dropped and added again under its name starts empty (or with its new default) at
/// the end, on a plain table and on a partitioned root (`DROP b; ADD c DEFAULT 7; ADD b`).
async fn a_column_dropped_and_added_again_is_a_new_column(dest: Dest) {
    let mut c = Case::new(
        dest,
        "conf_readd",
        "CREATE TABLE r (id int PRIMARY KEY, a text, b text, c text);
         INSERT INTO r VALUES (1, 'a1', 'b1', 'c1'), (2, 'a2', 'b2', 'c2');
         CREATE TABLE pr (id int PRIMARY KEY, a text, b text) PARTITION BY RANGE (id);
         CREATE TABLE pr1 PARTITION OF pr FOR VALUES FROM (0) TO (100);
         CREATE TABLE pr2 PARTITION OF pr FOR VALUES FROM (100) TO (200);
         INSERT INTO pr VALUES (1, 'a1', 'b1'), (150, 'a150', 'b150');",
        "[[tables]]\nsource = \"public.r\"\n[[tables]]\nsource = \"public.pr\"\n",
    )
    .await;
    c.start().await;
    c.source(
        "ALTER TABLE r DROP COLUMN b; ALTER TABLE r ADD COLUMN b text;
         INSERT INTO r (id, a, c, b) VALUES (3, 'a3', 'c3', 'b3');
         UPDATE r SET a = 'x' WHERE id = 1;
         ALTER TABLE pr DROP COLUMN b; ALTER TABLE pr ADD COLUMN c int DEFAULT 7; ALTER TABLE pr ADD COLUMN b text;
         INSERT INTO pr (id, a, c, b) VALUES (2, 'a2', 8, 'b2');
         UPDATE pr SET a = 'y' WHERE id = 150;",
    )
    .await;
    let cols = [
        Col::Text("id"),
        Col::Text("a"),
        Col::Text("b"),
        Col::Text("c"),
    ];
    c.wait_same("r", &cols, "id").await;
    c.wait_same("pr", &cols, "id").await;
    if dest == Dest::Postgres {
        let order = |t: &str| {
            format!(
                "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
                  WHERE attrelid = 'public.{t}'::regclass AND attnum > 0 AND NOT attisdropped"
            )
        };
        for t in ["r", "pr"] {
            assert_eq!(
                crate::harness::rows_text(&c.p.dst_sql, &order(t)).await,
                crate::harness::rows_text(&c.p.src_sql, &order(t)).await,
                "{t}: the source's column order"
            );
        }
    }
}
on_every_destination!(a_column_dropped_and_added_again_is_a_new_column);

/// REPLICA IDENTITY FULL rows written before `ADD COLUMN … DEFAULT … NOT NULL` hold that value
/// as a "missing attribute"; updates and deletes of them must still find them.
async fn full_identity_rows_older_than_an_added_default_are_found(dest: Dest) {
    let keyless = dest != Dest::ClickHouse;
    let ddl = format!(
        "CREATE TABLE m (id int {key}, a int);
         ALTER TABLE m REPLICA IDENTITY FULL;
         INSERT INTO m VALUES (1, 1), (2, 2), (3, 3);
         ALTER TABLE m ADD COLUMN d int NOT NULL DEFAULT 5;
         INSERT INTO m VALUES (4, 4, 6);
         CREATE TABLE m2 (id int {key}, a int);
         ALTER TABLE m2 REPLICA IDENTITY FULL;
         INSERT INTO m2 VALUES (1, 1), (2, 2), (3, 3);",
        key = if keyless { "" } else { "PRIMARY KEY" }
    );
    let mut c = Case::new(
        dest,
        "conf_missing",
        &ddl,
        "[[tables]]\nsource = \"public.m\"\n[[tables]]\nsource = \"public.m2\"\n",
    )
    .await;
    c.start().await;
    c.source(
        "UPDATE m SET a = a + 1; DELETE FROM m WHERE id = 2; UPDATE m SET d = 9 WHERE id = 3;",
    )
    .await;
    let cols = [Col::Text("id"), Col::Text("a"), Col::Text("d")];
    c.wait_same("m", &cols, "id").await;
    // The same with the column added while streaming (a keyless table is copied again).
    c.source(
        "ALTER TABLE m2 ADD COLUMN d int NOT NULL DEFAULT 5;
         UPDATE m2 SET a = a + 1; DELETE FROM m2 WHERE id = 2; UPDATE m2 SET d = 9 WHERE id = 3;
         INSERT INTO m2 VALUES (4, 4, 6);",
    )
    .await;
    c.wait_same("m2", &cols, "id").await;
    c.source("UPDATE m2 SET a = a + 10 WHERE id > 2").await;
    c.wait_same("m2", &cols, "id").await;
}
on_every_destination!(full_identity_rows_older_than_an_added_default_are_found);

/// REPLICA IDENTITY USING INDEX on a unique index that is not the primary key, over a TOASTed
/// column: rows are found by the identity the source sends (read again from every Relation,
/// so switching the identity while streaming is followed). ClickHouse replaces rows by the
/// primary key, which these changes do not carry: it stops with the fix, applying nothing.
async fn replica_identity_using_index_finds_rows_by_that_index(dest: Dest) {
    let mut c = Case::new(
        dest,
        "conf_ri_index",
        // 2,560 bytes that pglz cannot shrink: stored out of line (TOASTed), yet small enough
        // for a btree entry.
        "CREATE TABLE ri (id int PRIMARY KEY, x int NOT NULL, doc text NOT NULL, v text);
         CREATE UNIQUE INDEX ri_x_doc ON ri (x, doc);
         CREATE UNIQUE INDEX ri_x ON ri (x);
         ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_x_doc;
         INSERT INTO ri SELECT g, g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 80) i), 'v'
           FROM generate_series(1, 6) g;",
        "[[tables]]\nsource = \"public.ri\"\n",
    )
    .await;
    assert_eq!(
        crate::harness::rows_text(
            &c.p.src_sql,
            "SELECT (pg_relation_size(reltoastrelid) > 0)::text FROM pg_class WHERE oid = 'ri'::regclass"
        )
        .await,
        ["true"],
        "doc is stored out of line, so updates that keep it send it as unchanged"
    );
    c.start().await;
    let cols = [
        Col::Text("id"),
        Col::Text("x"),
        Col::Text("v"),
        Col::Md5("doc"),
    ];
    // The identity's other column changed while its TOASTed one stayed; the key changed under
    // an unchanged identity; a delete; then the same row changed again.
    c.source(
        "UPDATE ri SET x = x + 100 WHERE id <= 2;
         UPDATE ri SET v = 'w', id = 50 WHERE id = 3;
         DELETE FROM ri WHERE id = 4;
         UPDATE ri SET x = 7, id = 70 WHERE id = 1;",
    )
    .await;
    if dest == Dest::ClickHouse {
        let status = c.wait_exit().await;
        let log = c.log_text();
        assert_eq!(status.code(), Some(65), "{log}");
        assert!(log.contains("REPLICA IDENTITY DEFAULT (or FULL)"), "{log}");
        return;
    }
    c.wait_same("ri", &cols, "id").await;
    // Switched to another index while streaming, then back to the key.
    c.source(
        "ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_x;
         UPDATE ri SET v = 'after', id = 60 WHERE id = 5;
         UPDATE ri SET x = 1000 WHERE id = 6;
         DELETE FROM ri WHERE id = 2;",
    )
    .await;
    c.wait_same("ri", &cols, "id").await;
    c.source(
        "ALTER TABLE ri REPLICA IDENTITY DEFAULT;
         UPDATE ri SET x = 2000, v = 'default' WHERE id = 60;
         DELETE FROM ri WHERE id = 70;",
    )
    .await;
    c.wait_same("ri", &cols, "id").await;
}
on_every_destination!(replica_identity_using_index_finds_rows_by_that_index);
