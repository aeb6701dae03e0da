//! `cargo bench --bench stream`: `cdc run` against Postgres's own subscriber on the same
//! workloads, in one run, on the same servers.
//!
//! (a) Backlog: `BENCH_TXNS` pgbench TPC-B transactions (4 row changes each) written while no
//!     replicator runs; then each replicator alone drains it, and pg_recvlogical drains a third
//!     pgoutput slot to /dev/null (the decode ceiling: the source's work alone). Done when the destination has
//!     every pgbench_history row (insert-only, one per transaction, applied in commit order).
//! (b) One transaction updating every pgbench_accounts row (`BENCH_SCALE` × 100,000), plus a
//!     marker row: time from the source commit until the marker is visible on the destination
//!     (each replicator commits the transaction atomically).
//!
//! Prints changes per second, catch-up times, their ratios, `cdc run`'s peak RSS and CPU time,
//! and the CPU of the destination's writing processes by kind (the native subscriber's leader
//! and, on Postgres 16+, its parallel apply workers; cdc's sessions); for (a) also the CPU of
//! the source's walsender that decodes and sends the backlog, and how busy the machine was. `PG_BINDIR` picks the
//! servers' major (the binaries scripts/pg-matrix unpacks). `BENCH_LOG` sets cdc's log filter (default `warn`; its log goes to stderr);
//! `BENCH_TXNS=0` skips (a).

#[path = "common.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdc::local_pg::SUPERUSER;
use common::{
    bench_log, busy_between, env_or, machine_cpu, pgbench, pid_cpu_seconds, rss_kib, start_servers,
};

/// User plus system CPU seconds a running child has used.
fn cpu_seconds(child: &Child) -> f64 {
    pid_cpu_seconds(child.id())
}

/// The destination server's processes writing into `db` (client backends, and every logical
/// replication process: Postgres 18's subscriber applies a streamed transaction in a parallel
/// worker while its leader idles), each with its kind and the CPU seconds it has used so far.
/// Sampled at every poll and kept at the highest reading, so a worker that exits before the end
/// still counts.
#[derive(Default)]
struct Writers(std::collections::HashMap<i32, (String, f64)>);

impl Writers {
    /// `db`: the destination database whose writers to follow; `None`: the source's
    /// walsenders (the decoding side of a drain).
    async fn sample(&mut self, admin: &tokio_postgres::Client, db: Option<&str>) {
        let rows = match db {
            Some(db) => admin.query(
                "SELECT pid, backend_type FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
                 AND (backend_type = 'client backend' OR backend_type LIKE 'logical replication%')",
                &[&db],
            ).await,
            None => admin.query(
                "SELECT pid, backend_type FROM pg_stat_activity WHERE backend_type = 'walsender'",
                &[],
            ).await,
        };
        let Ok(rows) = rows else {
            return;
        };
        for r in rows {
            let pid: i32 = r.get(0);
            let cpu = pid_cpu_seconds(pid as u32);
            let e = self.0.entry(pid).or_insert_with(|| (r.get(1), 0.0));
            e.1 = e.1.max(cpu);
        }
    }

    /// CPU seconds used since `before`, by kind of process (processes new since then count
    /// from zero).
    fn since(&self, before: &Writers) -> Vec<(String, f64)> {
        let mut by_kind: std::collections::BTreeMap<String, f64> = Default::default();
        for (pid, (kind, cpu)) in &self.0 {
            let start = before.0.get(pid).map_or(0.0, |b| b.1);
            *by_kind.entry(kind.clone()).or_default() += cpu - start;
        }
        by_kind.into_iter().filter(|(_, c)| *c >= 0.005).collect()
    }
}

/// What one (b) run measured besides its catch-up time.
struct Phases {
    update_s: f64,
    during_update_busy: f64,
    after_commit_busy: f64,
    /// The destination's writing processes: CPU from the UPDATE's start, and after its commit.
    writers_whole: Vec<(String, f64)>,
    writers_after_commit: Vec<(String, f64)>,
}

fn kinds(v: &[(String, f64)]) -> String {
    let total: f64 = v.iter().map(|(_, c)| c).sum();
    let parts: Vec<String> = v.iter().map(|(k, c)| format!("{k} {c:.1}")).collect();
    format!("{total:.1} CPU-s ({})", parts.join(", "))
}

impl Phases {
    fn print(&self, who: &str, catch_up: f64) {
        println!(
            "    {who}: source UPDATE {:.1}s with the machine {:.0}% busy; after its commit {:.0}% busy. \
             Destination writers: {} from the UPDATE's start, {} in the {catch_up:.1}s after the commit",
            self.update_s,
            self.during_update_busy * 100.0,
            self.after_commit_busy * 100.0,
            kinds(&self.writers_whole),
            kinds(&self.writers_after_commit),
        );
    }
}

const Q_MARKER: &str = "SELECT bbalance::int8 FROM public.pgbench_branches WHERE bid = 1";

/// (b) once: the big transaction with `marker`, waited for on `dest` (database `db`); returns
/// the catch-up time, where the time went, and cdc's peak RSS meanwhile.
async fn run_big(
    src: &std::sync::Arc<tokio_postgres::Client>,
    admin: &tokio_postgres::Client,
    dest: &tokio_postgres::Client,
    db: &str,
    marker: i64,
    cdc: Option<&Child>,
) -> (f64, Phases, u64) {
    let big = format!(
        "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 1; \
         UPDATE pgbench_branches SET bbalance = {marker} WHERE bid = 1; COMMIT;"
    );
    let mut writers = Writers::default();
    writers.sample(admin, Some(db)).await;
    let at_start = Writers(writers.0.clone());
    let before = machine_cpu();
    let start = Instant::now();
    // The UPDATE on a task of its own, so the destination's writers are sampled while it runs
    // (a parallel apply worker works then).
    let update = {
        let src = src.clone();
        tokio::spawn(async move { src.batch_execute(&big).await.unwrap() })
    };
    while !update.is_finished() {
        writers.sample(admin, Some(db)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    update.await.unwrap();
    let update_s = start.elapsed().as_secs_f64();
    let at_commit = machine_cpu();
    writers.sample(admin, Some(db)).await;
    let at_commit_writers = Writers(writers.0.clone());
    let mut peak = 0;
    let catch_up = until(
        dest,
        Q_MARKER,
        marker,
        cdc,
        &mut peak,
        &mut [(admin, Some(db), &mut writers)],
    )
    .await;
    writers.sample(admin, Some(db)).await;
    let phases = Phases {
        update_s,
        during_update_busy: busy_between(before, at_commit).1,
        after_commit_busy: busy_between(at_commit, machine_cpu()).1,
        writers_whole: writers.since(&at_start),
        writers_after_commit: writers.since(&at_commit_writers),
    };
    (catch_up, phases, peak)
}

/// What one backlog drain measured: seconds until the last history row landed, how busy the
/// machine was meanwhile, and the CPU of who worked: the source's walsender (decoding and
/// sending) and the destination's writers in `db`.
struct Drain {
    seconds: f64,
    busy: f64,
    walsender: Writers,
    writers: Writers,
}

/// Wait until `dest` (database `db`) has all `history` rows, watching the drain's processes.
async fn drain(
    src: &tokio_postgres::Client,
    admin: &tokio_postgres::Client,
    dest: &tokio_postgres::Client,
    db: &str,
    history: i64,
    cdc: Option<&Child>,
    peak: &mut u64,
) -> Drain {
    let (mut walsender, mut writers) = (Writers::default(), Writers::default());
    let before = machine_cpu();
    let seconds = until(
        dest,
        "SELECT count(*) FROM public.pgbench_history",
        history,
        cdc,
        peak,
        &mut [(src, None, &mut walsender), (admin, Some(db), &mut writers)],
    )
    .await;
    Drain {
        seconds,
        busy: busy_between(before, machine_cpu()).1,
        walsender,
        writers,
    }
}

/// Poll `query` (one bigint) on `client` until it returns `want`; seconds waited.
async fn until(
    client: &tokio_postgres::Client,
    query: &str,
    want: i64,
    mut cdc: Option<&Child>,
    peak: &mut u64,
    watched: &mut [(&tokio_postgres::Client, Option<&str>, &mut Writers)],
) -> f64 {
    let start = Instant::now();
    loop {
        for (client, db, w) in watched.iter_mut() {
            w.sample(client, *db).await;
        }
        if let Ok(r) = client.query_one(query, &[]).await {
            if r.get::<_, i64>(0) == want {
                return start.elapsed().as_secs_f64();
            }
        }
        if let Some(c) = cdc.as_mut() {
            *peak = (*peak).max(rss_kib(c));
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "gave up waiting for {query}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() {
    let scale = env_or("BENCH_SCALE", 10);
    let txns = env_or("BENCH_TXNS", 20_000);
    let (source, dest) = start_servers(
        &["shared_buffers = '512MB'", "max_wal_size = '8GB'"],
        (true, true),
    );
    let src = std::sync::Arc::new(
        cdc::pg::connect(&source.conninfo("postgres"))
            .await
            .unwrap(),
    );
    let admin = cdc::pg::connect(&dest.conninfo("postgres")).await.unwrap();
    admin.batch_execute("CREATE DATABASE native").await.unwrap();
    admin.batch_execute("CREATE DATABASE viacdc").await.unwrap();
    let native = cdc::pg::connect(&dest.conninfo("native")).await.unwrap();
    let viacdc = cdc::pg::connect(&dest.conninfo("viacdc")).await.unwrap();

    eprintln!(
        "initialising pgbench scale {scale} on the source and the native subscriber's database..."
    );
    pgbench(&source, "postgres", &["-i", "-q", "-s", &scale.to_string()]);
    pgbench(&dest, "native", &["-i", "-q", "-s", &scale.to_string()]);
    src.batch_execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL; CREATE PUBLICATION native FOR TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history").await.unwrap();
    native
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION native CONNECTION 'host=127.0.0.1 port={} user={SUPERUSER} password={} dbname=postgres' \
             PUBLICATION native WITH (copy_data = false, enabled = false)",
            source.port(),
            source.password()
        ))
        .await
        .unwrap();
    let config = std::env::temp_dir().join("cdc-bench-stream.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = {:?}\nslot = \"bench\"\npublication = \"bench\"\n[destination]\nurl = {:?}\n\
             [[tables]]\nsource = \"public.pgbench_accounts\"\n[[tables]]\nsource = \"public.pgbench_branches\"\n\
             [[tables]]\nsource = \"public.pgbench_tellers\"\n[[tables]]\nsource = \"public.pgbench_history\"\n",
            source.url("postgres"),
            dest.url("viacdc")
        ),
    )
    .unwrap();
    let cdc_bin = common::cdc_binary();
    let cdc_cmd = |cmd: &str| {
        let mut c = Command::new(&cdc_bin);
        c.args([
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
            cmd,
        ])
        .env("CDC_LOG", bench_log())
        .stdout(Stdio::null());
        c
    };
    assert!(
        cdc_cmd("snapshot").status().unwrap().success(),
        "cdc snapshot failed"
    );

    // (a) the backlog, written while neither replicator runs. A third slot on the same
    // publication measures the decode ceiling: pg_recvlogical draining it to /dev/null, so
    // the walsender decodes and sends and nothing applies.
    if txns > 0 {
        src.batch_execute(
            "SELECT pg_create_logical_replication_slot('ceiling', 'pgoutput'); \
             SELECT pg_create_logical_replication_slot('ceiling_sql', 'pgoutput')",
        )
        .await
        .unwrap();
    }
    if txns > 0 {
        eprintln!("writing a backlog of {txns} pgbench transactions...");
        pgbench(
            &source,
            "postgres",
            &[
                "-n",
                "-c",
                "4",
                "-j",
                "2",
                "-t",
                &(txns / 4).max(1).to_string(),
            ],
        );
    }
    let history: i64 = src
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    let changes = history as f64 * 4.0;
    let mut peak = 0;
    native
        .batch_execute("ALTER SUBSCRIPTION native ENABLE")
        .await
        .unwrap();
    let native_drain = drain(&src, &admin, &native, "native", history, None, &mut peak).await;
    let native_a = native_drain.seconds;
    native
        .batch_execute("ALTER SUBSCRIPTION native DISABLE")
        .await
        .unwrap();
    let ceiling_a = if txns > 0 {
        let end: String = src
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let start = Instant::now();
        let ok = Command::new(cdc::local_pg::client_binary("pg_recvlogical").unwrap())
            .args([
                "--start",
                "--slot",
                "ceiling",
                "--no-loop",
                "-f",
                "/dev/null",
            ])
            .args([
                "-E",
                &end,
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=bench",
            ])
            .args([
                "-d",
                &format!(
                    "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres",
                    source.port()
                ),
            ])
            .env("PGPASSWORD", source.password())
            .status()
            .unwrap();
        assert!(ok.success(), "pg_recvlogical failed");
        let took = start.elapsed().as_secs_f64();
        src.batch_execute("SELECT pg_drop_replication_slot('ceiling')")
            .await
            .unwrap();
        // The same decoding inside the server, without a connection to send it over.
        let start = Instant::now();
        src.batch_execute(
            "SELECT count(*) FROM pg_logical_slot_get_binary_changes('ceiling_sql', NULL, NULL, \
             'proto_version', '1', 'publication_names', 'bench'); \
             SELECT pg_drop_replication_slot('ceiling_sql')",
        )
        .await
        .unwrap();
        (took, start.elapsed().as_secs_f64())
    } else {
        (0.0, 0.0)
    };
    let (ceiling_a, decode_sql_a) = ceiling_a;
    let mut child = cdc_cmd("run").spawn().unwrap();
    let cdc_drain = drain(
        &src,
        &admin,
        &viacdc,
        "viacdc",
        history,
        Some(&child),
        &mut peak,
    )
    .await;
    let cdc_a = cdc_drain.seconds;
    let cpu_a = cpu_seconds(&child);
    child.kill().unwrap();
    child.wait().unwrap();

    // (b) one big transaction, each replicator running alone and caught up beforehand.
    let rows = scale * 100_000;
    native
        .batch_execute("ALTER SUBSCRIPTION native ENABLE")
        .await
        .unwrap();
    let (native_b, native_phases, _) = run_big(&src, &admin, &native, "native", 111, None).await;
    native
        .batch_execute("ALTER SUBSCRIPTION native DISABLE")
        .await
        .unwrap();
    let mut child = cdc_cmd("run").spawn().unwrap();
    until(&viacdc, Q_MARKER, 111, Some(&child), &mut peak, &mut []).await; // catch up on the first one
    let cpu_before_b = cpu_seconds(&child);
    let (cdc_b, cdc_phases, peak_b) =
        run_big(&src, &admin, &viacdc, "viacdc", 222, Some(&child)).await;
    peak = peak.max(peak_b);
    let cpu_b = cpu_seconds(&child) - cpu_before_b;
    child.kill().unwrap();
    child.wait().unwrap();
    native
        .batch_execute("ALTER SUBSCRIPTION native SET (slot_name = NONE); DROP SUBSCRIPTION native")
        .await
        .ok();

    if txns > 0 {
        println!("(a) backlog of {history} transactions ({changes} row changes):");
        println!(
            "    native subscriber: {native_a:.2}s, {:.0} changes/s",
            changes / native_a
        );
        println!(
            "    cdc run:           {cdc_a:.2}s, {:.0} changes/s",
            changes / cdc_a
        );
        println!(
            "    decode ceiling (pg_recvlogical to /dev/null): {ceiling_a:.2}s, {:.0} changes/s",
            changes / ceiling_a
        );
        println!(
            "    decoding alone (pg_logical_slot_get_binary_changes, no network): {decode_sql_a:.2}s, {:.0} changes/s",
            changes / decode_sql_a
        );
        println!("    rate ratio cdc/native: {:.2}", native_a / cdc_a);
        println!(
            "    rate ratio cdc/ceiling: {:.2} (cdc/decoding alone {:.2})",
            ceiling_a / cdc_a,
            decode_sql_a / cdc_a
        );
        println!("    cdc run CPU time: {cpu_a:.2}s");
        for (who, d) in [
            ("native subscriber", &native_drain),
            ("cdc run", &cdc_drain),
        ] {
            let none = Writers::default();
            println!(
                "    {who}: machine {:.0}% busy; source walsender {}; destination writers {}",
                d.busy * 100.0,
                kinds(&d.walsender.since(&none)),
                kinds(&d.writers.since(&none)),
            );
        }
    }
    println!("(b) one transaction updating {rows} rows, commit to visible (and UPDATE start to visible):");
    println!(
        "    native subscriber: {native_b:.2}s ({:.2}s)",
        native_b + native_phases.update_s
    );
    println!(
        "    cdc run:           {cdc_b:.2}s ({:.2}s)",
        cdc_b + cdc_phases.update_s
    );
    println!(
        "    time ratio cdc/native: {:.2} ({:.2} from the UPDATE's start)",
        cdc_b / native_b,
        (cdc_b + cdc_phases.update_s) / (native_b + native_phases.update_s)
    );
    println!("    cdc run CPU time from the UPDATE's start: {cpu_b:.2}s");
    native_phases.print("native subscriber", native_b);
    cdc_phases.print("cdc run", cdc_b);
    println!("cdc run peak RSS: {:.1} MiB", peak as f64 / 1024.0);
}
