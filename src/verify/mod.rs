//! `cdc verify`: prove that destination tables equal their sources, or list every row that
//! differs — missing from the destination, changed, or extra — matched by primary key.
//!
//! ```text
//!  catalogs ──► plan (key, shared columns, per-side SQL) ──► bisect (range hashes, rows of
//!  differing leaves only) ──► recheck (differences that persist) ──► report (human/json/csv)
//! ```
//!
//! **Values compare by their canonical text** (`col::text`, both sessions set to the same
//! DateStyle, IntervalStyle, TimeZone and float precision, see [`crate::pg::connect`]): a
//! float, jsonb or timestamptz that round-tripped is equal; a type changed between the sides
//! is equal when its values print the same.
//!
//! **While a pipeline runs** the destination trails the source by the replication lag, so a
//! row seen at different moments on each side may differ only in passing. Differences found
//! by the first pass are therefore fetched again after `recheck_after` (up to
//! `recheck_rounds` times) and only those that persist are reported. A row that changes on
//! every look (a hot row under constant writes) can still be reported; re-run to confirm.

mod bisect;
pub mod merge;
mod plan;
pub mod report;
mod shape;
mod sqlite;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

pub use bisect::{Difference, Stats};
pub use plan::{Key, RowText};
pub use report::{Report, TableReport};

use crate::config::Config;

use crate::conninfo::ConnInfo;
use crate::destination::registry::Side;
use crate::destination::whole::{CompareSpec, DestTable, Texts, WholeLook};
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use plan::TableInfo;
use shape::{check_no_null_keys, Shape};

/// One table pair to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePair {
    pub source: TableName,
    pub destination: TableName,
    /// Only source rows meeting this condition are expected in the destination (the
    /// `where` filter of the pipeline's snapshot).
    pub source_filter: Option<String>,
}

/// How to compare.
#[derive(Debug, Clone)]
pub struct Options {
    /// Match rows by these columns instead of the primary key.
    pub key: Vec<String>,
    /// Ranges with at most this many rows per side are fetched and compared row by row.
    pub leaf_rows: i64,
    /// At most how many parts a differing range is cut into (at most 32 for composite keys,
    /// whose bucket test is a chain of comparisons rather than a binary search).
    pub fanout: i64,
    /// Stop looking in a table after this many differences (the report says so).
    pub max_differences: usize,
    /// Wait this long before looking at differing rows again (zero: report the first look).
    pub recheck_after: Duration,
    /// At most this many second looks.
    pub recheck_rounds: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            key: Vec::new(),
            leaf_rows: 256,
            fanout: 256,
            max_differences: 100_000,
            recheck_after: Duration::ZERO,
            recheck_rounds: 3,
        }
    }
}

/// What `verify` tells its caller as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A table's comparison starts.
    TableStarted { pair: &'a TablePair },
    /// A look at a table ended with `differences` differing rows; `recheck_in` is set when
    /// they will be looked at again.
    PassDone {
        pair: &'a TablePair,
        round: u32,
        differences: usize,
        recheck_in: Option<Duration>,
    },
}

/// The configured table pairs, or those named in `only` (by source or destination name).
pub fn pairs_from_config(config: &Config, only: &[String]) -> Result<Vec<TablePair>> {
    let all: Vec<TablePair> = config
        .table_pairs()
        .into_iter()
        .zip(&config.tables)
        .map(|((source, destination), t)| TablePair {
            source,
            destination,
            source_filter: t.filter.clone(),
        })
        .collect();
    if only.is_empty() {
        return Ok(all);
    }
    let mut chosen = Vec::new();
    for name in only {
        let wanted = TableName::parse(name).map_err(|e| Error::definite(format!("--table {e}")))?;
        let pair = all
            .iter()
            .find(|p| p.source == wanted || p.destination == wanted)
            .ok_or_else(|| {
                let names: Vec<String> = all.iter().map(|p| p.source.to_string()).collect();
                Error::definite(format!(
                    "--table {name} is not a configured table; configured: {}",
                    names.join(", ")
                ))
            })?;
        chosen.push(pair.clone());
    }
    Ok(chosen)
}

/// Pairs from `--table SOURCE[=DESTINATION]` arguments (same name on both sides by default).
pub fn pairs_from_args(tables: &[String]) -> Result<Vec<TablePair>> {
    tables
        .iter()
        .map(|arg| {
            let (src, dst) = split_pair(arg);
            let parse = |s: &str| {
                TableName::parse(s).map_err(|e| Error::definite(format!("--table {arg}: {e}")))
            };
            let source = parse(src)?;
            let destination = match dst {
                Some(d) => parse(d)?,
                None => source.clone(),
            };
            Ok(TablePair {
                source,
                destination,
                source_filter: None,
            })
        })
        .collect()
}

/// Split `a=b` at the first `=` outside double quotes.
fn split_pair(arg: &str) -> (&str, Option<&str>) {
    let mut quoted = false;
    for (i, ch) in arg.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '=' if !quoted => return (&arg[..i], Some(&arg[i + 1..])),
            _ => {}
        }
    }
    (arg, None)
}

/// Compare every pair between two Postgres databases; `observe` hears about progress.
pub async fn verify(
    source: &ConnInfo,
    destination: &ConnInfo,
    pairs: &[TablePair],
    options: &Options,
    observe: &(dyn Fn(&Event<'_>) + Send + Sync),
) -> Result<Report> {
    let destination = Side::Postgres(destination.clone());
    verify_into(source, &destination, pairs, options, observe).await
}

/// The destination side of a comparison.
enum Dest<'a> {
    Postgres(Client),
    /// A destination compared by one look at whole tables inside it (DuckDB, ClickHouse).
    Whole(&'a dyn WholeLook),
}

/// `cdc verify` of configured tables (`only`: some of them, else all), by what the source
/// can do: a Postgres source's key ranges hashed on both sides ([`verify_into`]), a SQLite
/// file's rows walked beside the destination's in key order (`merge`). The same report
/// either way; the pairs it compared.
pub async fn configured(
    config: &Config,
    only: &[String],
    options: &Options,
    observe: &(dyn Fn(&Event<'_>) + Send + Sync),
) -> Result<(Report, Vec<TablePair>)> {
    let pairs = pairs_from_config(config, only)?;
    let report = match config.sqlite_source()? {
        Some(path) => sqlite::verify(config, &path, &pairs, options.max_differences).await?,
        None => {
            let source = config.source_conninfo()?;
            let settings = crate::destination::Settings::of(config)?;
            let destination = crate::destination::registry::compare_side(&settings)?;
            verify_into(&source, &destination, &pairs, options, observe).await?
        }
    };
    Ok((report, pairs))
}

/// Compare every pair between a Postgres source and any destination.
pub async fn verify_into(
    source: &ConnInfo,
    destination: &Side,
    pairs: &[TablePair],
    options: &Options,
    observe: &(dyn Fn(&Event<'_>) + Send + Sync),
) -> Result<Report> {
    if pairs.is_empty() {
        return Err(Error::definite(
            "no tables to verify: configure [[tables]] or pass --table".into(),
        ));
    }
    if !options.key.is_empty() && pairs.len() > 1 {
        return Err(Error::definite(
            "--key applies to one table: pass exactly one --table with it".into(),
        ));
    }
    let src = session(source).await?;
    let dst = match destination {
        Side::Postgres(info) => Dest::Postgres(session(info).await?),
        Side::Whole(look) => Dest::Whole(look.as_ref()),
    };
    let mut tables = Vec::with_capacity(pairs.len());
    for pair in pairs {
        observe(&Event::TableStarted { pair });
        tables.push(verify_table(&src, source, &dst, pair, options, observe).await?);
    }
    Ok(Report::new(tables))
}

/// A read-only session: verify never writes, even through a user-supplied filter.
async fn session(info: &ConnInfo) -> Result<Client> {
    let client = crate::pg::connect(info).await?;
    client
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .map_err(Error::pg("preparing the comparison session"))?;
    Ok(client)
}

/// Both tables of `pair` as the comparison plans them; an error names a missing one.
async fn read_tables(
    src: &Client,
    dst: &Dest<'_>,
    pair: &TablePair,
) -> Result<(TableInfo, TableInfo)> {
    let (si, di) = match dst {
        Dest::Postgres(dst) => tokio::try_join!(
            plan::read_table(src, &pair.source),
            plan::read_table(dst, &pair.destination)
        )?,
        Dest::Whole(reader) => (
            plan::read_table(src, &pair.source).await?,
            reader.table(&pair.destination).await?.map(whole_info),
        ),
    };
    let si =
        si.ok_or_else(|| Error::definite(format!("source table {} does not exist", pair.source)))?;
    let di = di.ok_or_else(|| {
        Error::definite(format!(
            "destination table {} does not exist (`cdc snapshot` creates it)",
            pair.destination
        ))
    })?;
    Ok((si, di))
}

async fn verify_table(
    src: &Client,
    source: &ConnInfo,
    dst: &Dest<'_>,
    pair: &TablePair,
    options: &Options,
    observe: &(dyn Fn(&Event<'_>) + Send + Sync),
) -> Result<TableReport> {
    let started = Instant::now();
    let (si, di) = read_tables(src, dst, pair).await?;
    let shape = Shape::of(
        pair,
        &si,
        &di,
        &options.key,
        matches!(dst, Dest::Postgres(_)),
    )?;
    let src_side = shape.side(&pair.source, &si, pair.source_filter.clone());
    check_no_null_keys(src, &src_side, &si, &pair.source, "source").await?;
    let mut stats = Stats::default();
    let dst_side = shape.side(&pair.destination, &di, None);
    // How this table is looked at, built once for the first look and the rechecks.
    let look = match dst {
        Dest::Postgres(dst) => {
            check_no_null_keys(dst, &dst_side, &di, &pair.destination, "destination").await?;
            Look::Ranges(bisect::Pair {
                src,
                dst,
                src_side: &src_side,
                dst_side: &dst_side,
                key_positions: shape.key_positions.clone(),
                label: pair.source.to_string(),
            })
        }
        Dest::Whole(reader) => Look::Whole(*reader),
    };
    let (counts, mut differences, truncated) = match &look {
        Look::Ranges(bisect_pair) => {
            let limits = bisect::Limits {
                leaf_rows: options.leaf_rows.max(1),
                // Buckets by value cost one GROUP BY however many; by quantiles each bucket
                // is a cut key to name and test.
                fanout: if src_side.integer_key() && dst_side.integer_key() {
                    options.fanout.max(2)
                } else if shape.key.len() == 1 {
                    options.fanout.clamp(2, 256)
                } else {
                    options.fanout.clamp(2, 32)
                },
                max_differences: options.max_differences.max(1),
            };
            let outcome = bisect::compare(bisect_pair, limits, &mut stats).await?;
            (
                (outcome.source_rows, outcome.destination_rows),
                outcome.differences,
                outcome.truncated,
            )
        }
        Look::Whole(reader) => {
            whole_compare(*reader, source, pair, &shape, &di, options, &mut stats).await?
        }
    };
    let rounds = recheck(
        &look,
        source,
        pair,
        &shape,
        &di,
        options,
        &mut stats,
        observe,
        &mut differences,
    )
    .await?;
    observe(&Event::PassDone {
        pair,
        round: rounds,
        differences: differences.len(),
        recheck_in: None,
    });
    Ok(TableReport::new(
        pair,
        report::Columns {
            key: shape.key,
            compared: shape.columns,
            only_in_source: shape.only_in_source,
            only_in_destination: shape.only_in_destination,
        },
        counts,
        differences,
        truncated,
        rounds,
        stats,
        started.elapsed(),
    ))
}

/// Look again, after `recheck_after`, at the rows that differed (a running pipeline may have
/// been applying them), up to `recheck_rounds` times; only what persists stays in
/// `differences`. Returns the rounds taken.
#[allow(clippy::too_many_arguments)]
async fn recheck(
    look: &Look<'_>,
    source: &ConnInfo,
    pair: &TablePair,
    shape: &Shape,
    di: &TableInfo,
    options: &Options,
    stats: &mut Stats,
    observe: &(dyn Fn(&Event<'_>) + Send + Sync),
    differences: &mut Vec<Difference>,
) -> Result<u32> {
    let mut rounds = 0;
    while !differences.is_empty()
        && rounds < options.recheck_rounds
        && !options.recheck_after.is_zero()
    {
        observe(&Event::PassDone {
            pair,
            round: rounds,
            differences: differences.len(),
            recheck_in: Some(options.recheck_after),
        });
        tokio::time::sleep(options.recheck_after).await;
        let order: HashMap<Key, usize> = differences
            .iter()
            .enumerate()
            .map(|(i, d)| (d.key().clone(), i))
            .collect();
        *differences = match look {
            Look::Ranges(bisect_pair) => {
                let keys: Vec<Key> = differences.iter().map(|d| d.key().clone()).collect();
                bisect::recompare_keys(bisect_pair, &keys, stats).await?
            }
            // A second whole look; only differences seen in both looks stand.
            Look::Whole(reader) => whole_compare(*reader, source, pair, shape, di, options, stats)
                .await?
                .1
                .into_iter()
                .filter(|d| order.contains_key(d.key()))
                .collect(),
        };
        differences.sort_by_key(|d| order.get(d.key()).copied().unwrap_or(usize::MAX));
        rounds += 1;
    }
    Ok(rounds)
}

/// How a table is compared: range hashes on two Postgres servers, or a whole look inside the
/// destination.
enum Look<'a> {
    Ranges(bisect::Pair<'a>),
    Whole(&'a dyn WholeLook),
}

/// A destination table described as the comparison plans it.
fn whole_info(t: DestTable) -> TableInfo {
    TableInfo {
        columns: t
            .columns
            .into_iter()
            .map(|(name, type_sql, not_null)| plan::Column {
                collatable: type_sql == "VARCHAR"
                    || type_sql.ends_with("String")
                    || type_sql.ends_with("String)"),
                name,
                type_sql,
                not_null,
            })
            .collect(),
        primary_key: t.primary_key,
    }
}

/// One look at a whole table inside the destination: ((source rows, destination rows),
/// differences, truncated).
#[allow(clippy::type_complexity)]
async fn whole_compare(
    reader: &dyn WholeLook,
    source: &ConnInfo,
    pair: &TablePair,
    shape: &Shape,
    di: &TableInfo,
    options: &Options,
    stats: &mut Stats,
) -> Result<((i64, i64), Vec<Difference>, bool)> {
    let types: Vec<String> = shape
        .columns
        .iter()
        .map(|c| {
            di.columns
                .iter()
                .find(|d| &d.name == c)
                .map(|d| d.type_sql.clone())
                .unwrap_or_else(|| "VARCHAR".into())
        })
        .collect();
    let spec = CompareSpec {
        source: &pair.source,
        source_filter: pair.source_filter.as_deref(),
        destination: &pair.destination,
        key: &shape.key,
        columns: &shape.columns,
        max_differences: options.max_differences.max(1),
    };
    let c = reader.compare(source, &spec, &types).await?;
    stats.queries += c.queries;
    stats.rows_fetched += c.source_rows as u64;
    let key_of = |row: &Texts| -> Key {
        shape
            .key_positions
            .iter()
            .map(|&i| row[i].clone().unwrap_or_default())
            .collect()
    };
    let mut differences: Vec<Difference> = Vec::new();
    differences.extend(c.missing.into_iter().map(|r| Difference::Missing {
        key: key_of(&r),
        source: r,
    }));
    differences.extend(c.changed.into_iter().map(|(s, d)| Difference::Changed {
        key: key_of(&s),
        source: s,
        destination: d,
    }));
    differences.extend(c.extra.into_iter().map(|r| Difference::Extra {
        key: key_of(&r),
        destination: r,
    }));
    Ok((
        (c.source_rows, c.destination_rows),
        differences,
        c.truncated,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_arguments_name_one_or_two_tables() {
        let pairs = pairs_from_args(&[
            "public.t".into(),
            "old.users=new.users".into(),
            "\"A=B\".x=public.y".into(),
        ])
        .unwrap();
        assert_eq!(pairs[0].source, pairs[0].destination);
        assert_eq!(pairs[1].source.schema, "old");
        assert_eq!(pairs[1].destination.schema, "new");
        assert_eq!(pairs[2].source.schema, "A=B");
        assert_eq!(pairs[2].destination.name, "y");
        assert!(
            pairs_from_args(&["t".into()]).is_err(),
            "not schema-qualified"
        );
    }
}
