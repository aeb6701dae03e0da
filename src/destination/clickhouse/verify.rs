//! `cdc verify` against ClickHouse: the comparison runs inside ClickHouse, on the view users
//! query (current rows: `FINAL`, deleted rows left out).
//!
//! ClickHouse cannot compute Postgres' row hashes, so, as for DuckDB, the source's rows are
//! read once and loaded exactly as the snapshot loads them (`tsv`, one streamed INSERT) into a
//! scratch table of the destination's column types, and three joins find the rows missing from
//! the destination, the rows that differ (typed values compared null-safely, NaN equal to NaN
//! as Postgres has it) and the extra ones. The scratch table (`<view>__cdc_verify`, in the
//! destination's database) is dropped afterwards.

use std::sync::atomic::AtomicU64;

use async_trait::async_trait;

use super::ddl::{quote, Names, DELETED, VERSION};
use super::http::Client;
use super::load::copy_into;
use super::state::literal;
use super::tsv::{self, field_of, Field};
use crate::conninfo::ConnInfo;
use crate::destination::whole::{CompareSpec, Comparison, DestTable, Texts, WholeLook};
use crate::destination::clickhouse::ClickHouseUrl;
use crate::error::Result;
use crate::model::schema::TableName;
use crate::model::sql::quote_ident;
use crate::source::postgres::copy_out::CopySource;

/// A ClickHouse server opened for comparisons.
pub struct ClickHouseReader {
    client: Client,
}

impl ClickHouseReader {
    pub fn new(url: ClickHouseUrl) -> Result<Self> {
        Ok(ClickHouseReader {
            client: Client::new(url)?,
        })
    }

    async fn texts(&self, sql: &str) -> Result<Vec<Texts>> {
        let out = self.client.query(&format!("{sql} FORMAT TSV")).await?;
        Ok(tsv::rows(&out)
            .map(|r| r.iter().map(|f| tsv::unescape(f)).collect())
            .collect())
    }

    /// A scratch table `scratch` made anew with the compared columns, and the source's rows
    /// copied into it under one snapshot; the rows copied.
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
        let key: Vec<String> = spec.key.iter().map(|k| quote(k)).collect();
        self.client
            .query(&format!("DROP TABLE IF EXISTS {scratch}"))
            .await?;
        self.client
            .query(&format!(
                "CREATE TABLE {scratch} ({}) ENGINE = MergeTree ORDER BY ({})",
                typed.join(", "),
                key.join(", ")
            ))
            .await?;
        let filter = spec
            .source_filter
            .map_or(String::new(), |f| format!(" WHERE ({f})"));
        let pg_cols: Vec<String> = spec.columns.iter().map(|c| quote_ident(c)).collect();
        let copy = format!(
            "COPY (SELECT {} FROM {}{filter}) TO STDOUT",
            pg_cols.join(", "),
            spec.source.quoted()
        );
        let fields: Vec<(String, Field)> = spec
            .columns
            .iter()
            .zip(types)
            .map(|(c, t)| (c.clone(), field_of(t)))
            .collect();
        let mut src = CopySource::connect(source).await?;
        src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let source_rows = copy_into(
            &self.client,
            &mut src,
            &copy,
            format!("INSERT INTO {scratch} FORMAT TSV"),
            &fields,
            b"",
            &AtomicU64::new(0),
            &spec.source.to_string(),
        )
        .await? as i64;
        src.execute("COMMIT").await?;
        src.close().await;
        Ok(source_rows)
    }
}

/// `s.c` and `d.c` hold the same value (NULL equal to NULL, NaN to NaN).
fn same(column: &str, ty: &str) -> String {
    let both = format!("isNotDistinctFrom(s.{column}, d.{column})");
    match field_of(ty) {
        Field::Float => {
            format!("({both} OR (ifNull(isNaN(s.{column}), 0) AND ifNull(isNaN(d.{column}), 0)))")
        }
        _ => both,
    }
}

#[async_trait]
impl WholeLook for ClickHouseReader {
    async fn table(&self, table: &TableName) -> Result<Option<DestTable>> {
        let names = Names::of(self.client.database(), table);
        let rows = self
            .texts(&format!(
                "SELECT name, type, is_in_primary_key FROM system.columns \
                 WHERE database = {} AND table = {} ORDER BY position",
                literal(&names.database),
                literal(&names.storage)
            ))
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut columns = Vec::new();
        let mut primary_key = Vec::new();
        for r in rows {
            let (name, ty) = (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            );
            if name == VERSION || name == DELETED {
                continue;
            }
            if r[2].as_deref() == Some("1") {
                primary_key.push(name.clone());
            }
            let not_null = !ty.starts_with("Nullable(");
            columns.push((name, ty, not_null));
        }
        Ok(Some(DestTable {
            columns,
            primary_key,
        }))
    }

    async fn compare(
        &self,
        source: &ConnInfo,
        spec: &CompareSpec<'_>,
        types: &[String],
    ) -> Result<Comparison> {
        let names = Names::of(self.client.database(), spec.destination);
        let db = quote(&names.database);
        let scratch = format!("{db}.{}", quote(&format!("{}__cdc_verify", names.view)));
        let n = spec.columns.len();
        let cols: Vec<String> = spec.columns.iter().map(|c| quote(c)).collect();
        let key: Vec<String> = spec.key.iter().map(|k| quote(k)).collect();
        let result = async {
            let source_rows = self.load_source(source, spec, types, &scratch).await?;

            let view = format!("{db}.{}", quote(&names.view));
            let on: Vec<String> = key.iter().map(|k| format!("s.{k} = d.{k}")).collect();
            let on = on.join(" AND ");
            // As the TSV output prints them (decimals with their scale).
            let texts = |alias: &str| -> Vec<String> {
                cols.iter().map(|c| format!("{alias}.{c}")).collect()
            };
            let differs: Vec<String> = cols
                .iter()
                .zip(types)
                .map(|(c, t)| format!("NOT {}", same(c, t)))
                .collect();
            let order = |alias: &str| -> String {
                key.iter()
                    .map(|k| format!("{alias}.{k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let limit = spec.max_differences + 1;
            let missing = self
                .texts(&format!(
                    "SELECT {} FROM {scratch} AS s LEFT ANTI JOIN {view} AS d ON {on} ORDER BY {} LIMIT {limit}",
                    texts("s").join(", "),
                    order("s")
                ))
                .await?;
            let extra = self
                .texts(&format!(
                    "SELECT {} FROM {view} AS d LEFT ANTI JOIN {scratch} AS s ON {on} ORDER BY {} LIMIT {limit}",
                    texts("d").join(", "),
                    order("d")
                ))
                .await?;
            let changed = self
                .texts(&format!(
                    "SELECT {}, {} FROM {scratch} AS s INNER JOIN {view} AS d ON {on} WHERE {} ORDER BY {} LIMIT {limit}",
                    texts("s").join(", "),
                    texts("d").join(", "),
                    differs.join(" OR "),
                    order("s")
                ))
                .await?;
            let count = self.texts(&format!("SELECT count() FROM {view}")).await?;
            let destination_rows = count
                .first()
                .and_then(|r| r[0].as_deref())
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            Ok::<_, crate::error::Error>(Comparison::of(
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
