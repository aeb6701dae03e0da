//! DuckDB as a destination: one embedded file (`duckdb:PATH`), tables typed by `types.rs`,
//! the pipeline state in `state_schema` of the same file.
//!
//! ```text
//!  snapshot: COPY text ─► copy_text (rows) ─► types::to_duckdb_text ─► Appender into a VARCHAR
//!            staging table ─► INSERT INTO t SELECT CAST(...) ─► (per table) PRIMARY KEY, record
//!  stream:   Batch ─► reduce ─► stage ─► one MERGE per table (key order) ─► position ─► COMMIT
//! ```
//!
//! **Other processes can read the file.** DuckDB lets one process write *or* several read, and
//! a second process cannot even open a file a writer holds. So cdc holds the file only while
//! it works: a snapshot holds it throughout, `cdc run` from the first write of a batch to its
//! commit, and every other operation for its own duration (`handle.rs`). Between batches the
//! file is closed and readers get in; while a reader holds it, cdc waits and retries (the
//! changes wait in the slot, nothing is lost). The batch limits (`apply.batch_max_wait_ms`)
//! set how often cdc takes the file. **Exactly once**: rows and position commit together.

mod apply;
mod copy_in;
mod driver;

mod handle;
mod keyless;
mod load;
pub mod types;
pub mod verify;

pub use driver::DRIVER;
pub use handle::is_lock_conflict;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use duckdb::params;

use super::{
    CopyFormat, Destination, Loader, PipelineState, Session, SnapshotTable, SyncState, TableSize,
};
use crate::error::Result;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::model::change::TableMap;
use crate::model::schema::TableName;
use crate::model::schema::{TableSchema, UserType};
use crate::model::sql::{quote_ident, quote_literal};
use crate::source::RowSource;
use handle::Handle;

/// A DuckDB file.
pub struct DuckDbDestination {
    handle: Arc<Handle>,
    /// The state schema's name, and quoted.
    schema_name: String,
    schema: String,
}

impl DuckDbDestination {
    /// Check that the file can be opened (created if missing) as a DuckDB database.
    pub async fn open(path: &Path, state_schema: &str) -> Result<Self> {
        let handle = Handle::shared(path, false)?;
        handle.run("opening the DuckDB file", |_| Ok(())).await?;
        Ok(DuckDbDestination {
            handle,
            schema_name: state_schema.to_owned(),
            schema: quote_ident(state_schema),
        })
    }

    fn t(&self, table: &str) -> String {
        self.handle.qualified_raw(&self.schema, table)
    }

    /// The state schema, qualified with the database name.
    fn state_schema(&self) -> String {
        match self.handle.catalog() {
            Some(c) => format!("{c}.{}", self.schema),
            None => self.schema.clone(),
        }
    }
}

/// Whether table `schema.name` exists in the open database.
fn table_exists(c: &duckdb::Connection, schema: &str, name: &str) -> duckdb::Result<bool> {
    c.query_row(
        "SELECT count(*) > 0 FROM duckdb_tables() WHERE database_name = current_database()
            AND schema_name = ? AND table_name = ?",
        params![schema, name],
        |r| r.get(0),
    )
}

#[async_trait]
impl Destination for DuckDbDestination {
    fn kind(&self) -> &'static str {
        "duckdb"
    }

    fn concurrent_sessions(&self) -> bool {
        // One connection in one process: no second session to apply ahead with.
        false
    }

    fn default_batch_rows(&self) -> usize {
        // Each batch opens and closes the file (~25 ms) and runs one MERGE per table, whose
        // cost grows slower than its size: measured (bench/duckdb, pgbench backlog), 10,000
        // rows drained ~60k changes/s and 50,000 ~100k.
        50_000
    }

    async fn ensure_state(&self) -> Result<()> {
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {pipeline} (
                 slot VARCHAR PRIMARY KEY,
                 publication VARCHAR NOT NULL,
                 consistent_lsn UBIGINT,
                 applied_lsn UBIGINT,
                 applied_commit_time TIMESTAMPTZ,
                 snapshot_started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 snapshot_completed_at TIMESTAMPTZ);
             CREATE TABLE IF NOT EXISTS {tables} (
                 slot VARCHAR NOT NULL,
                 source_table VARCHAR NOT NULL,
                 destination_table VARCHAR NOT NULL,
                 rows BIGINT NOT NULL,
                 completed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 PRIMARY KEY (slot, source_table));
             ALTER TABLE {tables} ADD COLUMN IF NOT EXISTS joined_lsn UBIGINT;
             CREATE TABLE IF NOT EXISTS {sync} (
                 destination_table VARCHAR PRIMARY KEY,
                 source_table VARCHAR NOT NULL,
                 strategy VARCHAR NOT NULL,
                 position VARCHAR,
                 last_pass TIMESTAMPTZ,
                 rows BIGINT NOT NULL DEFAULT 0,
                 seconds DOUBLE NOT NULL DEFAULT 0);",
            sync = self.t("sync_tables"),
            schema = self.state_schema(),
            pipeline = self.t("pipeline"),
            tables = self.t("snapshot_tables"),
        );
        self.handle
            .run(
                "creating the cdc state tables in the DuckDB file",
                move |c| c.execute_batch(&sql),
            )
            .await
    }

    async fn load_state(&self, slot: &str) -> Result<Option<PipelineState>> {
        let (schema, pipeline, key) = (
            self.schema_name.clone(),
            self.t("pipeline"),
            slot.to_owned(),
        );
        let stored = self
            .handle
            .run("reading pipeline state", move |c| {
                if !table_exists(c, &schema, "pipeline")? {
                    return Ok(None);
                }
                let mut stmt = c.prepare(&format!(
                    "SELECT consistent_lsn, applied_lsn, snapshot_completed_at IS NOT NULL,
                            epoch_us(applied_commit_time) FROM {pipeline} WHERE slot = ?"
                ))?;
                let mut rows = stmt.query(params![key])?;
                let Some(r) = rows.next()? else {
                    return Ok(None);
                };
                let micros: Option<i64> = r.get(3)?;
                Ok(Some((
                    r.get::<_, Option<u64>>(0)?.map(Lsn),
                    r.get::<_, Option<u64>>(1)?.map(Lsn),
                    r.get::<_, bool>(2)?,
                    micros.map(|us| {
                        std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)
                    }),
                )))
            })
            .await?;
        stored
            .map(|(consistent, applied, completed, time)| {
                PipelineState::from_stored(slot, consistent, applied, completed, time)
            })
            .transpose()
    }

    async fn begin_snapshot(&self, slot: &str, publication: &str) -> Result<()> {
        // Earlier records are replaced in the same transaction: there is always one.
        let sql = [
            format!("DELETE FROM {} WHERE slot = ?", self.t("snapshot_tables")),
            format!("DELETE FROM {} WHERE slot = ?", self.t("pipeline")),
        ];
        let insert = format!(
            "INSERT INTO {} (slot, publication) VALUES (?, ?)",
            self.t("pipeline")
        );
        let (slot, publication) = (slot.to_owned(), publication.to_owned());
        self.handle
            .run("recording the snapshot start", move |c| {
                c.execute_batch("BEGIN TRANSACTION")?;
                for stmt in &sql {
                    c.execute(stmt, params![slot])?;
                }
                c.execute(&insert, params![slot, publication])?;
                c.execute_batch("COMMIT")
            })
            .await
    }

    async fn set_consistent_point(&self, slot: &str, lsn: Lsn) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET consistent_lsn = ? WHERE slot = ?",
            self.t("pipeline")
        );
        let slot = slot.to_owned();
        self.handle
            .run("recording the consistent point", move |c| {
                c.execute(&sql, params![lsn.0, slot]).map(|_| ())
            })
            .await
    }

    async fn complete_snapshot(&self, slot: &str) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET snapshot_completed_at = now(), applied_lsn = consistent_lsn WHERE slot = ?",
            self.t("pipeline")
        );
        let slot = slot.to_owned();
        self.handle
            .run("recording the snapshot completion", move |c| {
                c.execute(&sql, params![slot]).map(|_| ())
            })
            .await
    }

    async fn snapshot_tables(&self, slot: &str) -> Result<Vec<(String, i64)>> {
        let sql = format!(
            "SELECT source_table, rows FROM {} WHERE slot = ? ORDER BY source_table",
            self.t("snapshot_tables")
        );
        let slot = slot.to_owned();
        self.handle
            .run("reading snapshot table state", move |c| {
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map(params![slot], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await
    }

    async fn check(
        &self,
        tables: &[SnapshotTable<'_>],
        _types: &[UserType],
        _state_schema: &str,
        replace: bool,
    ) -> Result<Vec<String>> {
        let names: Vec<(String, String, String)> = tables
            .iter()
            .map(|t| {
                (
                    t.destination.schema.clone(),
                    t.destination.name.clone(),
                    t.destination.to_string(),
                )
            })
            .collect();
        let existing = self
            .handle
            .run("looking for destination tables", move |c| {
                let mut found = Vec::new();
                for (schema, name, shown) in names {
                    if table_exists(c, &schema, &name)? {
                        found.push(shown);
                    }
                }
                Ok(found)
            })
            .await?;
        Ok(if replace {
            Vec::new()
        } else {
            existing
                .into_iter()
                .map(|t| {
                    format!(
                        "destination table {t} already exists in the DuckDB file: drop it, or run \
                         `cdc snapshot --force` to replace it"
                    )
                })
                .collect()
        })
    }

    async fn create_tables(
        &self,
        tables: &[SnapshotTable<'_>],
        _types: &[UserType],
        replace: bool,
    ) -> Result<()> {
        let mut sql = vec!["BEGIN TRANSACTION".to_owned()];
        let mut schemas: Vec<&str> = tables
            .iter()
            .map(|t| t.destination.schema.as_str())
            .collect();
        schemas.sort();
        schemas.dedup();
        sql.extend(schemas.iter().map(|s| {
            let schema = quote_ident(s);
            match self.handle.catalog() {
                Some(c) => format!("CREATE SCHEMA IF NOT EXISTS {c}.{schema}"),
                None => format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
            }
        }));
        for t in tables {
            if replace {
                sql.push(format!(
                    "DROP TABLE IF EXISTS {}",
                    self.handle.qualified(t.destination)
                ));
            }
            // Generated columns are left out: their Postgres expressions are not DuckDB's.
            let mut cols: Vec<String> = t
                .schema
                .copied_columns()
                .map(|c| {
                    let ty = types::duck_type(c.type_oid, &c.type_sql, c.dims);
                    let null = if c.not_null { " NOT NULL" } else { "" };
                    format!("{} {ty}{null}", quote_ident(&c.name))
                })
                .collect();
            // The key is declared before the load: building it afterwards is faster in
            // DuckDB (1.7 s against 2.5 s for 5M rows) but takes 300 MB of memory at once.
            if !t.schema.primary_key.is_empty() {
                let key: Vec<String> = t
                    .schema
                    .primary_key
                    .iter()
                    .map(|c| quote_ident(c))
                    .collect();
                cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
            }
            sql.push(format!(
                "CREATE TABLE {} ({})",
                self.handle.qualified(t.destination),
                cols.join(", ")
            ));
        }
        sql.push("COMMIT".into());
        let sql = sql.join(";\n");
        self.handle
            .run("creating destination tables", move |c| {
                c.execute_batch(&sql)
            })
            .await
    }

    fn copy_format(&self, table: &TableSchema) -> CopyFormat {
        copy_in::format(&load::copied_types(table))
    }

    async fn loader(&self) -> Result<Box<dyn Loader>> {
        // A connection per worker: DuckDB appends to tables from several at once.
        let (conn, pin) = self.handle.connection().await?;
        Ok(Box::new(load::DuckLoader::new(
            conn,
            self.handle.clone(),
            pin,
        )))
    }

    async fn finish_table(
        &self,
        slot: Option<&str>,
        table: &SnapshotTable<'_>,
        rows: u64,
    ) -> Result<Vec<String>> {
        // The key was declared with the table (see `create_tables`): only the record.
        if let Some(slot) = slot {
            let sql = format!(
                "INSERT INTO {} (slot, source_table, destination_table, rows) VALUES ({}, {}, {}, {rows})",
                self.t("snapshot_tables"),
                quote_literal(slot),
                quote_literal(&table.schema.name.to_string()),
                quote_literal(&table.destination.to_string()),
            );
            self.handle
                .run(format!("finishing {}", table.destination), move |c| {
                    c.execute_batch(&sql)
                })
                .await?;
        }
        // Secondary indexes would slow every load and merge of an analytical copy, and their
        // Postgres definitions are not DuckDB's: none are created.
        let skipped: Vec<String> = table
            .schema
            .indexes
            .iter()
            .map(|i| i.name.clone())
            .collect();
        if !skipped.is_empty() {
            tracing::info!(table = %table.destination, indexes = ?skipped, "secondary indexes are not created in DuckDB");
        }
        Ok(skipped)
    }

    async fn session(&self, metrics: Arc<Metrics>) -> Result<Box<dyn Session>> {
        Ok(Box::new(apply::DuckSession::new(
            self.handle.clone(),
            self.t("pipeline"),
            metrics,
        )))
    }

    async fn joined_tables(&self, slot: &str) -> Result<Vec<(String, Lsn)>> {
        let sql = format!(
            "SELECT source_table, joined_lsn FROM {} WHERE slot = ? AND joined_lsn IS NOT NULL",
            self.t("snapshot_tables")
        );
        let slot = slot.to_owned();
        self.handle
            .run("reading joined tables", move |c| {
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map(params![slot], |r| {
                    Ok((r.get::<_, String>(0)?, Lsn(r.get::<_, u64>(1)?)))
                })?;
                rows.collect()
            })
            .await
    }

    async fn record_join(
        &self,
        slot: &str,
        source: &TableName,
        destination: &TableName,
        rows: u64,
        at: Lsn,
    ) -> Result<()> {
        let sql = format!(
            "INSERT OR REPLACE INTO {} (slot, source_table, destination_table, rows, joined_lsn) VALUES (?, ?, ?, ?, ?)",
            self.t("snapshot_tables")
        );
        let (slot, source, destination) =
            (slot.to_owned(), source.to_string(), destination.to_string());
        self.handle
            .run("recording a joined table", move |c| {
                c.execute(&sql, params![slot, source, destination, rows as i64, at.0])
                    .map(|_| ())
            })
            .await
    }

    async fn forget_table(&self, slot: &str, source: &TableName) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE slot = ? AND source_table = ?",
            self.t("snapshot_tables")
        );
        let (slot, source) = (slot.to_owned(), source.to_string());
        self.handle
            .run("forgetting a table", move |c| {
                c.execute(&sql, params![slot, source]).map(|_| ())
            })
            .await
    }

    async fn hold(&self) -> Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        // Each piece of work otherwise opens the file and checkpoints it on close.
        Ok(Some(Box::new(self.handle.pin())))
    }

    fn staging_name(&self, table: &TableName) -> TableName {
        // DuckDB renames within a schema only; its keys have no names to clash.
        TableName {
            schema: table.schema.clone(),
            name: format!("{}__cdc_reload", table.name),
        }
    }

    async fn replace_table(&self, staging: &TableName, table: &TableName) -> Result<()> {
        let sql = format!(
            "BEGIN TRANSACTION; DROP TABLE IF EXISTS {live}; ALTER TABLE {staged} RENAME TO {name}; COMMIT",
            live = self.handle.qualified(table),
            staged = self.handle.qualified(staging),
            name = quote_ident(&table.name),
        );
        self.handle
            .run(format!("swapping the reloaded {table} in"), move |c| {
                let result = c.execute_batch(&sql);
                if result.is_err() {
                    let _ = c.execute_batch("ROLLBACK");
                }
                result
            })
            .await
    }

    async fn rows_by_key(&self, map: &TableMap, text_key: &[bool]) -> Result<Box<dyn RowSource>> {
        let _ = text_key; // DuckDB's default collation already orders text by its bytes.
        load::rows_by_key(&self.handle, map).await
    }

    async fn drop_table(&self, table: &TableName) -> Result<()> {
        let sql = format!("DROP TABLE IF EXISTS {}", self.handle.qualified(table));
        self.handle
            .run(format!("dropping {table}"), move |c| c.execute_batch(&sql))
            .await
    }

    async fn table_exists(&self, table: &TableName) -> Result<bool> {
        let (schema, name) = (table.schema.clone(), table.name.clone());
        self.handle
            .run(format!("looking for {table}"), move |c| {
                table_exists(c, &schema, &name)
            })
            .await
    }

    async fn table_size(&self, table: &TableName) -> Result<Option<TableSize>> {
        let (schema, name, quoted) = (
            table.schema.clone(),
            table.name.clone(),
            self.handle.qualified(table),
        );
        self.handle
            .run(format!("sizing {table}"), move |c| {
                if !table_exists(c, &schema, &name)? {
                    return Ok(None);
                }
                let rows: i64 =
                    c.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |r| r.get(0))?;
                Ok(Some(TableSize { rows, bytes: None }))
            })
            .await
    }

    async fn sync_states(&self) -> Result<Vec<SyncState>> {
        let (schema, sync) = (self.schema_name.clone(), self.t("sync_tables"));
        self.handle
            .run("reading the sync state", move |c| {
                if !table_exists(c, &schema, "sync_tables")? {
                    return Ok(Vec::new());
                }
                let mut stmt = c.prepare(&format!(
                    "SELECT destination_table, source_table, strategy, position, epoch_us(last_pass),
                            rows, seconds FROM {sync} ORDER BY destination_table"
                ))?;
                let rows = stmt.query_map([], |r| {
                    let micros: Option<i64> = r.get(4)?;
                    Ok(SyncState {
                        destination_table: r.get(0)?,
                        source_table: r.get(1)?,
                        strategy: r.get(2)?,
                        position: r.get(3)?,
                        last_pass: micros.map(|us| {
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_micros(us.max(0) as u64)
                        }),
                        rows: r.get(5)?,
                        seconds: r.get(6)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn save_sync_state(&self, state: &SyncState) -> Result<()> {
        let sql = format!(
            "INSERT OR REPLACE INTO {} (destination_table, source_table, strategy, position, last_pass, rows, seconds)
             VALUES (?, ?, ?, ?, make_timestamp(?)::TIMESTAMPTZ, ?, ?)",
            self.t("sync_tables")
        );
        let s = state.clone();
        let micros = s
            .last_pass
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_micros() as i64);
        self.handle
            .run("recording the sync state", move |c| {
                c.execute(
                    &sql,
                    params![
                        s.destination_table,
                        s.source_table,
                        s.strategy,
                        s.position,
                        micros,
                        s.rows,
                        s.seconds
                    ],
                )
                .map(|_| ())
            })
            .await
    }
}
