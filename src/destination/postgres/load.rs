//! Rows into and out of a Postgres destination in bulk: the snapshot's COPY output (or a
//! SQLite source's converted rows, as COPY text) into `COPY ... FROM STDIN`, and a table read
//! in key order through a cursor for a comparison.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures_util::SinkExt;
use tokio_postgres::Client;

use super::ddl;
use crate::decode::Datum;
use crate::destination::{Loader, SnapshotTable};
use crate::error::{Error, Result};
use crate::source::postgres::copy_out::CopySource;
use crate::source::postgres::rows::RowCursor;
use crate::source::RowSource;

/// COPY output of the source streamed straight into `COPY ... FROM STDIN`.
pub(super) struct PgLoader {
    pub(super) client: Client,
}

#[async_trait]
impl Loader for PgLoader {
    async fn load(
        &mut self,
        src: &mut CopySource,
        out_sql: &str,
        table: &SnapshotTable<'_>,
        bytes: &AtomicU64,
    ) -> Result<u64> {
        let binary = table.schema.binary_copy_safe();
        let in_sql = ddl::copy_in(table.destination, table.schema, binary);
        src.copy_out(out_sql).await?;
        let sink = self
            .client
            .copy_in(&in_sql)
            .await
            .map_err(Error::pg(format!("starting {in_sql}")))?;
        let mut sink = std::pin::pin!(sink);
        while let Some(chunk) = src.next_chunk().await? {
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            sink.send(chunk)
                .await
                .map_err(Error::pg(format!("copying rows ({out_sql})")))?;
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(Error::pg(format!("finishing {in_sql}")))
    }

    async fn load_rows(
        &mut self,
        rows: &mut (dyn RowSource + '_),
        table: &SnapshotTable<'_>,
    ) -> Result<Option<u64>> {
        let in_sql = ddl::copy_in(table.destination, table.schema, false);
        let sink = self
            .client
            .copy_in(&in_sql)
            .await
            .map_err(Error::pg(format!("starting {in_sql}")))?;
        let mut sink = std::pin::pin!(sink);
        let mut count = 0u64;
        let mut buf = bytes::BytesMut::with_capacity(COPY_CHUNK + 4096);
        while let Some(block) = rows.next_rows().await? {
            for row in &block {
                copy_text_row(&mut buf, row);
            }
            count += block.len() as u64;
            if buf.len() >= COPY_CHUNK {
                sink.send(buf.split().freeze())
                    .await
                    .map_err(Error::pg(format!(
                        "copying rows into {}",
                        table.destination
                    )))?;
            }
        }
        if !buf.is_empty() {
            sink.send(buf.split().freeze())
                .await
                .map_err(Error::pg(format!(
                    "copying rows into {}",
                    table.destination
                )))?;
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(Error::pg(format!("finishing {in_sql}")))?;
        Ok(Some(count))
    }
}

/// A table's rows through a cursor in a read-only transaction of its own connection.
pub(super) struct PgRows {
    pub(super) client: Client,
    pub(super) cursor: RowCursor,
}

#[async_trait]
impl RowSource for PgRows {
    async fn next_rows(&mut self) -> Result<Option<Vec<Vec<Datum>>>> {
        let rows = self.cursor.next(&self.client).await?;
        Ok((!rows.is_empty()).then_some(rows))
    }
}

/// Bytes sent per CopyData message by [`PgLoader::load_rows`].
const COPY_CHUNK: usize = 256 * 1024;

/// One row in COPY's text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_text_row(buf: &mut bytes::BytesMut, row: &[Datum]) {
    for (i, d) in row.iter().enumerate() {
        if i > 0 {
            buf.extend_from_slice(b"\t");
        }
        match crate::model::change::text(d) {
            None => buf.extend_from_slice(b"\\N"),
            Some(t) => {
                let bytes = t.as_bytes();
                let mut start = 0;
                for (i, &b) in bytes.iter().enumerate() {
                    let escaped: &[u8] = match b {
                        b'\\' => b"\\\\",
                        b'\t' => b"\\t",
                        b'\n' => b"\\n",
                        b'\r' => b"\\r",
                        _ => continue,
                    };
                    buf.extend_from_slice(&bytes[start..i]);
                    buf.extend_from_slice(escaped);
                    start = i + 1;
                }
                buf.extend_from_slice(&bytes[start..]);
            }
        }
    }
    buf.extend_from_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_rows_escape_what_the_format_reserves() {
        let mut buf = bytes::BytesMut::new();
        let text = |s: &str| Datum::Text(bytes::Bytes::copy_from_slice(s.as_bytes()));
        copy_text_row(&mut buf, &[text("a\tb\nc\\d\re"), Datum::Null, text("")]);
        assert_eq!(&buf[..], b"a\\tb\\nc\\\\d\\re\t\\N\t\n");
    }
}
