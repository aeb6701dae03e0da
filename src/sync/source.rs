//! The seam between the sync driver and a source: what the driver asks of each kind of
//! source, table by table. The driver (`super`) decides which tables, in what order, with
//! which strategy from which stored position, how many at once, and saves the state; a
//! source reads its tables and writes what it read through the destination.
//!
//! Call order for one pass: `streamed` and `parents` once; `begin_pass`; per table
//! `open_table`, `check`, then one of `full_copy` / `incremental` / `diff`, then
//! `close_table`; `end_pass`; then the driver deletes what the passes deferred (children
//! first) and saves each table's state; `create_foreign_keys` last. A table's error ends that
//! table only.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{Chosen, Ctx, TableSummary};
use crate::config::Strategy;
use crate::decode::Datum;
use crate::destination::Destination;
use crate::error::Result;
use crate::model::schema::{TableName, TableSchema};

/// A key, column by column (destination names), of a row to delete.
pub type Key = Vec<(String, Datum)>;

/// What a strategy did to one table.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Where the table's next pass starts (`None`: from the beginning).
    pub position: Option<String>,
    /// Rows the pass found gone from the source, deleted after every table's writes (children
    /// first, so the destination's foreign keys hold throughout).
    pub deletes: Vec<Key>,
    /// Rows recorded in the table's state.
    pub rows: u64,
}

#[async_trait]
pub trait TableSource: Send + Sync {
    /// One table as it was opened for this pass.
    type Table: Send + Sync;

    /// The table's schema as the source names it (what strategies are checked against), and
    /// as the destination gets it (the entry's renames applied).
    fn schemas(table: &Self::Table) -> (&TableSchema, &TableSchema);

    /// Source tables streamed by `cdc run` into `dest` (which a sync pass must not touch).
    async fn streamed(&self, dest: &dyn Destination) -> Result<Vec<String>> {
        let _ = dest;
        Ok(Vec::new())
    }

    /// The tables each of `tables` references by foreign key.
    async fn parents(&self, tables: &[TableName]) -> Result<HashMap<TableName, Vec<TableName>>>;

    /// Before the first table: a source that can read every table as of one moment starts it.
    async fn begin_pass(&self) -> Result<()> {
        Ok(())
    }
    /// After the last table's reads.
    async fn end_pass(&self) -> Result<()> {
        Ok(())
    }

    /// Open `t` for this pass; an error if it does not exist.
    async fn open_table(&self, t: &Chosen<'_>) -> Result<Self::Table>;
    /// Refuse (or warn about) strategies this source cannot serve for `t`.
    async fn check(&self, t: &Chosen<'_>, table: &Self::Table, base: Strategy) -> Result<()>;
    /// Done with `t`'s reads.
    async fn close_table(&self, table: Self::Table) -> Result<()> {
        drop(table);
        Ok(())
    }

    /// Copy the whole table (its `where` rows) into a staging table and swap it in; the
    /// position returned is `base`'s as of the copy.
    async fn full_copy(
        &self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &Self::Table,
        base: Strategy,
        summary: &mut TableSummary,
    ) -> Result<Outcome>;

    /// `new_rows` / `modified` / `xmin`: the rows past `position`, upserted.
    async fn incremental(
        &self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &Self::Table,
        strategy: Strategy,
        position: Option<&str>,
        summary: &mut TableSummary,
    ) -> Result<Outcome>;

    /// `diff`: what differs upserted, what is gone deferred as deletes.
    async fn diff(
        &self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &Self::Table,
        position: Option<&str>,
        summary: &mut TableSummary,
    ) -> Result<Outcome>;

    /// After the pass: the foreign keys of `t` this source carries over, where missing.
    async fn create_foreign_keys(&self, ctx: &Ctx<'_>, t: &Chosen<'_>) -> Result<()> {
        let _ = (ctx, t);
        Ok(())
    }
}
