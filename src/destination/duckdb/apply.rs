//! Applying changes to DuckDB: each table's reduced changes staged as text with the Appender,
//! then one `MERGE` in key order (an order of magnitude faster than unordered upserts in
//! DuckDB), all in the transaction that also records the position.
//!
//! TOAST-unchanged columns keep the destination's value: each staged row carries a mask of
//! the columns to keep, which the MERGE's `UPDATE SET` reads. A row with kept columns and no
//! destination row cannot be written (its kept values exist only on the source) and is
//! counted as missing, as on Postgres.

use std::sync::Arc;

use async_trait::async_trait;
use duckdb::{appender_params_from_iter, params, params_from_iter, Connection};

use super::handle::{Handle, Pin};
use super::types::{cast_expr, duck_type, to_duckdb_text};
use crate::decode::{Datum, PgTimestamp};
use crate::destination::{missing_table, Session};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::model::change::{reduce, text, Batch, Final, TableMap};
use crate::model::schema::TableName;
use crate::model::schema::{DestColumn, SchemaChange, SourceType};
use crate::model::sql::quote_ident;

pub struct DuckSession {
    handle: Arc<Handle>,
    /// `state_schema.pipeline`, quoted.
    pipeline: String,
    /// Held while a transaction is open.
    txn: Option<Pin>,
    metrics: Arc<Metrics>,
}

impl DuckSession {
    pub(super) fn new(handle: Arc<Handle>, pipeline: String, metrics: Arc<Metrics>) -> Self {
        DuckSession {
            handle,
            pipeline,
            txn: None,
            metrics,
        }
    }

    async fn begin(&mut self) -> Result<()> {
        if self.txn.is_none() {
            let pin = self.handle.pin();
            self.handle
                .run("starting a destination transaction", |c| {
                    c.execute_batch("BEGIN TRANSACTION")
                })
                .await?;
            self.txn = Some(pin);
        }
        Ok(())
    }
}

/// A staging table of `n` VARCHAR columns in the connection's temporary catalog, emptied.
pub(super) fn stage(c: &Connection, n: usize) -> duckdb::Result<String> {
    let name = format!("cdc_stage_{n}");
    let cols: Vec<String> = (0..n).map(|i| format!("c{i} VARCHAR")).collect();
    c.execute_batch(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {name} ({}); DELETE FROM temp.main.{name}",
        cols.join(", ")
    ))?;
    Ok(name)
}

/// Append text rows to a staging table.
pub(super) fn append(
    c: &Connection,
    stage: &str,
    rows: &[Vec<Option<String>>],
) -> duckdb::Result<()> {
    let mut app = c.appender_to_catalog_and_db(stage, "temp", "main")?;
    for row in rows {
        app.append_row(appender_params_from_iter(row.iter().map(|v| v.as_deref())))?;
    }
    app.flush()
}

/// Insert text rows (already rewritten by `to_duckdb_text`) into `dest`'s `names` columns.
pub(super) fn insert_rows(
    c: &Connection,
    dest: &str,
    names: &[String],
    types: &[String],
    rows: &[Vec<Option<String>>],
) -> duckdb::Result<()> {
    let cols: Vec<String> = names.iter().map(|n| quote_ident(n)).collect();
    let casts: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| cast_expr(ty, &format!("c{i}")))
        .collect();
    let stage = stage(c, names.len())?;
    append(c, &stage, rows)?;
    c.execute_batch(&format!(
        "INSERT INTO {dest} ({}) SELECT {} FROM temp.main.{stage}; DELETE FROM temp.main.{stage}",
        cols.join(", "),
        casts.join(", ")
    ))
}

/// A value for DuckDB: the Postgres text rewritten for the column's type.
pub(super) fn value(t: &TableMap, col: usize, d: &Datum) -> Result<Option<String>> {
    match text(d) {
        None => Ok(None),
        Some(s) => to_duckdb_text(&t.columns[col].dest_type, s)
            .map(|v| Some(v.into_owned()))
            .map_err(|e| {
                Error::definite(format!("{}: column {}: {e}", t.dest, t.columns[col].name))
            }),
    }
}

/// `d."a" = s."a" AND ...` over the key columns.
fn key_match(t: &TableMap, left: &str, right: &str) -> String {
    t.key
        .iter()
        .map(|&k| {
            let c = quote_ident(&t.columns[k].name);
            format!("{left}.{c} = {right}.{c}")
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The MERGE of one keyed table's staged final states: columns `c0..cN` (the table's), then
/// `op` ('D' delete, 'U' upsert) and `keep` (one '0'/'1' per column: keep the destination's).
fn merge_sql(t: &TableMap, dest: &str, stage: &str) -> String {
    let n = t.columns.len();
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let source: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{} AS {}",
                cast_expr(&c.dest_type, &format!("c{i}")),
                cols[i]
            )
        })
        .chain([format!("c{n} AS cdc_op"), format!("c{} AS cdc_keep", n + 1)])
        .collect();
    let order: Vec<&str> = t.key.iter().map(|&k| cols[k].as_str()).collect();
    let sets: Vec<String> = (0..n)
        .filter(|i| !t.key.contains(i))
        .map(|i| {
            format!(
                "{c} = CASE WHEN substr(s.cdc_keep, {p}, 1) = '1' THEN d.{c} ELSE s.{c} END",
                c = cols[i],
                p = i + 1
            )
        })
        .collect();
    let update = if sets.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("UPDATE SET {}", sets.join(", "))
    };
    let values: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
    format!(
        "MERGE INTO {dest} AS d USING (SELECT {source} FROM temp.main.{stage} ORDER BY {order}) AS s ON {on}
         WHEN MATCHED AND s.cdc_op = 'D' THEN DELETE
         WHEN MATCHED THEN {update}
         WHEN NOT MATCHED AND s.cdc_op = 'U' AND NOT contains(s.cdc_keep, '1') THEN INSERT ({cols}) VALUES ({values})",
        dest = dest,
        source = source.join(", "),
        order = order.join(", "),
        on = key_match(t, "d", "s"),
        cols = cols.join(", "),
        values = values.join(", "),
    )
}

/// Staged rows of a keyed table's final states.
fn stage_finals(t: &TableMap, finals: &[Final<'_>]) -> Result<(Vec<Vec<Option<String>>>, u64)> {
    let n = t.columns.len();
    let mut rows = Vec::with_capacity(finals.len());
    let mut with_kept = 0u64;
    for f in finals {
        let (row, op) = match f {
            Final::Delete(r) => (*r, "D"),
            other => match other.written() {
                Some(r) => (r, "U"),
                None => continue,
            },
        };
        let mut staged = Vec::with_capacity(n + 2);
        let mut keep = String::with_capacity(n);
        for (i, d) in row.iter().enumerate().take(n) {
            let kept = *d == Datum::UnchangedToast;
            keep.push(if kept { '1' } else { '0' });
            staged.push(value(t, i, d)?);
        }
        if keep.contains('1') {
            with_kept += 1;
        }
        staged.push(Some(op.to_owned()));
        staged.push(Some(keep));
        rows.push(staged);
    }
    Ok((rows, with_kept))
}

/// Write one table's changes; `dest` is its qualified name.
fn write_table(
    c: &Connection,
    t: &TableMap,
    dest: &str,
    ops: &[crate::model::change::RowOp],
) -> Result<u64> {
    let ctx = || format!("applying changes to {}", t.dest);
    let n = t.columns.len();
    if t.is_keyless() {
        super::keyless::write(c, t, dest, ops)?;
        return Ok(0);
    }
    let finals = reduce(ops, &t.key);
    move_rows(c, t, dest, ops, &finals)?;
    let (rows, with_kept) = stage_finals(t, &finals)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let stage = stage(c, n + 2).map_err(Error::duck(ctx()))?;
    append(c, &stage, &rows).map_err(Error::duck(ctx()))?;
    let missing: u64 = if with_kept > 0 {
        // Rows whose kept columns have no destination row to keep them from.
        let casts: Vec<String> = t
            .key
            .iter()
            .map(|&k| {
                format!(
                    "{} AS {}",
                    cast_expr(&t.columns[k].dest_type, &format!("c{k}")),
                    quote_ident(&t.columns[k].name)
                )
            })
            .collect();
        c.query_row(
            &format!(
                "SELECT count(*) FROM (SELECT {casts}, c{keep} AS cdc_keep FROM temp.main.{stage}) AS s
                  WHERE contains(s.cdc_keep, '1') AND NOT EXISTS (SELECT 1 FROM {dest} AS d WHERE {on})",
                casts = casts.join(", "),
                keep = n + 1,
                dest = dest,
                on = key_match(t, "d", "s"),
            ),
            params![],
            |r| r.get::<_, i64>(0),
        )
        .map_err(Error::duck(ctx()))? as u64
    } else {
        0
    };
    c.execute_batch(&merge_sql(t, dest, &stage))
        .map_err(Error::duck(ctx()))?;
    Ok(missing)
}

/// Rows whose key changed while TOAST values stayed unchanged keep those values only under
/// their old key: move them to the new key first (replacing a stale row there), so that the
/// MERGE finds them and keeps what was unchanged. Rows may trade keys in one batch (a swap, a
/// rotation, `id = id + 1` over a range), so no order of single-row moves is right in general:
/// every moving row is parked, as it is now, under its new key in a temporary table, all old
/// and new keys are deleted, and the parked rows go back in.
fn move_rows(
    c: &Connection,
    t: &TableMap,
    dest: &str,
    ops: &[crate::model::change::RowOp],
    finals: &[Final<'_>],
) -> Result<()> {
    let moves = crate::model::change::toast_moves(ops, finals, &t.key);
    if moves.is_empty() {
        return Ok(());
    }
    let ctx = || format!("moving rows of {} to their new keys", t.dest);
    let key_is = t
        .key
        .iter()
        .map(|&k| {
            let col = &t.columns[k];
            format!(
                "{} = {}",
                quote_ident(&col.name),
                cast_expr(&col.dest_type, "?")
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let names = t
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let values = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, col)| {
            if t.key.contains(&i) {
                cast_expr(&col.dest_type, "?")
            } else {
                quote_ident(&col.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    const PARKED: &str = "temp.main.cdc_moved_rows";
    c.execute_batch(&format!(
        "CREATE OR REPLACE TEMPORARY TABLE cdc_moved_rows AS SELECT {names} FROM {dest} LIMIT 0"
    ))
    .map_err(Error::duck(ctx()))?;
    let park = format!("INSERT INTO {PARKED} ({names}) SELECT {values} FROM {dest} WHERE {key_is}");
    let delete = format!("DELETE FROM {dest} WHERE {key_is}");
    let key_of = |row: &[Datum]| {
        t.key
            .iter()
            .map(|&k| value(t, k, &row[k]))
            .collect::<Result<Vec<_>>>()
    };
    let mut keys = Vec::with_capacity(moves.len());
    for (new, old) in &moves {
        let (new_key, old_key) = (key_of(new)?, key_of(old)?);
        c.execute(
            &park,
            params_from_iter(new_key.iter().chain(old_key.iter())),
        )
        .map_err(Error::duck(ctx()))?;
        keys.push((new_key, old_key));
    }
    for (new_key, old_key) in &keys {
        for k in [old_key, new_key] {
            c.execute(&delete, params_from_iter(k.iter()))
                .map_err(Error::duck(ctx()))?;
        }
    }
    c.execute_batch(&format!(
        "INSERT INTO {dest} ({names}) SELECT {names} FROM {PARKED}; DROP TABLE {PARKED}"
    ))
    .map_err(Error::duck(ctx()))?;
    Ok(())
}

/// The DuckDB type of a column a schema change brings (arrays: one dimension, as a Relation
/// message does not say more).
fn new_type(source: &SourceType) -> String {
    duck_type(source.oid, &source.sql, 1)
}

#[async_trait]
impl Session for DuckSession {
    async fn columns(&mut self, table: &TableName) -> Result<Vec<DestColumn>> {
        let (schema, name) = (table.schema.clone(), table.name.clone());
        let cols = self
            .handle
            .run(format!("reading the columns of {table}"), move |c| {
                let mut stmt = c.prepare(
                    "SELECT c.column_name, c.data_type,
                            coalesce(list_contains(k.cols, c.column_name), false)
                       FROM duckdb_columns() c
                       LEFT JOIN (SELECT any_value(constraint_column_names) AS cols FROM duckdb_constraints()
                                   WHERE database_name = current_database() AND schema_name = ? AND table_name = ?
                                     AND constraint_type = 'PRIMARY KEY') k ON true
                      WHERE c.database_name = current_database() AND c.schema_name = ? AND c.table_name = ?
                      ORDER BY c.column_index",
                )?;
                let rows = stmt.query_map(params![schema, name, schema, name], |r| {
                    Ok(DestColumn {
                        name: r.get(0)?,
                        type_name: r.get(1)?,
                        key: r.get(2)?,
                    })
                })?;
                rows.collect::<duckdb::Result<Vec<_>>>()
            })
            .await?;
        if cols.is_empty() {
            return Err(missing_table(table));
        }
        Ok(cols)
    }

    fn type_matches(&self, dest_type: &str, source: &SourceType) -> bool {
        // A Relation message does not say how many dimensions an array column declares: the
        // destination's nesting stands.
        let dims = dest_type.matches("[]").count();
        duck_type(source.oid, &source.sql, dims) == dest_type
    }

    fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        // The batch's tables are written in one blocking call, which owns the batch.
        let tables: Vec<_> = batch
            .into_tables()
            .into_iter()
            .map(|(t, ops)| (self.handle.qualified(&t.dest), t, ops))
            .collect();
        let missing = self
            .handle
            .run("applying changes", move |c| {
                Ok(tables
                    .iter()
                    .map(|(dest, t, ops)| (t.clone(), write_table(c, t, dest, ops)))
                    .collect::<Vec<_>>())
            })
            .await?;
        for (t, result) in missing {
            crate::destination::toast_rows_missing(&self.metrics, &t, result?);
        }
        Ok(())
    }

    async fn truncate(&mut self, tables: &[Arc<TableMap>], _restart_identity: bool) -> Result<()> {
        self.begin().await?;
        let sql: Vec<String> = tables
            .iter()
            .map(|t| format!("DELETE FROM {}", self.handle.qualified(&t.dest)))
            .collect();
        let sql = sql.join(";\n");
        self.handle
            .run("applying TRUNCATE", move |c| c.execute_batch(&sql))
            .await
    }

    async fn alter(&mut self, dest: &TableName, change: &SchemaChange) -> Result<()> {
        let t = self.handle.qualified(dest);
        // Drops first: a column dropped and added again under its name is in both lists.
        let mut ddl: Vec<String> = Vec::new();
        for n in &change.dropped {
            ddl.push(format!("ALTER TABLE {t} DROP COLUMN {}", quote_ident(n)));
        }
        for (n, ty) in &change.added {
            ddl.push(format!(
                "ALTER TABLE {t} ADD COLUMN {} {}",
                quote_ident(n),
                new_type(ty)
            ));
        }
        for (n, ty) in &change.retyped {
            ddl.push(format!(
                "ALTER TABLE {t} ALTER COLUMN {} SET DATA TYPE {}",
                quote_ident(n),
                new_type(ty)
            ));
        }
        let sql = ddl.join(";\n");
        tracing::info!(table = %dest, ddl = %sql, "applying a source schema change to the DuckDB file");
        self.begin().await?;
        self.handle
            .run(format!("applying schema change: {sql}"), {
                let sql = sql.clone();
                move |c| c.execute_batch(&sql)
            })
            .await
    }

    async fn commit_rows(&mut self) -> Result<()> {
        if self.txn.is_some() {
            self.handle
                .run("committing to the DuckDB file", |c| {
                    c.execute_batch("COMMIT")
                })
                .await?;
            self.txn = None;
        }
        Ok(())
    }

    async fn commit(&mut self, slot: &str, end_lsn: Lsn, commit_time: PgTimestamp) -> Result<()> {
        self.begin().await?;
        let micros = commit_time
            .to_system_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let sql = format!(
            "UPDATE {} SET applied_lsn = ?, applied_commit_time = make_timestamp(?)::TIMESTAMPTZ WHERE slot = ?",
            self.pipeline
        );
        let slot = slot.to_owned();
        self.handle
            .run("committing to the DuckDB file", move |c| {
                c.execute(&sql, params![end_lsn.0, micros, slot])?;
                c.execute_batch("COMMIT")
            })
            .await?;
        // Unpinned: the file closes and readers get in.
        self.txn = None;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<()> {
        if self.txn.is_some() {
            let result = self
                .handle
                .run("rolling back", |c| c.execute_batch("ROLLBACK"))
                .await;
            self.txn = None;
            result?;
        }
        Ok(())
    }

    async fn advance_idle(&mut self, slot: &str, lsn: Lsn) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET applied_lsn = ? WHERE slot = ? AND applied_lsn < ?",
            self.pipeline
        );
        let slot = slot.to_owned();
        self.handle
            .run("recording the idle position", move |c| {
                c.execute(&sql, params![lsn.0, slot, lsn.0]).map(|_| ())
            })
            .await
    }
}
