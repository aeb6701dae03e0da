//! A SQLite table's shape, read from its pragmas, as the `TableSchema` every destination
//! creates tables from.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::types::{pg_type, Kind};
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use crate::model::schema::{ColumnDef, IndexDef, TableSchema};
use crate::model::sql::quote_ident;

/// A SQLite table as the destination sees it.
#[derive(Debug, Clone)]
pub struct SqliteTable {
    /// Columns as named on the destination (renames applied), typed for a new table.
    pub schema: TableSchema,
    /// The SQLite name of each of `schema.columns`, in the same order.
    pub source_columns: Vec<String>,
    /// The kind of each column by its declared type.
    pub kinds: Vec<Kind>,
    pub foreign_keys: Vec<ForeignKey>,
}

/// A foreign key, in SQLite's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub columns: Vec<String>,
    pub references: TableName,
    /// The referenced columns (its primary key when the declaration names none).
    pub referenced_columns: Vec<String>,
    pub on_delete: String,
    pub on_update: String,
}

/// Tables of a schema (`main`, or an attached database's name), internal ones left out.
pub fn list_tables(conn: &Connection, schema: &str) -> Result<Vec<TableName>> {
    let sql = format!(
        "SELECT name FROM {}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        quote_ident(schema)
    );
    let mut stmt = conn
        .prepare(&sql)
        .map_err(Error::sqlite("listing SQLite tables"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
        .map_err(Error::sqlite("listing SQLite tables"))?;
    Ok(names
        .into_iter()
        .map(|name| TableName {
            schema: schema.to_owned(),
            name,
        })
        .collect())
}

/// The table `name` (`main.film_work`), or `None` when the file has no such table.
pub fn read_table(conn: &Connection, name: &TableName) -> Result<Option<SqliteTable>> {
    let ctx = || format!("reading the SQLite schema of {name}");
    let db = quote_ident(&name.schema);
    let table = quote_ident(&name.name);
    let exists: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM {db}.sqlite_master WHERE type = 'table' AND name = ?1"),
            [&name.name],
            |r| r.get(0),
        )
        .map_err(Error::sqlite(ctx()))?;
    if exists == 0 {
        return Ok(None);
    }
    // cid, name, type, notnull, dflt_value, pk (position in the key, 0 when not in it)
    let mut stmt = conn
        .prepare(&format!("PRAGMA {db}.table_info({table})"))
        .map_err(Error::sqlite(ctx()))?;
    let cols: Vec<(String, String, bool, i64)> = stmt
        .query_map([], |r| {
            Ok((r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0, r.get(5)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(Error::sqlite(ctx()))?;
    let mut key: Vec<(i64, String)> = cols
        .iter()
        .filter(|c| c.3 > 0)
        .map(|c| (c.3, c.0.clone()))
        .collect();
    key.sort();
    let primary_key: Vec<String> = key.into_iter().map(|(_, n)| n).collect();
    let mut kinds = Vec::new();
    let columns = cols
        .iter()
        .map(|(col, declared, not_null, pk)| {
            let (kind, type_sql, type_oid) = pg_type(declared);
            kinds.push(kind);
            ColumnDef {
                name: col.clone(),
                type_sql,
                type_oid,
                not_null: *not_null || *pk > 0,
                dims: 0,
                generated: None,
            }
        })
        .collect();
    let indexes = read_indexes(conn, name)?;
    let foreign_keys = read_foreign_keys(conn, name)?;
    let estimated_rows: i64 = conn
        .query_row(&format!("SELECT count(*) FROM {db}.{table}"), [], |r| {
            r.get(0)
        })
        .map_err(Error::sqlite(ctx()))?;
    Ok(Some(SqliteTable {
        source_columns: cols.iter().map(|c| c.0.clone()).collect(),
        kinds,
        schema: TableSchema {
            name: name.clone(),
            oid: 0,
            columns,
            primary_key,
            key_include: Vec::new(),
            replica_identity: 'd',
            indexes,
            estimated_rows,
            pages: 0,
            partitioned: false,
            leaves: Vec::new(),
        },
        foreign_keys,
    }))
}

/// UNIQUE constraints and CREATE INDEX indexes on plain columns (the key's own index, partial
/// and expression indexes left out).
fn read_indexes(conn: &Connection, name: &TableName) -> Result<Vec<IndexDef>> {
    let ctx = || format!("reading the SQLite indexes of {name}");
    let db = quote_ident(&name.schema);
    let mut stmt = conn
        .prepare(&format!(
            "PRAGMA {db}.index_list({})",
            quote_ident(&name.name)
        ))
        .map_err(Error::sqlite(ctx()))?;
    // seq, name, unique, origin (c, u, pk), partial
    let list: Vec<(String, bool, String, bool)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(1)?,
                r.get::<_, i64>(2)? != 0,
                r.get(3)?,
                r.get::<_, i64>(4)? != 0,
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(Error::sqlite(ctx()))?;
    let mut out = Vec::new();
    for (index, unique, origin, partial) in list {
        if origin == "pk" {
            continue;
        }
        let mut info = conn
            .prepare(&format!("PRAGMA {db}.index_info({})", quote_ident(&index)))
            .map_err(Error::sqlite(ctx()))?;
        let cols: Vec<Option<String>> = info
            .query_map([], |r| r.get(2))
            .and_then(|rows| rows.collect())
            .map_err(Error::sqlite(ctx()))?;
        if partial || cols.iter().any(Option::is_none) {
            tracing::warn!(table = %name, index = %index, "a partial or expression index is not created on the destination");
            continue;
        }
        let cols: Vec<String> = cols.into_iter().flatten().collect();
        // SQLite names constraint indexes `sqlite_autoindex_T_N`; Postgres index names live
        // in the schema, so they carry the table's name.
        let index_name = if index.starts_with("sqlite_autoindex_") {
            format!("{}_{}_key", name.name, cols.join("_"))
        } else {
            index
        };
        out.push(IndexDef {
            name: index_name,
            definition_tail: format!(
                " USING btree ({})",
                cols.iter()
                    .map(|c| quote_ident(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            unique,
        });
    }
    Ok(out)
}

fn read_foreign_keys(conn: &Connection, name: &TableName) -> Result<Vec<ForeignKey>> {
    let ctx = || format!("reading the SQLite foreign keys of {name}");
    let db = quote_ident(&name.schema);
    let mut stmt = conn
        .prepare(&format!(
            "PRAGMA {db}.foreign_key_list({})",
            quote_ident(&name.name)
        ))
        .map_err(Error::sqlite(ctx()))?;
    // id, seq, table, from, to, on_update, on_delete, match
    type Row = (i64, i64, String, String, Option<String>, String, String);
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(Error::sqlite(ctx()))?;
    let mut by_id: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for r in rows {
        by_id.entry(r.0).or_default().push(r);
    }
    let mut out = Vec::new();
    for (_, mut parts) in by_id {
        parts.sort_by_key(|p| p.1);
        let references = TableName {
            schema: name.schema.clone(),
            name: parts[0].2.clone(),
        };
        let mut referenced_columns: Vec<String> =
            parts.iter().filter_map(|p| p.4.clone()).collect();
        if referenced_columns.len() != parts.len() {
            // `REFERENCES parent` alone: the parent's primary key.
            referenced_columns = match read_table_key(conn, &references)? {
                Some(k) => k,
                None => continue,
            };
        }
        out.push(ForeignKey {
            columns: parts.iter().map(|p| p.3.clone()).collect(),
            references,
            referenced_columns,
            on_delete: parts[0].6.clone(),
            on_update: parts[0].5.clone(),
        });
    }
    Ok(out)
}

fn read_table_key(conn: &Connection, name: &TableName) -> Result<Option<Vec<String>>> {
    let mut stmt = conn
        .prepare(&format!(
            "PRAGMA {}.table_info({})",
            quote_ident(&name.schema),
            quote_ident(&name.name)
        ))
        .map_err(Error::sqlite(format!("reading the SQLite key of {name}")))?;
    let mut key: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(5)?, r.get(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<(i64, String)>>>())
        .map_err(Error::sqlite(format!("reading the SQLite key of {name}")))?
        .into_iter()
        .filter(|(pk, _)| *pk > 0)
        .collect();
    key.sort();
    Ok((!key.is_empty()).then(|| key.into_iter().map(|(_, n)| n).collect()))
}

impl SqliteTable {
    /// Apply a `[[tables]]` entry's `columns` renames (SQLite name → destination name) and
    /// `ignore_columns` (SQLite names). A name that is not a column is an error.
    pub fn rename(&mut self, renames: &BTreeMap<String, String>, ignore: &[String]) -> Result<()> {
        let unknown: Vec<&String> = renames
            .keys()
            .chain(ignore)
            .filter(|c| !self.source_columns.contains(c))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::definite(format!(
                "{}: columns / ignore_columns name columns the SQLite table does not have: {}; its columns: {}",
                self.schema.name,
                unknown.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
                self.source_columns.join(", ")
            )));
        }
        if ignore.iter().any(|c| {
            self.schema
                .primary_key
                .iter()
                .any(|k| renames.get(c).unwrap_or(c) == k || c == k)
        }) {
            return Err(Error::definite(format!(
                "{}: ignore_columns cannot leave out a primary-key column ({})",
                self.schema.name,
                self.schema.primary_key.join(", ")
            )));
        }
        let keep: Vec<bool> = self
            .source_columns
            .iter()
            .map(|c| !ignore.contains(c))
            .collect();
        let mut i = 0;
        self.schema.columns.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        let mut i = 0;
        self.kinds.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        self.source_columns.retain(|c| !ignore.contains(c));
        let new_name = |c: &String| renames.get(c).cloned().unwrap_or_else(|| c.clone());
        for (col, src) in self.schema.columns.iter_mut().zip(&self.source_columns) {
            col.name = new_name(src);
        }
        for k in &mut self.schema.primary_key {
            *k = new_name(k);
        }
        for idx in &mut self.schema.indexes {
            for (from, to) in renames {
                idx.definition_tail = idx
                    .definition_tail
                    .replace(&quote_ident(from), &quote_ident(to));
            }
        }
        self.schema.indexes.retain(|idx| {
            !ignore
                .iter()
                .any(|c| idx.definition_tail.contains(&quote_ident(c)))
        });
        Ok(())
    }
}
