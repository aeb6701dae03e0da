//! `cargo bench --bench sync`: `cdc sync` into DuckDB against the seed tools, same run.
//!
//! Source: `accounts` = pgbench_accounts (`BENCH_SCALE` × 100,000 rows) plus an `updated_at`
//! column of distinct values (indexed). Each repetition (`BENCH_REPS`, default 3):
//! (a) first pass into a fresh DuckDB file: `cdc sync` (strategy `modified`), `pgwarehouse sync
//!     accounts`, `sling run --mode full-refresh` (each into its own file);
//! (b) 1% of rows updated (new `updated_at`), then the second pass of each: `cdc sync`
//!     (`modified`), `pgwarehouse sync accounts --last-modified updated_at`, `sling run --mode
//!     incremental --primary-key aid --update-key updated_at`;
//! (c) 0.1% updated and 0.01% deleted, then `cdc sync --strategy diff` against `cdc reload`
//!     on the same change (the file is copied before, so both start equal): time, rows moved,
//!     and the differences left (`cdc verify`); and the same diff against a reload into a
//!     Postgres destination (range hashes on both servers).
//! Prints each step, medians, ratios, and cdc's peak RSS. `BENCH_SEEDS=0` skips the seed tools.

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cdc::local_pg::{LocalPostgres, SUPERUSER};
use common::{
    cdc_binary, env_or, median, pgbench, psql, sling_binary, start_servers, timed, which,
};

struct Tools {
    dir: PathBuf,
    source: LocalPostgres,
    dest: LocalPostgres,
    log: String,
}

/// Stands for the Postgres destination where a DuckDB file is expected.
const POSTGRES: &str = "postgres-destination";

impl Tools {
    fn config(&self, file: &Path) -> PathBuf {
        let config = self.dir.join(format!(
            "{}.toml",
            file.file_stem().unwrap().to_string_lossy()
        ));
        let url = if file == Path::new(POSTGRES) {
            format!("{:?}", self.dest.url("postgres"))
        } else {
            format!("\"duckdb://{}\"", file.display())
        };
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = {:?}\n[destination]\nurl = {url}\n\
                 [[tables]]\nsource = \"public.accounts\"\nstrategy = \"modified\"\nmodified_column = \"updated_at\"\n",
                self.source.url("postgres"),
            ),
        )
        .unwrap();
        config
    }

    fn cdc(&self, file: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(cdc_binary());
        cmd.arg("--config")
            .arg(self.config(file))
            .args(["--log-format", "json"])
            .args(args)
            .env("CDC_LOG", &self.log);
        cmd
    }

    fn pgwarehouse(&self, bin: &Path, file: &Path, args: &[&str]) -> Command {
        let pgw_config = self.dir.join("pgwarehouse.yml");
        std::fs::write(
            &pgw_config,
            format!(
                "postgres:\n  pghost: 127.0.0.1\n  pgport: {}\n  pgdatabase: postgres\n  pguser: {SUPERUSER}\n  \
                 pgpassword: '{}'\n  pgsslmode: disable\nwarehouse:\n  backend: duckdb\n  duckdb_path: {}\n",
                self.source.port(),
                self.source.password(),
                file.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&pgw_config)
            .arg("--data")
            .arg(self.dir.join("pgw-data"))
            .args(args)
            .env("PGPASSWORD", self.source.password())
            .env("PGPORT", self.source.port().to_string())
            .env("PGSSLMODE", "disable")
            .stderr(Stdio::null());
        cmd
    }

    fn sling(&self, bin: &Path, file: &Path, mode: &[&str]) -> Command {
        let duckdb_cli = which("duckdb").expect("the duckdb CLI (PyPI duckdb-cli) for sling");
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--src-conn"])
            .arg(format!(
                "postgresql://{SUPERUSER}:{}@127.0.0.1:{}/postgres?sslmode=disable",
                self.source.password(),
                self.source.port()
            ))
            .args(["--src-stream", "public.accounts", "--tgt-conn"])
            .arg(format!("duckdb://{}?copy_method=csv_files", file.display()))
            .args(["--tgt-object", "main.accounts"])
            .args(mode)
            .env("DUCKDB_USE_INSTALLED_EXTENSIONS", "true")
            .env("DUCKDB_PATH", duckdb_cli)
            .env("SLING_HOME_DIR", self.dir.join("sling-home"))
            .stderr(Stdio::null());
        cmd
    }
}

/// Run `cmd`, printing its output if it fails; (seconds, peak RSS KiB).
fn timed_ok(cmd: Command) -> (f64, u64) {
    let started = std::time::Instant::now();
    timed_ok_output(cmd);
    (started.elapsed().as_secs_f64(), 0)
}

/// Run `cmd`; its standard output, or a panic with everything it printed.
fn timed_ok_output(mut cmd: Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fresh(file: &Path) {
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(file.with_extension("duckdb.wal"));
}

fn main() {
    let scale = env_or("BENCH_SCALE", 50);
    let reps = env_or("BENCH_REPS", 3) as usize;
    let (source, dest) = start_servers(
        &["shared_buffers = '512MB'", "max_wal_size = '8GB'"],
        (false, false),
    );
    let rows = scale * 100_000;
    eprintln!("generating {rows} accounts...");
    pgbench(
        &source,
        "postgres",
        &["-i", "-q", "-I", "dtg", "-s", &scale.to_string()],
    );
    psql(
        &source,
        "postgres",
        "CREATE TABLE accounts AS SELECT aid, bid, abalance, filler,
             timestamptz '2024-01-01 00:00:00+00' + aid * interval '1 millisecond' AS updated_at
           FROM pgbench_accounts;
         ALTER TABLE accounts ADD PRIMARY KEY (aid); CREATE INDEX ON accounts (updated_at);
         DROP TABLE pgbench_accounts;",
    );
    psql(&source, "postgres", "VACUUM ANALYZE accounts");
    let dir = std::env::temp_dir().join(format!("cdc-bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = Tools {
        dir: dir.clone(),
        source,
        dest,
        log: common::bench_log(),
    };
    // BENCH_SEEDS=0 leaves the seed tools out (cdc's own numbers only).
    let seeds = env_or("BENCH_SEEDS", 1) == 1;
    let pgwarehouse = which("pgwarehouse").filter(|_| seeds);
    let sling = sling_binary().filter(|_| seeds);
    let (ours_file, pgw_file, sling_file) = (
        dir.join("cdc.duckdb"),
        dir.join("pgw.duckdb"),
        dir.join("sling.duckdb"),
    );
    // The Postgres destination: a first pass now, then the same passes as DuckDB, for diff
    // against reload between two Postgres servers (range hashes on both sides).
    let pg = Path::new(POSTGRES);
    timed_ok(tools.cdc(pg, &["sync"]));
    let (mut pg_diff, mut pg_reload) = (vec![], vec![]);
    let mut first: [Vec<f64>; 3] = Default::default();
    let mut second: [Vec<f64>; 3] = Default::default();
    let (mut diff_times, mut reload_times, mut moved, mut peaks) = (vec![], vec![], vec![], vec![]);
    for rep in 1..=reps {
        // (a) First pass.
        fresh(&ours_file);
        let (c, peak) = timed(tools.cdc(&ours_file, &["sync"]));
        peaks.push(peak);
        first[0].push(c);
        eprintln!(
            "rep {rep}: first pass: cdc sync {c:.2}s (peak RSS {:.1} MiB)",
            peak as f64 / 1024.0
        );
        if let Some(bin) = &pgwarehouse {
            fresh(&pgw_file);
            let _ = std::fs::remove_dir_all(dir.join("pgw-data"));
            let (t, _) = timed(tools.pgwarehouse(bin, &pgw_file, &["sync", "accounts"]));
            first[1].push(t);
            eprintln!("rep {rep}: first pass: pgwarehouse sync {t:.2}s");
        }
        if let Some(bin) = &sling {
            fresh(&sling_file);
            let (t, _) = timed(tools.sling(bin, &sling_file, &["--mode", "full-refresh"]));
            first[2].push(t);
            eprintln!("rep {rep}: first pass: sling full-refresh {t:.2}s");
        }
        // (b) 1% updated.
        psql(
            &tools.source,
            "postgres",
            &format!(
                "UPDATE accounts SET abalance = abalance + 1,
                     updated_at = timestamptz '2025-01-01 00:00:00+00' + interval '1 day' * {rep} + aid * interval '1 millisecond'
                  WHERE aid % 100 = {rep}"
            ),
        );
        let (c, peak) = timed(tools.cdc(&ours_file, &["sync"]));
        peaks.push(peak);
        second[0].push(c);
        timed_ok(tools.cdc(pg, &["sync"]));
        eprintln!(
            "rep {rep}: 1% second pass: cdc sync (modified) {c:.2}s (peak RSS {:.1} MiB)",
            peak as f64 / 1024.0
        );
        if let Some(bin) = &pgwarehouse {
            let (t, _) = timed(tools.pgwarehouse(
                bin,
                &pgw_file,
                &["sync", "accounts", "--last-modified", "updated_at"],
            ));
            second[1].push(t);
            eprintln!("rep {rep}: 1% second pass: pgwarehouse --last-modified {t:.2}s");
        }
        if let Some(bin) = &sling {
            let (t, _) = timed(tools.sling(
                bin,
                &sling_file,
                &[
                    "--mode",
                    "incremental",
                    "--primary-key",
                    "aid",
                    "--update-key",
                    "updated_at",
                ],
            ));
            second[2].push(t);
            eprintln!("rep {rep}: 1% second pass: sling incremental {t:.2}s");
        }
        // (c) 0.1% updated, 0.01% deleted: diff against a reload of the same state.
        psql(
            &tools.source,
            "postgres",
            &format!(
                "UPDATE accounts SET abalance = abalance - 7 WHERE aid % 1000 = {rep};
                 DELETE FROM accounts WHERE aid % 10000 = {};",
                rep + 500
            ),
        );
        eprintln!("rep {rep}: changed 0.1% + 0.01%");
        let changed: u64 = rows / 1000 + rows / 10000;
        let reload_file = dir.join("cdc-reload.duckdb");
        fresh(&reload_file);
        std::fs::copy(&ours_file, &reload_file).unwrap();
        let out = tools
            .cdc(&ours_file, &["sync", "--strategy", "diff", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("rep {rep}: diffed");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &summary["tables"][0];
        let n = ["inserted", "updated", "deleted"]
            .iter()
            .map(|k| t[k].as_u64().unwrap())
            .sum::<u64>();
        let secs = t["seconds"].as_f64().unwrap();
        let (d, peak) = timed_ok(tools.cdc(&ours_file, &["sync", "--strategy", "diff"]));
        peaks.push(peak);
        // The first diff did the work; the timed one above is a no-change pass (the floor).
        diff_times.push(secs);
        moved.push(n as f64);
        let (r, peak) = timed_ok(tools.cdc(&reload_file, &["reload", "public.accounts"]));
        peaks.push(peak);
        reload_times.push(r);
        let verified = tools
            .cdc(&ours_file, &["verify", "--recheck-after-ms", "0"])
            .output()
            .unwrap();
        assert!(
            verified.status.success(),
            "differences left after diff:\n{}",
            String::from_utf8_lossy(&verified.stdout)
        );
        let out = timed_ok_output(tools.cdc(pg, &["sync", "--strategy", "diff", "--json"]));
        let summary: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let pd = summary["tables"][0]["seconds"].as_f64().unwrap();
        let (pr, _) = timed_ok(tools.cdc(pg, &["reload", "public.accounts"]));
        eprintln!("rep {rep}: 0.1%+0.01% into Postgres: diff {pd:.2}s, reload {pr:.2}s");
        pg_diff.push(pd);
        pg_reload.push(pr);
        eprintln!(
            "rep {rep}: 0.1%+0.01%: diff {secs:.2}s moving {n} rows for {changed} changed (no-change diff {d:.2}s), reload {r:.2}s; verify equal"
        );
    }
    println!("rows: {rows}");
    let names = ["cdc sync", "pgwarehouse", "sling"];
    let c1 = median(first[0].clone());
    let c2 = median(second[0].clone());
    println!("first pass: cdc sync median {c1:.2}s");
    println!("second pass after 1% updates: cdc sync (modified) median {c2:.2}s");
    for i in 1..3 {
        if !first[i].is_empty() {
            let t1 = median(first[i].clone());
            let t2 = median(second[i].clone());
            println!(
                "{}: first pass median {t1:.2}s (cdc {:.2}x faster); second pass median {t2:.2}s (cdc {:.2}x faster)",
                names[i],
                t1 / c1,
                t2 / c2
            );
        }
    }
    let (d, r) = (median(diff_times), median(reload_times));
    println!(
        "0.1% updated + 0.01% deleted: diff median {d:.2}s moving median {:.0} rows for {} changed; reload median {r:.2}s (diff/reload {:.2})",
        median(moved),
        rows / 1000 + rows / 10000,
        d / r
    );
    let (d, r) = (median(pg_diff), median(pg_reload));
    println!(
        "the same into Postgres: diff median {d:.2}s, reload median {r:.2}s (diff/reload {:.2})",
        d / r
    );
    println!(
        "cdc peak RSS over every pass: {:.1} MiB",
        *peaks.iter().max().unwrap() as f64 / 1024.0
    );
}
