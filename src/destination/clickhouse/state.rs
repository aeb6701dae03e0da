//! What cdc remembers in ClickHouse, in the state database (`destination.state_schema`,
//! `cdc` by default).
//!
//! ```text
//!  pipeline         slot → publication, consistent point, snapshot done   (rare writes)
//!  positions        slot → applied LSN, its commit time                    (every batch)
//!  snapshot_tables  (slot, source table) → destination table, rows, joined at
//!  sync_tables      destination table → `cdc sync`'s strategy, position, last pass
//! ```
//! ClickHouse has no transactions, so each is a `ReplacingMergeTree` read with `FINAL`: a write
//! is an INSERT of the whole record and the one with the highest version is the record.
//! Positions are versioned by the applied LSN itself (they only move forward); the others by
//! a clock reading made unique in this process (they are written by one process at a time:
//! `cdc snapshot`, then `cdc run`). Forgetting is a `DELETE`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::ddl::quote;
use super::http::Client;
use super::tsv;
use crate::destination::{PipelineState, SyncState};
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// The state tables in `database`, created if missing.
pub fn create_sql(database: &str, cluster: Option<&str>) -> Vec<String> {
    let on = cluster.map_or(String::new(), |c| format!(" ON CLUSTER {}", quote(c)));
    let engine = |version: &str| {
        match cluster {
        None => format!("ReplacingMergeTree({version})"),
        Some(_) => format!(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{{database}}/{{table}}', '{{replica}}', {version})"
        ),
    }
    };
    let db = quote(database);
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}{on}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.pipeline{on} (slot String, publication String, \
             consistent_lsn Nullable(UInt64), snapshot_completed UInt8, seq UInt64) \
             ENGINE = {} ORDER BY slot",
            engine("seq")
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.positions{on} (slot String, applied_lsn UInt64, \
             commit_time_us Nullable(Int64)) ENGINE = {} ORDER BY slot",
            engine("applied_lsn")
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.snapshot_tables{on} (slot String, source_table String, \
             destination_table String, rows Int64, joined_lsn Nullable(UInt64), seq UInt64) \
             ENGINE = {} ORDER BY (slot, source_table)",
            engine("seq")
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.sync_tables{on} (destination_table String, source_table String, \
             strategy String, position Nullable(String), last_pass_us Nullable(Int64), rows Int64, \
             seconds Float64, seq UInt64) ENGINE = {} ORDER BY destination_table",
            engine("seq")
        ),
    ]
}

/// A ClickHouse string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Versions for records: microseconds since the epoch, strictly increasing in this process.
pub fn next_seq() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The state store of one server.
#[derive(Clone)]
pub struct State {
    pub client: Client,
    pub database: String,
}

impl State {
    fn t(&self, table: &str) -> String {
        format!("{}.{}", quote(&self.database), quote(table))
    }

    /// Whether the state tables exist. Asked of the table itself, not of `system.tables`: a
    /// server that just started loads tables in the background, and `system.tables` leaves
    /// out those not loaded yet, while a query on one waits for it.
    async fn exists(&self) -> Result<bool> {
        match self
            .client
            .query(&format!("SELECT 1 FROM {} LIMIT 0", self.t("positions")))
            .await
        {
            Ok(_) => Ok(true),
            // UNKNOWN_TABLE, UNKNOWN_DATABASE.
            Err(e) if matches!(e.clickhouse_code(), Some(60 | 81)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn load(&self, slot: &str) -> Result<Option<PipelineState>> {
        if !self.exists().await? {
            return Ok(None);
        }
        let out = self
            .client
            .query(&format!(
                "SELECT p.consistent_lsn, p.snapshot_completed, q.applied_lsn, q.commit_time_us \
                 FROM (SELECT * FROM {pipeline} FINAL WHERE slot = {slot}) AS p \
                 LEFT JOIN (SELECT * FROM {positions} FINAL WHERE slot = {slot}) AS q ON p.slot = q.slot \
                 SETTINGS join_use_nulls = 1 FORMAT TSV",
                pipeline = self.t("pipeline"),
                positions = self.t("positions"),
                slot = literal(slot),
            ))
            .await?;
        let Some(row) = tsv::rows(&out).next() else {
            return Ok(None);
        };
        let num = |i: usize| -> Result<Option<u64>> {
            match row.get(i).and_then(|f| tsv::unescape(f)) {
                None => Ok(None),
                Some(t) => t.parse::<u64>().map(Some).map_err(|_| {
                    Error::definite(format!("unreadable cdc state in ClickHouse: {t:?}"))
                }),
            }
        };
        let completed = num(1)? == Some(1);
        let applied = num(2)?.map(Lsn);
        let micros = match row.get(3).and_then(|f| tsv::unescape(f)) {
            Some(t) => t.parse::<i64>().ok(),
            None => None,
        };
        PipelineState::from_stored(
            slot,
            num(0)?.map(Lsn),
            applied,
            completed,
            micros.map(|us| UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)),
        )
        .map(Some)
    }

    /// The pipeline record of `slot` (publication, consistent point, completed).
    pub async fn pipeline(&self, slot: &str) -> Result<Option<(String, Option<u64>, bool)>> {
        let out = self
            .client
            .query(&format!(
                "SELECT publication, consistent_lsn, snapshot_completed FROM {} FINAL WHERE slot = {} FORMAT TSV",
                self.t("pipeline"),
                literal(slot)
            ))
            .await?;
        let record = tsv::rows(&out).next().map(|r| {
            (
                tsv::unescape(r[0]).unwrap_or_default(),
                tsv::unescape(r[1]).and_then(|t| t.parse().ok()),
                tsv::unescape(r[2]).as_deref() == Some("1"),
            )
        });
        Ok(record)
    }

    pub async fn write_pipeline(
        &self,
        slot: &str,
        publication: &str,
        consistent: Option<u64>,
        completed: bool,
    ) -> Result<()> {
        self.client
            .query(&format!(
                "INSERT INTO {} (slot, publication, consistent_lsn, snapshot_completed, seq) VALUES ({}, {}, {}, {}, {})",
                self.t("pipeline"),
                literal(slot),
                literal(publication),
                consistent.map_or("NULL".to_owned(), |l| l.to_string()),
                u8::from(completed),
                next_seq()
            ))
            .await
            .map(|_| ())
    }

    /// Change `slot`'s pipeline record.
    pub async fn update_pipeline(
        &self,
        slot: &str,
        change: impl FnOnce(&mut Option<u64>, &mut bool),
    ) -> Result<(Option<u64>, bool)> {
        let (publication, mut consistent, mut completed) =
            self.pipeline(slot).await?.ok_or_else(|| {
                Error::definite(format!("no pipeline {slot} in the ClickHouse state"))
            })?;
        change(&mut consistent, &mut completed);
        self.write_pipeline(slot, &publication, consistent, completed)
            .await?;
        Ok((consistent, completed))
    }

    pub async fn write_position(
        &self,
        slot: &str,
        lsn: Lsn,
        commit_time_us: Option<i64>,
    ) -> Result<()> {
        self.client
            .query(&format!(
                "INSERT INTO {} (slot, applied_lsn, commit_time_us) VALUES ({}, {}, {})",
                self.t("positions"),
                literal(slot),
                lsn.0,
                commit_time_us.map_or("NULL".to_owned(), |t| t.to_string())
            ))
            .await
            .map(|_| ())
    }

    /// Forget the copied tables and the position of `slot`, keeping its pipeline record.
    pub async fn delete_progress(&self, slot: &str) -> Result<()> {
        self.delete_some(slot, &["snapshot_tables", "positions"])
            .await
    }

    async fn delete_some(&self, slot: &str, tables: &[&str]) -> Result<()> {
        if !self.exists().await? {
            return Ok(());
        }
        for table in tables {
            self.client
                .query(&format!(
                    "DELETE FROM {} WHERE slot = {}",
                    self.t(table),
                    literal(slot)
                ))
                .await?;
        }
        Ok(())
    }

    pub async fn record_table(
        &self,
        slot: &str,
        source: &str,
        destination: &str,
        rows: u64,
        joined: Option<Lsn>,
    ) -> Result<()> {
        self.client
            .query(&format!(
                "INSERT INTO {} (slot, source_table, destination_table, rows, joined_lsn, seq) VALUES ({}, {}, {}, {rows}, {}, {})",
                self.t("snapshot_tables"),
                literal(slot),
                literal(source),
                literal(destination),
                joined.map_or("NULL".to_owned(), |l| l.0.to_string()),
                next_seq()
            ))
            .await
            .map(|_| ())
    }

    /// `(source table, rows, joined at)` of `slot`'s copied tables.
    pub async fn tables(&self, slot: &str) -> Result<Vec<(String, i64, Option<Lsn>)>> {
        if !self.exists().await? {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .query(&format!(
                "SELECT source_table, rows, joined_lsn FROM {} FINAL WHERE slot = {} ORDER BY source_table FORMAT TSV",
                self.t("snapshot_tables"),
                literal(slot)
            ))
            .await?;
        Ok(tsv::rows(&out)
            .map(|r| {
                (
                    tsv::unescape(r[0]).unwrap_or_default(),
                    tsv::unescape(r[1])
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0),
                    tsv::unescape(r[2]).and_then(|t| t.parse().ok()).map(Lsn),
                )
            })
            .collect())
    }

    /// Every `cdc sync` table state; none before the state tables exist.
    pub async fn sync_states(&self) -> Result<Vec<SyncState>> {
        if !self.exists().await? {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .query(&format!(
                "SELECT destination_table, source_table, strategy, position, last_pass_us, rows, seconds \
                 FROM {} FINAL ORDER BY destination_table FORMAT TSV",
                self.t("sync_tables")
            ))
            .await?;
        tsv::rows(&out).map(|r| sync_state(&r)).collect()
    }

    /// Record a table's `cdc sync` state: the newest record is the state.
    pub async fn save_sync_state(&self, state: &SyncState) -> Result<()> {
        let last_pass = state
            .last_pass
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or("NULL".to_owned(), |d| d.as_micros().to_string());
        let seconds = if state.seconds.is_finite() {
            state.seconds
        } else {
            0.0
        };
        self.client
            .query(&format!(
                "INSERT INTO {} (destination_table, source_table, strategy, position, last_pass_us, rows, seconds, seq) \
                 VALUES ({}, {}, {}, {}, {last_pass}, {}, {seconds}, {})",
                self.t("sync_tables"),
                literal(&state.destination_table),
                literal(&state.source_table),
                literal(&state.strategy),
                state.position.as_deref().map_or("NULL".to_owned(), literal),
                state.rows,
                next_seq()
            ))
            .await
            .map(|_| ())
    }

    pub async fn forget_table(&self, slot: &str, source: &str) -> Result<()> {
        self.client
            .query(&format!(
                "DELETE FROM {} WHERE slot = {} AND source_table = {}",
                self.t("snapshot_tables"),
                literal(slot),
                literal(source)
            ))
            .await
            .map(|_| ())
    }
}

/// One `sync_tables` row (TSV fields in `sync_states`' order).
fn sync_state(r: &[&[u8]]) -> Result<SyncState> {
    let field = |i: usize| r.get(i).and_then(|f| tsv::unescape(f));
    let bad = |what: &str| {
        Error::definite(format!(
            "the ClickHouse sync state has a row with a bad {what}: {:?}",
            r.iter()
                .map(|f| String::from_utf8_lossy(f))
                .collect::<Vec<_>>()
        ))
    };
    let last_pass = match field(4) {
        None => None,
        Some(us) => {
            let us: u64 = us.parse().map_err(|_| bad("last_pass_us"))?;
            Some(UNIX_EPOCH + std::time::Duration::from_micros(us))
        }
    };
    Ok(SyncState {
        destination_table: field(0).ok_or_else(|| bad("destination_table"))?,
        source_table: field(1).unwrap_or_default(),
        strategy: field(2).unwrap_or_default(),
        position: field(3),
        last_pass,
        rows: field(5)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("rows"))?,
        seconds: field(6).and_then(|v| v.parse().ok()).unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_state_row_reads_back_with_nulls_and_escapes() {
        let s = sync_state(&[
            b"public.a\\tb",
            b"main.a",
            b"modified",
            b"2024-01-01 00:00:00+00",
            b"1700000000000000",
            b"12",
            b"0.5",
        ])
        .unwrap();
        assert_eq!(s.destination_table, "public.a\tb");
        assert_eq!(s.position.as_deref(), Some("2024-01-01 00:00:00+00"));
        assert_eq!(
            s.last_pass,
            Some(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        );
        assert_eq!((s.rows, s.seconds), (12, 0.5));
        let none = sync_state(&[b"t", b"t", b"reload", b"\\N", b"\\N", b"0", b"0"]).unwrap();
        assert_eq!((none.position, none.last_pass), (None, None));
        assert!(sync_state(&[b"t", b"t", b"reload", b"\\N", b"soon", b"0", b"0"]).is_err());
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("it's a\\b"), "'it\\'s a\\\\b'");
    }

    #[test]
    fn record_versions_always_increase() {
        let a = next_seq();
        let b = next_seq();
        assert!(b > a);
    }
}
