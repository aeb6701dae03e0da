//! Reads of a table's rows for `cdc sync`: its current rows (the view: `FINAL`, deleted rows
//! left out) in key order, a page at a time — what a `diff` pass from a source that cannot
//! hash ranges (SQLite) walks beside the source's rows — and where its next versions start.
//!
//! Pages follow the key (`WHERE (key) > (last key) ORDER BY key LIMIT n`), so each page reads
//! only what is after the last one, and the last key is cast to the key columns' own types:
//! ClickHouse compares Strings by their bytes, which is the order the comparison needs for
//! text keys, and numbers by value.

use async_trait::async_trait;
use bytes::Bytes;

use super::ddl::{quote, Names, VERSION};
use super::http::Client;
use super::state::literal;
use super::tsv;
use crate::decode::Datum;
use crate::error::{Error, Result};
use crate::model::change::{TableMap, Version};
use crate::source::RowSource;

/// Rows per page.
const PAGE_ROWS: usize = 50_000;

/// The rows of one view, read page by page.
pub struct KeyOrdered {
    client: Client,
    /// `SELECT … FROM view`, without a condition.
    select: String,
    /// `ORDER BY …` with the page size.
    order: String,
    /// The key columns as a tuple, and their types.
    key: Vec<(usize, String)>,
    key_tuple: String,
    /// The last row's key values, once a page was read.
    last: Option<Vec<String>>,
    done: bool,
}

impl KeyOrdered {
    pub fn new(client: Client, map: &TableMap) -> KeyOrdered {
        let names = Names::of(client.database(), &map.dest);
        let columns: Vec<String> = map.columns.iter().map(|c| quote(&c.name)).collect();
        let key_columns: Vec<String> = map.key.iter().map(|&k| columns[k].clone()).collect();
        KeyOrdered {
            select: format!(
                "SELECT {} FROM {}.{}",
                columns.join(", "),
                quote(&names.database),
                quote(&names.view)
            ),
            order: format!("ORDER BY {} LIMIT {PAGE_ROWS}", key_columns.join(", ")),
            key: map
                .key
                .iter()
                .map(|&k| (k, map.columns[k].dest_type.clone()))
                .collect(),
            key_tuple: format!("({})", key_columns.join(", ")),
            client,
            last: None,
            done: false,
        }
    }

    /// The statement for the page after `last`.
    fn page_sql(&self) -> String {
        let after = match &self.last {
            None => String::new(),
            Some(values) => {
                let typed: Vec<String> = values
                    .iter()
                    .zip(&self.key)
                    .map(|(v, (_, t))| format!("CAST({} AS {t})", literal(v)))
                    .collect();
                format!(" WHERE {} > ({})", self.key_tuple, typed.join(", "))
            }
        };
        format!("{}{after} {} FORMAT TSV", self.select, self.order)
    }
}

#[async_trait]
impl RowSource for KeyOrdered {
    async fn next_rows(&mut self) -> Result<Option<Vec<Vec<Datum>>>> {
        if self.done {
            return Ok(None);
        }
        let out = self.client.query(&self.page_sql()).await?;
        let rows: Vec<Vec<Datum>> = tsv::rows(&out)
            .map(|r| {
                r.iter()
                    .map(|f| tsv::unescape(f).map_or(Datum::Null, |s| Datum::Text(Bytes::from(s))))
                    .collect()
            })
            .collect();
        if rows.len() < PAGE_ROWS {
            self.done = true;
        }
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

/// Where new versions of a table start: the next value of the high 64 bits (the stream's
/// commit LSN there) above every version the table holds, tombstones and a killed pass's rows
/// included; a pass cannot run out of the low 64.
pub async fn versions_above(
    client: &Client,
    names: &Names,
    cluster: Option<&str>,
) -> Result<Version> {
    let out = client
        .query(&format!(
            "SELECT max({}) FROM {} FORMAT TSV",
            quote(VERSION),
            names.rows_table(cluster)
        ))
        .await?;
    let text = String::from_utf8_lossy(&out);
    let highest: Version = text.trim().parse().map_err(|_| {
        Error::definite(format!(
            "ClickHouse answered {:?} for the highest version in {}.{}",
            text.trim(),
            names.database,
            names.storage
        ))
    })?;
    Ok(((highest >> 64) + 1) << 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::clickhouse::ClickHouseUrl;
    use crate::model::change::MappedColumn;
    use crate::model::schema::TableName;

    #[test]
    fn pages_follow_the_key_cast_to_its_types() {
        let url = ClickHouseUrl::parse("clickhouse://u@localhost:8123/db").unwrap();
        let map = TableMap {
            relation_id: 0,
            source: TableName::parse("main.t").unwrap(),
            dest: TableName::parse("public.t").unwrap(),
            columns: ["a", "v", "b"]
                .iter()
                .zip(["String", "Nullable(String)", "Int64"])
                .map(|(n, t)| MappedColumn {
                    name: (*n).into(),
                    dest_type: t.into(),
                })
                .collect(),
            key: vec![0, 2],
            identity_key: false,
        };
        let mut rows = KeyOrdered::new(Client::new(url).unwrap(), &map);
        assert_eq!(
            rows.page_sql(),
            "SELECT `a`, `v`, `b` FROM `db`.`t` ORDER BY `a`, `b` LIMIT 50000 FORMAT TSV"
        );
        rows.last = Some(vec!["it's".into(), "7".into()]);
        assert_eq!(
            rows.page_sql(),
            "SELECT `a`, `v`, `b` FROM `db`.`t` WHERE (`a`, `b`) > (CAST('it\\'s' AS String), CAST('7' AS Int64)) \
             ORDER BY `a`, `b` LIMIT 50000 FORMAT TSV"
        );
    }
}
