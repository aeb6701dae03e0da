//! `cargo bench --bench snapshot`: `cdc snapshot` of a pgbench_accounts table against the raw
//! ceiling `psql COPY TO STDOUT (binary) | psql COPY FROM STDIN (binary)` into an identical
//! table without indexes, in the same run on the same servers.
//!
//! A third variant does the same job as `cdc snapshot` with the bare tools: the pipe, then
//! `ALTER TABLE ... ADD PRIMARY KEY` (what the target compares against leaves the key out).
//! Every variant also reports the CPU the whole machine used while it ran (both servers,
//! psql, cdc), which says whether it was bound by the cores.
//!
//! What users compare us with also runs, each into a fresh database per repetition:
//! `pg_dump -t pgbench_accounts | psql` (table, rows, primary key) and, when installed (Debian
//! package `pgcopydb`), `pgcopydb clone` of the source database (its other pgbench tables are
//! tiny; `--table-jobs` and `--index-jobs` = `BENCH_JOBS` or the cores).
//!
//! `BENCH_CDC_BASELINE=PATH` runs another cdc binary (an earlier commit's) the same way in each
//! repetition, to compare two versions in one run.
//!
//! Prints each repetition, the medians, their ratios, and the peak RSS of `cdc`. Each variant's
//! CPU is split into the source server's, the destination server's and the rest (the client:
//! cdc or the two psql), so a difference in CPU says whose work it is.
//! `BENCH_SCALE` (default 50 = 5 million rows), `BENCH_REPS` (default 3), `BENCH_JOBS`
//! (`snapshot.jobs`, default 0 = cores) and `BENCH_LOG` (cdc's log filter) tune it.

#[path = "common.rs"]
mod common;

use std::process::Command;

use cdc::local_pg::{find_bindir, SUPERUSER};
use common::{cdc_binary, env_or, median, pgbench, psql, start_servers, timed, which, CpuSplit};

fn main() {
    let scale = env_or("BENCH_SCALE", 50);
    let reps = env_or("BENCH_REPS", 3) as usize;
    let (source, dest) = start_servers(
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
    psql(&dest, "postgres", "CREATE DATABASE baseline");
    psql(&dest, "postgres", "CREATE DATABASE viacdc");
    let table_ddl = "CREATE TABLE pgbench_accounts (aid integer NOT NULL, bid integer, abalance integer, filler character(84))";

    let config = std::env::temp_dir().join("cdc-bench-snapshot.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = {:?}\nslot = \"bench\"\npublication = \"bench\"\n[destination]\nurl = {:?}\n[[tables]]\nsource = \"public.pgbench_accounts\"\n[snapshot]\njobs = {}\n",
            source.url("postgres"),
            dest.url("viacdc"),
            std::env::var("BENCH_JOBS").unwrap_or_else(|_| "0".into())
        ),
    )
    .unwrap();
    let cdc_bin = cdc_binary();

    let (mut pipe_times, mut cdc_times, mut keyed_times, mut peaks) =
        (vec![], vec![], vec![], vec![]);
    let (mut dump_times, mut pgcopydb_times) = (vec![], vec![]);
    // Another cdc binary (e.g. an earlier commit's) run the same way in each repetition.
    let baseline_bin = std::env::var_os("BENCH_CDC_BASELINE").map(std::path::PathBuf::from);
    let mut baseline_times = vec![];
    let pgcopydb = which("pgcopydb");
    let jobs = match std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
    {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let url = |server: &cdc::local_pg::LocalPostgres, db: &str| {
        format!(
            "postgresql://{SUPERUSER}:{}@127.0.0.1:{}/{db}",
            server.password(),
            server.port()
        )
    };
    let (mut pipe_cpu, mut cdc_cpu, mut keyed_cpu) = (vec![], vec![], vec![]);
    for rep in 1..=reps {
        let pipe = format!(
            "PGPASSWORD={sp} {psql} -X -h 127.0.0.1 -p {s} -U {u} -d postgres -c 'COPY pgbench_accounts TO STDOUT (FORMAT binary)' \
             | PGPASSWORD={dp} {psql} -X -q -h 127.0.0.1 -p {d} -U {u} -d baseline -c 'COPY pgbench_accounts FROM STDIN (FORMAT binary)'",
            sp = source.password(), dp = dest.password(), psql = bindir.join("psql").display(),
            s = source.port(), d = dest.port(), u = SUPERUSER,
        );
        // The pipe alone (the target's baseline), then the pipe plus the primary key.
        let run_pipe = |with_key: bool| {
            psql(&dest, "baseline", "DROP TABLE IF EXISTS pgbench_accounts");
            psql(&dest, "baseline", table_ddl);
            let script = if with_key {
                format!(
                    "{pipe} && PGPASSWORD={dp} {psql} -X -q -h 127.0.0.1 -p {d} -U {u} -d baseline \
                     -c 'ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)'",
                    dp = dest.password(),
                    psql = bindir.join("psql").display(),
                    d = dest.port(),
                    u = SUPERUSER,
                )
            } else {
                pipe.clone()
            };
            let mut cmd = Command::new("bash");
            cmd.args(["-o", "pipefail", "-c", &script]);
            let before = CpuSplit::now(&source, &dest);
            let (secs, _) = timed(cmd);
            (secs, CpuSplit::now(&source, &dest).since(before))
        };
        let (pipe_s, pipe_c) = run_pipe(false);
        let (keyed_s, keyed_c) = run_pipe(true);
        let fresh_db = |name: &str| {
            psql(
                &dest,
                "postgres",
                &format!("DROP DATABASE IF EXISTS {name}"),
            );
            psql(&dest, "postgres", &format!("CREATE DATABASE {name}"));
        };
        fresh_db("viadump");
        let mut dump = Command::new("bash");
        dump.args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                "{} -d '{}' -t pgbench_accounts | {} -X -q -d '{}'",
                bindir.join("pg_dump").display(),
                url(&source, "postgres"),
                bindir.join("psql").display(),
                url(&dest, "viadump")
            ),
        ]);
        let (dump_s, _) = timed(dump);
        dump_times.push(dump_s);
        let copydb_s = pgcopydb.as_ref().map(|bin| {
            fresh_db("viapgcopydb");
            let work = std::env::temp_dir().join(format!("cdc-bench-pgcopydb-{rep}"));
            let _ = std::fs::remove_dir_all(&work);
            let mut cmd = Command::new(bin);
            cmd.args([
                "clone",
                "--source",
                &url(&source, "postgres"),
                "--target",
                &url(&dest, "viapgcopydb"),
            ])
            .args([
                "--table-jobs",
                &jobs.to_string(),
                "--index-jobs",
                &jobs.to_string(),
            ])
            .arg("--dir")
            .arg(&work)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bindir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .stderr(std::process::Stdio::null());
            let (secs, _) = timed(cmd);
            pgcopydb_times.push(secs);
            secs
        });

        let snapshot = |bin: &std::path::Path| {
            let mut cmd = Command::new(bin);
            cmd.args([
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "json",
                "snapshot",
                "--force",
            ])
            .env("CDC_LOG", common::bench_log());
            let before = CpuSplit::now(&source, &dest);
            let (secs, peak_kib) = timed(cmd);
            (secs, peak_kib, CpuSplit::now(&source, &dest).since(before))
        };
        if let Some(bin) = &baseline_bin {
            let (secs, _, cpu) = snapshot(bin);
            eprintln!("rep {rep}: baseline cdc {secs:.2}s ({cpu})");
            baseline_times.push(secs);
        }
        let (cdc_s, peak_kib, cdc_c) = snapshot(&cdc_bin);
        eprintln!(
            "rep {rep}: psql pipe {pipe_s:.2}s ({pipe_c}), pipe + key {keyed_s:.2}s ({keyed_c}), \
             cdc snapshot {cdc_s:.2}s ({cdc_c}, peak RSS {:.1} MiB), pg_dump | psql {dump_s:.2}s, \
             pgcopydb clone {}",
            peak_kib as f64 / 1024.0,
            copydb_s.map_or("not installed".into(), |s| format!("{s:.2}s"))
        );
        pipe_times.push(pipe_s);
        keyed_times.push(keyed_s);
        cdc_times.push(cdc_s);
        pipe_cpu.push(pipe_c);
        keyed_cpu.push(keyed_c);
        cdc_cpu.push(cdc_c);
        peaks.push(peak_kib);
    }
    let (p, k, c) = (median(pipe_times), median(keyed_times), median(cdc_times));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let split = |runs: &[CpuSplit]| CpuSplit {
        machine: median(runs.iter().map(|c| c.machine).collect()),
        source: median(runs.iter().map(|c| c.source).collect()),
        destination: median(runs.iter().map(|c| c.destination).collect()),
    };
    let (pcs, kcs, ccs) = (split(&pipe_cpu), split(&keyed_cpu), split(&cdc_cpu));
    let cc = ccs.machine;
    println!("rows: {}", scale * 100_000);
    println!("psql binary COPY pipe (no indexes): median {p:.2}s, {pcs} (medians)");
    println!("psql pipe, then the primary key: median {k:.2}s, {kcs}");
    println!("cdc snapshot (primary key included): median {c:.2}s, {ccs}");
    println!("ratio cdc/pipe: {:.2}", c / p);
    println!("ratio cdc/(pipe + key): {:.2}", c / k);
    println!(
        "cdc's CPU over {cores} cores: {:.2}s at the least, {:.2}x the pipe's time",
        cc / cores,
        cc / cores / p
    );
    if !baseline_times.is_empty() {
        let b = median(baseline_times);
        println!(
            "baseline cdc binary: median {b:.2}s; this cdc / baseline: {:.2}",
            c / b
        );
    }
    let d = median(dump_times);
    println!(
        "pg_dump -t | psql (key included): median {d:.2}s; cdc is {:.2}x faster",
        d / c
    );
    if !pgcopydb_times.is_empty() {
        let g = median(pgcopydb_times);
        println!(
            "pgcopydb clone (key included): median {g:.2}s; cdc is {:.2}x faster",
            g / c
        );
    }
    println!(
        "cdc peak RSS: max {:.1} MiB",
        *peaks.iter().max().unwrap() as f64 / 1024.0
    );
}
