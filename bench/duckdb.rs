//! `cargo bench --bench duckdb`: Postgres → DuckDB, against the ceiling a user could script.
//!
//! (a) Snapshot of pgbench_accounts (`BENCH_SCALE` × 100,000 rows) into a fresh DuckDB file:
//!     `cdc snapshot` against `psql -c "COPY … TO STDOUT (FORMAT csv)" | duckdb FILE -c "COPY …
//!     FROM '/dev/stdin'"` (the DuckDB CLI from PyPI `duckdb-cli`), into a table with and
//!     without a primary key, alternated in each repetition.
//!     What a user would pick instead runs in the same repetitions when installed: the seed
//!     tool `pgwarehouse sync` (PyPI `pgwarehouse` 0.1.5) and `sling run` (PyPI
//!     `sling-linux-amd64` 1.4.11, offline with DuckDB's installed extensions).
//! (b) Backlog drain: `BENCH_TXNS` pgbench TPC-B transactions (3 keyed row changes each to the
//!     replicated tables) written while `cdc run` is stopped; then `cdc run` drains them. Done
//!     when the slot has confirmed the source's WAL position taken after the load.
//!
//! Prints each repetition, medians, ratios, and `cdc`'s peak RSS. `BENCH_REPS` (default 3),
//! `BENCH_DUCKDB_CLI` (default `duckdb` on PATH), `BENCH_LOG` (cdc's log filter),
//! `BENCH_BATCH_ROWS` (`apply.batch_max_rows`; unset: the DuckDB destination's default).

#[path = "common.rs"]
mod common;

use std::process::{Command, Stdio};

use cdc::local_pg::{find_bindir, SUPERUSER};
use common::{
    cdc_binary, drain, env_or, median, pgbench, psql, query, sling_binary, start_servers, timed,
    which,
};

fn main() {
    let scale = env_or("BENCH_SCALE", 50);
    let reps = env_or("BENCH_REPS", 3) as usize;
    let txns = env_or("BENCH_TXNS", 100_000);
    let duckdb_cli = std::env::var("BENCH_DUCKDB_CLI").unwrap_or_else(|_| "duckdb".into());
    let (source, _dest) = start_servers(
        &["shared_buffers = '512MB'", "max_wal_size = '8GB'"],
        (true, false),
    );
    let bindir = find_bindir().unwrap();
    eprintln!(
        "generating pgbench scale {scale} ({} rows)...",
        scale * 100_000
    );
    pgbench(
        &source,
        "postgres",
        &["-i", "-q", "-I", "dtgvp", "-s", &scale.to_string()],
    );
    let dir = std::env::temp_dir().join(format!("cdc-bench-duckdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bench.duckdb");
    let config = dir.join("cdc.toml");
    let log = common::bench_log();
    let batch_rows = std::env::var("BENCH_BATCH_ROWS")
        .map(|n| format!("[apply]\nbatch_max_rows = {n}\n"))
        .unwrap_or_default();
    let write_config = |tables: &[&str]| {
        let tables: String = tables
            .iter()
            .map(|t| format!("[[tables]]\nsource = \"public.{t}\"\n"))
            .collect();
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = {:?}\nslot = \"bench\"\npublication = \"bench\"\n[destination]\nurl = \"duckdb://{}\"\n\
                 [status]\nlisten = \"127.0.0.1:0\"\n{batch_rows}{tables}",
                source.url("postgres"),
                file.display()
            ),
        )
        .unwrap();
    };
    let cdc = |args: &[&str]| {
        let mut cmd = Command::new(cdc_binary());
        cmd.args(["--config", config.to_str().unwrap(), "--log-format", "json"])
            .args(args)
            .env("CDC_LOG", &log);
        cmd
    };
    let fresh = || {
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(file.with_extension("duckdb.wal"));
    };

    // (a) Snapshot.
    write_config(&["pgbench_accounts"]);
    let copy_out = format!(
        "PGPASSWORD={sp} {psql} -X -h 127.0.0.1 -p {s} -U {u} -d postgres -c 'COPY pgbench_accounts TO STDOUT (FORMAT csv)'",
        sp = source.password(),
        psql = bindir.join("psql").display(),
        s = source.port(),
        u = SUPERUSER,
    );
    let ceiling = |key: bool| {
        fresh();
        let pk = if key { " PRIMARY KEY" } else { "" };
        let script = format!(
            "{copy_out} | {duckdb_cli} {f} -c \"CREATE TABLE pgbench_accounts (aid INTEGER NOT NULL{pk}, bid INTEGER, \
             abalance INTEGER, filler VARCHAR); COPY pgbench_accounts FROM '/dev/stdin' (FORMAT csv)\"",
            f = file.display()
        );
        let mut cmd = Command::new("bash");
        cmd.args(["-o", "pipefail", "-c", &script]);
        timed(cmd).0
    };
    let (mut with_key, mut without_key, mut ours, mut peaks) = (vec![], vec![], vec![], vec![]);
    let (mut pgw_times, mut sling_times) = (vec![], vec![]);
    let pgwarehouse = which("pgwarehouse");
    let sling = sling_binary();
    let pgw_config = dir.join("pgwarehouse.yml");
    std::fs::write(
        &pgw_config,
        format!(
            "postgres:\n  pghost: 127.0.0.1\n  pgport: {}\n  pgdatabase: postgres\n  pguser: {SUPERUSER}\n  \
             pgpassword: '{}'\n  pgsslmode: disable\nwarehouse:\n  backend: duckdb\n  duckdb_path: {}\n",
            source.port(),
            source.password(),
            file.display()
        ),
    )
    .unwrap();
    for rep in 1..=reps {
        let k = ceiling(true);
        let n = ceiling(false);
        if let Some(bin) = &pgwarehouse {
            fresh();
            let _ = std::fs::remove_dir_all(dir.join("pgw-data"));
            let mut cmd = Command::new(bin);
            cmd.arg("--config")
                .arg(&pgw_config)
                .arg("--data")
                .arg(dir.join("pgw-data"))
                .args(["sync", "pgbench_accounts"])
                // It runs psql with the PG* variables, and sets PGPORT only from the environment.
                .env("PGPASSWORD", source.password())
                .env("PGPORT", source.port().to_string())
                .env("PGSSLMODE", "disable")
                .stderr(Stdio::null());
            let (secs, peak) = timed(cmd);
            eprintln!(
                "rep {rep}: pgwarehouse sync {secs:.2}s (peak RSS {:.1} MiB)",
                peak as f64 / 1024.0
            );
            pgw_times.push(secs);
        }
        if let Some(bin) = &sling {
            fresh();
            let mut cmd = Command::new(bin);
            cmd.args(["run", "--src-conn"])
                .arg(format!(
                    "postgresql://{SUPERUSER}:{}@127.0.0.1:{}/postgres?sslmode=disable",
                    source.password(),
                    source.port()
                ))
                .args(["--src-stream", "public.pgbench_accounts", "--tgt-conn"])
                .arg(format!("duckdb://{}?copy_method=csv_files", file.display()))
                .args([
                    "--tgt-object",
                    "main.pgbench_accounts",
                    "--mode",
                    "full-refresh",
                ])
                .env("DUCKDB_USE_INSTALLED_EXTENSIONS", "true")
                .env(
                    "DUCKDB_PATH",
                    which(&duckdb_cli).unwrap_or_else(|| duckdb_cli.clone().into()),
                )
                .env("SLING_HOME_DIR", dir.join("sling-home"))
                .stderr(Stdio::null());
            let (secs, peak) = timed(cmd);
            eprintln!(
                "rep {rep}: sling run {secs:.2}s (peak RSS {:.1} MiB)",
                peak as f64 / 1024.0
            );
            sling_times.push(secs);
        }
        fresh();
        psql(&source, "postgres", "SELECT pg_drop_replication_slot('bench') FROM pg_replication_slots WHERE slot_name = 'bench'");
        let (c, peak) = timed(cdc(&["snapshot", "--force"]));
        eprintln!(
            "rep {rep}: ceiling with key {k:.2}s, without key {n:.2}s, cdc snapshot {c:.2}s (peak RSS {:.1} MiB)",
            peak as f64 / 1024.0
        );
        with_key.push(k);
        without_key.push(n);
        ours.push(c);
        peaks.push(peak);
    }
    let (k, n, c) = (median(with_key), median(without_key), median(ours));
    println!("rows: {}", scale * 100_000);
    println!("ceiling psql COPY csv | duckdb COPY FROM stdin, with primary key: median {k:.2}s");
    println!("ceiling without primary key: median {n:.2}s");
    println!("cdc snapshot into DuckDB (primary key included): median {c:.2}s");
    println!(
        "ratio cdc/ceiling-with-key: {:.2}, cdc/ceiling-without-key: {:.2}",
        c / k,
        c / n
    );
    println!(
        "cdc snapshot peak RSS: max {:.1} MiB",
        *peaks.iter().max().unwrap() as f64 / 1024.0
    );
    for (name, times) in [("pgwarehouse sync", pgw_times), ("sling run", sling_times)] {
        if !times.is_empty() {
            let t = median(times);
            println!("{name}: median {t:.2}s; cdc is {:.2}x faster", t / c);
        }
    }

    // (b) Backlog drain.
    if txns == 0 {
        return;
    }
    fresh();
    write_config(&["pgbench_accounts", "pgbench_tellers", "pgbench_branches"]);
    psql(&source, "postgres", "SELECT pg_drop_replication_slot('bench') FROM pg_replication_slots WHERE slot_name = 'bench'");
    timed(cdc(&["snapshot", "--force"]));
    eprintln!("writing a backlog of {txns} pgbench transactions...");
    pgbench(
        &source,
        "postgres",
        &["-n", "-c", "2", "-j", "2", "-t", &(txns / 2).to_string()],
    );
    let target = source_lsn(&source);
    drain(&source, cdc(&["run"]), &target, txns * 3);
}

fn source_lsn(server: &cdc::local_pg::LocalPostgres) -> String {
    query(server, "SELECT pg_current_wal_lsn()")
}
