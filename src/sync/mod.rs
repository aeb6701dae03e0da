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
mod order;
mod postgres;
mod read;
mod rejects;
mod repair;
mod repeat;
mod source;
pub mod sqlite;
mod summary;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::stream::{self, StreamExt};

pub use repair::{repair, repair_report, Repaired};
pub use repeat::{parse_duration, run};
pub use summary::{Summary, TableSummary};

use source::TableSource;

use crate::config::{Config, Strategy, TableConfig};

use crate::destination::{Destination, SyncState};
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use crate::model::schema::TableSchema;
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

/// One configured table chosen for this pass.
struct Chosen<'a> {
    source: TableName,
    destination: TableName,
    config: &'a TableConfig,
}

/// What every table's pass shares.
struct Ctx<'a> {
    config: &'a Config,
    options: &'a Options,
    /// The destination as `cdc verify` reaches it, for `diff`.
    settings: crate::destination::Settings,
    dest: Arc<dyn Destination>,
    states: HashMap<String, SyncState>,
    /// Source tables `cdc run` streams into this destination (slot present on the source).
    streamed: Vec<String>,
    batch_rows: usize,
    today: (usize, u32),
}

impl Ctx<'_> {
    /// Rows per destination transaction for `t`: its `batch_rows`, else the pass's.
    fn batch_rows(&self, t: &Chosen<'_>) -> usize {
        t.config.batch_rows.unwrap_or(self.batch_rows).max(1)
    }
}

/// Run one pass over the chosen tables. Errors of single tables are in the summary; an error
/// that stops every table (configuration, destination unreachable) is returned.
pub async fn pass(config: &Config, options: &Options) -> Result<Summary> {
    let chosen = choose(config, &options.tables)?;
    match config.sqlite_source()? {
        Some(path) => {
            let side = sqlite::SqliteSide::open(config, options, &path).await?;
            drive(config, options, &side, chosen).await
        }
        None => drive(config, options, &postgres::PgSide::new(config)?, chosen).await,
    }
}

/// A table's first phase done: what is left for the second.
struct Pending {
    /// Keys of rows to delete, children first.
    deletes: Vec<source::Key>,
    /// The state to save once they are gone; `None`: the table was skipped.
    state: Option<SyncState>,
    /// The table as the destination has it (what the deletes are written with).
    schema: TableSchema,
    started: Instant,
}

/// One pass through `side`: tables in waves of foreign-key order, up to `--jobs` of a wave
/// at once; then the deferred deletes, children first, and each table's state; then the
/// foreign keys the source carries over.
async fn drive<S: TableSource>(
    config: &Config,
    options: &Options,
    side: &S,
    chosen: Vec<Chosen<'_>>,
) -> Result<Summary> {
    let started = Instant::now();
    let settings = crate::destination::Settings::of(config)?;
    let dest = crate::destination::open(config).await?;
    let _held = dest.hold().await?;
    dest.ensure_state().await?;
    let states = dest
        .sync_states()
        .await?
        .into_iter()
        .map(|s| (s.destination_table.clone(), s))
        .collect();
    let streamed = side.streamed(dest.as_ref()).await?;
    let jobs = if dest.concurrent_sessions() {
        options.jobs.max(1)
    } else {
        1
    };
    let ctx = Ctx {
        config,
        options,
        settings,
        batch_rows: config
            .apply
            .batch_max_rows
            .unwrap_or(dest.default_batch_rows()),
        dest,
        states,
        streamed,
        today: today(SystemTime::now()),
    };
    let names: Vec<TableName> = chosen.iter().map(|c| c.source.clone()).collect();
    let waves = order::waves(&names, &side.parents(&names).await?);
    let mut summaries: Vec<TableSummary> = chosen
        .iter()
        .map(|t| TableSummary {
            source: t.source.to_string(),
            destination: t.destination.to_string(),
            ..TableSummary::default()
        })
        .collect();
    side.begin_pass().await?;
    let pending = first_phases(&ctx, side, &chosen, &waves, jobs, &mut summaries).await;
    side.end_pass().await?;
    second_phases(&ctx, &chosen, &waves, jobs, pending, &mut summaries).await;
    for (t, summary) in chosen.iter().zip(&mut summaries) {
        if summary.error.is_none() && summary.strategy != "skip" {
            if let Err(e) = side.create_foreign_keys(&ctx, t).await {
                fail(summary, t, e);
            }
        }
    }
    // Listed in the order the tables were synced.
    let order: Vec<usize> = waves.concat();
    let mut tables: Vec<Option<TableSummary>> = summaries.into_iter().map(Some).collect();
    let summaries = order.iter().filter_map(|&i| tables[i].take()).collect();
    Ok(Summary {
        tables: summaries,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every table's first phase, wave by wave, up to `jobs` at once.
async fn first_phases<S: TableSource>(
    ctx: &Ctx<'_>,
    side: &S,
    chosen: &[Chosen<'_>],
    waves: &[Vec<usize>],
    jobs: usize,
    summaries: &mut [TableSummary],
) -> Vec<Option<Pending>> {
    let mut pending: Vec<Option<Pending>> = (0..chosen.len()).map(|_| None).collect();
    for wave in waves {
        let done: Vec<(usize, TableSummary, Option<Pending>)> = stream::iter(wave.iter().copied())
            .map(|i| {
                let t = &chosen[i];
                let summary = std::mem::take(&mut summaries[i]);
                async move {
                    let (summary, p) = first_phase(ctx, side, t, summary).await;
                    (i, summary, p)
                }
            })
            .buffered(jobs)
            .collect()
            .await;
        for (i, summary, p) in done {
            summaries[i] = summary;
            pending[i] = p;
        }
    }
    pending
}

/// Every table's second phase, children before parents: a parent row goes only after the
/// rows that point at it.
async fn second_phases(
    ctx: &Ctx<'_>,
    chosen: &[Chosen<'_>],
    waves: &[Vec<usize>],
    jobs: usize,
    mut pending: Vec<Option<Pending>>,
    summaries: &mut [TableSummary],
) {
    for wave in waves.iter().rev() {
        let done: Vec<(usize, TableSummary)> = stream::iter(wave.iter().copied())
            .map(|i| {
                let p = pending[i].take();
                let summary = std::mem::take(&mut summaries[i]);
                let t = &chosen[i];
                async move {
                    let summary = match p {
                        Some(p) => second_phase(ctx, t, p, summary).await,
                        // Failed in the first phase: its summary says why.
                        None => summary,
                    };
                    (i, summary)
                }
            })
            .buffered(jobs)
            .collect()
            .await;
        for (i, summary) in done {
            summaries[i] = summary;
        }
    }
}

/// A table's first phase: its strategy run, the failure kept in its summary.
async fn first_phase<S: TableSource>(
    ctx: &Ctx<'_>,
    side: &S,
    t: &Chosen<'_>,
    mut summary: TableSummary,
) -> (TableSummary, Option<Pending>) {
    let started = Instant::now();
    let pending = match sync_table(ctx, side, t, &mut summary, started).await {
        Ok(p) => Some(p),
        Err(e) => {
            fail(&mut summary, t, e);
            None
        }
    };
    summary.seconds = started.elapsed().as_secs_f64();
    (summary, pending)
}

fn fail(summary: &mut TableSummary, t: &Chosen<'_>, e: Error) {
    tracing::error!(table = %t.source, error = %e, "sync of this table failed");
    summary.transient = e.is_transient();
    summary.error = Some(summary::chain(&e));
}

/// Read the table, choose its strategy and run it; what is left to delete and save.
async fn sync_table<S: TableSource>(
    ctx: &Ctx<'_>,
    side: &S,
    t: &Chosen<'_>,
    summary: &mut TableSummary,
    started: Instant,
) -> Result<Pending> {
    let table = side.open_table(t).await?;
    let (as_source, schema) = S::schemas(&table);
    let schema = schema.clone();
    let Strategies {
        base,
        this_pass: strategy,
    } = strategy_of(ctx.options.strategy, ctx.today, t, as_source)?;
    summary.strategy = strategy.to_string();
    if strategy == Strategy::Skip {
        side.close_table(table).await?;
        return Ok(Pending {
            deletes: Vec::new(),
            state: None,
            schema,
            started,
        });
    }
    if ctx.streamed.contains(&t.source.to_string()) {
        return Err(Error::definite(format!(
            "{} is streamed by `cdc run` (slot {} exists): syncing it too would race the stream. \
             Remove it from one of them, or run `cdc teardown --yes` to stop streaming",
            t.source, ctx.config.source.slot
        )));
    }
    side.check(t, &table, base).await?;
    if strategy != base {
        side.check(t, &table, strategy).await?;
    }
    let dest_name = t.destination.to_string();
    // A position is only meaningful to the strategy that stored it.
    let position = ctx
        .states
        .get(&dest_name)
        .filter(|s| s.strategy == base.name())
        .and_then(|s| s.position.clone());
    let position = position.as_deref();
    let outcome = if !ctx.dest.table_exists(&t.destination).await? || strategy == Strategy::Reload {
        summary.full_copy = true;
        side.full_copy(ctx, t, &table, base, summary).await?
    } else if strategy == Strategy::Diff {
        side.diff(ctx, t, &table, position, summary).await?
    } else {
        side.incremental(ctx, t, &table, strategy, position, summary)
            .await?
    };
    side.close_table(table).await?;
    Ok(Pending {
        deletes: outcome.deletes,
        state: Some(SyncState {
            destination_table: dest_name,
            source_table: t.source.to_string(),
            strategy: base.name().into(),
            position: outcome.position,
            last_pass: Some(SystemTime::now()),
            rows: outcome.rows as i64,
            seconds: 0.0,
        }),
        schema,
        started,
    })
}

/// A table's second phase: delete what the first found gone, then save its state.
async fn second_phase(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    p: Pending,
    mut summary: TableSummary,
) -> TableSummary {
    let Some(mut state) = p.state else {
        return summary; // skipped
    };
    let result = async {
        if !p.deletes.is_empty() {
            let mut writer =
                Writer::open(ctx.dest.as_ref(), &p.schema, &t.destination, ctx.batch_rows(t))
                    .await?;
            for key in p.deletes {
                writer.delete(key).await?;
                summary.deleted += 1;
            }
            writer.finish().await?;
        }
        state.seconds = p.started.elapsed().as_secs_f64();
        summary.position = state.position.clone();
        summary.capped = t.config.max_rows.filter(|&cap| summary.rows_read >= cap);
        ctx.dest.save_sync_state(&state).await?;
        tracing::info!(table = %t.source, strategy = %summary.strategy, rows = state.rows, "table synced");
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = result {
        fail(&mut summary, t, e);
    }
    summary.seconds = p.started.elapsed().as_secs_f64();
    summary
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
    // `cdc sync all`, as pgwarehouse says it: every configured table (table names are
    // schema-qualified, so no table is named `all`).
    if only.is_empty() || only == ["all"] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn days_are_utc_weekdays_and_days_of_month() {
        // 2026-11-29 was a Sunday; 2024-02-29 a Thursday.
        let at = |days: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + 3600);
        assert_eq!(today(at(20_786)), (6, 29));
        assert_eq!(today(at(19_782)), (3, 29));
        assert_eq!(today(at(0)), (3, 1));
    }

    fn config(tables: &[&str]) -> Config {
        let mut text = "[source]\nurl = \"postgresql://u@a/db\"\n[destination]\nurl = \"postgresql://u@b/db\"\n".to_owned();
        for t in tables {
            text.push_str(&format!("[[tables]]\nsource = \"{t}\"\n"));
        }
        Config::from_toml(&text, std::path::Path::new("t"), &[("", ""); 0]).unwrap()
    }

    #[test]
    fn all_chooses_every_configured_table() {
        let names = |c: &Config, only: &[&str]| {
            let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
            choose(c, &only)
                .map(|v| v.iter().map(|t| t.source.to_string()).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        };
        let c = config(&["public.a", "public.b"]);
        assert_eq!(names(&c, &["all"]).unwrap(), ["public.a", "public.b"]);
        assert_eq!(names(&c, &[]).unwrap(), ["public.a", "public.b"]);
        assert_eq!(names(&c, &["public.b"]).unwrap(), ["public.b"]);
        assert!(
            names(&c, &["all", "public.a"]).is_err(),
            "all is a word alone"
        );
        let c = config(&["public.a", "public.all"]);
        assert_eq!(names(&c, &["all"]).unwrap(), ["public.a", "public.all"]);
        assert_eq!(names(&c, &["public.all"]).unwrap(), ["public.all"]);
    }
}
