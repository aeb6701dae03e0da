//! `cdc tables`: the source's tables, whether each can be replicated, and whether it is in the
//! configuration — the first look before writing `[[tables]]`.

use crate::config::Config;
use crate::error::{Error, Result};

/// One source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    pub name: String,
    pub estimated_rows: i64,
    /// `primary key (a, b)`, `replica identity full`, `replica identity index`, or `none`.
    pub identity: String,
    /// `None` when replicable, else why not and how to fix it.
    pub problem: Option<String>,
    pub configured: bool,
}

/// List user tables of the source database.
pub async fn list(config: &Config) -> Result<Vec<SourceTable>> {
    let info = config.source_conninfo()?;
    let sql = crate::pg::connect(&info).await?;
    let rows = sql
        .query(
            "SELECT format('%s.%s', n.nspname, c.relname), greatest(c.reltuples, 0)::int8, c.relreplident::text,
                    (SELECT string_agg(a.attname, ', ' ORDER BY k.ord)
                       FROM pg_index i
                       CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                      WHERE i.indrelid = c.oid AND i.indisprimary)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
              ORDER BY 1",
            &[],
        )
        .await
        .map_err(Error::pg("listing source tables"))?;
    let configured: Vec<String> = config
        .table_pairs()
        .iter()
        .map(|(s, _)| s.to_string())
        .collect();
    Ok(rows
        .into_iter()
        .map(|r| {
            let name: String = r.get(0);
            let ident: String = r.get(2);
            let pk: Option<String> = r.get(3);
            let (identity, problem) = match (ident.as_str(), pk) {
                ("f", _) => ("replica identity full".to_owned(), None),
                ("i", _) => ("replica identity index".to_owned(), None),
                ("n", _) => (
                    "none".to_owned(),
                    Some(
                        "REPLICA IDENTITY NOTHING: set it to DEFAULT (with a primary key) or FULL"
                            .to_owned(),
                    ),
                ),
                (_, Some(cols)) => (format!("primary key ({cols})"), None),
                (_, None) => (
                    "none".to_owned(),
                    Some(
                        "no primary key: add one, or ALTER TABLE ... REPLICA IDENTITY FULL"
                            .to_owned(),
                    ),
                ),
            };
            SourceTable {
                configured: configured.contains(&name),
                name,
                estimated_rows: r.get(1),
                identity,
                problem,
            }
        })
        .collect())
}
