//! Applying a batch to Postgres: set-based statements over `unnest` of text arrays cast to the
//! destination types, in one open transaction that commits together with the position.
//!
//! ```text
//!  write(batch): BEGIN (once) ─► per table: SAVEPOINT ─► reduce ─► DELETE / UPDATE of existing
//!                keys / INSERT ON CONFLICT / UPDATE of present columns
//!                   └ unique violation (two rows swapping a unique value): ROLLBACK TO SAVEPOINT,
//!                     replay that table's changes one at a time in source order
//!  commit(lsn):  UPDATE cdc.pipeline SET applied_lsn ─► COMMIT
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::sql;
use super::state::StateStore;
use crate::decode::{Datum, PgTimestamp};
use crate::destination::{missing_table, Session};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::model::change::{reduce, text, Batch, Final, RowOp, TableMap};
use crate::model::schema::TableName;
use crate::model::schema::{DestColumn, SchemaChange, SourceType};
use crate::model::sql::quote_ident;

/// One destination session.
pub struct PgSession {
    client: Client,
    store: StateStore,
    in_txn: bool,
    statements: HashMap<String, Statement>,
    metrics: Arc<Metrics>,
}

impl PgSession {
    pub(super) fn new(client: Client, store: StateStore, metrics: Arc<Metrics>) -> Self {
        PgSession {
            client,
            store,
            in_txn: false,
            statements: HashMap::new(),
            metrics,
        }
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

    /// Write the final states of one keyed table's keys (`ops`: the changes they come from).
    async fn apply_set(&mut self, t: &TableMap, ops: &[RowOp], finals: &[Final<'_>]) -> Result<()> {
        // Rows whose key changed while TOAST values stayed unchanged: those values are only in
        // the row under its old key, so the row is moved there first, before any delete of
        // that key; then its final state is an ordinary update of the columns it has.
        let moves = crate::model::change::toast_moves(ops, finals, &t.key);
        if !moves.is_empty() {
            self.move_rows(t, &moves).await?;
        }
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
                crate::destination::toast_rows_missing(&self.metrics, t, missing);
            }
        }
        Ok(())
    }

    /// Move rows to new keys (`moves`: the row's final state under its new key, and the row
    /// under the key it had before the batch), replacing stale rows at the new keys. Rows may
    /// trade keys (a swap, a rotation, `id = id + 1` over a range), and a non-deferrable key
    /// refuses any order of single-row moves for those; so every moving row is parked, as it is
    /// now, under its new key in a temporary table, all old and new keys are deleted, and the
    /// parked rows go back in.
    async fn move_rows(&mut self, t: &TableMap, moves: &[(&[Datum], &[Datum])]) -> Result<()> {
        let ctx = || format!("moving rows of {} to their new keys", t.dest);
        // Not prepared once and kept: the temporary table is new each time.
        self.client
            .batch_execute(&format!(
                "CREATE TEMPORARY TABLE {} (LIKE {})",
                sql::MOVED,
                t.dest.quoted()
            ))
            .await
            .map_err(Error::pg(ctx()))?;
        let arrays: Vec<Vec<Option<&str>>> = t
            .key
            .iter()
            .map(|&k| moves.iter().map(|(n, _)| n.get(k).and_then(text)).collect())
            .chain(
                t.key
                    .iter()
                    .map(|&k| moves.iter().map(|(_, o)| o.get(k).and_then(text)).collect()),
            )
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        // A row not found under its old key is counted missing by the update that follows.
        self.client
            .execute(&sql::park_moved(t), &params)
            .await
            .map_err(Error::pg(ctx()))?;
        let (new_rows, old_rows): (Vec<&[Datum]>, Vec<&[Datum]>) = moves.iter().copied().unzip();
        self.exec_arrays(sql::delete(t), &old_rows, &t.key).await?;
        self.exec_arrays(sql::delete(t), &new_rows, &t.key).await?;
        self.client
            .execute(&sql::unpark_moved(t), &[])
            .await
            .map_err(Error::pg(ctx()))?;
        self.client
            .batch_execute(&format!("DROP TABLE {}", sql::MOVED))
            .await
            .map_err(Error::pg(ctx()))?;
        Ok(())
    }

    /// Keyed table, one change at a time in source order (the fallback path): the set-based
    /// path applied to each change alone.
    async fn apply_in_order(&mut self, t: &TableMap, ops: &[RowOp]) -> Result<()> {
        for op in ops {
            let one = std::slice::from_ref(op);
            self.apply_set(t, one, &reduce(one, &t.key)).await?;
        }
        Ok(())
    }

    /// Keyless table (REPLICA IDENTITY FULL, no primary key): rows matched on all old values,
    /// one change at a time; duplicates are allowed and exactly one of them is touched.
    async fn apply_keyless(&mut self, t: &TableMap, ops: &[RowOp]) -> Result<()> {
        let all: Vec<usize> = (0..t.columns.len()).collect();
        for step in crate::model::change::keyless_steps(ops) {
            match step {
                crate::model::change::KeylessStep::Inserts(rows) => {
                    self.exec_arrays(sql::insert_plain(t), &rows, &all).await?;
                }
                crate::model::change::KeylessStep::Delete(old) => {
                    let values: Vec<Option<&str>> = old.iter().map(text).collect();
                    self.exec_values(sql::delete_one(t), &values).await?;
                }
                crate::model::change::KeylessStep::Update { old, new } => {
                    let old = old.ok_or_else(|| crate::destination::no_old_row(t))?;
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
}

#[async_trait]
impl Session for PgSession {
    async fn columns(&mut self, dest: &TableName) -> Result<Vec<DestColumn>> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                        COALESCE(a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]), false)
                   FROM pg_attribute a
                   LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                  ORDER BY a.attnum",
                &[&dest.quoted()],
            )
            .await
            .map_err(Error::pg(format!("reading the columns of {dest}")))?;
        if rows.is_empty() {
            return Err(missing_table(dest));
        }
        Ok(rows
            .into_iter()
            .map(|r| DestColumn {
                name: r.get(0),
                type_name: r.get(1),
                key: r.get(2),
            })
            .collect())
    }

    fn type_matches(&self, dest_type: &str, source: &SourceType) -> bool {
        // The destination declares the source's exact type (created beforehand if user-defined).
        dest_type == source.sql
    }

    fn in_transaction(&self) -> bool {
        self.in_txn
    }

    async fn generated_columns(&mut self, dest: &TableName) -> Result<Option<Vec<String>>> {
        let rows = self
            .client
            .query(
                "SELECT attname::text FROM pg_attribute
                  WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attgenerated <> ''",
                &[&dest.quoted()],
            )
            .await
            .map_err(Error::pg(format!("reading the generated columns of {dest}")))?;
        Ok(Some(rows.into_iter().map(|r| r.get(0)).collect()))
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        for (table, ops) in batch.tables() {
            if table.is_keyless() {
                self.apply_keyless(table, ops).await?;
                continue;
            }
            self.client
                .batch_execute("SAVEPOINT cdc_table")
                .await
                .map_err(Error::pg("savepoint"))?;
            match self.apply_set(table, ops, &reduce(ops, &table.key)).await {
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

    async fn truncate(&mut self, tables: &[Arc<TableMap>], restart_identity: bool) -> Result<()> {
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

    async fn alter(&mut self, dest: &TableName, change: &SchemaChange) -> Result<()> {
        let sql = alter_sql(dest, change).join(";\n");
        tracing::info!(table = %dest, ddl = %sql, "applying a source schema change to the destination");
        self.begin().await?;
        self.statements.clear();
        self.client
            .batch_execute(&sql)
            .await
            .map_err(Error::pg(format!("applying schema change: {sql}")))
    }

    async fn commit_rows(&mut self) -> Result<()> {
        if self.in_txn {
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(Error::pg("committing to the destination"))?;
            self.in_txn = false;
        }
        Ok(())
    }

    async fn commit(&mut self, slot: &str, end_lsn: Lsn, commit_time: PgTimestamp) -> Result<()> {
        self.begin().await?;
        let stmt = self.statement(self.store.update_applied_sql()).await?;
        let time = commit_time.to_system_time();
        self.client
            .execute(&stmt, &[&slot, &end_lsn.to_string(), &time])
            .await
            .map_err(Error::pg("recording the applied position"))?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(Error::pg("committing to the destination"))?;
        self.in_txn = false;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<()> {
        if self.in_txn {
            self.in_txn = false;
            self.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(Error::pg("rolling back"))?;
        }
        Ok(())
    }

    async fn advance_idle(&mut self, slot: &str, lsn: Lsn) -> Result<()> {
        self.client
            .execute(&self.store.advance_idle_sql(), &[&slot, &lsn.to_string()])
            .await
            .map(|_| ())
            .map_err(Error::pg("recording the idle position"))
    }
}

/// The statements repeating `change` on `dest`: added columns, dropped columns, new types
/// (converted through their text form, as the source prints them).
fn alter_sql(dest: &TableName, change: &SchemaChange) -> Vec<String> {
    let t = dest.quoted();
    // Drops first: a column dropped and added again under its name is in both lists.
    let mut ddl: Vec<String> = change
        .dropped
        .iter()
        .map(|n| format!("ALTER TABLE {t} DROP COLUMN {}", quote_ident(n)))
        .collect();
    ddl.extend(
        change
            .added
            .iter()
            .map(|(n, ty)| format!("ALTER TABLE {t} ADD COLUMN {} {}", quote_ident(n), ty.sql)),
    );
    ddl.extend(change.added_generated.iter().map(|(n, ty, expr)| {
        format!(
            "ALTER TABLE {t} ADD COLUMN {} {} GENERATED ALWAYS AS ({expr}) STORED",
            quote_ident(n),
            ty.sql
        )
    }));
    for (n, ty) in &change.retyped {
        let col = quote_ident(n);
        let ty = &ty.sql;
        ddl.push(format!(
            "ALTER TABLE {t} ALTER COLUMN {col} TYPE {ty} USING {col}::text::{ty}"
        ));
    }
    ddl
}
