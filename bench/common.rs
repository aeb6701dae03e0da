//! Helpers shared by the benchmarks (each bench includes this file as a module): environment
//! knobs, medians, psql/pgbench against a throwaway server, and peak RSS from /proc.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdc::local_pg::{client_binary, LocalPostgres, Options, SUPERUSER};

/// A numeric environment knob.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// cdc's log filter for a bench's runs: `BENCH_LOG`, warnings only by default.
pub fn bench_log() -> String {
    std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A throwaway source and destination with the same `settings`; `logical` says which of the
/// two need `wal_level = logical` (the destination does for the native subscriber's slot).
pub fn start_servers(settings: &[&str], logical: (bool, bool)) -> (LocalPostgres, LocalPostgres) {
    let start = |logical| {
        LocalPostgres::start(&Options {
            logical,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    };
    (start(logical.0), start(logical.1))
}

/// Connection flags for the local Postgres tools.
fn conn_args(server: &LocalPostgres) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-U".into(),
        SUPERUSER.into(),
        "-p".into(),
        server.port().to_string(),
    ]
}

/// Run one SQL command with psql; panics on failure.
pub fn psql(server: &LocalPostgres, db: &str, sql: &str) {
    let status = Command::new(client_binary("psql").unwrap())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(conn_args(server))
        .args(["-d", db, "-c", sql])
        .env("PGPASSWORD", server.password())
        .status()
        .unwrap();
    assert!(status.success(), "psql failed: {sql}");
}

/// A psql command (not started) that runs `sql`.
pub fn psql_command(server: &LocalPostgres, db: &str, sql: &str) -> Command {
    let mut cmd = Command::new(client_binary("psql").unwrap());
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(conn_args(server))
        .args(["-d", db, "-c", sql])
        .env("PGPASSWORD", server.password());
    cmd
}

/// A psql command (not started) that prints `COPY (query) TO STDOUT` on its stdout.
pub fn psql_copy_out(server: &LocalPostgres, db: &str, query: &str) -> Command {
    let mut cmd = Command::new(client_binary("psql").unwrap());
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(conn_args(server))
        .args(["-d", db, "-c", &format!("COPY ({query}) TO STDOUT")])
        .env("PGPASSWORD", server.password());
    cmd
}

/// Run pgbench with `args` against `db`; panics on failure.
pub fn pgbench(server: &LocalPostgres, db: &str, args: &[&str]) {
    let ok = pgbench_command(server, db, args).status().unwrap();
    assert!(ok.success(), "pgbench {args:?} failed");
}

/// A pgbench command (not started), its output discarded.
pub fn pgbench_command(server: &LocalPostgres, db: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(client_binary("pgbench").unwrap());
    cmd.args(args)
        .args(conn_args(server))
        .arg(db)
        .env("PGPASSWORD", server.password())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Peak resident set size of a running child, in KiB (0 once it has exited).
pub fn rss_kib(child: &Child) -> u64 {
    peak_rss_kib(child.id())
}

/// Peak resident set size of process `pid` (this one: `std::process::id()`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Run `cmd` to completion (stdout discarded); returns (seconds, peak RSS in KiB).
pub fn timed(mut cmd: Command) -> (f64, u64) {
    timed_status(cmd.stdout(Stdio::null()), &[0])
}

/// Run `cmd`, accepting any of `ok_codes` as success; returns (seconds, peak RSS in KiB).
pub fn timed_status(cmd: &mut Command, ok_codes: &[i32]) -> (f64, u64) {
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut peak = 0;
    loop {
        peak = peak.max(rss_kib(&child));
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.code().is_some_and(|c| ok_codes.contains(&c)),
                "benchmark command failed: {status}"
            );
            return (start.elapsed().as_secs_f64(), peak);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The release binary the benchmarks run: `BENCH_CDC_BIN` (another commit's build, to compare
/// two commits run after run on the same machine), else this checkout's.
pub fn cdc_binary() -> std::path::PathBuf {
    let bin = match std::env::var_os("BENCH_CDC_BIN") {
        Some(path) => std::path::PathBuf::from(path),
        None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/cdc"),
    };
    assert!(
        bin.exists(),
        "build it first: cargo build --release ({})",
        bin.display()
    );
    bin
}

/// CPU time the whole machine has spent so far, from the first line of /proc/stat:
/// `(busy, all)` in seconds, where busy excludes idle and iowait. The difference of two
/// readings says how much of the cores a phase used, whichever processes used them.
pub fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal
        .filter_map(|t| t.parse().ok())
        .collect();
    let all: f64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    ((all - idle) / 100.0, all / 100.0) // USER_HZ
}

/// Busy core-seconds and the share of all cores busy between two `machine_cpu` readings.
pub fn busy_between(before: (f64, f64), after: (f64, f64)) -> (f64, f64) {
    let busy = after.0 - before.0;
    let all = after.1 - before.1;
    (busy, if all > 0.0 { busy / all } else { 0.0 })
}

/// The fields of `/proc/PID/stat` after the command name (which is in parentheses and may
/// hold spaces), so that field `n` of proc(5) is at index `n - 3`. Empty once the process is
/// gone.
fn proc_stat(pid: &str) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| {
        rest.split_whitespace().map(str::to_owned).collect()
    })
}

/// The sum of proc(5) fields `numbers` (clock ticks) of a `proc_stat` reading.
fn stat_ticks(fields: &[String], numbers: &[usize]) -> f64 {
    numbers
        .iter()
        .filter_map(|&n| fields.get(n - 3)?.parse::<f64>().ok())
        .sum()
}

/// proc(5)'s fields: parent pid; user and system time; the same of reaped children.
const PPID: usize = 4;
const OWN_TIME: [usize; 2] = [14, 15];
const OWN_AND_CHILDREN_TIME: [usize; 4] = [14, 15, 16, 17];

/// User plus system CPU seconds process `pid` has used (0 if it is gone).
pub fn pid_cpu_seconds(pid: u32) -> f64 {
    stat_ticks(&proc_stat(&pid.to_string()), &OWN_TIME) / 100.0 // USER_HZ
}

/// CPU-seconds a local server has used so far: its postmaster, the children it has reaped
/// (exited backends, parallel workers) and the children still running. The difference of two
/// readings is the server's share of a run; what the machine used beyond both servers is the
/// client's (cdc or psql).
pub fn server_cpu(server: &LocalPostgres) -> f64 {
    let pidfile = server.socket_dir().join("data").join("postmaster.pid");
    let Some(postmaster) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
    else {
        return 0.0;
    };
    let own = || stat_ticks(&proc_stat(&postmaster), &OWN_AND_CHILDREN_TIME);
    let children = || -> f64 {
        let mut sum = 0.0;
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().to_string();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let fields = proc_stat(&pid);
            if fields.get(PPID - 3) == Some(&postmaster) {
                sum += stat_ticks(&fields, &OWN_TIME);
            }
        }
        sum
    };
    // A child reaped between reading the postmaster and scanning its children would be
    // counted nowhere: read again until the postmaster's own figures did not move meanwhile.
    let mut total = 0.0;
    for _ in 0..10 {
        let before = own();
        total = before + children();
        if own() == before {
            break;
        }
    }
    total / 100.0 // USER_HZ
}

/// CPU-seconds used between two points, split into each server's share and the rest.
#[derive(Clone, Copy, Default)]
pub struct CpuSplit {
    pub machine: f64,
    pub source: f64,
    pub destination: f64,
}

impl CpuSplit {
    pub fn now(source: &LocalPostgres, destination: &LocalPostgres) -> Self {
        CpuSplit {
            machine: machine_cpu().0,
            source: server_cpu(source),
            destination: server_cpu(destination),
        }
    }

    pub fn since(self, earlier: CpuSplit) -> CpuSplit {
        CpuSplit {
            machine: self.machine - earlier.machine,
            source: self.source - earlier.source,
            destination: self.destination - earlier.destination,
        }
    }

    /// What neither server used: the client, the bench, the kernel's other work.
    pub fn rest(&self) -> f64 {
        self.machine - self.source - self.destination
    }
}

impl std::fmt::Display for CpuSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} CPU-s: source {:.1}, destination {:.1}, rest {:.1}",
            self.machine,
            self.source,
            self.destination,
            self.rest()
        )
    }
}

/// The path of `name` on PATH, if it is installed.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The sling binary the PyPI package `sling-linux-amd64` ships, if it is installed.
pub fn sling_binary() -> Option<std::path::PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sling_linux_amd64, os; print(os.path.join(os.path.dirname(sling_linux_amd64.__file__), 'bin', 'sling-linux-amd64'))"])
        .output()
        .ok()?;
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.is_file().then_some(path)
}

/// One value (or rows, `|`-separated) of `sql` on the server's `postgres` database, as psql
/// prints it unaligned.
pub fn query(server: &LocalPostgres, sql: &str) -> String {
    query_in(server, "postgres", sql)
}

/// [`query`] in database `db`.
pub fn query_in(server: &LocalPostgres, db: &str, sql: &str) -> String {
    let out = Command::new(client_binary("psql").unwrap())
        .args(["-X", "-A", "-t"])
        .args(conn_args(server))
        .args(["-d", db, "-c", sql])
        .env("PGPASSWORD", server.password())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Start `run` (a `cdc run` command) and time it until the slot `bench` has confirmed `target`
/// (the source's WAL position after a backlog was written); prints the drain rate of
/// `changes` row changes. Returns (seconds, peak RSS in KiB).
pub fn drain(source: &LocalPostgres, mut run: Command, target: &str, changes: u64) -> (f64, u64) {
    let mut child = run.stdout(Stdio::null()).spawn().expect("start cdc run");
    let started = Instant::now();
    let mut peak = 0;
    loop {
        peak = peak.max(rss_kib(&child));
        let done = query(
            source,
            &format!("SELECT coalesce(confirmed_flush_lsn >= '{target}'::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = 'bench'"),
        ) == "t";
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "drain did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "backlog drain: {changes} row changes in {secs:.2}s: {:.0} changes/s, peak RSS {:.1} MiB",
        changes as f64 / secs,
        peak as f64 / 1024.0
    );
    (secs, peak)
}
