//! Postgres's own subscription tests (`src/test/subscription/t/*.pl`), their workloads run
//! through `cdc run` on every destination, and their expected end states checked (here: the
//! destination equal to the source, value by value). Only what applies to a replicator of whole
//! tables into another database: subscription management, conflicts, column lists, origins,
//! sequences and statistics are the native subscriber's own.

use super::{on_every_destination, Case, Col, Dest};

/// 001_rep_changes: inserts, updates and deletes on tables with each kind of replica identity,
/// with duplicates in keyless tables, TOASTed values, and a primary key with INCLUDE.
async fn tap_001_rep_changes(dest: Dest) {
    let keyless = dest != Dest::ClickHouse;
    let mut ddl = String::from(
        "CREATE TABLE tab_ins AS SELECT a FROM generate_series(1, 1002) a;
         ALTER TABLE tab_ins ADD PRIMARY KEY (a);
         CREATE TABLE tab_rep (a int PRIMARY KEY);
         CREATE TABLE tab_include (a int, b text, CONSTRAINT covering PRIMARY KEY (a) INCLUDE (b));
         CREATE TABLE tab_big (a int PRIMARY KEY, big text);
         ALTER TABLE tab_big ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO tab_big SELECT g, repeat(md5(g::text), 500) FROM generate_series(1, 5) g;",
    );
    let mut tables = vec!["tab_ins", "tab_rep", "tab_include", "tab_big"];
    if keyless {
        ddl.push_str(
            "CREATE TABLE tab_full AS SELECT generate_series(1, 10) AS a;
             ALTER TABLE tab_full REPLICA IDENTITY FULL;
             CREATE TABLE tab_full2 (x text);
             ALTER TABLE tab_full2 REPLICA IDENTITY FULL;
             INSERT INTO tab_full2 VALUES ('a'), ('b'), ('b');",
        );
        tables.extend(["tab_full", "tab_full2"]);
    }
    let config: String = tables
        .iter()
        .map(|t| format!("[[tables]]\nsource = \"public.{t}\"\n"))
        .collect();
    let mut c = Case::new(dest, "tap001", &ddl, &config).await;
    c.start().await;
    c.source(
        "INSERT INTO tab_ins SELECT generate_series(1003, 1050);
         DELETE FROM tab_ins WHERE a > 1020;
         UPDATE tab_ins SET a = -a;
         INSERT INTO tab_rep SELECT generate_series(1, 50);
         DELETE FROM tab_rep WHERE a > 20;
         UPDATE tab_rep SET a = -a;
         INSERT INTO tab_include SELECT generate_series(1, 50), 'x';
         DELETE FROM tab_include WHERE a > 20;
         UPDATE tab_include SET a = -a;
         UPDATE tab_include SET b = NULL WHERE a = -3;
         UPDATE tab_big SET a = a + 10;
         UPDATE tab_big SET big = repeat('y', 20000) WHERE a = 12;",
    )
    .await;
    if keyless {
        c.source(
            "UPDATE tab_full SET a = a * a;
             DELETE FROM tab_full WHERE a = 25;
             UPDATE tab_full2 SET x = 'bb' WHERE x = 'b';
             DELETE FROM tab_full2 WHERE ctid = (SELECT min(ctid) FROM tab_full2 WHERE x = 'bb');",
        )
        .await;
    }
    let a = [Col::Text("a")];
    c.wait_same("tab_ins", &a, "a").await;
    c.wait_same("tab_rep", &a, "a").await;
    c.wait_same("tab_include", &[Col::Text("a"), Col::Text("b")], "a")
        .await;
    c.wait_same("tab_big", &[Col::Text("a"), Col::Md5("big")], "a")
        .await;
    if keyless {
        c.wait_same("tab_full", &a, "a").await;
        c.wait_same("tab_full2", &[Col::Text("x")], "x").await;
    }
}
on_every_destination!(tap_001_rep_changes);

/// 006_rewrite: a column added with a default (a table rewrite on old servers) and rows changed
/// after it.
async fn tap_006_rewrite(dest: Dest) {
    let mut c = Case::new(
        dest,
        "tap006",
        "CREATE TABLE test1 (a int PRIMARY KEY, b text);
         INSERT INTO test1 (a, b) VALUES (1, 'one'), (2, 'two');",
        "[[tables]]\nsource = \"public.test1\"\n",
    )
    .await;
    c.start().await;
    c.source(
        "ALTER TABLE test1 ADD c int NOT NULL DEFAULT 0;
         INSERT INTO test1 (a, b, c) VALUES (3, 'three', 33);
         UPDATE test1 SET c = 11 WHERE a = 1;",
    )
    .await;
    let cols = [Col::Text("a"), Col::Text("b"), Col::Text("c")];
    c.wait_same("test1", &cols, "a").await;
}
on_every_destination!(tap_006_rewrite);

/// 010_truncate: one table, several at once, a cascade through a foreign key (not copied to
/// the destination), and a truncate inside a transaction that also writes.
async fn tap_010_truncate(dest: Dest) {
    let mut c = Case::new(
        dest,
        "tap010",
        "CREATE TABLE tab1 (a int PRIMARY KEY);
         CREATE TABLE tab2 (a int PRIMARY KEY);
         CREATE TABLE tab3 (a int PRIMARY KEY);
         CREATE TABLE tab4 (x int PRIMARY KEY, y int REFERENCES tab3);
         INSERT INTO tab1 VALUES (1), (2), (3);
         INSERT INTO tab2 VALUES (1), (2), (3);
         INSERT INTO tab3 VALUES (1), (2), (3);
         INSERT INTO tab4 VALUES (11, 1), (111, 1), (22, 2);",
        "[[tables]]\nsource = \"public.tab1\"\n[[tables]]\nsource = \"public.tab2\"\n\
         [[tables]]\nsource = \"public.tab3\"\n[[tables]]\nsource = \"public.tab4\"\n",
    )
    .await;
    c.start().await;
    c.source(
        "TRUNCATE tab1;
         TRUNCATE tab2, tab3 CASCADE;
         BEGIN; INSERT INTO tab1 VALUES (7); TRUNCATE tab1; INSERT INTO tab1 VALUES (8), (9); COMMIT;
         INSERT INTO tab3 VALUES (5); INSERT INTO tab4 VALUES (55, 5);",
    )
    .await;
    let a = [Col::Text("a")];
    c.wait_same("tab1", &a, "a").await;
    c.wait_same("tab2", &a, "a").await;
    c.wait_same("tab3", &a, "a").await;
    c.wait_same("tab4", &[Col::Text("x"), Col::Text("y")], "x")
        .await;
}
on_every_destination!(tap_010_truncate);

/// 013_partition: a partitioned table published through its root: rows moving between
/// partitions, updates and deletes routed to leaves, a truncate of the root.
async fn tap_013_partition(dest: Dest) {
    let mut c = Case::new(
        dest,
        "tap013",
        "CREATE TABLE tab1 (a int PRIMARY KEY, b text) PARTITION BY LIST (a);
         CREATE TABLE tab1_1 (b text, a int NOT NULL);
         ALTER TABLE tab1 ATTACH PARTITION tab1_1 FOR VALUES IN (1, 2, 3);
         CREATE TABLE tab1_2 PARTITION OF tab1 FOR VALUES IN (4, 5, 6);
         CREATE TABLE tab1_def PARTITION OF tab1 DEFAULT;
         CREATE TABLE tab2 (a int PRIMARY KEY, b text) PARTITION BY RANGE (a);
         CREATE TABLE tab2_1 PARTITION OF tab2 FOR VALUES FROM (0) TO (10) PARTITION BY RANGE (a);
         CREATE TABLE tab2_1_1 PARTITION OF tab2_1 FOR VALUES FROM (0) TO (5);
         CREATE TABLE tab2_1_2 PARTITION OF tab2_1 FOR VALUES FROM (5) TO (10);
         CREATE TABLE tab2_2 PARTITION OF tab2 FOR VALUES FROM (10) TO (40);",
        "[[tables]]\nsource = \"public.tab1\"\n[[tables]]\nsource = \"public.tab2\"\n",
    )
    .await;
    let version: i32 =
        c.p.src_sql
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0);
    if version < 150000 {
        // 13 and 14's pgoutput can send tab1_1's (b, a) tuples unconverted: refused, nothing
        // created, and streamed once the partition is stored in its root's order.
        let out = c.cdc(&["snapshot"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("partition public.tab1_1 of public.tab1 stores its columns as (b, a)"),
            "{err}"
        );
        let slots: i64 =
            c.p.src_sql
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&c.p.slot],
                )
                .await
                .unwrap()
                .get(0);
        assert_eq!(slots, 0, "a refused snapshot left a slot");
        c.source(
            "DROP TABLE tab1_1;
             CREATE TABLE tab1_1 PARTITION OF tab1 FOR VALUES IN (1, 2, 3);",
        )
        .await;
    }
    c.start().await;
    c.source(
        "INSERT INTO tab1 VALUES (1, 'one'), (0, 'zero'), (4, 'four'), (10, 'ten');
         UPDATE tab1 SET a = 2 WHERE a = 1;
         UPDATE tab1 SET a = 6 WHERE a = 4;
         UPDATE tab1 SET a = 5, b = 'moved' WHERE a = 2;
         DELETE FROM tab1 WHERE a = 0;
         INSERT INTO tab2 SELECT g, 'v' || g FROM generate_series(0, 19) g;
         UPDATE tab2 SET a = a + 20 WHERE a BETWEEN 3 AND 6;
         DELETE FROM tab2 WHERE a = 19;",
    )
    .await;
    let cols = [Col::Text("a"), Col::Text("b")];
    c.wait_same("tab1", &cols, "a").await;
    c.wait_same("tab2", &cols, "a").await;
    c.source("TRUNCATE tab1; INSERT INTO tab1 VALUES (3, 'after')")
        .await;
    c.wait_same("tab1", &cols, "a").await;
}
on_every_destination!(tap_013_partition);

/// 015–019: large transactions the server streams before they commit (the source's
/// `logical_decoding_work_mem` is 64kB), with subtransactions rolled back, DDL inside, and
/// whole transactions aborted.
async fn tap_015_to_019_streamed_transactions(dest: Dest) {
    let mut c = Case::new(
        dest,
        "tap015",
        "CREATE TABLE test_tab (a int PRIMARY KEY, b text);
         INSERT INTO test_tab VALUES (1, 'foo'), (2, 'bar');",
        "[[tables]]\nsource = \"public.test_tab\"\n",
    )
    .await;
    c.start().await;
    c.source(
        // 015: a large transaction, updates and deletes included.
        "BEGIN;
         INSERT INTO test_tab SELECT i, md5(i::text) FROM generate_series(3, 5000) s(i);
         UPDATE test_tab SET b = md5(b) WHERE mod(a, 2) = 0;
         DELETE FROM test_tab WHERE mod(a, 3) = 0;
         COMMIT;
         -- 016: subtransactions, some rolled back.
         BEGIN;
         INSERT INTO test_tab SELECT i, md5(i::text) FROM generate_series(5001, 6000) s(i);
         SAVEPOINT s1;
         INSERT INTO test_tab SELECT i, md5(i::text) FROM generate_series(6001, 7000) s(i);
         ROLLBACK TO s1;
         SAVEPOINT s2;
         DELETE FROM test_tab WHERE a BETWEEN 5001 AND 5100;
         RELEASE s2;
         COMMIT;
         -- 017/019: DDL inside a streamed transaction, around an aborted subtransaction.
         BEGIN;
         INSERT INTO test_tab SELECT i, md5(i::text) FROM generate_series(7001, 8000) s(i);
         ALTER TABLE test_tab ADD COLUMN c int;
         SAVEPOINT s3;
         INSERT INTO test_tab SELECT i, md5(i::text), -i FROM generate_series(8001, 9000) s(i);
         ROLLBACK TO s3;
         INSERT INTO test_tab SELECT i, md5(i::text), i FROM generate_series(9001, 10000) s(i);
         UPDATE test_tab SET c = a WHERE a < 100;
         COMMIT;
         -- 018: a whole large transaction aborted.
         BEGIN;
         INSERT INTO test_tab SELECT i, md5(i::text), i FROM generate_series(10001, 12000) s(i);
         DELETE FROM test_tab WHERE a < 50;
         ROLLBACK;",
    )
    .await;
    let cols = [Col::Text("a"), Col::Text("b"), Col::Text("c")];
    c.wait_same("test_tab", &cols, "a").await;
}
on_every_destination!(tap_015_to_019_streamed_transactions);

/// 025_rep_changes_for_schema: tables in another schema, with its name quoted and mixed case.
async fn tap_025_other_schema(dest: Dest) {
    let mut c = Case::new(
        dest,
        "tap025",
        "CREATE SCHEMA sch1;
         CREATE TABLE sch1.tab1 AS SELECT generate_series(1, 10) AS a;
         ALTER TABLE sch1.tab1 ADD PRIMARY KEY (a);
         CREATE TABLE public.tab2 (a int PRIMARY KEY, b text);",
        "[[tables]]\nsource = \"sch1.tab1\"\ndestination = \"public.sch1_tab1\"\n\
         [[tables]]\nsource = \"public.tab2\"\n",
    )
    .await;
    c.start().await;
    c.source(
        "INSERT INTO sch1.tab1 VALUES (11); DELETE FROM sch1.tab1 WHERE a < 3; UPDATE sch1.tab1 SET a = 100 WHERE a = 5;
         INSERT INTO tab2 VALUES (1, 'x');",
    )
    .await;
    let a = [Col::Text("a")];
    // The source query reads the source table; the destination one its renamed copy.
    let want = c.source_rows("sch1.tab1", &a, "a").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while c.dest_rows("sch1_tab1", &a, "a").await.as_ref() != Some(&want) {
        assert!(tokio::time::Instant::now() < deadline, "{}", c.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    c.wait_same("tab2", &[Col::Text("a"), Col::Text("b")], "a")
        .await;
}
on_every_destination!(tap_025_other_schema);

/// 021_twophase / 023_twophase_stream: prepared transactions (large ones streamed), committed
/// or rolled back later; cdc does not ask for two-phase decoding, so each arrives whole at its
/// COMMIT PREPARED and a rolled-back one never.
async fn tap_021_023_two_phase(dest: Dest) {
    // A server of its own: a prepared transaction left behind by a failing test would hold
    // back every slot creation on a shared one.
    let source = tokio::task::spawn_blocking(|| {
        cdc::local_pg::LocalPostgres::start(&cdc::local_pg::Options {
            logical: true,
            settings: vec![
                "max_prepared_transactions = 10".into(),
                "logical_decoding_work_mem = '64kB'".into(),
            ],
            ..Default::default()
        })
        .unwrap()
    })
    .await
    .unwrap();
    let mut c = Case::on(
        dest,
        &source,
        &crate::harness::servers().destination,
        "tap021",
        "CREATE TABLE tab_full (a int PRIMARY KEY, b text);
         INSERT INTO tab_full VALUES (1, 'one'), (2, 'two');",
        "[[tables]]\nsource = \"public.tab_full\"\n",
    )
    .await;
    c.start().await;
    // No two of them touch the same row: a prepared transaction keeps its locks.
    c.source(
        "BEGIN; INSERT INTO tab_full SELECT g, md5(g::text) FROM generate_series(3, 4000) g;
         UPDATE tab_full SET b = 'changed' WHERE a = 1; PREPARE TRANSACTION 'p1';
         BEGIN; INSERT INTO tab_full SELECT g, 'never' FROM generate_series(5000, 6000) g;
         DELETE FROM tab_full WHERE a = 2; PREPARE TRANSACTION 'p2';
         BEGIN; INSERT INTO tab_full VALUES (7000, 'small'); PREPARE TRANSACTION 'p3';",
    )
    .await;
    // Each alone: they cannot run inside the implicit transaction of a multi-statement query.
    for sql in [
        "COMMIT PREPARED 'p1'",
        "ROLLBACK PREPARED 'p2'",
        "COMMIT PREPARED 'p3'",
    ] {
        c.source(sql).await;
    }
    c.wait_same("tab_full", &[Col::Text("a"), Col::Text("b")], "a")
        .await;
}
on_every_destination!(tap_021_023_two_phase);

/// 100_bugs: a REPLICA IDENTITY FULL table with a dropped column (the old rows still hold it
/// on disk), updated and deleted after the drop; keyless where the destination allows it.
async fn tap_100_full_identity_after_a_dropped_column(dest: Dest) {
    let key = if dest == Dest::ClickHouse {
        " PRIMARY KEY"
    } else {
        ""
    };
    let mut c = Case::new(
        dest,
        "tap100",
        &format!(
            "CREATE TABLE dropped (a int{key}, b text, c int);
             ALTER TABLE dropped REPLICA IDENTITY FULL;
             INSERT INTO dropped VALUES (1, 'x', 1), (2, 'y', 2), (3, 'z', 3);"
        ),
        "[[tables]]\nsource = \"public.dropped\"\n",
    )
    .await;
    c.start().await;
    c.source(
        "ALTER TABLE dropped DROP COLUMN b;
         UPDATE dropped SET c = 10 WHERE a = 1;
         DELETE FROM dropped WHERE a = 2;
         INSERT INTO dropped VALUES (4, 4);",
    )
    .await;
    c.wait_same("dropped", &[Col::Text("a"), Col::Text("c")], "a")
        .await;
}
on_every_destination!(tap_100_full_identity_after_a_dropped_column);

/// 012_collation: a primary key under a nondeterministic (case-insensitive) collation: a change
/// found on the source by another spelling of the key changes the stored row.
async fn tap_012_collation(dest: Dest) {
    let mut c = Case::new(
        dest,
        "tap012",
        "CREATE COLLATION ctest_nondet (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE tab2 (a text COLLATE ctest_nondet PRIMARY KEY, b text);
         INSERT INTO tab2 VALUES ('foo', 'one'), ('Bar', 'two');",
        "[[tables]]\nsource = \"public.tab2\"\n",
    )
    .await;
    c.start().await;
    c.source(
        "UPDATE tab2 SET b = 'three' WHERE a = 'FOO';
         DELETE FROM tab2 WHERE a = 'bar';
         INSERT INTO tab2 VALUES ('BAR', 'four');",
    )
    .await;
    // 'BAR' sorts before 'foo' bytewise and case-insensitively alike.
    c.wait_same("tab2", &[Col::Text("a"), Col::Text("b")], "a")
        .await;
}
on_every_destination!(tap_012_collation);

/// 020_messages: logical decoding messages in and outside transactions are not table changes:
/// the rows around them arrive, the messages change nothing.
async fn tap_020_messages(dest: Dest) {
    let mut c = Case::new(
        dest,
        "tap020",
        "CREATE TABLE tab_test (a int PRIMARY KEY);",
        "[[tables]]\nsource = \"public.tab_test\"\n",
    )
    .await;
    c.start().await;
    c.source(
        "BEGIN; INSERT INTO tab_test VALUES (1);
         SELECT pg_logical_emit_message(true, 'pgoutput', 'a transactional message');
         INSERT INTO tab_test VALUES (2); COMMIT;
         SELECT pg_logical_emit_message(false, 'pgoutput', 'a non-transactional message');
         BEGIN; INSERT INTO tab_test VALUES (3);
         SELECT pg_logical_emit_message(true, 'pgoutput', 'rolled back'); ROLLBACK;
         INSERT INTO tab_test VALUES (4);",
    )
    .await;
    c.wait_same("tab_test", &[Col::Text("a")], "a").await;
}
on_every_destination!(tap_020_messages);

/// A database `LATIN1`-encoded (locale C) beside `db`, on the same server; connected to.
async fn latin1_twin(
    admin: &tokio_postgres::Client,
    db: &cdc::conninfo::ConnInfo,
) -> (cdc::conninfo::ConnInfo, tokio_postgres::Client) {
    let name = format!("{}_latin1", db.dbname);
    admin
        .batch_execute(&format!(
            "CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    let mut info = db.clone();
    info.dbname = name;
    let sql = cdc::pg::connect(&info).await.unwrap();
    let encoding: String = sql
        .query_one(
            "SELECT pg_encoding_to_char(encoding)::text FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(encoding, "LATIN1");
    (info, sql)
}

/// 005_encoding: databases of different encodings. Here the source is `LATIN1` (its
/// changes reach cdc converted to UTF-8, every destination's text) and so is the Postgres
/// destination (005's own case: UTF-8 converted into `LATIN1` on the way in). Compared
/// through UTF-8 connections on both sides, so equal text is equal characters.
async fn tap_005_encoding(dest: Dest) {
    let s = crate::harness::servers();
    let mut c = Case::new(
        dest,
        "tap005",
        "",
        "[[tables]]\nsource = \"public.test1\"\n",
    )
    .await;
    let (src, src_sql) = latin1_twin(&c.p.src_sql, &c.p.src).await;
    src_sql
        .batch_execute(
            "CREATE TABLE test1 (a int PRIMARY KEY, b text);
             INSERT INTO test1 VALUES (0, 'Mötley Crüe'), (10, 'Ærøskøbing');",
        )
        .await
        .unwrap();
    c.set_source(&s.source.url(&src.dbname));
    (c.p.src, c.p.src_sql) = (src, src_sql);
    if dest == Dest::Postgres {
        let (dst, dst_sql) = latin1_twin(&c.p.dst_sql, &c.p.dst).await;
        c.set_destination(&s.destination.url(&dst.dbname));
        (c.p.dst, c.p.dst_sql) = (dst, dst_sql);
    }
    c.start().await;
    c.source(
        "INSERT INTO test1 VALUES (1, 'Motörhead'), (2, 'façade ß ¿¡ ½ ÿ');
         UPDATE test1 SET b = b || ' - é' WHERE a = 10;
         UPDATE test1 SET b = 'Öl' WHERE a = 0;",
    )
    .await;
    c.wait_same("test1", &[Col::Text("a"), Col::Text("b")], "a")
        .await;
    assert_eq!(
        c.source_rows("test1", &[Col::Text("b")], "a").await[1],
        vec!["Motörhead".to_string()]
    );
}
on_every_destination!(tap_005_encoding);

/// 007_ddl, what of it applies: a publication that does not exist. cdc creates its own; if it
/// is dropped under a running pipeline, changes can no longer be decoded for it, and `cdc run`
/// must stop saying so (not retry forever, nor go on without the tables' changes, which is
/// what Postgres 18's walsender does after a warning).
async fn tap_007_publication_dropped(dest: Dest) {
    let mut c = Case::new(
        dest,
        "tap007",
        "CREATE TABLE test1 (a int PRIMARY KEY, b text); INSERT INTO test1 VALUES (1, 'one');",
        "[[tables]]\nsource = \"public.test1\"\n",
    )
    .await;
    c.start().await;
    c.source("INSERT INTO test1 VALUES (2, 'two')").await;
    c.wait_same("test1", &[Col::Text("a"), Col::Text("b")], "a")
        .await;
    let publication = c.p.slot.clone();
    c.source(&format!(
        "DROP PUBLICATION \"{publication}\"; INSERT INTO test1 VALUES (3, 'three')"
    ))
    .await;
    let status = c.wait_exit().await;
    let log = c.log_text();
    assert_eq!(status.code(), Some(65), "{log}");
    // Postgres up to 17 fails ("publication … does not exist"); 18 warns and skips it, which
    // cdc turns into the same stop.
    assert!(
        log.contains(&publication)
            && (log.contains("does not exist") || log.contains("cdc snapshot --force")),
        "{log}"
    );
}
on_every_destination!(tap_007_publication_dropped);
