//! `cdc verify` against Snowflake: as for DuckDB and ClickHouse, the source's rows are read
//! once under one snapshot and loaded the way the snapshot loads them into a scratch table of
//! the destination's column types (`<table>__cdc_verify`, dropped afterwards), and three joins
//! in Snowflake find the rows missing, changed (typed values compared with `EQUAL_NULL`) and
//! extra.

use std::sync::atomic::AtomicU64;

use async_trait::async_trait;

use super::apply::SnowSession;
use super::client::Client;
use super::load::{copy_rows, Inserts};
use super::qualified;
use super::types::{quote, read, to_postgres};
use crate::conninfo::ConnInfo;
use crate::destination::whole::{CompareSpec, Comparison, DestTable, Texts, WholeLook};
use crate::destination::snowflake::SnowflakeUrl;
use crate::error::{Error, Result};
use crate::model::schema::{TableName, TableSchema};
use crate::model::sql::quote_ident;
use crate::source::postgres::copy_out::CopySource;

pub struct SnowflakeReader {
    client: Client,
}

impl SnowflakeReader {
    pub fn new(url: SnowflakeUrl) -> Result<Self> {
        Ok(SnowflakeReader {
            client: Client::new(url)?,
        })
    }

    fn database(&self) -> &str {
        &self.client.url().database
    }

    /// The scratch table made anew and the source's rows copied into it; the rows copied.
    async fn load_source(
        &self,
        source: &ConnInfo,
        spec: &CompareSpec<'_>,
        types: &[String],
        scratch: &str,
    ) -> Result<i64> {
        let typed: Vec<String> = spec
            .columns
            .iter()
            .zip(types)
            .map(|(c, t)| format!("{} {t}", quote(c)))
            .collect();
        self.client
            .query(&format!("DROP TABLE IF EXISTS {scratch}"))
            .await?;
        self.client
            .query(&format!("CREATE TABLE {scratch} ({})", typed.join(", ")))
            .await?;
        // The compared columns as a schema whose types are the destination's.
        let schema = TableSchema {
            name: spec.source.clone(),
            columns: spec
                .columns
                .iter()
                .zip(types)
                .map(|(c, t)| crate::model::schema::ColumnDef {
                    name: c.clone(),
                    type_sql: t.clone(),
                    type_oid: 0,
                    not_null: false,
                    dims: 0,
                    generated: None,
                })
                .collect(),
            ..TableSchema::default()
        };
        let inserts = Inserts::typed(scratch, spec.source.to_string(), &schema);
        let filter = spec
            .source_filter
            .map_or(String::new(), |f| format!(" WHERE ({f})"));
        let cols: Vec<String> = spec.columns.iter().map(|c| quote_ident(c)).collect();
        let copy = format!(
            "COPY (SELECT {} FROM {}{filter}) TO STDOUT",
            cols.join(", "),
            spec.source.quoted()
        );
        let mut src = CopySource::connect(source).await?;
        src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let rows = copy_rows(&self.client, &mut src, &copy, inserts, &AtomicU64::new(0)).await?;
        src.execute("COMMIT").await?;
        src.close().await;
        Ok(rows as i64)
    }

    async fn texts(&self, sql: &str, types: &[String]) -> Result<Vec<Texts>> {
        let rows = self.client.query(sql).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .enumerate()
                    .map(|(i, v)| v.map(|v| to_postgres(&types[i % types.len()], v)))
                    .collect()
            })
            .collect())
    }
}

#[async_trait]
impl WholeLook for SnowflakeReader {
    async fn table(&self, table: &TableName) -> Result<Option<DestTable>> {
        match SnowSession::read_columns(&self.client, self.database(), table).await {
            Ok(cols) => Ok(Some(DestTable {
                primary_key: cols
                    .iter()
                    .filter(|c| c.key)
                    .map(|c| c.name.clone())
                    .collect(),
                columns: cols
                    .into_iter()
                    .map(|c| (c.name, c.type_name, false))
                    .collect(),
            })),
            Err(e) if e.to_string().contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn compare(
        &self,
        source: &ConnInfo,
        spec: &CompareSpec<'_>,
        types: &[String],
    ) -> Result<Comparison> {
        let scratch_name = TableName {
            schema: spec.destination.schema.clone(),
            name: format!("{}__cdc_verify", spec.destination.name),
        };
        let scratch = qualified(self.database(), &scratch_name);
        let dest = qualified(self.database(), spec.destination);
        let n = spec.columns.len();
        let cols: Vec<String> = spec.columns.iter().map(|c| quote(c)).collect();
        let key: Vec<String> = spec.key.iter().map(|k| quote(k)).collect();
        let result = async {
            let source_rows = self.load_source(source, spec, types, &scratch).await?;
            let on: Vec<String> = key.iter().map(|k| format!("s.{k} = d.{k}")).collect();
            let on = on.join(" AND ");
            let texts = |alias: &str| -> Vec<String> {
                cols.iter()
                    .zip(types)
                    .map(|(c, t)| read(t, &format!("{alias}.{c}")))
                    .collect()
            };
            let order = |alias: &str| key.iter().map(|k| format!("{alias}.{k}")).collect::<Vec<_>>().join(", ");
            let differs: Vec<String> = cols
                .iter()
                .map(|c| format!("NOT EQUAL_NULL(s.{c}, d.{c})"))
                .collect();
            let limit = spec.max_differences + 1;
            let missing = self
                .texts(
                    &format!(
                        "SELECT {} FROM {scratch} AS s WHERE NOT EXISTS (SELECT 1 FROM {dest} AS d WHERE {on}) ORDER BY {} LIMIT {limit}",
                        texts("s").join(", "),
                        order("s")
                    ),
                    types,
                )
                .await?;
            let extra = self
                .texts(
                    &format!(
                        "SELECT {} FROM {dest} AS d WHERE NOT EXISTS (SELECT 1 FROM {scratch} AS s WHERE {on}) ORDER BY {} LIMIT {limit}",
                        texts("d").join(", "),
                        order("d")
                    ),
                    types,
                )
                .await?;
            let changed = self
                .texts(
                    &format!(
                        "SELECT {}, {} FROM {scratch} AS s JOIN {dest} AS d ON {on} WHERE {} ORDER BY {} LIMIT {limit}",
                        texts("s").join(", "),
                        texts("d").join(", "),
                        differs.join(" OR "),
                        order("s")
                    ),
                    types,
                )
                .await?;
            let count = self.client.query(&format!("SELECT COUNT(*)::VARCHAR FROM {dest}")).await?;
            let destination_rows = count
                .first()
                .and_then(|r| r[0].as_deref())
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            Ok::<_, Error>(Comparison::of(
                source_rows,
                destination_rows,
                missing,
                changed,
                extra,
                n,
                5,
                spec.max_differences,
            ))
        }
        .await;
        let dropped = self
            .client
            .query(&format!("DROP TABLE IF EXISTS {scratch}"))
            .await;
        let out = result?;
        dropped?;
        Ok(out)
    }
}
