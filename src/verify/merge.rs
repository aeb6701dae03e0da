//! Two sides of a table read in key order and walked together, like the merge step of a merge
//! sort: a key only the source has is missing, one only the destination has is extra, a key
//! on both whose values differ by meaning is different. `cdc verify` and `diff` passes from a
//! source that cannot hash key ranges (SQLite) use it.
//!
//! The walk only works if both sides sort keys the same way, which is not a given (a SQLite
//! key column may hold mixed types or spellings): it checks that each side's keys rise under
//! the comparison it uses, and refuses the table rather than report rows that are there.

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::decode::Datum;
use crate::error::{Error, Result};
use crate::model::change::text;
use crate::source::sqlite::compare::{key_order, same};
use crate::source::sqlite::types::Kind;
use crate::source::RowSource;

/// A difference between the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Missing(Vec<Datum>),
    /// Source row, destination row.
    Different(Vec<Datum>, Vec<Datum>),
    Extra(Vec<Datum>),
}

/// One side's rows, one at a time, from its blocks.
struct Side<R> {
    rows: R,
    buf: VecDeque<Vec<Datum>>,
    head: Option<Vec<Datum>>,
    /// The last key taken, to check the order.
    last: Option<Vec<Datum>>,
    seen: i64,
    name: &'static str,
}

impl<R: RowSource> Side<R> {
    fn new(rows: R, name: &'static str) -> Self {
        Side {
            rows,
            buf: VecDeque::new(),
            head: None,
            last: None,
            seen: 0,
            name,
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<Datum>>> {
        while self.buf.is_empty() {
            match self.rows.next_rows().await? {
                Some(block) => self.buf = block.into(),
                None => return Ok(None),
            }
        }
        Ok(self.buf.pop_front())
    }
}

/// The walk over both sides of one table.
pub struct Merge<S, D> {
    kinds: Vec<Kind>,
    key: Vec<usize>,
    table: String,
    src: Side<S>,
    dst: Side<D>,
    started: bool,
}

impl<S: RowSource, D: RowSource> Merge<S, D> {
    /// Rows on both sides hold the same columns in the same order, each of `kinds`; `key` are
    /// the key columns' positions; `table` names the table in messages.
    pub fn new(kinds: Vec<Kind>, key: Vec<usize>, table: String, src: S, dst: D) -> Self {
        Merge {
            kinds,
            key,
            table,
            src: Side::new(src, "source"),
            dst: Side::new(dst, "destination"),
            started: false,
        }
    }

    /// The kind of each column.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// The key columns' positions.
    pub fn key(&self) -> &[usize] {
        &self.key
    }

    /// The next difference, `None` when both sides are done.
    pub async fn next(&mut self) -> Result<Option<Found>> {
        if !self.started {
            self.started = true;
            self.advance(true).await?;
            self.advance(false).await?;
        }
        loop {
            let step = match (&self.src.head, &self.dst.head) {
                (None, None) => return Ok(None),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => self.compare(a, b)?,
            };
            match step {
                Ordering::Less => {
                    let row = self.src.head.take().expect("source row");
                    self.advance(true).await?;
                    return Ok(Some(Found::Missing(row)));
                }
                Ordering::Greater => {
                    let row = self.dst.head.take().expect("destination row");
                    self.advance(false).await?;
                    return Ok(Some(Found::Extra(row)));
                }
                Ordering::Equal => {
                    let a = self.src.head.take().expect("source row");
                    let b = self.dst.head.take().expect("destination row");
                    self.advance(true).await?;
                    self.advance(false).await?;
                    if !self.same_row(&a, &b) {
                        return Ok(Some(Found::Different(a, b)));
                    }
                }
            }
        }
    }

    /// Rows seen on the source side so far.
    pub fn source_rows(&self) -> i64 {
        self.src.seen
    }

    /// Rows seen on the destination side so far.
    pub fn destination_rows(&self) -> i64 {
        self.dst.seen
    }

    /// Whether two values of column `i` mean the same.
    pub fn same_value(&self, i: usize, x: &Datum, y: &Datum) -> bool {
        same_value(self.kinds[i], x, y)
    }

    /// The two row sources back (to end them).
    pub fn into_sides(self) -> (S, D) {
        (self.src.rows, self.dst.rows)
    }

    async fn advance(&mut self, source: bool) -> Result<()> {
        let row = if source {
            self.src.next().await?
        } else {
            self.dst.next().await?
        };
        if let Some(row) = &row {
            let key: Vec<Datum> = self.key.iter().map(|&k| row[k].clone()).collect();
            let (last, seen, name) = if source {
                (&mut self.src.last, &mut self.src.seen, self.src.name)
            } else {
                (&mut self.dst.last, &mut self.dst.seen, self.dst.name)
            };
            *seen += 1;
            if let Some(prev) = last.replace(key.clone()) {
                if compare_keys(&self.kinds, &self.key, &self.table, &prev, &key)? != Ordering::Less
                {
                    return Err(Error::definite(format!(
                        "{}: the {name} does not sort its keys the way they compare here (a key column \
                         holding mixed types or spellings, e.g. upper- and lower-case UUIDs); \
                         use strategy \"reload\" for this table",
                        self.table
                    )));
                }
            }
        }
        if source {
            self.src.head = row;
        } else {
            self.dst.head = row;
        }
        Ok(())
    }

    fn compare(&self, a: &[Datum], b: &[Datum]) -> Result<Ordering> {
        let ka: Vec<Datum> = self.key.iter().map(|&k| a[k].clone()).collect();
        let kb: Vec<Datum> = self.key.iter().map(|&k| b[k].clone()).collect();
        compare_keys(&self.kinds, &self.key, &self.table, &ka, &kb)
    }

    fn same_row(&self, a: &[Datum], b: &[Datum]) -> bool {
        a.iter()
            .zip(b)
            .zip(&self.kinds)
            .all(|((x, y), kind)| same_value(*kind, x, y))
    }
}

/// Keys (values in `key` order) compared column by column.
fn compare_keys(
    kinds: &[Kind],
    key: &[usize],
    table: &str,
    a: &[Datum],
    b: &[Datum],
) -> Result<Ordering> {
    for ((x, y), &k) in a.iter().zip(b).zip(key) {
        let (Some(x), Some(y)) = (text(x), text(y)) else {
            return Err(Error::definite(format!(
                "{table}: a NULL in a key column; SQLite allows it outside INTEGER PRIMARY KEY, a destination key does not"
            )));
        };
        let o = key_order(kinds[k], x, y);
        if o.is_ne() {
            return Ok(o);
        }
    }
    Ok(Ordering::Equal)
}

fn same_value(kind: Kind, x: &Datum, y: &Datum) -> bool {
    match (text(x), text(y)) {
        (None, None) => true,
        (Some(x), Some(y)) => same(kind, x, y),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows handed over in blocks of two (so the walk crosses block ends), with an empty
    /// block in the middle (which is not the end).
    struct Blocks(VecDeque<Vec<Vec<Datum>>>);

    fn blocks(rows: &[(&str, Option<&str>)]) -> Blocks {
        let rows: Vec<Vec<Datum>> = rows.iter().map(|(k, v)| vec![d(Some(k)), d(*v)]).collect();
        let mut out: VecDeque<Vec<Vec<Datum>>> = rows.chunks(2).map(|c| c.to_vec()).collect();
        out.insert(out.len() / 2, Vec::new());
        Blocks(out)
    }

    #[async_trait::async_trait]
    impl RowSource for Blocks {
        async fn next_rows(&mut self) -> Result<Option<Vec<Vec<Datum>>>> {
            Ok(self.0.pop_front())
        }
    }

    fn d(v: Option<&str>) -> Datum {
        match v {
            Some(v) => Datum::Text(bytes::Bytes::copy_from_slice(v.as_bytes())),
            None => Datum::Null,
        }
    }

    const INT: Kind = Kind::Int { max: i64::MAX };
    const TEXT: Kind = Kind::Text { max: None };

    async fn walk(kinds: [Kind; 2], src: Blocks, dst: Blocks) -> Result<(Vec<Found>, i64, i64)> {
        let mut m = Merge::new(kinds.to_vec(), vec![0], "t".into(), src, dst);
        let mut found = Vec::new();
        while let Some(f) = m.next().await? {
            found.push(f);
        }
        Ok((found, m.source_rows(), m.destination_rows()))
    }

    #[tokio::test]
    async fn missing_extra_and_different_rows_by_key_and_meaning() {
        // Integer keys by value (9 before 10), values by meaning ("1.50" is "1.5" as a float).
        let src = blocks(&[
            ("1", Some("a")),
            ("2", Some("b")),
            ("9", None),
            ("10", Some("x")),
            ("12", Some("1.50")),
        ]);
        let dst = blocks(&[
            ("2", Some("2.5")),
            ("3", Some("c")),
            ("9", None),
            ("10", Some("x")),
            ("12", Some("1.5")),
            ("13", None),
        ]);
        let (found, s, d_rows) = walk([INT, Kind::Float], src, dst).await.unwrap();
        let row = |k: &str, v: Option<&str>| vec![d(Some(k)), d(v)];
        assert_eq!(
            found,
            vec![
                Found::Missing(row("1", Some("a"))),
                Found::Different(row("2", Some("b")), row("2", Some("2.5"))),
                Found::Extra(row("3", Some("c"))),
                Found::Extra(row("13", None)),
            ]
        );
        assert_eq!((s, d_rows), (5, 6));
    }

    #[tokio::test]
    async fn a_side_out_of_order_is_refused_not_reported() {
        // Text keys compare by bytes: "B" < "a". A destination that sorted them otherwise
        // would make every row look missing and extra.
        let src = blocks(&[("B", None), ("a", None)]);
        let dst = blocks(&[("a", None), ("B", None)]);
        let err = walk([TEXT, TEXT], src, dst).await.unwrap_err().to_string();
        assert!(
            err.contains("the destination does not sort its keys"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_null_key_is_refused() {
        let src = Blocks(VecDeque::from([vec![vec![d(None), d(None)]]]));
        let dst = blocks(&[("1", None)]);
        let err = walk([INT, TEXT], src, dst).await.unwrap_err().to_string();
        assert!(err.contains("a NULL in a key column"), "{err}");
    }

    #[tokio::test]
    async fn equal_sides_give_nothing() {
        let rows = [("1", Some("a")), ("2", None), ("3", Some("c"))];
        let (found, s, d_rows) = walk([INT, TEXT], blocks(&rows), blocks(&rows))
            .await
            .unwrap();
        assert!(found.is_empty());
        assert_eq!((s, d_rows), (3, 3));
    }
}
