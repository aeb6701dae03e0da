//! The destination-neutral side of streaming: changes queued per table (`Pending`), handed
//! over as a `Batch` to a destination [`Session`], committed together with the position they
//! bring the destination to.
//!
//! ```text
//!  push(table, RowOp) ─► Pending (per table, source order)
//!        flush() ─► Batch ─► Session::write (into the open destination transaction)
//!        commit(end_lsn) ► flush ─► Session::commit (data and position together)
//! ```
//!
//! `flush` may run many times inside one destination transaction (a source transaction larger
//! than memory is applied in chunks); only `commit` ends it. What a destination needs to turn
//! a table's changes into writes is here too, pure and shared: `reduce` (the last change per
//! key) and `keyless_steps` (changes of a keyless table in an order that keeps their effect).
//!
//! A `Pending` can also live outside the applier, filled by another task and handed over as a
//! `Batch` (the apply-ahead path does this), so that gathering the next batch overlaps writing
//! this one.

mod reduce;
mod table;

use std::sync::Arc;

pub use reduce::{key_values, moved_from, reduce, reduce_with_origin, toast_moves, Final, RowOp};
pub use table::{MappedColumn, TableMap};

use crate::config::TableName;
use crate::decode::{Datum, PgTimestamp};
use crate::destination::{DestColumn, SchemaChange, Session};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;

/// Applies changes to the destination through one of its sessions.
pub struct Applier {
    session: Box<dyn Session>,
    slot: String,
    pending: Pending,
}

/// Changes waiting to be written, grouped by table in first-seen order, each table's in
/// source order.
#[derive(Default)]
pub struct Pending {
    tables: Vec<(Arc<TableMap>, Vec<RowOp>)>,
    /// Each change's [`Version`], parallel to `tables`.
    versions: Vec<Vec<Version>>,
    rows: usize,
    bytes: usize,
}

/// Where a change sits in the source's history: its transaction's commit LSN in the high 64
/// bits and its position among that transaction's changes in the low 64. Taken from the WAL,
/// so a replay after a crash gives every change the very same version; destinations without
/// transactions (ClickHouse) keep the row with the highest one. 0 where unknown (a change
/// applied ahead of its commit); the snapshot's rows are older than every change.
pub type Version = u128;

/// The version of the `seq`-th change of the transaction committing at `commit`.
pub fn version(commit: Lsn, seq: u64) -> Version {
    (u128::from(commit.0) << 64) | u128::from(seq)
}

impl Pending {
    /// Queue one change.
    pub fn push(&mut self, table: &Arc<TableMap>, op: RowOp) {
        self.push_at(table, op, 0)
    }

    /// Queue one change with its version.
    pub fn push_at(&mut self, table: &Arc<TableMap>, op: RowOp, version: Version) {
        self.rows += 1;
        self.bytes += match &op {
            RowOp::Insert(r) | RowOp::Delete(r) => datum_bytes(r),
            RowOp::Update { old, new } => datum_bytes(new) + old.as_deref().map_or(0, datum_bytes),
        };
        match self.tables.iter().position(|(t, _)| Arc::ptr_eq(t, table)) {
            Some(i) => {
                self.tables[i].1.push(op);
                self.versions[i].push(version);
            }
            None => {
                self.tables.push((table.clone(), vec![op]));
                self.versions.push(vec![version]);
            }
        }
    }

    /// Rows waiting.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of row data waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Everything waiting, as a batch to write, leaving this empty.
    pub fn take_batch(&mut self) -> Batch {
        let tables = std::mem::take(&mut self.tables);
        let versions = std::mem::take(&mut self.versions);
        self.rows = 0;
        self.bytes = 0;
        Batch { tables, versions }
    }

    fn clear(&mut self) {
        *self = Pending::default();
    }
}

/// Changes taken from a `Pending`, to be written in one go.
pub struct Batch {
    tables: Vec<(Arc<TableMap>, Vec<RowOp>)>,
    versions: Vec<Vec<Version>>,
}

impl Batch {
    /// Each table's changes, in source order; tables in first-seen order.
    pub fn tables(&self) -> &[(Arc<TableMap>, Vec<RowOp>)] {
        &self.tables
    }

    /// Each change's version, parallel to [`Batch::tables`].
    pub fn versions(&self) -> &[Vec<Version>] {
        &self.versions
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The tables and their changes, owned (for a writer on another thread).
    pub fn into_tables(self) -> Vec<(Arc<TableMap>, Vec<RowOp>)> {
        self.tables
    }
}

/// A value's text, `None` for NULL and for an unchanged TOAST value.
pub fn text(d: &Datum) -> Option<&str> {
    match d {
        // pgoutput text is valid UTF-8 (client_encoding UTF8); a bad byte would fail the cast.
        Datum::Text(b) | Datum::Binary(b) => Some(std::str::from_utf8(b).unwrap_or("\u{FFFD}")),
        Datum::Null | Datum::UnchangedToast => None,
    }
}

fn datum_bytes(row: &[Datum]) -> usize {
    row.iter()
        .map(|d| match d {
            Datum::Text(b) | Datum::Binary(b) => b.len() + 8,
            _ => 8,
        })
        .sum()
}

/// One step of a keyless table's changes (see [`keyless_steps`]).
pub enum KeylessStep<'a> {
    /// A run of inserts: they commute with each other, and the run still sits between the
    /// updates and deletes around it.
    Inserts(Vec<&'a [Datum]>),
    /// Delete one row equal to these values.
    Delete(&'a [Datum]),
    /// Change one row equal to `old` (if the source sent it) into `new`.
    Update {
        old: Option<&'a [Datum]>,
        new: &'a [Datum],
    },
}

/// A keyless table's (REPLICA IDENTITY FULL, no primary key) changes as steps to apply in
/// order: rows are matched on all their old values, duplicates are allowed and exactly one of
/// them is touched per change.
pub fn keyless_steps(ops: &[RowOp]) -> Vec<KeylessStep<'_>> {
    let mut steps: Vec<KeylessStep<'_>> = Vec::new();
    for op in ops {
        match op {
            RowOp::Insert(r) => match steps.last_mut() {
                Some(KeylessStep::Inserts(rows)) => rows.push(r),
                _ => steps.push(KeylessStep::Inserts(vec![r])),
            },
            RowOp::Delete(old) => steps.push(KeylessStep::Delete(old)),
            RowOp::Update { old, new } => steps.push(KeylessStep::Update {
                old: old.as_deref(),
                new,
            }),
        }
    }
    steps
}

/// The error for an update of a keyless table that carries no old row.
pub fn no_old_row(t: &TableMap) -> Error {
    Error::Definite(format!(
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

impl Applier {
    pub fn new(session: Box<dyn Session>, slot: &str) -> Self {
        Applier {
            session,
            slot: slot.to_owned(),
            pending: Pending::default(),
        }
    }

    /// Columns of a destination table (generated columns left out: they are recomputed).
    pub async fn dest_columns(&mut self, dest: &TableName) -> Result<Vec<DestColumn>> {
        self.session.columns(dest).await
    }

    /// The destination's session (type mapping, idle position).
    pub fn session(&mut self) -> &mut dyn Session {
        self.session.as_mut()
    }

    /// Rows waiting to be written.
    pub fn pending_rows(&self) -> usize {
        self.pending.rows()
    }

    /// Bytes of row data waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.bytes()
    }

    /// Whether a destination transaction is open (changes written or pending, not committed).
    pub fn in_transaction(&self) -> bool {
        self.session.in_transaction() || self.pending.rows() > 0
    }

    /// Queue one change with its version.
    pub fn push(&mut self, table: &Arc<TableMap>, op: RowOp, version: Version) {
        self.pending.push_at(table, op, version);
    }

    /// Write everything pending into the open destination transaction (opening it if needed).
    pub async fn flush(&mut self) -> Result<()> {
        if self.pending.rows() == 0 {
            return Ok(());
        }
        let batch = self.pending.take_batch();
        self.write(batch).await
    }

    /// Write a batch into the open destination transaction (opening it if needed).
    pub async fn write(&mut self, batch: Batch) -> Result<()> {
        self.session.write(batch).await
    }

    /// Empty destination tables inside the open transaction, after what came before.
    pub async fn truncate(
        &mut self,
        tables: &[Arc<TableMap>],
        restart_identity: bool,
    ) -> Result<()> {
        self.flush().await?;
        self.session.truncate(tables, restart_identity).await
    }

    /// Repeat a source schema change inside the open transaction, after what came before.
    pub async fn alter(&mut self, dest: &TableName, change: &SchemaChange) -> Result<()> {
        self.flush().await?;
        self.session.alter(dest, change).await
    }

    /// Write what is pending, record `end_lsn` as applied, and commit.
    pub async fn commit(&mut self, end_lsn: Lsn, commit_time: PgTimestamp) -> Result<()> {
        self.flush().await?;
        self.session.commit(&self.slot, end_lsn, commit_time).await
    }

    /// Abandon the open transaction and everything pending (it will be streamed again).
    pub async fn rollback(&mut self) -> Result<()> {
        self.pending.clear();
        self.session.rollback().await
    }

    /// Record `lsn` as applied while nothing is in flight.
    pub async fn advance_idle(&mut self, lsn: Lsn) -> Result<()> {
        self.session.advance_idle(&self.slot, lsn).await
    }
}
