//! The destination side of streaming: changes in, set-based writes in one open destination
//! transaction, committed together with the position they bring the destination to.
//!
//! ```text
//!  push(table, RowOp) ─► Pending (per table, source order)
//!        flush() ─► Batch ─► write: BEGIN (once) ─► per table: reduce ─► DELETE /
//!                                    UPDATE of existing keys / INSERT ON CONFLICT /
//!                                    UPDATE of present columns
//!        commit(end_lsn) ► flush ─► UPDATE cdc.pipeline SET applied_lsn ─► COMMIT
//! ```
//!
//! **The data and the position commit in the same transaction**, so after a crash the
//! destination is exactly at a source commit boundary and resumes from there. `flush` may run
//! many times inside one destination transaction (a source transaction larger than memory is
//! applied in chunks); only `commit` ends it. If a set-based write hits a unique violation
//! (two rows swapping a unique value), that table's changes are replayed row by row in
//! source order, as the source executed them.
//!
//! A `Pending` can also live outside the applier, filled by another task and handed over as a
//! `Batch` (the apply-ahead path does this), so that gathering the next batch overlaps writing
//! this one.

mod reduce;
mod sql;
mod table;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

pub use reduce::RowOp;
use reduce::{reduce, Final};
pub use table::{MappedColumn, TableMap};

use crate::config::TableName;
use crate::conninfo::ConnInfo;
use crate::decode::{Datum, PgTimestamp};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::snapshot::state::StateStore;

/// Applies changes to the destination.
pub struct Applier {
    client: Client,
    store: StateStore,
    slot: String,
    in_txn: bool,
    pending: Pending,
    statements: HashMap<String, Statement>,
    metrics: Arc<Metrics>,
}

/// Changes waiting to be written, grouped by table in first-seen order, each table's in
/// source order.
#[derive(Default)]
pub struct Pending {
    tables: Vec<(Arc<TableMap>, Vec<RowOp>)>,
    rows: usize,
    bytes: usize,
}

impl Pending {
    /// Queue one change.
    pub fn push(&mut self, table: &Arc<TableMap>, op: RowOp) {
        self.rows += 1;
        self.bytes += match &op {
            RowOp::Insert(r) | RowOp::Delete(r) => datum_bytes(r),
            RowOp::Update { old, new } => datum_bytes(new) + old.as_deref().map_or(0, datum_bytes),
        };
        match self.tables.iter_mut().find(|(t, _)| Arc::ptr_eq(t, table)) {
            Some((_, ops)) => ops.push(op),
            None => self.tables.push((table.clone(), vec![op])),
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
        self.rows = 0;
        self.bytes = 0;
        Batch { tables }
    }

    fn clear(&mut self) {
        *self = Pending::default();
    }
}

/// Changes taken from a `Pending`, to be written in one go.
pub struct Batch {
    tables: Vec<(Arc<TableMap>, Vec<RowOp>)>,
}

fn text(d: &Datum) -> Option<&str> {
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

impl Applier {
    /// Connect to the destination. The session's search path is empty: every name we send is
    /// qualified, and type names come back qualified from `format_type`.
    pub async fn connect(
        info: &ConnInfo,
        store: StateStore,
        slot: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let client = crate::pg::connect(info).await?;
        client
            .batch_execute("SET search_path = ''")
            .await
            .map_err(Error::pg("preparing the apply session"))?;
        Ok(Applier {
            client,
            store,
            slot: slot.to_owned(),
            in_txn: false,
            pending: Pending::default(),
            statements: HashMap::new(),
            metrics,
        })
    }

    /// The destination connection (for catalog reads between transactions).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Columns of a destination table: `(name, qualified type, is primary key)`, without
    /// generated columns (they are recomputed, never replicated).
    pub async fn dest_columns(&self, dest: &TableName) -> Result<Vec<(String, String, bool)>> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                        COALESCE(a.attnum = ANY (i.indkey::int2[]), false)
                   FROM pg_attribute a
                   LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                  ORDER BY a.attnum",
                &[&dest.quoted()],
            )
            .await
            .map_err(Error::pg(format!("reading the columns of {dest}")))?;
        if rows.is_empty() {
            return Err(Error::Definite(format!(
                "destination table {dest} does not exist: run `cdc snapshot --force` to recreate the pipeline"
            )));
        }
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
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
        self.in_txn || self.pending.rows() > 0
    }

    /// Queue one change.
    pub fn push(&mut self, table: &Arc<TableMap>, op: RowOp) {
        self.pending.push(table, op);
    }

    async fn begin(&mut self) -> Result<()> {
        if !self.in_txn {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(Error::pg("starting a destination transaction"))?;
            self.in_txn = true;
        }
        Ok(())
    }

    async fn statement(&mut self, sql: String) -> Result<Statement> {
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(&sql)
            .await
            .map_err(Error::pg(format!("preparing {sql}")))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// Run `sql` with one text array per listed column of `rows`.
    async fn exec_arrays(&mut self, sql: String, rows: &[&[Datum]], cols: &[usize]) -> Result<u64> {
        let stmt = self.statement(sql).await?;
        let arrays: Vec<Vec<Option<&str>>> = cols
            .iter()
            .map(|&c| rows.iter().map(|r| r.get(c).and_then(text)).collect())
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        self.client
            .execute(&stmt, &params)
            .await
            .map_err(Error::pg("applying changes"))
    }

    /// Run `sql` with scalar text parameters.
    async fn exec_values(&mut self, sql: String, values: &[Option<&str>]) -> Result<u64> {
        let stmt = self.statement(sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.client
            .execute(&stmt, &params)
            .await
            .map_err(Error::pg("applying changes"))
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
        if batch.tables.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        for (table, ops) in &batch.tables {
            if table.is_keyless() {
                self.apply_keyless(table, ops).await?;
                continue;
            }
            self.client
                .batch_execute("SAVEPOINT cdc_table")
                .await
                .map_err(Error::pg("savepoint"))?;
            match self.apply_set(table, &reduce(ops, &table.key)).await {
                Ok(()) => {}
                Err(e) if e.sqlstate() == Some("23505") => {
                    tracing::debug!(table = %table.dest, "unique conflict in set-based apply; replaying in source order");
                    self.client
                        .batch_execute("ROLLBACK TO SAVEPOINT cdc_table")
                        .await
                        .map_err(Error::pg("rollback to savepoint"))?;
                    self.apply_in_order(table, ops).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Write the final states of one keyed table's keys.
    async fn apply_set(&mut self, t: &TableMap, finals: &[Final<'_>]) -> Result<()> {
        let deletes: Vec<&[Datum]> = finals
            .iter()
            .filter_map(|f| match f {
                Final::Delete(r) => Some(*r),
                _ => None,
            })
            .collect();
        if !deletes.is_empty() {
            self.exec_arrays(sql::delete(t), &deletes, &t.key).await?;
        }
        let all: Vec<usize> = (0..t.columns.len()).collect();
        // Full rows of keys that existed before the batch go through a plain UPDATE when the
        // table has columns to set; the others through the upsert.
        let update_sql = sql::update_present(t, &all);
        let mut full: Vec<&[Datum]> = Vec::new();
        let mut existing: Vec<&[Datum]> = Vec::new();
        let mut partial: HashMap<Vec<usize>, Vec<&[Datum]>> = HashMap::new();
        for f in finals {
            let Some(row) = f.written() else { continue };
            if row.contains(&Datum::UnchangedToast) {
                let present: Vec<usize> = (0..row.len())
                    .filter(|&i| row[i] != Datum::UnchangedToast)
                    .collect();
                partial.entry(present).or_default().push(row);
            } else if matches!(f, Final::Update(_)) && update_sql.is_some() {
                existing.push(row);
            } else {
                full.push(row);
            }
        }
        if let Some((update_sql, cols)) = update_sql.filter(|_| !existing.is_empty()) {
            let updated = self.exec_arrays(update_sql, &existing, &cols).await?;
            if updated < existing.len() as u64 {
                // The destination lacks rows the source had: the table has a snapshot `where`
                // filter that streaming does not repeat, or the destination diverged. Write them
                // anyway, as an upsert would have; rewriting the rows the UPDATE already set is
                // harmless. Debug level: with a filter this is routine.
                tracing::debug!(
                    table = %t.dest,
                    missing = existing.len() as u64 - updated,
                    "rows updated on the source were missing on the destination; writing them with an upsert"
                );
                full.extend(existing);
            }
        }
        if !full.is_empty() {
            self.exec_arrays(sql::upsert(t), &full, &all).await?;
        }
        for (present, rows) in partial {
            if let Some((stmt, cols)) = sql::update_present(t, &present) {
                let updated = self.exec_arrays(stmt, &rows, &cols).await?;
                let missing = rows.len() as u64 - updated.min(rows.len() as u64);
                if missing > 0 {
                    // Unlike full rows, these cannot be written: their unchanged TOAST values
                    // are known only to the source, and a NULL or a guess would be wrong data.
                    tracing::warn!(
                        table = %t.dest,
                        missing,
                        "updates that kept TOAST values unchanged found no row on the destination and were not \
                         written (a snapshot `where` filter left the row out, or the destination diverged); \
                         `cdc verify` lists the differences, `cdc snapshot --force` copies the table again"
                    );
                    self.metrics.rows_missing(missing);
                }
            }
        }
        Ok(())
    }

    /// Keyed table, one change at a time in source order (the fallback path): the set-based
    /// path applied to each change alone.
    async fn apply_in_order(&mut self, t: &TableMap, ops: &[RowOp]) -> Result<()> {
        for op in ops {
            self.apply_set(t, &reduce(std::slice::from_ref(op), &t.key))
                .await?;
        }
        Ok(())
    }

    /// Keyless table (REPLICA IDENTITY FULL, no primary key): rows matched on all old values,
    /// one change at a time; duplicates are allowed and exactly one of them is touched.
    async fn apply_keyless(&mut self, t: &TableMap, ops: &[RowOp]) -> Result<()> {
        let all: Vec<usize> = (0..t.columns.len()).collect();
        let mut i = 0;
        while i < ops.len() {
            // A run of inserts goes in one statement: inserts commute with each other, and the
            // run still sits between the updates and deletes around it.
            let run = ops[i..]
                .iter()
                .take_while(|op| matches!(op, RowOp::Insert(_)))
                .count();
            if run > 0 {
                let rows: Vec<&[Datum]> = ops[i..i + run]
                    .iter()
                    .map(|op| {
                        if let RowOp::Insert(r) = op {
                            r.as_slice()
                        } else {
                            unreachable!("run of inserts")
                        }
                    })
                    .collect();
                self.exec_arrays(sql::insert_plain(t), &rows, &all).await?;
                i += run;
                continue;
            }
            let op = &ops[i];
            i += 1;
            match op {
                RowOp::Insert(_) => unreachable!("handled as a run"),
                RowOp::Delete(old) => {
                    let values: Vec<Option<&str>> = old.iter().map(text).collect();
                    self.exec_values(sql::delete_one(t), &values).await?;
                }
                RowOp::Update { old, new } => {
                    let old = old.as_ref().ok_or_else(|| {
                        Error::Definite(format!(
                            "update of {} carries no old row; set REPLICA IDENTITY FULL on the source table",
                            t.source
                        ))
                    })?;
                    let present: Vec<usize> = (0..new.len())
                        .filter(|&i| new[i] != Datum::UnchangedToast)
                        .collect();
                    if let Some(stmt) = sql::update_one(t, &present) {
                        let values: Vec<Option<&str>> = present
                            .iter()
                            .map(|&i| text(&new[i]))
                            .chain(old.iter().map(text))
                            .collect();
                        self.exec_values(stmt, &values).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// TRUNCATE destination tables inside the open transaction, after what came before.
    pub async fn truncate(
        &mut self,
        tables: &[Arc<TableMap>],
        restart_identity: bool,
    ) -> Result<()> {
        self.flush().await?;
        self.begin().await?;
        let names: Vec<String> = tables.iter().map(|t| t.dest.quoted()).collect();
        let sql = format!(
            "TRUNCATE {}{}",
            names.join(", "),
            if restart_identity {
                " RESTART IDENTITY"
            } else {
                ""
            }
        );
        self.client
            .batch_execute(&sql)
            .await
            .map_err(Error::pg("applying TRUNCATE"))
    }

    /// Run DDL (a schema change) inside the open transaction, after what came before.
    pub async fn execute_ddl(&mut self, sql: &str) -> Result<()> {
        self.flush().await?;
        self.begin().await?;
        self.statements.clear();
        self.client
            .batch_execute(sql)
            .await
            .map_err(Error::pg(format!("applying schema change: {sql}")))
    }

    /// Write what is pending, record `end_lsn` as applied, and commit.
    pub async fn commit(&mut self, end_lsn: Lsn, commit_time: PgTimestamp) -> Result<()> {
        self.flush().await?;
        self.begin().await?;
        let stmt = self.statement(self.store.update_applied_sql()).await?;
        let time = commit_time.to_system_time();
        self.client
            .execute(&stmt, &[&self.slot, &end_lsn.to_string(), &time])
            .await
            .map_err(Error::pg("recording the applied position"))?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(Error::pg("committing to the destination"))?;
        self.in_txn = false;
        Ok(())
    }

    /// Abandon the open transaction and everything pending (it will be streamed again).
    pub async fn rollback(&mut self) -> Result<()> {
        self.pending.clear();
        if self.in_txn {
            self.in_txn = false;
            self.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(Error::pg("rolling back"))?;
        }
        Ok(())
    }
}
