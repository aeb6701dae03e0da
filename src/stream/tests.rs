use super::relation::readded_columns;
use crate::decode::Relation;
use crate::decode::{Column, ReplicaIdentity};
use crate::model::schema::DestColumn;

fn relation(names: &[&str]) -> Relation {
    Relation {
        xid: None,
        id: 1,
        namespace: "public".into(),
        name: "t".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: names
            .iter()
            .map(|n| Column {
                is_key: *n == "id",
                name: (*n).into(),
                type_oid: 23,
                type_modifier: -1,
            })
            .collect(),
    }
}

fn dest(names: &[&str]) -> Vec<DestColumn> {
    names
        .iter()
        .map(|n| DestColumn {
            name: (*n).into(),
            type_name: "integer".into(),
            key: *n == "id",
        })
        .collect()
}

fn readded(src: &[&str], dst: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = readded_columns(&relation(src), &dest(dst))
        .into_iter()
        .collect();
    v.sort();
    v
}

#[test]
fn columns_dropped_and_added_again_are_found_by_their_new_place() {
    assert!(readded(&["id", "a", "b"], &["id", "a", "b"]).is_empty());
    assert_eq!(readded(&["id", "c", "b"], &["id", "b", "c"]), ["b"]);
    // DROP b; ADD c; ADD b: b comes after a column the destination lacks.
    assert_eq!(readded(&["id", "a", "c", "b"], &["id", "a", "b"]), ["b"]);
    // Plain additions and drops are not re-additions.
    assert!(readded(&["id", "a", "b", "c"], &["id", "a", "b"]).is_empty());
    assert!(readded(&["id", "b"], &["id", "a", "b"]).is_empty());
    assert_eq!(readded(&["id", "b", "a"], &["id", "a", "b"]), ["a"]);
}
