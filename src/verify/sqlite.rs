//! `cdc verify` from a SQLite source: each table's rows read in key order on both sides and
//! walked together (`merge`), values compared by meaning, differences listed by key in the
//! same report a Postgres source gives.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::merge::{Found, Merge};
use super::report::{ColumnChange, DifferentRow, ExtraRow, Fields, MissingRow};
use super::{Report, TablePair, TableReport};
use crate::config::{Config, TableConfig};
use crate::decode::Datum;
use crate::destination::Destination;
use crate::error::{Error, Result};
use crate::model::change::text;
use crate::source::sqlite::read::Reading;
use crate::source::sqlite::select::{self, select_sql, source_key};
use crate::source::sqlite::types::Kind;
use crate::source::sqlite::{catalog, SqliteSource};

/// Compare `pairs` (configured tables), at most `max_differences` listed per table, every
/// table read in one read transaction.
pub(super) async fn verify(
    config: &Config,
    path: &Path,
    pairs: &[TablePair],
    max_differences: usize,
) -> Result<Report> {
    let source = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let s = SqliteSource::open(&path)?;
            s.begin()?;
            Ok::<_, Error>(s)
        })
        .await
        .map_err(Error::stopped("SQLite reader"))??
    };
    let source = Arc::new(Mutex::new(source));
    let dest = crate::destination::open(config).await?;
    let entries: Vec<_> = config
        .table_pairs()
        .into_iter()
        .zip(&config.tables)
        .collect();
    let mut tables = Vec::new();
    for pair in pairs {
        let entry = entries
            .iter()
            .find(|((s, _), _)| s == &pair.source)
            .map(|(_, c)| *c)
            .expect("pairs come from the configuration");
        tables.push(compare_table(&source, dest.as_ref(), pair, entry, max_differences).await?);
    }
    Ok(Report {
        equal: tables.iter().all(|t| t.equal),
        tables,
    })
}

/// One table compared by walking both sides in key order.
async fn compare_table(
    source: &Arc<Mutex<SqliteSource>>,
    dest: &dyn Destination,
    pair: &TablePair,
    entry: &TableConfig,
    max_differences: usize,
) -> Result<TableReport> {
    let started = Instant::now();
    let name = pair.source.clone();
    let conn = source.clone();
    let table = tokio::task::spawn_blocking(move || {
        let s = conn.lock().unwrap_or_else(|p| p.into_inner());
        catalog::read_table(&s.conn, &name)
    })
    .await
    .map_err(Error::stopped("SQLite reader"))??;
    let mut table = table.ok_or_else(|| {
        Error::definite(format!(
            "the SQLite file has no table {} (tables are named main.TABLE)",
            pair.source
        ))
    })?;
    table.rename(&entry.columns, &entry.ignore_columns)?;
    if table.schema.primary_key.is_empty() {
        return Err(Error::definite(format!(
            "{} has no primary key: cdc verify compares rows by key",
            pair.source
        )));
    }
    let map = crate::destination::columns::mapped(dest, &table.schema, &pair.destination).await?;
    let key = source_key(&table);
    let sql = select_sql(&table, pair.source_filter.as_deref(), None, &key, None);
    let q = select::into_map(&table, &map, &|t| dest.value_kind(t), sql, Vec::new(), &key);
    let text_key: Vec<bool> = q
        .key
        .iter()
        .map(|&k| matches!(q.kinds[k], Kind::Text { .. } | Kind::AnyText))
        .collect();
    let names: Vec<String> = map.columns.iter().map(|c| c.name.clone()).collect();
    let rows = dest.rows_by_key(&map, &text_key).await?;
    let shown = pair.source.to_string();
    let (kinds, key_pos) = (q.kinds.clone(), q.key.clone());
    let reading = Reading::start(
        source.clone(),
        q,
        Box::new(move |r| Err(Error::definite(format!("{shown}: {r}")))),
    );
    let mut merge = Merge::new(
        kinds,
        key_pos.clone(),
        pair.source.to_string(),
        reading,
        rows,
    );
    let found = differences(&mut merge, &names, max_differences).await;
    let (source_rows, destination_rows) = (merge.source_rows(), merge.destination_rows());
    let (reading, _) = merge.into_sides();
    let done = reading.finish().await;
    let (missing, different, extra, truncated) = found?;
    done?;
    Ok(TableReport {
        source: pair.source.to_string(),
        destination: pair.destination.to_string(),
        equal: missing.is_empty() && different.is_empty() && extra.is_empty(),
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
    })
}

type Listed = (Vec<MissingRow>, Vec<DifferentRow>, Vec<ExtraRow>, bool);

/// Walk `merge` to its end or to `max` differences; the differences, and whether it stopped
/// early.
async fn differences<S, D>(merge: &mut Merge<S, D>, names: &[String], max: usize) -> Result<Listed>
where
    S: crate::source::RowSource,
    D: crate::source::RowSource,
{
    let key = merge.key().to_vec();
    let fields = |row: &[Datum], only: Option<&[usize]>| {
        Fields(
            names
                .iter()
                .enumerate()
                .filter(|(i, _)| only.is_none_or(|o| o.contains(i)))
                .map(|(i, n)| (n.clone(), text(&row[i]).map(str::to_owned)))
                .collect(),
        )
    };
    let (mut missing, mut different, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(found) = merge.next().await? {
        if missing.len() + different.len() + extra.len() >= max {
            return Ok((missing, different, extra, true));
        }
        match found {
            Found::Missing(row) => missing.push(MissingRow {
                key: fields(&row, Some(&key)),
                source: fields(&row, None),
            }),
            Found::Extra(row) => extra.push(ExtraRow {
                key: fields(&row, Some(&key)),
                destination: fields(&row, None),
            }),
            Found::Different(a, b) => different.push(DifferentRow {
                key: fields(&a, Some(&key)),
                columns: (0..names.len())
                    .filter(|&i| !merge.same_value(i, &a[i], &b[i]))
                    .map(|i| ColumnChange {
                        column: names[i].clone(),
                        source: text(&a[i]).map(str::to_owned),
                        destination: text(&b[i]).map(str::to_owned),
                    })
                    .collect(),
            }),
        }
    }
    Ok((missing, different, extra, false))
}
