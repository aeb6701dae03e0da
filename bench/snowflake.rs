//! `cargo bench --bench snowflake`: Postgres → Snowflake against the emulator (fakesnow's
//! server from `destination::snowflake::local`). Its speed is DuckDB's and Python's, not Snowflake's: this
//! measures correctness under load and what a real account would bill for — the statements per
//! batch — and reports rows/s anyway.
//!
//! (a) `cdc snapshot` of pgbench's keyed tables (`BENCH_SCALE` × 100,000 accounts, default 1).
//! (b) Backlog drain: `BENCH_TXNS` pgbench TPC-B transactions (default 5,000; 3 keyed row
//!     changes each) written while `cdc run` is stopped, then drained; the balances must equal
//!     the source's. The statements of each committed batch come from cdc's debug log.
//!
//! `BENCH_REPS` (default 3) repeats (a); medians printed.

#[path = "common.rs"]
mod common;

use std::process::Command;

use cdc::destination::snowflake::client::Client;
use cdc::destination::snowflake::local::LocalSnowflake;
use cdc::destination::snowflake::SnowflakeUrl;
use common::{cdc_binary, drain, env_or, median, pgbench, psql, query, timed};

fn main() {
    let scale = env_or("BENCH_SCALE", 1);
    let reps = env_or("BENCH_REPS", 3) as usize;
    let txns = env_or("BENCH_TXNS", 5_000);
    let (source, _unused) = common::start_servers(&["max_wal_size = '4GB'"], (true, false));
    pgbench(
        &source,
        "postgres",
        &["-i", "-q", "-I", "dtgvp", "-s", &scale.to_string()],
    );
    let sf = LocalSnowflake::start().expect("the Snowflake emulator");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("cdc-bench-snowflake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("cdc.toml");
    let log = dir.join("cdc.log");
    let password = dir.join("password");
    std::fs::write(&password, "emulator").unwrap();
    let fresh = |db: &str| {
        let mut url = SnowflakeUrl::parse(&sf.url(db, "PUBLIC")).unwrap();
        url.password = Some(cdc::conninfo::Secret::new("emulator"));
        let c = Client::new(url).unwrap();
        rt.block_on(async {
            c.query(&format!("CREATE DATABASE IF NOT EXISTS \"{db}\""))
                .await
                .unwrap();
        });
        psql(&source, "postgres", "SELECT pg_drop_replication_slot('bench') FROM pg_replication_slots WHERE slot_name = 'bench'");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = {:?}\nslot = \"bench\"\npublication = \"bench\"\n[destination]\nurl = {:?}\n\
                 password_file = {:?}\n[status]\nlisten = \"127.0.0.1:0\"\n\
                 [[tables]]\nsource = \"public.pgbench_accounts\"\n[[tables]]\nsource = \"public.pgbench_tellers\"\n\
                 [[tables]]\nsource = \"public.pgbench_branches\"\n",
                source.url("postgres"),
                sf.url(db, "PUBLIC"),
                password.display().to_string(),
            ),
        )
        .unwrap();
        c
    };
    let cdc = |args: &[&str]| {
        let mut cmd = Command::new(cdc_binary());
        cmd.args(["--config", config.to_str().unwrap(), "--log-format", "json"])
            .args(args)
            .env("CDC_LOG", "warn,cdc::destination::snowflake=debug")
            .stderr(std::fs::File::create(&log).unwrap());
        cmd
    };
    let rows = scale * 100_000 + scale * 10 + scale;
    let mut times = Vec::new();
    for rep in 0..reps {
        fresh(&format!("SNAP{rep}"));
        let (secs, rss) = timed(cdc(&["snapshot", "--force"]));
        println!(
            "snapshot {rep}: {rows} rows in {secs:.2}s: {:.0} rows/s, peak RSS {:.1} MiB",
            rows as f64 / secs,
            rss as f64 / 1024.0
        );
        times.push(secs);
    }
    let m = median(times);
    println!("snapshot median: {m:.2}s, {:.0} rows/s", rows as f64 / m);

    if txns == 0 {
        return;
    }
    let client = fresh("DRAIN");
    timed(cdc(&["snapshot", "--force"]));
    pgbench(
        &source,
        "postgres",
        &["-n", "-c", "2", "-j", "2", "-t", &(txns / 2).to_string()],
    );
    let target = query(&source, "SELECT pg_current_wal_lsn()");
    drain(&source, cdc(&["run"]), &target, txns * 3);
    let sum = rt.block_on(async {
        client
            .query("SELECT SUM(\"abalance\")::NUMBER(38,0)::VARCHAR FROM \"DRAIN\".\"public\".\"pgbench_accounts\"")
            .await
            .unwrap()
    });
    assert_eq!(
        sum[0][0].clone().unwrap_or_default(),
        query(&source, "SELECT sum(abalance) FROM pgbench_accounts"),
        "the drained tables equal the source"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let batches: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("Snowflake batch committed"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["statements"].as_u64())
        .collect();
    if !batches.is_empty() {
        let total: u64 = batches.iter().sum();
        println!(
            "batches: {}, statements per batch: median {:.0}, max {}, mean {:.1} (BEGIN, MERGEs, the position, COMMIT)",
            batches.len(),
            median(batches.iter().map(|&b| b as f64).collect()),
            batches.iter().max().unwrap(),
            total as f64 / batches.len() as f64
        );
    }
}
