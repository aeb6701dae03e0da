//! Counters and gauges of `cdc run` (and of `cdc sync --every`'s passes), rendered in the
//! Prometheus text format, plus the health verdict `/healthz` serves. `monitoring/` holds the
//! dashboard and alerting rules that read them (tests/monitoring.rs keeps them in step). Updated by the stream loop with atomics; no metrics crate needed
//! for a handful of series.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Upper bounds of the batch-size histogram (rows per destination commit).
const BATCH_BUCKETS: [f64; 8] = [
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    f64::INFINITY,
];
/// Upper bounds of the apply-latency histogram (seconds per destination commit).
const LATENCY_BUCKETS: [f64; 8] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, f64::INFINITY];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let le = if b.is_infinite() {
                "+Inf".to_owned()
            } else {
                b.to_string()
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// Everything `/metrics` and `/healthz` report.
pub struct Metrics {
    rows: Mutex<BTreeMap<(String, &'static str), u64>>,
    transactions: AtomicU64,
    reconnects: AtomicU64,
    missing: AtomicU64,
    batch_rows: Histogram,
    apply_seconds: Histogram,
    lag_bytes: AtomicU64,
    last_commit_unix_micros: AtomicU64,
    confirmed_lsn: AtomicU64,
    streaming: AtomicBool,
    /// Errors the run loop met, by [`crate::error::Kind`] (transient ones it retried).
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// The slot as the source last showed it.
    slot: Mutex<Option<SlotState>>,
    /// `cdc sync` passes ended (`ok`: every table synced) and rows they wrote.
    sync_passes: Mutex<BTreeMap<&'static str, u64>>,
    sync_rows: AtomicU64,
}

/// The replication slot, as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub name: String,
    /// A walsender streams it.
    pub active: bool,
    /// WAL the slot keeps the source from recycling (from its restart point to the server's
    /// current position).
    pub retained_bytes: u64,
}

/// Every error kind, as the `kind` label spells them.
const KINDS: [&str; 4] = ["transient", "definite", "configuration", "internal"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            rows: Mutex::new(BTreeMap::new()),
            transactions: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            batch_rows: Histogram::new(&BATCH_BUCKETS),
            apply_seconds: Histogram::new(&LATENCY_BUCKETS),
            lag_bytes: AtomicU64::new(0),
            last_commit_unix_micros: AtomicU64::new(0),
            confirmed_lsn: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            errors: Mutex::new(KINDS.iter().map(|k| (*k, 0)).collect()),
            slot: Mutex::new(None),
            sync_passes: Mutex::new(BTreeMap::new()),
            sync_rows: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// A row change of `table` (`insert`, `update`, `delete`) was applied.
    pub fn row(&self, table: &str, op: &'static str) {
        *self
            .rows
            .lock()
            .expect("metrics lock")
            .entry((table.to_owned(), op))
            .or_default() += 1;
    }

    /// `n` updates could not be written: they left some TOAST values unchanged, and their row
    /// is missing on the destination, so the row's full contents are unknown.
    pub fn rows_missing(&self, n: u64) {
        self.missing.fetch_add(n, Ordering::Relaxed);
    }

    pub fn transaction(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// A destination commit of `rows` rows that took `seconds`, covering source commits up to
    /// one at `commit_time`.
    pub fn batch(&self, rows: usize, seconds: f64, commit_time: SystemTime) {
        self.batch_rows.observe(rows as f64);
        self.apply_seconds.observe(seconds);
        let micros = commit_time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.last_commit_unix_micros
            .store(micros, Ordering::Relaxed);
    }

    pub fn confirmed(&self, lsn: u64, server_wal_end: u64) {
        self.confirmed_lsn.store(lsn, Ordering::Relaxed);
        self.lag_bytes
            .store(server_wal_end.saturating_sub(lsn), Ordering::Relaxed);
    }

    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
        if !on {
            // Our walsender is gone with the connection; the next look at the source says more.
            if let Some(s) = self.slot.lock().expect("metrics lock").as_mut() {
                s.active = false;
            }
        }
    }

    /// The run loop met an error of `kind`.
    pub fn error(&self, kind: crate::error::Kind) {
        let name = match kind {
            crate::error::Kind::Transient => KINDS[0],
            crate::error::Kind::Definite => KINDS[1],
            crate::error::Kind::Configuration => KINDS[2],
            crate::error::Kind::Internal => KINDS[3],
        };
        *self
            .errors
            .lock()
            .expect("metrics lock")
            .entry(name)
            .or_default() += 1;
    }

    /// The slot as the source shows it now.
    pub fn slot(&self, state: SlotState) {
        *self.slot.lock().expect("metrics lock") = Some(state);
    }

    /// A `cdc sync` pass ended; `ok` when every table synced.
    pub fn sync_pass(&self, ok: bool, rows: u64) {
        *self
            .sync_passes
            .lock()
            .expect("metrics lock")
            .entry(if ok { "ok" } else { "failed" })
            .or_default() += 1;
        self.sync_rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// Seconds since the last applied source commit, counted only while WAL is pending.
    pub fn lag_seconds(&self) -> f64 {
        let last = self.last_commit_unix_micros.load(Ordering::Relaxed);
        if self.lag_bytes.load(Ordering::Relaxed) == 0 || last == 0 {
            return 0.0;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        now.saturating_sub(last) as f64 / 1e6
    }

    /// `Ok` when streaming within bounds, else the reason.
    pub fn health(&self, max_lag_bytes: u64, max_lag_seconds: u64) -> Result<(), String> {
        if !self.streaming.load(Ordering::Relaxed) {
            return Err("not streaming (connecting, or reconnecting after a failure)".into());
        }
        let lag = self.lag_bytes.load(Ordering::Relaxed);
        if lag > max_lag_bytes {
            return Err(format!("{lag} bytes of WAL behind (limit {max_lag_bytes})"));
        }
        let secs = self.lag_seconds();
        if secs > max_lag_seconds as f64 {
            return Err(format!("{secs:.0} s behind (limit {max_lag_seconds})"));
        }
        Ok(())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP cdc_rows_applied_total Row changes applied to the destination.\n# TYPE cdc_rows_applied_total counter");
        for ((table, op), n) in self.rows.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "cdc_rows_applied_total{{table=\"{}\",op=\"{op}\"}} {n}",
                table.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "cdc_transactions_applied_total",
            "Source transactions applied.",
            self.transactions.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "cdc_reconnects_total",
            "Reconnections after transient failures.",
            self.reconnects.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "cdc_rows_missing_on_destination_total",
            "Updates not written: unchanged TOAST values, and the row missing on the destination.",
            self.missing.load(Ordering::Relaxed),
        );
        self.batch_rows.render(
            &mut out,
            "cdc_batch_rows",
            "Rows per destination transaction.",
        );
        self.apply_seconds.render(
            &mut out,
            "cdc_apply_seconds",
            "Time to write and commit one destination transaction.",
        );
        gauge(
            &mut out,
            "cdc_lag_bytes",
            "WAL between the server's position and the confirmed one.",
            self.lag_bytes.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "cdc_lag_seconds",
            "Age of the last applied source commit while WAL is pending.",
            self.lag_seconds(),
        );
        gauge(
            &mut out,
            "cdc_confirmed_lsn",
            "Last LSN confirmed to the source, as a number.",
            self.confirmed_lsn.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "cdc_streaming",
            "1 while connected and streaming.",
            u8::from(self.streaming.load(Ordering::Relaxed)).into(),
        );
        self.render_more(&mut out);
        out
    }

    /// Errors by kind, the slot, sync passes.
    fn render_more(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP cdc_errors_total Errors met, by kind (transient ones are retried).\n# TYPE cdc_errors_total counter");
        for (kind, n) in self.errors.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "cdc_errors_total{{kind=\"{kind}\"}} {n}");
        }
        if let Some(s) = self.slot.lock().expect("metrics lock").as_ref() {
            let slot = &s.name;
            let _ = writeln!(out, "# HELP cdc_slot_active 1 while a walsender streams the slot.\n# TYPE cdc_slot_active gauge\ncdc_slot_active{{slot=\"{slot}\"}} {}", u8::from(s.active));
            let _ = writeln!(out, "# HELP cdc_slot_wal_retained_bytes WAL the slot keeps on the source.\n# TYPE cdc_slot_wal_retained_bytes gauge\ncdc_slot_wal_retained_bytes{{slot=\"{slot}\"}} {}", s.retained_bytes);
        }
        let passes = self.sync_passes.lock().expect("metrics lock");
        if !passes.is_empty() {
            let _ = writeln!(out, "# HELP cdc_sync_passes_total cdc sync passes ended, by result.\n# TYPE cdc_sync_passes_total counter");
            for result in ["ok", "failed"] {
                let n = passes.get(result).copied().unwrap_or(0);
                let _ = writeln!(out, "cdc_sync_passes_total{{result=\"{result}\"}} {n}");
            }
            let _ = writeln!(out, "# HELP cdc_sync_rows_total Rows cdc sync passes wrote.\n# TYPE cdc_sync_rows_total counter\ncdc_sync_rows_total {}", self.sync_rows.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_health() {
        let m = Metrics::default();
        m.row("public.t", "insert");
        m.row("public.t", "insert");
        m.batch(2, 0.003, SystemTime::now());
        let text = m.render();
        assert!(
            text.contains("cdc_rows_applied_total{table=\"public.t\",op=\"insert\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("cdc_batch_rows_bucket{le=\"1\"} 0\ncdc_batch_rows_bucket{le=\"10\"} 1"),
            "{text}"
        );
        assert!(text.contains("cdc_apply_seconds_count 1"), "{text}");
        assert_eq!(
            m.health(10, 10),
            Err("not streaming (connecting, or reconnecting after a failure)".into())
        );
        m.set_streaming(true);
        m.confirmed(100, 150);
        assert_eq!(
            m.health(10, 1000),
            Err("50 bytes of WAL behind (limit 10)".into())
        );
        assert_eq!(m.health(100, 1000), Ok(()));
    }

    #[test]
    fn errors_by_kind_the_slot_and_sync_passes_render_once_known() {
        let m = Metrics::default();
        let text = m.render();
        // Every kind from the start (a rate needs the zero), no slot or sync series yet.
        assert!(
            text.contains("cdc_errors_total{kind=\"transient\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("cdc_errors_total{kind=\"internal\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("cdc_slot_active") && !text.contains("cdc_sync_"),
            "{text}"
        );
        m.error(crate::error::Kind::Transient);
        m.error(crate::error::Kind::Transient);
        m.slot(SlotState {
            name: "cdc".into(),
            active: true,
            retained_bytes: 4096,
        });
        m.set_streaming(false);
        m.sync_pass(true, 7);
        m.sync_pass(false, 3);
        let text = m.render();
        for line in [
            "cdc_errors_total{kind=\"transient\"} 2",
            "cdc_slot_active{slot=\"cdc\"} 0",
            "cdc_slot_wal_retained_bytes{slot=\"cdc\"} 4096",
            "cdc_sync_passes_total{result=\"ok\"} 1",
            "cdc_sync_passes_total{result=\"failed\"} 1",
            "cdc_sync_rows_total 10",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }
}
