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
    if let Some(path) = config.sqlite_source()? {
        return sqlite_list(config, path).await;
    }
    let info = config.source_conninfo()?;
    let sql = crate::pg::connect(&info).await?;
    let rows = sql
        .query(
            "SELECT format('%s.%s', n.nspname, c.relname), greatest(c.reltuples, 0)::int8, c.relreplident::text,
                    (SELECT string_agg(a.attname, ', ' ORDER BY k.ord)
                       FROM pg_index i
                       CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                      WHERE i.indrelid = c.oid AND i.indisprimary AND k.ord <= i.indnkeyatts)
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

/// The tables of a SQLite source (`main`), counted.
async fn sqlite_list(config: &Config, path: std::path::PathBuf) -> Result<Vec<SourceTable>> {
    use crate::source::sqlite::{catalog, SqliteSource};
    let configured: Vec<String> = config
        .table_pairs()
        .iter()
        .map(|(s, _)| s.to_string())
        .collect();
    tokio::task::spawn_blocking(move || {
        let source = SqliteSource::open(&path)?;
        let mut out = Vec::new();
        for name in catalog::list_tables(&source.conn, "main")? {
            let Some(t) = catalog::read_table(&source.conn, &name)? else {
                continue;
            };
            let key = &t.schema.primary_key;
            let name = name.to_string();
            out.push(SourceTable {
                configured: configured.contains(&name),
                name,
                estimated_rows: t.schema.estimated_rows,
                identity: if key.is_empty() {
                    "none".into()
                } else {
                    format!("primary key ({})", key.join(", "))
                },
                problem: key
                    .is_empty()
                    .then(|| "no primary key: cdc sync reloads it whole each pass".to_owned()),
            });
        }
        Ok(out)
    })
    .await
    .map_err(Error::stopped("SQLite reader"))?
}

/// One configured table as the destination has it (`cdc tables --destination`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DestinationTable {
    pub name: String,
    pub source: String,
    /// `None` when the table does not exist on the destination yet.
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
    /// The configured strategy, or `default` (diff with a key, reload without).
    pub strategy: String,
    /// The last `cdc sync` pass, if any.
    pub last_pass: Option<crate::destination::SyncState>,
}

/// The configured tables on the destination: rows, size, strategy, last pass and position.
pub async fn destination(config: &Config) -> Result<Vec<DestinationTable>> {
    let dest = crate::destination::open(config).await?;
    let states = dest.sync_states().await?;
    let mut out = Vec::new();
    for ((source, destination), t) in config.table_pairs().into_iter().zip(&config.tables) {
        let size = dest.table_size(&destination).await?;
        let name = destination.to_string();
        out.push(DestinationTable {
            last_pass: states.iter().find(|s| s.destination_table == name).cloned(),
            name,
            source: source.to_string(),
            rows: size.as_ref().map(|s| s.rows),
            bytes: size.and_then(|s| s.bytes),
            strategy: t.strategy.map_or("default".into(), |s| s.to_string()),
        });
    }
    Ok(out)
}
