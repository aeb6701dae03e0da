//! `cdc status`: one look at a pipeline's health, for people (`Display`) and scripts (JSON).
//!
//! Verdicts, in priority order, map to exit codes (see `cli::exit`): cannot connect (3), slot
//! missing / WAL lost / inactive when `--require-active` / a configured table neither copied nor
//! streamed (2), lag above the bounds (1), healthy (0).
//! Lag in bytes is WAL the slot still has to deliver (`pg_current_wal_lsn() - confirmed_flush_lsn`);
//! lag in seconds is the age of the last applied source commit, counted only while WAL is pending
//! (an idle, caught-up pipeline has no lag however old its last commit is).

use std::fmt;

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::schema::TableName;

/// Everything `cdc status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub slot: String,
    pub slot_exists: bool,
    pub slot_active: bool,
    pub slot_active_pid: Option<i32>,
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
    pub current_wal_lsn: String,
    pub confirmed_flush_lsn: Option<String>,
    pub restart_lsn: Option<String>,
    /// WAL the slot has yet to confirm.
    pub lag_bytes: Option<i64>,
    /// WAL the slot keeps on the source's disk.
    pub retained_wal_bytes: Option<i64>,
    pub applied_lsn: Option<String>,
    pub applied_commit_time: Option<String>,
    pub lag_seconds: Option<f64>,
    pub snapshot_complete: bool,
    pub tables: Vec<TableStatus>,
    pub publication: String,
    pub publication_exists: bool,
    /// Configured tables missing from the publication.
    pub publication_missing: Vec<String>,
    /// Tables in the publication but not in the configuration.
    pub publication_extra: Vec<String>,
    /// `pg_stat_replication_slots` counters (Postgres 14+), when available.
    pub spill_bytes: Option<i64>,
    pub stream_bytes: Option<i64>,
    pub verdict: Verdict,
    pub reason: String,
}

/// Per configured table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub source: String,
    pub destination: String,
    /// Rows copied by the snapshot, once that table's copy completed.
    pub snapshot_rows: Option<i64>,
    /// Its chunked copy (`snapshot.mode`, `cdc resync`), if it has one.
    pub copy: Option<CopyProgress>,
}

/// A table's chunked copy.
#[derive(Debug, Clone, Serialize)]
pub struct CopyProgress {
    pub done: bool,
    pub chunks_done: u64,
    pub chunks_estimated: u64,
    pub rows: i64,
    pub rows_per_second: f64,
    pub eta_seconds: Option<f64>,
}

impl CopyProgress {
    fn of(r: &crate::snapshot::chunked::Record) -> CopyProgress {
        let (rate, eta) = r.rate_and_eta();
        CopyProgress {
            done: r.progress.done,
            chunks_done: r.progress.chunks,
            chunks_estimated: r.progress.estimated_chunks,
            rows: r.rows,
            rows_per_second: rate,
            eta_seconds: eta,
        }
    }
}

impl fmt::Display for CopyProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.done {
            return write!(
                f,
                "copied in {} chunks ({} rows)",
                self.chunks_done, self.rows
            );
        }
        write!(
            f,
            "copying in chunks: {} of ~{} done, {} rows, {:.0} rows/s, ETA {}",
            self.chunks_done,
            self.chunks_estimated,
            self.rows,
            self.rows_per_second,
            self.eta_seconds.map_or("-".into(), |s| format!("{s:.0} s"))
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Healthy,
    Lagging,
    SlotProblem,
    Unreachable,
}

/// Limits and expectations for the verdict.
pub struct Bounds {
    pub max_lag_bytes: u64,
    pub max_lag_seconds: u64,
    pub require_active: bool,
}

/// Gather the report. Connection failures come back as an `Unreachable` report, not an error.
pub async fn check(config: &Config, bounds: &Bounds) -> Result<StatusReport> {
    let slot = config.source.slot.clone();
    let mut r = StatusReport {
        slot: slot.clone(),
        slot_exists: false,
        slot_active: false,
        slot_active_pid: None,
        wal_status: None,
        safe_wal_size: None,
        current_wal_lsn: String::new(),
        confirmed_flush_lsn: None,
        restart_lsn: None,
        lag_bytes: None,
        retained_wal_bytes: None,
        applied_lsn: None,
        applied_commit_time: None,
        lag_seconds: None,
        snapshot_complete: false,
        tables: Vec::new(),
        publication: config.source.publication.clone(),
        publication_exists: false,
        publication_missing: Vec::new(),
        publication_extra: Vec::new(),
        spill_bytes: None,
        stream_bytes: None,
        verdict: Verdict::Healthy,
        reason: "streaming within bounds".into(),
    };
    let src_info = config.source_conninfo()?;
    let src = match crate::pg::connect(&src_info).await {
        Ok(c) => c,
        Err(e) => {
            return Ok(unreachable(
                r,
                format!("cannot connect to the source: {}", chain(&e)),
            ))
        }
    };
    let dest = match crate::destination::open(config).await {
        Ok(d) => d,
        Err(e) => {
            return Ok(unreachable(
                r,
                format!("cannot connect to the destination: {}", chain(&e)),
            ))
        }
    };
    read_slot(&src, &slot, &mut r).await?;
    let pairs = config.table_pairs();
    read_publication(&src, &pairs, &mut r).await?;
    let state = match dest.load_state(&slot).await {
        Ok(state) => state,
        Err(e) if e.is_transient() => {
            return Ok(unreachable(
                r,
                format!("cannot read the destination: {}", chain(&e)),
            ))
        }
        Err(e) => return Err(e),
    };
    if let Some(s) = &state {
        read_pipeline(config, dest.as_ref(), s, &mut r).await?;
    }
    (r.verdict, r.reason) = verdict(&r, bounds);
    Ok(r)
}

/// The slot's activity and positions, and its spill and stream counters.
async fn read_slot(src: &tokio_postgres::Client, slot: &str, r: &mut StatusReport) -> Result<()> {
    r.current_wal_lsn = src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(Error::pg("reading the WAL position"))?
        .get(0);
    if let Some(row) = src
        .query_opt(
            "SELECT active, active_pid, wal_status, safe_wal_size, confirmed_flush_lsn::text, restart_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::pg("reading the replication slot"))?
    {
        r.slot_exists = true;
        r.slot_active = row.get(0);
        r.slot_active_pid = row.get(1);
        r.wal_status = row.get(2);
        r.safe_wal_size = row.get(3);
        r.confirmed_flush_lsn = row.get(4);
        r.restart_lsn = row.get(5);
        r.lag_bytes = row.get(6);
        r.retained_wal_bytes = row.get(7);
    }
    if let Ok(row) = src
        .query_one(
            "SELECT spill_bytes, stream_bytes FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
    {
        r.spill_bytes = row.get(0);
        r.stream_bytes = row.get(1);
    }
    Ok(())
}

/// Whether the publication exists and which configured tables it lacks or adds.
async fn read_publication(
    src: &tokio_postgres::Client,
    pairs: &[(TableName, TableName)],
    r: &mut StatusReport,
) -> Result<()> {
    r.publication_exists = src
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&r.publication],
        )
        .await
        .map_err(Error::pg("reading publications"))?
        .get(0);
    let published: Vec<String> = src
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&r.publication],
        )
        .await
        .map_err(Error::pg("reading the publication"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let configured: Vec<String> = pairs.iter().map(|(s, _)| s.to_string()).collect();
    r.publication_missing = configured
        .iter()
        .filter(|t| !published.contains(t))
        .cloned()
        .collect();
    r.publication_extra = published
        .iter()
        .filter(|t| !configured.contains(t))
        .cloned()
        .collect();

    Ok(())
}

/// What the destination's state says: snapshot, applied position, lag in seconds, tables.
async fn read_pipeline(
    config: &Config,
    dest: &dyn crate::destination::Destination,
    s: &crate::destination::PipelineState,
    r: &mut StatusReport,
) -> Result<()> {
    let pairs = config.table_pairs();
    r.snapshot_complete = s.snapshot_completed();
    r.applied_lsn = s.applied_lsn().map(|l| l.to_string());
    let copied = dest.snapshot_tables(&s.slot).await?;
    let chunked = crate::snapshot::chunked::records(config, dest).await?;
    r.tables = pairs
        .iter()
        .map(|(s, d)| TableStatus {
            source: s.to_string(),
            destination: d.to_string(),
            snapshot_rows: copied
                .iter()
                .find(|(t, _)| *t == s.to_string())
                .map(|(_, n)| *n),
            copy: chunked
                .iter()
                .find(|c| c.source == *s)
                .map(CopyProgress::of),
        })
        .collect();
    if let Some(time) = s.applied_commit_time() {
        r.applied_commit_time = Some(crate::model::time::format_utc(time));
        let age = std::time::SystemTime::now()
            .duration_since(time)
            .map_or(0.0, |d| d.as_secs_f64());
        r.lag_seconds = Some(if r.lag_bytes.unwrap_or(0) > 0 {
            age
        } else {
            0.0
        });
    }
    Ok(())
}

/// The verdict on a gathered report, and why.
fn verdict(r: &StatusReport, bounds: &Bounds) -> (Verdict, String) {
    let slot = &r.slot;
    if !r.slot_exists {
        (
            Verdict::SlotProblem,
            format!("replication slot {slot} does not exist on the source"),
        )
    } else if r.wal_status.as_deref() == Some("lost") {
        (Verdict::SlotProblem, format!("replication slot {slot} has lost required WAL; re-snapshot with `cdc snapshot --force`"))
    } else if bounds.require_active && !r.slot_active {
        (
            Verdict::SlotProblem,
            format!("replication slot {slot} is not being consumed: is `cdc run` running?"),
        )
    } else if let Some(missing) = not_replicated(&r) {
        (
            Verdict::SlotProblem,
            format!(
                "configured tables {} are neither copied nor streamed (added to the configuration after the \
                 snapshot): `cdc snapshot --force` copies every table again",
                missing.join(", ")
            ),
        )
    } else if r.lag_bytes.unwrap_or(0) > bounds.max_lag_bytes as i64 {
        (
            Verdict::Lagging,
            format!(
                "{} bytes of WAL behind (limit {})",
                r.lag_bytes.unwrap_or(0),
                bounds.max_lag_bytes
            ),
        )
    } else if r.lag_seconds.unwrap_or(0.0) > bounds.max_lag_seconds as f64 {
        (
            Verdict::Lagging,
            format!(
                "{:.0} s behind (limit {})",
                r.lag_seconds.unwrap_or(0.0),
                bounds.max_lag_seconds
            ),
        )
    } else {
        (Verdict::Healthy, "within bounds".to_owned())
    }
}

/// Configured tables a completed snapshot did not copy, or that the publication lacks: nothing
/// replicates them, so the pipeline is not healthy whatever its lag.
fn not_replicated(r: &StatusReport) -> Option<Vec<String>> {
    if !r.snapshot_complete {
        return None;
    }
    let mut missing: Vec<String> = r
        .tables
        .iter()
        .filter(|t| t.snapshot_rows.is_none())
        .map(|t| t.source.clone())
        .chain(r.publication_missing.iter().cloned())
        .collect();
    missing.sort();
    missing.dedup();
    (!missing.is_empty()).then_some(missing)
}

fn chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn unreachable(mut r: StatusReport, reason: String) -> StatusReport {
    r.verdict = Verdict::Unreachable;
    r.reason = reason;
    r
}

impl StatusReport {
    /// The exit code for health checks.
    pub fn exit_code(&self) -> i32 {
        use crate::cli::exit;
        match self.verdict {
            Verdict::Healthy => exit::OK,
            Verdict::Lagging => exit::LAGGING,
            Verdict::SlotProblem => exit::SLOT_PROBLEM,
            Verdict::Unreachable => exit::UNREACHABLE,
        }
    }
}

fn mib(b: Option<i64>) -> String {
    b.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Healthy => "HEALTHY",
            Verdict::Lagging => "LAGGING",
            Verdict::SlotProblem => "SLOT PROBLEM",
            Verdict::Unreachable => "UNREACHABLE",
        };
        writeln!(f, "{verdict}: {}", self.reason)?;
        if self.verdict == Verdict::Unreachable {
            return Ok(());
        }
        let active = match (self.slot_exists, self.slot_active) {
            (false, _) => "missing".to_owned(),
            (true, true) => format!("active (pid {})", self.slot_active_pid.unwrap_or(0)),
            (true, false) => "inactive".to_owned(),
        };
        writeln!(
            f,
            "slot        {} {active}, wal_status {}",
            self.slot,
            self.wal_status.as_deref().unwrap_or("-")
        )?;
        writeln!(
            f,
            "lag         {} of WAL, {} s; slot retains {}",
            mib(self.lag_bytes),
            self.lag_seconds.map_or("-".into(), |s| format!("{s:.1}")),
            mib(self.retained_wal_bytes)
        )?;
        writeln!(
            f,
            "positions   source {}  confirmed {}  applied {}",
            self.current_wal_lsn,
            self.confirmed_flush_lsn.as_deref().unwrap_or("-"),
            self.applied_lsn.as_deref().unwrap_or("-")
        )?;
        writeln!(
            f,
            "last commit {}",
            self.applied_commit_time.as_deref().unwrap_or("-")
        )?;
        writeln!(
            f,
            "snapshot    {}",
            if self.snapshot_complete {
                "complete"
            } else {
                "not complete"
            }
        )?;
        for t in &self.tables {
            let copied = match (&t.copy, t.snapshot_rows) {
                (Some(c), _) => c.to_string(),
                (None, Some(n)) => format!("{n} rows copied"),
                (None, None) => "not copied yet".into(),
            };
            writeln!(f, "  {} -> {}: {copied}", t.source, t.destination)?;
        }
        write!(
            f,
            "publication {} {}",
            self.publication,
            if self.publication_exists {
                "exists"
            } else {
                "missing"
            }
        )?;
        if !self.publication_missing.is_empty() {
            write!(
                f,
                "; missing tables: {}",
                self.publication_missing.join(", ")
            )?;
        }
        if !self.publication_extra.is_empty() {
            write!(f, "; extra tables: {}", self.publication_extra.join(", "))?;
        }
        writeln!(f)
    }
}
