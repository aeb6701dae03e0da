//! `cargo bench --bench chunked`: a pgbench_accounts table copied by `cdc run` in chunks
//! (`snapshot.mode = "chunked"`) against the same copy under the slot's exported snapshot
//! (`"exported"`), alternated in the same run, with pgbench writing throughout
//! (`-b simple-update -R BENCH_TPS`) and a small second table `ticks` updated every 100 ms.
//!
//! For each copy it prints: the time until the table is whole on the destination; the largest
//! `age(backend_xmin)` on the source while it ran (in transactions, and in seconds at the
//! load's rate); the most WAL the slot retained; and the lag of `ticks` on the destination
//! (p50/p95 of `now() - at` sampled every 250 ms; Postgres destinations only). Then one chunked
//! copy is killed with SIGKILL at ~60 % and restarted: the chunks recorded before the kill, the
//! first chunk after it, and the rows recorded at the end (each key once: equal to the table).
//!
//! `BENCH_SCALE` (50 = 5M rows), `BENCH_REPS` (3), `BENCH_CHUNK_ROWS` (the default 50000),
//! `BENCH_TPS` (200), `BENCH_DEST` (`postgres`, `duckdb` or `clickhouse`: a local server from
//! chdb-core, as the tests start).

#[path = "common.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdc::destination::clickhouse::local::LocalClickHouse;
use cdc::local_pg::LocalPostgres;
use common::{cdc_binary, env_or, median, pgbench, pgbench_command, psql, query, query_in};

struct Run {
    seconds: f64,
    max_xmin_age: i64,
    max_retained_mib: f64,
    lag_p50: f64,
    lag_p95: f64,
}

struct Bench {
    source: LocalPostgres,
    dest: LocalPostgres,
    duckdb: bool,
    clickhouse: Option<LocalClickHouse>,
    chunk_rows: u64,
    rows: i64,
    dir: std::path::PathBuf,
}

fn main() {
    let scale = env_or("BENCH_SCALE", 50);
    let reps = env_or("BENCH_REPS", 3) as usize;
    let tps = env_or("BENCH_TPS", 200);
    let (source, dest) = common::start_servers(
        &["shared_buffers = '512MB'", "max_wal_size = '8GB'"],
        (true, false),
    );
    eprintln!("generating pgbench scale {scale}...");
    pgbench(
        &source,
        "postgres",
        &["-i", "-q", "-I", "dtgvp", "-s", &scale.to_string()],
    );
    psql(
        &source,
        "postgres",
        "CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL); INSERT INTO ticks VALUES (1, clock_timestamp())",
    );
    let dir = std::env::temp_dir().join(format!("cdc-bench-chunked-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bench = Bench {
        rows: scale as i64 * 100_000,
        source,
        dest,
        duckdb: std::env::var("BENCH_DEST").is_ok_and(|d| d == "duckdb"),
        clickhouse: std::env::var("BENCH_DEST")
            .is_ok_and(|d| d == "clickhouse")
            .then(|| LocalClickHouse::start().expect("local ClickHouse")),
        chunk_rows: env_or("BENCH_CHUNK_ROWS", 50_000),
        dir,
    };
    let load = pgbench_command(
        &bench.source,
        "postgres",
        &[
            "-n",
            "-c",
            "2",
            "-j",
            "1",
            "-T",
            "100000",
            "-R",
            &tps.to_string(),
            "-b",
            "simple-update",
        ],
    )
    .spawn()
    .unwrap();
    let _load = Kill(load);
    let _ticker = ticker(&bench.source);
    let (mut exported, mut chunked) = (vec![], vec![]);
    for rep in 0..reps {
        for mode in ["exported", "chunked"] {
            let r = bench.copy(mode, &format!("{mode}{rep}"), None);
            println!(
                "{mode:>8} rep {rep}: {:.2} s; max xmin age {} xids (~{:.1} s of load); slot retained up to {:.0} MiB; ticks lag p50 {:.1} s p95 {:.1} s",
                r.seconds, r.max_xmin_age, r.max_xmin_age as f64 / tps as f64, r.max_retained_mib, r.lag_p50, r.lag_p95
            );
            if mode == "exported" {
                exported.push(r)
            } else {
                chunked.push(r)
            }
        }
    }
    let m = |v: &[Run], f: fn(&Run) -> f64| median(v.iter().map(f).collect());
    let (e, c) = (m(&exported, |r| r.seconds), m(&chunked, |r| r.seconds));
    println!("median copy: exported {e:.2} s, chunked {c:.2} s: chunked runs at {:.2}x the exported copy's speed", e / c);
    for (name, runs) in [("exported", &exported), ("chunked", &chunked)] {
        println!(
            "median {name}: max xmin age {:.0} xids, slot retained {:.0} MiB, ticks lag p95 {:.1} s",
            m(runs, |r| r.max_xmin_age as f64),
            m(runs, |r| r.max_retained_mib),
            m(runs, |r| r.lag_p95)
        );
    }
    bench.copy("chunked", "killed", Some(0.6));
    let _ = std::fs::remove_dir_all(&bench.dir);
}

/// Updates `ticks.at` every 100 ms until dropped.
fn ticker(source: &LocalPostgres) -> Kill {
    let sql = "UPDATE ticks SET at = clock_timestamp() WHERE id = 1; SELECT pg_sleep(0.1)";
    let mut script = String::new();
    for _ in 0..200_000 {
        script.push_str(sql);
        script.push_str(";\n");
    }
    let path = std::env::temp_dir().join(format!("cdc-bench-ticks-{}.sql", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let mut cmd = common::psql_command(source, "postgres", "SELECT 1");
    // psql runs -c then -f in order.
    cmd.args(["-f", path.to_str().unwrap()])
        .stdout(Stdio::null());
    Kill(cmd.spawn().unwrap())
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(config: &std::path::Path) -> serde_json::Value {
    let out = Command::new(cdc_binary())
        .args(["--config", config.to_str().unwrap(), "status", "--json"])
        .env("CDC_LOG", "error")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn accounts_copy(s: &serde_json::Value) -> Option<&serde_json::Value> {
    s["tables"]
        .as_array()?
        .iter()
        .find(|t| t["source"] == "public.pgbench_accounts")
        .map(|t| &t["copy"])
}

impl Bench {
    fn config(&self, mode: &str, name: &str) -> std::path::PathBuf {
        let url = if self.duckdb {
            format!(
                "duckdb://{}",
                self.dir.join(format!("{name}.duckdb")).display()
            )
        } else if let Some(ch) = &self.clickhouse {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "--fail-with-body",
                    "--data-binary",
                    &format!("CREATE DATABASE {name}"),
                ])
                .arg(format!("http://127.0.0.1:{}/", ch.port()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            ch.url(name)
        } else {
            psql(&self.dest, "postgres", &format!("CREATE DATABASE {name}"));
            self.dest.url(name)
        };
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[source]\nurl = {:?}\nslot = \"bench_{name}\"\npublication = \"bench_{name}\"\n\
                 [destination]\nurl = {url:?}\n[status]\nlisten = \"127.0.0.1:0\"\n\
                 [[tables]]\nsource = \"public.pgbench_accounts\"\n[[tables]]\nsource = \"public.ticks\"\n\
                 [snapshot]\nmode = {mode:?}\nchunk_rows = {}\n",
                self.source.url("postgres"),
                self.chunk_rows
            ),
        )
        .unwrap();
        path
    }

    fn start(&self, config: &std::path::Path, name: &str) -> Kill {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        Kill(
            Command::new(cdc_binary())
                .args(["--config", config.to_str().unwrap(), "run"])
                .env("CDC_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// One copy by `cdc run` in `mode`; with `kill_at`, SIGKILL at that share of the chunks.
    fn copy(&self, mode: &str, name: &str, kill_at: Option<f64>) -> Run {
        let config = self.config(mode, name);
        let started = Instant::now();
        let mut run = self.start(&config, name);
        let (mut xmin, mut retained, mut lags) = (0i64, 0f64, vec![]);
        let slot = format!("bench_{name}");
        let mut killed = false;
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let s = status(&config);
            let done = match mode {
                "chunked" => accounts_copy(&s).is_some_and(|c| c["done"] == true),
                _ => s["snapshot_complete"] == true,
            };
            xmin = xmin.max(
                query(
                    &self.source,
                    "SELECT coalesce(max(age(backend_xmin)), 0) FROM pg_stat_activity",
                )
                .parse()
                .unwrap_or(0),
            );
            let kept: f64 = query(&self.source, &format!(
                "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0) FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .parse()
            .unwrap_or(0.0);
            retained = retained.max(kept / 1048576.0);
            if !self.duckdb && self.clickhouse.is_none() {
                let lag = query_in(
                    &self.dest,
                    name,
                    "SELECT extract(epoch FROM clock_timestamp() - at) FROM public.ticks",
                )
                .parse()
                .unwrap_or(started.elapsed().as_secs_f64());
                lags.push(lag);
            }
            if let (Some(share), Some(c), false) = (kill_at, accounts_copy(&s), killed) {
                let (k, of) = (
                    c["chunks_done"].as_f64().unwrap_or(0.0),
                    c["chunks_estimated"].as_f64().unwrap_or(1.0),
                );
                if k >= share * of {
                    let _ = run.0.kill();
                    let _ = run.0.wait();
                    killed = true;
                    println!("killed (SIGKILL) at {k} of ~{of} chunks recorded; restarting");
                    run = self.start(&config, &format!("{name}-after"));
                }
            }
            if done {
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        if let Some(c) = accounts_copy(&status(&config)) {
            if kill_at.is_some() {
                println!(
                    "after the restart: {} chunks, {} rows recorded (the table has {}): each key counted once",
                    c["chunks_done"], c["rows"], self.rows
                );
            }
        }
        drop(run);
        lags.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            lags.get(((lags.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        let _ = Command::new(cdc_binary())
            .args(["--config", config.to_str().unwrap(), "teardown", "--yes"])
            .env("CDC_LOG", "error")
            .output();
        if !self.duckdb && self.clickhouse.is_none() {
            psql(
                &self.dest,
                "postgres",
                &format!("DROP DATABASE {name} WITH (FORCE)"),
            );
        }
        Run {
            seconds,
            max_xmin_age: xmin,
            max_retained_mib: retained,
            lag_p50: pct(0.5),
            lag_p95: pct(0.95),
        }
    }
}
