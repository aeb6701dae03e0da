//! `cargo bench --bench clickhouse`: the snapshot's row path into ClickHouse against the plain
//! pipe, same run, same servers.
//!
//! Source: pgbench_accounts (`BENCH_SCALE` × 100,000 rows, default 50 = 5M). ClickHouse 26.9
//! from `local_clickhouse`. Each repetition (`BENCH_REPS`, default 3) loads the table into a
//! fresh versioned storage table (`ddl::create_table`) twice:
//! - the pipe: `psql -c "COPY … TO STDOUT (FORMAT csv)" | curl --data-binary @- "…INSERT … FORMAT CSV"`
//!   (our two columns left to their defaults);
//! - cdc's loader: `CopySource` (COPY text) → `tsv::convert` → one streamed INSERT
//!   (`ClickHouseLoader`), in this process.
//!
//! Prints each run, medians, the ratio, and this process's peak RSS after the loader runs.
//! (The destination is not wired into `cdc snapshot` yet, so parallel ranges are not measured.)

#[path = "common.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use cdc::config::TableName;
use cdc::destination::clickhouse::ddl::{create_table, quote, Names};
use cdc::destination::clickhouse::http::Client;
use cdc::destination::clickhouse::load::ClickHouseLoader;
use cdc::destination::clickhouse::url::ClickHouseUrl;
use cdc::destination::{Loader, SnapshotTable};
use cdc::local_clickhouse::LocalClickHouse;
use common::{env_or, median, peak_rss_kib, pgbench, psql_command, start_servers};

fn main() {
    let scale = env_or("BENCH_SCALE", 50);
    let reps = env_or("BENCH_REPS", 3);
    let (source, _unused) = start_servers(&["shared_buffers = '512MB'"], (false, false));
    eprintln!(
        "generating pgbench scale {scale} ({} rows)...",
        scale * 100_000
    );
    pgbench(
        &source,
        "postgres",
        &["-i", "-q", "-I", "dtgvp", "-s", &scale.to_string()],
    );
    let ch = LocalClickHouse::start().expect("local ClickHouse");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let name = TableName::parse("public.pgbench_accounts").unwrap();
    let schema = rt.block_on(async {
        let c = cdc::pg::connect(&source.conninfo("postgres"))
            .await
            .unwrap();
        cdc::snapshot::catalog::prepare_session(&c).await.unwrap();
        cdc::snapshot::catalog::read_table(&c, &name)
            .await
            .unwrap()
            .unwrap()
    });
    let admin = Client::new(ClickHouseUrl::parse(&ch.url("default")).unwrap()).unwrap();
    let (mut pipe, mut ours) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        for (kind, times) in [("pipe", &mut pipe), ("cdc", &mut ours)] {
            let db = format!("{kind}_{rep}");
            let names = Names::of(&db, &name);
            rt.block_on(async {
                for stmt in create_table(&names, &schema, None) {
                    admin.query(&stmt).await.unwrap();
                }
            });
            let started = Instant::now();
            let rows = if kind == "pipe" {
                let mut psql = psql_command(
                    &source,
                    "postgres",
                    "COPY (SELECT aid, bid, abalance, filler FROM public.pgbench_accounts) TO STDOUT (FORMAT csv)",
                )
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
                let query = format!(
                    "INSERT INTO {}.{} (aid, bid, abalance, filler) FORMAT CSV",
                    quote(&db),
                    quote(&names.storage)
                );
                let encoded: String = query
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                let status = Command::new("curl")
                    .args(["-sS", "--fail", "--data-binary", "@-"])
                    .arg(format!("http://127.0.0.1:{}/?query={encoded}", ch.port()))
                    .stdin(psql.stdout.take().unwrap())
                    .status()
                    .unwrap();
                assert!(status.success() && psql.wait().unwrap().success());
                scale * 100_000
            } else {
                rt.block_on(async {
                    let client =
                        Client::new(ClickHouseUrl::parse(&ch.url(&db)).unwrap()).unwrap();
                    let mut loader = ClickHouseLoader::new(client, None);
                    let mut src = cdc::source::copy_out::CopySource::connect(&source.conninfo("postgres"))
                        .await
                        .unwrap();
                    let target = SnapshotTable {
                        schema: &schema,
                        destination: &name,
                    };
                    loader
                        .load(
                            &mut src,
                            "COPY (SELECT aid, bid, abalance, filler FROM public.pgbench_accounts) TO STDOUT",
                            &target,
                            &AtomicU64::new(0),
                        )
                        .await
                        .unwrap()
                })
            };
            let t = started.elapsed().as_secs_f64();
            let count = rt.block_on(async {
                let out = admin
                    .query(&format!(
                        "SELECT count() FROM {}.{} FORMAT TSV",
                        quote(&db),
                        quote(&names.storage)
                    ))
                    .await
                    .unwrap();
                String::from_utf8_lossy(&out).trim().to_owned()
            });
            assert_eq!(count, rows.to_string(), "{kind}: every row arrived");
            println!("rep {rep}: {kind} {t:.2} s ({:.0} rows/s)", rows as f64 / t);
            times.push(t);
            rt.block_on(async {
                admin
                    .query(&format!("DROP DATABASE {}", quote(&db)))
                    .await
                    .unwrap();
            });
        }
    }
    let (p, o) = (median(pipe), median(ours));
    println!(
        "pipe (psql csv | curl): median {p:.2} s; cdc loader: median {o:.2} s; cdc / pipe = {:.2}; peak RSS of this process {} MiB",
        o / p,
        peak_rss_kib(std::process::id()) / 1024
    );
}
