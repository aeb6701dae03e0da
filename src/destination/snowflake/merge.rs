//! The MERGE that applies a table's final states, and how statements are kept under
//! Snowflake's size limit.

use super::types::{convert, quote};
use crate::model::change::TableMap;

/// Bytes of SQL text per statement: Snowflake refuses statements over 1 MB.
pub const MAX_STATEMENT: usize = 900_000;

pub fn key_match(t: &TableMap, left: &str, right: &str) -> String {
    t.key
        .iter()
        .map(|&k| {
            let c = quote(&t.columns[k].name);
            format!("{left}.{c} = {right}.{c}")
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The MERGE of staged final states: the table's columns, then `cdc_op` ('D' delete, 'U'
/// upsert) and `cdc_keep` (one '0'/'1' per column: keep the destination's value). The kept
/// values are taken in the source subquery (joined with the table), so that `UPDATE SET` and
/// `INSERT` name plain columns only: what every MERGE implementation takes, the emulator's too.
pub fn merge_sql(t: &TableMap, dest: &str, rows: &[String]) -> String {
    let n = t.columns.len();
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
    let keep = format!("v.\"c{}\"", n + 1);
    let mut select: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let new = convert(&c.dest_type, &format!("v.\"c{i}\""));
            if t.key.contains(&i) {
                format!("{new} AS {}", cols[i])
            } else {
                format!(
                    "IFF(SUBSTR({keep}, {p}, 1) = '1', o.{c}, {new}) AS {c}",
                    p = i + 1,
                    c = cols[i]
                )
            }
        })
        .collect();
    select.push(format!("v.\"c{n}\" AS \"cdc_op\""));
    select.push(format!("{keep} AS \"cdc_keep\""));
    let names: Vec<String> = (0..n + 2).map(|i| format!("\"c{i}\"")).collect();
    let old_key: Vec<String> = t
        .key
        .iter()
        .map(|&k| {
            format!(
                "o.{} = {}",
                cols[k],
                convert(&t.columns[k].dest_type, &format!("v.\"c{k}\""))
            )
        })
        .collect();
    let source = format!(
        "SELECT {} FROM (VALUES {}) AS v ({}) LEFT JOIN {dest} AS o ON {}",
        select.join(", "),
        rows.join(", "),
        names.join(", "),
        old_key.join(" AND ")
    );
    let sets: Vec<String> = (0..n)
        .filter(|i| !t.key.contains(i))
        .map(|i| format!("{c} = s.{c}", c = cols[i]))
        .collect();
    let update = if sets.is_empty() {
        String::new()
    } else {
        format!(" WHEN MATCHED THEN UPDATE SET {}", sets.join(", "))
    };
    let values: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
    format!(
        "MERGE INTO {dest} AS d USING ({source}) AS s ON {on} \
         WHEN MATCHED AND s.\"cdc_op\" = 'D' THEN DELETE{update} \
         WHEN NOT MATCHED AND s.\"cdc_op\" = 'U' AND CONTAINS(s.\"cdc_keep\", '1') = FALSE THEN INSERT ({cols}) VALUES ({values})",
        on = key_match(t, "d", "s"),
        cols = cols.join(", "),
        values = values.join(", "),
    )
}

/// Groups of items whose joined length stays under `MAX_STATEMENT`.
pub fn chunks(items: Vec<String>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut size = 0;
    for item in items {
        if out.is_empty() || size + item.len() > MAX_STATEMENT {
            out.push(Vec::new());
            size = 0;
        }
        size += item.len() + 2;
        out.last_mut().expect("pushed above").push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::MappedColumn;
    use crate::model::schema::TableName;

    fn table() -> TableMap {
        TableMap {
            relation_id: 1,
            source: TableName::parse("public.t").unwrap(),
            dest: TableName::parse("public.t").unwrap(),
            columns: vec![
                MappedColumn {
                    name: "id".into(),
                    dest_type: "NUMBER(10,0)".into(),
                },
                MappedColumn {
                    name: "doc".into(),
                    dest_type: "VARIANT".into(),
                },
            ],
            key: vec![0],
            identity_key: false,
        }
    }

    #[test]
    fn one_merge_deletes_updates_keeps_and_inserts() {
        let sql = merge_sql(
            &table(),
            "\"DB\".\"public\".\"t\"",
            &["('1', '{}', 'U', '00')".into()],
        );
        assert!(sql.starts_with("MERGE INTO \"DB\".\"public\".\"t\" AS d USING (SELECT v.\"c0\"::NUMBER(10,0) AS \"id\", IFF(SUBSTR(v.\"c3\", 2, 1) = '1', o.\"doc\", PARSE_JSON(v.\"c1\")) AS \"doc\", v.\"c2\" AS \"cdc_op\", v.\"c3\" AS \"cdc_keep\" FROM (VALUES ('1', '{}', 'U', '00')) AS v (\"c0\", \"c1\", \"c2\", \"c3\") LEFT JOIN \"DB\".\"public\".\"t\" AS o ON o.\"id\" = v.\"c0\"::NUMBER(10,0)) AS s"), "{sql}");
        assert!(sql.contains("WHEN MATCHED AND s.\"cdc_op\" = 'D' THEN DELETE WHEN MATCHED THEN UPDATE SET \"doc\" = s.\"doc\""), "{sql}");
        assert!(sql.contains("ON d.\"id\" = s.\"id\""), "{sql}");
    }

    #[test]
    fn statements_stay_under_snowflakes_limit() {
        let rows: Vec<String> = (0..30).map(|_| "x".repeat(100_000)).collect();
        let groups = chunks(rows);
        assert_eq!(groups.len(), 4);
        assert!(groups
            .iter()
            .all(|g| g.iter().map(|r| r.len() + 2).sum::<usize>() <= MAX_STATEMENT + 2));
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 30);
    }
}
