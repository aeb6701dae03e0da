//! `cdc sync`: bring tables over by query, without a replication slot — for sources that
//! cannot give one (managed databases without `wal_level=logical`, hot standbys, roles
//! without REPLICATION). Needs only SELECT on the source.
//!
//! ```text
//!  per table: strategy (config, --strategy, reload_on) + its state in the destination
//!    ├─ destination table missing, or reload ─► full copy: snapshot exported without a slot,
//!    │     parallel page ranges into a staging table (the snapshot's code), swapped in at once
//!    ├─ new_rows / modified / xmin ─► rows past the stored position, read through a cursor
//!    │     under one snapshot with the next position, upserted a batch per transaction
//!    └─ diff ─► verify's key-range descent, then repair: insert missing, update different,
//!          delete extra, a batch per transaction, repeated until nothing differs
//!    └► state (position, rows, time) saved after the data
//! ```
//!
//! **Nothing lost on a crash, nothing doubled.** Every write is an upsert by key, a delete by
//! key, or a whole table swapped in one transaction, and the position is saved only after the
//! data it covers is committed. A pass killed at any point leaves the previous position, and
//! the next pass re-reads from there: the rows it writes again land on the same final state.
//! (The position is not committed together with the data: re-reading is cheaper than tying
//! every destination's state to its data transactions, and gives the same result.)

pub mod files;
mod read;
mod repair;
pub mod sqlite;
mod write;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use tokio_postgres::Client;

pub use repair::{repair, Repaired};

use crate::config::{Config, Strategy, TableConfig};

use crate::conninfo::ConnInfo;
use crate::destination::{Destination, SnapshotTable, SyncState};
use crate::endpoint::Target;
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use crate::model::schema::TableSchema;
use crate::source::postgres::catalog;
use crate::source::postgres::rows::RowCursor;
use read::Since;
use write::Writer;

/// What one `cdc sync` pass is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Tables to sync (source or destination names); empty: every configured table.
    pub tables: Vec<String>,
    /// Use this strategy for every table of this pass.
    pub strategy: Option<Strategy>,
    /// Tables synced at once (1 for destinations without concurrent sessions).
    pub jobs: usize,
    /// What a value that does not fit its destination column does (SQLite sources).
    pub on_error: OnError,
    /// Where `--on-error skip` writes rejected rows (JSON lines).
    pub rejects: std::path::PathBuf,
}

/// `--on-error`: what a row with a value that does not fit its column does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Stop the table with an error naming the table, key, column and value.
    #[default]
    Fail,
    /// Write the row to the rejects file and go on.
    Skip,
}

/// What a pass did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableSummary {
    pub source: String,
    pub destination: String,
    pub strategy: String,
    /// The table was copied whole (a first pass or a reload) and swapped in.
    pub full_copy: bool,
    pub rows_read: u64,
    pub inserted: u64,
    pub updated: u64,
    /// Rows written as "insert or update" (incremental strategies cannot tell which).
    pub upserted: u64,
    pub deleted: u64,
    /// Rows written to the rejects file (`--on-error skip`).
    pub rejected: u64,
    pub seconds: f64,
    /// Where the next pass starts.
    pub position: Option<String>,
    /// Why the table failed (the others still synced).
    pub error: Option<String>,
    #[serde(skip)]
    pub transient: bool,
}

/// What a pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub tables: Vec<TableSummary>,
    pub seconds: f64,
}

impl Summary {
    /// The tables that failed.
    pub fn failed(&self) -> Vec<&TableSummary> {
        self.tables.iter().filter(|t| t.error.is_some()).collect()
    }

    /// Whether every failure was transient (retrying later may work).
    pub fn failures_transient(&self) -> bool {
        self.failed().iter().all(|t| t.transient)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<32} {:<9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
            "table", "strategy", "read", "inserted", "updated", "upserted", "deleted", "seconds"
        )?;
        for t in &self.tables {
            let strategy = if t.full_copy {
                format!("{}*", t.strategy)
            } else {
                t.strategy.clone()
            };
            writeln!(
                f,
                "{:<32} {:<9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8.1}",
                t.destination,
                strategy,
                t.rows_read,
                t.inserted,
                t.updated,
                t.upserted,
                t.deleted,
                t.seconds
            )?;
            if let Some(e) = &t.error {
                writeln!(f, "  FAILED: {e}")?;
            }
        }
        let rejected: u64 = self.tables.iter().map(|t| t.rejected).sum();
        if rejected > 0 {
            writeln!(
                f,
                "{rejected} rows did not fit their columns and were written to the rejects file"
            )?;
        }
        if self.tables.iter().any(|t| t.full_copy) {
            writeln!(f, "* copied whole and swapped in (first pass or reload)")?;
        }
        Ok(())
    }
}

/// One configured table chosen for this pass.
struct Chosen<'a> {
    source: TableName,
    destination: TableName,
    config: &'a TableConfig,
}

/// What every table's pass shares.
struct Ctx<'a> {
    config: &'a Config,
    src_info: ConnInfo,
    target: Target,
    dest: Arc<dyn Destination>,
    states: HashMap<String, SyncState>,
    /// Source tables `cdc run` streams into this destination (slot present on the source).
    streamed: Vec<String>,
    strategy: Option<Strategy>,
    batch_rows: usize,
    today: (usize, u32),
}

/// Run one pass over the chosen tables. Errors of single tables are in the summary; an error
/// that stops every table (configuration, destination unreachable) is returned.
pub async fn pass(config: &Config, options: &Options) -> Result<Summary> {
    if let Target::ClickHouse(_) = config.destination_target()? {
        return Err(crate::destination::clickhouse::no_sync());
    }
    if let Some(path) = config.sqlite_source()? {
        return sqlite::pass(config, options, &path).await;
    }
    let started = Instant::now();
    let chosen = choose(config, &options.tables)?;
    let src_info = config.source_conninfo()?;
    let target = config.destination_target()?;
    let dest = crate::destination::open(config).await?;
    let _held = dest.hold().await?;
    dest.ensure_state().await?;
    let states = dest
        .sync_states()
        .await?
        .into_iter()
        .map(|s| (s.destination_table.clone(), s))
        .collect();
    let streamed = streamed_tables(config, &src_info, dest.as_ref()).await?;
    let jobs = if dest.concurrent_sessions() {
        options.jobs.max(1)
    } else {
        1
    };
    let ctx = Ctx {
        config,
        src_info,
        target,
        batch_rows: config
            .apply
            .batch_max_rows
            .unwrap_or(dest.default_batch_rows()),
        dest,
        states,
        streamed,
        strategy: options.strategy,
        today: today(SystemTime::now()),
    };
    let tables: Vec<TableSummary> = stream::iter(chosen.iter())
        .map(|t| table_pass(&ctx, t))
        .buffered(jobs)
        .collect()
        .await;
    Ok(Summary {
        tables,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The configured tables named in `only` (all when empty).
fn choose<'a>(config: &'a Config, only: &[String]) -> Result<Vec<Chosen<'a>>> {
    let all: Vec<Chosen<'a>> = config
        .table_pairs()
        .into_iter()
        .zip(&config.tables)
        .map(|((source, destination), config)| Chosen {
            source,
            destination,
            config,
        })
        .collect();
    if only.is_empty() {
        return Ok(all);
    }
    let mut chosen = Vec::new();
    for name in only {
        let wanted = TableName::parse(name).map_err(|e| Error::definite(format!("{name}: {e}")))?;
        let i = all
            .iter()
            .position(|c| c.source == wanted || c.destination == wanted)
            .ok_or_else(|| {
                let names: Vec<String> = all.iter().map(|c| c.source.to_string()).collect();
                Error::definite(format!(
                    "{name} is not a configured table (add a [[tables]] entry); configured: {}",
                    names.join(", ")
                ))
            })?;
        chosen.push(Chosen {
            source: all[i].source.clone(),
            destination: all[i].destination.clone(),
            config: all[i].config,
        });
    }
    Ok(chosen)
}

/// Source tables of a streaming pipeline into this destination whose slot still exists.
async fn streamed_tables(
    config: &Config,
    src_info: &ConnInfo,
    dest: &dyn Destination,
) -> Result<Vec<String>> {
    let slot = &config.source.slot;
    if dest.load_state(slot).await?.is_none() {
        return Ok(Vec::new());
    }
    let src = crate::pg::connect(src_info).await?;
    let exists: bool = src
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[slot],
        )
        .await
        .map_err(Error::pg("looking for the replication slot"))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(dest
        .snapshot_tables(slot)
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect())
}

/// UTC weekday (0 = Monday) and day of the month of `now`.
fn today(now: SystemTime) -> (usize, u32) {
    let days = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 3) % 7) as usize;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    (weekday, day)
}

/// One table's pass, its failure kept in the summary.
async fn table_pass(ctx: &Ctx<'_>, t: &Chosen<'_>) -> TableSummary {
    let started = Instant::now();
    let mut summary = TableSummary {
        source: t.source.to_string(),
        destination: t.destination.to_string(),
        ..TableSummary::default()
    };
    if let Err(e) = run_table(ctx, t, &mut summary).await {
        tracing::error!(table = %t.source, error = %e, "sync of this table failed");
        summary.transient = e.is_transient();
        summary.error = Some(chain(&e));
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary
}

/// An error and its causes on one line.
fn chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A table's strategies for this pass: the one it keeps its position for (`base`), and the
/// one this pass runs (`reload` on a `reload_on` day or by `cdc reload`, else `base`). A
/// reload also records `base`'s position, so the passes after it go on from there.
struct Strategies {
    base: Strategy,
    this_pass: Strategy,
}

/// The strategies of a table for this pass, checked against its source schema.
fn strategy_of(
    cli: Option<Strategy>,
    today: (usize, u32),
    t: &Chosen<'_>,
    schema: &TableSchema,
) -> Result<Strategies> {
    let default = if schema.primary_key.is_empty() {
        Strategy::Reload
    } else {
        Strategy::Diff
    };
    let configured = t.config.strategy.unwrap_or(default);
    let base = match cli {
        Some(Strategy::Reload) | None => configured,
        Some(other) => other,
    };
    let (weekday, day) = today;
    let reload_day = cli.is_none()
        && base != Strategy::Skip
        && t.config.reload_on.iter().any(|d| d.matches(weekday, day));
    let this_pass = if cli == Some(Strategy::Reload) || reload_day {
        Strategy::Reload
    } else {
        base
    };
    let name = &t.source;
    for strategy in [base, this_pass] {
        match strategy {
            Strategy::NewRows if schema.primary_key.len() > 1 => {
                return Err(Error::definite(format!(
                    "{name}: new_rows needs a single-column key, and the key is ({}): use strategy \"modified\" \
                     with a timestamp column, or \"diff\"",
                    schema.primary_key.join(", ")
                )))
            }
            Strategy::NewRows | Strategy::Diff | Strategy::Modified | Strategy::Xmin
                if schema.primary_key.is_empty() =>
            {
                return Err(Error::definite(format!(
                    "{name} has no primary key: strategy {strategy} matches rows by key; use strategy \"reload\" \
                     (or add a primary key on the source)"
                )))
            }
            Strategy::Modified => {
                let col = t.config.modified_column.as_deref().ok_or_else(|| {
                    Error::definite(format!(
                        "{name}: strategy \"modified\" needs modified_column in its [[tables]] entry"
                    ))
                })?;
                if read::column(schema, col).is_none() {
                    return Err(Error::definite(format!(
                        "{name}: modified_column {col:?} is not a column of the source table"
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(Strategies { base, this_pass })
}

async fn run_table(ctx: &Ctx<'_>, t: &Chosen<'_>, summary: &mut TableSummary) -> Result<()> {
    let started = Instant::now();
    let catalog = crate::pg::connect(&ctx.src_info).await?;
    catalog::prepare_session(&catalog).await?;
    let schema = catalog::read_table(&catalog, &t.source)
        .await?
        .ok_or_else(|| {
            Error::definite(format!(
                "source table {} does not exist (or this role cannot see it)",
                t.source
            ))
        })?;
    let Strategies {
        base,
        this_pass: strategy,
    } = strategy_of(ctx.strategy, ctx.today, t, &schema)?;
    summary.strategy = strategy.to_string();
    if strategy == Strategy::Skip {
        return Ok(());
    }
    if ctx.streamed.contains(&t.source.to_string()) {
        return Err(Error::definite(format!(
            "{} is streamed by `cdc run` (slot {} exists): syncing it too would race the stream. \
             Remove it from one of them, or run `cdc teardown --yes` to stop streaming",
            t.source, ctx.config.source.slot
        )));
    }
    if base == Strategy::Modified {
        let col = t.config.modified_column.as_deref().unwrap_or_default();
        warn_unindexed(&catalog, &schema, col).await;
    }
    let dest_name = t.destination.to_string();
    // A position is only meaningful to the strategy that stored it.
    let position = ctx
        .states
        .get(&dest_name)
        .filter(|s| s.strategy == base.name())
        .and_then(|s| s.position.clone());
    let exists = ctx.dest.table_exists(&t.destination).await?;
    let reader = crate::pg::connect(&ctx.src_info).await?;
    let (rows, position) = if !exists || strategy == Strategy::Reload {
        summary.full_copy = true;
        let (rows, position) = full_copy(ctx, t, &catalog, &reader, &schema, base).await?;
        summary.rows_read = rows;
        summary.inserted = rows;
        (rows, position)
    } else if strategy == Strategy::Diff {
        let repaired = diff(ctx, t, &reader, &schema).await?;
        summary.rows_read = repaired.inserted + repaired.updated;
        summary.inserted = repaired.inserted;
        summary.updated = repaired.updated;
        summary.deleted = repaired.deleted;
        (
            repaired.inserted + repaired.updated + repaired.deleted,
            None,
        )
    } else {
        let (read, position) =
            incremental(ctx, t, &reader, &schema, strategy, position.as_deref()).await?;
        summary.rows_read = read;
        if strategy == Strategy::NewRows {
            summary.inserted = read;
        } else {
            summary.upserted = read;
        }
        (read, position)
    };
    summary.position = position.clone();
    ctx.dest
        .save_sync_state(&SyncState {
            destination_table: dest_name,
            source_table: t.source.to_string(),
            strategy: base.name().into(),
            position,
            last_pass: Some(SystemTime::now()),
            rows: rows as i64,
            seconds: started.elapsed().as_secs_f64(),
        })
        .await?;
    tracing::info!(table = %t.source, strategy = %strategy, rows, "table synced");
    Ok(())
}

/// A `modified_column` without an index makes every pass read the whole table.
async fn warn_unindexed(catalog: &Client, schema: &TableSchema, column: &str) {
    let indexed = catalog
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                 ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = to_regclass($1) AND a.attname = $2)",
            &[&schema.name.quoted(), &column],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(true);
    if !indexed {
        tracing::warn!(table = %schema.name, column,
            "modified_column has no index starting with it on the source: every pass reads the whole table \
             (CREATE INDEX ON the table (column) makes passes cost only the changed rows)");
    }
}

/// Where the next pass of `strategy` starts, read in the caller's open snapshot.
async fn position_now(
    reader: &Client,
    schema: &TableSchema,
    strategy: Strategy,
    t: &Chosen<'_>,
) -> Result<Option<String>> {
    let filter = t.config.filter.as_deref();
    let column = read::order_column(strategy, schema, t.config.modified_column.as_deref());
    match (strategy, column) {
        (Strategy::Xmin, _) => Ok(Some(snapshot_xids(reader).await?.0.to_string())),
        (_, Some(col)) => Ok(reader
            .query_one(&read::max_sql(schema, col, filter), &[])
            .await
            .map_err(Error::pg(format!(
                "reading the position of {}",
                schema.name
            )))?
            .get(0)),
        _ => Ok(None),
    }
}

/// The open snapshot's xmin and xmax (64-bit).
async fn snapshot_xids(reader: &Client) -> Result<(u64, u64)> {
    let row = reader
        .query_one(read::SNAPSHOT_XIDS_SQL, &[])
        .await
        .map_err(Error::pg("reading the snapshot's transaction ids"))?;
    let parse = |i: usize| -> Result<u64> {
        row.get::<_, String>(i)
            .parse()
            .map_err(|e| Error::definite(format!("unexpected transaction id: {e}")))
    };
    Ok((parse(0)?, parse(1)?))
}

async fn begin_snapshot(reader: &Client) -> Result<()> {
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(Error::pg("starting a read-only snapshot on the source"))
}

async fn end_snapshot(reader: &Client) -> Result<()> {
    reader
        .batch_execute("COMMIT")
        .await
        .map_err(Error::pg("ending the source snapshot"))
}

/// Copy the whole table (its `where` rows) into a staging table and swap it in. Returns the
/// rows copied and the strategy's position as of the copy's snapshot.
async fn full_copy(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    catalog: &Client,
    reader: &Client,
    schema: &TableSchema,
    strategy: Strategy,
) -> Result<(u64, Option<String>)> {
    let dest = &ctx.dest;
    let staging = dest.staging_name(&t.destination);
    // What an interrupted reload left.
    dest.drop_table(&staging).await?;
    let oids: Vec<u32> = schema.columns.iter().map(|c| c.type_oid).collect();
    let types = catalog::user_types(catalog, &oids).await?;
    let target = SnapshotTable {
        schema,
        destination: &staging,
    };
    dest.create_tables(std::slice::from_ref(&target), &types, true)
        .await?;
    begin_snapshot(reader).await?;
    let mut position = position_now(reader, schema, strategy, t).await?;
    let filter = t.config.filter.clone();
    let rows = match t.config.max_rows {
        // A capped trial: the first rows in key order, through a session.
        Some(limit) => {
            dest.finish_table(None, &target, 0).await?;
            let order = read::order_column(strategy, schema, t.config.modified_column.as_deref());
            let sql = read::select_sql(schema, &Since::All, order, filter.as_deref(), Some(limit));
            let mut writer = Writer::open(
                dest.as_ref(),
                schema,
                &staging,
                t.config.batch_rows.unwrap_or(ctx.batch_rows),
            )
            .await?;
            let (read, last) = copy_rows(reader, &sql, &mut writer, order, false).await?;
            writer.finish().await?;
            if read >= limit {
                // The next pass goes on from the last row read; xmin cannot: it starts over.
                position = if strategy == Strategy::Xmin {
                    None
                } else {
                    last
                };
            }
            read
        }
        None => {
            let snapshot: String = reader
                .query_one("SELECT pg_export_snapshot()", &[])
                .await
                .map_err(Error::pg("exporting the source snapshot"))?
                .get(0);
            let version: i32 = reader
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .map_err(Error::pg("reading the source version"))?
                .get(0);
            let job =
                crate::snapshot::Job::new(dest.as_ref(), schema.clone(), staging.clone(), filter);
            let workers = match ctx.config.snapshot.jobs {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            };
            let reports = crate::snapshot::copy_all(
                &ctx.src_info,
                dest,
                None,
                &snapshot,
                vec![job],
                workers,
                version >= 140_000,
            )
            .await?;
            reports.first().map_or(0, |r| r.rows)
        }
    };
    end_snapshot(reader).await?;
    dest.replace_table(&staging, &t.destination).await?;
    Ok((rows, position))
}

/// Read `sql` through a cursor into `writer` (upserts, or inserts into a new table). Returns
/// the rows read and the last non-NULL value of `order`.
async fn copy_rows(
    reader: &Client,
    sql: &str,
    writer: &mut Writer,
    order: Option<&str>,
    upsert: bool,
) -> Result<(u64, Option<String>)> {
    let order_pos = order.and_then(|o| writer.map().columns.iter().position(|c| c.name == o));
    let mut cursor = RowCursor::declare(reader, "cdc_sync", sql).await?;
    let (mut read, mut last) = (0u64, None);
    loop {
        let rows = cursor.next(reader).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            if let Some(v) = order_pos.and_then(|p| crate::model::change::text(&row[p])) {
                last = Some(v.to_owned());
            }
            read += 1;
            if upsert {
                writer.upsert(row).await?;
            } else {
                writer.insert(row).await?;
            }
        }
        if read % 100_000 < crate::source::postgres::rows::FETCH_ROWS as u64 {
            tracing::info!(rows = read, "reading changed rows");
        }
    }
    Ok((read, last))
}

/// `new_rows`, `modified`, `xmin`: the rows past `position`, upserted. Returns the rows read
/// and the next position.
async fn incremental(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    reader: &Client,
    schema: &TableSchema,
    strategy: Strategy,
    position: Option<&str>,
) -> Result<(u64, Option<String>)> {
    begin_snapshot(reader).await?;
    let order = read::order_column(strategy, schema, t.config.modified_column.as_deref());
    let mut next = position.map(str::to_owned);
    // This pass's snapshot: its xmin is the next xmin pass's horizon, its xmax this one's end.
    let xids = if strategy == Strategy::Xmin {
        Some(snapshot_xids(reader).await?)
    } else {
        None
    };
    let since = match (strategy, position) {
        (_, None) => Since::All,
        (Strategy::NewRows, Some(p)) => Since::KeyAbove(p.to_owned()),
        (Strategy::Modified, Some(p)) => Since::ModifiedFrom(p.to_owned()),
        (_, Some(p)) => {
            let horizon: u64 = p.parse().map_err(|_| {
                Error::definite(format!(
                    "stored xmin position {p:?} of {} is not a number",
                    t.destination
                ))
            })?;
            let (_, xmax) = xids.expect("read for xmin");
            if xmax.saturating_sub(horizon) >= 1 << 31 {
                tracing::warn!(table = %t.source,
                    "over 2^31 transactions since the last xmin pass: reading every row once (xmin wraps around)");
                Since::All
            } else {
                Since::XminFrom { horizon, xmax }
            }
        }
    };
    if let Some((xmin, _)) = xids {
        next = Some(xmin.to_string());
    }
    let limit = t.config.max_rows;
    let sql = read::select_sql(schema, &since, order, t.config.filter.as_deref(), limit);
    let mut writer = Writer::open(
        ctx.dest.as_ref(),
        schema,
        &t.destination,
        t.config.batch_rows.unwrap_or(ctx.batch_rows),
    )
    .await?;
    let (read, last) = copy_rows(reader, &sql, &mut writer, order, true).await?;
    writer.finish().await?;
    end_snapshot(reader).await?;
    if strategy == Strategy::Xmin && limit.is_some_and(|l| read >= l) {
        // A capped xmin pass cannot say which rows it left: the next one starts again here.
        next = position.map(str::to_owned);
    } else if let Some(last) = last {
        if strategy != Strategy::Xmin {
            next = Some(last);
        }
    }
    Ok((read, next))
}

/// Buckets per level of a `diff` pass's descent.
const DIFF_FANOUT: i64 = 1 << 16;

/// Differences found per round of a `diff` pass.
const DIFF_ROUND_ROWS: u64 = 100_000;

/// `diff`: compare, repair what differs, and again while the comparison stopped at its limit.
async fn diff(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    reader: &Client,
    schema: &TableSchema,
) -> Result<Repaired> {
    let pair = crate::verify::TablePair {
        source: t.source.clone(),
        destination: t.destination.clone(),
        source_filter: t.config.filter.clone(),
    };
    let mut total = Repaired::default();
    let mut budget = t.config.max_rows.unwrap_or(u64::MAX);
    loop {
        // Each round is a whole descent: find many differences per round (memory holds their
        // keys and values), write them in batches.
        let options = crate::verify::Options {
            // Changes spread over the table make most of 256 buckets differ, and each would
            // be hashed again one level down: cut the key range finer at once, so one scan
            // per side finds the leaves (a single integer key; other keys stay at 32).
            fanout: DIFF_FANOUT,
            max_differences: DIFF_ROUND_ROWS
                .max(ctx.batch_rows as u64)
                .min(budget)
                .max(1) as usize,
            ..crate::verify::Options::default()
        };
        let report = crate::verify::verify_into(
            &ctx.src_info,
            &ctx.target,
            std::slice::from_ref(&pair),
            &options,
            &|_| {},
        )
        .await?;
        let Some(table) = report.tables.first() else {
            break;
        };
        if table.equal {
            break;
        }
        let repaired = repair(
            ctx.dest.as_ref(),
            reader,
            schema,
            &pair,
            table,
            ctx.batch_rows,
        )
        .await?;
        let moved = repaired.inserted + repaired.updated + repaired.deleted;
        total.add(&repaired);
        budget = budget.saturating_sub(moved);
        if !table.truncated || moved == 0 || budget == 0 {
            break;
        }
    }
    Ok(total)
}

/// `cdc sync`: one pass, or one every `every` until `stop` turns true. A stop during a pass
/// abandons it (its committed batches stand; the stored positions are those of the last
/// finished pass, so nothing is skipped); a stop between passes ends at once. `report` hears
/// each finished pass. Returns the last pass's summary (`None` if stopped before any ended).
pub async fn run(
    config: &Config,
    options: &Options,
    every: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    report: &mut (dyn FnMut(&Summary) + Send),
) -> Result<Option<Summary>> {
    let mut last = None;
    loop {
        let started = Instant::now();
        tokio::select! {
            result = pass(config, options) => {
                let summary = match result {
                    Ok(s) => s,
                    // A pass that could not start is retried at the next tick when repeating.
                    Err(e) if every.is_some() && e.is_transient() => {
                        tracing::warn!(error = %e, "sync pass could not run; trying again at the next one");
                        Summary::default()
                    }
                    Err(e) => return Err(e),
                };
                report(&summary);
                last = Some(summary);
            }
            _ = stop.wait_for(|s| *s) => {
                tracing::info!("stop requested: the pass in flight is abandoned; its committed batches stand");
                return Ok(last);
            }
        }
        let Some(every) = every else {
            return Ok(last);
        };
        let wait = every.saturating_sub(started.elapsed());
        tracing::info!(
            next_in_s = wait.as_secs(),
            "pass done; waiting for the next one"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return Ok(last),
        }
    }
}

/// `cdc verify --repair`: repair every table of `report` that differs; what each repair did.
pub async fn repair_report(
    config: &Config,
    pairs: &[crate::verify::TablePair],
    report: &crate::verify::Report,
) -> Result<Vec<(String, Repaired)>> {
    let src_info = config.source_conninfo()?;
    let dest = crate::destination::open(config).await?;
    let catalog = crate::pg::connect(&src_info).await?;
    catalog::prepare_session(&catalog).await?;
    let reader = crate::pg::connect(&src_info).await?;
    let batch_rows = config
        .apply
        .batch_max_rows
        .unwrap_or(dest.default_batch_rows());
    let mut done = Vec::new();
    for (pair, table) in pairs.iter().zip(&report.tables) {
        if table.equal {
            continue;
        }
        let schema = catalog::read_table(&catalog, &pair.source)
            .await?
            .ok_or_else(|| {
                Error::definite(format!("source table {} does not exist", pair.source))
            })?;
        let repaired = repair(dest.as_ref(), &reader, &schema, pair, table, batch_rows).await?;
        done.push((pair.destination.to_string(), repaired));
    }
    Ok(done)
}

/// `--every` durations: `90s`, `15m`, `1h30m`, `2d`, or plain seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 30s, 15m, 1h30m or 1d");
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let (mut total, mut number) = (0u64, String::new());
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total += n * unit;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("15x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn days_are_utc_weekdays_and_days_of_month() {
        // 2026-11-29 was a Sunday; 2024-02-29 a Thursday.
        let at = |days: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + 3600);
        assert_eq!(today(at(20_786)), (6, 29));
        assert_eq!(today(at(19_782)), (3, 29));
        assert_eq!(today(at(0)), (3, 1));
    }
}
