//! SQL that creates a destination table "like the source". Pure functions over `catalog`
//! values; every name is quoted.
//!
//! The table is created without its primary key and indexes; they are added after the rows
//! are loaded (`add_primary_key`, `create_index`), which is much faster than maintaining them
//! row by row. Foreign keys are never copied: changes are applied table by table, and a
//! constraint across tables would reject valid intermediate states.

use crate::model::schema::TableName;
use crate::model::schema::{IndexDef, TableSchema, UserType};
use crate::model::sql::{quote_ident, quote_literal};

/// `CREATE SCHEMA IF NOT EXISTS`.
pub fn create_schema(schema: &str) -> String {
    format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema))
}

/// The statement creating a user-defined type, or `None` for types we cannot create.
pub fn create_type(t: &UserType) -> Option<String> {
    Some(match t {
        UserType::Enum { name, labels } => {
            let labels: Vec<String> = labels.iter().map(|l| quote_literal(l)).collect();
            format!("CREATE TYPE {name} AS ENUM ({})", labels.join(", "))
        }
        UserType::Domain {
            name,
            base,
            not_null,
            checks,
        } => {
            let mut sql = format!("CREATE DOMAIN {name} AS {base}");
            if *not_null {
                sql.push_str(" NOT NULL");
            }
            for c in checks {
                sql.push(' ');
                sql.push_str(c);
            }
            sql
        }
        UserType::Composite { name, attributes } => {
            let attrs: Vec<String> = attributes
                .iter()
                .map(|(n, t)| format!("{} {t}", quote_ident(n)))
                .collect();
            format!("CREATE TYPE {name} AS ({})", attrs.join(", "))
        }
        UserType::External { .. } => return None,
    })
}

/// `CREATE TABLE` with columns, types, NOT NULL and generated columns; no keys yet.
pub fn create_table(dest: &TableName, t: &TableSchema) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let mut col = format!("{} {}", quote_ident(&c.name), c.type_sql);
            if let Some(expr) = &c.generated {
                col.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"));
            }
            if c.not_null {
                col.push_str(" NOT NULL");
            }
            col
        })
        .collect();
    format!("CREATE TABLE {} ({})", dest.quoted(), cols.join(", "))
}

/// `ALTER TABLE ... ADD PRIMARY KEY`, or `None` for a table without one.
pub fn add_primary_key(dest: &TableName, t: &TableSchema) -> Option<String> {
    if t.primary_key.is_empty() {
        return None;
    }
    let list = |names: &[String]| {
        names
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let include = if t.key_include.is_empty() {
        String::new()
    } else {
        format!(" INCLUDE ({})", list(&t.key_include))
    };
    Some(format!(
        "ALTER TABLE {} ADD PRIMARY KEY ({}){include}",
        dest.quoted(),
        list(&t.primary_key)
    ))
}

/// `REPLICA IDENTITY FULL` when the source uses it, so the destination could itself be a source.
pub fn replica_identity(dest: &TableName, t: &TableSchema) -> Option<String> {
    (t.replica_identity == 'f')
        .then(|| format!("ALTER TABLE {} REPLICA IDENTITY FULL", dest.quoted()))
}

/// The source index re-targeted at the destination table (same name, in the table's schema).
pub fn create_index(dest: &TableName, idx: &IndexDef) -> String {
    format!(
        "CREATE {}INDEX {} ON {}{}",
        if idx.unique { "UNIQUE " } else { "" },
        quote_ident(&idx.name),
        dest.quoted(),
        idx.definition_tail
    )
}

/// Every row of a table, its text keys ordered by their bytes (`COLLATE "C"`).
pub fn select_by_key(map: &crate::model::change::TableMap, text_key: &[bool]) -> String {
    let cols: Vec<String> = map.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let order: Vec<String> = map
        .key
        .iter()
        .zip(text_key)
        .map(|(&k, &text)| {
            let col = quote_ident(&map.columns[k].name);
            if text {
                format!("{col} COLLATE \"C\"")
            } else {
                col
            }
        })
        .collect();
    format!(
        "SELECT {} FROM {} ORDER BY {}",
        cols.join(", "),
        map.dest.quoted(),
        order.join(", ")
    )
}

/// `ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY`, named like Postgres names its own.
pub fn add_foreign_key(dest: &TableName, fk: &crate::model::schema::DestForeignKey) -> String {
    let list = |cols: &[String]| {
        cols.iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut name = format!("{}_{}_fkey", dest.name, fk.columns.join("_"));
    while name.len() > 63 {
        name.pop();
    }
    let action = |a: &str| match a.to_ascii_uppercase().as_str() {
        "CASCADE" => "CASCADE",
        "SET NULL" => "SET NULL",
        "SET DEFAULT" => "SET DEFAULT",
        "RESTRICT" => "RESTRICT",
        _ => "NO ACTION",
    };
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {} ON UPDATE {}",
        dest.quoted(),
        quote_ident(&name),
        list(&fk.columns),
        fk.references.quoted(),
        list(&fk.referenced_columns),
        action(&fk.on_delete),
        action(&fk.on_update)
    )
}

/// `COPY ... FROM STDIN` with the columns the source side copies, in the same order.
pub fn copy_in(dest: &TableName, table: &TableSchema, binary: bool) -> String {
    let format = if binary { " (FORMAT binary)" } else { "" };
    format!(
        "COPY {} ({}) FROM STDIN{format}",
        dest.quoted(),
        crate::model::sql::column_list(table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::ColumnDef;

    fn table() -> TableSchema {
        let col = |name: &str, ty: &str, not_null: bool| ColumnDef {
            name: name.into(),
            type_sql: ty.into(),
            type_oid: 23,
            not_null,
            dims: 0,
            generated: None,
        };
        let mut total = col("Total", "numeric(10,2)", false);
        total.generated = Some("(price * 2)".into());
        TableSchema {
            name: TableName::parse("public.orders").unwrap(),
            oid: 1,
            columns: vec![
                col("id", "bigint", true),
                col("tags", "public.\"Tag\"[]", false),
                total,
            ],
            primary_key: vec!["id".into()],
            key_include: Vec::new(),
            replica_identity: 'f',
            indexes: vec![],
            estimated_rows: 0,
            pages: 0,
            partitioned: false,
            leaves: vec![],
        }
    }

    #[test]
    fn table_keeps_types_nullability_and_generated_columns() {
        let dest = TableName::parse("\"Analytics\".orders").unwrap();
        assert_eq!(
            create_table(&dest, &table()),
            "CREATE TABLE \"Analytics\".\"orders\" (\"id\" bigint NOT NULL, \"tags\" public.\"Tag\"[], \
             \"Total\" numeric(10,2) GENERATED ALWAYS AS ((price * 2)) STORED)"
        );
        assert_eq!(
            add_primary_key(&dest, &table()).unwrap(),
            "ALTER TABLE \"Analytics\".\"orders\" ADD PRIMARY KEY (\"id\")"
        );
        assert!(replica_identity(&dest, &table())
            .unwrap()
            .ends_with("REPLICA IDENTITY FULL"));
        assert_eq!(
            copy_in(&dest, &table(), true),
            "COPY \"Analytics\".\"orders\" (\"id\", \"tags\") FROM STDIN (FORMAT binary)",
            "generated columns are recomputed, not copied"
        );
    }

    #[test]
    fn types_and_indexes() {
        let e = UserType::Enum {
            name: "public.mood".into(),
            labels: vec!["it's".into(), "ok".into()],
        };
        assert_eq!(
            create_type(&e).unwrap(),
            "CREATE TYPE public.mood AS ENUM ('it''s', 'ok')"
        );
        let d = UserType::Domain {
            name: "public.pos".into(),
            base: "integer".into(),
            not_null: true,
            checks: vec!["CHECK ((VALUE > 0))".into()],
        };
        assert_eq!(
            create_type(&d).unwrap(),
            "CREATE DOMAIN public.pos AS integer NOT NULL CHECK ((VALUE > 0))"
        );
        assert_eq!(
            create_type(&UserType::External {
                name: "public.citext".into(),
                kind: "base".into()
            }),
            None
        );
        let idx = IndexDef {
            name: "by name".into(),
            definition_tail: " USING btree (lower(name)) WHERE (id > 0)".into(),
            unique: true,
        };
        assert_eq!(
            create_index(&TableName::parse("a.b").unwrap(), &idx),
            "CREATE UNIQUE INDEX \"by name\" ON \"a\".\"b\" USING btree (lower(name)) WHERE (id > 0)"
        );
    }
}
