//! Chunked copies (`snapshot.mode`, `cdc resync`): tables copied in key order, a chunk at a
//! time, while the stream runs, on every destination.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::conformance::{Case, Col, Dest};
use crate::harness::unique;

const COLS: &[Col<'static>] = &[Col::Text("id"), Col::Text("v"), Col::Md5("doc")];

/// A table of `rows` rows whose `doc` values are TOASTed (stored out of line, so updates that
/// leave them alone send them as "unchanged"), and a small second table.
fn ddl(rows: u32) -> String {
    format!(
        "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, doc text);
         ALTER TABLE big ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO big SELECT g, g, repeat(md5(g::text), 80) FROM generate_series(1, {rows}) g;
         CREATE TABLE small (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO small VALUES (1, 0);
         ANALYZE big;"
    )
}

fn tables(mode: &str, chunk_rows: u32) -> String {
    format!(
        "[[tables]]\nsource = \"public.big\"\n[[tables]]\nsource = \"public.small\"\n\
         [snapshot]\nmode = {mode:?}\nchunk_rows = {chunk_rows}\nchunked_above_bytes = 65536\n"
    )
}

async fn record(case: &Case, table: &str) -> Option<cdc::snapshot::chunked::Record> {
    let config = case.p.config();
    let dest = cdc::destination::open(&config).await.ok()?;
    let records = cdc::snapshot::chunked::records(&config, dest.as_ref())
        .await
        .ok()?;
    records.into_iter().find(|r| r.source.to_string() == table)
}

async fn wait_copied(case: &mut Case, table: &str) -> cdc::snapshot::chunked::Record {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(r) = record(case, table).await.filter(|r| r.progress.done) {
            return r;
        }
        assert!(case.alive(), "cdc run exited:\n{}", case.log_text());
        assert!(
            tokio::time::Instant::now() < deadline,
            "{table} was not copied in chunks:\n{}",
            case.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes to both tables until stopped: updates that keep `doc` (TOAST unchanged), updates of
/// `doc`, and (with `churn`) deletes and inserts of new keys.
fn load(case: &Case, churn: bool) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let info = case.p.src.clone();
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let c = cdc::pg::connect(&info).await.unwrap();
        let mut n = 0u64;
        while !flag.load(Ordering::Relaxed) {
            let mut sql = String::from(
                "BEGIN;
                 UPDATE big SET v = v + 1 WHERE id = (random() * 20000)::int + 1;
                 UPDATE big SET v = v + 1 WHERE id = (random() * 20000)::int + 1;
                 UPDATE big SET doc = md5(random()::text) WHERE id = (random() * 20000)::int + 1;
                 UPDATE small SET n = n + 1;",
            );
            if churn {
                sql.push_str(
                    "DELETE FROM big WHERE id = (random() * 20000)::int + 1;
                     INSERT INTO big SELECT max(id) + 1, 0, 'new' FROM big;",
                );
            }
            sql.push_str("COMMIT;");
            c.batch_execute(&sql).await.unwrap();
            n += 1;
        }
        n
    });
    (stop, task)
}

async fn stop_load(load: (Arc<AtomicBool>, tokio::task::JoinHandle<u64>)) -> u64 {
    load.0.store(true, Ordering::Relaxed);
    load.1.await.unwrap()
}

async fn copy_under_load(dest: Dest) {
    let mut case = Case::new(dest, "chunk_load", &ddl(20_000), &tables("auto", 1_500)).await;
    let load = load(&case, true);
    case.start().await;
    let copied = wait_copied(&mut case, "public.big").await;
    // Auto: the large table in chunks, the small one under the exported snapshot.
    assert!(record(&case, "public.small").await.is_none());
    assert!(copied.progress.chunks >= 13, "{copied:?}");
    let txns = stop_load(load).await;
    assert!(txns > 10, "the load ran throughout ({txns} transactions)");
    case.wait_same("big", COLS, "id").await;
    case.wait_same("small", &[Col::Text("id"), Col::Text("n")], "id")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_copy_under_load_ends_identical_on_postgres() {
    copy_under_load(Dest::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_copy_under_load_ends_identical_on_duckdb() {
    copy_under_load(Dest::DuckDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_copy_under_load_ends_identical_on_clickhouse() {
    copy_under_load(Dest::ClickHouse).await;
}

/// Let every pause of the chunker go from now on (`CDC_TEST_CHUNK_PAUSE`).
fn release_pauses(dir: &Path) -> Arc<AtomicBool> {
    release_pauses_at(dir, &["before_high", "after_chunk"])
}

/// Let the chunker's pauses at `points` go until the returned flag is set.
fn release_pauses_at(dir: &Path, points: &'static [&'static str]) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let (dir, flag) = (dir.to_owned(), stop.clone());
    std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            for point in points {
                if std::fs::remove_file(dir.join(point)).is_ok() {
                    std::fs::write(dir.join(format!("{point}.go")), b"").unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    stop
}

async fn paused_at(dir: &Path, point: &str, case: &mut Case) {
    let file = dir.join(point);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !file.exists() {
        assert!(case.alive(), "cdc run exited:\n{}", case.log_text());
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pause at {point}:\n{}",
            case.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Changes committed after a chunk was read and before its high watermark: the chunk's older
/// copy of those rows must not win. Row 5's update keeps its TOAST value unchanged (so the
/// stream alone cannot write it into a row the destination does not have yet), row 7 is
/// deleted, a new row is inserted, and rows of later chunks change too.
async fn changes_between_the_watermarks(dest: Dest) {
    let mut case = Case::new(dest, "chunk_window", &ddl(3_000), &tables("chunked", 1_000)).await;
    let dir = crate::harness::scratch().join(unique("pause"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_text = dir.display().to_string();
    case.start_env(&[("CDC_TEST_CHUNK_PAUSE", &dir_text)]).await;
    // `small` is chunked too (mode "chunked"); `big` comes first in the configuration.
    paused_at(&dir, "before_high", &mut case).await;
    case.source(
        "UPDATE big SET v = -5 WHERE id = 5;
         DELETE FROM big WHERE id = 7;
         INSERT INTO big VALUES (900000, 9, 'inserted in the window');
         UPDATE big SET v = -2500 WHERE id = 2500;
         UPDATE big SET id = 800000 WHERE id = 10;",
    )
    .await;
    let released = release_pauses(&dir);
    wait_copied(&mut case, "public.big").await;
    wait_copied(&mut case, "public.small").await;
    case.wait_same("big", COLS, "id").await;
    case.wait_same("small", &[Col::Text("id"), Col::Text("n")], "id")
        .await;
    released.store(true, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changed_between_the_watermarks_keeps_its_change_on_postgres() {
    changes_between_the_watermarks(Dest::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changed_between_the_watermarks_keeps_its_change_on_duckdb() {
    changes_between_the_watermarks(Dest::DuckDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changed_between_the_watermarks_keeps_its_change_on_clickhouse() {
    changes_between_the_watermarks(Dest::ClickHouse).await;
}

/// `kill -9` in the middle of a chunked copy: the next run resumes after the last chunk
/// recorded (every key is counted once: the rows recorded equal the table's), and ends
/// identical.
async fn killed_and_resumed(dest: Dest) {
    let mut case = Case::new(dest, "chunk_kill", &ddl(20_000), &tables("chunked", 500)).await;
    let load = load(&case, false);
    // After the chunk `kill_at` (10 % to 60 % of the copy) is recorded, let the chunker go on
    // and kill `cdc run` 0–300 ms later: anywhere in the next chunk's read, window or write.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let kill_at = 4 + u64::from(nanos % 21);
    let delay = Duration::from_millis(u64::from(nanos / 7 % 300));
    let dir = crate::harness::scratch().join(unique("pause"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_text = dir.display().to_string();
    case.start_env(&[("CDC_TEST_CHUNK_PAUSE", &dir_text)]).await;
    let released = release_pauses_at(&dir, &["before_high"]);
    loop {
        paused_at(&dir, "after_chunk", &mut case).await;
        let chunks = record(&case, "public.big")
            .await
            .map_or(0, |r| r.progress.chunks);
        std::fs::remove_file(dir.join("after_chunk")).unwrap();
        std::fs::write(dir.join("after_chunk.go"), b"").unwrap();
        if chunks >= kill_at {
            break;
        }
    }
    tokio::time::sleep(delay).await;
    let mut run = case.run.take().unwrap();
    run.0.kill().unwrap(); // SIGKILL
    run.0.wait().unwrap();
    released.store(true, Ordering::Relaxed);
    let before = record(&case, "public.big").await.unwrap();
    assert!(!before.progress.done);
    // `cdc status` shows how far the copy got.
    let bounds = cdc::status::Bounds {
        max_lag_bytes: u64::MAX,
        max_lag_seconds: u64::MAX,
        require_active: false,
    };
    let status = cdc::status::check(&case.p.config(), &bounds).await.unwrap();
    let big = status
        .tables
        .iter()
        .find(|t| t.source == "public.big")
        .unwrap();
    let copy = big.copy.as_ref().expect("a chunked copy in the status");
    assert_eq!(
        (copy.chunks_done, copy.done),
        (before.progress.chunks, false)
    );
    assert_eq!(copy.chunks_estimated, 40, "{copy:?}");
    let shown = status.to_string();
    assert!(
        shown.contains(&format!(
            "copying in chunks: {} of ~40 done",
            before.progress.chunks
        )),
        "{shown}"
    );
    case.start().await;
    let after = wait_copied(&mut case, "public.big").await;
    assert_eq!(
        after.rows, 20_000,
        "each row copied once across the runs: {after:?}"
    );
    assert_eq!(after.progress.chunks, 41, "{after:?}");
    stop_load(load).await;
    case.wait_same("big", COLS, "id").await;
    case.wait_same("small", &[Col::Text("id"), Col::Text("n")], "id")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_copy_killed_midway_resumes_after_its_last_chunk_on_postgres() {
    killed_and_resumed(Dest::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_copy_killed_midway_resumes_after_its_last_chunk_on_duckdb() {
    killed_and_resumed(Dest::DuckDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_copy_killed_midway_resumes_after_its_last_chunk_on_clickhouse() {
    killed_and_resumed(Dest::ClickHouse).await;
}

/// `cdc resync` from another process while `cdc run` streams: a destination table that lost
/// and changed rows is copied again and ends identical, under load.
async fn resync_while_streaming(dest: Dest) {
    let mut case = Case::new(
        dest,
        "chunk_resync",
        &ddl(5_000),
        &tables("exported", 1_000),
    )
    .await;
    case.start().await;
    case.wait_same("big", COLS, "id").await;
    // An accident on the destination.
    match dest {
        Dest::Postgres => case
            .p
            .dst_sql
            .batch_execute("DELETE FROM public.big WHERE id % 7 = 0; UPDATE public.big SET v = 0 WHERE id % 11 = 0")
            .await
            .unwrap(),
        _ => unreachable!("the accident is written on Postgres"),
    }
    let load = load(&case, true);
    let out = case
        .cdc(&["resync", "public.big", "--wait"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("public.big"), "{said}");
    stop_load(load).await;
    case.wait_same("big", COLS, "id").await;
    let r = record(&case, "public.big").await.unwrap();
    assert!(
        r.progress.done && r.progress.resync && r.progress.chunks >= 5,
        "{r:?}"
    );
    assert!(case.alive(), "{}", case.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_resync_copies_a_table_again_while_the_pipeline_streams() {
    resync_while_streaming(Dest::Postgres).await;
}

/// A `cdc resync` of a table whose chunked copy is under way starts that copy over (the request
/// is not overwritten by the copy's progress): every key is recorded once, from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_during_a_chunked_copy_starts_it_over() {
    let mut case = Case::new(
        Dest::Postgres,
        "chunk_again",
        &ddl(3_000),
        &tables("chunked", 1_000),
    )
    .await;
    let dir = crate::harness::scratch().join(unique("pause"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_text = dir.display().to_string();
    case.start_env(&[("CDC_TEST_CHUNK_PAUSE", &dir_text)]).await;
    paused_at(&dir, "before_high", &mut case).await;
    std::fs::remove_file(dir.join("before_high")).unwrap();
    std::fs::write(dir.join("before_high.go"), b"").unwrap();
    paused_at(&dir, "after_chunk", &mut case).await;
    assert_eq!(
        record(&case, "public.big").await.unwrap().progress.chunks,
        1
    );
    let out = case.cdc(&["resync", "public.big"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let released = release_pauses(&dir);
    let r = wait_copied(&mut case, "public.big").await;
    assert!(r.progress.resync, "the request was overwritten: {r:?}");
    assert_eq!((r.rows, r.progress.chunks), (3_000, 4), "{r:?}");
    assert!(case
        .log_text()
        .contains("a new resync of the table was requested"));
    case.wait_same("big", COLS, "id").await;
    released.store(true, Ordering::Relaxed);
}
