//! A Postgres source's side of `cdc sync` passes: tables read under REPEATABLE READ
//! snapshots taken without a slot; full copies by the snapshot's parallel page ranges, the
//! incremental strategies through a cursor, `diff` by verify's key-range hashing on both sides.

use std::collections::HashMap;

use async_trait::async_trait;
use tokio_postgres::Client;

use super::read::{self, Since};
use super::repair::{repair_deferring, Repaired};
use super::source::{Key, Outcome, TableSource};
use super::write::Writer;
use super::{Chosen, Ctx, TableSummary};
use crate::config::{Config, Strategy};
use crate::conninfo::ConnInfo;
use crate::destination::{Destination, SnapshotTable};
use crate::error::{Error, Result};
use crate::model::schema::{TableName, TableSchema};
use crate::source::postgres::catalog;
use crate::source::postgres::rows::RowCursor;

/// A Postgres source of sync passes.
pub struct PgSide<'a> {
    config: &'a Config,
    src_info: ConnInfo,
}

/// A table opened for a pass: its schema, read through a catalog session kept for the pass.
pub struct PgTable {
    schema: TableSchema,
    catalog: Client,
}

impl<'a> PgSide<'a> {
    pub fn new(config: &'a Config) -> Result<Self> {
        Ok(PgSide {
            config,
            src_info: config.source_conninfo()?,
        })
    }
}

const PARENTS_SQL: &str = "SELECT rn.nspname, r.relname
      FROM pg_constraint c
      JOIN pg_class t ON t.oid = c.conrelid
      JOIN pg_namespace tn ON tn.oid = t.relnamespace
      JOIN pg_class r ON r.oid = c.confrelid
      JOIN pg_namespace rn ON rn.oid = r.relnamespace
     WHERE c.contype = 'f' AND tn.nspname = $1 AND t.relname = $2";

#[async_trait]
impl TableSource for PgSide<'_> {
    type Table = PgTable;

    fn schemas(table: &PgTable) -> (&TableSchema, &TableSchema) {
        (&table.schema, &table.schema)
    }

    async fn streamed(&self, dest: &dyn Destination) -> Result<Vec<String>> {
        streamed_tables(self.config, &self.src_info, dest).await
    }

    async fn parents(&self, tables: &[TableName]) -> Result<HashMap<TableName, Vec<TableName>>> {
        let src = crate::pg::connect(&self.src_info).await?;
        let mut out = HashMap::new();
        for t in tables {
            let rows = src
                .query(PARENTS_SQL, &[&t.schema, &t.name])
                .await
                .map_err(Error::pg(format!("reading the foreign keys of {t}")))?;
            let parents = rows
                .iter()
                .map(|r| TableName {
                    schema: r.get(0),
                    name: r.get(1),
                })
                .collect();
            out.insert(t.clone(), parents);
        }
        Ok(out)
    }

    async fn open_table(&self, t: &Chosen<'_>) -> Result<PgTable> {
        let catalog = crate::pg::connect(&self.src_info).await?;
        catalog::prepare_session(&catalog).await?;
        let schema = catalog::read_table(&catalog, &t.source)
            .await?
            .ok_or_else(|| {
                Error::definite(format!(
                    "source table {} does not exist (or this role cannot see it)",
                    t.source
                ))
            })?;
        Ok(PgTable { schema, catalog })
    }

    async fn check(&self, t: &Chosen<'_>, table: &PgTable, base: Strategy) -> Result<()> {
        if base == Strategy::Modified {
            let col = t.config.modified_column.as_deref().unwrap_or_default();
            warn_unindexed(&table.catalog, &table.schema, col).await;
        }
        Ok(())
    }

    async fn full_copy(
        &self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &PgTable,
        base: Strategy,
        summary: &mut TableSummary,
    ) -> Result<Outcome> {
        let reader = crate::pg::connect(&self.src_info).await?;
        let (rows, position) = full_copy(
            ctx,
            &self.src_info,
            t,
            &table.catalog,
            &reader,
            &table.schema,
            base,
        )
        .await?;
        summary.rows_read = rows;
        summary.inserted = rows;
        Ok(Outcome {
            position,
            deletes: Vec::new(),
            rows,
        })
    }

    async fn incremental(
        &self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &PgTable,
        strategy: Strategy,
        position: Option<&str>,
        summary: &mut TableSummary,
    ) -> Result<Outcome> {
        let reader = crate::pg::connect(&self.src_info).await?;
        let (read, position) =
            incremental(ctx, t, &reader, &table.schema, strategy, position).await?;
        summary.rows_read = read;
        if strategy == Strategy::NewRows {
            summary.inserted = read;
        } else {
            summary.upserted = read;
        }
        Ok(Outcome {
            position,
            deletes: Vec::new(),
            rows: read,
        })
    }

    async fn diff(
        &self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &PgTable,
        _position: Option<&str>,
        summary: &mut TableSummary,
    ) -> Result<Outcome> {
        let reader = crate::pg::connect(&self.src_info).await?;
        let (repaired, deletes) = diff(ctx, &self.src_info, t, &reader, &table.schema).await?;
        summary.rows_read = repaired.inserted + repaired.updated;
        summary.inserted = repaired.inserted;
        summary.updated = repaired.updated;
        summary.deleted = repaired.deleted;
        Ok(Outcome {
            position: None,
            rows: repaired.inserted + repaired.updated + repaired.deleted + deletes.len() as u64,
            deletes,
        })
    }
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
    src_info: &ConnInfo,
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
                src_info,
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
    src_info: &ConnInfo,
    t: &Chosen<'_>,
    reader: &Client,
    schema: &TableSchema,
) -> Result<(Repaired, Vec<Key>)> {
    let pair = crate::verify::TablePair {
        source: t.source.clone(),
        destination: t.destination.clone(),
        source_filter: t.config.filter.clone(),
    };
    let mut total = Repaired::default();
    let mut deferred = Vec::new();
    let mut budget = t.config.max_rows.unwrap_or(u64::MAX);
    let side = crate::destination::registry::compare_side(&ctx.settings)?;
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
            src_info,
            &side,
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
        // The last round's deletes wait for the driver (children first); a pass of many
        // rounds deletes as it goes, or the next round would find the same rows again.
        let (repaired, keys) = repair_deferring(
            ctx.dest.as_ref(),
            reader,
            schema,
            &pair,
            table,
            ctx.batch_rows,
            !table.truncated,
        )
        .await?;
        let moved = repaired.inserted + repaired.updated + repaired.deleted + keys.len() as u64;
        total.add(&repaired);
        deferred.extend(keys);
        budget = budget.saturating_sub(moved);
        if !table.truncated || moved == 0 || budget == 0 {
            break;
        }
    }
    Ok((total, deferred))
}
