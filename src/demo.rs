//! `cdc demo`: the whole pipeline with nothing installed but Postgres.
//!
//! Starts a throwaway source (`wal_level = logical`) and destination from the local binaries
//! (or, with `--destination duckdb`, a DuckDB file in a temporary directory), creates a sample
//! `orders` table with some rows, and runs `cdc run`: the snapshot copies the rows, then a write
//! load (inserts, updates, deletes) streams across while the demo prints both sides each
//! second. At the end it compares the two tables row by row and prints what `cdc status`
//! reports for the pipeline, still running. Everything is removed afterwards.
//!
//! With DuckDB, `cdc run` is a child process and the demo reads the file read-only between its
//! batches, as an analyst's process would (DuckDB lets one process write or several read).

use std::time::{Duration, Instant};

use crate::cli::DemoDestination;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::local_pg::{LocalPostgres, Options};

const SETUP: &str = "
    CREATE TABLE public.orders (
        id bigserial PRIMARY KEY,
        customer text NOT NULL,
        amount numeric(10,2) NOT NULL,
        status text NOT NULL DEFAULT 'new',
        created_at timestamptz NOT NULL DEFAULT now());
    INSERT INTO orders (customer, amount)
        SELECT 'customer ' || g % 100, round((g % 500)::numeric + 0.99, 2) FROM generate_series(1, 10000) g;";

/// One transaction of the sample load: a few inserts, an update, sometimes a delete.
const WRITE: &str = "
    BEGIN;
    INSERT INTO orders (customer, amount) SELECT 'customer ' || (random() * 100)::int, round((random() * 500)::numeric, 2) FROM generate_series(1, 5);
    UPDATE orders SET status = 'paid' WHERE id = (SELECT max(id) - 3 FROM orders);
    DELETE FROM orders WHERE id = (SELECT min(id) FROM orders) AND random() < 0.3;
    COMMIT;";

const DIGEST: &str = "SELECT count(*), md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o";

/// Every row, in the same text on both kinds of destination: id, customer, amount, status and
/// the creation time in microseconds.
const ROWS_PG: &str =
    "SELECT id::text || '|' || customer || '|' || amount::text || '|' || status || '|' ||
    (extract(epoch FROM created_at) * 1000000)::bigint::text FROM public.orders ORDER BY id";
const ROWS_DUCKDB: &str =
    "SELECT id::VARCHAR || '|' || customer || '|' || amount::VARCHAR || '|' || status || '|' ||
    epoch_us(created_at)::VARCHAR FROM public.orders ORDER BY id";

async fn start(options: Options) -> Result<LocalPostgres> {
    tokio::task::spawn_blocking(move || LocalPostgres::start(&options))
        .await
        .map_err(Error::stopped("demo server start"))?
        .map_err(|e| Error::definite(format!("cannot start a local Postgres for the demo: {e}")))
}

/// Run the demo with `load` of writes.
pub async fn run(load: Duration, destination: DemoDestination) -> Result<()> {
    if destination == DemoDestination::Duckdb {
        return run_duckdb(load).await;
    }
    println!("Starting a throwaway source (wal_level=logical) and destination Postgres from the local binaries...");
    let source = start_source().await?;
    let src = crate::pg::connect(&source.conninfo("postgres")).await?;
    let destination = start(Options::default()).await?;
    let dst = crate::pg::connect(&destination.conninfo("postgres")).await?;
    println!(
        "Source on port {} has public.orders with 10000 rows; destination on port {} is empty.",
        source.port(),
        destination.port()
    );

    let (_, config) = config(&source, &destination.url("postgres"))?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let pipeline = {
        let config = config.clone();
        tokio::spawn(async move { crate::run::run(&config, shutdown).await })
    };

    let writer = write_load(&source, load).await?;

    println!("\n  time  source rows  destination rows  destination applied  lag (bytes of WAL)");
    let started = Instant::now();
    let mut writes_done = false;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if pipeline.is_finished() {
            return match pipeline.await {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::definite("the pipeline stopped unexpectedly".into())),
            };
        }
        let src_rows: i64 = src
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .map_err(Error::pg("demo"))?
            .get(0);
        let state = dst
            .query_opt(
                "SELECT (SELECT count(*) FROM public.orders), applied_lsn::text,
                        pg_wal_lsn_diff($1::text::pg_lsn, applied_lsn)::int8
                   FROM cdc.pipeline WHERE slot = 'cdc_demo' AND snapshot_completed_at IS NOT NULL",
                &[&current_lsn(&src).await?],
            )
            .await
            .ok()
            .flatten();
        match &state {
            Some(r) => println!(
                "{:>5.1}s  {src_rows:>11}  {:>16}  {:>19}  {:>18}",
                started.elapsed().as_secs_f64(),
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, i64>(2)
            ),
            None => println!(
                "{:>5.1}s  {src_rows:>11}  (snapshot in progress)",
                started.elapsed().as_secs_f64()
            ),
        }
        if !writes_done && writer.is_finished() {
            writes_done = true;
        }
        if writes_done {
            let (a, b) = (
                src.query_one(DIGEST, &[]).await,
                dst.query_one(DIGEST, &[]).await,
            );
            if let (Ok(a), Ok(b)) = (a, b) {
                if a.get::<_, i64>(0) == b.get::<_, i64>(0)
                    && a.get::<_, Option<String>>(1) == b.get::<_, Option<String>>(1)
                {
                    break;
                }
            }
        }
    }
    let transactions = finish_load(writer, &config).await?;
    let _ = stop.send(true);
    pipeline.await.map_err(Error::stopped("pipeline"))??;
    println!(
        "\nThe load wrote {transactions} transactions; the destination caught up and its {} rows are identical \
         to the source's (compared row by row).",
        src.query_one("SELECT count(*) FROM orders", &[]).await.map_err(Error::pg("demo"))?.get::<_, i64>(0)
    );
    println!("Use it on your databases: write a config.toml (see the README) and run `cdc run`.");
    Ok(())
}

/// The source with its sample table.
async fn start_source() -> Result<LocalPostgres> {
    let source = start(Options {
        logical: true,
        ..Default::default()
    })
    .await?;
    let src = crate::pg::connect(&source.conninfo("postgres")).await?;
    src.batch_execute(SETUP)
        .await
        .map_err(Error::pg("creating the demo table"))?;
    Ok(source)
}

/// The demo's configuration for a source and a destination URL.
fn config(source: &LocalPostgres, destination_url: &str) -> Result<(String, Config)> {
    let text = format!(
        "[source]\nurl = {:?}\nslot = \"cdc_demo\"\npublication = \"cdc_demo\"\n[destination]\nurl = {destination_url:?}\n\
         [[tables]]\nsource = \"public.orders\"\n[apply]\nbatch_max_wait_ms = 100\n[status]\nlisten = \"127.0.0.1:0\"\n",
        source.url("postgres"),
    );
    let config = Config::from_toml(
        &text,
        std::path::Path::new("demo"),
        &[] as &[(&str, &str); 0],
    )
    .map_err(|e| Error::definite(format!("demo config: {e}")))?;
    Ok((text, config))
}

/// The sample write load, for `load`; returns the number of transactions.
async fn write_load(
    source: &LocalPostgres,
    load: Duration,
) -> Result<tokio::task::JoinHandle<Result<u64>>> {
    let writer_src = crate::pg::connect(&source.conninfo("postgres")).await?;
    Ok(tokio::spawn(async move {
        let deadline = Instant::now() + load;
        let mut n = 0u64;
        while Instant::now() < deadline {
            writer_src
                .batch_execute(WRITE)
                .await
                .map_err(Error::pg("demo write"))?;
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<u64, Error>(n)
    }))
}

/// Wait for the write load to end, then print what `cdc status` says of the running pipeline
/// (what an operator or a health check sees). Returns the number of transactions written.
async fn finish_load(writer: tokio::task::JoinHandle<Result<u64>>, config: &Config) -> Result<u64> {
    let transactions = writer.await.map_err(Error::stopped("demo writer"))??;
    let bounds = crate::status::Bounds {
        max_lag_bytes: config.status.max_lag_bytes,
        max_lag_seconds: config.status.max_lag_seconds,
        require_active: true,
    };
    let report = crate::status::check(config, &bounds).await?;
    println!(
        "\n`cdc status` (exit code {} for scripts and health checks):\n{report}",
        report.exit_code()
    );
    Ok(transactions)
}

/// Rows of the DuckDB file's `orders`, read-only (waiting while `cdc run` holds the file);
/// `None` until the table exists.
async fn duckdb_rows(path: &std::path::Path) -> Result<Option<Vec<String>>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if !path.exists() {
            return Ok(None);
        }
        let conn = loop {
            let config = duckdb::Config::default()
                .access_mode(duckdb::AccessMode::ReadOnly)
                .map_err(Error::duck("demo"))?;
            match duckdb::Connection::open_with_flags(&path, config) {
                Ok(c) => break c,
                Err(e) if crate::destination::duckdb::is_lock_conflict(&e) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(Error::duck("reading the demo's DuckDB file")(e)),
            }
        };
        let Ok(mut stmt) = conn.prepare(ROWS_DUCKDB) else {
            return Ok(None);
        };
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<duckdb::Result<Vec<_>>>())
            .map_err(Error::duck("reading the demo's DuckDB file"))?;
        Ok(Some(rows))
    })
    .await
    .map_err(Error::stopped("demo reader"))?
}

async fn pg_rows(client: &tokio_postgres::Client) -> Result<Vec<String>> {
    Ok(client
        .query(ROWS_PG, &[])
        .await
        .map_err(Error::pg("demo"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The demo into a DuckDB file, with `cdc run` as a child process.
async fn run_duckdb(load: Duration) -> Result<()> {
    println!("Starting a throwaway source Postgres (wal_level=logical) from the local binaries...");
    let source = start_source().await?;
    let src = crate::pg::connect(&source.conninfo("postgres")).await?;
    let dir = std::env::temp_dir().join(format!("cdc-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(Error::io("creating the demo directory"))?;
    let _cleanup = RemoveDir(dir.clone());
    let file = dir.join("analytics.duckdb");
    println!(
        "Source on port {} has public.orders with 10000 rows; the destination is the DuckDB file {}.",
        source.port(),
        file.display()
    );
    let (text, config) = config(&source, &format!("duckdb://{}", file.display()))?;
    let config_file = dir.join("config.toml");
    std::fs::write(&config_file, text).map_err(Error::io("writing the demo config"))?;
    let exe = std::env::current_exe().map_err(Error::io("finding the cdc binary"))?;
    let mut child = KillOnDrop(
        tokio::process::Command::new(exe)
            .arg("--config")
            .arg(&config_file)
            .args(["--log-format", "human", "run"])
            .env("CDC_LOG", "warn")
            .spawn()
            .map_err(Error::io("starting cdc run"))?,
    );
    let writer = write_load(&source, load).await?;
    println!("\n  time  source rows  rows in the DuckDB file (read by this process while cdc run streams)");
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(status) = child.0.try_wait().map_err(Error::io("watching cdc run"))? {
            return Err(Error::definite(format!(
                "cdc run stopped unexpectedly ({status})"
            )));
        }
        let expected = pg_rows(&src).await?;
        let got = duckdb_rows(&file).await?;
        match &got {
            Some(rows) => println!(
                "{:>5.1}s  {:>11}  {:>16}",
                started.elapsed().as_secs_f64(),
                expected.len(),
                rows.len()
            ),
            None => println!(
                "{:>5.1}s  {:>11}  (snapshot in progress)",
                started.elapsed().as_secs_f64(),
                expected.len()
            ),
        }
        if writer.is_finished() && got.as_ref() == Some(&expected) {
            break;
        }
    }
    let transactions = finish_load(writer, &config).await?;
    let _ = child.0.start_kill();
    let _ = child.0.wait().await;
    println!(
        "\nThe load wrote {transactions} transactions; the DuckDB file caught up and its {} rows are identical \
         to the source's (compared row by row).",
        pg_rows(&src).await?.len()
    );
    println!("Use it on your databases: set destination.url = \"duckdb:///path/to/file.duckdb\" and run `cdc run`.");
    Ok(())
}

struct KillOnDrop(tokio::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn current_lsn(src: &tokio_postgres::Client) -> Result<String> {
    Ok(src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(Error::pg("demo"))?
        .get(0))
}
