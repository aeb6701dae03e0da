//! Applying changes to Snowflake: each table's changes reduced to one final state per key and
//! written with one MERGE (more when its text passes `MAX_STATEMENT` bytes), inside the
//! transaction that also records the position.
//!
//! TOAST-unchanged columns keep the destination's value: each row carries a mask of the
//! columns to keep, which the MERGE's `UPDATE SET` reads. A row whose key changed in the batch
//! while such values stayed unchanged first gets them from the destination row under its old
//! key (read inside the transaction). A row with kept columns and no destination row cannot be
//! written (its kept values exist only on the source) and is counted as missing.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::client::Client;
use super::qualified;
use super::types::{convert, create_type, literal, quote, read, to_postgres, type_name, value};
use crate::decode::{Datum, PgTimestamp};
use crate::destination::{missing_table, Session};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::model::change::{key_values, reduce, text, toast_moves, Batch, Final, RowOp, TableMap};
use crate::model::schema::{ColumnDef, DestColumn, SchemaChange, SourceType, TableName};

pub use super::merge::MAX_STATEMENT;
use super::merge::{chunks, key_match, merge_sql};

pub struct SnowSession {
    client: Client,
    database: String,
    /// The state's pipeline table, qualified.
    pipeline: String,
    txn: bool,
    /// Statements sent when the open transaction began (for the per-batch count).
    began_at: u64,
    slot: String,
    /// Whether this session has taken over as the pipeline's writer.
    claimed: bool,
    metrics: Arc<Metrics>,
}

impl SnowSession {
    pub fn new(
        client: Client,
        database: String,
        pipeline: String,
        slot: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        SnowSession {
            client,
            database,
            pipeline,
            txn: false,
            began_at: 0,
            slot,
            claimed: false,
            metrics,
        }
    }

    /// Take over as the pipeline's writer. A writer killed inside a transaction leaves it open
    /// on Snowflake, holding its tables' locks until its session expires (hours): the session
    /// recorded as the writer, if not this one, is aborted (`SYSTEM$ABORT_SESSION`, which rolls
    /// its transaction back), and this one recorded. Sessions of `cdc sync` have no pipeline
    /// row and skip this. The emulator has no sessions to name; its launcher closes the earlier
    /// session carrying the same writer tag instead.
    async fn claim(&mut self) -> Result<()> {
        self.claimed = true;
        let me = match self.client.query("SELECT CURRENT_SESSION()::VARCHAR").await {
            Ok(rows) => rows.first().and_then(|r| r[0].clone()),
            Err(e) if super::client::code(&e).is_some() => None,
            Err(e) => return Err(e),
        };
        let Some(me) = me else { return Ok(()) };
        let slot = literal(&self.slot);
        let Ok(rows) = self
            .client
            .query(&format!(
                "SELECT writer_session FROM {} WHERE slot = {slot}",
                self.pipeline
            ))
            .await
        else {
            return Ok(());
        };
        let Some(row) = rows.first() else {
            return Ok(());
        };
        // Session ids are numbers.
        let previous = row[0]
            .as_deref()
            .filter(|p| *p != me && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if let Some(previous) = previous {
            if let Err(e) = self
                .client
                .query(&format!("SELECT SYSTEM$ABORT_SESSION({previous})"))
                .await
            {
                // Already gone: nothing holds the locks.
                tracing::debug!(session = previous, error = %e, "the previous writer session could not be aborted");
            } else {
                tracing::info!(session = previous, "aborted the session of an earlier cdc writer (its open transaction is rolled back)");
            }
        }
        self.client
            .query(&format!(
                "UPDATE {} SET writer_session = {} WHERE slot = {slot}",
                self.pipeline,
                literal(&me)
            ))
            .await
            .map(|_| ())
    }

    async fn begin(&mut self) -> Result<()> {
        if !self.claimed {
            self.claim().await?;
        }
        if !self.txn {
            self.began_at = self.client.statements();
            self.client.query("BEGIN").await?;
            self.txn = true;
        }
        Ok(())
    }
}

/// The VARCHAR literal of one value (`NULL` for NULL and for a kept TOAST value).
fn value_literal(t: &TableMap, col: usize, d: &Datum) -> Result<String> {
    match text(d) {
        None => Ok("NULL".into()),
        Some(s) => value(&t.columns[col].dest_type, s)
            .map(|v| literal(&v))
            .map_err(|e| {
                Error::definite(format!("{}: column {}: {e}", t.dest, t.columns[col].name))
            }),
    }
}

/// A row's key values, owned (to key a map that outlives the batch's borrows).
fn owned_key(row: &[Datum], key: &[usize]) -> Vec<Option<Vec<u8>>> {
    key_values(row, key)
        .into_iter()
        .map(|v| v.map(<[u8]>::to_vec))
        .collect()
}

impl SnowSession {
    /// Fill the kept TOAST values of rows whose key moved in the batch from the destination
    /// rows under their old keys.
    async fn fill_moved(
        &self,
        t: &TableMap,
        dest: &str,
        ops: &[RowOp],
        finals: &[Final<'_>],
    ) -> Result<HashMap<Vec<Option<Vec<u8>>>, Vec<Datum>>> {
        let moves = toast_moves(ops, finals, &t.key);
        let mut filled = HashMap::new();
        if moves.is_empty() {
            return Ok(filled);
        }
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|c| read(&c.dest_type, &quote(&c.name)))
            .collect();
        let mut conditions = Vec::new();
        for (_, old) in &moves {
            let parts: Vec<String> = t
                .key
                .iter()
                .map(|&k| {
                    Ok(format!(
                        "{} = {}",
                        quote(&t.columns[k].name),
                        convert(&t.columns[k].dest_type, &value_literal(t, k, &old[k])?)
                    ))
                })
                .collect::<Result<_>>()?;
            conditions.push(format!("({})", parts.join(" AND ")));
        }
        let rows = self
            .client
            .query(&format!(
                "SELECT {} FROM {dest} WHERE {}",
                cols.join(", "),
                conditions.join(" OR ")
            ))
            .await?;
        let found: Vec<Vec<Datum>> = rows
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .zip(&t.columns)
                    .map(|(v, c)| {
                        v.map_or(Datum::Null, |v| {
                            Datum::Text(Bytes::from(to_postgres(&c.dest_type, v)))
                        })
                    })
                    .collect()
            })
            .collect();
        for (new, old) in moves {
            let old_key = owned_key(old, &t.key);
            let Some(there) = found.iter().find(|r| owned_key(r, &t.key) == old_key) else {
                continue;
            };
            let row: Vec<Datum> = new
                .iter()
                .zip(there)
                .map(|(n, d)| {
                    if *n == Datum::UnchangedToast {
                        d.clone()
                    } else {
                        n.clone()
                    }
                })
                .collect();
            filled.insert(owned_key(new, &t.key), row);
        }
        Ok(filled)
    }

    /// Write one table's changes; the rows that could not be written.
    async fn write_table(&self, t: &TableMap, ops: &[RowOp]) -> Result<u64> {
        let dest = qualified(&self.database, &t.dest);
        let finals = reduce(ops, &t.key);
        let filled = self.fill_moved(t, &dest, ops, &finals).await?;
        let mut rows = Vec::with_capacity(finals.len());
        let mut kept_keys = Vec::new();
        for f in &finals {
            let (row, op) = match f {
                Final::Delete(r) => (*r, "D"),
                other => match other.written() {
                    Some(r) => (r, "U"),
                    None => continue,
                },
            };
            let row: &[Datum] = filled
                .get(&owned_key(row, &t.key))
                .map_or(row, |r| r.as_slice());
            let mut tuple = Vec::with_capacity(row.len() + 2);
            let mut keep = String::with_capacity(row.len());
            for (i, d) in row.iter().enumerate() {
                keep.push(if *d == Datum::UnchangedToast {
                    '1'
                } else {
                    '0'
                });
                tuple.push(value_literal(t, i, d)?);
            }
            if keep.contains('1') {
                let key_tuple: Vec<String> = t.key.iter().map(|&k| tuple[k].clone()).collect();
                kept_keys.push(format!("({})", key_tuple.join(", ")));
            }
            tuple.push(literal(op));
            tuple.push(literal(&keep));
            rows.push(format!("({})", tuple.join(", ")));
        }
        let missing = if kept_keys.is_empty() {
            0
        } else {
            self.count_missing(t, &dest, kept_keys).await?
        };
        for chunk in chunks(rows) {
            self.client.query(&merge_sql(t, &dest, &chunk)).await?;
        }
        Ok(missing)
    }

    /// Keys (tuples of VARCHAR literals) with no destination row.
    async fn count_missing(&self, t: &TableMap, dest: &str, keys: Vec<String>) -> Result<u64> {
        let mut missing = 0;
        for chunk in chunks(keys) {
            let select: Vec<String> = t
                .key
                .iter()
                .enumerate()
                .map(|(j, &k)| {
                    let c = &t.columns[k];
                    format!(
                        "{} AS {}",
                        convert(&c.dest_type, &format!("v.c{j}")),
                        quote(&c.name)
                    )
                })
                .collect();
            let names: Vec<String> = (0..t.key.len()).map(|j| format!("c{j}")).collect();
            let rows = self
                .client
                .query(&format!(
                    "SELECT COUNT(*)::VARCHAR FROM (SELECT {} FROM (VALUES {}) AS v ({})) AS s \
                     WHERE NOT EXISTS (SELECT 1 FROM {dest} AS d WHERE {})",
                    select.join(", "),
                    chunk.join(", "),
                    names.join(", "),
                    key_match(t, "d", "s")
                ))
                .await?;
            missing += rows
                .first()
                .and_then(|r| r[0].as_deref())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(missing)
    }

    /// Columns of a destination table, with its key, in table order.
    pub async fn read_columns(
        client: &Client,
        database: &str,
        table: &TableName,
    ) -> Result<Vec<DestColumn>> {
        let name = qualified(database, table);
        let answer = match client
            .answer(&format!("SELECT * FROM {name} LIMIT 0"))
            .await
        {
            Ok(a) => a,
            Err(e) if super::client::code(&e) == Some("002003") => return Err(missing_table(table)),
            Err(e) => return Err(e),
        };
        let keys = client
            .query(&format!("SHOW PRIMARY KEYS IN TABLE {name}"))
            .await?;
        let mut key: Vec<(i64, String)> = keys
            .into_iter()
            .filter_map(|r| Some((r.get(5)?.as_deref()?.parse().ok()?, r.get(4)?.clone()?)))
            .collect();
        key.sort();
        Ok(answer
            .columns
            .into_iter()
            .map(|c| DestColumn {
                key: key.iter().any(|(_, k)| *k == c.name),
                name: c.name,
                type_name: c.type_name,
            })
            .collect())
    }
}

/// The Snowflake type (as columns report it) of a source type.
fn new_type(t: &SourceType) -> String {
    create_type(&ColumnDef {
        name: String::new(),
        type_sql: t.sql.clone(),
        type_oid: t.oid,
        not_null: false,
        dims: 0,
        generated: None,
    })
}

#[async_trait]
impl Session for SnowSession {
    async fn columns(&mut self, table: &TableName) -> Result<Vec<DestColumn>> {
        Self::read_columns(&self.client, &self.database, table).await
    }

    fn type_matches(&self, dest_type: &str, source: &SourceType) -> bool {
        type_name(&new_type(source)) == dest_type
    }

    fn in_transaction(&self) -> bool {
        self.txn
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        for (t, ops) in batch.tables() {
            let missing = self.write_table(t, ops).await?;
            crate::destination::toast_rows_missing(&self.metrics, t, missing);
        }
        Ok(())
    }

    async fn truncate(&mut self, tables: &[Arc<TableMap>], _restart_identity: bool) -> Result<()> {
        // DELETE, not TRUNCATE: it stays inside the transaction.
        self.begin().await?;
        for t in tables {
            self.client
                .query(&format!(
                    "DELETE FROM {}",
                    qualified(&self.database, &t.dest)
                ))
                .await?;
        }
        Ok(())
    }

    async fn alter(&mut self, dest: &TableName, change: &SchemaChange) -> Result<()> {
        let t = qualified(&self.database, dest);
        let mut ddl: Vec<String> = Vec::new();
        for n in &change.dropped {
            ddl.push(format!("ALTER TABLE {t} DROP COLUMN {}", quote(n)));
        }
        for (n, ty) in &change.added {
            ddl.push(format!(
                "ALTER TABLE {t} ADD COLUMN {} {}",
                quote(n),
                new_type(ty)
            ));
        }
        for (n, ty) in &change.retyped {
            // Snowflake retypes in place only where values keep (wider text or numbers); it
            // refuses the rest, and the error stops the stream with nothing lost.
            ddl.push(format!(
                "ALTER TABLE {t} ALTER COLUMN {} SET DATA TYPE {}",
                quote(n),
                new_type(ty)
            ));
        }
        tracing::info!(table = %dest, ddl = %ddl.join("; "), "applying a source schema change in Snowflake (DDL commits the rows before it)");
        // Snowflake commits an open transaction before DDL: say so explicitly (the emulator
        // would keep it open), then the rest of the batch goes in a new one.
        self.commit_rows().await?;
        for s in &ddl {
            self.client.query(s).await?;
        }
        self.begin().await
    }

    async fn commit_rows(&mut self) -> Result<()> {
        if self.txn {
            self.client.query("COMMIT").await?;
            self.txn = false;
        }
        Ok(())
    }

    async fn commit(&mut self, slot: &str, end_lsn: Lsn, commit_time: PgTimestamp) -> Result<()> {
        self.begin().await?;
        let micros = commit_time
            .to_system_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        self.client
            .query(&format!(
                "UPDATE {} SET applied_lsn = {}, applied_commit_us = {micros} WHERE slot = {}",
                self.pipeline,
                end_lsn.0,
                literal(slot)
            ))
            .await?;
        self.client.query("COMMIT").await?;
        self.txn = false;
        // What an account bills by: statements (each one warehouse round trip) per batch.
        tracing::debug!(
            statements = self.client.statements() - self.began_at,
            lsn = %end_lsn,
            "Snowflake batch committed"
        );
        Ok(())
    }

    async fn rollback(&mut self) -> Result<()> {
        if self.txn {
            self.txn = false;
            self.client.query("ROLLBACK").await?;
        }
        Ok(())
    }

    async fn advance_idle(&mut self, slot: &str, lsn: Lsn) -> Result<()> {
        self.client
            .query(&format!(
                "UPDATE {} SET applied_lsn = {} WHERE slot = {} AND applied_lsn < {}",
                self.pipeline,
                lsn.0,
                literal(slot),
                lsn.0
            ))
            .await
            .map(|_| ())
    }
}
