//! The snapshot's rows into ClickHouse: a source `COPY … TO STDOUT` (text) converted block by
//! block (`tsv`) and streamed as **one INSERT per range**, never one per row. Snapshot rows get
//! version 0: every streamed change carries a version from its commit LSN, which is higher.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::ddl::Names;
use super::http::Client;
use super::tsv;
use crate::destination::{Loader, SnapshotTable};
use crate::error::{Error, Result};
use crate::source::postgres::copy_out::CopySource;

/// Version and deleted flag of a snapshot row.
const SNAPSHOT_COLUMNS: &[u8] = b"\t0\t0";

/// Settings of our INSERTs: every key occurs once per INSERT (a snapshot range holds distinct
/// keys, a batch one final state per key), so ReplacingMergeTree's replacing inside each
/// inserted block would only cost time; merges and `FINAL` still keep the newest version.
pub const INSERT_SETTINGS: &str = "optimize_on_insert = 0";

/// Blocks in flight between the source COPY and the INSERT.
const BLOCKS_IN_FLIGHT: usize = 4;

pub struct ClickHouseLoader {
    client: Client,
    cluster: Option<String>,
}

impl ClickHouseLoader {
    pub fn new(client: Client, cluster: Option<String>) -> Self {
        ClickHouseLoader { client, cluster }
    }
}

#[async_trait]
impl Loader for ClickHouseLoader {
    async fn load(
        &mut self,
        src: &mut CopySource,
        out_sql: &str,
        table: &SnapshotTable<'_>,
        bytes: &AtomicU64,
    ) -> Result<u64> {
        let names = Names::of(self.client.database(), table.destination);
        let fields = tsv::fields(table.schema);
        let insert = format!(
            "INSERT INTO {} SETTINGS {INSERT_SETTINGS} FORMAT TSV",
            names.rows_table(self.cluster.as_deref())
        );
        copy_into(
            &self.client,
            src,
            out_sql,
            insert,
            &fields,
            SNAPSHOT_COLUMNS,
            bytes,
            &table.destination.to_string(),
        )
        .await
    }
}

/// Run `out_sql` (a COPY in text format) on `src` and stream its rows, converted with `fields`
/// and each followed by `suffix`, as the body of one `insert`; `what` names the rows in
/// errors. An error abandons the INSERT.
#[allow(clippy::too_many_arguments)]
pub async fn copy_into(
    client: &Client,
    src: &mut CopySource,
    out_sql: &str,
    insert: String,
    fields: &[(String, tsv::Field)],
    suffix: &'static [u8],
    bytes: &AtomicU64,
    what: &str,
) -> Result<u64> {
    src.copy_out(out_sql).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(BLOCKS_IN_FLIGHT);
    let client = client.clone();
    let sender = tokio::spawn(async move { client.insert_stream(&insert, rx).await });
    let mut rows = 0u64;
    let read = async {
        while let Some(chunk) = src.next_chunk().await? {
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 4);
            rows += tsv::convert(&chunk, fields, suffix, &mut out)
                .map_err(|e| Error::definite(format!("copying {what}: {e}")))?
                as u64;
            if tx.send(Ok(Bytes::from(out))).await.is_err() {
                // The INSERT failed; its error comes from the sender.
                break;
            }
        }
        Ok::<(), Error>(())
    };
    if let Err(e) = read.await {
        // Abandon the INSERT: the rows ClickHouse has not yet formed into a block (up to
        // max_insert_block_size) are dropped. A failed snapshot is redone from new tables.
        let _ = tx.send(Err(Error::definite(e.to_string()))).await;
        drop(tx);
        let _ = sender.await;
        return Err(e);
    }
    drop(tx);
    sender
        .await
        .map_err(Error::stopped("ClickHouse insert task"))??;
    Ok(rows)
}
