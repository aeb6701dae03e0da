//! Make a destination table equal to its source after a comparison: delete the extra rows,
//! and upsert the missing and different ones with their values read from the source now, by
//! key (not the values the comparison printed: a DuckDB comparison prints DuckDB's text, and
//! the source may have moved on since). `diff` passes and `cdc verify --repair` both use it.

use tokio_postgres::Client;

use super::write::Writer;
use crate::decode::Datum;
use crate::destination::Destination;
use crate::error::{Error, Result};
use crate::model::schema::TableSchema;
use crate::model::sql::quote_ident;
use crate::verify::report::{Fields, TableReport};
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
    let mut writer = Writer::open(dest, schema, &pair.destination, batch_rows).await?;
    let mut done = Repaired::default();
    for extra in &report.extra {
        let key = extra
            .key
            .0
            .iter()
            .map(|(k, v)| (k.clone(), datum(v.as_deref())))
            .collect();
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
        deleted = done.deleted, "repaired");
    Ok(done)
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
