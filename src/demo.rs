//! `cdc demo`: the whole pipeline with nothing installed but Postgres.
//!
//! Starts a throwaway source (`wal_level = logical`) and destination from the local binaries,
//! creates a sample `orders` table with some rows, and runs `cdc run` in this process: the
//! snapshot copies the rows, then a write load (inserts, updates, deletes) streams across while
//! the demo prints both sides each second. At the end it compares the two tables row by row
//! and prints what `cdc status` reports for the pipeline, still running. Both servers are
//! removed afterwards.

use std::time::{Duration, Instant};

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

async fn start(options: Options) -> Result<LocalPostgres> {
    tokio::task::spawn_blocking(move || LocalPostgres::start(&options))
        .await
        .map_err(|e| Error::Definite(format!("demo server start panicked: {e}")))?
        .map_err(|e| Error::Definite(format!("cannot start a local Postgres for the demo: {e}")))
}

/// Run the demo with `load` of writes.
pub async fn run(load: Duration) -> Result<()> {
    println!("Starting a throwaway source (wal_level=logical) and destination Postgres from the local binaries...");
    let source = start(Options {
        logical: true,
        ..Default::default()
    })
    .await?;
    let destination = start(Options::default()).await?;
    let src = crate::pg::connect(&source.conninfo("postgres")).await?;
    let dst = crate::pg::connect(&destination.conninfo("postgres")).await?;
    src.batch_execute(SETUP)
        .await
        .map_err(Error::pg("creating the demo table"))?;
    println!(
        "Source on port {} has public.orders with 10000 rows; destination on port {} is empty.",
        source.port(),
        destination.port()
    );

    let text = format!(
        "[source]\nurl = {:?}\nslot = \"cdc_demo\"\npublication = \"cdc_demo\"\n[destination]\nurl = {:?}\n\
         [[tables]]\nsource = \"public.orders\"\n[apply]\nbatch_max_wait_ms = 100\n[status]\nlisten = \"127.0.0.1:0\"\n",
        source.url("postgres"),
        destination.url("postgres")
    );
    let config = Config::from_toml(
        &text,
        std::path::Path::new("demo"),
        &[] as &[(&str, &str); 0],
    )
    .map_err(|e| Error::Definite(format!("demo config: {e}")))?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let pipeline = {
        let config = config.clone();
        tokio::spawn(async move { crate::run::run(&config, shutdown).await })
    };

    let writer_src = crate::pg::connect(&source.conninfo("postgres")).await?;
    let writer = tokio::spawn(async move {
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
    });

    println!("\n  time  source rows  destination rows  destination applied  lag (bytes of WAL)");
    let started = Instant::now();
    let mut writes_done = false;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if pipeline.is_finished() {
            return match pipeline.await {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::Definite("the pipeline stopped unexpectedly".into())),
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
    let transactions = writer
        .await
        .map_err(|e| Error::Definite(format!("demo writer panicked: {e}")))??;
    // What an operator or a health check sees while it runs.
    let bounds = crate::status::Bounds {
        max_lag_bytes: config.status.max_lag_bytes,
        max_lag_seconds: config.status.max_lag_seconds,
        require_active: true,
    };
    let report = crate::status::check(&config, &bounds).await?;
    println!(
        "\n`cdc status` (exit code {} for scripts and health checks):\n{report}",
        report.exit_code()
    );
    let _ = stop.send(true);
    pipeline
        .await
        .map_err(|e| Error::Definite(format!("pipeline panicked: {e}")))??;
    println!(
        "\nThe load wrote {transactions} transactions; the destination caught up and its {} rows are identical \
         to the source's (compared row by row).",
        src.query_one("SELECT count(*) FROM orders", &[]).await.map_err(Error::pg("demo"))?.get::<_, i64>(0)
    );
    println!("Use it on your databases: write a config.toml (see the README) and run `cdc run`.");
    Ok(())
}

async fn current_lsn(src: &tokio_postgres::Client) -> Result<String> {
    Ok(src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(Error::pg("demo"))?
        .get(0))
}
