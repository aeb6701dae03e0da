//! Reducing the ordered changes of one table in a batch to one final state per key, so the
//! destination gets one set-based statement per kind instead of one per row.
//!
//! Rules: the last change of a key wins; an UPDATE that changes the key deletes the old key;
//! a column the source marked "unchanged TOAST" takes the value an earlier change of the same
//! batch gave it, and otherwise is left untouched in the destination (never set to NULL).

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

/// The final state of one key after a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    /// Write this row; `UnchangedToast` datums mean "keep the destination's value".
    Upsert(Vec<Datum>),
    Delete(Vec<Datum>),
}

/// Key values of a row (text form; key columns are never TOAST-unchanged).
pub type Key = Vec<Option<bytes::Bytes>>;

fn key_of(row: &[Datum], key: &[usize]) -> Key {
    key.iter()
        .map(|&i| match row.get(i) {
            Some(Datum::Text(t)) | Some(Datum::Binary(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// Reduce `ops` (one table, source order) to final states, in first-seen key order.
pub fn reduce(ops: &[RowOp], key: &[usize]) -> Vec<(Key, Final)> {
    let mut order: Vec<Key> = Vec::new();
    let mut state: HashMap<Key, Final> = HashMap::new();
    fn set(state: &mut HashMap<Key, Final>, order: &mut Vec<Key>, k: Key, f: Final) {
        if state.insert(k.clone(), f).is_none() {
            order.push(k);
        }
    }
    for op in ops {
        match op {
            RowOp::Insert(row) => set(
                &mut state,
                &mut order,
                key_of(row, key),
                Final::Upsert(row.clone()),
            ),
            RowOp::Update { old, new } => {
                let new_key = key_of(new, key);
                let mut row = new.clone();
                let old_key = old
                    .as_ref()
                    .map(|o| key_of(o, key))
                    .filter(|k| *k != new_key);
                // Unchanged TOAST values come from the earlier state of the row in this batch.
                let earlier = match &old_key {
                    Some(k) => state.get(k),
                    None => state.get(&new_key),
                };
                if let Some(Final::Upsert(prev)) = earlier {
                    for (d, p) in row.iter_mut().zip(prev) {
                        if *d == Datum::UnchangedToast {
                            *d = p.clone();
                        }
                    }
                }
                if let Some(k) = old_key {
                    let old_row = old.clone().expect("old key implies old row");
                    set(&mut state, &mut order, k, Final::Delete(old_row));
                }
                set(&mut state, &mut order, new_key, Final::Upsert(row));
            }
            RowOp::Delete(old) => set(
                &mut state,
                &mut order,
                key_of(old, key),
                Final::Delete(old.clone()),
            ),
        }
    }
    order
        .into_iter()
        .map(|k| {
            let f = state.remove(&k).expect("every ordered key has a state");
            (k, f)
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
        assert_eq!(r[0].1, Final::Upsert(vec![t("1"), t("b")]));
        assert_eq!(r[1].1, Final::Delete(vec![t("2"), Datum::Null]));
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
                (
                    vec![Some(Bytes::from_static(b"1"))],
                    Final::Delete(vec![t("1"), Datum::Null])
                ),
                (
                    vec![Some(Bytes::from_static(b"9"))],
                    Final::Upsert(vec![t("9"), t("v")])
                ),
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
        let r = reduce(&ops, &[0]);
        let finals: Vec<_> = r.into_iter().map(|(_, f)| f).collect();
        assert_eq!(
            finals,
            vec![
                Final::Upsert(vec![t("1"), t("c")]),
                Final::Delete(vec![t("2"), Datum::Null])
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
            r[0].1,
            Final::Upsert(vec![t("1"), t("big")]),
            "filled from the insert in the same batch"
        );
        assert_eq!(
            r[1].1,
            Final::Upsert(vec![t("2"), Datum::UnchangedToast]),
            "left for the destination to keep"
        );
    }
}
