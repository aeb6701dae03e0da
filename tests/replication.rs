//! The replication connection against a real server: authentication, slots, exported
//! snapshots, and every pgoutput message decoded from a live stream.

use std::time::Duration;

use bytes::Bytes;
use cdc::conninfo::{ConnInfo, Secret};
use cdc::decode::{Datum, LogicalMessage, OldTuple, PgOutputDecoder, ReplicaIdentity};
use cdc::lsn::Lsn;
use cdc::source::postgres::replication::{
    PgOutputOptions, ReplicationClient, ReplicationEvent, ReplicationStream, StandbyStatus,
};

use crate::decoder_fixtures as fixtures;
use crate::harness::{self, servers, source_db, source_with, wait_for};

/// Read XLogData payloads until `stop` says the last one ends the capture.
pub async fn capture(
    stream: &mut ReplicationStream,
    stop: impl Fn(&LogicalMessage) -> bool,
) -> Vec<Bytes> {
    let mut decoder = PgOutputDecoder::new();
    let mut out = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("replication stream went silent")
            .expect("replication stream failed")
            .expect("replication stream ended");
        if let ReplicationEvent::XLogData { data, .. } = event {
            let msg = decoder.decode(data.clone()).expect("decode live message");
            out.push(data);
            if stop(&msg) {
                return out;
            }
        }
    }
}

/// A slot and a started stream on `db` for `publication`.
pub async fn start_stream(
    db: &ConnInfo,
    slot: &str,
    options: &PgOutputOptions,
) -> ReplicationStream {
    let mut repl = ReplicationClient::connect(db)
        .await
        .expect("replication connect");
    repl.create_logical_slot(slot, false)
        .await
        .expect("create slot");
    repl.start_logical_replication(slot, Lsn::INVALID, options, Duration::from_secs(30))
        .await
        .expect("start replication")
}

async fn run_all(sql: &tokio_postgres::Client, statements: &[&str]) {
    for s in statements {
        sql.batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// The options `cdc run` would use against `db`'s server (its version decides the protocol).
async fn options_for(db: &ConnInfo, publication: &str) -> PgOutputOptions {
    PgOutputOptions::for_server(server_version(db).await, publication)
}

async fn server_version(db: &ConnInfo) -> u32 {
    let sql = cdc::pg::connect(db).await.unwrap();
    let v: i32 = sql
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    v as u32
}

fn is_commit(m: &LogicalMessage) -> bool {
    matches!(m, LogicalMessage::Commit(_))
}

#[tokio::test]
async fn scram_login_streams_every_basic_change_kind() {
    let (db, sql) = source_with("basic", fixtures::BASIC_SETUP).await;
    let mut stream = start_stream(&db, "basic", &options_for(&db, "pub_basic").await).await;
    sql.batch_execute(fixtures::BASIC_CHANGES).await.unwrap();
    let raw = capture(&mut stream, is_commit).await;
    fixtures::maybe_write("basic", &raw);
    fixtures::check_basic(&fixtures::without_spurious_resends(fixtures::decode_all(
        &raw,
    )));
}

#[tokio::test]
async fn origin_messages_are_decoded() {
    let (db, sql) = source_with(
        "origin",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t;",
    )
    .await;
    let mut stream = start_stream(&db, "origin", &options_for(&db, "p").await).await;
    run_all(&sql, fixtures::ORIGIN_CHANGES).await;
    // Before Postgres 15 the walsender also sends transactions without published changes
    // (here: creating the origin) as an empty Begin/Commit: skip those.
    let raw = loop {
        let raw = capture(&mut stream, is_commit).await;
        if fixtures::decode_all(&raw).len() > 2 {
            break raw;
        }
    };
    fixtures::maybe_write("origin", &raw);
    fixtures::check_origin(&fixtures::decode_all(&raw));
}

#[tokio::test]
async fn protocol_2_streams_large_transactions_and_messages() {
    let (db, sql) = source_with(
        "streamed",
        "CREATE TABLE big (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE big;",
    )
    .await;
    let mut options = options_for(&db, "p").await;
    options.proto_version = 2;
    options.messages = true;
    let mut stream = start_stream(&db, "streamed", &options).await;
    run_all(&sql, fixtures::STREAMED_CHANGES).await;
    let raw = capture(&mut stream, |m| {
        matches!(m, LogicalMessage::StreamCommit(_))
    })
    .await;
    fixtures::maybe_write("streamed", &raw);
    fixtures::check_streamed(&fixtures::decode_all(&raw));
}

#[tokio::test]
async fn two_phase_transactions_are_decoded() {
    let (db, sql) = source_with(
        "twophase",
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t;",
    )
    .await;
    if server_version(&db).await < 150000 {
        eprintln!("two-phase decoding (pgoutput protocol 3) needs Postgres 15+: not applicable");
        return;
    }
    let mut repl = ReplicationClient::connect(&db).await.unwrap();
    repl.simple_query(
        "CREATE_REPLICATION_SLOT \"tp\" LOGICAL pgoutput (TWO_PHASE true, SNAPSHOT 'nothing')",
    )
    .await
    .unwrap();
    let mut options = PgOutputOptions::for_server(150000, "p");
    assert_eq!(options.proto_version, 3);
    options.two_phase = true;
    let mut stream = repl
        .start_logical_replication("tp", Lsn::INVALID, &options, Duration::from_secs(30))
        .await
        .unwrap();
    // The rollback waits until the big transaction's prepare has been decoded: Postgres 17+
    // discards the changes of a transaction it finds already aborted instead of streaming them,
    // so rolling back right away makes what is sent depend on how far the decoder had got.
    let (prepare, rollback) = fixtures::TWO_PHASE_CHANGES.split_at(3);
    run_all(&sql, prepare).await;
    let mut raw = capture(
        &mut stream,
        |m| matches!(m, LogicalMessage::StreamPrepare(p) if p.gid == "tp_big"),
    )
    .await;
    run_all(&sql, rollback).await;
    raw.extend(
        capture(
            &mut stream,
            |m| matches!(m, LogicalMessage::RollbackPrepared(r) if r.gid == "tp_big"),
        )
        .await,
    );
    fixtures::maybe_write("two_phase", &raw);
    fixtures::check_two_phase(&fixtures::decode_all(&raw));
}

#[tokio::test]
async fn confirmed_flush_follows_the_status_we_send() {
    let (db, sql) = source_with(
        "confirm",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t;",
    )
    .await;
    let mut stream = start_stream(&db, "confirm", &options_for(&db, "p").await).await;
    sql.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    let raw = capture(&mut stream, is_commit).await;
    let LogicalMessage::Commit(commit) = PgOutputDecoder::new()
        .decode(raw.last().unwrap().clone())
        .unwrap()
    else {
        panic!("last message is not a commit")
    };
    let confirmed = || async {
        let row = sql
            .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'confirm'", &[])
            .await
            .unwrap();
        row.get::<_, String>(0).parse::<Lsn>().unwrap()
    };
    assert!(
        confirmed().await < commit.end_lsn,
        "nothing confirmed before we say so"
    );
    let status = StandbyStatus {
        written: commit.end_lsn,
        flushed: commit.end_lsn,
        applied: commit.end_lsn,
    };
    stream.send_status(status, false).await.unwrap();
    wait_for(
        "confirmed_flush_lsn to reach the commit end",
        Duration::from_secs(10),
        || async { confirmed().await >= commit.end_lsn },
    )
    .await;
}

#[tokio::test]
async fn an_idle_stream_stays_alive_past_its_read_timeout() {
    let (db, _sql) = source_with(
        "idle",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t;",
    )
    .await;
    let mut repl = ReplicationClient::connect(&db).await.unwrap();
    repl.create_logical_slot("idle", false).await.unwrap();
    let mut stream = repl
        .start_logical_replication(
            "idle",
            Lsn::INVALID,
            &options_for(&db, "p").await,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    // The server (wal_sender_timeout 60s) sends nothing on its own within 5 s; the stream's
    // probe must make it answer, so no timeout error surfaces.
    let started = tokio::time::Instant::now();
    let mut keepalives = 0;
    while started.elapsed() < Duration::from_secs(5) {
        match stream
            .next()
            .await
            .expect("stream must not time out while the server is alive")
        {
            Some(ReplicationEvent::Keepalive { .. }) => keepalives += 1,
            // Before Postgres 15 pgoutput sends a BEGIN/COMMIT pair for every transaction of
            // the database, even one that touched no published table (autovacuum's ANALYZE
            // writing pg_statistic, seen on 14 in CI). Those are not the stream timing out.
            Some(ReplicationEvent::XLogData { data, .. })
                if matches!(data.first(), Some(b'B' | b'C')) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        keepalives >= 2,
        "expected the probe to draw keepalives, got {keepalives}"
    );
}

#[tokio::test]
async fn exported_snapshot_sees_exactly_the_data_before_the_consistent_point() {
    let (db, sql) = source_with(
        "snap",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
    )
    .await;
    let mut repl = ReplicationClient::connect(&db).await.unwrap();
    let slot = repl.create_logical_slot("snap", true).await.unwrap();
    assert_eq!(slot.slot_name, "snap");
    assert!(!slot.consistent_point.is_invalid());
    let name = slot.snapshot_name.expect("an exported snapshot");
    sql.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();

    let mut reader = cdc::pg::connect(&db).await.unwrap();
    let tx = reader
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{name}'"))
        .await
        .unwrap();
    let n: i64 = tx
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 2,
        "the row inserted after the slot must not be visible in its snapshot"
    );
    tx.commit().await.unwrap();

    // Any command on the replication session ends the export.
    repl.identify_system().await.unwrap();
    let tx = reader
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    let err = tx
        .batch_execute(&format!("SET TRANSACTION SNAPSHOT '{name}'"))
        .await
        .unwrap_err();
    let msg = err
        .as_db_error()
        .expect("a server error")
        .message()
        .to_owned();
    assert!(msg.contains("snapshot"), "{msg}");
}

#[tokio::test]
async fn identify_system_and_drop_slot() {
    let db = source_db("ident").await;
    let mut repl = ReplicationClient::connect(&db).await.unwrap();
    assert!(repl.server_version_num() >= 100000);
    let id = repl.identify_system().await.unwrap();
    assert_eq!(id.dbname.as_deref(), Some(db.dbname.as_str()));
    assert!(id.timeline >= 1);
    repl.create_logical_slot("ident", false).await.unwrap();
    repl.drop_slot("ident", false).await.unwrap();
    let err = repl.drop_slot("ident", false).await.unwrap_err();
    assert_eq!(
        err.sqlstate(),
        Some("42704"),
        "dropping a missing slot: {err}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn slot_names_are_quoted_identifiers() {
    let db = source_db("quoted").await;
    let mut repl = ReplicationClient::connect(&db).await.unwrap();
    // A name that would be an injection if spliced unquoted is simply an invalid slot name.
    let err = repl
        .create_logical_slot("x\" LOGICAL pgoutput; --", false)
        .await
        .unwrap_err();
    assert!(matches!(err.sqlstate(), Some("42601" | "42602")), "{err}");
    let rows = repl
        .simple_query(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
        )
        .await
        .unwrap();
    assert_eq!(
        rows[0][0].as_deref(),
        Some("0"),
        "no slot may have been created"
    );
}

#[tokio::test]
async fn md5_login_works_and_bad_passwords_are_definite_errors() {
    let db = source_db("md5").await;
    let sql = cdc::pg::connect(&db).await.unwrap();
    sql.batch_execute(&format!(
        "SET password_encryption = 'md5'; CREATE ROLE {} LOGIN REPLICATION PASSWORD '{}'",
        harness::MD5_USER,
        harness::MD5_PASSWORD
    ))
    .await
    .unwrap_or_else(|e| assert!(e.to_string().contains("already exists"), "{e}"));
    let mut info = db.clone();
    info.user = harness::MD5_USER.into();
    info.password = Some(Secret::new(harness::MD5_PASSWORD));
    let mut repl = ReplicationClient::connect(&info).await.expect("md5 login");
    repl.identify_system().await.unwrap();

    let mut bad = db.clone();
    bad.password = Some(Secret::new("wrong"));
    let err = ReplicationClient::connect(&bad)
        .await
        .err()
        .expect("wrong password must fail");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err:#}");
    assert!(!err.is_transient());
    assert!(
        !format!("{err:?}").contains("wrong"),
        "the password must not appear in errors"
    );

    let mut none = db.clone();
    none.password = None;
    let err = ReplicationClient::connect(&none)
        .await
        .err()
        .expect("no password must fail");
    assert!(err.to_string().contains("none is configured"), "{err}");
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_transient() {
    let mut info = servers().source.conninfo("postgres");
    info.port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn replica_identity_full_sends_the_old_row() {
    let (db, sql) = source_with(
        "full",
        "CREATE TABLE nokey (a int, b text); ALTER TABLE nokey REPLICA IDENTITY FULL; \
         CREATE PUBLICATION p FOR TABLE nokey; INSERT INTO nokey VALUES (1, 'x');",
    )
    .await;
    let mut stream = start_stream(&db, "full", &options_for(&db, "p").await).await;
    sql.batch_execute("UPDATE nokey SET b = 'y'").await.unwrap();
    let msgs = fixtures::decode_all(&capture(&mut stream, is_commit).await);
    let rel = msgs
        .iter()
        .find_map(|m| {
            if let LogicalMessage::Relation(r) = m {
                Some(r)
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(rel.replica_identity, ReplicaIdentity::Full);
    let upd = msgs
        .iter()
        .find_map(|m| {
            if let LogicalMessage::Update(u) = m {
                Some(u)
            } else {
                None
            }
        })
        .unwrap();
    let Some(OldTuple::Full(old)) = &upd.old else {
        panic!("expected the full old row: {upd:?}")
    };
    assert_eq!(old.0[1], Datum::Text(Bytes::from_static(b"x")));
    assert_eq!(upd.new.0[1], Datum::Text(Bytes::from_static(b"y")));
}
