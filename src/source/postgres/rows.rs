//! Source rows read by query, a block at a time, each value as Postgres text: what the
//! stream's backfill and `cdc sync`'s incremental passes read.
//!
//! A cursor in the caller's open transaction (so that the rows and anything else the caller
//! reads share one snapshot), fetched `FETCH_ROWS` at a time: memory holds one block whatever
//! the table size. Rows are fetched with the simple query protocol, so every value arrives as
//! its type's output function prints it (under the session settings of
//! [`crate::pg::connect`]): the text pgoutput sends. Not `col::text`: a cast to text is not
//! always the output function (`char(n)` loses its padding).

use tokio_postgres::Client;

use crate::decode::Datum;
use crate::error::{Error, Result};

/// Source rows read per round trip.
pub const FETCH_ROWS: usize = 10_000;

/// A declared cursor.
pub struct RowCursor {
    name: &'static str,
    done: bool,
}

impl RowCursor {
    /// Declare cursor `name` for `sql` (a SELECT of text values) in the open transaction.
    pub async fn declare(client: &Client, name: &'static str, sql: &str) -> Result<Self> {
        client
            .batch_execute(&format!("DECLARE {name} NO SCROLL CURSOR FOR {sql}"))
            .await
            .map_err(Error::pg(format!("reading source rows ({sql})")))?;
        Ok(RowCursor { name, done: false })
    }

    /// The next block of rows as values; empty once the cursor is exhausted.
    pub async fn next(&mut self, client: &Client) -> Result<Vec<Vec<Datum>>> {
        if self.done {
            return Ok(Vec::new());
        }
        let rows = text_rows(client, &format!("FETCH {FETCH_ROWS} FROM {}", self.name)).await?;
        if rows.len() < FETCH_ROWS {
            self.done = true;
        }
        Ok(rows)
    }
}

/// The rows of `sql` (one statement), every value as its output function prints it.
pub async fn text_rows(client: &Client, sql: &str) -> Result<Vec<Vec<Datum>>> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(Error::pg("reading source rows"))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| match row.get(i) {
                        Some(v) => Datum::Text(bytes::Bytes::copy_from_slice(v.as_bytes())),
                        None => Datum::Null,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// An SQL literal of a text array holding `values` (none NULL).
pub fn text_array_literal(values: &[&str]) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|v| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!(
        "{}::text[]",
        crate::model::sql::quote_literal(&format!("{{{}}}", items.join(",")))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_arrays_quote_what_arrays_and_literals_need() {
        assert_eq!(
            text_array_literal(&["a", "b\"c", "d\\e", "it's", "{x,y}"]),
            r#"'{"a","b\"c","d\\e","it''s","{x,y}"}'::text[]"#
        );
    }
}
