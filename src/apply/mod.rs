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

use std::sync::Arc;

use crate::decode::PgTimestamp;
use crate::destination::Session;
use crate::error::Result;
use crate::lsn::Lsn;
use crate::model::change::{Batch, Pending, RowOp, TableMap, Version};
use crate::model::schema::TableName;
use crate::model::schema::{DestColumn, SchemaChange};

/// Applies changes to the destination through one of its sessions.
pub struct Applier {
    session: Box<dyn Session>,
    slot: String,
    pending: Pending,
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
