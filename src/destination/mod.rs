//! Where rows go: one trait per seam, one folder per kind of destination.
//!
//! ```text
//!  snapshot ─► Destination::{check, create_tables, loader ─► Loader::load, finish_table}
//!  stream ──► Applier (Pending, destination-neutral) ─► Session::{write, truncate, alter,
//!                                                               commit(position), rollback}
//!  run, status, verify ─► Destination::{load_state, ...}
//! ```
//!
//! A destination is chosen by the scheme of `destination.url` ([`registry`]): `duckdb:`
//! ([`duckdb`]), `clickhouse://` / `clickhouses://` ([`clickhouse`]), `snowflake://`
//! ([`snowflake`]), else a libpq connection string ([`postgres`]). No SQL crosses these
//! traits: each destination speaks its own dialect, maps Postgres types to its own, and
//! converts the Postgres text form of values itself.
//!
//! **Exactly-once effect.** [`Session::commit`] stores the source position in the same
//! destination transaction as the data before it (Postgres, DuckDB); a destination without
//! multi-statement transactions must instead make a replay write the same final state
//! (ClickHouse: versions from the WAL). The run loop relies only on "after `commit` returns, the
//! data and the position are durable together, and `load_state` returns that position".

pub mod columns;
pub mod registry;
pub mod response;
pub mod whole;

/// The registry: every kind of destination, by the name of its folder, which holds all of it
/// (its `DRIVER`: [`registry::Driver`]). A URL goes to the first that claims it, so Postgres,
/// which claims libpq's scheme-less strings, stays last. A new destination is its folder and
/// its name here.
macro_rules! registry {
    ($($kind:ident),* $(,)?) => {
        $(pub mod $kind;)*
        /// Every destination driver, in the order they are asked to claim a URL.
        pub static DRIVERS: &[&dyn registry::Driver] = &[$(&$kind::DRIVER),*];
    };
}
registry!(duckdb, clickhouse, snowflake, postgres);

pub use registry::{open, Settings};

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::decode::PgTimestamp;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::model::change::{Batch, TableMap, Version};
use crate::model::kind::Kind;
use crate::model::schema::TableName;
use crate::model::schema::{
    DestColumn, DestForeignKey, SchemaChange, SourceType, TableSchema, UserType,
};
use crate::source::postgres::copy_out::CopySource;
use crate::source::RowSource;

/// What the destination remembers about a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineState {
    pub slot: String,
    pub phase: Phase,
}

/// Where a pipeline is, each phase set by one step of the destination's state store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Set by [`Destination::begin_snapshot`]: the slot is recorded, the copy has no
    /// consistent point yet. A run that finds this starts the snapshot over.
    Begun,
    /// Set by [`Destination::set_consistent_point`]: copying under the snapshot exported at
    /// `consistent`. A run that finds this starts the snapshot over too.
    Copying { consistent: Lsn },
    /// Set by [`Destination::complete_snapshot`] (`applied` = `consistent`), advanced by every
    /// [`Session::commit`]: the copy is whole and the stream resumes after `applied`.
    Streaming {
        consistent: Lsn,
        applied: Lsn,
        /// Source commit time of the last applied transaction (for lag in seconds).
        applied_commit_time: Option<SystemTime>,
    },
}

impl PipelineState {
    /// The state as a store keeps it in columns: a consistent point, an applied position, a
    /// completion mark and a commit time. A completion mark without a consistent point was
    /// never written by cdc, and is refused.
    pub fn from_stored(
        slot: &str,
        consistent: Option<Lsn>,
        applied: Option<Lsn>,
        completed: bool,
        applied_commit_time: Option<SystemTime>,
    ) -> Result<PipelineState> {
        let phase = match (consistent, completed) {
            (None, false) => Phase::Begun,
            (Some(consistent), false) => Phase::Copying { consistent },
            (Some(consistent), true) => Phase::Streaming {
                consistent,
                applied: applied.unwrap_or(consistent),
                applied_commit_time,
            },
            (None, true) => {
                return Err(Error::definite(format!(
                    "the destination's state says the snapshot of slot {slot} completed but records no \
                     consistent point; run `cdc snapshot --force` to copy the tables again"
                )))
            }
        };
        Ok(PipelineState {
            slot: slot.to_owned(),
            phase,
        })
    }

    /// Whether the snapshot is whole, so `cdc run` may stream.
    pub fn snapshot_completed(&self) -> bool {
        matches!(self.phase, Phase::Streaming { .. })
    }

    /// The slot's consistent point, once the copy has one.
    pub fn consistent_lsn(&self) -> Option<Lsn> {
        match self.phase {
            Phase::Begun => None,
            Phase::Copying { consistent } | Phase::Streaming { consistent, .. } => Some(consistent),
        }
    }

    /// The position the destination holds everything up to, once streaming.
    pub fn applied_lsn(&self) -> Option<Lsn> {
        match self.phase {
            Phase::Streaming { applied, .. } => Some(applied),
            _ => None,
        }
    }

    /// Source commit time of the last applied transaction.
    pub fn applied_commit_time(&self) -> Option<SystemTime> {
        match self.phase {
            Phase::Streaming {
                applied_commit_time,
                ..
            } => applied_commit_time,
            _ => None,
        }
    }
}

/// What `cdc sync` remembers about one destination table between passes.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct SyncState {
    pub destination_table: String,
    pub source_table: String,
    pub strategy: String,
    /// Where the next pass starts: the last key (`new_rows`), the last `modified_column`
    /// value (`modified`), the xmin horizon (`xmin`), as text; none for `reload` and `diff`.
    pub position: Option<String>,
    /// When the last pass ended.
    #[serde(serialize_with = "serialize_time")]
    pub last_pass: Option<SystemTime>,
    /// Rows the last pass wrote (inserted, updated or deleted).
    pub rows: i64,
    pub seconds: f64,
}

fn serialize_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::model::time::format_utc(*t)),
        None => s.serialize_none(),
    }
}

/// A destination table's size, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSize {
    pub rows: i64,
    /// Bytes on disk, where the destination can tell.
    pub bytes: Option<i64>,
}

/// The error for an update of a keyless table that carries no old row.
pub fn no_old_row(t: &TableMap) -> Error {
    Error::definite(format!(
        "update of {} carries no old row; set REPLICA IDENTITY FULL on the source table",
        t.source
    ))
}

/// Updates that kept TOAST values unchanged but found no destination row: they cannot be
/// written (their unchanged values are known only to the source, and a NULL or a guess would
/// be wrong data), so they are counted and reported.
pub fn toast_rows_missing(metrics: &Metrics, t: &TableMap, missing: u64) {
    if missing > 0 {
        tracing::warn!(
            table = %t.dest,
            missing,
            "updates that kept TOAST values unchanged found no row on the destination and were not \
             written (a snapshot `where` filter left the row out, or the destination diverged; \
             while new columns are backfilled, rows inserted meanwhile are counted here too, and \
             their inserts follow in the stream); `cdc verify` lists the differences, \
             `cdc snapshot --force` copies the table again"
        );
        metrics.rows_missing(missing);
    }
}

/// The shape a snapshot's `COPY ... TO STDOUT` must produce for [`Loader::load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Binary,
    Csv,
}

/// One table of a snapshot: its source schema and destination name.
pub struct SnapshotTable<'a> {
    pub schema: &'a TableSchema,
    pub destination: &'a TableName,
}

/// A destination: its state, its snapshot steps, and sessions that apply changes.
#[async_trait]
pub trait Destination: Send + Sync {
    /// Short name for logs and errors (`postgres`, `duckdb`).
    fn kind(&self) -> &'static str;
    /// Whether two sessions may hold open write transactions at once, with row locks
    /// ordering them: the apply-ahead path (`stream/speculate.rs`) needs it.
    fn concurrent_sessions(&self) -> bool;
    /// Changed rows per destination transaction when `apply.batch_max_rows` is not set.
    fn default_batch_rows(&self) -> usize {
        crate::config::ApplyConfig::DEFAULT_BATCH_ROWS
    }

    /// Create the state schema and tables if missing.
    async fn ensure_state(&self) -> Result<()>;
    /// The state of `slot`, if any. `Ok(None)` also when the state tables do not exist yet.
    async fn load_state(&self, slot: &str) -> Result<Option<PipelineState>>;
    /// Record that a snapshot of `slot` is starting (before the slot exists), replacing any
    /// earlier record of it and its tables without a moment with none.
    async fn begin_snapshot(&self, slot: &str, publication: &str) -> Result<()>;
    async fn set_consistent_point(&self, slot: &str, lsn: Lsn) -> Result<()>;
    /// Mark the snapshot complete: the applied position becomes the consistent point.
    async fn complete_snapshot(&self, slot: &str) -> Result<()>;
    /// Rows copied per source table of `slot`.
    async fn snapshot_tables(&self, slot: &str) -> Result<Vec<(String, i64)>>;
    /// Tables that joined `slot`'s pipeline after its snapshot, with the position their copy
    /// saw up to (their changes before it are skipped).
    async fn joined_tables(&self, slot: &str) -> Result<Vec<(String, Lsn)>>;
    /// Record a table copied into a running pipeline (after its rows are in place).
    async fn record_join(
        &self,
        slot: &str,
        source: &TableName,
        destination: &TableName,
        rows: u64,
        at: Lsn,
    ) -> Result<()>;
    /// Forget a table that is no longer configured (its destination table stays).
    async fn forget_table(&self, slot: &str, source: &TableName) -> Result<()>;

    /// Destination-side prerequisites of a snapshot, as problems with their fixes.
    async fn check(
        &self,
        tables: &[SnapshotTable<'_>],
        types: &[UserType],
        state_schema: &str,
        replace: bool,
    ) -> Result<Vec<String>>;
    /// Create schemas, types and empty tables like their sources (keys come in `finish_table`).
    async fn create_tables(
        &self,
        tables: &[SnapshotTable<'_>],
        types: &[UserType],
        replace: bool,
    ) -> Result<()>;
    /// What a snapshot COPY of `table` must produce for this destination's loader.
    fn copy_format(&self, table: &TableSchema) -> CopyFormat;
    /// A connection that bulk-loads COPY output (one per snapshot worker).
    async fn loader(&self) -> Result<Box<dyn Loader>>;
    /// After every range of a table is in: keys, indexes, and (with a slot) the "table done"
    /// record, at once. Returns the indexes that could not be created.
    async fn finish_table(
        &self,
        slot: Option<&str>,
        table: &SnapshotTable<'_>,
        rows: u64,
    ) -> Result<Vec<String>>;

    /// A session that applies changes.
    async fn session(&self, metrics: Arc<Metrics>) -> Result<Box<dyn Session>>;

    /// Keep the destination open until the returned value is dropped (a `cdc sync` pass does
    /// many small pieces of work); `None` where that changes nothing.
    async fn hold(&self) -> Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        Ok(None)
    }

    /// Where a reload of `table` is built before [`Destination::replace_table`] swaps it in.
    fn staging_name(&self, table: &TableName) -> TableName;
    /// Replace `table` by `staging` (which then no longer exists) in one transaction:
    /// readers see the old rows or the new ones, never an empty or half-loaded table.
    async fn replace_table(&self, staging: &TableName, table: &TableName) -> Result<()>;
    /// Drop a table if it exists (a staging table left by an interrupted reload).
    async fn drop_table(&self, table: &TableName) -> Result<()>;
    /// Rows (and bytes, where known) of a destination table; `None` when it does not exist.
    async fn table_size(&self, table: &TableName) -> Result<Option<TableSize>>;
    /// Whether a destination table exists (without counting its rows).
    async fn table_exists(&self, table: &TableName) -> Result<bool>;

    /// What a column of type `type_name` (this destination's spelling) holds, for sources
    /// whose values are checked against the column they go to (SQLite).
    fn value_kind(&self, type_name: &str) -> Kind {
        Kind::of(type_name)
    }
    /// Whether this destination enforces foreign keys (then `cdc sync` creates a SQLite
    /// source's on it, after the pass).
    fn enforces_foreign_keys(&self) -> bool {
        false
    }
    /// Create a foreign key on `table` unless one on the same columns to the same table
    /// exists; `Ok(true)` when created. Destinations that do not enforce foreign keys return
    /// `Ok(false)`.
    async fn ensure_foreign_key(&self, table: &TableName, fk: &DestForeignKey) -> Result<bool> {
        let _ = (table, fk);
        Ok(false)
    }

    /// Every row of `map.dest` (the columns of `map`, as text) in key order, text keys
    /// (`text_key[i]` for `map.key[i]`) by their bytes — the order SQLite's BINARY collation
    /// gives — so a source that is not Postgres can be compared row by row, block by block.
    async fn rows_by_key(&self, map: &TableMap, text_key: &[bool]) -> Result<Box<dyn RowSource>>;

    /// The `cdc sync` state of every destination table that has one.
    async fn sync_states(&self) -> Result<Vec<SyncState>>;
    /// Record a table's `cdc sync` state (replacing the previous one).
    async fn save_sync_state(&self, state: &SyncState) -> Result<()>;
}

/// Bulk loading of a snapshot.
#[async_trait]
pub trait Loader: Send {
    /// Run `out_sql` (a `COPY ... TO STDOUT` in [`Destination::copy_format`]) on `src` and load
    /// its rows into `table.destination`; returns the row count. `bytes` counts the data.
    async fn load(
        &mut self,
        src: &mut CopySource,
        out_sql: &str,
        table: &SnapshotTable<'_>,
        bytes: &AtomicU64,
    ) -> Result<u64>;
    /// Load rows from a source that is not a Postgres COPY (a SQLite file), as text values
    /// in `table.schema`'s column order, block by block. `Ok(None)`: this destination has no
    /// bulk path for them (nothing was read; the caller writes through a session instead).
    async fn load_rows(
        &mut self,
        rows: &mut (dyn RowSource + '_),
        table: &SnapshotTable<'_>,
    ) -> Result<Option<u64>> {
        let _ = (rows, table);
        Ok(None)
    }
}

/// A destination session applying changes inside one open transaction at a time.
#[async_trait]
pub trait Session: Send {
    /// Columns of a destination table (generated columns left out: they are recomputed).
    async fn columns(&mut self, table: &TableName) -> Result<Vec<DestColumn>>;
    /// Whether a destination column of type `dest_type` still fits a source column of type
    /// `source` (else the stream retypes it).
    fn type_matches(&self, dest_type: &str, source: &SourceType) -> bool;
    /// Whether a transaction is open.
    fn in_transaction(&self) -> bool;
    /// The stored generated columns the destination table has, or `None` when this destination
    /// leaves generated columns out (they are then never added).
    async fn generated_columns(&mut self, _table: &TableName) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
    /// Where the versions of `cdc sync`'s next writes to `table` start: above every version
    /// the table holds, for destinations that keep the row with the highest version instead of
    /// ordering writes by transactions (ClickHouse). `None` where versions are not read.
    async fn sync_versions_from(&mut self, _table: &TableName) -> Result<Option<Version>> {
        Ok(None)
    }
    /// Write a batch of changes into the open transaction (opening it if needed).
    async fn write(&mut self, batch: Batch) -> Result<()>;
    /// Empty tables inside the open transaction.
    async fn truncate(&mut self, tables: &[Arc<TableMap>], restart_identity: bool) -> Result<()>;
    /// Repeat a source schema change inside the open transaction.
    async fn alter(&mut self, table: &TableName, change: &SchemaChange) -> Result<()>;
    /// Commit the open transaction without a source position (`cdc sync`, repairs).
    async fn commit_rows(&mut self) -> Result<()>;
    /// Record `end_lsn` (and the source commit time) as applied and commit.
    async fn commit(&mut self, slot: &str, end_lsn: Lsn, commit_time: PgTimestamp) -> Result<()>;
    /// Abandon the open transaction.
    async fn rollback(&mut self) -> Result<()>;
    /// Move the applied position to `lsn` outside any transaction (nothing in flight).
    async fn advance_idle(&mut self, slot: &str, lsn: Lsn) -> Result<()>;
}

/// A destination table that is missing where it should exist.
pub(crate) fn missing_table(table: &TableName) -> Error {
    Error::definite(format!(
        "destination table {table} does not exist: run `cdc snapshot --force` to recreate the pipeline"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_state_is_one_of_three_phases() {
        let at = |consistent, applied, done| {
            PipelineState::from_stored("s", consistent, applied, done, None).map(|p| p.phase)
        };
        assert_eq!(at(None, None, false).unwrap(), Phase::Begun);
        let (c, a) = (Lsn(16), Lsn(32));
        assert_eq!(
            at(Some(c), None, false).unwrap(),
            Phase::Copying { consistent: c }
        );
        // An applied position before completion is not a streaming position.
        assert_eq!(
            at(Some(c), Some(a), false).unwrap(),
            Phase::Copying { consistent: c }
        );
        let streaming = PipelineState::from_stored("s", Some(c), Some(a), true, None).unwrap();
        assert!(streaming.snapshot_completed());
        assert_eq!(
            (streaming.consistent_lsn(), streaming.applied_lsn()),
            (Some(c), Some(a))
        );
        // Completed with no applied position yet resumes from the consistent point.
        assert_eq!(
            at(Some(c), None, true).unwrap().clone(),
            Phase::Streaming {
                consistent: c,
                applied: c,
                applied_commit_time: None,
            }
        );
        let e = at(None, Some(a), true).unwrap_err();
        assert!(e.to_string().contains("cdc snapshot --force"), "{e}");
    }
}
