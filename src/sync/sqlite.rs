//! `cdc sync` passes from a SQLite file (`source.url = "sqlite:PATH"`).
//!
//! ```text
//!  tables in foreign-key order (parents first), read by source::sqlite (converted, checked)
//!    ├─ destination table missing, or reload ─► staging table like the source (key and
//!    │     indexes first), rows inserted a batch per transaction, swapped in
//!    ├─ new_rows / modified ─► rows past the stored position, upserted
//!    └─ diff ─► fingerprint of the source rows; unchanged since the last pass → done;
//!          else both sides read in key order and merged: missing and different rows upserted
//!          at once, extra keys kept
//!  then, children first: the extra rows deleted, the state saved
//!  then foreign keys created on the destination where missing (Postgres)
//! ```
//!
//! Values are compared by meaning (`types::same`): a timestamp written `…+00` in SQLite equals
//! the destination's `…+00:00`, `1` equals `true` in a BOOLEAN column. A value that does not
//! fit its destination column stops the table with its key, column and value, or with
//! `--on-error skip` goes to the rejects file while the rest goes on (a diff pass with
//! rejected rows deletes nothing and keeps no fingerprint, so nothing is lost for a bad value).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use rusqlite::types::Value;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::write::Writer;
use super::{choose, strategy_of, Chosen, OnError, Options, Strategies, Summary, TableSummary};
use crate::config::{Config, Strategy, TableName};
use crate::decode::Datum;
use crate::destination::{DestForeignKey, Destination, SnapshotTable, SyncState, Target};
use crate::error::{Error, Result};
use crate::source::replication::quote_ident;
use crate::source::rows::RowCursor;
use crate::source::sqlite::catalog::{self, SqliteTable};
use crate::source::sqlite::read::{self, Item, Query, Reject};
use crate::source::sqlite::types::{key_order, same, Kind};
use crate::source::sqlite::SqliteSource;

/// Prefix of a `diff` table's stored position: the fingerprint of the rows it was made equal to.
const FINGERPRINT: &str = "sha256:";

/// What every table's pass shares.
struct Ctx<'a> {
    source: Arc<Mutex<SqliteSource>>,
    wal: bool,
    dest: Arc<dyn Destination>,
    target: Target,
    states: HashMap<String, SyncState>,
    options: &'a Options,
    batch_rows: usize,
    today: (usize, u32),
    rejects: Mutex<Option<std::fs::File>>,
}

/// What a table's first phase leaves for the second: rows to delete, the state to save.
struct Pending {
    deletes: Vec<Vec<(String, Datum)>>,
    state: SyncState,
    started: Instant,
}

/// One pass over the chosen tables of a SQLite source.
pub async fn pass(config: &Config, options: &Options, path: &Path) -> Result<Summary> {
    let started = Instant::now();
    let chosen = choose(config, &options.tables)?;
    let source = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || SqliteSource::open(&path))
            .await
            .map_err(|e| Error::Definite(format!("SQLite reader stopped: {e}")))??
    };
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
    let wal = source.wal;
    // Every configured table's shape: foreign keys point at tables that may not be chosen.
    let mut tables: BTreeMap<String, SqliteTable> = BTreeMap::new();
    for (t, cfg) in config.table_pairs().iter().zip(&config.tables) {
        if let Some(table) = catalog::read_table(&source.conn, &t.0)? {
            let mut renamed = table;
            // A rename error is the table's own, reported when it is synced.
            if renamed.rename(&cfg.columns, &cfg.ignore_columns).is_ok() {
                tables.insert(t.0.to_string(), renamed);
            }
        }
    }
    let ctx = Ctx {
        source: Arc::new(Mutex::new(source)),
        wal,
        batch_rows: config
            .apply
            .batch_max_rows
            .unwrap_or(dest.default_batch_rows()),
        dest,
        target,
        states,
        options,
        today: super::today(SystemTime::now()),
        rejects: Mutex::new(None),
    };
    let ordered = dependency_order(chosen, &tables);
    if ctx.wal {
        with_source(&ctx, |s| s.begin()).await?;
    }
    let mut summaries = Vec::new();
    let mut pending = Vec::new();
    for t in &ordered {
        let mut summary = TableSummary {
            source: t.source.to_string(),
            destination: t.destination.to_string(),
            ..TableSummary::default()
        };
        let started = Instant::now();
        match sync_table(&ctx, t, &mut summary).await {
            Ok(p) => pending.push((summaries.len(), p)),
            Err(e) => fail(&mut summary, t, e),
        }
        summary.seconds = started.elapsed().as_secs_f64();
        summaries.push(summary);
    }
    if ctx.wal {
        with_source(&ctx, |s| s.end()).await?;
    }
    // Children before parents: a parent row goes only after the rows that point at it.
    for (i, p) in pending.into_iter().rev() {
        let t = &ordered[i];
        let summary = &mut summaries[i];
        if let Err(e) = finish_table(&ctx, t, p, summary).await {
            fail(summary, t, e);
        }
    }
    if matches!(ctx.target, Target::Postgres(_)) {
        for (t, summary) in ordered.iter().zip(&mut summaries) {
            if summary.error.is_none() && summary.strategy != "skip" {
                if let Err(e) = foreign_keys(&ctx, t, &tables, config).await {
                    fail(summary, t, e);
                }
            }
        }
    } else if ordered.iter().any(|t| {
        tables
            .get(&t.source.to_string())
            .is_some_and(|s| !s.foreign_keys.is_empty())
    }) {
        tracing::info!("foreign keys are not created on this destination (it does not enforce them)");
    }
    Ok(Summary {
        tables: summaries,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn fail(summary: &mut TableSummary, t: &Chosen<'_>, e: Error) {
    tracing::error!(table = %t.source, error = %e, "sync of this table failed");
    summary.transient = e.is_transient();
    summary.error = Some(super::chain(&e));
}

/// Run `f` on the source on a blocking thread.
async fn with_source<T: Send + 'static>(
    ctx: &Ctx<'_>,
    f: impl FnOnce(&SqliteSource) -> Result<T> + Send + 'static,
) -> Result<T> {
    let source = ctx.source.clone();
    tokio::task::spawn_blocking(move || {
        let s = source.lock().unwrap_or_else(|p| p.into_inner());
        f(&s)
    })
    .await
    .map_err(|e| Error::Definite(format!("SQLite reader stopped: {e}")))?
}

/// Parents before the tables whose foreign keys point at them (config order otherwise; a
/// cycle keeps config order for the tables in it).
fn dependency_order<'a>(
    chosen: Vec<Chosen<'a>>,
    tables: &BTreeMap<String, SqliteTable>,
) -> Vec<Chosen<'a>> {
    let names: Vec<String> = chosen.iter().map(|c| c.source.to_string()).collect();
    let parents = |name: &str| -> Vec<String> {
        tables.get(name).map_or(Vec::new(), |t| {
            t.foreign_keys
                .iter()
                .map(|fk| fk.references.to_string())
                .filter(|p| p != name && names.contains(p))
                .collect()
        })
    };
    let mut done: Vec<String> = Vec::new();
    let mut rest: Vec<Chosen<'a>> = chosen;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let ready = rest
            .iter()
            .position(|c| parents(&c.source.to_string()).iter().all(|p| done.contains(p)))
            .unwrap_or(0);
        let c = rest.remove(ready);
        done.push(c.source.to_string());
        out.push(c);
    }
    out
}

async fn sync_table(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    summary: &mut TableSummary,
) -> Result<Pending> {
    let started = Instant::now();
    let name = t.source.clone();
    let raw = with_source(ctx, move |s| catalog::read_table(&s.conn, &name))
        .await?
        .ok_or_else(|| {
            Error::Definite(format!(
                "the SQLite file has no table {} (tables are named main.TABLE)",
                t.source
            ))
        })?;
    let Strategies {
        base,
        this_pass: strategy,
    } = strategy_of(ctx.options.strategy, ctx.today, t, &raw.schema)?;
    summary.strategy = strategy.to_string();
    let mut table = raw;
    table.rename(&t.config.columns, &t.config.ignore_columns)?;
    let dest_name = t.destination.to_string();
    let state = |position: Option<String>, rows: u64| SyncState {
        destination_table: dest_name.clone(),
        source_table: t.source.to_string(),
        strategy: base.name().into(),
        position,
        last_pass: Some(SystemTime::now()),
        rows: rows as i64,
        seconds: 0.0,
    };
    if strategy == Strategy::Skip {
        // An empty strategy marks it for the second phase: nothing to delete or save.
        let mut skipped = state(None, 0);
        skipped.strategy.clear();
        return Ok(Pending {
            deletes: Vec::new(),
            state: skipped,
            started,
        });
    }
    if strategy == Strategy::Xmin || base == Strategy::Xmin {
        return Err(Error::Definite(format!(
            "{}: strategy xmin reads Postgres transaction ids, which a SQLite file does not have: \
             use \"diff\" (sees inserts, updates and deletes), \"modified\" or \"new_rows\"",
            t.source
        )));
    }
    let position = ctx
        .states
        .get(&dest_name)
        .filter(|s| s.strategy == base.name())
        .and_then(|s| s.position.clone());
    if !ctx.wal {
        with_source(ctx, |s| s.begin()).await?;
    }
    let result = match () {
        _ if !ctx.dest.table_exists(&t.destination).await? || strategy == Strategy::Reload => {
            summary.full_copy = true;
            full_copy(ctx, t, &table, base, summary).await
        }
        _ if strategy == Strategy::Diff => diff(ctx, t, &table, position.as_deref(), summary).await,
        _ => incremental(ctx, t, &table, strategy, position.as_deref(), summary).await,
    };
    if !ctx.wal {
        with_source(ctx, |s| s.end()).await?;
    }
    let (deletes, position) = result?;
    Ok(Pending {
        deletes,
        state: state(position, summary.rows_read),
        started,
    })
}

/// Delete what the first phase found extra, then save the table's state.
async fn finish_table(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    p: Pending,
    summary: &mut TableSummary,
) -> Result<()> {
    if p.state.strategy.is_empty() {
        return Ok(()); // skipped
    }
    if !p.deletes.is_empty() {
        let schema = table_schema_for_writer(ctx, t).await?;
        let mut writer = Writer::open(ctx.dest.as_ref(), &schema, &t.destination, ctx.batch_rows).await?;
        for key in p.deletes {
            writer.delete(key).await?;
            summary.deleted += 1;
        }
        writer.finish().await?;
    }
    let mut state = p.state;
    state.seconds = p.started.elapsed().as_secs_f64();
    summary.position = state.position.clone();
    ctx.dest.save_sync_state(&state).await?;
    tracing::info!(table = %t.source, strategy = %summary.strategy, rows = summary.rows_read, "table synced");
    Ok(())
}

async fn table_schema_for_writer(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
) -> Result<crate::snapshot::catalog::TableSchema> {
    let name = t.source.clone();
    let mut table = with_source(ctx, move |s| catalog::read_table(&s.conn, &name))
        .await?
        .ok_or_else(|| Error::Definite(format!("{} disappeared from the SQLite file", t.source)))?;
    table.rename(&t.config.columns, &t.config.ignore_columns)?;
    Ok(table.schema)
}

/// `SELECT` of the table's columns (SQLite names) with the filter, a lower bound and an order.
fn select_sql(
    table: &SqliteTable,
    filter: Option<&str>,
    since: Option<(&str, &str)>,
    order: &[String],
    limit: Option<u64>,
) -> String {
    let cols: Vec<String> = table.source_columns.iter().map(|c| quote_ident(c)).collect();
    let mut sql = format!(
        "SELECT {} FROM {}.{}",
        cols.join(", "),
        quote_ident(&table.schema.name.schema),
        quote_ident(&table.schema.name.name)
    );
    let mut conditions = Vec::new();
    if let Some(f) = filter {
        conditions.push(format!("({f})"));
    }
    if let Some((col, op)) = since {
        conditions.push(format!("{} {op} ?1", quote_ident(col)));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    if !order.is_empty() {
        let o: Vec<String> = order.iter().map(|c| quote_ident(c)).collect();
        sql.push_str(&format!(" ORDER BY {}", o.join(", ")));
    }
    if let Some(n) = limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    sql
}

/// The SQLite names of the key columns.
fn source_key(table: &SqliteTable) -> Vec<String> {
    table
        .schema
        .primary_key
        .iter()
        .filter_map(|k| {
            let i = table.schema.columns.iter().position(|c| &c.name == k)?;
            Some(table.source_columns[i].clone())
        })
        .collect()
}

/// The SQLite name of the column a strategy orders by (`modified_column` may be given by
/// either name).
fn order_column(table: &SqliteTable, strategy: Strategy, modified: Option<&str>) -> Vec<String> {
    match (strategy, modified) {
        (Strategy::Modified, Some(m)) => {
            let i = table
                .source_columns
                .iter()
                .position(|c| c == m)
                .or_else(|| table.schema.columns.iter().position(|c| c.name == m));
            i.map(|i| vec![table.source_columns[i].clone()])
                .unwrap_or_default()
        }
        _ => source_key(table),
    }
}

/// A query over `table` converting values to the writer's column types.
fn query(table: &SqliteTable, writer: &Writer, sql: String, params: Vec<Value>, order: &[String]) -> Query {
    let map = writer.map();
    Query {
        sql,
        params,
        kinds: map.columns.iter().map(|c| Kind::of(&c.dest_type)).collect(),
        columns: map.columns.iter().map(|c| c.name.clone()).collect(),
        key: map.key.clone(),
        order: match order {
            [one] => table.source_columns.iter().position(|c| c == one),
            _ => None,
        },
        fingerprint_only: false,
    }
}

/// Hand a rejected row to `--on-error`: an error, or a line in the rejects file.
fn reject(ctx: &Ctx<'_>, t: &Chosen<'_>, r: Reject, summary: &mut TableSummary) -> Result<()> {
    match ctx.options.on_error {
        OnError::Fail => Err(Error::Definite(format!(
            "{}: {r}. Fix the value in the SQLite file (or the destination column's type), \
             or run with --on-error skip to write such rows to a rejects file and go on",
            t.source
        ))),
        OnError::Skip => {
            summary.rejected += 1;
            let mut file = ctx.rejects.lock().unwrap_or_else(|p| p.into_inner());
            if file.is_none() {
                *file = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&ctx.options.rejects)
                        .map_err(Error::io(format!(
                            "cannot write the rejects file {}",
                            ctx.options.rejects.display()
                        )))?,
                );
            }
            let line = serde_json::json!({
                "table": t.source.to_string(),
                "key": r.key,
                "column": r.column,
                "value": r.value,
                "problem": r.problem,
            });
            let f = file.as_mut().expect("opened above");
            writeln!(f, "{line}").map_err(Error::io("writing the rejects file"))?;
            tracing::warn!(table = %t.source, row = %r, "row written to the rejects file");
            Ok(())
        }
    }
}

/// Rows from the reading thread, one at a time.
struct SourceRows {
    rx: mpsc::Receiver<Vec<Item>>,
    buf: VecDeque<Item>,
}

impl SourceRows {
    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(i) = self.buf.pop_front() {
                return Some(i);
            }
            self.buf = self.rx.recv().await?.into();
        }
    }
}

async fn joined(handle: tokio::task::JoinHandle<Result<read::Done>>) -> Result<read::Done> {
    handle
        .await
        .map_err(|e| Error::Definite(format!("SQLite reader stopped: {e}")))?
}

/// Read `q` into `writer` (inserts or upserts); the rows read and the last order value.
async fn copy(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    q: Query,
    writer: &mut Writer,
    upsert: bool,
    summary: &mut TableSummary,
) -> Result<read::Done> {
    let (rx, handle) = read::spawn(ctx.source.clone(), q);
    let mut rows = SourceRows {
        rx,
        buf: VecDeque::new(),
    };
    while let Some(item) = rows.next().await {
        match item {
            Item::Row(r) if upsert => writer.upsert(r).await?,
            Item::Row(r) => writer.insert(r).await?,
            Item::Reject(r) => reject(ctx, t, r, summary)?,
        }
    }
    joined(handle).await
}

/// A first pass or a reload: a staging table like the source, filled and swapped in.
async fn full_copy(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    table: &SqliteTable,
    base: Strategy,
    summary: &mut TableSummary,
) -> Result<(Vec<Vec<(String, Datum)>>, Option<String>)> {
    let dest = &ctx.dest;
    let staging = dest.staging_name(&t.destination);
    dest.drop_table(&staging).await?;
    let target = SnapshotTable {
        schema: &table.schema,
        destination: &staging,
    };
    dest.create_tables(std::slice::from_ref(&target), &[], true)
        .await?;
    // Rows go through a session, which matches them by key: the key comes first.
    dest.finish_table(None, &target, 0).await?;
    let mut writer = Writer::open(dest.as_ref(), &table.schema, &staging, ctx.batch_rows).await?;
    let order = order_column(table, base, t.config.modified_column.as_deref());
    let sql = select_sql(table, t.config.filter.as_deref(), None, &order, t.config.max_rows);
    let q = query(table, &writer, sql, Vec::new(), &order);
    let done = copy(ctx, t, q, &mut writer, false, summary).await?;
    writer.finish().await?;
    dest.replace_table(&staging, &t.destination).await?;
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
    Ok((Vec::new(), position))
}

/// `new_rows` / `modified`: rows past the position, upserted.
async fn incremental(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    table: &SqliteTable,
    strategy: Strategy,
    position: Option<&str>,
    summary: &mut TableSummary,
) -> Result<(Vec<Vec<(String, Datum)>>, Option<String>)> {
    let order = order_column(table, strategy, t.config.modified_column.as_deref());
    let op = if strategy == Strategy::NewRows { ">" } else { ">=" };
    let since = match (position, order.as_slice()) {
        (Some(_), [col]) => Some((col.as_str(), op)),
        _ => None,
    };
    let params = match since {
        Some(_) => vec![Value::Text(position.unwrap_or_default().to_owned())],
        None => Vec::new(),
    };
    let sql = select_sql(table, t.config.filter.as_deref(), since, &order, t.config.max_rows);
    let mut writer =
        Writer::open(ctx.dest.as_ref(), &table.schema, &t.destination, ctx.batch_rows).await?;
    let q = query(table, &writer, sql, params, &order);
    let done = copy(ctx, t, q, &mut writer, true, summary).await?;
    writer.finish().await?;
    summary.rows_read = done.rows;
    if strategy == Strategy::NewRows {
        summary.inserted = done.rows - summary.rejected;
    } else {
        summary.upserted = done.rows - summary.rejected;
    }
    Ok((Vec::new(), done.last_order.or(position.map(str::to_owned))))
}

/// `diff`: nothing when the source's fingerprint is the stored one; else both sides merged in
/// key order.
async fn diff(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    table: &SqliteTable,
    position: Option<&str>,
    summary: &mut TableSummary,
) -> Result<(Vec<Vec<(String, Datum)>>, Option<String>)> {
    let Target::Postgres(info) = &ctx.target else {
        return Err(Error::Definite(format!(
            "{}: strategy diff from a SQLite source needs a Postgres destination so far; \
             use strategy \"reload\" or \"modified\" for this destination",
            t.source
        )));
    };
    let mut writer =
        Writer::open(ctx.dest.as_ref(), &table.schema, &t.destination, ctx.batch_rows).await?;
    let key = source_key(table);
    let sql = select_sql(table, t.config.filter.as_deref(), None, &key, None);
    let mut q = query(table, &writer, sql.clone(), Vec::new(), &key);
    q.fingerprint_only = true;
    let (_rx, handle) = read::spawn(ctx.source.clone(), q);
    let scanned = joined(handle).await?;
    let fingerprint = format!("{FINGERPRINT}{}", scanned.fingerprint);
    if position == Some(fingerprint.as_str()) {
        tracing::info!(table = %t.source, rows = scanned.rows, "unchanged since the last pass");
        return Ok((Vec::new(), Some(fingerprint)));
    }
    let dest = crate::pg::connect(info).await?;
    let q = query(table, &writer, sql, Vec::new(), &key);
    let kinds = q.kinds.clone();
    let key_pos = q.key.clone();
    let mut merge = Merge::new(&kinds, &key_pos, t);
    let mut src = {
        let (rx, handle) = read::spawn(ctx.source.clone(), q);
        (SourceRows { rx, buf: VecDeque::new() }, handle)
    };
    let dest_sql = dest_select(writer.map(), &t.destination, &kinds);
    dest.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(Error::pg("reading the destination"))?;
    let mut dst = DestRows {
        cursor: RowCursor::declare(&dest, "cdc_sqlite_diff", &dest_sql).await?,
        buf: VecDeque::new(),
    };
    let mut deletes = Vec::new();
    let budget = t.config.max_rows.unwrap_or(u64::MAX);
    let mut written = 0u64;
    let mut s = next_source(ctx, t, &mut src.0, summary).await?;
    let mut d = dst.next(&dest).await?;
    loop {
        if written >= budget {
            break;
        }
        let step = match (&s, &d) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => merge.compare(a, b)?,
        };
        match step {
            std::cmp::Ordering::Less => {
                summary.inserted += 1;
                written += 1;
                writer.upsert(s.take().expect("source row")).await?;
                s = next_source(ctx, t, &mut src.0, summary).await?;
            }
            std::cmp::Ordering::Greater => {
                let row = d.take().expect("destination row");
                deletes.push(
                    key_pos
                        .iter()
                        .map(|&k| (writer.map().columns[k].name.clone(), row[k].clone()))
                        .collect(),
                );
                d = dst.next(&dest).await?;
            }
            std::cmp::Ordering::Equal => {
                let (a, b) = (s.take().expect("source row"), d.take().expect("row"));
                if !merge.same_row(&a, &b) {
                    summary.updated += 1;
                    written += 1;
                    writer.upsert(a).await?;
                }
                s = next_source(ctx, t, &mut src.0, summary).await?;
                d = dst.next(&dest).await?;
            }
        }
    }
    drop(src.0);
    let _ = dest.batch_execute("COMMIT").await;
    writer.finish().await?;
    joined(src.1).await?;
    summary.rows_read = summary.inserted + summary.updated;
    if summary.rejected > 0 || written >= budget {
        if !deletes.is_empty() {
            tracing::warn!(table = %t.source, extra = deletes.len(),
                "rows were rejected or the pass was capped: extra destination rows are not deleted this pass");
        }
        return Ok((Vec::new(), None));
    }
    Ok((deletes, Some(fingerprint)))
}

async fn next_source(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    rows: &mut SourceRows,
    summary: &mut TableSummary,
) -> Result<Option<Vec<Datum>>> {
    loop {
        match rows.next().await {
            None => return Ok(None),
            Some(Item::Row(r)) => return Ok(Some(r)),
            Some(Item::Reject(r)) => reject(ctx, t, r, summary)?,
        }
    }
}

/// The destination's rows of a table in the order SQLite sorts the same keys.
fn dest_select(map: &crate::apply::TableMap, table: &TableName, kinds: &[Kind]) -> String {
    let cols: Vec<String> = map.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let order: Vec<String> = map
        .key
        .iter()
        .map(|&k| {
            let col = quote_ident(&map.columns[k].name);
            match kinds[k] {
                Kind::Text { .. } => format!("{col} COLLATE \"C\""),
                _ => col,
            }
        })
        .collect();
    format!(
        "SELECT {} FROM {} ORDER BY {}",
        cols.join(", "),
        table.quoted(),
        order.join(", ")
    )
}

struct DestRows {
    cursor: RowCursor,
    buf: VecDeque<Vec<Datum>>,
}

impl DestRows {
    async fn next(&mut self, client: &Client) -> Result<Option<Vec<Datum>>> {
        if self.buf.is_empty() {
            self.buf = self.cursor.next(client).await?.into();
        }
        Ok(self.buf.pop_front())
    }
}

/// Key order and row comparison of a merge, checking that both sides come in key order.
struct Merge<'a> {
    kinds: &'a [Kind],
    key: &'a [usize],
    table: String,
}

impl<'a> Merge<'a> {
    fn new(kinds: &'a [Kind], key: &'a [usize], t: &Chosen<'_>) -> Merge<'a> {
        Merge {
            kinds,
            key,
            table: t.source.to_string(),
        }
    }

    fn compare(&mut self, a: &[Datum], b: &[Datum]) -> Result<std::cmp::Ordering> {
        for &k in self.key {
            let (Some(x), Some(y)) = (crate::apply::text(&a[k]), crate::apply::text(&b[k])) else {
                return Err(Error::Definite(format!(
                    "{}: a NULL in a key column; SQLite allows it outside INTEGER PRIMARY KEY, a destination key does not",
                    self.table
                )));
            };
            let o = key_order(self.kinds[k], x, y);
            if o.is_ne() {
                return Ok(o);
            }
        }
        Ok(std::cmp::Ordering::Equal)
    }

    fn same_row(&self, a: &[Datum], b: &[Datum]) -> bool {
        a.iter().zip(b).zip(self.kinds).all(|((x, y), kind)| {
            match (crate::apply::text(x), crate::apply::text(y)) {
                (None, None) => true,
                (Some(x), Some(y)) => same(*kind, x, y),
                _ => false,
            }
        })
    }
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
            columns: fk.columns.iter().map(|c| dest_column(&t.source, c)).collect(),
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
