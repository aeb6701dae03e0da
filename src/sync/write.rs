//! Rows into one destination table through a [`Session`], a destination transaction per
//! `batch_rows`: how every strategy except a full copy writes.
//!
//! Upserts are updates without an old row: a destination matches them by key, updates the row
//! it has, and inserts the ones it lacks (`Session::write` promises both). Deletes carry the key
//! only. Each batch commits on its own, so a pass interrupted at any point leaves whole batches,
//! and a rerun from the stored position writes the same rows again to the same effect.
//!
//! Where the destination keeps the row with the highest version rather than the last
//! committed one (ClickHouse), a writer's versions start above every version its table holds
//! ([`Session::sync_versions_from`]), so they order after every earlier write to the same key,
//! including those of a pass killed before it saved its position.

use std::sync::Arc;

use crate::decode::Datum;
use crate::destination::{Destination, Session};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::change::{Pending, RowOp, TableMap, Version};
use crate::model::schema::TableName;
use crate::model::schema::TableSchema;

/// A session writing one table.
pub struct Writer {
    session: Box<dyn Session>,
    map: Arc<TableMap>,
    pending: Pending,
    batch_rows: usize,
    /// The version of the next write, where the destination keeps the highest one.
    next_version: Option<Version>,
    /// Rows handed to the destination so far.
    pub written: u64,
}

impl Writer {
    /// A writer into `table` for rows shaped like `source`'s copied columns.
    pub async fn open(
        dest: &dyn Destination,
        source: &TableSchema,
        table: &TableName,
        batch_rows: usize,
    ) -> Result<Writer> {
        let mut session = dest.session(Arc::new(Metrics::default())).await?;
        let columns = session.columns(table).await?;
        let map = crate::destination::columns::table_map(source, table, &columns)?;
        let next_version = session.sync_versions_from(table).await?;
        Ok(Writer {
            session,
            map: Arc::new(map),
            pending: Pending::default(),
            batch_rows: batch_rows.max(1),
            next_version,
            written: 0,
        })
    }

    /// The table's columns, in the order rows must come in.
    pub fn map(&self) -> &TableMap {
        &self.map
    }

    /// Insert or update a whole row (values in `map().columns` order).
    pub async fn upsert(&mut self, row: Vec<Datum>) -> Result<()> {
        self.push(RowOp::Update {
            old: None,
            new: row,
        })
        .await
    }

    /// Insert a row known to be new (a table being filled, or a keyless one).
    pub async fn insert(&mut self, row: Vec<Datum>) -> Result<()> {
        self.push(RowOp::Insert(row)).await
    }

    /// Delete the row with this key (key columns by name).
    pub async fn delete(&mut self, key: Vec<(String, Datum)>) -> Result<()> {
        let mut row = vec![Datum::Null; self.map.columns.len()];
        for (name, value) in key {
            let pos = self
                .map
                .columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| {
                    Error::definite(format!("key column {name} is not in {}", self.map.dest))
                })?;
            row[pos] = value;
        }
        self.push(RowOp::Delete(row)).await
    }

    async fn push(&mut self, op: RowOp) -> Result<()> {
        // Each write a version of its own, in the order of the writes: a later write to the
        // same key wins, as it does in a transaction.
        let version = self.next_version.map_or(0, |v| {
            self.next_version = Some(v + 1);
            v
        });
        self.pending.push_at(&self.map, op, version);
        if self.pending.rows() >= self.batch_rows {
            self.flush().await?;
        }
        Ok(())
    }

    /// Write and commit what is pending.
    pub async fn flush(&mut self) -> Result<()> {
        let rows = self.pending.rows();
        if rows == 0 {
            return Ok(());
        }
        let batch = self.pending.take_batch();
        if let Err(e) = self.session.write(batch).await {
            let _ = self.session.rollback().await;
            return Err(e);
        }
        self.session.commit_rows().await?;
        self.written += rows as u64;
        Ok(())
    }

    /// Write the rest; the rows written in all.
    pub async fn finish(mut self) -> Result<u64> {
        self.flush().await?;
        Ok(self.written)
    }
}
