//! The leaves of a comparison: a key range small enough to fetch from both sides, compared
//! row by row by key.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Row;

use super::Difference;
use super::{run, Pair, Stats};
use crate::error::{Error, Result};
use crate::verify::plan::{Key, KeyRange, Query, RowText};

/// Fetch a range from both sides and compare it row by row.
pub(super) async fn compare_rows(
    pair: &Pair<'_>,
    range: &KeyRange,
    stats: &mut Stats,
) -> Result<Vec<Difference>> {
    fetch_and_diff(
        pair,
        pair.src_side.fetch(range),
        pair.dst_side.fetch(range),
        stats,
    )
    .await
}

/// Fetch the rows with the given keys from both sides and compare them again.
pub(in crate::verify) async fn recompare_keys(
    pair: &Pair<'_>,
    keys: &[Key],
    stats: &mut Stats,
) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(1000) {
        let (src_q, dst_q) = (
            pair.src_side.fetch_keys(chunk),
            pair.dst_side.fetch_keys(chunk),
        );
        out.extend(fetch_and_diff(pair, src_q, dst_q, stats).await?);
    }
    Ok(out)
}

/// Run a row query on each side at once and compare the rows by key.
pub(super) async fn fetch_and_diff(
    pair: &Pair<'_>,
    src_q: Query,
    dst_q: Query,
    stats: &mut Stats,
) -> Result<Vec<Difference>> {
    let (s, d) = tokio::try_join!(
        run(pair.src, src_q, &pair.label, "source"),
        run(pair.dst, dst_q, &pair.label, "destination"),
    )?;
    stats.queries += 2;
    stats.rows_fetched += (s.len() + d.len()) as u64;
    diff_rows(&pair.key_positions, texts(&s), texts(&d))
        .map_err(|e| Error::definite(format!("{}: {e}", pair.label)))
}

/// Compare two sets of rows by key: source order first (missing and changed), then the
/// destination's extra rows in its order. Fails on a duplicate key: comparing by a key that is
/// not unique would report nonsense.
pub(in crate::verify) fn diff_rows(
    key_positions: &[usize],
    source: Vec<RowText>,
    destination: Vec<RowText>,
) -> std::result::Result<Vec<Difference>, String> {
    let key_of = |row: &RowText, side: &str| -> std::result::Result<Key, String> {
        key_positions
            .iter()
            .map(|&i| {
                row[i].clone().ok_or_else(|| {
                    format!("a key column is NULL in the {side}: choose NOT NULL key columns")
                })
            })
            .collect()
    };
    let mut dst_by_key: HashMap<Key, RowText> = HashMap::with_capacity(destination.len());
    let mut dst_order = Vec::with_capacity(destination.len());
    for row in destination {
        let key = key_of(&row, "destination")?;
        dst_order.push(key.clone());
        if dst_by_key.insert(key.clone(), row).is_some() {
            return Err(format!(
                "key {key:?} is not unique in the destination: compare by a unique key (--key)"
            ));
        }
    }
    let mut seen = HashSet::with_capacity(source.len());
    let mut out = Vec::new();
    for row in source {
        let key = key_of(&row, "source")?;
        if !seen.insert(key.clone()) {
            return Err(format!(
                "key {key:?} is not unique in the source: compare by a unique key (--key)"
            ));
        }
        match dst_by_key.remove(&key) {
            None => out.push(Difference::Missing { key, source: row }),
            Some(d) if d != row => out.push(Difference::Changed {
                key,
                source: row,
                destination: d,
            }),
            Some(_) => {}
        }
    }
    for key in dst_order {
        if let Some(row) = dst_by_key.remove(&key) {
            out.push(Difference::Extra {
                key,
                destination: row,
            });
        }
    }
    Ok(out)
}

fn texts(rows: &[Row]) -> Vec<RowText> {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}
