//! Changes on their way to a destination: row changes per table (`Pending`), taken as a
//! `Batch`, each with the `Version` that orders it in the source's history; and the pure
//! reductions a destination uses to turn a table's changes into set-based writes.

use std::sync::Arc;

use crate::decode::Datum;
use crate::lsn::Lsn;

pub use super::reduce::{
    key_values, moved_from, reduce, reduce_with_origin, toast_moves, Final, RowOp,
};
pub use super::table_map::{MappedColumn, TableMap};

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

    pub(crate) fn clear(&mut self) {
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
