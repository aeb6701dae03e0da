//! Set-based statements over `unnest` of text arrays. Every value travels as its text form and
//! is cast to the destination column's type, which is exactly what COPY's text format does,
//! so values arrive byte-exact. Every identifier is quoted.

use crate::model::change::TableMap;
use crate::model::sql::quote_ident;

/// `unnest($1::text[], ...) AS u(c0, ...)` for the given column positions, parameters from 1.
fn unnest(cols: &[usize]) -> String {
    let arrays: Vec<String> = (1..=cols.len()).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = cols.iter().map(|c| format!("c{c}")).collect();
    format!("unnest({}) AS u({})", arrays.join(", "), aliases.join(", "))
}

fn cast(t: &TableMap, col: usize, alias: &str) -> String {
    format!("CAST({alias} AS {})", t.columns[col].dest_type)
}

fn key_match(t: &TableMap) -> String {
    t.key
        .iter()
        .map(|&k| {
            format!(
                "d.{} = {}",
                quote_ident(&t.columns[k].name),
                cast(t, k, &format!("u.c{k}"))
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Insert rows (all columns), updating every non-key column of existing keys.
pub fn upsert(t: &TableMap) -> String {
    let all: Vec<usize> = (0..t.columns.len()).collect();
    let names: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = all
        .iter()
        .map(|&i| cast(t, i, &format!("u.c{i}")))
        .collect();
    let keys: Vec<String> = t
        .key
        .iter()
        .map(|&k| quote_ident(&t.columns[k].name))
        .collect();
    let updates: Vec<String> = all
        .iter()
        .filter(|i| !t.key.contains(i))
        .map(|&i| format!("{0} = EXCLUDED.{0}", quote_ident(&t.columns[i].name)))
        .collect();
    let action = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {action}",
        t.dest.quoted(),
        names.join(", "),
        values.join(", "),
        unnest(&all),
        keys.join(", ")
    )
}

/// Update only the `present` non-key columns of existing keys (the others were unchanged
/// TOAST values). Returns the statement and the columns its parameters take, in order: key
/// columns, then present ones. `None` if nothing to set.
pub fn update_present(t: &TableMap, present: &[usize]) -> Option<(String, Vec<usize>)> {
    let set: Vec<usize> = present
        .iter()
        .copied()
        .filter(|i| !t.key.contains(i))
        .collect();
    if set.is_empty() {
        return None;
    }
    let cols: Vec<usize> = t.key.iter().copied().chain(set.iter().copied()).collect();
    let assignments: Vec<String> = set
        .iter()
        .map(|&i| {
            format!(
                "{} = {}",
                quote_ident(&t.columns[i].name),
                cast(t, i, &format!("u.c{i}"))
            )
        })
        .collect();
    let sql = format!(
        "UPDATE {} AS d SET {} FROM {} WHERE {}",
        t.dest.quoted(),
        assignments.join(", "),
        unnest(&cols),
        key_match(t)
    );
    Some((sql, cols))
}

/// The temporary table that rows moving to new keys are parked in (see `PgSession::move_rows`).
pub const MOVED: &str = "pg_temp.cdc_moved_rows";

/// Park the rows that moves take to new keys: each old row, as it is now, under its new key.
/// Parameters: the new key values, then the old ones (text arrays, one row per move).
pub fn park_moved(t: &TableMap) -> String {
    let k = t.key.len();
    let arrays: Vec<String> = (1..=2 * k).map(|i| format!("${i}::text[]")).collect();
    let aliases: Vec<String> = t
        .key
        .iter()
        .map(|c| format!("n{c}"))
        .chain(t.key.iter().map(|c| format!("o{c}")))
        .collect();
    let names: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = (0..t.columns.len())
        .map(|i| {
            if t.key.contains(&i) {
                cast(t, i, &format!("u.n{i}"))
            } else {
                format!("d.{}", quote_ident(&t.columns[i].name))
            }
        })
        .collect();
    let old_key: Vec<String> = t
        .key
        .iter()
        .map(|&c| {
            format!(
                "d.{} = {}",
                quote_ident(&t.columns[c].name),
                cast(t, c, &format!("u.o{c}"))
            )
        })
        .collect();
    format!(
        "INSERT INTO {MOVED} ({}) SELECT {} FROM {} AS d, unnest({}) AS u({}) WHERE {}",
        names.join(", "),
        values.join(", "),
        t.dest.quoted(),
        arrays.join(", "),
        aliases.join(", "),
        old_key.join(" AND ")
    )
}

/// Put the parked rows back into the table, under their new keys.
pub fn unpark_moved(t: &TableMap) -> String {
    let names: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    format!(
        "INSERT INTO {} ({n}) SELECT {n} FROM {MOVED}",
        t.dest.quoted(),
        n = names.join(", ")
    )
}

/// Delete rows by key. Parameters: key columns.
pub fn delete(t: &TableMap) -> String {
    format!(
        "DELETE FROM {} AS d USING {} WHERE {}",
        t.dest.quoted(),
        unnest(&t.key),
        key_match(t)
    )
}

/// Keyless tables: insert one row (parameters: every column).
pub fn insert_plain(t: &TableMap) -> String {
    let all: Vec<usize> = (0..t.columns.len()).collect();
    let names: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = all
        .iter()
        .map(|&i| cast(t, i, &format!("u.c{i}")))
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {}",
        t.dest.quoted(),
        names.join(", "),
        values.join(", "),
        unnest(&all)
    )
}

/// Keyless tables: the ctid of one row whose every value prints exactly as the old row given
/// as parameters `$first..` (one per column). By the type's output text, not `=`: `=` cannot
/// tell `-0` from `0` or `1.0` from `1.00`, treats strings a nondeterministic collation calls
/// equal as the same, and json, point, box or xml have none. `format('%s', …)` is that output
/// text (a `::text` cast is not: `true::text` is `true`, its output `t`; `char(n)` loses its
/// padding), compared bytewise (`COLLATE "C"`); NULL only matches NULL.
fn one_matching_row(t: &TableMap, first: usize) -> String {
    let conds: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let col = quote_ident(&c.name);
            format!(
                "(CASE WHEN m.{col} IS NULL THEN NULL ELSE format('%s', m.{col}) END) COLLATE \"C\" \
                 IS NOT DISTINCT FROM ${}::text COLLATE \"C\"",
                first + i
            )
        })
        .collect();
    format!(
        "(SELECT ctid FROM {} AS m WHERE {} LIMIT 1)",
        t.dest.quoted(),
        conds.join(" AND ")
    )
}

/// Keyless tables: delete one row equal to the old row (parameters: every column).
pub fn delete_one(t: &TableMap) -> String {
    format!(
        "DELETE FROM {} WHERE ctid = {}",
        t.dest.quoted(),
        one_matching_row(t, 1)
    )
}

/// Keyless tables: update one row equal to the old row. Parameters: the `present` new values,
/// then every column of the old row.
pub fn update_one(t: &TableMap, present: &[usize]) -> Option<String> {
    if present.is_empty() {
        return None;
    }
    let assignments: Vec<String> = present
        .iter()
        .enumerate()
        .map(|(p, &i)| {
            format!(
                "{} = CAST(${}::text AS {})",
                quote_ident(&t.columns[i].name),
                p + 1,
                t.columns[i].dest_type
            )
        })
        .collect();
    Some(format!(
        "UPDATE {} SET {} WHERE ctid = {}",
        t.dest.quoted(),
        assignments.join(", "),
        one_matching_row(t, present.len() + 1)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::MappedColumn;
    use crate::model::schema::TableName;

    fn table(key: Vec<usize>) -> TableMap {
        let col = |n: &str, ty: &str| MappedColumn {
            name: n.into(),
            dest_type: ty.into(),
        };
        TableMap {
            relation_id: 1,
            source: TableName::parse("public.t").unwrap(),
            dest: TableName::parse("public.t").unwrap(),
            columns: vec![
                col("id", "integer"),
                col("Name", "text"),
                col("doc", "jsonb"),
            ],
            key,
            identity_key: false,
        }
    }

    #[test]
    fn upsert_casts_every_value_and_updates_non_key_columns() {
        assert_eq!(
            upsert(&table(vec![0])),
            "INSERT INTO \"public\".\"t\" (\"id\", \"Name\", \"doc\") SELECT CAST(u.c0 AS integer), CAST(u.c1 AS text), \
             CAST(u.c2 AS jsonb) FROM unnest($1::text[], $2::text[], $3::text[]) AS u(c0, c1, c2) ON CONFLICT (\"id\") \
             DO UPDATE SET \"Name\" = EXCLUDED.\"Name\", \"doc\" = EXCLUDED.\"doc\""
        );
    }

    #[test]
    fn partial_update_skips_unchanged_columns() {
        let (sql, cols) = update_present(&table(vec![0]), &[0, 1]).unwrap();
        assert_eq!(cols, [0, 1]);
        assert_eq!(
            sql,
            "UPDATE \"public\".\"t\" AS d SET \"Name\" = CAST(u.c1 AS text) FROM unnest($1::text[], $2::text[]) AS u(c0, c1) \
             WHERE d.\"id\" = CAST(u.c0 AS integer)"
        );
        assert_eq!(update_present(&table(vec![0]), &[0]), None);
    }

    #[test]
    fn delete_and_keyless_statements() {
        assert_eq!(
            delete(&table(vec![0])),
            "DELETE FROM \"public\".\"t\" AS d USING unnest($1::text[]) AS u(c0) WHERE d.\"id\" = CAST(u.c0 AS integer)"
        );
        let keyless = table(vec![]);
        assert!(
            delete_one(&keyless).contains(
                "(CASE WHEN m.\"doc\" IS NULL THEN NULL ELSE format('%s', m.\"doc\") END) COLLATE \"C\" \
                 IS NOT DISTINCT FROM $3::text COLLATE \"C\" LIMIT 1"
            ),
            "{}",
            delete_one(&keyless)
        );
        let upd = update_one(&keyless, &[1]).unwrap();
        assert!(upd.starts_with("UPDATE \"public\".\"t\" SET \"Name\" = CAST($1::text AS text) WHERE ctid = (SELECT ctid"), "{upd}");
        assert!(
            upd.contains("format('%s', m.\"id\") END) COLLATE \"C\" IS NOT DISTINCT FROM $2::text"),
            "{upd}"
        );
    }
}
