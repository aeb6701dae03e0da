//! The order a pass takes its tables in: parents before the tables whose foreign keys point
//! at them, so a destination that enforces the keys accepts every batch (inserts of a child
//! find their parent rows), and the deletes a pass defers run children first.

use std::collections::{HashMap, HashSet};

use crate::model::schema::TableName;

/// `tables` (source names, in configured order) in waves: each wave's tables reference only
/// tables of earlier waves, so one wave's tables may be synced at once. Foreign keys to
/// tables outside `tables`, or to the table itself, do not order anything. The tables of a
/// cycle go one at a time in configured order (their keys cannot all hold while loading), and
/// what depends on them after.
pub fn waves(
    tables: &[TableName],
    parents: &HashMap<TableName, Vec<TableName>>,
) -> Vec<Vec<usize>> {
    let wanted: HashSet<&TableName> = tables.iter().collect();
    let depends = |i: usize| -> Vec<&TableName> {
        parents.get(&tables[i]).map_or(Vec::new(), |ps| {
            ps.iter()
                .filter(|p| *p != &tables[i] && wanted.contains(p))
                .collect()
        })
    };
    let mut done: HashSet<&TableName> = HashSet::new();
    let mut rest: Vec<usize> = (0..tables.len()).collect();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (ready, waiting): (Vec<usize>, Vec<usize>) = rest
            .iter()
            .partition(|&&i| depends(i).iter().all(|p| done.contains(p)));
        // Nothing ready: the rest reference each other (a cycle, or depend on one). The first
        // in configured order goes alone, which breaks the cycle for the others.
        let (wave, waiting) = if ready.is_empty() {
            (vec![waiting[0]], waiting[1..].to_vec())
        } else {
            (ready, waiting)
        };
        done.extend(wave.iter().map(|&i| &tables[i]));
        out.push(wave);
        rest = waiting;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableName {
        TableName::parse(&format!("public.{name}")).unwrap()
    }

    fn parents(edges: &[(&str, &[&str])]) -> HashMap<TableName, Vec<TableName>> {
        edges
            .iter()
            .map(|(c, ps)| (t(c), ps.iter().map(|p| t(p)).collect()))
            .collect()
    }

    #[test]
    fn parents_come_a_wave_before_their_children() {
        // film_work ← genre_film_work → genre; person ← person_film_work → film_work.
        let tables = [
            t("genre_film_work"),
            t("film_work"),
            t("genre"),
            t("person_film_work"),
            t("person"),
        ];
        let p = parents(&[
            ("genre_film_work", &["film_work", "genre"]),
            ("person_film_work", &["film_work", "person"]),
        ]);
        assert_eq!(waves(&tables, &p), vec![vec![1, 2, 4], vec![0, 3]]);
    }

    #[test]
    fn chains_self_references_and_unchosen_parents() {
        let tables = [t("c"), t("b"), t("a")];
        let p = parents(&[
            ("c", &["b", "c"]),
            ("b", &["a", "elsewhere"]),
            ("a", &["a"]),
        ]);
        assert_eq!(waves(&tables, &p), vec![vec![2], vec![1], vec![0]]);
    }

    #[test]
    fn a_cycle_is_broken_at_its_first_configured_table() {
        let tables = [t("x"), t("y"), t("free"), t("after")];
        let p = parents(&[("x", &["y"]), ("y", &["x"]), ("after", &["y"])]);
        assert_eq!(waves(&tables, &p), vec![vec![2], vec![0], vec![1], vec![3]]);
    }

    #[test]
    fn no_foreign_keys_is_one_wave_in_configured_order() {
        let tables = [t("b"), t("a")];
        assert_eq!(waves(&tables, &HashMap::new()), vec![vec![0, 1]]);
    }
}
