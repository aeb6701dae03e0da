//! Chunked copies: large keyed tables copied in key order, a chunk at a time, while the
//! stream runs (`snapshot.mode`, `cdc resync`). The stream's half, and why it is exact, is in
//! `stream/chunks.rs`; this is the chunker:
//!
//! ```text
//!  per table with an unfinished record, per chunk (after the last key recorded):
//!    pg_logical_emit_message low ─► temporary slot with an exported snapshot at C
//!      ─► SELECT … WHERE key > last ORDER BY key LIMIT chunk_rows under it ─► drop the slot
//!      ─► rows to the stream ─► pg_logical_emit_message high
//!      ─► wait for the stream's ack (the destination committed the chunk) ─► record the key
//! ```
//!
//! No snapshot lives longer than one chunk's SELECT, so the source's xmin horizon moves on
//! and the pipeline's slot is consumed as the copy goes. Progress is a record per table in the
//! destination's table-state store (strategy `chunked`), written after the chunk's commit: a
//! run killed anywhere reads at most one chunk again. `cdc resync` writes a fresh record; a
//! running `cdc run` looks for new records at every status tick.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::config::{Config, SnapshotMode};
use crate::conninfo::ConnInfo;
use crate::decode::{Column, Datum, Relation, ReplicaIdentity};
use crate::destination::{Destination, SyncState};
use crate::error::{Error, Result};
use crate::model::schema::{TableName, TableSchema};
use crate::model::sql::{quote_ident, quote_literal};
use crate::source::postgres::replication::ReplicationClient;
use crate::source::postgres::rows::text_rows;
use crate::stream::chunks::{Ack, Chunk, Chunks, Mark, PREFIX};

/// The table-state store's strategy name for a chunked copy's record.
pub const STRATEGY: &str = "chunked";

/// A table's chunked copy, as recorded on the destination (the record's `position`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    pub slot: String,
    pub done: bool,
    /// The key of the last row written (each column's output text); none before the first.
    pub last_key: Option<Vec<String>>,
    pub chunks: u64,
    pub estimated_chunks: u64,
    /// The first chunk empties the destination table (a `cdc resync`).
    pub resync: bool,
}

/// A record with its table.
#[derive(Debug, Clone)]
pub struct Record {
    pub source: TableName,
    pub destination: TableName,
    pub progress: Progress,
    pub rows: i64,
    pub seconds: f64,
}

impl Record {
    fn to_state(&self) -> SyncState {
        SyncState {
            destination_table: self.destination.to_string(),
            source_table: self.source.to_string(),
            strategy: STRATEGY.into(),
            position: Some(serde_json::to_string(&self.progress).expect("progress serializes")),
            last_pass: Some(SystemTime::now()),
            rows: self.rows,
            seconds: self.seconds,
        }
    }

    fn from_state(s: &SyncState) -> Option<Record> {
        if s.strategy != STRATEGY {
            return None;
        }
        Some(Record {
            source: TableName::parse(&s.source_table).ok()?,
            destination: TableName::parse(&s.destination_table).ok()?,
            progress: serde_json::from_str(s.position.as_deref()?).ok()?,
            rows: s.rows,
            seconds: s.seconds,
        })
    }

    /// Rows per second so far, and the seconds left at that rate (from the estimate).
    pub fn rate_and_eta(&self) -> (f64, Option<f64>) {
        let rate = if self.seconds > 0.0 {
            self.rows as f64 / self.seconds
        } else {
            0.0
        };
        let left = self
            .progress
            .estimated_chunks
            .saturating_sub(self.progress.chunks);
        let per_chunk = self.seconds / self.progress.chunks.max(1) as f64;
        let eta =
            (self.progress.chunks > 0 && !self.progress.done).then(|| left as f64 * per_chunk);
        (rate, eta)
    }
}

/// Whether the snapshot copies `table` in chunks under `config`.
pub fn is_chunked(config: &Config, table: &TableSchema) -> bool {
    let keyed = !table.primary_key.is_empty();
    let bytes = table.pages.max(0) as u64 * 8192;
    let chunked = match config.snapshot.mode {
        SnapshotMode::Exported => false,
        SnapshotMode::Chunked => keyed,
        SnapshotMode::Auto => keyed && bytes > config.snapshot.chunked_above_bytes,
    };
    if !keyed
        && config.snapshot.mode != SnapshotMode::Exported
        && bytes > config.snapshot.chunked_above_bytes
    {
        tracing::warn!(table = %table.name, bytes,
            "a large table without a primary key is copied under the exported snapshot (chunks need a key \
             order): the snapshot is held, and the stream waits, until it is copied");
    }
    chunked
}

/// Record a table as to be copied in chunks (from its start).
pub async fn begin(
    config: &Config,
    dest: &dyn Destination,
    source: &TableName,
    destination: &TableName,
    estimated_rows: i64,
    resync: bool,
) -> Result<()> {
    let record = Record {
        source: source.clone(),
        destination: destination.clone(),
        progress: Progress {
            slot: config.source.slot.clone(),
            done: false,
            last_key: None,
            chunks: 0,
            estimated_chunks: (estimated_rows.max(0) as u64)
                .div_ceil(config.snapshot.chunk_rows as u64)
                .max(1),
            resync,
        },
        rows: 0,
        seconds: 0.0,
    };
    dest.save_sync_state(&record.to_state()).await
}

/// Mark a record done without copying (the table is copied otherwise).
pub async fn finish(dest: &dyn Destination, record: &Record) -> Result<()> {
    let mut done = record.clone();
    done.progress.done = true;
    dest.save_sync_state(&done.to_state()).await
}

/// The chunked copies of this pipeline's configured tables, finished or not.
pub async fn records(config: &Config, dest: &dyn Destination) -> Result<Vec<Record>> {
    let pairs = config.table_pairs();
    Ok(dest
        .sync_states()
        .await?
        .iter()
        .filter_map(Record::from_state)
        .filter(|r| r.progress.slot == config.source.slot)
        .filter(|r| {
            pairs
                .iter()
                .any(|(s, d)| *s == r.source && *d == r.destination)
        })
        .collect())
}

/// Start a chunker for the unfinished records, if any, with its channels given to the stream.
pub async fn start(
    config: &Config,
    dest: &Arc<dyn Destination>,
) -> Result<Option<(Chunks, tokio::task::JoinHandle<Result<()>>)>> {
    let pending: Vec<Record> = records(config, dest.as_ref())
        .await?
        .into_iter()
        .filter(|r| !r.progress.done)
        .collect();
    if pending.is_empty() {
        return Ok(None);
    }
    let run = nonce();
    let (rows_tx, rows_rx) = mpsc::channel(1);
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let chunker = Chunker {
        info: config.source_conninfo()?,
        temp_slot: format!("{}_chunk_{}", config.source.slot, std::process::id()),
        filters: config
            .table_pairs()
            .into_iter()
            .zip(&config.tables)
            .map(|((s, _), t)| (s, t.filter.clone()))
            .collect(),
        chunk_rows: config.snapshot.chunk_rows,
        dest: dest.clone(),
        run,
        rows: rows_tx,
        acks: acks_rx,
    };
    let task = tokio::spawn(chunker.run(pending));
    Ok(Some((Chunks::new(run, rows_rx, acks_tx), task)))
}

/// An identifier for one chunker, so that the stream tells its watermarks from an earlier one's.
fn nonce() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

struct Chunker {
    info: ConnInfo,
    temp_slot: String,
    filters: Vec<(TableName, Option<String>)>,
    chunk_rows: usize,
    dest: Arc<dyn Destination>,
    run: u64,
    rows: mpsc::Sender<Chunk>,
    acks: mpsc::UnboundedReceiver<Ack>,
}

impl Chunker {
    async fn run(mut self, pending: Vec<Record>) -> Result<()> {
        let src = crate::pg::connect_qualified(&self.info).await?;
        let mut repl = ReplicationClient::connect(&self.info).await?;
        if repl.server_version_num() < 140000 {
            return Err(Error::definite(
                "chunked copies need a Postgres 14+ source (its stream carries the chunks' watermarks): \
                 set snapshot.mode = \"exported\" and run `cdc snapshot --force`"
                    .into(),
            ));
        }
        for record in pending {
            self.copy_table(&src, &mut repl, record).await?;
        }
        repl.close().await;
        Ok(())
    }

    async fn copy_table(
        &mut self,
        src: &Client,
        repl: &mut ReplicationClient,
        mut record: Record,
    ) -> Result<()> {
        let table = record.source.clone();
        let filter = self
            .filters
            .iter()
            .find(|(s, _)| *s == table)
            .and_then(|(_, f)| f.clone());
        tracing::info!(table = %table, chunks_done = record.progress.chunks, rows = record.rows,
            "copying in chunks while the stream runs");
        let mut saved = record.progress.clone();
        while !record.progress.done {
            let started = Instant::now();
            let schema = crate::source::postgres::catalog::read_table(src, &table)
                .await?
                .ok_or_else(|| Error::definite(format!("source table {table} does not exist")))?;
            let relation = relation(src, &schema).await?;
            let chunk_no = record.progress.chunks;
            let mark = |m: &str| Mark {
                mark: m.into(),
                run: self.run,
                chunk: chunk_no,
                table: table.to_string(),
            };
            emit(src, &mark("low")).await?;
            let (consistent, rows) = self
                .read(src, repl, &schema, &relation, &record, filter.as_deref())
                .await?;
            let n = rows.len();
            let last_key = rows.last().map(|r| key_text(&schema, &relation, r));
            let chunk = Chunk {
                chunk: chunk_no,
                table: table.clone(),
                relation,
                consistent,
                rows,
                truncate_first: record.progress.resync && chunk_no == 0,
            };
            self.rows.send(chunk).await.map_err(|_| stream_gone())?;
            emit(src, &mark("high")).await?;
            match self.acks.recv().await.ok_or_else(stream_gone)? {
                Ack::Written { .. } => {
                    if let Some(newer) = self.requested_since(&record.destination, &saved).await? {
                        // A `cdc resync` of this table while it was being copied: start over.
                        tracing::info!(table = %table, "a new resync of the table was requested: copying it from its start");
                        saved = newer.progress.clone();
                        record = newer;
                        continue;
                    }
                    record.progress.chunks += 1;
                    record.rows += n as i64;
                    record.seconds += started.elapsed().as_secs_f64();
                    if let Some(k) = last_key {
                        record.progress.last_key = Some(k);
                    }
                    record.progress.done = n < self.chunk_rows;
                    record.progress.estimated_chunks =
                        record.progress.estimated_chunks.max(record.progress.chunks);
                    self.dest.save_sync_state(&record.to_state()).await?;
                    saved = record.progress.clone();
                    tracing::debug!(table = %table, chunk = chunk_no, rows = n, "chunk written");
                }
                Ack::Redo { why, .. } => {
                    tracing::info!(table = %table, chunk = chunk_no, reason = %why, "reading the chunk again");
                }
            }
            self.test_pause("after_chunk").await;
        }
        tracing::info!(table = %table, rows = record.rows, chunks = record.progress.chunks,
            seconds = record.seconds, "table copied in chunks");
        Ok(())
    }

    /// The table's record as stored, when it is no longer the one last saved (`cdc resync`
    /// wrote a new one).
    async fn requested_since(
        &self,
        destination: &TableName,
        saved: &Progress,
    ) -> Result<Option<Record>> {
        Ok(self
            .dest
            .sync_states()
            .await?
            .iter()
            .filter_map(Record::from_state)
            .find(|r| r.destination == *destination && r.progress.slot == saved.slot)
            .filter(|r| r.progress != *saved && r.progress.chunks == 0)
            .filter(|r| r.progress.resync))
    }

    /// The chunk after the recorded key, read under a temporary slot's exported snapshot.
    async fn read(
        &self,
        src: &Client,
        repl: &mut ReplicationClient,
        schema: &TableSchema,
        relation: &Relation,
        record: &Record,
        filter: Option<&str>,
    ) -> Result<(crate::lsn::Lsn, Vec<Vec<Datum>>)> {
        let (consistent, snapshot) = repl.create_temporary_snapshot(&self.temp_slot).await?;
        let sql = select_sql(
            schema,
            relation,
            record.progress.last_key.as_deref(),
            filter,
            self.chunk_rows,
        );
        let ctx = format!("reading a chunk of {}", schema.name);
        src.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&snapshot)
        ))
        .await
        .map_err(Error::pg(ctx.clone()))?;
        // Imported: the slot (and the snapshot's export) may go now.
        repl.drop_slot(&self.temp_slot, false).await?;
        let rows = text_rows(src, &sql).await;
        src.batch_execute("COMMIT").await.map_err(Error::pg(ctx))?;
        self.test_pause("before_high").await;
        Ok((consistent, rows?))
    }

    /// Tests stop the chunker here until they let it go (`CDC_TEST_CHUNK_PAUSE=DIR`: it
    /// creates `DIR/<point>` and waits for `DIR/<point>.go`).
    async fn test_pause(&self, point: &str) {
        let Ok(dir) = std::env::var("CDC_TEST_CHUNK_PAUSE") else {
            return;
        };
        let dir = std::path::Path::new(&dir);
        let _ = std::fs::write(dir.join(point), b"");
        let go = dir.join(format!("{point}.go"));
        while !go.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(go);
    }
}

fn stream_gone() -> Error {
    Error::from(crate::error::Cause::Io {
        context: "the stream applying a chunked copy stopped".into(),
        source: std::io::ErrorKind::ConnectionAborted.into(),
    })
}

/// Write a watermark into the WAL.
async fn emit(src: &Client, mark: &Mark) -> Result<()> {
    src.execute(
        "SELECT pg_catalog.pg_logical_emit_message(false, $1::text, $2::text)",
        &[&PREFIX, &mark.to_json()],
    )
    .await
    .map_err(Error::pg(
        "writing a chunk's watermark (pg_logical_emit_message)",
    ))?;
    Ok(())
}

/// The table as pgoutput describes it: its published columns in order, the replica identity
/// key marked.
async fn relation(src: &Client, schema: &TableSchema) -> Result<Relation> {
    let rows = src
        .query(
            "SELECT a.attname::text, a.atttypid::oid, a.atttypmod
               FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&schema.oid],
        )
        .await
        .map_err(Error::pg(format!("reading the columns of {}", schema.name)))?;
    let full = schema.replica_identity == 'f';
    Ok(Relation {
        xid: None,
        id: schema.oid,
        namespace: schema.name.schema.clone(),
        name: schema.name.name.clone(),
        replica_identity: if full {
            ReplicaIdentity::Full
        } else {
            ReplicaIdentity::Default
        },
        columns: rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                Column {
                    is_key: full || schema.primary_key.contains(&name),
                    name,
                    type_oid: r.get(1),
                    type_modifier: r.get(2),
                }
            })
            .collect(),
    })
}

/// The next chunk's query: every published column, rows after `after` in key order.
fn select_sql(
    schema: &TableSchema,
    relation: &Relation,
    after: Option<&[String]>,
    filter: Option<&str>,
    limit: usize,
) -> String {
    let cols: Vec<String> = relation
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let key: Vec<String> = schema.primary_key.iter().map(|k| quote_ident(k)).collect();
    let mut conditions = Vec::new();
    if let Some(after) = after {
        let values: Vec<String> = schema
            .primary_key
            .iter()
            .zip(after)
            .map(|(k, v)| {
                let ty = schema
                    .columns
                    .iter()
                    .find(|c| c.name == *k)
                    .map_or("text", |c| c.type_sql.as_str());
                format!("{}::{ty}", quote_literal(v))
            })
            .collect();
        conditions.push(format!("({}) > ({})", key.join(", "), values.join(", ")));
    }
    if let Some(f) = filter {
        conditions.push(format!("({f})"));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {limit}",
        cols.join(", "),
        schema.name.quoted(),
        key.join(", ")
    )
}

/// A row's key as text, in key order.
fn key_text(schema: &TableSchema, relation: &Relation, row: &[Datum]) -> Vec<String> {
    schema
        .primary_key
        .iter()
        .filter_map(|k| relation.columns.iter().position(|c| c.name == *k))
        .map(|i| match row.get(i) {
            Some(Datum::Text(t)) => String::from_utf8_lossy(t).into_owned(),
            _ => String::new(),
        })
        .collect()
}

/// `cdc resync TABLE...`: record each table to be copied again in chunks. A running `cdc run`
/// starts within a status tick; otherwise the next `cdc run` does.
pub async fn request(config: &Config, tables: &[String]) -> Result<Vec<TableName>> {
    let dest = crate::destination::open(config).await?;
    let state = dest.load_state(&config.source.slot).await?;
    if !state.is_some_and(|s| s.snapshot_completed()) {
        return Err(Error::definite(format!(
            "the destination has no streaming pipeline for slot {}: run `cdc snapshot` (or `cdc run`) first",
            config.source.slot
        )));
    }
    let src = crate::pg::connect_qualified(&config.source_conninfo()?).await?;
    let pairs = config.table_pairs();
    let mut requested = Vec::new();
    for name in tables {
        let wanted = TableName::parse(name).map_err(Error::definite)?;
        let Some((source, destination)) = pairs.iter().find(|(s, d)| *s == wanted || *d == wanted)
        else {
            return Err(Error::definite(format!(
                "{name} is not in [[tables]]: `cdc resync` copies configured tables again"
            )));
        };
        let schema = crate::source::postgres::catalog::read_table(&src, source)
            .await?
            .ok_or_else(|| Error::definite(format!("source table {source} does not exist")))?;
        if schema.primary_key.is_empty() {
            return Err(Error::definite(format!(
                "{source} has no primary key, so it cannot be copied in chunks; copy it again with \
                 `cdc snapshot --force`"
            )));
        }
        begin(
            config,
            dest.as_ref(),
            source,
            destination,
            schema.estimated_rows,
            true,
        )
        .await?;
        requested.push(source.clone());
    }
    Ok(requested)
}

/// Wait until the chunked copies of `tables` are done, calling `progress` with a line every
/// few seconds.
pub async fn wait(config: &Config, tables: &[TableName], progress: impl Fn(String)) -> Result<()> {
    let dest = crate::destination::open(config).await?;
    let mut last = Instant::now();
    loop {
        let records = records(config, dest.as_ref()).await?;
        let open: Vec<&Record> = records
            .iter()
            .filter(|r| tables.contains(&r.source) && !r.progress.done)
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        if last.elapsed().as_secs() >= 5 {
            last = Instant::now();
            for r in open {
                progress(format!(
                    "{}: {} of ~{} chunks, {} rows",
                    r.source, r.progress.chunks, r.progress.estimated_chunks, r.rows
                ));
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `cdc resync`: request the copies, say so, and with `wait` follow them to the end.
pub async fn resync(config: &Config, tables: &[String], wait_done: bool) -> Result<()> {
    let requested = request(config, tables).await?;
    for t in &requested {
        println!("{t}: copy in chunks requested; `cdc run` starts it within 10 s");
    }
    if wait_done {
        wait(config, &requested, |line| eprintln!("{line}")).await?;
        for t in &requested {
            println!("{t}: copied again");
        }
    }
    Ok(())
}
