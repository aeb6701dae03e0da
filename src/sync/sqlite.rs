//! A SQLite file's side of `cdc sync` passes (`source.url = "sqlite:PATH"`).
//!
//! ```text
//!  read by source::sqlite (converted, checked)
//!    ├─ destination table missing, or reload ─► staging table like the source, the rows
//!    │     through the destination's bulk loader (or a batch per transaction), swapped in
//!    ├─ new_rows / modified ─► rows past the stored position, upserted
//!    └─ diff ─► fingerprint of the source rows; unchanged since the last pass → done;
//!          else both sides read in key order and merged (verify::merge): missing and
//!          different rows upserted at once, extra keys left to the driver to delete
//!  after the pass: foreign keys created on the destination where missing (Postgres)
//! ```
//!
//! Values are compared by meaning (`compare::same`): a timestamp written `…+00` in SQLite equals
//! the destination's `…+00:00`, `1` equals `true` in a BOOLEAN column. A value that does not
//! fit its destination column stops the table with its key, column and value, or with
//! `--on-error skip` goes to the rejects file while the rest goes on (a diff pass with
//! rejected rows deletes nothing and keeps no fingerprint, so nothing is lost for a bad value).
//!
//! Consistency: in WAL mode the pass reads every table in one read transaction on one
//! connection (tables of one moment, so foreign keys between them hold; tables synced at once
//! take turns reading). In rollback-journal mode a long read transaction would block the
//! application's commits, so each table gets a connection and a transaction of its own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value;

mod diff;

use diff::diff;

use super::rejects::Rejects;
use super::source::{Outcome, TableSource};
use super::write::Writer;
use super::{Chosen, Ctx, Options, TableSummary};
use crate::config::{Config, Strategy};
use crate::destination::SnapshotTable;
use crate::error::{Error, Result};
use crate::model::schema::{DestForeignKey, TableName, TableSchema};
use crate::source::sqlite::catalog::{self, SqliteTable};
use crate::source::sqlite::read::{self, Reading};
use crate::source::sqlite::select::{self, order_column, select_sql};
use crate::source::sqlite::SqliteSource;
use crate::source::RowSource;

/// Prefix of a `diff` table's stored position: the fingerprint of the rows it was made equal to.
const FINGERPRINT: &str = "sha256:";

/// A SQLite file as a source of sync passes.
pub struct SqliteSide<'a> {
    config: &'a Config,
    path: PathBuf,
    /// WAL mode: the pass's one connection.
    shared: Option<Arc<Mutex<SqliteSource>>>,
    /// Every configured table's shape (foreign keys point at tables that may not be chosen).
    tables: BTreeMap<String, SqliteTable>,
    rejects: Rejects,
}

/// A table opened for a pass.
pub struct SqliteRead {
    /// As SQLite names it.
    raw: SqliteTable,
    /// With the entry's renames.
    table: SqliteTable,
    conn: Arc<Mutex<SqliteSource>>,
    /// Rollback-journal mode: this table's own connection, in its own read transaction.
    own: bool,
}

impl<'a> SqliteSide<'a> {
    /// Open the file and read every configured table's shape.
    pub async fn open(config: &'a Config, options: &Options, path: &Path) -> Result<Self> {
        let source = blocking(open_source(path.to_owned())).await?;
        let mut tables = BTreeMap::new();
        for (t, cfg) in config.table_pairs().iter().zip(&config.tables) {
            if let Some(mut table) = catalog::read_table(&source.conn, &t.0)? {
                // A rename error is the table's own, reported when it is synced.
                if table.rename(&cfg.columns, &cfg.ignore_columns).is_ok() {
                    tables.insert(t.0.to_string(), table);
                }
            }
        }
        Ok(SqliteSide {
            config,
            path: path.to_owned(),
            shared: source.wal.then(|| Arc::new(Mutex::new(source))),
            tables,
            rejects: Rejects::new(options.on_error, options.rejects.clone()),
        })
    }
}

fn open_source(path: PathBuf) -> impl FnOnce() -> Result<SqliteSource> + Send + 'static {
    move || SqliteSource::open(&path)
}

/// Run `f` on a blocking thread (SQLite calls block).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::stopped("SQLite reader"))?
}

/// Run `f` on the connection `conn`.
async fn with<T: Send + 'static>(
    conn: &Arc<Mutex<SqliteSource>>,
    f: impl FnOnce(&SqliteSource) -> Result<T> + Send + 'static,
) -> Result<T> {
    let conn = conn.clone();
    blocking(move || f(&conn.lock().unwrap_or_else(|p| p.into_inner()))).await
}

#[async_trait]
impl TableSource for SqliteSide<'_> {
    type Table = SqliteRead;

    fn schemas(table: &SqliteRead) -> (&TableSchema, &TableSchema) {
        (&table.raw.schema, &table.table.schema)
    }

    async fn parents(&self, tables: &[TableName]) -> Result<HashMap<TableName, Vec<TableName>>> {
        Ok(tables
            .iter()
            .map(|t| {
                let refs = self.tables.get(&t.to_string()).map_or(Vec::new(), |s| {
                    s.foreign_keys
                        .iter()
                        .map(|fk| fk.references.clone())
                        .collect()
                });
                (t.clone(), refs)
            })
            .collect())
    }

    async fn begin_pass(&self) -> Result<()> {
        match &self.shared {
            Some(conn) => with(conn, |s| s.begin()).await,
            None => Ok(()),
        }
    }

    async fn end_pass(&self) -> Result<()> {
        match &self.shared {
            Some(conn) => with(conn, |s| s.end()).await,
            None => Ok(()),
        }
    }

    async fn open_table(&self, t: &Chosen<'_>) -> Result<SqliteRead> {
        let (conn, own) = match &self.shared {
            Some(conn) => (conn.clone(), false),
            None => {
                let source = blocking(open_source(self.path.clone())).await?;
                let conn = Arc::new(Mutex::new(source));
                with(&conn, |s| s.begin()).await?;
                (conn, true)
            }
        };
        let name = t.source.clone();
        let raw = with(&conn, move |s| catalog::read_table(&s.conn, &name))
            .await?
            .ok_or_else(|| {
                Error::definite(format!(
                    "the SQLite file has no table {} (tables are named main.TABLE)",
                    t.source
                ))
            })?;
        let mut table = raw.clone();
        table.rename(&t.config.columns, &t.config.ignore_columns)?;
        Ok(SqliteRead {
            raw,
            table,
            conn,
            own,
        })
    }

    async fn check(&self, t: &Chosen<'_>, _table: &SqliteRead, base: Strategy) -> Result<()> {
        if base == Strategy::Xmin {
            return Err(Error::definite(format!(
                "{}: strategy xmin reads Postgres transaction ids, which a SQLite file does not have: \
                 use \"diff\" (sees inserts, updates and deletes), \"modified\" or \"new_rows\"",
                t.source
            )));
        }
        Ok(())
    }

    async fn close_table(&self, table: SqliteRead) -> Result<()> {
        if table.own {
            with(&table.conn, |s| s.end()).await?;
        }
        Ok(())
    }

    async fn full_copy(
        &self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &SqliteRead,
        base: Strategy,
        summary: &mut TableSummary,
    ) -> Result<Outcome> {
        full_copy(self, ctx, t, table, base, summary).await
    }

    async fn incremental(
        &self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &SqliteRead,
        strategy: Strategy,
        position: Option<&str>,
        summary: &mut TableSummary,
    ) -> Result<Outcome> {
        incremental(self, ctx, t, table, strategy, position, summary).await
    }

    async fn diff(
        &self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &SqliteRead,
        position: Option<&str>,
        summary: &mut TableSummary,
    ) -> Result<Outcome> {
        diff(self, ctx, t, table, position, summary).await
    }

    async fn create_foreign_keys(&self, ctx: &Ctx<'_>, t: &Chosen<'_>) -> Result<()> {
        if !ctx.dest.enforces_foreign_keys() {
            if self
                .tables
                .get(&t.source.to_string())
                .is_some_and(|s| !s.foreign_keys.is_empty())
            {
                tracing::info!(table = %t.source,
                    "foreign keys are not created on this destination (it does not enforce them)");
            }
            return Ok(());
        }
        foreign_keys(ctx, t, &self.tables, self.config).await
    }
}

/// `sql` over `table` into `writer`'s table, values checked against the destination's
/// column kinds.
fn into_writer(
    ctx: &Ctx<'_>,
    table: &SqliteTable,
    writer: &Writer,
    sql: String,
    params: Vec<Value>,
    order: &[String],
) -> read::Query {
    let kind_of = |t: &str| ctx.dest.value_kind(t);
    select::into_map(table, writer.map(), &kind_of, sql, params, order)
}

/// Read `q` into `writer` (inserts or upserts); the read's end.
async fn copy(
    side: &SqliteSide<'_>,
    t: &Chosen<'_>,
    conn: &Arc<Mutex<SqliteSource>>,
    q: read::Query,
    writer: &mut Writer,
    upsert: bool,
    summary: &mut TableSummary,
) -> Result<read::Done> {
    let rejected = AtomicU64::new(0);
    let mut reading = Reading::start(conn.clone(), q, side.rejects.handler(&t.source, &rejected));
    let written = async {
        while let Some(rows) = reading.next_rows().await? {
            for r in rows {
                if upsert {
                    writer.upsert(r).await?;
                } else {
                    writer.insert(r).await?;
                }
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    let done = reading.finish().await;
    summary.rejected += rejected.load(Ordering::Relaxed);
    written?;
    done
}

/// A first pass or a reload: a staging table like the source, filled and swapped in.
async fn full_copy(
    side: &SqliteSide<'_>,
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    read: &SqliteRead,
    base: Strategy,
    summary: &mut TableSummary,
) -> Result<Outcome> {
    let table = &read.table;
    let dest = &ctx.dest;
    let staging = dest.staging_name(&t.destination);
    dest.drop_table(&staging).await?;
    let target = SnapshotTable {
        schema: &table.schema,
        destination: &staging,
    };
    dest.create_tables(std::slice::from_ref(&target), &[], true)
        .await?;
    let order = order_column(table, base, t.config.modified_column.as_deref());
    let filter = t.config.filter.as_deref();
    let sql = select_sql(table, filter, None, &order, t.config.max_rows);
    // The destination's bulk path (Postgres: COPY); keys and indexes built after the rows.
    let mut loader = dest.loader().await?;
    let q = select::into_new_table(table, sql.clone(), &order);
    let rejected = AtomicU64::new(0);
    let mut reading = Reading::start(
        read.conn.clone(),
        q,
        side.rejects.handler(&t.source, &rejected),
    );
    let loaded = loader.load_rows(&mut reading, &target).await;
    drop(loader);
    let done = reading.finish().await;
    summary.rejected += rejected.load(Ordering::Relaxed);
    if let Some(rows) = loaded? {
        let done = done?;
        dest.finish_table(None, &target, rows).await?;
        dest.replace_table(&staging, &t.destination).await?;
        return Ok(full_copy_outcome(t, base, done, summary));
    }
    // No bulk path: rows go through a session, which matches them by key: the key comes
    // first, the other indexes after the rows (cheaper built once than maintained row by row).
    let key_only = TableSchema {
        indexes: Vec::new(),
        ..table.schema.clone()
    };
    let indexes_only = TableSchema {
        primary_key: Vec::new(),
        ..table.schema.clone()
    };
    let with = |schema| SnapshotTable {
        schema,
        destination: &staging,
    };
    dest.finish_table(None, &with(&key_only), 0).await?;
    let mut writer =
        Writer::open(dest.as_ref(), &table.schema, &staging, ctx.batch_rows(t)).await?;
    let q = into_writer(ctx, table, &writer, sql, Vec::new(), &order);
    let done = copy(side, t, &read.conn, q, &mut writer, false, summary).await?;
    writer.finish().await?;
    dest.finish_table(None, &with(&indexes_only), done.rows)
        .await?;
    dest.replace_table(&staging, &t.destination).await?;
    Ok(full_copy_outcome(t, base, done, summary))
}

/// The counts of a full copy, and the position its strategy goes on from.
fn full_copy_outcome(
    t: &Chosen<'_>,
    base: Strategy,
    done: read::Done,
    summary: &mut TableSummary,
) -> Outcome {
    summary.rows_read = done.rows;
    summary.inserted = done.rows - summary.rejected;
    let capped = t.config.max_rows.is_some_and(|m| done.rows >= m);
    let position = match base {
        Strategy::Diff if summary.rejected == 0 && !capped => {
            Some(format!("{FINGERPRINT}{}", done.fingerprint))
        }
        Strategy::NewRows | Strategy::Modified => done.last_order,
        _ => None,
    };
    Outcome {
        position,
        deletes: Vec::new(),
        rows: summary.rows_read,
    }
}

/// `new_rows` / `modified`: rows past the position, upserted.
async fn incremental(
    side: &SqliteSide<'_>,
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    read: &SqliteRead,
    strategy: Strategy,
    position: Option<&str>,
    summary: &mut TableSummary,
) -> Result<Outcome> {
    let table = &read.table;
    let order = order_column(table, strategy, t.config.modified_column.as_deref());
    let op = if strategy == Strategy::NewRows {
        ">"
    } else {
        ">="
    };
    let since = match (position, order.as_slice()) {
        (Some(_), [col]) => Some((col.as_str(), op)),
        _ => None,
    };
    let params = match since {
        Some(_) => vec![Value::Text(position.unwrap_or_default().to_owned())],
        None => Vec::new(),
    };
    let filter = t.config.filter.as_deref();
    let sql = select_sql(table, filter, since, &order, t.config.max_rows);
    let mut writer = Writer::open(
        ctx.dest.as_ref(),
        &table.schema,
        &t.destination,
        ctx.batch_rows(t),
    )
    .await?;
    let q = into_writer(ctx, table, &writer, sql, params, &order);
    let done = copy(side, t, &read.conn, q, &mut writer, true, summary).await?;
    writer.finish().await?;
    summary.rows_read = done.rows;
    if strategy == Strategy::NewRows {
        summary.inserted = done.rows - summary.rejected;
    } else {
        summary.upserted = done.rows - summary.rejected;
    }
    Ok(Outcome {
        position: done.last_order.or(position.map(str::to_owned)),
        deletes: Vec::new(),
        rows: summary.rows_read,
    })
}

/// Create the foreign keys of `t` whose referenced table is configured, where missing.
async fn foreign_keys(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    tables: &BTreeMap<String, SqliteTable>,
    config: &Config,
) -> Result<()> {
    let Some(table) = tables.get(&t.source.to_string()) else {
        return Ok(());
    };
    let pairs = config.table_pairs();
    let dest_column = |src_table: &TableName, col: &str| -> String {
        let cfg = config
            .tables
            .iter()
            .zip(&pairs)
            .find(|(_, p)| &p.0 == src_table)
            .map(|(c, _)| c);
        cfg.and_then(|c| c.columns.get(col).cloned())
            .unwrap_or_else(|| col.to_owned())
    };
    for fk in &table.foreign_keys {
        let Some((_, referenced)) = pairs.iter().find(|p| p.0 == fk.references) else {
            tracing::warn!(table = %t.source, references = %fk.references,
                "foreign key not created: the table it references is not configured");
            continue;
        };
        let dfk = DestForeignKey {
            columns: fk
                .columns
                .iter()
                .map(|c| dest_column(&t.source, c))
                .collect(),
            references: referenced.clone(),
            referenced_columns: fk
                .referenced_columns
                .iter()
                .map(|c| dest_column(&fk.references, c))
                .collect(),
            on_delete: fk.on_delete.clone(),
            on_update: fk.on_update.clone(),
        };
        if ctx.dest.ensure_foreign_key(&t.destination, &dfk).await? {
            tracing::info!(table = %t.destination, columns = ?dfk.columns, references = %dfk.references, "foreign key created");
        }
    }
    Ok(())
}
