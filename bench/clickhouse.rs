//! `cargo bench --bench clickhouse`: Postgres → ClickHouse, against the plain pipe and the seed
//! tool, same run, same servers.
//!
//! (a) Snapshot of pgbench_accounts (`BENCH_SCALE` × 100,000 rows, default 50 = 5M) into a
//!     fresh ClickHouse database (ClickHouse 26.9 from `destination::clickhouse::local`):
//!     - the pipe: `psql -c "COPY … TO STDOUT (FORMAT csv)" | curl --data-binary @-
//!       "…INSERT INTO … FORMAT CSV"` into the same versioned table cdc creates;
//!     - `cdc snapshot` (the whole tool: slot, tables, parallel ranges, state);
//!     - `pgwarehouse sync pgbench_accounts` with its ClickHouse backend (PyPI `pgwarehouse`
//!       0.1.5) when installed. It talks to ClickHouse through `clickhouse_driver` on port 9000
//!       (the server listens there for this run) and pipes its CSV files through
//!       `clickhouse-client`, which this machine lacks: a shim on its PATH sends the same
//!       statement and file with curl over HTTP.
//! (b) Backlog drain: `BENCH_TXNS` pgbench TPC-B transactions (3 keyed row changes each to
//!     the replicated tables) written while `cdc run` is stopped; then `cdc run` drains them.
//!     Done when the slot has confirmed the source's WAL position taken after the load.
//!
//! (c) `cdc sync` into ClickHouse against pgwarehouse's own sync, on pgbench_accounts plus an
//!     indexed `updated_at`: a first pass (a whole copy; pgwarehouse `sync`), a `modified` pass
//!     after 1 % of the rows changed (pgwarehouse `--last-modified updated_at sync`), and a
//!     `diff` pass after 0.1 % changed without touching `updated_at` (pgwarehouse can only
//!     `reload`); after each, both views must equal the source. One run each (`BENCH_SYNC=0`
//!     skips it).
//!
//! Prints each repetition, medians, ratios and cdc's peak RSS. `BENCH_REPS` (default 3),
//! `BENCH_TXNS` (default 100,000; 0 skips (b)), `BENCH_LOG` (cdc's log filter), `BENCH_JOBS`
//! (`snapshot.jobs`; unset: one per core).

#[path = "common.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use cdc::destination::clickhouse::local::LocalClickHouse;
use cdc::local_pg::SUPERUSER;
use common::{cdc_binary, drain, env_or, median, pgbench, psql, psql_command, query, timed, which};

fn main() {
    let scale = env_or("BENCH_SCALE", 50);
    let reps = env_or("BENCH_REPS", 3) as usize;
    let txns = env_or("BENCH_TXNS", 100_000);
    let (source, _unused) = common::start_servers(
        &["shared_buffers = '512MB'", "max_wal_size = '8GB'"],
        (true, false),
    );
    eprintln!(
        "generating pgbench scale {scale} ({} rows)...",
        scale * 100_000
    );
    pgbench(
        &source,
        "postgres",
        &["-i", "-q", "-I", "dtgvp", "-s", &scale.to_string()],
    );
    let nine_thousand_free = std::net::TcpListener::bind(("127.0.0.1", 9000)).is_ok();
    let ch = LocalClickHouse::start_with_tcp_port(nine_thousand_free.then_some(9000))
        .expect("local ClickHouse");
    let dir = std::env::temp_dir().join(format!("cdc-bench-clickhouse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("cdc.toml");
    let log = common::bench_log();
    // Every copy here is the exported snapshot's. (c) rewrites every row (distinct
    // `updated_at`), which leaves the heap over `snapshot.chunked_above_bytes`: in `auto` mode
    // the drain's table would then be copied in chunks by `cdc run`, and (b) would time the
    // backlog while that copy was still going on.
    let snapshot_section = format!(
        "[snapshot]\nmode = \"exported\"\n{}",
        std::env::var("BENCH_JOBS")
            .map(|n| format!("jobs = {n}\n"))
            .unwrap_or_default()
    );
    let http = |sql: &str| -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--data-binary", sql])
            .arg(format!("http://127.0.0.1:{}/", ch.port()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(out.status.success(), "{sql}: {text}");
        text
    };
    let write_config = |db: &str, tables: &[&str]| {
        let tables: String = tables
            .iter()
            .map(|t| format!("[[tables]]\nsource = \"public.{t}\"\n"))
            .collect();
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = {:?}\nslot = \"bench\"\npublication = \"bench\"\n[destination]\nurl = {:?}\n\
                 [status]\nlisten = \"127.0.0.1:0\"\n{snapshot_section}{tables}",
                source.url("postgres"),
                ch.url(db),
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
    let fresh = |db: &str| {
        http(&format!("DROP DATABASE IF EXISTS `{db}`"));
        http(&format!("CREATE DATABASE `{db}`"));
        psql(&source, "postgres", "SELECT pg_drop_replication_slot('bench') FROM pg_replication_slots WHERE slot_name = 'bench'");
    };
    let count = |db: &str, table: &str| http(&format!("SELECT count() FROM `{db}`.`{table}`"));

    // The seed tool, when installed: its config and the clickhouse-client shim.
    let pgwarehouse = which("pgwarehouse").filter(|_| nine_thousand_free);
    if pgwarehouse.is_some() {
        ch.listen_tcp().expect("native protocol for pgwarehouse");
        let shim = dir.join("bin/clickhouse-client");
        std::fs::create_dir_all(shim.parent().unwrap()).unwrap();
        std::fs::write(
            &shim,
            format!(
                "#!/usr/bin/env python3\n\
                 # clickhouse-client's -d/--query with the data on stdin, over HTTP (for pgwarehouse).\n\
                 # Over HTTP the data follows the statement: SETTINGS after FORMAT go to the URL.\n\
                 import re, subprocess, sys, urllib.parse\n\
                 a = sys.argv[1:]; db = a[a.index('-d') + 1]; q = a[a.index('--query') + 1].strip().rstrip(';')\n\
                 params = {{'database': db}}\n\
                 m = re.search(r'(FORMAT\\s+\\w+)\\s+SETTINGS\\s+(.*)$', q, re.S)\n\
                 if m:\n\
                 \x20   q = q[:m.start()] + m.group(1)\n\
                 \x20   for kv in m.group(2).split(','):\n\
                 \x20       k, v = kv.split('=', 1); params[k.strip()] = v.strip().strip(\"'\")\n\
                 params['query'] = q\n\
                 url = 'http://127.0.0.1:{}/?' + urllib.parse.urlencode(params)\n\
                 data = [] if sys.stdin.isatty() else ['--data-binary', '@-']\n\
                 sys.exit(subprocess.run(['curl', '-sS', '--fail-with-body', '-X', 'POST'] + data + [url]).returncode)\n",
                ch.port()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let pgw_config = dir.join("pgwarehouse.yml");
    let write_pgw_config = |db: &str| {
        std::fs::write(
            &pgw_config,
            format!(
                "postgres:\n  pghost: 127.0.0.1\n  pgport: {}\n  pgdatabase: postgres\n  pguser: {SUPERUSER}\n  \
                 pgpassword: '{}'\n  pgsslmode: disable\nwarehouse:\n  backend: clickhouse\n  clickhouse_host: 127.0.0.1\n  \
                 clickhouse_user: default\n  clickhouse_password: ''\n  clickhouse_database: {db}\n",
                source.port(),
                source.password(),
            ),
        )
        .unwrap();
    };
    let pgw_command = |bin: &std::path::Path, args: &[&str]| {
        let path = format!(
            "{}:{}",
            dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&pgw_config)
            .arg("--data")
            .arg(dir.join("pgw-data"))
            .args(args)
            .env("PATH", path)
            .env("PGPASSWORD", source.password())
            .env("PGPORT", source.port().to_string())
            .env("PGSSLMODE", "disable")
            .stderr(std::fs::File::create(dir.join("pgwarehouse.log")).unwrap());
        cmd
    };

    // (a) Snapshot.
    let (mut pipe, mut ours, mut pgw, mut peaks) = (vec![], vec![], vec![], vec![]);
    for rep in 1..=reps {
        // The pipe, into the table cdc creates (our two columns take their defaults).
        let db = format!("pipe_{rep}");
        fresh(&db);
        http(&format!(
            "CREATE TABLE `{db}`.`pgbench_accounts__cdc_versions` (aid Int32, bid Nullable(Int32), abalance \
             Nullable(Int32), filler Nullable(String), _cdc_version UInt128, _cdc_deleted UInt8) ENGINE = \
             ReplacingMergeTree(_cdc_version, _cdc_deleted) ORDER BY (aid)"
        ));
        let started = Instant::now();
        let mut copy = psql_command(
            &source,
            "postgres",
            "COPY pgbench_accounts TO STDOUT (FORMAT csv)",
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let insert = format!("INSERT INTO `{db}`.`pgbench_accounts__cdc_versions` (aid, bid, abalance, filler) FORMAT CSV");
        let status = Command::new("curl")
            .args(["-sS", "--fail", "--data-binary", "@-"])
            .arg(format!(
                "http://127.0.0.1:{}/?query={}",
                ch.port(),
                encode(&insert)
            ))
            .stdin(copy.stdout.take().unwrap())
            .status()
            .unwrap();
        assert!(status.success() && copy.wait().unwrap().success());
        let t = started.elapsed().as_secs_f64();
        assert_eq!(
            count(&db, "pgbench_accounts__cdc_versions"),
            (scale * 100_000).to_string()
        );
        eprintln!("rep {rep}: pipe {t:.2}s");
        pipe.push(t);

        let db = format!("cdc_{rep}");
        fresh(&db);
        write_config(&db, &["pgbench_accounts"]);
        let (t, peak) = timed(cdc(&["snapshot", "--force"]));
        assert_eq!(
            count(&db, "pgbench_accounts"),
            (scale * 100_000).to_string()
        );
        eprintln!(
            "rep {rep}: cdc snapshot {t:.2}s (peak RSS {:.1} MiB)",
            peak as f64 / 1024.0
        );
        ours.push(t);
        peaks.push(peak);

        if let Some(bin) = &pgwarehouse {
            let db = format!("pgw_{rep}");
            fresh(&db);
            write_pgw_config(&db);
            let _ = std::fs::remove_dir_all(dir.join("pgw-data"));
            let cmd = pgw_command(bin, &["sync", "pgbench_accounts"]);
            let (t, peak) = timed(cmd);
            assert_eq!(
                count(&db, "pgbench_accounts"),
                (scale * 100_000).to_string(),
                "pgwarehouse loaded every row"
            );
            eprintln!(
                "rep {rep}: pgwarehouse sync {t:.2}s (peak RSS {:.1} MiB)",
                peak as f64 / 1024.0
            );
            pgw.push(t);
        }
    }
    let (p, c) = (median(pipe), median(ours));
    println!(
        "snapshot of {} rows: pipe (psql csv | curl) median {p:.2}s; cdc snapshot median {c:.2}s; cdc / pipe = {:.2}; cdc peak RSS {:.1} MiB",
        scale * 100_000,
        c / p,
        *peaks.iter().max().unwrap() as f64 / 1024.0
    );
    if !pgw.is_empty() {
        let t = median(pgw);
        println!(
            "pgwarehouse sync (ClickHouse backend): median {t:.2}s; cdc is {:.2}x faster",
            t / c
        );
    }

    // (c) Sync passes.
    if env_or("BENCH_SYNC", 1) != 0 {
        let cdc_sync = |args: &[&str]| -> (f64, String) {
            let mut cmd = cdc(args);
            let started = Instant::now();
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                started.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        // Distinct times, as an application's rows have: the pass re-reads the rows at its
        // boundary value, which must be few.
        psql(
            &source,
            "postgres",
            "ALTER TABLE pgbench_accounts ADD COLUMN updated_at timestamptz",
        );
        psql(&source, "postgres", "UPDATE pgbench_accounts SET updated_at = '2024-01-01'::timestamptz + aid * interval '1 second'");
        psql(
            &source,
            "postgres",
            "ALTER TABLE pgbench_accounts ALTER COLUMN updated_at SET NOT NULL",
        );
        psql(&source, "postgres", "VACUUM ANALYZE pgbench_accounts");
        psql(
            &source,
            "postgres",
            "CREATE INDEX ON pgbench_accounts (updated_at)",
        );
        fresh("sync_cdc");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = {:?}\n[destination]\nurl = {:?}\n{snapshot_section}[[tables]]\nsource = \"public.pgbench_accounts\"\n\
                 strategy = \"modified\"\nmodified_column = \"updated_at\"\n",
                source.url("postgres"),
                ch.url("sync_cdc"),
            ),
        )
        .unwrap();
        let same = |db: &str| {
            let src = query(
                &source,
                "SELECT count(*) || ' ' || sum(abalance) FROM pgbench_accounts",
            );
            let dst = http(&format!(
                "SELECT concat(toString(count()), ' ', toString(sum(abalance))) FROM `{db}`.pgbench_accounts FORMAT TSVRaw"
            ));
            assert_eq!(src, dst, "{db} equals the source");
        };
        let pgw_db = "sync_pgw";
        let pgw_run = |args: &[&str]| -> Option<f64> {
            let bin = pgwarehouse.as_ref()?;
            let started = Instant::now();
            let status = pgw_command(bin, args)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "pgwarehouse {args:?}: see {}",
                dir.join("pgwarehouse.log").display()
            );
            Some(started.elapsed().as_secs_f64())
        };
        if pgwarehouse.is_some() {
            fresh(pgw_db);
            write_pgw_config(pgw_db);
            let _ = std::fs::remove_dir_all(dir.join("pgw-data"));
        }
        let mut rows = Vec::new();
        let (t, _) = cdc_sync(&["sync"]);
        same("sync_cdc");
        let p = pgw_run(&["sync", "pgbench_accounts"]);
        rows.push(("first pass (whole copy)", t, p));
        psql(&source, "postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1, updated_at = now() WHERE aid % 100 = 0");
        psql(&source, "postgres", "VACUUM ANALYZE pgbench_accounts");
        let (t, out) = cdc_sync(&["sync", "--json"]);
        same("sync_cdc");
        eprintln!("modified pass: {}", out.trim());
        let p = pgw_run(&["--last-modified", "updated_at", "sync", "pgbench_accounts"]);
        rows.push(("1 % modified", t, p));
        psql(
            &source,
            "postgres",
            "UPDATE pgbench_accounts SET abalance = abalance - 7 WHERE aid % 1000 = 7",
        );
        let (t, out) = cdc_sync(&["sync", "--strategy", "diff", "--json"]);
        same("sync_cdc");
        let moved: serde_json::Value =
            serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
        let updated = &moved["tables"][0]["updated"];
        eprintln!("diff pass moved {updated} rows: {}", out.trim());
        let p = pgw_run(&["reload", "pgbench_accounts"]);
        rows.push(("0.1 % changed, diff (pgwarehouse: reload)", t, p));
        if pgwarehouse.is_some() {
            same(pgw_db);
        }
        for (what, ours, theirs) in rows {
            match theirs {
                Some(p) => println!(
                    "sync into ClickHouse, {what}: cdc {ours:.2}s, pgwarehouse {p:.2}s, cdc is {:.2}x faster",
                    p / ours
                ),
                None => println!("sync into ClickHouse, {what}: cdc {ours:.2}s"),
            }
        }
        println!(
            "diff pass rows updated: {updated} (0.1 % = {})",
            scale * 100
        );
        psql(
            &source,
            "postgres",
            "ALTER TABLE pgbench_accounts DROP COLUMN updated_at",
        );
    }

    // (b) Backlog drain.
    if txns == 0 {
        return;
    }
    let db = "drain";
    fresh(db);
    write_config(
        db,
        &["pgbench_accounts", "pgbench_tellers", "pgbench_branches"],
    );
    timed(cdc(&["snapshot", "--force"]));
    eprintln!("writing a backlog of {txns} pgbench transactions...");
    pgbench(
        &source,
        "postgres",
        &["-n", "-c", "2", "-j", "2", "-t", &(txns / 2).to_string()],
    );
    let target = query(&source, "SELECT pg_current_wal_lsn()");
    drain(&source, cdc(&["run"]), &target, txns * 3);
    let sums = |sql: &str| -> String { http(sql) };
    assert_eq!(
        sums(&format!(
            "SELECT sum(abalance) FROM `{db}`.pgbench_accounts"
        )),
        query(&source, "SELECT sum(abalance) FROM pgbench_accounts"),
        "the drained view equals the source"
    );
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
