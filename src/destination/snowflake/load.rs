//! Rows into and out of Snowflake in bulk: the snapshot's COPY text as `INSERT … SELECT …
//! FROM VALUES` statements of up to `MAX_STATEMENT` bytes (one session per snapshot worker),
//! and a table's rows in key order, a page at a time, for `cdc sync`'s `diff` from a source
//! that cannot hash ranges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::apply::MAX_STATEMENT;
use super::client::Client;
use super::qualified;
use super::types::{convert, literal, quote, read, to_postgres, value};
use crate::decode::Datum;
use crate::source::postgres::copy_text::RowReader;
use crate::destination::{Loader, SnapshotTable};
use crate::error::{Error, Result};
use crate::model::change::TableMap;
use crate::model::schema::TableSchema;
use crate::source::postgres::copy_out::CopySource;
use crate::source::RowSource;

pub struct SnowLoader {
    client: Client,
    database: String,
}

impl SnowLoader {
    pub fn new(client: Client, database: String) -> Self {
        SnowLoader { client, database }
    }
}

/// Builds INSERT statements of a table's rows (Postgres text values, in the copied columns'
/// order), each under `MAX_STATEMENT` bytes.
pub struct Inserts {
    head: String,
    types: Vec<String>,
    names: Vec<String>,
    table: String,
    tuples: Vec<String>,
    size: usize,
}

impl Inserts {
    pub fn new(database: &str, table: &SnapshotTable<'_>) -> Inserts {
        Inserts::for_columns(
            &qualified(database, table.destination),
            table.destination.to_string(),
            table.schema,
        )
    }

    pub fn for_columns(name: &str, shown: String, schema: &TableSchema) -> Inserts {
        let cols: Vec<(String, String)> = schema
            .copied_columns()
            .map(|c| {
                (
                    c.name.clone(),
                    super::types::type_name(&super::types::create_type(c)),
                )
            })
            .collect();
        Inserts::with(name, shown, cols)
    }

    /// Into `name`, whose columns are `schema`'s with Snowflake types (as columns report
    /// them) in `type_sql`.
    pub fn typed(name: &str, shown: String, schema: &TableSchema) -> Inserts {
        let cols = schema
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.type_sql.clone()))
            .collect();
        Inserts::with(name, shown, cols)
    }

    fn with(name: &str, shown: String, cols: Vec<(String, String)>) -> Inserts {
        let quoted: Vec<String> = cols.iter().map(|(n, _)| quote(n)).collect();
        Inserts {
            head: format!("INSERT INTO {name} ({})", quoted.join(", ")),
            names: cols.iter().map(|(n, _)| n.clone()).collect(),
            types: cols.into_iter().map(|(_, t)| t).collect(),
            table: shown,
            tuples: Vec::new(),
            size: 0,
        }
    }

    /// Add a row; a full statement when the row filled one.
    pub fn push(&mut self, row: &[Option<String>]) -> Result<Option<String>> {
        if row.len() != self.types.len() {
            return Err(Error::definite(format!(
                "copying {}: a row of {} values for {} columns",
                self.table,
                row.len(),
                self.types.len()
            )));
        }
        let mut parts = Vec::with_capacity(row.len());
        for (i, v) in row.iter().enumerate() {
            parts.push(match v {
                None => "NULL".to_owned(),
                Some(v) => literal(&value(&self.types[i], v).map_err(|e| {
                    Error::definite(format!(
                        "copying {}: column {}: {e}",
                        self.table, self.names[i]
                    ))
                })?),
            });
        }
        let tuple = format!("({})", parts.join(", "));
        let full = if self.size + tuple.len() > MAX_STATEMENT && !self.tuples.is_empty() {
            self.take()
        } else {
            None
        };
        self.size += tuple.len() + 2;
        self.tuples.push(tuple);
        Ok(full)
    }

    /// The statement of the rows added since the last one, if any.
    pub fn take(&mut self) -> Option<String> {
        if self.tuples.is_empty() {
            return None;
        }
        let select: Vec<String> = self
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| convert(t, &format!("v.c{i}")))
            .collect();
        let names: Vec<String> = (0..self.types.len()).map(|i| format!("c{i}")).collect();
        let sql = format!(
            "{} SELECT {} FROM (VALUES {}) AS v ({})",
            self.head,
            select.join(", "),
            self.tuples.join(", "),
            names.join(", ")
        );
        self.tuples.clear();
        self.size = 0;
        Some(sql)
    }
}

/// Run `out_sql` (a COPY in text format) on `src` and write its rows with `inserts`, a
/// statement at a time on `client`; the rows copied. `bytes` counts the data read. For the
/// snapshot's loads and `cdc verify`'s scratch table alike.
pub async fn copy_rows(
    client: &Client,
    src: &mut CopySource,
    out_sql: &str,
    mut inserts: Inserts,
    bytes: &AtomicU64,
) -> Result<u64> {
    let what = inserts.table.clone();
    let mut reader = RowReader::default();
    let mut rows = 0u64;
    src.copy_out(out_sql).await?;
    while let Some(chunk) = src.next_chunk().await? {
        bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let mut ready = Vec::new();
        let mut failed = None;
        reader
            .feed(&chunk, |row| {
                rows += 1;
                match inserts.push(&row) {
                    Ok(Some(sql)) => ready.push(sql),
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                }
                Ok(())
            })
            .map_err(|e| Error::definite(format!("copying {what}: {e}")))?;
        if let Some(e) = failed {
            return Err(e);
        }
        for sql in ready {
            client.query(&sql).await?;
        }
    }
    reader
        .finish()
        .map_err(|e| Error::definite(format!("copying {what}: {e}")))?;
    if let Some(sql) = inserts.take() {
        client.query(&sql).await?;
    }
    Ok(rows)
}

#[async_trait]
impl Loader for SnowLoader {
    async fn load(
        &mut self,
        src: &mut CopySource,
        out_sql: &str,
        table: &SnapshotTable<'_>,
        bytes: &AtomicU64,
    ) -> Result<u64> {
        let inserts = Inserts::new(&self.database, table);
        copy_rows(&self.client, src, out_sql, inserts, bytes).await
    }

    async fn load_rows(
        &mut self,
        source: &mut (dyn RowSource + '_),
        table: &SnapshotTable<'_>,
    ) -> Result<Option<u64>> {
        let mut inserts = Inserts::new(&self.database, table);
        let mut rows = 0u64;
        while let Some(block) = source.next_rows().await? {
            for row in block {
                rows += 1;
                let texts: Vec<Option<String>> = row
                    .iter()
                    .map(|d| crate::model::change::text(d).map(str::to_owned))
                    .collect();
                if let Some(sql) = inserts.push(&texts)? {
                    self.client.query(&sql).await?;
                }
            }
        }
        if let Some(sql) = inserts.take() {
            self.client.query(&sql).await?;
        }
        Ok(Some(rows))
    }
}

/// Rows per page.
const PAGE_ROWS: usize = 50_000;

/// A table's rows in key order, page after page (`WHERE key > last ORDER BY key LIMIT n`).
pub struct KeyOrdered {
    client: Arc<Client>,
    select: String,
    order: String,
    /// Key positions and types; every column's type.
    key: Vec<(usize, String)>,
    types: Vec<String>,
    names: Vec<String>,
    last: Option<Vec<String>>,
    done: bool,
}

impl KeyOrdered {
    pub fn new(client: Arc<Client>, database: &str, map: &TableMap) -> KeyOrdered {
        let reads: Vec<String> = map
            .columns
            .iter()
            .map(|c| read(&c.dest_type, &quote(&c.name)))
            .collect();
        let key_cols: Vec<String> = map
            .key
            .iter()
            .map(|&k| quote(&map.columns[k].name))
            .collect();
        KeyOrdered {
            client,
            select: format!(
                "SELECT {} FROM {}",
                reads.join(", "),
                qualified(database, &map.dest)
            ),
            order: format!("ORDER BY {} LIMIT {PAGE_ROWS}", key_cols.join(", ")),
            key: map
                .key
                .iter()
                .map(|&k| (k, map.columns[k].dest_type.clone()))
                .collect(),
            types: map.columns.iter().map(|c| c.dest_type.clone()).collect(),
            names: map.columns.iter().map(|c| c.name.clone()).collect(),
            last: None,
            done: false,
        }
    }

    /// `(k1 > v1) OR (k1 = v1 AND k2 > v2) …`: Snowflake has no row comparisons.
    fn after(&self, last: &[String]) -> Result<String> {
        let mut terms = Vec::new();
        for i in 0..self.key.len() {
            let mut parts = Vec::new();
            for (j, ((k, ty), v)) in self.key.iter().zip(last).enumerate().take(i + 1) {
                let lit = convert(ty, &literal(&value(ty, v).map_err(Error::definite)?));
                let op = if j == i { ">" } else { "=" };
                parts.push(format!("{} {op} {lit}", quote(&self.names[*k])));
            }
            terms.push(format!("({})", parts.join(" AND ")));
        }
        Ok(terms.join(" OR "))
    }
}

#[async_trait]
impl RowSource for KeyOrdered {
    async fn next_rows(&mut self) -> Result<Option<Vec<Vec<Datum>>>> {
        if self.done {
            return Ok(None);
        }
        let sql = match &self.last {
            None => format!("{} {}", self.select, self.order),
            Some(last) => format!("{} WHERE {} {}", self.select, self.after(last)?, self.order),
        };
        let rows = self.client.query(&sql).await?;
        if rows.len() < PAGE_ROWS {
            self.done = true;
        }
        let rows: Vec<Vec<Datum>> = rows
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .zip(&self.types)
                    .map(|(v, ty)| {
                        v.map_or(Datum::Null, |v| {
                            Datum::Text(Bytes::from(to_postgres(ty, v)))
                        })
                    })
                    .collect()
            })
            .collect();
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        self.last = Some(
            self.key
                .iter()
                .map(|(k, _)| {
                    crate::model::change::text(&last[*k])
                        .unwrap_or("")
                        .to_owned()
                })
                .collect(),
        );
        Ok(Some(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::{ColumnDef, TableName};

    #[test]
    fn inserts_split_and_convert() {
        let schema = TableSchema {
            name: TableName::parse("public.t").unwrap(),
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    type_sql: "integer".into(),
                    type_oid: 23,
                    not_null: true,
                    dims: 0,
                    generated: None,
                },
                ColumnDef {
                    name: "b".into(),
                    type_sql: "bytea".into(),
                    type_oid: 17,
                    not_null: false,
                    dims: 0,
                    generated: None,
                },
            ],
            primary_key: vec!["id".into()],
            ..TableSchema::default()
        };
        let mut ins = Inserts::for_columns("\"D\".\"public\".\"t\"", "public.t".into(), &schema);
        assert!(ins
            .push(&[Some("1".into()), Some("\\x00ff".into())])
            .unwrap()
            .is_none());
        assert!(ins.push(&[Some("2".into()), None]).unwrap().is_none());
        let sql = ins.take().unwrap();
        assert_eq!(
            sql,
            "INSERT INTO \"D\".\"public\".\"t\" (\"id\", \"b\") SELECT v.c0::NUMBER(10,0), TO_BINARY(v.c1, 'HEX') \
             FROM (VALUES ('1', '00ff'), ('2', NULL)) AS v (c0, c1)"
        );
        assert!(ins.take().is_none());
        let e = ins
            .push(&[Some("3".into()), Some("nothex".into())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("column b"), "{e}");
        let big = "x".repeat(MAX_STATEMENT / 3);
        let mut texts = Inserts::for_columns(
            "t",
            "t".into(),
            &TableSchema {
                columns: vec![ColumnDef {
                    name: "s".into(),
                    type_sql: "text".into(),
                    type_oid: 25,
                    not_null: false,
                    dims: 0,
                    generated: None,
                }],
                ..TableSchema::default()
            },
        );
        assert!(texts.push(&[Some(big.clone())]).unwrap().is_none());
        assert!(texts.push(&[Some(big.clone())]).unwrap().is_none());
        assert!(
            texts.push(&[Some(big)]).unwrap().is_some(),
            "the third of three third-statement rows starts a new statement"
        );
    }
}
