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
