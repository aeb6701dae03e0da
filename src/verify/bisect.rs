//! Find the rows that differ between two tables while moving as little data as possible.
//!
//! ```text
//!  whole table: count + hash on each server ──── equal? done, nothing fetched
//!        │ differ
//!        ▼
//!  the side with more rows cuts the range into `fanout` buckets of consecutive keys
//!  (one ordered scan, returns per bucket: count, hash, first key); the other side counts and
//!  hashes rows into the same buckets (one scan) ──── equal buckets are dropped
//!        │ buckets that differ
//!        ▼
//!  ... repeated until a range holds at most `leaf_rows` rows on each side:
//!  fetch those rows from both servers and compare them by key
//! ```
//!
//! Hashes are computed by the servers over each row's canonical text, so equal tables cost two
//! aggregate queries and no rows. Ranges are visited depth-first in key order, so memory holds
//! one path of pending ranges and at most `leaf_rows` rows per side.

use std::collections::{HashMap, HashSet};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::plan::{Key, KeyRange, Query, RowText, Side};
use crate::error::{Error, Result};

/// How a row differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// In the source, not in the destination.
    Missing { key: Key, source: RowText },
    /// In both, with different values in at least one column.
    Changed {
        key: Key,
        source: RowText,
        destination: RowText,
    },
    /// In the destination, not in the source.
    Extra { key: Key, destination: RowText },
}

impl Difference {
    pub fn key(&self) -> &Key {
        match self {
            Difference::Missing { key, .. }
            | Difference::Changed { key, .. }
            | Difference::Extra { key, .. } => key,
        }
    }
}

/// What a comparison cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Key ranges whose count and hash were compared.
    pub ranges_compared: u64,
    /// Table rows transferred to this process, both sides together.
    pub rows_fetched: u64,
    /// Queries sent, both sides together.
    pub queries: u64,
}

/// Bounds of the descent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Ranges with at most this many rows on each side are fetched and compared row by row.
    pub leaf_rows: i64,
    /// How many buckets a differing range is cut into.
    pub fanout: i64,
    /// Stop descending once this many differences are known.
    pub max_differences: usize,
}

/// The two sides of one comparison.
pub(super) struct Pair<'a> {
    pub src: &'a Client,
    pub dst: &'a Client,
    pub src_side: &'a Side,
    pub dst_side: &'a Side,
    /// Where the key columns are among the compared columns.
    pub key_positions: Vec<usize>,
    /// For error messages: `public.t`.
    pub label: String,
}

/// Count and hash of a range on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    count: i64,
    hash: String,
}

impl Summary {
    fn empty() -> Summary {
        Summary {
            count: 0,
            hash: "0".into(),
        }
    }
}

/// The result of the first pass over a table.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub source_rows: i64,
    pub destination_rows: i64,
    pub differences: Vec<Difference>,
    /// `max_differences` was reached: there may be more.
    pub truncated: bool,
}

/// Compare the whole table pair.
pub(super) async fn compare(pair: &Pair<'_>, limits: Limits, stats: &mut Stats) -> Result<Outcome> {
    let whole = KeyRange::default();
    let (s, d) = tokio::try_join!(
        summary(pair.src, pair.src_side.hash(&whole), &pair.label, "source"),
        summary(
            pair.dst,
            pair.dst_side.hash(&whole),
            &pair.label,
            "destination"
        ),
    )?;
    stats.queries += 2;
    stats.ranges_compared += 1;
    let mut outcome = Outcome {
        source_rows: s.count,
        destination_rows: d.count,
        ..Outcome::default()
    };
    if s == d {
        return Ok(outcome);
    }
    // Depth-first, leftmost range on top, so differences come out in key order. Each entry
    // carries its parent's larger count and how many levels in a row missed the shrink bound.
    let mut pending = vec![(whole, s, d, i64::MAX, 0u32)];
    while let Some((range, s, d, parent_biggest, misses)) = pending.pop() {
        let biggest = s.count.max(d.count);
        let children = if biggest <= limits.leaf_rows {
            None
        } else {
            split(pair, &range, s.count >= d.count, biggest, limits, stats).await?
        };
        let Some(children) = children else {
            // A leaf, or keys that do not split (only possible with a non-unique --key, which
            // the row comparison reports).
            outcome
                .differences
                .extend(compare_rows(pair, &range, stats).await?);
            if outcome.differences.len() >= limits.max_differences {
                outcome.truncated =
                    outcome.differences.len() > limits.max_differences || !pending.is_empty();
                outcome.differences.truncate(limits.max_differences);
                break;
            }
            continue;
        };
        for (child, cs, cd) in children.into_iter().rev() {
            if cs == cd {
                continue;
            }
            // With the same key order on both sides, a range's grandchildren hold at most
            // 1/fanout of its larger count (each level splits the larger side). Missing that
            // bound twice in a row means the sides order keys differently, and the descent
            // would wander instead of converge.
            let bound = parent_biggest / limits.fanout + 1;
            let child_misses = if cs.count.max(cd.count) > bound {
                misses + 1
            } else {
                0
            };
            if child_misses > 2 {
                return Err(Error::Definite(format!(
                    "{}: key ranges do not shrink, so the key sorts differently on the two sides; \
                     compare by key columns of the same type on both sides (--key)",
                    pair.label
                )));
            }
            pending.push((child, cs, cd, biggest, child_misses));
        }
    }
    Ok(outcome)
}

/// Cut `range` into buckets on the side with more rows and summarise the same buckets on the
/// other side. `None` when the range does not split into at least two buckets.
async fn split(
    pair: &Pair<'_>,
    range: &KeyRange,
    source_is_bigger: bool,
    biggest: i64,
    limits: Limits,
    stats: &mut Stats,
) -> Result<Option<Vec<(KeyRange, Summary, Summary)>>> {
    let step = (biggest + limits.fanout - 1) / limits.fanout;
    let (big_client, big_side, big_name, other_client, other_side, other_name) = if source_is_bigger
    {
        (
            pair.src,
            pair.src_side,
            "source",
            pair.dst,
            pair.dst_side,
            "destination",
        )
    } else {
        (
            pair.dst,
            pair.dst_side,
            "destination",
            pair.src,
            pair.src_side,
            "source",
        )
    };
    let rows = run(
        big_client,
        big_side.buckets(range, step),
        &pair.label,
        big_name,
    )
    .await?;
    stats.queries += 1;
    if rows.len() < 2 {
        return Ok(None);
    }
    let n_keys = pair.key_positions.len();
    let mut big = Vec::with_capacity(rows.len());
    let mut bounds: Vec<Key> = Vec::with_capacity(rows.len() - 1);
    for (i, row) in rows.iter().enumerate() {
        big.push(Summary {
            count: row.get(1),
            hash: row.get(2),
        });
        if i > 0 {
            bounds.push((0..n_keys).map(|k| row.get::<_, String>(3 + k)).collect());
        }
    }
    let mut other = vec![Summary::empty(); big.len()];
    for row in run(
        other_client,
        other_side.classify(range, &bounds),
        &pair.label,
        other_name,
    )
    .await?
    {
        let bucket: i32 = row.get(0);
        other[bucket as usize] = Summary {
            count: row.get(1),
            hash: row.get(2),
        };
    }
    stats.queries += 1;
    stats.ranges_compared += big.len() as u64;
    let mut children = Vec::with_capacity(big.len());
    for (i, (b, o)) in big.into_iter().zip(other).enumerate() {
        let child = KeyRange {
            lo: if i == 0 {
                range.lo.clone()
            } else {
                Some(bounds[i - 1].clone())
            },
            hi: bounds.get(i).cloned().or_else(|| range.hi.clone()),
        };
        let (s, d) = if source_is_bigger { (b, o) } else { (o, b) };
        children.push((child, s, d));
    }
    Ok(Some(children))
}

/// Fetch a range from both sides and compare it row by row.
async fn compare_rows(
    pair: &Pair<'_>,
    range: &KeyRange,
    stats: &mut Stats,
) -> Result<Vec<Difference>> {
    let (s, d) = tokio::try_join!(
        run(pair.src, pair.src_side.fetch(range), &pair.label, "source"),
        run(
            pair.dst,
            pair.dst_side.fetch(range),
            &pair.label,
            "destination"
        ),
    )?;
    stats.queries += 2;
    stats.rows_fetched += (s.len() + d.len()) as u64;
    diff_rows(&pair.key_positions, texts(&s), texts(&d))
        .map_err(|e| Error::Definite(format!("{}: {e}", pair.label)))
}

/// Fetch the rows with the given keys from both sides and compare them again.
pub(super) async fn recompare_keys(
    pair: &Pair<'_>,
    keys: &[Key],
    stats: &mut Stats,
) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(1000) {
        let (s, d) = tokio::try_join!(
            run(
                pair.src,
                pair.src_side.fetch_keys(chunk),
                &pair.label,
                "source"
            ),
            run(
                pair.dst,
                pair.dst_side.fetch_keys(chunk),
                &pair.label,
                "destination"
            ),
        )?;
        stats.queries += 2;
        stats.rows_fetched += (s.len() + d.len()) as u64;
        out.extend(
            diff_rows(&pair.key_positions, texts(&s), texts(&d))
                .map_err(|e| Error::Definite(format!("{}: {e}", pair.label)))?,
        );
    }
    Ok(out)
}

/// Compare two sets of rows by key: source order first (missing and changed), then the
/// destination's extra rows in its order. Fails on a duplicate key: comparing by a key that is
/// not unique would report nonsense.
pub(super) fn diff_rows(
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

async fn summary(client: &Client, q: Query, label: &str, side: &str) -> Result<Summary> {
    let rows = run(client, q, label, side).await?;
    let row = rows.first().ok_or_else(|| Error::Protocol {
        context: format!("hashing {label} on the {side}"),
        detail: "aggregate returned no row".into(),
    })?;
    Ok(Summary {
        count: row.get(0),
        hash: row.get(1),
    })
}

async fn run(client: &Client, q: Query, label: &str, side: &str) -> Result<Vec<Row>> {
    let params: Vec<&(dyn ToSql + Sync)> =
        q.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    client
        .query(&q.sql, &params)
        .await
        .map_err(Error::pg(format!(
            "comparing {label}: query on the {side} failed"
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(vals: &[Option<&str>]) -> RowText {
        vals.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn classifies_missing_changed_and_extra_by_key() {
        let src = vec![
            row(&[Some("1"), Some("a")]),
            row(&[Some("2"), Some("b")]),
            row(&[Some("3"), None]),
        ];
        let dst = vec![
            row(&[Some("1"), Some("a")]),
            row(&[Some("3"), Some("")]),
            row(&[Some("4"), Some("d")]),
        ];
        let diffs = diff_rows(&[0], src, dst).unwrap();
        assert_eq!(
            diffs,
            vec![
                Difference::Missing {
                    key: vec!["2".into()],
                    source: row(&[Some("2"), Some("b")])
                },
                Difference::Changed {
                    key: vec!["3".into()],
                    source: row(&[Some("3"), None]),
                    destination: row(&[Some("3"), Some("")])
                },
                Difference::Extra {
                    key: vec!["4".into()],
                    destination: row(&[Some("4"), Some("d")])
                },
            ]
        );
    }

    #[test]
    fn duplicate_or_null_keys_are_errors_not_reports() {
        let dup = vec![row(&[Some("1")]), row(&[Some("1")])];
        assert!(diff_rows(&[0], dup.clone(), vec![])
            .unwrap_err()
            .contains("not unique in the source"));
        assert!(diff_rows(&[0], vec![], dup)
            .unwrap_err()
            .contains("not unique in the destination"));
        assert!(diff_rows(&[0], vec![row(&[None])], vec![])
            .unwrap_err()
            .contains("NULL"));
    }
}
