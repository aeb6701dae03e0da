//! The fault matrix: routine maintenance and trouble on either side while `cdc run` streams
//! under a write load. `cdc run` must stay up through every fault and the tables must end
//! identical.
//!
//! - the source restarted fast, smart and immediate (a crash), on every destination;
//! - the Postgres destination restarted fast, smart and immediate;
//! - the network to either side cut for 10 s (a proxy closes every connection and refuses new
//!   ones), then stalled for 10 s (nothing passes, nothing is closed), on every destination
//!   that has a network;
//! - ClickHouse answering what a loaded server or its load balancer answers (503, TOO_MANY_PARTS,
//!   MEMORY_LIMIT_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES, a reset before the answer, no answer
//!   at all until the statement timeout), and a
//!   definite error still stopping the run with the statement named.

use std::time::Duration;

use tokio::sync::watch;

use super::{Case, Col, Dest};
use crate::harness::proxy::{http_reply, Fault, Proxy};
use crate::harness::{pgbench, servers};
use cdc::conninfo::ConnInfo;
use cdc::local_pg::{LocalPostgres, Options};

const LOAD_DDL: &str = "
    CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL, doc text);
    ALTER TABLE acct ALTER COLUMN doc SET STORAGE EXTERNAL;
    INSERT INTO acct SELECT g, 0, repeat(md5(g::text), 100) FROM generate_series(1, 200) g;
    CREATE TABLE hist (id bigserial PRIMARY KEY, aid int NOT NULL, delta int NOT NULL);";

/// Our own tables, and pgbench's with a key (`pgbench_history` has none: it stays out).
const TABLES: &str = "[[tables]]\nsource = \"public.acct\"\n[[tables]]\nsource = \"public.hist\"\n\
    [[tables]]\nsource = \"public.pgbench_accounts\"\n[[tables]]\nsource = \"public.pgbench_branches\"\n\
    [[tables]]\nsource = \"public.pgbench_tellers\"\n";

/// pgbench's tables at scale 1 (100 000 accounts), before the snapshot.
async fn init_pgbench(c: &Case) {
    let mut init = pgbench(&c.p.src, &["-i", "-q", "-s", "1"]);
    init.stdout(std::process::Stdio::null());
    let status = tokio::task::spawn_blocking(move || init.status().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "pgbench -i failed");
}

/// pgbench's TPC-B-like transactions, two clients, a new connection per transaction (`-C`: a
/// smart shutdown waits for sessions to end), in short runs started again until `stop`, since
/// a run's clients give up when the server goes away. Returns the transactions processed.
fn pgbench_load(db: ConnInfo, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<u64> {
    tokio::task::spawn_blocking(move || {
        let mut done = 0u64;
        while !*stop.borrow() {
            let out = pgbench(&db, &["-n", "-C", "-c", "2", "-j", "1", "-T", "2"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            done += text
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                .unwrap_or(0);
            if !out.status.success() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        done
    })
}

/// The write load: pgbench (see [`pgbench_load`]) and, beside it, our own transactions on
/// `acct`/`hist` for what pgbench does not do (an account updated and a history row inserted;
/// every seventh transaction deletes and re-inserts an account, every fifth leaves its
/// TOASTed `doc` unchanged on purpose by updating another account's balance twice), one
/// connection per transaction so a smart shutdown can finish, retrying through outages. Runs
/// until `stop`; returns how many transactions committed, ours and pgbench's.
fn load(db: ConnInfo, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<(u64, u64)> {
    let bench = pgbench_load(db.clone(), stop.clone());
    let ours = own_load(db, stop);
    tokio::spawn(async move { (ours.await.unwrap(), bench.await.unwrap()) })
}

fn own_load(db: ConnInfo, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let (mut done, mut seed) = (0u64, 12345u64);
        while !*stop.borrow() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (a, b, delta) = (
                (seed >> 33) % 200 + 1,
                (seed >> 17) % 200 + 1,
                (seed >> 5) % 1000,
            );
            let mut sql = format!(
                "BEGIN; UPDATE acct SET bal = bal + {delta} WHERE id = {a};
                 INSERT INTO hist (aid, delta) VALUES ({a}, {delta});"
            );
            if done % 7 == 3 {
                sql.push_str(&format!(
                    "DELETE FROM acct WHERE id = {b};
                     INSERT INTO acct VALUES ({b}, {delta}, repeat(md5('{done}'), 100));"
                ));
            }
            if done % 5 == 1 {
                sql.push_str(&format!("UPDATE acct SET bal = bal - 1 WHERE id = {b};"));
            }
            sql.push_str("COMMIT;");
            let ok = match cdc::pg::connect(&db).await {
                Ok(c) => c.batch_execute(&sql).await.is_ok(),
                Err(_) => false,
            };
            if ok {
                done += 1;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        done
    })
}

const ACCT: &[Col<'static>] = &[Col::Text("id"), Col::Text("bal"), Col::Md5("doc")];
const HIST: &[Col<'static>] = &[Col::Text("id"), Col::Text("aid"), Col::Text("delta")];
const ACCOUNTS: &[Col<'static>] = &[Col::Text("aid"), Col::Text("bid"), Col::Text("abalance")];
const BRANCHES: &[Col<'static>] = &[Col::Text("bid"), Col::Text("bbalance")];
const TELLERS: &[Col<'static>] = &[Col::Text("tid"), Col::Text("bid"), Col::Text("tbalance")];

/// A server of the test's own (it is restarted), logical if it is a source.
async fn own_server(logical: bool) -> LocalPostgres {
    tokio::task::spawn_blocking(move || {
        LocalPostgres::start(&Options {
            logical,
            ..Default::default()
        })
        .unwrap()
    })
    .await
    .unwrap()
}

/// `url` with its port replaced (to go through a proxy).
fn via(url: &str, port: u16, proxy: u16) -> String {
    url.replace(&format!(":{port}/"), &format!(":{proxy}/"))
}

/// Point a ClickHouse case at its database through `proxy`, with URL `params` (`?…` or empty).
fn clickhouse_through(c: &mut Case, proxy: &Proxy, params: &str) {
    let url = format!(
        "clickhouse://default@127.0.0.1:{}/{}{params}",
        proxy.port(),
        c.ch_db.clone().unwrap()
    );
    c.set_destination(&url);
}

/// Fresh SQL connections for the case (the old ones died with a restart).
async fn reconnect(c: &mut Case) {
    c.p.src_sql = cdc::pg::connect(&c.p.src).await.unwrap();
    c.p.dst_sql = cdc::pg::connect(&c.p.dst).await.unwrap();
}

/// Stop the load, then wait for equal tables with `cdc run` still up.
async fn finish(
    c: &mut Case,
    stop: watch::Sender<bool>,
    load: tokio::task::JoinHandle<(u64, u64)>,
) {
    let _ = stop.send(true);
    let (ours, bench) = load.await.unwrap();
    assert!(ours > 20, "our load committed only {ours} transactions");
    assert!(bench > 20, "pgbench processed only {bench} transactions");
    c.wait_same("acct", ACCT, "id").await;
    c.wait_same("hist", HIST, "id").await;
    c.wait_same("pgbench_accounts", ACCOUNTS, "aid").await;
    c.wait_same("pgbench_branches", BRANCHES, "bid").await;
    c.wait_same("pgbench_tellers", TELLERS, "tid").await;
    assert!(c.alive(), "cdc run exited:\n{}", c.log_text());
}

async fn source_restarts_are_survived(dest: Dest) {
    let source = own_server(true).await;
    let mut c = Case::on(
        dest,
        &source,
        &servers().destination,
        "fault_src_restart",
        LOAD_DDL,
        TABLES,
    )
    .await;
    init_pgbench(&c).await;
    restart_under_load(&mut c, &source, Side::Source).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Under the write load, restart `server` (the case's source or destination) fast, smart and
/// immediate, waiting each time for `cdc run` to stream again; then compare the tables.
async fn restart_under_load(c: &mut Case, server: &LocalPostgres, side: Side) {
    c.start().await;
    let (stop, stopped) = watch::channel(false);
    let writer = load(c.p.src.clone(), stopped);
    for mode in ["fast", "smart", "immediate"] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if mode == "smart" {
            // A smart shutdown waits for every session: the test lets go of its own, for a
            // session on a shared server meanwhile.
            let elsewhere = match side {
                Side::Source => &servers().source,
                Side::Destination => &servers().destination,
            };
            let other = cdc::pg::connect(&elsewhere.conninfo("postgres"))
                .await
                .unwrap();
            match side {
                Side::Source => c.p.src_sql = other,
                Side::Destination => c.p.dst_sql = other,
            }
        }
        // pg_ctl blocks: run it off the runtime's threads.
        tokio::task::block_in_place(|| server.restart_server(mode, Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("restart -m {mode}: {e}\n{}", c.log_text()));
        reconnect(c).await;
        c.wait_streaming().await;
    }
    finish(c, stop, writer).await;
}

mod the_source_restarted_fast_smart_and_immediate {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        source_restarts_are_survived(Dest::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duckdb() {
        source_restarts_are_survived(Dest::DuckDb).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clickhouse() {
        source_restarts_are_survived(Dest::ClickHouse).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_destination_restarted_fast_smart_and_immediate() {
    let destination = own_server(false).await;
    let mut c = Case::on(
        Dest::Postgres,
        &servers().source,
        &destination,
        "fault_dst_restart",
        LOAD_DDL,
        TABLES,
    )
    .await;
    init_pgbench(&c).await;
    restart_under_load(&mut c, &destination, Side::Destination).await;
}

/// The network to the source (and, where there is one, to the destination) cut for 10 s, then
/// stalled for 10 s.
async fn network_cuts_are_survived(dest: Dest) {
    let s = servers();
    let to_source = Proxy::start(s.source.port()).await;
    let mut c = Case::new(dest, "fault_cut", LOAD_DDL, TABLES).await;
    init_pgbench(&c).await;
    c.set_source(&via(
        &s.source.url(&c.p.src.dbname),
        s.source.port(),
        to_source.port(),
    ));
    let to_dest = match dest {
        Dest::Postgres => {
            let proxy = Proxy::start(s.destination.port()).await;
            c.set_destination(&via(
                &s.destination.url(&c.p.dst.dbname),
                s.destination.port(),
                proxy.port(),
            ));
            Some(proxy)
        }
        Dest::ClickHouse => {
            let ch = crate::clickhouse::server();
            let proxy = Proxy::start(ch.port()).await;
            clickhouse_through(&mut c, &proxy, "");
            Some(proxy)
        }
        Dest::DuckDb => None,
    };
    c.start().await;
    let (stop, stopped) = watch::channel(false);
    let writer = load(c.p.src.clone(), stopped);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Cut: connections closed and refused.
    to_source.cut(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(11)).await;
    c.wait_streaming().await;
    if let Some(proxy) = &to_dest {
        proxy.cut(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    // Stalled: connections stay open and nothing passes.
    to_source.stall(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(11)).await;
    if let Some(proxy) = &to_dest {
        proxy.stall(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    finish(&mut c, stop, writer).await;
}

mod the_network_cut_for_ten_seconds {
    use super::*;
    #[tokio::test]
    async fn postgres() {
        network_cuts_are_survived(Dest::Postgres).await
    }
    #[tokio::test]
    async fn duckdb() {
        network_cuts_are_survived(Dest::DuckDb).await
    }
    #[tokio::test]
    async fn clickhouse() {
        network_cuts_are_survived(Dest::ClickHouse).await
    }
}

/// A ClickHouse error answer as the server sends it: the code in a header and in the text.
fn clickhouse_error(code: u32, name: &str, header: bool) -> Fault {
    let body =
        format!("Code: {code}. DB::Exception: injected by the test. ({name}) (version 26.9.1.1)");
    let code = code.to_string();
    let headers: Vec<(&str, &str)> = if header {
        vec![("X-ClickHouse-Exception-Code", code.as_str())]
    } else {
        vec![]
    };
    Fault::Reply(http_reply("500 Internal Server Error", &headers, &body))
}

#[tokio::test]
async fn clickhouse_under_pressure_is_retried_and_a_definite_error_still_stops_the_run() {
    let ch = crate::clickhouse::server();
    let proxy = Proxy::start(ch.port()).await;
    let mut c = Case::new(Dest::ClickHouse, "fault_ch_errors", LOAD_DDL, TABLES).await;
    init_pgbench(&c).await;
    // A statement timeout short enough for the test, long enough for the snapshot's INSERTs.
    clickhouse_through(&mut c, &proxy, "?timeout=10");
    c.start().await;
    let (stop, stopped) = watch::channel(false);
    let writer = load(c.p.src.clone(), stopped);
    let faults = [
        Fault::Hang,
        Fault::Reply(http_reply(
            "503 Service Unavailable",
            &[],
            "no healthy upstream",
        )),
        clickhouse_error(252, "TOO_MANY_PARTS", true),
        clickhouse_error(241, "MEMORY_LIMIT_EXCEEDED", false),
        clickhouse_error(202, "TOO_MANY_SIMULTANEOUS_QUERIES", true),
        Fault::Reset,
        clickhouse_error(252, "TOO_MANY_PARTS", true),
    ];
    let n = faults.len();
    for fault in faults {
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.answer([fault]);
        crate::harness::wait_for(
            "the fault to be served",
            Duration::from_secs(30),
            || async { proxy.faults_pending() == 0 },
        )
        .await;
        assert!(c.alive(), "cdc run exited:\n{}", c.log_text());
    }
    assert_eq!(proxy.faults_served(), n);
    // The statement that got no answer was given up after the URL's timeout, and retried.
    assert!(
        c.log_text()
            .contains("timed out after 10s while ClickHouse ran"),
        "{}",
        c.log_text()
    );
    finish(&mut c, stop, writer).await;
    // A definite error (an unknown column) is not retried: the run stops, naming the statement.
    proxy.answer([clickhouse_error(47, "UNKNOWN_IDENTIFIER", true)]);
    c.source("INSERT INTO hist (aid, delta) VALUES (1, 1)")
        .await;
    let status = c.wait_exit().await;
    let log = c.log_text();
    assert_eq!(status.code(), Some(65), "{log}");
    assert!(
        log.contains("ClickHouse refused") && log.contains("UNKNOWN_IDENTIFIER"),
        "{log}"
    );
}

/// ClickHouse has no transactions: the snapshot ends with two writes (the position, then
/// "complete"). Lost between them — here the position's INSERT is reset, as a server killed at
/// that moment leaves it — the pipeline must not count as complete without a position, or
/// `cdc run` could only refuse ("applied only up to 0/0"). Taken again instead, it streams.
#[tokio::test]
async fn clickhouse_lost_while_the_snapshot_records_its_end() {
    let ch = crate::clickhouse::server();
    let proxy = Proxy::start(ch.port()).await;
    let mut c = Case::new(Dest::ClickHouse, "fault_ch_snap_end", LOAD_DDL, TABLES).await;
    init_pgbench(&c).await;
    clickhouse_through(&mut c, &proxy, "");
    proxy.answer_when("INSERT INTO `cdc`.`positions`", Fault::Reset);
    // Off the runtime's thread: the proxy runs on it.
    let mut snapshot = c.cdc(&["snapshot"]);
    let out = tokio::task::spawn_blocking(move || snapshot.output().unwrap())
        .await
        .unwrap();
    assert!(!proxy.when_pending(), "the position was never written");
    assert!(
        !out.status.success(),
        "the snapshot reported success without its position"
    );
    c.start().await;
    c.source(
        "UPDATE acct SET bal = bal + 1 WHERE id <= 10; INSERT INTO hist (aid, delta) VALUES (1, 1)",
    )
    .await;
    c.wait_same("acct", ACCT, "id").await;
    c.wait_same("hist", HIST, "id").await;
    assert!(c.alive(), "cdc run exited:\n{}", c.log_text());
}
