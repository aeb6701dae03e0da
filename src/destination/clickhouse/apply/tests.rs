use super::*;

#[test]
fn a_row_moved_twice_is_looked_up_by_its_first_key() {
    let t = |s: &'static str| Datum::Text(bytes::Bytes::from_static(s.as_bytes()));
    let ops = vec![
        RowOp::Update {
            old: Some(vec![t("1"), Datum::Null]),
            new: vec![t("2"), Datum::UnchangedToast],
        },
        RowOp::Update {
            old: Some(vec![t("2"), Datum::Null]),
            new: vec![t("3"), Datum::UnchangedToast],
        },
        RowOp::Insert(vec![t("8"), t("x")]),
        RowOp::Update {
            old: Some(vec![t("8"), Datum::Null]),
            new: vec![t("9"), Datum::UnchangedToast],
        },
    ];
    let moved = moved_from(&ops, &[0]);
    let there_and_back = vec![
        RowOp::Update {
            old: Some(vec![t("5"), Datum::Null]),
            new: vec![t("50"), Datum::UnchangedToast],
        },
        RowOp::Update {
            old: Some(vec![t("50"), Datum::Null]),
            new: vec![t("5"), Datum::UnchangedToast],
        },
    ];
    assert!(
        moved_from(&there_and_back, &[0]).is_empty(),
        "a row back under its own key was not moved"
    );
    let three = moved.get(&vec![Some(&b"3"[..])]).unwrap().unwrap();
    assert_eq!(three[0], t("1"));
    assert!(!moved.contains_key(&vec![Some(&b"2"[..])]));
    assert_eq!(
        moved.get(&vec![Some(&b"9"[..])]),
        Some(&None),
        "inserted in the batch"
    );
}

#[test]
fn wrappers_do_not_make_a_column_differ_from_its_source() {
    assert_eq!(strip_nullable("LowCardinality(Nullable(String))"), "String");
    assert_eq!(strip_nullable("Nullable(Decimal(12, 2))"), "Decimal(12, 2)");
    assert_eq!(
        strip_nullable("DateTime64(6, 'UTC')"),
        "DateTime64(6, 'UTC')"
    );
}
