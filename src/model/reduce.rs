//! Reducing the ordered changes of one table in a batch to one final state per key, so the
//! destination gets one set-based statement per kind instead of one per row.
//!
//! Rules: the last change of a key wins; an UPDATE that changes the key deletes the old key;
//! a column the source marked "unchanged TOAST" takes the value an earlier change of the same
//! batch gave it, and otherwise is left untouched in the destination (never set to NULL).
//!
//! A key whose first change in the batch is an UPDATE or DELETE of that key existed on the
//! source before the batch, so it exists on the destination too: its final row can be written
//! with a plain UPDATE instead of an upsert (cheaper: no speculative insert, no row lock).

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::decode::Datum;

/// A row change, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOp {
    Insert(Vec<Datum>),
    /// `old` is present when the key changed (key columns) or with REPLICA IDENTITY FULL.
    Update {
        old: Option<Vec<Datum>>,
        new: Vec<Datum>,
    },
    Delete(Vec<Datum>),
}

impl RowOp {
    /// `insert`, `update` or `delete`, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            RowOp::Insert(_) => "insert",
            RowOp::Update { .. } => "update",
            RowOp::Delete(_) => "delete",
        }
    }
}

/// The final state of one key after a batch. Rows are borrowed from the batch's changes; only
/// a row whose unchanged TOAST values were filled from an earlier change is a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final<'a> {
    /// Write this row, which may or may not exist yet; `UnchangedToast` datums mean "keep the
    /// destination's value".
    Upsert(Cow<'a, [Datum]>),
    /// Write this row over the existing one (the key existed before the batch).
    Update(Cow<'a, [Datum]>),
    Delete(&'a [Datum]),
}

impl Final<'_> {
    /// The row written, for upserts and updates.
    pub fn written(&self) -> Option<&[Datum]> {
        match self {
            Final::Upsert(r) | Final::Update(r) => Some(r),
            Final::Delete(_) => None,
        }
    }
}

/// Key values of a row (text form; key columns are never TOAST-unchanged).
type Key<'a> = Vec<Option<&'a [u8]>>;

fn key_of<'a>(row: &'a [Datum], key: &[usize]) -> Key<'a> {
    key.iter()
        .map(|&i| match row.get(i) {
            Some(Datum::Text(t)) | Some(Datum::Binary(t)) => Some(&t[..]),
            _ => None,
        })
        .collect()
}

/// The key values of a row, to compare keys (text form).
pub fn key_values<'a>(row: &'a [Datum], key: &[usize]) -> Vec<Option<&'a [u8]>> {
    key_of(row, key)
}

/// For each key that key changes in `ops` moved a row to: the old row (as it was before the
/// batch) whose key finds that row on the destination — through any number of moves in the
/// batch (`X → Y → Z` gives X); `None` when the row was inserted in the batch. A moved row
/// whose unchanged TOAST values are not in the batch must be found under that old key.
#[allow(clippy::type_complexity)]
pub fn moved_from<'a>(
    ops: &'a [RowOp],
    key: &[usize],
) -> HashMap<Vec<Option<&'a [u8]>>, Option<&'a [Datum]>> {
    let mut moved: HashMap<Vec<Option<&'a [u8]>>, Option<&'a [Datum]>> = HashMap::new();
    for op in ops {
        match op {
            RowOp::Insert(row) => {
                moved.insert(key_of(row, key), None);
            }
            RowOp::Update {
                old: Some(old),
                new,
            } => {
                let (from, to) = (key_of(old, key), key_of(new, key));
                if from != to {
                    match moved.remove(&from).unwrap_or(Some(old.as_slice())) {
                        // Back under the key it had before the batch: not moved.
                        Some(first) if key_of(first, key) == to => {}
                        first => {
                            moved.insert(to, first);
                        }
                    }
                }
            }
            RowOp::Update { old: None, .. } | RowOp::Delete(_) => {}
        }
    }
    moved
}

/// The final rows of `finals` that must be moved before they are written: each row whose key
/// changed in `ops` while TOAST values stayed unchanged, with the row under the key it had
/// before the batch, where those values are.
pub fn toast_moves<'r>(
    ops: &'r [RowOp],
    finals: &'r [Final<'_>],
    key: &[usize],
) -> Vec<(&'r [Datum], &'r [Datum])> {
    let moved = moved_from(ops, key);
    finals
        .iter()
        .filter_map(|f| f.written())
        .filter(|row| row.contains(&Datum::UnchangedToast))
        .filter_map(|row| Some((row, (*moved.get(&key_of(row, key))?)?)))
        .collect()
}

/// Final states in first-seen key order, each with whether its key existed before the batch
/// (decided by the key's first change), and where each key's state is.
struct States<'a> {
    /// Final state, whether the key existed before the batch, and the index of the change
    /// that set the state.
    finals: Vec<(Final<'a>, bool, usize)>,
    index: HashMap<Key<'a>, usize, foldhash::fast::RandomState>,
}

impl<'a> States<'a> {
    fn get(&self, k: &Key<'a>) -> Option<&Final<'a>> {
        self.index.get(k).map(|&i| &self.finals[i].0)
    }

    fn set(&mut self, k: Key<'a>, f: Final<'a>, existed_if_first: bool, origin: usize) {
        match self.index.entry(k) {
            Entry::Occupied(e) => {
                let state = &mut self.finals[*e.get()];
                state.0 = f;
                state.2 = origin;
            }
            Entry::Vacant(v) => {
                v.insert(self.finals.len());
                self.finals.push((f, existed_if_first, origin));
            }
        }
    }
}

/// Reduce `ops` (one table, source order) to final states, in first-seen key order.
pub fn reduce<'a>(ops: &'a [RowOp], key: &[usize]) -> Vec<Final<'a>> {
    reduce_with_origin(ops, key)
        .into_iter()
        .map(|(f, _)| f)
        .collect()
}

/// [`reduce`], each final state with the index in `ops` of the change that set it (whose
/// version a versioned destination writes it with; a key change's delete of the old key has
/// the update's).
pub fn reduce_with_origin<'a>(ops: &'a [RowOp], key: &[usize]) -> Vec<(Final<'a>, usize)> {
    let mut states = States {
        finals: Vec::with_capacity(ops.len()),
        index: HashMap::with_capacity_and_hasher(ops.len(), Default::default()),
    };
    for (i, op) in ops.iter().enumerate() {
        match op {
            RowOp::Insert(row) => states.set(key_of(row, key), Final::Upsert(row.into()), false, i),
            RowOp::Update { old, new } => {
                let new_key = key_of(new, key);
                let old_key = old
                    .as_deref()
                    .map(|o| key_of(o, key))
                    .filter(|k| *k != new_key);
                // Unchanged TOAST values come from the earlier state of the row in this batch.
                let mut row: Cow<'a, [Datum]> = Cow::Borrowed(new);
                if new.contains(&Datum::UnchangedToast) {
                    let earlier = states.get(old_key.as_ref().unwrap_or(&new_key));
                    if let Some(prev) = earlier.and_then(|f| f.written()) {
                        let merged: Vec<Datum> = new
                            .iter()
                            .zip(prev)
                            .map(|(d, p)| match d {
                                Datum::UnchangedToast => p.clone(),
                                d => d.clone(),
                            })
                            .collect();
                        row = Cow::Owned(merged);
                    }
                }
                let same_key = old_key.is_none();
                if let Some(k) = old_key {
                    let old_row = old.as_deref().expect("old key implies old row");
                    states.set(k, Final::Delete(old_row), true, i);
                }
                // A new key (the update moved the row) did not exist before, as far as we know.
                states.set(new_key, Final::Upsert(row), same_key, i);
            }
            RowOp::Delete(old) => states.set(key_of(old, key), Final::Delete(old), true, i),
        }
    }
    states
        .finals
        .into_iter()
        .map(|(f, existed, origin)| match (f, existed) {
            (Final::Upsert(row), true) => (Final::Update(row), origin),
            (f, _) => (f, origin),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn t(s: &'static str) -> Datum {
        Datum::Text(Bytes::from_static(s.as_bytes()))
    }

    fn upsert(row: Vec<Datum>) -> Final<'static> {
        Final::Upsert(Cow::Owned(row))
    }

    fn update(row: Vec<Datum>) -> Final<'static> {
        Final::Update(Cow::Owned(row))
    }

    #[test]
    fn last_change_per_key_wins() {
        let ops = vec![
            RowOp::Insert(vec![t("1"), t("a")]),
            RowOp::Update {
                old: None,
                new: vec![t("1"), t("b")],
            },
            RowOp::Insert(vec![t("2"), t("x")]),
            RowOp::Delete(vec![t("2"), Datum::Null]),
        ];
        let r = reduce(&ops, &[0]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], upsert(vec![t("1"), t("b")]));
        assert_eq!(r[1], Final::Delete(&[t("2"), Datum::Null]));
    }

    #[test]
    fn key_change_deletes_the_old_key() {
        let ops = vec![RowOp::Update {
            old: Some(vec![t("1"), Datum::Null]),
            new: vec![t("9"), t("v")],
        }];
        let r = reduce(&ops, &[0]);
        assert_eq!(
            r,
            vec![
                Final::Delete(&[t("1"), Datum::Null]),
                upsert(vec![t("9"), t("v")]),
            ]
        );
        // Moving the key back and forth ends with only the last key present.
        let ops = vec![
            RowOp::Insert(vec![t("1"), t("a")]),
            RowOp::Update {
                old: Some(vec![t("1"), Datum::Null]),
                new: vec![t("2"), t("a")],
            },
            RowOp::Update {
                old: Some(vec![t("2"), Datum::Null]),
                new: vec![t("1"), t("c")],
            },
        ];
        assert_eq!(
            reduce(&ops, &[0]),
            vec![
                upsert(vec![t("1"), t("c")]),
                Final::Delete(&[t("2"), Datum::Null])
            ]
        );
    }

    #[test]
    fn unchanged_toast_takes_the_batch_value_or_stays_unchanged() {
        let ops = vec![
            RowOp::Insert(vec![t("1"), t("big")]),
            RowOp::Update {
                old: None,
                new: vec![t("1"), Datum::UnchangedToast],
            },
            RowOp::Update {
                old: None,
                new: vec![t("2"), Datum::UnchangedToast],
            },
        ];
        let r = reduce(&ops, &[0]);
        assert_eq!(
            r[0],
            upsert(vec![t("1"), t("big")]),
            "filled from the insert in the same batch"
        );
        assert_eq!(
            r[1],
            update(vec![t("2"), Datum::UnchangedToast]),
            "left for the destination to keep"
        );
    }

    #[test]
    fn keys_that_existed_before_the_batch_are_updated_not_upserted() {
        let ops = vec![
            // existed: updated in place
            RowOp::Update {
                old: None,
                new: vec![t("1"), t("a")],
            },
            // existed: deleted, then inserted again
            RowOp::Delete(vec![t("2"), Datum::Null]),
            RowOp::Insert(vec![t("2"), t("b")]),
            // new: inserted, then updated
            RowOp::Insert(vec![t("3"), t("c")]),
            RowOp::Update {
                old: None,
                new: vec![t("3"), t("d")],
            },
            // 4 existed and moved to 5, which is new
            RowOp::Update {
                old: Some(vec![t("4"), Datum::Null]),
                new: vec![t("5"), t("e")],
            },
        ];
        assert_eq!(
            reduce(&ops, &[0]),
            vec![
                update(vec![t("1"), t("a")]),
                update(vec![t("2"), t("b")]),
                upsert(vec![t("3"), t("d")]),
                Final::Delete(&[t("4"), Datum::Null]),
                upsert(vec![t("5"), t("e")]),
            ]
        );
    }
}
