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

use super::write::Writer;
use super::{choose, strategy_of, Chosen, OnError, Options, Strategies, Summary, TableSummary};
use crate::config::{Config, Strategy};
use crate::decode::Datum;
use crate::destination::{Destination, RowSource, SnapshotTable, SyncState};
use crate::endpoint::Target;
use crate::error::{Error, Result};
use crate::model::schema::DestForeignKey;
use crate::model::schema::TableName;
use crate::model::sql::quote_ident;
use crate::source::sqlite::catalog::{self, SqliteTable};
use crate::source::sqlite::read::{self, Item, Query, Reject};
use crate::source::sqlite::types::{key_order, same, Kind};
use crate::source::sqlite::SqliteSource;
use crate::verify::report::{ColumnChange, DifferentRow, ExtraRow, Fields, MissingRow};
use crate::verify::{Report, TableReport};

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

/// Open the source and the destination, and read every configured table's shape (foreign
/// keys point at tables that may not be chosen). A pass (`writes`) also makes sure the state
/// tables exist and reads them; a comparison writes nothing.
async fn open<'a>(
    config: &Config,
    options: &'a Options,
    path: &Path,
    writes: bool,
) -> Result<(Ctx<'a>, BTreeMap<String, SqliteTable>)> {
    let source = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || SqliteSource::open(&path))
            .await
            .map_err(|e| Error::definite(format!("SQLite reader stopped: {e}")))??
    };
    let target = config.destination_target()?;
    let dest = crate::destination::open(config).await?;
    let states = if writes {
        dest.ensure_state().await?;
        dest.sync_states()
            .await?
            .into_iter()
            .map(|s| (s.destination_table.clone(), s))
            .collect()
    } else {
        HashMap::new()
    };
    let mut tables: BTreeMap<String, SqliteTable> = BTreeMap::new();
    for (t, cfg) in config.table_pairs().iter().zip(&config.tables) {
        if let Some(mut table) = catalog::read_table(&source.conn, &t.0)? {
            // A rename error is the table's own, reported when it is synced.
            if table.rename(&cfg.columns, &cfg.ignore_columns).is_ok() {
                tables.insert(t.0.to_string(), table);
            }
        }
    }
    let ctx = Ctx {
        wal: source.wal,
        source: Arc::new(Mutex::new(source)),
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
    Ok((ctx, tables))
}

/// One pass over the chosen tables of a SQLite source.
pub async fn pass(config: &Config, options: &Options, path: &Path) -> Result<Summary> {
    let started = Instant::now();
    let chosen = choose(config, &options.tables)?;
    let (ctx, tables) = open(config, options, path, true).await?;
    let _held = ctx.dest.hold().await?;
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
        tracing::info!(
            "foreign keys are not created on this destination (it does not enforce them)"
        );
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
    .map_err(|e| Error::definite(format!("SQLite reader stopped: {e}")))?
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
            .position(|c| {
                parents(&c.source.to_string())
                    .iter()
                    .all(|p| done.contains(p))
            })
            .unwrap_or(0);
        let c = rest.remove(ready);
        done.push(c.source.to_string());
        out.push(c);
    }
    out
}

async fn sync_table(ctx: &Ctx<'_>, t: &Chosen<'_>, summary: &mut TableSummary) -> Result<Pending> {
    let started = Instant::now();
    let (raw, table) = read_table(ctx, t).await?;
    let Strategies {
        base,
        this_pass: strategy,
    } = strategy_of(ctx.options.strategy, ctx.today, t, &raw.schema)?;
    summary.strategy = strategy.to_string();
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
        return Err(Error::definite(format!(
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
        let schema = read_table(ctx, t).await?.1.schema;
        let mut writer = Writer::open(
            ctx.dest.as_ref(),
            &schema,
            &t.destination,
            batch_rows(ctx, t),
        )
        .await?;
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

/// `t`'s SQLite table as read now: as SQLite names it, and with the entry's renames applied.
async fn read_table(ctx: &Ctx<'_>, t: &Chosen<'_>) -> Result<(SqliteTable, SqliteTable)> {
    let name = t.source.clone();
    let raw = with_source(ctx, move |s| catalog::read_table(&s.conn, &name))
        .await?
        .ok_or_else(|| {
            Error::definite(format!(
                "the SQLite file has no table {} (tables are named main.TABLE)",
                t.source
            ))
        })?;
    let mut renamed = raw.clone();
    renamed.rename(&t.config.columns, &t.config.ignore_columns)?;
    Ok((raw, renamed))
}

/// Rows per destination transaction for `t`: its `batch_rows`, else the pass's.
fn batch_rows(ctx: &Ctx<'_>, t: &Chosen<'_>) -> usize {
    t.config.batch_rows.unwrap_or(ctx.batch_rows).max(1)
}

/// `SELECT` of the table's columns (SQLite names) with the filter, a lower bound and an order.
fn select_sql(
    table: &SqliteTable,
    filter: Option<&str>,
    since: Option<(&str, &str)>,
    order: &[String],
    limit: Option<u64>,
) -> String {
    let cols: Vec<String> = table
        .source_columns
        .iter()
        .map(|c| quote_ident(c))
        .collect();
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
fn query(
    table: &SqliteTable,
    writer: &Writer,
    sql: String,
    params: Vec<Value>,
    order: &[String],
) -> Query {
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
        OnError::Fail => Err(Error::definite(format!(
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
        .map_err(|e| Error::definite(format!("SQLite reader stopped: {e}")))?
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
    let order = order_column(table, base, t.config.modified_column.as_deref());
    let sql = select_sql(
        table,
        t.config.filter.as_deref(),
        None,
        &order,
        t.config.max_rows,
    );
    // The destination's bulk path (Postgres: COPY); keys and indexes built after the rows.
    let mut loader = dest.loader().await?;
    let q = Query {
        sql: sql.clone(),
        params: Vec::new(),
        kinds: table.kinds.clone(),
        columns: table
            .schema
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect(),
        key: table
            .schema
            .primary_key
            .iter()
            .filter_map(|k| table.schema.columns.iter().position(|c| &c.name == k))
            .collect(),
        order: match order.as_slice() {
            [one] => table.source_columns.iter().position(|c| c == one),
            _ => None,
        },
        fingerprint_only: false,
    };
    let (rx, handle) = read::spawn(ctx.source.clone(), q);
    let mut feed = Feed {
        ctx,
        t,
        rx,
        summary: &mut *summary,
    };
    let loaded = loader.load_rows(&mut feed, &target).await;
    drop(feed);
    drop(loader);
    let done = joined(handle).await;
    if let Some(rows) = loaded? {
        let done = done?;
        dest.finish_table(None, &target, rows).await?;
        dest.replace_table(&staging, &t.destination).await?;
        return Ok((Vec::new(), full_copy_position(t, base, done, summary)));
    }
    // No bulk path: rows go through a session, which matches them by key: the key comes
    // first, the other indexes after the rows (cheaper built once than maintained row by row).
    let key_only = crate::model::schema::TableSchema {
        indexes: Vec::new(),
        ..table.schema.clone()
    };
    let indexes_only = crate::model::schema::TableSchema {
        primary_key: Vec::new(),
        ..table.schema.clone()
    };
    let with = |schema| SnapshotTable {
        schema,
        destination: &staging,
    };
    dest.finish_table(None, &with(&key_only), 0).await?;
    let mut writer =
        Writer::open(dest.as_ref(), &table.schema, &staging, batch_rows(ctx, t)).await?;
    let q = query(table, &writer, sql, Vec::new(), &order);
    let done = copy(ctx, t, q, &mut writer, false, summary).await?;
    writer.finish().await?;
    dest.finish_table(None, &with(&indexes_only), done.rows)
        .await?;
    dest.replace_table(&staging, &t.destination).await?;
    Ok((Vec::new(), full_copy_position(t, base, done, summary)))
}

/// The counts of a full copy, and the position its strategy goes on from.
fn full_copy_position(
    t: &Chosen<'_>,
    base: Strategy,
    done: read::Done,
    summary: &mut TableSummary,
) -> Option<String> {
    summary.rows_read = done.rows;
    summary.inserted = done.rows - summary.rejected;
    let capped = t.config.max_rows.is_some_and(|m| done.rows >= m);
    match base {
        Strategy::Diff if summary.rejected == 0 && !capped => {
            Some(format!("{FINGERPRINT}{}", done.fingerprint))
        }
        Strategy::NewRows | Strategy::Modified => done.last_order,
        _ => None,
    }
}

/// Converted rows handed to a destination's bulk loader; rejected ones go to `--on-error`.
struct Feed<'a, 'b> {
    ctx: &'a Ctx<'b>,
    t: &'a Chosen<'b>,
    rx: mpsc::Receiver<Vec<Item>>,
    summary: &'a mut TableSummary,
}

#[async_trait::async_trait]
impl RowSource for Feed<'_, '_> {
    async fn next_rows(&mut self) -> Result<Option<Vec<Vec<Datum>>>> {
        loop {
            let Some(items) = self.rx.recv().await else {
                return Ok(None);
            };
            let mut rows = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Item::Row(r) => rows.push(r),
                    Item::Reject(r) => reject(self.ctx, self.t, r, self.summary)?,
                }
            }
            if !rows.is_empty() {
                return Ok(Some(rows));
            }
        }
    }
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
    let sql = select_sql(
        table,
        t.config.filter.as_deref(),
        since,
        &order,
        t.config.max_rows,
    );
    let mut writer = Writer::open(
        ctx.dest.as_ref(),
        &table.schema,
        &t.destination,
        batch_rows(ctx, t),
    )
    .await?;
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
    let mut writer = Writer::open(
        ctx.dest.as_ref(),
        &table.schema,
        &t.destination,
        batch_rows(ctx, t),
    )
    .await?;
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
    let mut merge = Merge::open(ctx, t, table, &writer, sql, &key).await?;
    let mut deletes = Vec::new();
    let budget = t.config.max_rows.unwrap_or(u64::MAX);
    let mut written = 0u64;
    while written < budget {
        match merge.next(ctx, t, summary).await? {
            None => break,
            Some(Found::Missing(row)) => {
                summary.inserted += 1;
                written += 1;
                writer.upsert(row).await?;
            }
            Some(Found::Different(row, _)) => {
                summary.updated += 1;
                written += 1;
                writer.upsert(row).await?;
            }
            Some(Found::Extra(row)) => deletes.push(
                merge
                    .key
                    .iter()
                    .map(|&k| (writer.map().columns[k].name.clone(), row[k].clone()))
                    .collect(),
            ),
        }
    }
    merge.close().await?;
    writer.finish().await?;
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

/// A difference between the two sides.
enum Found {
    Missing(Vec<Datum>),
    /// Source row, destination row.
    Different(Vec<Datum>, Vec<Datum>),
    Extra(Vec<Datum>),
}

/// Both sides of a table read in key order and walked together.
struct Merge {
    kinds: Vec<Kind>,
    key: Vec<usize>,
    table: String,
    src: SourceRows,
    reader: tokio::task::JoinHandle<Result<read::Done>>,
    dst: DestRows,
    s: Option<Vec<Datum>>,
    d: Option<Vec<Datum>>,
    /// The last key of each side, to check that both come in the same order.
    last: [Option<Vec<Datum>>; 2],
    /// Rows seen on each side.
    seen: [i64; 2],
    started: bool,
}

impl Merge {
    async fn open(
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        table: &SqliteTable,
        writer: &Writer,
        sql: String,
        key: &[String],
    ) -> Result<Merge> {
        let q = query(table, writer, sql, Vec::new(), key);
        let kinds = q.kinds.clone();
        let key_pos = q.key.clone();
        let text_key: Vec<bool> = key_pos
            .iter()
            .map(|&k| matches!(kinds[k], Kind::Text { .. }))
            .collect();
        let rows = ctx.dest.rows_by_key(writer.map(), &text_key).await?;
        let (rx, reader) = read::spawn(ctx.source.clone(), q);
        Ok(Merge {
            kinds,
            key: key_pos,
            table: t.source.to_string(),
            src: SourceRows {
                rx,
                buf: VecDeque::new(),
            },
            reader,
            dst: DestRows {
                rows,
                buf: VecDeque::new(),
            },
            s: None,
            d: None,
            last: [None, None],
            seen: [0, 0],
            started: false,
        })
    }

    /// The next difference, `None` when both sides are done.
    async fn next(
        &mut self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        summary: &mut TableSummary,
    ) -> Result<Option<Found>> {
        if !self.started {
            self.started = true;
            self.advance_source(ctx, t, summary).await?;
            self.advance_dest().await?;
        }
        loop {
            let step = match (&self.s, &self.d) {
                (None, None) => return Ok(None),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => self.compare(a, b)?,
            };
            match step {
                std::cmp::Ordering::Less => {
                    let row = self.s.take().expect("source row");
                    self.advance_source(ctx, t, summary).await?;
                    return Ok(Some(Found::Missing(row)));
                }
                std::cmp::Ordering::Greater => {
                    let row = self.d.take().expect("destination row");
                    self.advance_dest().await?;
                    return Ok(Some(Found::Extra(row)));
                }
                std::cmp::Ordering::Equal => {
                    let a = self.s.take().expect("source row");
                    let b = self.d.take().expect("destination row");
                    self.advance_source(ctx, t, summary).await?;
                    self.advance_dest().await?;
                    if !self.same_row(&a, &b) {
                        return Ok(Some(Found::Different(a, b)));
                    }
                }
            }
        }
    }

    async fn advance_source(
        &mut self,
        ctx: &Ctx<'_>,
        t: &Chosen<'_>,
        summary: &mut TableSummary,
    ) -> Result<()> {
        self.s = next_source(ctx, t, &mut self.src, summary).await?;
        self.check_order(0)
    }

    async fn advance_dest(&mut self) -> Result<()> {
        self.d = self.dst.next().await?;
        self.check_order(1)
    }

    /// Keys must rise on each side, or the walk would report rows that are there.
    fn check_order(&mut self, side: usize) -> Result<()> {
        let row = if side == 0 { &self.s } else { &self.d };
        let Some(row) = row else { return Ok(()) };
        self.seen[side] += 1;
        let key: Vec<Datum> = self.key.iter().map(|&k| row[k].clone()).collect();
        if let Some(prev) = &self.last[side] {
            let prev_row = self.with_key(prev);
            let this_row = self.with_key(&key);
            if self.compare(&prev_row, &this_row)? != std::cmp::Ordering::Less {
                return Err(Error::definite(format!(
                    "{}: the {} does not sort its keys the way they compare here (a key column \
                     holding mixed types or spellings, e.g. upper- and lower-case UUIDs); \
                     use strategy \"reload\" for this table",
                    self.table,
                    ["SQLite file", "destination"][side]
                )));
            }
        }
        self.last[side] = Some(key);
        Ok(())
    }

    /// A row holding only `key` in the key positions.
    fn with_key(&self, key: &[Datum]) -> Vec<Datum> {
        let mut row = vec![Datum::Null; self.kinds.len()];
        for (&k, v) in self.key.iter().zip(key) {
            row[k] = v.clone();
        }
        row
    }

    fn compare(&self, a: &[Datum], b: &[Datum]) -> Result<std::cmp::Ordering> {
        for &k in &self.key {
            let (Some(x), Some(y)) = (
                crate::model::change::text(&a[k]),
                crate::model::change::text(&b[k]),
            ) else {
                return Err(Error::definite(format!(
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
        a.iter()
            .zip(b)
            .zip(&self.kinds)
            .all(|((x, y), kind)| same_value(*kind, x, y))
    }

    fn source_rows(&self) -> i64 {
        self.seen[0]
    }

    fn destination_rows(&self) -> i64 {
        self.seen[1]
    }

    /// End both reads (the SQLite thread's errors surface here).
    async fn close(self) -> Result<()> {
        drop(self.src);
        drop(self.dst);
        joined(self.reader).await.map(|_| ())
    }
}

fn same_value(kind: Kind, x: &Datum, y: &Datum) -> bool {
    match (crate::model::change::text(x), crate::model::change::text(y)) {
        (None, None) => true,
        (Some(x), Some(y)) => same(kind, x, y),
        _ => false,
    }
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

struct DestRows {
    rows: Box<dyn RowSource>,
    buf: VecDeque<Vec<Datum>>,
}

impl DestRows {
    async fn next(&mut self) -> Result<Option<Vec<Datum>>> {
        if self.buf.is_empty() {
            if let Some(block) = self.rows.next_rows().await? {
                self.buf = block.into();
            }
        }
        Ok(self.buf.pop_front())
    }
}

/// `cdc verify` from a SQLite source: each chosen table's rows compared by meaning with the
/// destination's, by key (at most `max_differences` listed per table).
pub async fn verify(
    config: &Config,
    path: &Path,
    only: &[String],
    max_differences: usize,
) -> Result<Report> {
    let options = Options::default();
    let chosen = choose(config, only)?;
    let (ctx, _) = open(config, &options, path, false).await?;
    let mut tables = Vec::new();
    with_source(&ctx, |s| s.begin()).await?;
    for t in &chosen {
        let started = Instant::now();
        let (_, table) = read_table(&ctx, t).await?;
        if table.schema.primary_key.is_empty() {
            return Err(Error::definite(format!(
                "{} has no primary key: cdc verify compares rows by key",
                t.source
            )));
        }
        let writer = Writer::open(
            ctx.dest.as_ref(),
            &table.schema,
            &t.destination,
            batch_rows(&ctx, t),
        )
        .await?;
        let key = source_key(&table);
        let sql = select_sql(&table, t.config.filter.as_deref(), None, &key, None);
        let mut merge = Merge::open(&ctx, t, &table, &writer, sql, &key).await?;
        let names: Vec<String> = writer
            .map()
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let fields = |row: &[Datum], only: Option<&[usize]>| {
            Fields(
                names
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| only.is_none_or(|o| o.contains(i)))
                    .map(|(i, n)| {
                        (
                            n.clone(),
                            crate::model::change::text(&row[i]).map(str::to_owned),
                        )
                    })
                    .collect(),
            )
        };
        let key_pos = merge.key.clone();
        let mut summary = TableSummary::default();
        let (mut missing, mut different, mut extra) = (Vec::new(), Vec::new(), Vec::new());
        let mut truncated = false;
        while let Some(found) = merge.next(&ctx, t, &mut summary).await? {
            if missing.len() + different.len() + extra.len() >= max_differences {
                truncated = true;
                break;
            }
            match found {
                Found::Missing(row) => missing.push(MissingRow {
                    key: fields(&row, Some(&key_pos)),
                    source: fields(&row, None),
                }),
                Found::Extra(row) => extra.push(ExtraRow {
                    key: fields(&row, Some(&key_pos)),
                    destination: fields(&row, None),
                }),
                Found::Different(a, b) => different.push(DifferentRow {
                    key: fields(&a, Some(&key_pos)),
                    columns: (0..names.len())
                        .filter(|&i| !same_value(merge.kinds[i], &a[i], &b[i]))
                        .map(|i| ColumnChange {
                            column: names[i].clone(),
                            source: crate::model::change::text(&a[i]).map(str::to_owned),
                            destination: crate::model::change::text(&b[i]).map(str::to_owned),
                        })
                        .collect(),
                }),
            }
        }
        let source_rows = merge.source_rows();
        let destination_rows = merge.destination_rows();
        merge.close().await?;
        let equal = missing.is_empty() && different.is_empty() && extra.is_empty();
        tables.push(TableReport {
            source: t.source.to_string(),
            destination: t.destination.to_string(),
            equal,
            key: key_pos.iter().map(|&k| names[k].clone()).collect(),
            columns: names.clone(),
            columns_only_in_source: Vec::new(),
            columns_only_in_destination: Vec::new(),
            source_rows,
            destination_rows,
            missing,
            different,
            extra,
            truncated,
            rechecks: 0,
            stats: Default::default(),
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
    }
    with_source(&ctx, |s| s.end()).await?;
    Ok(Report {
        equal: tables.iter().all(|t| t.equal),
        tables,
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

/// `cdc extract` from a SQLite file: the whole table as CSV (values as the destination would
/// get them: the declared types' conversions) and its schema file, written last.
pub async fn extract(
    config: &Config,
    path: &Path,
    table_name: &str,
    dir: &Path,
    delta: bool,
) -> Result<super::files::Extracted> {
    use super::files::{file_error, paths, SchemaColumn, SchemaFile};
    if delta {
        return Err(Error::definite(
            "--delta reads a Postgres source's positions; from a SQLite file extract the whole table".into(),
        ));
    }
    let chosen = choose(config, &[table_name.to_owned()])?;
    let t = &chosen[0];
    // Only the file is needed: an extract carries data to a destination out of reach.
    let (source, mut table) = {
        let (path, name) = (path.to_owned(), t.source.clone());
        tokio::task::spawn_blocking(move || {
            let source = SqliteSource::open(&path)?;
            let table = catalog::read_table(&source.conn, &name)?;
            Ok::<_, Error>((source, table))
        })
        .await
        .map_err(|e| Error::definite(format!("SQLite reader stopped: {e}")))??
    };
    let mut table = table
        .take()
        .ok_or_else(|| Error::definite(format!("the SQLite file has no table {}", t.source)))?;
    table.rename(&t.config.columns, &t.config.ignore_columns)?;
    let source = Arc::new(Mutex::new(source));
    std::fs::create_dir_all(dir).map_err(file_error(dir))?;
    let (data, schema_path) = paths(dir, &t.destination);
    let _ = std::fs::remove_file(&schema_path);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&data).map_err(file_error(&data))?);
    let names: Vec<String> = table
        .schema
        .columns
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let quote = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
    let header: Vec<String> = names.iter().map(|n| quote(n)).collect();
    writeln!(out, "{}", header.join(",")).map_err(file_error(&data))?;
    let key = source_key(&table);
    let q = Query {
        sql: select_sql(&table, t.config.filter.as_deref(), None, &key, None),
        params: Vec::new(),
        kinds: table.kinds.clone(),
        columns: names.clone(),
        key: table
            .schema
            .primary_key
            .iter()
            .filter_map(|k| names.iter().position(|n| n == k))
            .collect(),
        order: None,
        fingerprint_only: false,
    };
    let (rx, handle) = read::spawn(source, q);
    let mut rows = SourceRows {
        rx,
        buf: VecDeque::new(),
    };
    let mut count = 0u64;
    while let Some(item) = rows.next().await {
        let row = match item {
            Item::Row(r) => r,
            Item::Reject(r) => {
                return Err(Error::definite(format!("{}: {r}", t.source)));
            }
        };
        let fields: Vec<String> = row
            .iter()
            .map(|d| crate::model::change::text(d).map(quote).unwrap_or_default())
            .collect();
        writeln!(out, "{}", fields.join(",")).map_err(file_error(&data))?;
        count += 1;
    }
    joined(handle).await?;
    out.flush().map_err(file_error(&data))?;
    drop(out);
    let file = SchemaFile {
        source: t.source.to_string(),
        columns: table
            .schema
            .columns
            .iter()
            .map(|c| SchemaColumn {
                name: c.name.clone(),
                type_sql: c.type_sql.clone(),
                type_oid: c.type_oid,
                not_null: c.not_null,
                dims: 0,
            })
            .collect(),
        primary_key: table.schema.primary_key.clone(),
        rows: count,
        extracted: "table".into(),
        format: "CSV, header row; every value quoted; an unquoted empty field is NULL".into(),
    };
    let json = serde_json::to_string_pretty(&file).expect("schema file serializes");
    std::fs::write(&schema_path, json).map_err(file_error(&schema_path))?;
    Ok(super::files::Extracted {
        data,
        schema: schema_path,
        rows: count,
    })
}
