//! Find the rows that differ between two tables while moving as little data as possible.
//!
//! ```text
//!  key range ── each server counts its rows and sums a hash of each row's text, per bucket
//!        │      of the range ──── buckets equal on both sides are dropped
//!        ▼ buckets that differ
//!  ... repeated until a range holds at most `leaf_rows` rows on each side:
//!  fetch those rows from both servers and compare them by key
//! ```
//!
//! Two ways to cut a range into buckets:
//! - **by value** (one integer key column): `fanout` buckets of equal key width. Each level is
//!   one scan per side, both at once, and the first level covers the whole key extent, so equal
//!   tables cost a single scan per side.
//! - **by quantiles** (any other key): first one count+hash of the whole table per side; then
//!   the larger side names the keys that cut a differing range into buckets of equal row count
//!   (an ordered scan of the key only), and both sides count+hash those buckets.
//!
//! Hashes are computed by the servers, so equal tables transfer no rows. Ranges are visited
//! depth-first in key order: memory holds one path of pending ranges and one leaf per side.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::plan::{Key, KeyRange, Query, RowText, Side};
use crate::error::{Error, Result};
#[cfg(test)]
use rows::diff_rows;
pub(super) use rows::recompare_keys;
use rows::{compare_rows, fetch_and_diff};

mod rows;

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
    /// At most how many buckets a differing range is cut into.
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
    if pair.src_side.integer_key() && pair.dst_side.integer_key() {
        if let Some(outcome) = compare_by_value(pair, limits, stats).await? {
            return Ok(outcome);
        }
    }
    compare_by_quantiles(pair, limits, stats).await
}

/// Differing leaves of an integer key fetched per query.
const LEAVES_PER_FETCH: usize = 64;

/// Fetch and compare a leaf range, adding its differences; true when the difference limit
/// stops the comparison.
async fn leaf(
    pair: &Pair<'_>,
    range: &KeyRange,
    more_pending: bool,
    limits: Limits,
    stats: &mut Stats,
    outcome: &mut Outcome,
) -> Result<bool> {
    outcome
        .differences
        .extend(compare_rows(pair, range, stats).await?);
    if outcome.differences.len() < limits.max_differences {
        return Ok(false);
    }
    outcome.truncated = outcome.differences.len() > limits.max_differences || more_pending;
    outcome.differences.truncate(limits.max_differences);
    Ok(true)
}

/// The integer-key descent: ranges are cut into `fanout` buckets of equal *width* of key
/// values, which both sides count and hash at once (one scan each, no sort). The first query
/// already buckets the whole key extent, so equal tables still cost one scan per side. `None`
/// when the key extent does not fit 64-bit arithmetic.
async fn compare_by_value(
    pair: &Pair<'_>,
    limits: Limits,
    stats: &mut Stats,
) -> Result<Option<Outcome>> {
    let extent = |client, q, side| async move {
        let rows = run(client, q, &pair.label, side).await?;
        Ok::<_, Error>(
            rows.first()
                .map(|r| (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1))),
        )
    };
    let (se, de) = tokio::try_join!(
        extent(pair.src, pair.src_side.key_extent(), "source"),
        extent(pair.dst, pair.dst_side.key_extent(), "destination"),
    )?;
    stats.queries += 2;
    let (mins, maxs): (Vec<i64>, Vec<i64>) = [se, de]
        .into_iter()
        .flatten()
        .filter_map(|(lo, hi)| Some((lo?, hi?)))
        .unzip();
    let (Some(&lo), Some(&max)) = (mins.iter().min(), maxs.iter().max()) else {
        return Ok(Some(Outcome::default())); // no rows on either side
    };
    let Some(hi) = max.checked_add(1).filter(|hi| hi.checked_sub(lo).is_some()) else {
        return Ok(None);
    };
    let mut outcome = Outcome::default();
    let mut pending = Vec::new();
    for (child, s, d) in split_by_value(pair, lo, hi, limits, stats)
        .await?
        .into_iter()
        .rev()
    {
        outcome.source_rows += s.count;
        outcome.destination_rows += d.count;
        if s != d {
            pending.push((child, s, d));
        }
    }
    let mut progress = Progress::new();
    let is_leaf = |(lo, hi): (i64, i64), s: &Summary, d: &Summary| {
        s.count.max(d.count) <= limits.leaf_rows || hi - lo <= 1
    };
    while let Some(((lo, hi), s, d)) = pending.pop() {
        progress.tick(pair, stats, outcome.differences.len(), pending.len());
        if is_leaf((lo, hi), &s, &d) {
            // The next leaves on the stack (in key order) are fetched with this one, in one
            // query per side: many scattered differences would otherwise cost a round trip
            // per leaf.
            let mut ranges = vec![(lo, hi)];
            let mut rows = s.count.max(d.count);
            while let Some(((nlo, nhi), ns, nd)) = pending.last() {
                let more = ns.count.max(nd.count);
                if !is_leaf((*nlo, *nhi), ns, nd)
                    || ranges.len() >= LEAVES_PER_FETCH
                    || rows + more > limits.leaf_rows * LEAVES_PER_FETCH as i64
                {
                    break;
                }
                ranges.push((*nlo, *nhi));
                rows += more;
                pending.pop();
            }
            let found = if ranges.len() == 1 {
                compare_rows(pair, &int_range(lo, hi), stats).await?
            } else {
                fetch_and_diff(
                    pair,
                    pair.src_side.fetch_int_ranges(&ranges),
                    pair.dst_side.fetch_int_ranges(&ranges),
                    stats,
                )
                .await?
            };
            outcome.differences.extend(found);
            if outcome.differences.len() >= limits.max_differences {
                outcome.truncated =
                    outcome.differences.len() > limits.max_differences || !pending.is_empty();
                outcome.differences.truncate(limits.max_differences);
                break;
            }
            continue;
        }
        for (child, cs, cd) in split_by_value(pair, lo, hi, limits, stats)
            .await?
            .into_iter()
            .rev()
        {
            if cs != cd {
                pending.push((child, cs, cd));
            }
        }
    }
    Ok(Some(outcome))
}

fn int_range(lo: i64, hi: i64) -> KeyRange {
    KeyRange {
        lo: Some(vec![lo.to_string()]),
        hi: Some(vec![hi.to_string()]),
    }
}

/// Cut the key values `[lo, hi)` into at most `fanout` buckets of equal width; count and hash
/// each on both sides.
async fn split_by_value(
    pair: &Pair<'_>,
    lo: i64,
    hi: i64,
    limits: Limits,
    stats: &mut Stats,
) -> Result<Vec<((i64, i64), Summary, Summary)>> {
    let span = hi - lo;
    let width = (span / limits.fanout + i64::from(span % limits.fanout != 0)).max(1);
    let n = (span / width + i64::from(span % width != 0)) as usize;
    let range = int_range(lo, hi);
    let (s, d) = tokio::try_join!(
        buckets(
            pair.src,
            pair.src_side.classify_by_value(&range, lo, width),
            n,
            &pair.label,
            "source"
        ),
        buckets(
            pair.dst,
            pair.dst_side.classify_by_value(&range, lo, width),
            n,
            &pair.label,
            "destination"
        ),
    )?;
    stats.queries += 2;
    stats.ranges_compared += n as u64;
    Ok(s.into_iter()
        .zip(d)
        .enumerate()
        .map(|(i, (s, d))| {
            let start = lo + i as i64 * width;
            ((start, start.saturating_add(width).min(hi)), s, d)
        })
        .collect())
}

/// The general descent, for keys of any type: ranges are cut into buckets of equal row count
/// on the larger side.
async fn compare_by_quantiles(
    pair: &Pair<'_>,
    limits: Limits,
    stats: &mut Stats,
) -> Result<Outcome> {
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
    let mut progress = Progress::new();
    while let Some((range, s, d, parent_biggest, misses)) = pending.pop() {
        progress.tick(pair, stats, outcome.differences.len(), pending.len());
        let biggest = s.count.max(d.count);
        let children = if biggest <= limits.leaf_rows {
            None
        } else {
            split(pair, &range, s.count >= d.count, biggest, limits, stats).await?
        };
        let Some(children) = children else {
            // A leaf, or keys that do not split (only possible with a non-unique --key, which
            // the row comparison reports).
            if leaf(
                pair,
                &range,
                !pending.is_empty(),
                limits,
                stats,
                &mut outcome,
            )
            .await?
            {
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
            let bound = (parent_biggest / limits.fanout + 1).max(limits.leaf_rows);
            let child_misses = if cs.count.max(cd.count) > bound {
                misses + 1
            } else {
                0
            };
            if child_misses > 2 {
                return Err(Error::definite(format!(
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

/// Cut `range` into buckets of equal row count on the side with more rows, then count and hash
/// the same buckets on both sides at once. `None` when the range does not split.
async fn split(
    pair: &Pair<'_>,
    range: &KeyRange,
    source_is_bigger: bool,
    biggest: i64,
    limits: Limits,
    stats: &mut Stats,
) -> Result<Option<Vec<(KeyRange, Summary, Summary)>>> {
    // Buckets of at least a leaf: a range just above leaf size splits into a few leaves, not
    // into `fanout` slivers that each cost two queries.
    let step = ((biggest + limits.fanout - 1) / limits.fanout).max(limits.leaf_rows);
    let (client, side, name) = if source_is_bigger {
        (pair.src, pair.src_side, "source")
    } else {
        (pair.dst, pair.dst_side, "destination")
    };
    let n_keys = pair.key_positions.len();
    let bounds: Vec<Key> = run(client, side.boundaries(range, step), &pair.label, name)
        .await?
        .iter()
        .map(|row| (0..n_keys).map(|k| row.get::<_, String>(k)).collect())
        .collect();
    stats.queries += 1;
    if bounds.is_empty() {
        return Ok(None);
    }
    let (s, d) = tokio::try_join!(
        buckets(
            pair.src,
            pair.src_side.classify(range, &bounds),
            bounds.len() + 1,
            &pair.label,
            "source"
        ),
        buckets(
            pair.dst,
            pair.dst_side.classify(range, &bounds),
            bounds.len() + 1,
            &pair.label,
            "destination"
        ),
    )?;
    stats.queries += 2;
    stats.ranges_compared += s.len() as u64;
    let children = s
        .into_iter()
        .zip(d)
        .enumerate()
        .map(|(i, (s, d))| {
            let child = KeyRange {
                lo: if i == 0 {
                    range.lo.clone()
                } else {
                    Some(bounds[i - 1].clone())
                },
                hi: bounds.get(i).cloned().or_else(|| range.hi.clone()),
            };
            (child, s, d)
        })
        .collect();
    Ok(Some(children))
}

/// Per-bucket summaries from a classify query (buckets without rows are empty).
async fn buckets(
    client: &Client,
    q: Query,
    n: usize,
    label: &str,
    side: &str,
) -> Result<Vec<Summary>> {
    let mut out = vec![Summary::empty(); n];
    for row in run(client, q, label, side).await? {
        let bucket: i32 = row.get(0);
        out[bucket as usize] = Summary {
            count: row.get(1),
            hash: row.get(2),
        };
    }
    Ok(out)
}

/// A log line every few seconds while a large table is being compared.
struct Progress {
    last: std::time::Instant,
}

impl Progress {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    fn new() -> Progress {
        Progress {
            last: std::time::Instant::now(),
        }
    }

    fn tick(&mut self, pair: &Pair<'_>, stats: &Stats, differences: usize, pending: usize) {
        if self.last.elapsed() >= Self::EVERY {
            self.last = std::time::Instant::now();
            tracing::info!(
                table = %pair.label,
                ranges_compared = stats.ranges_compared,
                rows_fetched = stats.rows_fetched,
                differences,
                ranges_pending = pending,
                "comparing"
            );
        }
    }
}

async fn summary(client: &Client, q: Query, label: &str, side: &str) -> Result<Summary> {
    let rows = run(client, q, label, side).await?;
    let row = rows.first().ok_or_else(|| {
        Error::from(crate::error::Cause::Protocol {
            context: format!("hashing {label} on the {side}"),
            detail: "aggregate returned no row".into(),
        })
    })?;
    Ok(Summary {
        count: row.get(0),
        hash: row.get(1),
    })
}

async fn run(client: &Client, q: Query, label: &str, side: &str) -> Result<Vec<Row>> {
    let params: Vec<&(dyn ToSql + Sync)> =
        q.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let started = std::time::Instant::now();
    let rows = client
        .query(&q.sql, &params)
        .await
        .map_err(Error::pg(format!(
            "comparing {label}: query on the {side} failed"
        )))?;
    // Where a comparison's time goes, query by query (`CDC_LOG=cdc::verify=trace`).
    tracing::trace!(
        table = %label,
        side,
        rows = rows.len(),
        ms = started.elapsed().as_millis() as u64,
        sql = %q.sql.chars().take(160).collect::<String>(),
        "comparison query"
    );
    Ok(rows)
}

#[cfg(test)]
mod tests;
