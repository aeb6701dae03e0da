//! Streamed changes into ClickHouse: every change is an INSERT of a whole row with its
//! version.
//!
//! ```text
//!  Batch ─► per table: reduce_with_origin (last change per key, and which change it was)
//!        ├─ deletes, and old keys of key changes ─► tombstones (key, version, deleted = 1)
//!        ├─ whole rows ─────────────────────────► rows (all columns, version, deleted = 0)
//!        └─ rows with unchanged TOAST values ─► lookup of the current rows by key (FINAL),
//!                                               the missing values taken from them ─► rows
//!  commit ─► INSERT the position (state.rs)
//! ```
//!
//! There are no transactions: what a batch writes is visible at once, and a crash before the
//! position is stored replays the batch. The replay writes the same versions (they come from
//! the WAL, `apply::Version`), so `ReplacingMergeTree` keeps one row per key and the newest
//! version decides; a row re-inserted by the replay with an older version than one written
//! before the crash simply loses to it. A TOAST lookup during a replay may see a newer row
//! than the change had: it then fills the change's row from that newer state, which is only
//! visible until the newer change's own row (higher version, already there or replayed
//! after) wins — the final state is the last change's, filled from the row before it.
//!
//! Added and retyped columns: the ALTER is immediate, but the source's values for existing
//! rows arrive later in the batch (the stream's backfill). Until the batch that carries them
//! commits, the column carries a comment ([`PENDING`]); a run that finds the comment (a crash
//! came between) reports the column as absent, so the stream adds it again (a no-op) and
//! backfills it again.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::ddl::{self, quote, Names, DELETED, VERSION};
use super::http::Client;
use super::load::INSERT_SETTINGS;
use super::state::{literal, State};
use super::tsv::{self, field_of, Field};
use super::types::clickhouse_type;
use crate::decode::{Datum, PgTimestamp};
use crate::destination::toast_rows_missing;
use crate::destination::{missing_table, Session};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::model::change::{
    key_values, moved_from, reduce_with_origin, Batch, Final, RowOp, TableMap, Version,
};
use crate::model::schema::ColumnDef;
use crate::model::schema::TableName;
use crate::model::schema::{DestColumn, SchemaChange, SourceType};

/// Comment on a column whose source values are still being written.
pub const PENDING: &str = "cdc: source values pending";

/// Keys looked up per statement.
const LOOKUP_KEYS: usize = 5_000;

pub struct ClickSession {
    client: Client,
    state: State,
    metrics: Arc<Metrics>,
    cluster: Option<String>,
    /// Wrote something since the last commit.
    open: bool,
    /// Columns this run marked [`PENDING`]: (database, storage table, column).
    marked: Vec<(String, String, String)>,
    /// Source commit time of the last commit (kept when the position moves while idle).
    last_commit_us: Option<i64>,
}

impl ClickSession {
    pub fn new(
        client: Client,
        state: State,
        cluster: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ClickSession {
            client,
            state,
            metrics,
            cluster,
            open: false,
            marked: Vec::new(),
            last_commit_us: None,
        }
    }

    fn names(&self, table: &TableName) -> Names {
        Names::of(self.client.database(), table)
    }

    fn on_cluster(&self) -> String {
        ddl::on_cluster(self.cluster.as_deref())
    }

    async fn write_table(&self, map: &TableMap, ops: &[RowOp], versions: &[Version]) -> Result<()> {
        if map.is_keyless() {
            return Err(Error::definite(format!(
                "{} has no primary key, and ClickHouse rows are replaced by key: add one on the source \
                 (ALTER TABLE {} ADD PRIMARY KEY (...)), then `cdc snapshot --force`",
                map.source,
                map.source.quoted()
            )));
        }
        if map.identity_key {
            // Versions replace each other by the primary key, which these changes do not carry.
            return Err(Error::definite(format!(
                "{} has REPLICA IDENTITY USING INDEX on an index that leaves out primary-key columns, and \
                 ClickHouse rows are replaced by the primary key, which its changes do not carry: ALTER TABLE {} \
                 REPLICA IDENTITY DEFAULT (or FULL) on the source, then restart cdc run",
                map.source,
                map.source.quoted()
            )));
        }
        let names = self.names(&map.dest);
        let fields: Vec<Field> = map.columns.iter().map(|c| field_of(&c.dest_type)).collect();
        let mut rows = Vec::new();
        let mut tombstones = Vec::new();
        // Rows to complete: the row, the row whose key finds its current values (the old row
        // of a key change: the new key has no row yet), its version.
        let mut to_fill: Vec<Fill<'_>> = Vec::new();
        let finals = reduce_with_origin(ops, &map.key);
        let moved = moved_from(ops, &map.key);
        for (fin, origin) in &finals {
            let version = versions.get(*origin).copied().unwrap_or(0);
            match fin {
                Final::Delete(old) => {
                    for (n, &k) in map.key.iter().enumerate() {
                        if n > 0 {
                            tombstones.push(b'\t');
                        }
                        push_datum(map, k, fields[k], &old[k], &mut tombstones)?;
                    }
                    tombstones.extend_from_slice(format!("\t{version}\t1\n").as_bytes());
                }
                Final::Upsert(row) | Final::Update(row) => {
                    if row.contains(&Datum::UnchangedToast) {
                        let by: &[Datum] = match moved.get(&key_values(row, &map.key)) {
                            Some(Some(first)) => first,
                            _ => row,
                        };
                        to_fill.push(Fill { row, by, version });
                    } else {
                        for (i, d) in row.iter().enumerate() {
                            if i > 0 {
                                rows.push(b'\t');
                            }
                            push_datum(map, i, fields[i], d, &mut rows)?;
                        }
                        rows.extend_from_slice(format!("\t{version}\t0\n").as_bytes());
                    }
                }
            }
        }
        let mut missing = 0u64;
        for chunk in to_fill.chunks(LOOKUP_KEYS) {
            missing += self.fill(map, &names, &fields, chunk, &mut rows).await?;
        }
        toast_rows_missing(&self.metrics, map, missing);
        let cols: Vec<String> = map.columns.iter().map(|c| quote(&c.name)).collect();
        let storage = names.rows_table(self.cluster.as_deref());
        if !rows.is_empty() {
            self.client
                .insert(
                    &format!(
                        "INSERT INTO {storage} ({}, {}, {}) SETTINGS {INSERT_SETTINGS} FORMAT TSV",
                        cols.join(", "),
                        quote(VERSION),
                        quote(DELETED)
                    ),
                    Bytes::from(rows),
                )
                .await
                .map_err(|e| in_table(e, map))?;
        }
        if !tombstones.is_empty() {
            // A tombstone carries the key; the other columns take their defaults.
            let key: Vec<String> = map.key.iter().map(|&k| cols[k].clone()).collect();
            self.client
                .insert(
                    &format!(
                        "INSERT INTO {storage} ({}, {}, {}) SETTINGS {INSERT_SETTINGS} FORMAT TSV",
                        key.join(", "),
                        quote(VERSION),
                        quote(DELETED)
                    ),
                    Bytes::from(tombstones),
                )
                .await
                .map_err(|e| in_table(e, map))?;
        }
        Ok(())
    }

    /// Complete rows whose TOAST values were unchanged from the current destination rows and
    /// append them to `out`; returns how many had no current row.
    async fn fill(
        &self,
        map: &TableMap,
        names: &Names,
        fields: &[Field],
        rows: &[Fill<'_>],
        out: &mut Vec<u8>,
    ) -> Result<u64> {
        let mut keys = Vec::with_capacity(rows.len());
        for fill in rows {
            let mut parts = Vec::with_capacity(map.key.len());
            for &k in &map.key {
                let mut v = Vec::new();
                push_datum(map, k, fields[k], &fill.by[k], &mut v)?;
                // TSV escapes are not literal escapes: the key's own text, quoted.
                let text = tsv::unescape(&v).unwrap_or_default();
                parts.push(format!(
                    "CAST({} AS {})",
                    literal(&text),
                    map.columns[k].dest_type
                ));
            }
            keys.push(if parts.len() == 1 {
                parts.pop().unwrap_or_default()
            } else {
                format!("({})", parts.join(", "))
            });
        }
        let key_cols: Vec<String> = map
            .key
            .iter()
            .map(|&k| quote(&map.columns[k].name))
            .collect();
        let key_expr = if key_cols.len() == 1 {
            key_cols[0].clone()
        } else {
            format!("({})", key_cols.join(", "))
        };
        let cols: Vec<String> = map.columns.iter().map(|c| quote(&c.name)).collect();
        let list = keys.join(", ");
        let sql = format!(
            "SELECT indexOf([{list}], {key_expr}) AS cdc_i, {} FROM {} FINAL \
             WHERE {key_expr} IN ({list}) AND {} = 0 FORMAT TSV",
            cols.join(", "),
            names.rows_table(self.cluster.as_deref()),
            quote(DELETED)
        );
        let found = self
            .client
            .query(&sql)
            .await
            .map_err(|e| in_table(e, map))?;
        let mut seen = vec![false; rows.len()];
        for current in tsv::rows(&found) {
            let i: usize = std::str::from_utf8(current[0])
                .ok()
                .and_then(|t| t.parse().ok())
                .filter(|&i| i >= 1 && i <= rows.len())
                .ok_or_else(|| {
                    Error::from(crate::error::Cause::Protocol {
                        context: format!("looking up rows of {}", map.dest),
                        detail: "ClickHouse answered with an unknown key position".into(),
                    })
                })?;
            if current.len() != cols.len() + 1 {
                return Err(Error::from(crate::error::Cause::Protocol {
                    context: format!("looking up rows of {}", map.dest),
                    detail: format!("{} fields for {} columns", current.len() - 1, cols.len()),
                }));
            }
            seen[i - 1] = true;
            let Fill { row, version, .. } = rows[i - 1];
            for (c, d) in row.iter().enumerate() {
                if c > 0 {
                    out.push(b'\t');
                }
                match d {
                    // Already in ClickHouse's own text: sent back as it came.
                    Datum::UnchangedToast => out.extend_from_slice(current[c + 1]),
                    d => push_datum(map, c, fields[c], d, out)?,
                }
            }
            out.extend_from_slice(format!("\t{version}\t0\n").as_bytes());
        }
        Ok(seen.iter().filter(|s| !**s).count() as u64)
    }

    /// Recreate the view over the rows of `names` with `columns`.
    async fn create_view(&self, names: &Names, columns: &[String]) -> Result<()> {
        let visible: Vec<String> = columns.iter().map(|n| quote(n)).collect();
        self.client
            .query(&format!(
                "CREATE OR REPLACE VIEW {}.{}{} AS SELECT {} FROM {} FINAL WHERE {} = 0",
                quote(&names.database),
                quote(&names.view),
                self.on_cluster(),
                visible.join(", "),
                names.rows_table(self.cluster.as_deref()),
                quote(DELETED)
            ))
            .await
            .map(|_| ())
    }

    /// (name, type, in the sorting key, comment) of a storage table's columns, ours left out.
    async fn storage_columns(&self, names: &Names) -> Result<Vec<(String, String, bool, String)>> {
        let out = self
            .client
            .query(&format!(
                "SELECT name, type, is_in_sorting_key, comment FROM system.columns \
                 WHERE database = {} AND table = {} ORDER BY position FORMAT TSV",
                literal(&names.database),
                literal(&names.storage)
            ))
            .await?;
        Ok(tsv::rows(&out)
            .map(|r| {
                (
                    tsv::unescape(r[0]).unwrap_or_default(),
                    tsv::unescape(r[1]).unwrap_or_default(),
                    r[2] == b"1",
                    tsv::unescape(r.get(3).copied().unwrap_or_default()).unwrap_or_default(),
                )
            })
            .filter(|(n, ..)| n != VERSION && n != DELETED)
            .collect())
    }
}

/// A row whose unchanged TOAST values come from the destination.
#[derive(Clone, Copy)]
struct Fill<'a> {
    row: &'a [Datum],
    /// Its key finds the current values: the row before the batch's key changes, else `row`.
    by: &'a [Datum],
    version: Version,
}

/// A source column's type as a Relation message gives it, as a column definition (new
/// columns are always nullable: existing rows have no value until the backfill).
fn column_of(name: &str, source: &SourceType) -> ColumnDef {
    ColumnDef {
        name: name.to_owned(),
        type_sql: source.sql.clone(),
        type_oid: source.oid,
        not_null: false,
        dims: usize::from(source.sql.ends_with("[]")),
        generated: None,
    }
}

/// A column type without `Nullable(…)` and `LowCardinality(…)`: whether a column still fits
/// its source does not depend on them.
fn strip_nullable(t: &str) -> &str {
    let mut t = t;
    for wrapper in ["LowCardinality(", "Nullable("] {
        t = t
            .strip_prefix(wrapper)
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or(t);
    }
    t
}

fn in_table(e: Error, map: &TableMap) -> Error {
    e.prefixed(&format!("writing {} into ClickHouse", map.dest))
}

/// One value as a TSV field; values ClickHouse cannot hold are errors naming the column.
fn push_datum(
    map: &TableMap,
    col: usize,
    field: Field,
    d: &Datum,
    out: &mut Vec<u8>,
) -> Result<()> {
    match d {
        Datum::Null => out.extend_from_slice(b"\\N"),
        Datum::Text(b) | Datum::Binary(b) => tsv::push_text(b, field, out).map_err(|why| {
            Error::definite(format!(
                "{}.{}: {:?} {why}",
                map.source,
                map.columns[col].name,
                String::from_utf8_lossy(b)
            ))
        })?,
        Datum::UnchangedToast => {
            return Err(Error::definite(format!(
                "{}.{}: an unchanged TOAST value in a key column",
                map.source, map.columns[col].name
            )))
        }
    }
    Ok(())
}

#[async_trait]
impl Session for ClickSession {
    async fn columns(&mut self, table: &TableName) -> Result<Vec<DestColumn>> {
        let names = self.names(table);
        let cols = self.storage_columns(&names).await?;
        if cols.is_empty() {
            return Err(missing_table(table));
        }
        Ok(cols
            .into_iter()
            .filter(|(name, _, _, comment)| {
                comment != PENDING
                    || self
                        .marked
                        .iter()
                        .any(|(_, s, c)| *s == names.storage && c == name)
            })
            .map(|(name, type_name, key, _)| DestColumn {
                name,
                type_name,
                key,
            })
            .collect())
    }

    fn type_matches(&self, dest_type: &str, source: &SourceType) -> bool {
        strip_nullable(dest_type) == strip_nullable(&clickhouse_type(&column_of("", source), false))
    }

    fn in_transaction(&self) -> bool {
        self.open
    }

    async fn sync_versions_from(&mut self, table: &TableName) -> Result<Option<Version>> {
        let names = self.names(table);
        super::rows::versions_above(&self.client, &names, self.cluster.as_deref())
            .await
            .map(Some)
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.open = true;
        for ((map, ops), versions) in batch.tables().iter().zip(batch.versions()) {
            self.write_table(map, ops, versions).await?;
        }
        Ok(())
    }

    async fn truncate(&mut self, tables: &[Arc<TableMap>], _restart_identity: bool) -> Result<()> {
        // Everything before the TRUNCATE has lower versions and goes; a replay repeats the
        // rows before it and the TRUNCATE itself, in the same order.
        self.open = true;
        for t in tables {
            let names = self.names(&t.dest);
            self.client
                .query(&format!(
                    "TRUNCATE TABLE {}.{}{}",
                    quote(&names.database),
                    quote(&names.storage),
                    self.on_cluster()
                ))
                .await?;
        }
        Ok(())
    }

    async fn alter(&mut self, table: &TableName, change: &SchemaChange) -> Result<()> {
        self.open = true;
        let names = self.names(table);
        // On a cluster the Distributed table mirrors the storage table's columns.
        let mut targets = vec![format!(
            "{}.{}",
            quote(&names.database),
            quote(&names.storage)
        )];
        if self.cluster.is_some() {
            targets.push(format!(
                "{}.{}",
                quote(&names.database),
                quote(&names.distributed)
            ));
        }
        // Drops first: a column dropped and added again under its name is in both lists.
        let mut steps = Vec::new();
        for name in &change.dropped {
            for target in targets.iter().rev() {
                steps.push(format!(
                    "ALTER TABLE {target}{} DROP COLUMN IF EXISTS {}",
                    self.on_cluster(),
                    quote(name)
                ));
            }
        }
        for (name, ty) in change.added.iter().chain(&change.retyped) {
            let t = clickhouse_type(&column_of(name, ty), false);
            for target in &targets {
                steps.push(format!(
                    "ALTER TABLE {target}{} ADD COLUMN IF NOT EXISTS {} {t} COMMENT {}",
                    self.on_cluster(),
                    quote(name),
                    literal(PENDING)
                ));
                steps.push(format!(
                    "ALTER TABLE {target}{} MODIFY COLUMN {} {t} COMMENT {}",
                    self.on_cluster(),
                    quote(name),
                    literal(PENDING)
                ));
            }
            self.marked
                .push((names.database.clone(), names.storage.clone(), name.clone()));
        }
        if !change.added_generated.is_empty() {
            tracing::warn!(table = %table, "generated columns are not created in ClickHouse");
        }
        let before: Vec<String> = self
            .storage_columns(&names)
            .await?
            .into_iter()
            .map(|(n, ..)| n)
            .collect();
        if !change.dropped.is_empty() {
            // The view names the column: it goes from the view first.
            let keep: Vec<String> = before
                .iter()
                .filter(|n| !change.dropped.contains(n))
                .cloned()
                .collect();
            self.create_view(&names, &keep).await?;
        }
        for sql in steps {
            self.client.query(&sql).await?;
        }
        let after: Vec<String> = self
            .storage_columns(&names)
            .await?
            .into_iter()
            .map(|(n, ..)| n)
            .collect();
        self.create_view(&names, &after).await?;
        tracing::info!(table = %table, added = ?change.added.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            retyped = ?change.retyped.iter().map(|(n, _)| n).collect::<Vec<_>>(), dropped = ?change.dropped,
            "ClickHouse table changed like its source");
        Ok(())
    }

    async fn commit_rows(&mut self) -> Result<()> {
        self.open = false;
        Ok(())
    }

    async fn commit(&mut self, slot: &str, end_lsn: Lsn, commit_time: PgTimestamp) -> Result<()> {
        let micros = commit_time
            .to_system_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        self.state
            .write_position(slot, end_lsn, Some(micros))
            .await?;
        self.last_commit_us = Some(micros);
        // The values of marked columns are in, and so is the position past them.
        for (db, storage, column) in std::mem::take(&mut self.marked) {
            self.client
                .query(&format!(
                    "ALTER TABLE {}.{}{} COMMENT COLUMN {} ''",
                    quote(&db),
                    quote(&storage),
                    self.on_cluster(),
                    quote(&column)
                ))
                .await?;
        }
        self.open = false;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<()> {
        // Nothing to undo: what was written is replayed with the same versions.
        self.open = false;
        Ok(())
    }

    async fn advance_idle(&mut self, slot: &str, lsn: Lsn) -> Result<()> {
        self.state
            .write_position(slot, lsn, self.last_commit_us)
            .await
    }
}

#[cfg(test)]
mod tests;
