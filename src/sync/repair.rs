//! Make a destination table equal to its source after a comparison: delete the extra rows,
//! and upsert the missing and different ones with their values read from the source now, by
//! key (not the values the comparison printed: a DuckDB comparison prints DuckDB's text, and
//! the source may have moved on since). `diff` passes and `cdc verify --repair` both use it.

use tokio_postgres::Client;

use super::source::Key;
use super::write::Writer;
use crate::config::Config;
use crate::decode::Datum;
use crate::destination::Destination;
use crate::error::{Error, Result};
use crate::model::schema::TableSchema;
use crate::model::sql::quote_ident;
use crate::verify::report::{Fields, TableReport};
use crate::verify::Report;
use crate::verify::TablePair;

/// Keys looked up on the source per query.
const KEYS_PER_QUERY: usize = 5_000;

/// What a repair changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Repaired {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

impl Repaired {
    pub fn add(&mut self, other: &Repaired) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.deleted += other.deleted;
    }
}

/// Repair the differences of `report` (one table's comparison) on the destination, in
/// transactions of `batch_rows` rows. `src` is a plain source session.
pub async fn repair(
    dest: &dyn Destination,
    src: &Client,
    schema: &TableSchema,
    pair: &TablePair,
    report: &TableReport,
    batch_rows: usize,
) -> Result<Repaired> {
    Ok(
        repair_deferring(dest, src, schema, pair, report, batch_rows, false)
            .await?
            .0,
    )
}

/// [`repair`], the extra rows' deletes left to the caller when `defer_deletes` (their keys
/// returned; `deleted` counts only the rows deleted here).
pub(super) async fn repair_deferring(
    dest: &dyn Destination,
    src: &Client,
    schema: &TableSchema,
    pair: &TablePair,
    report: &TableReport,
    batch_rows: usize,
    defer_deletes: bool,
) -> Result<(Repaired, Vec<Key>)> {
    let mut writer = Writer::open(dest, schema, &pair.destination, batch_rows).await?;
    let mut done = Repaired::default();
    let mut deferred = Vec::new();
    for extra in &report.extra {
        let key: Key = extra
            .key
            .0
            .iter()
            .map(|(k, v)| (k.clone(), datum(v.as_deref())))
            .collect();
        if defer_deletes {
            deferred.push(key);
            continue;
        }
        writer.delete(key).await?;
        done.deleted += 1;
    }
    let missing: Vec<&Fields> = report.missing.iter().map(|m| &m.key).collect();
    let different: Vec<&Fields> = report.different.iter().map(|d| &d.key).collect();
    for (keys, count) in [
        (missing, &mut done.inserted),
        (different, &mut done.updated),
    ] {
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            for row in rows_by_key(src, schema, pair, &report.key, chunk).await? {
                writer.upsert(row).await?;
                *count += 1;
            }
        }
    }
    writer.finish().await?;
    tracing::info!(table = %pair.destination, inserted = done.inserted, updated = done.updated,
        deleted = done.deleted, deletes_deferred = deferred.len(), "repaired");
    Ok((done, deferred))
}

fn datum(v: Option<&str>) -> Datum {
    match v {
        Some(v) => Datum::Text(bytes::Bytes::copy_from_slice(v.as_bytes())),
        None => Datum::Null,
    }
}

/// The source rows (copied columns, as text) with these keys that the pair's filter keeps.
async fn rows_by_key(
    src: &Client,
    schema: &TableSchema,
    pair: &TablePair,
    key: &[String],
    keys: &[&Fields],
) -> Result<Vec<Vec<Datum>>> {
    crate::source::postgres::rows::text_rows(src, &by_key_sql(schema, pair, key, keys)?).await
}

/// `SELECT` of the rows with the given keys: one text array per key column, unnested and cast.
fn by_key_sql(
    schema: &TableSchema,
    pair: &TablePair,
    key: &[String],
    keys: &[&Fields],
) -> Result<String> {
    let list: Vec<String> = schema
        .copied_columns()
        .map(|c| quote_ident(&c.name))
        .collect();
    let mut arrays = Vec::new();
    let mut casts = Vec::new();
    for (i, k) in key.iter().enumerate() {
        let ty = schema
            .columns
            .iter()
            .find(|c| &c.name == k)
            .map(|c| c.type_sql.as_str())
            .ok_or_else(|| {
                Error::definite(format!("key column {k} is not a column of {}", schema.name))
            })?;
        let values: Vec<&str> = keys
            .iter()
            .map(|fields| {
                fields
                    .0
                    .iter()
                    .find(|(n, _)| n == k)
                    .and_then(|(_, v)| v.as_deref())
                    .unwrap_or_default()
            })
            .collect();
        arrays.push(crate::source::postgres::rows::text_array_literal(&values));
        casts.push(format!("u.c{i}::{ty}"));
    }
    let names: Vec<String> = (0..key.len()).map(|i| format!("c{i}")).collect();
    let cols: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    let mut sql = format!(
        "SELECT {} FROM {} WHERE ({}) IN (SELECT {} FROM unnest({}) AS u({}))",
        list.join(", "),
        schema.name.quoted(),
        cols.join(", "),
        casts.join(", "),
        arrays.join(", "),
        names.join(", ")
    );
    if let Some(f) = &pair.source_filter {
        sql.push_str(&format!(" AND ({f})"));
    }
    Ok(sql)
}

/// `cdc verify --repair`: repair every table of `report` that differs; what each repair did.
pub async fn repair_report(
    config: &Config,
    pairs: &[crate::verify::TablePair],
    report: &Report,
) -> Result<Vec<(String, Repaired)>> {
    if config.sqlite_source()?.is_some() {
        return repair_by_diff(config, report).await;
    }
    let src_info = config.source_conninfo()?;
    let dest = crate::destination::open(config).await?;
    let catalog = crate::pg::connect(&src_info).await?;
    crate::source::postgres::catalog::prepare_session(&catalog).await?;
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
        let schema = crate::source::postgres::catalog::read_table(&catalog, &pair.source)
            .await?
            .ok_or_else(|| {
                Error::definite(format!("source table {} does not exist", pair.source))
            })?;
        let repaired = repair(dest.as_ref(), &reader, &schema, pair, table, batch_rows).await?;
        done.push((pair.destination.to_string(), repaired));
    }
    Ok(done)
}

/// A SQLite source's repair: a `diff` pass over the tables that differ (its merge finds the
/// same rows again and writes them).
async fn repair_by_diff(config: &Config, report: &Report) -> Result<Vec<(String, Repaired)>> {
    let options = super::Options {
        tables: report
            .tables
            .iter()
            .filter(|t| !t.equal)
            .map(|t| t.source.clone())
            .collect(),
        strategy: Some(crate::config::Strategy::Diff),
        jobs: 1,
        ..Default::default()
    };
    let summary = super::pass(config, &options).await?;
    if let Some(t) = summary.tables.iter().find(|t| t.error.is_some()) {
        return Err(Error::definite(format!(
            "repair of {} failed: {}",
            t.source,
            t.error.as_deref().unwrap_or_default()
        )));
    }
    Ok(summary
        .tables
        .iter()
        .map(|t| {
            let r = Repaired {
                inserted: t.inserted,
                updated: t.updated,
                deleted: t.deleted,
            };
            (t.destination.clone(), r)
        })
        .collect())
}
