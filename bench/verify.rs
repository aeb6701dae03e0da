//! `cargo bench --bench verify`: `cdc verify` against a naive full fetch-and-compare (both
//! tables streamed to the client in key order by `psql COPY ... TO STDOUT` and merged), on
//! `BENCH_SCALE` × 100,000 pgbench_accounts rows (default 50 = 5 million), in one run:
//!
//! (a) equal tables; (b) the same with 100 scattered differences (50 changed values, 25 rows
//!     missing from the destination, 25 extra in it).
//!
//! Prints each repetition, medians, the time ratio, rows transferred by each, and cdc's
//! peak RSS. `BENCH_REPS` (default 3) repetitions, alternating the two.

#[path = "common.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use cdc::local_pg::LocalPostgres;
use common::{
    cdc_binary, env_or, median, pgbench, psql, psql_copy_out, start_servers, timed_status,
};

/// Stream both tables in key order and merge them: (seconds, rows transferred, differences).
fn naive(source: &LocalPostgres, dest: &LocalPostgres) -> (f64, u64, u64) {
    let query = "SELECT * FROM pgbench_accounts ORDER BY aid";
    let start = std::time::Instant::now();
    let mut a = psql_copy_out(source, "postgres", query)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut b = psql_copy_out(dest, "postgres", query)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ra = BufReader::with_capacity(1 << 20, a.stdout.take().unwrap()).lines();
    let mut rb = BufReader::with_capacity(1 << 20, b.stdout.take().unwrap()).lines();
    let key = |l: &String| -> i64 { l.split('\t').next().unwrap().parse().unwrap() };
    let (mut la, mut lb) = (ra.next().map(Result::unwrap), rb.next().map(Result::unwrap));
    let (mut rows, mut diffs) = (0u64, 0u64);
    rows += la.is_some() as u64 + lb.is_some() as u64;
    loop {
        let (adv_a, adv_b) = match (&la, &lb) {
            (None, None) => break,
            (Some(_), None) => (true, false),
            (None, Some(_)) => (false, true),
            (Some(x), Some(y)) => match key(x).cmp(&key(y)) {
                std::cmp::Ordering::Less => (true, false),
                std::cmp::Ordering::Greater => (false, true),
                std::cmp::Ordering::Equal => {
                    if x != y {
                        diffs += 1;
                    }
                    (true, true)
                }
            },
        };
        if adv_a != adv_b {
            diffs += 1; // a row on one side only
        }
        if adv_a {
            la = ra.next().map(Result::unwrap);
            rows += la.is_some() as u64;
        }
        if adv_b {
            lb = rb.next().map(Result::unwrap);
            rows += lb.is_some() as u64;
        }
    }
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    (start.elapsed().as_secs_f64(), rows, diffs)
}

/// Run `cdc verify`: (seconds, peak RSS KiB, rows fetched, differences).
fn ours(
    source: &LocalPostgres,
    dest: &LocalPostgres,
    report: &std::path::Path,
) -> (f64, u64, u64, u64) {
    let mut cmd = Command::new(cdc_binary());
    cmd.args([
        "--log-format",
        "json",
        "verify",
        "--source",
        &source.url("postgres"),
        "--destination",
        &dest.url("postgres"),
        "--table",
        "public.pgbench_accounts",
        "--format",
        "json",
        "--output",
        report.to_str().unwrap(),
    ])
    .env("CDC_LOG", "warn")
    .stdout(Stdio::null());
    let (secs, peak) = timed_status(&mut cmd, &[0, 1]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    let t = &json["tables"][0];
    let diffs = ["missing", "different", "extra"]
        .iter()
        .map(|k| t[k].as_array().unwrap().len() as u64)
        .sum();
    (
        secs,
        peak,
        t["stats"]["rows_fetched"].as_u64().unwrap(),
        diffs,
    )
}

fn main() {
    let scale = env_or("BENCH_SCALE", 50);
    let reps = env_or("BENCH_REPS", 3) as usize;
    let rows = scale * 100_000;
    let (source, dest) = start_servers(&["shared_buffers = '1GB'"], (false, false));
    eprintln!("generating {rows} pgbench_accounts rows on both servers...");
    for server in [&source, &dest] {
        pgbench(server, "postgres", &["-i", "-q", "-s", &scale.to_string()]);
        psql(server, "postgres", "VACUUM ANALYZE pgbench_accounts");
    }
    let report = std::env::temp_dir().join(format!("cdc-bench-verify-{}.json", std::process::id()));
    cdc_binary(); // fail now, not after generating the data, when it is not built

    for (label, expected) in [("equal", 0u64), ("100 differences", 100)] {
        if expected > 0 {
            // Scattered over the key space: every (rows/100)th key.
            let step = rows / 100;
            let pick = |residue: u64| {
                (0..100u64)
                    .filter(|k| k % 4 == residue)
                    .map(|k| (k * step + 17).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            psql(
                &dest,
                "postgres",
                &format!(
                    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN ({}, {})",
                    pick(0),
                    pick(1)
                ),
            );
            psql(
                &dest,
                "postgres",
                &format!("DELETE FROM pgbench_accounts WHERE aid IN ({})", pick(2)),
            );
            psql(
                &source,
                "postgres",
                &format!("DELETE FROM pgbench_accounts WHERE aid IN ({})", pick(3)),
            );
        }
        let (mut naive_t, mut ours_t, mut peaks) = (vec![], vec![], vec![]);
        let (mut naive_rows, mut ours_rows) = (0, 0);
        for rep in 1..=reps {
            let (nt, nr, nd) = naive(&source, &dest);
            assert_eq!(nd, expected, "naive comparison found {nd} differences");
            let (ot, peak, or, od) = ours(&source, &dest, &report);
            assert_eq!(od, expected, "cdc verify found {od} differences");
            eprintln!(
                "{label} rep {rep}: naive {nt:.2}s ({nr} rows), cdc verify {ot:.2}s ({or} rows fetched, peak RSS {:.1} MiB)",
                peak as f64 / 1024.0
            );
            naive_t.push(nt);
            ours_t.push(ot);
            peaks.push(peak);
            naive_rows = nr;
            ours_rows = or;
        }
        let (n, o) = (median(naive_t), median(ours_t));
        println!("{label} ({rows} rows per side):");
        println!("  naive fetch-and-compare: median {n:.2}s, {naive_rows} rows transferred");
        println!("  cdc verify:              median {o:.2}s, {ours_rows} rows transferred, peak RSS {:.1} MiB",
            *peaks.iter().max().unwrap() as f64 / 1024.0);
        println!(
            "  time ratio cdc/naive: {:.2}; rows ratio: {:.6}",
            o / n,
            ours_rows as f64 / naive_rows as f64
        );
    }
    let _ = std::fs::remove_file(&report);
}
