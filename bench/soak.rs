//! `cargo bench --bench soak`: `cdc run` under abuse for `BENCH_SOAK_SECS` (default 1800).
//!
//! pgbench writes to all four pgbench tables (scale `BENCH_SCALE`, default 10;
//! `pgbench_history` has no key: REPLICA IDENTITY FULL, so a change applied twice would show as
//! a duplicate row) while `cdc run` is killed with SIGKILL every 10–40 s at random and
//! restarted; the destination server is restarted (immediate stop) at 1/3 and 2/3 of the time
//! and the source once at 1/2. pgbench is restarted whenever a server restart ends it. At the
//! end the load stops, `cdc run` catches up, and every table is compared on both sides (count
//! and a hash of every row). Prints kills, restarts, cdc's peak RSS and the largest lag seen.

#[path = "common.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdc::local_pg::{client_binary, LocalPostgres, SUPERUSER};
use common::{cdc_binary, env_or, pgbench, psql, rss_kib, start_servers};

fn query(server: &LocalPostgres, sql: &str) -> Option<String> {
    let out = Command::new(client_binary("psql").unwrap())
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-U", SUPERUSER])
        .args([
            "-p",
            &server.port().to_string(),
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", server.password())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Bytes of WAL the slot has not confirmed.
fn lag(source: &LocalPostgres) -> Option<u64> {
    query(
        source,
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = 'soak'",
    )?
    .parse()
    .ok()
}

/// A small xorshift generator: the kill moments need not be cryptographic.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn main() {
    let secs = env_or("BENCH_SOAK_SECS", 1800);
    let scale = env_or("BENCH_SCALE", 10);
    let (source, dest) = start_servers(&["max_wal_size = '4GB'"], (true, false));
    pgbench(&source, "postgres", &["-i", "-q", "-s", &scale.to_string()]);
    psql(
        &source,
        "postgres",
        "ALTER TABLE pgbench_history REPLICA IDENTITY FULL",
    );
    let dir = std::env::temp_dir().join(format!("cdc-bench-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("cdc.toml");
    let tables: String = ["accounts", "branches", "tellers", "history"]
        .iter()
        .map(|t| format!("[[tables]]\nsource = \"public.pgbench_{t}\"\n"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = {:?}\nslot = \"soak\"\npublication = \"soak\"\nread_timeout_ms = 5000\n\
             [destination]\nurl = {:?}\n[status]\nlisten = \"127.0.0.1:0\"\n{tables}",
            source.url("postgres"),
            dest.url("postgres")
        ),
    )
    .unwrap();
    let cdc = |args: &[&str]| {
        let mut c = Command::new(cdc_binary());
        c.arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .args(args)
            .env("CDC_LOG", "error")
            .stdout(Stdio::null());
        c
    };
    assert!(cdc(&["snapshot"]).status().unwrap().success());
    let load = || -> Child {
        Command::new(client_binary("pgbench").unwrap())
            .args([
                "-n",
                "-c",
                "2",
                "-j",
                "2",
                "-T",
                &secs.to_string(),
                "-R",
                "500",
            ])
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                SUPERUSER,
                "-p",
                &source.port().to_string(),
                "postgres",
            ])
            .env("PGPASSWORD", source.password())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rng = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1);
    let started = Instant::now();
    let deadline = Duration::from_secs(secs);
    let mut pgbench_child = load();
    let (mut kills, mut peak, mut max_lag) = (0u32, 0u64, 0u64);
    let mut restarts: Vec<(u64, &str)> = vec![
        (secs / 3, "destination"),
        (secs / 2, "source"),
        (2 * secs / 3, "destination"),
    ];
    while started.elapsed() < deadline {
        let mut run = cdc(&["run"]).spawn().unwrap();
        let until = Instant::now() + Duration::from_secs(10 + rng.below(31));
        while Instant::now() < until && started.elapsed() < deadline {
            peak = peak.max(rss_kib(&run));
            if let Some(l) = lag(&source) {
                max_lag = max_lag.max(l);
            }
            if let Some(i) = restarts
                .iter()
                .position(|(at, _)| started.elapsed().as_secs() >= *at)
            {
                let (_, which) = restarts.remove(i);
                let server = if which == "source" { &source } else { &dest };
                eprintln!(
                    "{:>5}s: restarting the {which}",
                    started.elapsed().as_secs()
                );
                server.stop_server(true).unwrap();
                std::thread::sleep(Duration::from_secs(2));
                server.start_server().unwrap();
            }
            if pgbench_child.try_wait().unwrap().is_some() && started.elapsed() < deadline {
                pgbench_child = load();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(status) = run.try_wait().unwrap() {
            panic!("cdc run exited by itself: {status}");
        }
        run.kill().unwrap();
        run.wait().unwrap();
        kills += 1;
    }
    let _ = pgbench_child.kill();
    let _ = pgbench_child.wait();
    eprintln!("load stopped after {kills} kills; catching up...");
    let mut run = cdc(&["run"]).spawn().unwrap();
    let target = query(&source, "SELECT pg_current_wal_lsn()").unwrap();
    let caught_up = Instant::now();
    loop {
        peak = peak.max(rss_kib(&run));
        let done = query(
            &source,
            &format!("SELECT confirmed_flush_lsn >= '{target}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'soak'"),
        );
        if done.as_deref() == Some("t") {
            break;
        }
        assert!(
            caught_up.elapsed() < Duration::from_secs(600),
            "did not catch up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run.kill().unwrap();
    run.wait().unwrap();
    let mut equal = true;
    for t in ["accounts", "branches", "tellers", "history"] {
        let sql = format!(
            "SELECT count(*) || ':' || coalesce(sum(hashtext(x::text)::bigint), 0) FROM pgbench_{t} x"
        );
        let (s, d) = (query(&source, &sql).unwrap(), query(&dest, &sql).unwrap());
        println!(
            "pgbench_{t}: source {s}, destination {d}{}",
            if s == d { "" } else { "  DIFFERENT" }
        );
        equal &= s == d;
    }
    let history = query(&source, "SELECT count(*) FROM pgbench_history").unwrap();
    println!(
        "soak: {secs}s, {kills} kill -9 of cdc run, destination restarted twice, source once; {history} transactions; \
         every table identical: {equal}; cdc peak RSS {:.1} MiB; largest lag {:.1} MiB",
        peak as f64 / 1024.0,
        max_lag as f64 / 1048576.0
    );
    assert!(equal, "tables differ after the soak");
}
