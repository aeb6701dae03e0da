//! From decoded messages to destination transactions.
//!
//! ```text
//!  payload ─► decode ─┬─ inside a stream block ─► StreamedTxns (memory, then disk)
//!                     │     └─ and, for one at a time, applied ahead (speculate.rs;
//!                     │        its copy then goes straight to disk)
//!                     │                               │ Stream Commit: commit it, or replay
//!                     │                               │ in order minus aborted subtransactions
//!                     └─ otherwise ─► process ◄───────┘
//!                                       │ Relation: map to the destination (schema changes)
//!                                       │ Insert/Update/Delete/Truncate: Applier
//!                                       └ Commit: maybe end the destination transaction
//! ```
//!
//! Batching: many source transactions share one destination transaction until
//! `apply.batch_max_rows`, `apply.batch_max_bytes` or `apply.batch_max_wait_ms` is reached; a
//! destination commit always falls on a source commit boundary, and records that commit's end
//! LSN. A source transaction whose commit LSN is below the applied position was applied
//! before a restart and is skipped whole.

mod backfill;
pub mod chunks;
pub mod enum_labels;
mod relation;
mod speculate;
pub mod spill;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_postgres::Client;

use crate::apply::Applier;

use crate::config::ApplyConfig;
use crate::decode::{Datum, LogicalMessage, PgOutputDecoder, PgTimestamp};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::model::change::{version, RowOp, TableMap, Version};
use crate::model::schema::TableName;
use speculate::Speculation;
use spill::StreamedTxns;

/// Where the stream is relative to source transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceTxn {
    /// Between transactions.
    Outside,
    /// Inside one whose changes are applied.
    Applying,
    /// Inside one applied before a restart (its commit precedes the recorded position).
    Skipping,
}

impl SourceTxn {
    /// Entering a transaction that commits at `commit_lsn`, with `applied` recorded.
    fn begin(commit_lsn: Lsn, applied: Lsn) -> Self {
        if commit_lsn < applied {
            SourceTxn::Skipping
        } else {
            SourceTxn::Applying
        }
    }
}

/// Counters since start, for logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub transactions: u64,
    pub rows: u64,
    pub batches: u64,
}

/// The state between the replication stream and the destination.
pub struct Streamer {
    applier: Applier,
    /// Source session for type names of new columns (`format_type`, empty search path).
    catalog: Client,
    pairs: Vec<(TableName, TableName)>,
    /// Relation id → its destination mapping; `None` for tables we do not replicate.
    relations: HashMap<u32, Option<Arc<TableMap>>>,
    streamed: StreamedTxns,
    /// A second destination session for applying a streamed transaction ahead of its commit
    /// (see `speculate.rs`), while no speculation uses it.
    spare: Option<Applier>,
    speculation: Option<Speculation>,
    /// Where the stream is relative to source transactions.
    txn: SourceTxn,
    /// Commit LSN of the source transaction being processed.
    txn_commit: Lsn,
    /// Changes of that transaction so far: with `txn_commit`, each change's version.
    txn_seq: u64,
    /// While a backfill runs: its rows share one version (their number is not in the WAL, so
    /// counting them would shift the versions of the changes after it on a replay).
    backfill_version: Option<Version>,
    /// Tables that joined the pipeline after its snapshot, each copied under a snapshot taken
    /// at this position: their changes in transactions committed before it are in the copy.
    joined: HashMap<TableName, Lsn>,
    /// End LSN and time of the last source commit written into the open destination
    /// transaction but not yet committed there.
    included: Option<(Lsn, PgTimestamp)>,
    /// Commit time of the last source transaction seen (for a chunk's position).
    last_commit_time: PgTimestamp,
    /// A running chunked copy's channels (`chunks.rs`).
    chunks: Option<chunks::Chunks>,
    batch_started: Option<Instant>,
    batch_rows: usize,
    batch_bytes: usize,
    limits: ApplyConfig,
    /// The end LSN of the last source commit the destination has committed.
    applied: Lsn,
    pub stats: Stats,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The row change an Insert, Update or Delete carries, with its relation id.
fn row_change(msg: LogicalMessage) -> Option<(u32, RowOp)> {
    match msg {
        LogicalMessage::Insert(i) => Some((i.relation_id, RowOp::Insert(i.new.0))),
        LogicalMessage::Update(u) => {
            let old = u.old.map(|o| o.tuple().0.clone());
            let mut new = u.new.0;
            // "Unchanged" means the old row's value: when the old row carries it (a replica
            // identity column, or any column with REPLICA IDENTITY FULL), it is filled in here,
            // so a key made of identity columns is always whole.
            if let Some(old) = &old {
                for (n, o) in new.iter_mut().zip(old) {
                    if *n == Datum::UnchangedToast && matches!(o, Datum::Text(_) | Datum::Binary(_))
                    {
                        *n = o.clone();
                    }
                }
            }
            Some((u.relation_id, RowOp::Update { old, new }))
        }
        LogicalMessage::Delete(d) => Some((d.relation_id, RowOp::Delete(d.old.tuple().0.clone()))),
        _ => None,
    }
}

impl Streamer {
    /// `spare`: a second destination session; with it, streamed transactions are applied
    /// while they arrive instead of at their commit.
    pub fn new(
        applier: Applier,
        spare: Option<Applier>,
        catalog: Client,
        pairs: Vec<(TableName, TableName)>,
        limits: ApplyConfig,
        applied: Lsn,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Streamer {
            applier,
            catalog,
            pairs,
            relations: HashMap::new(),
            streamed: StreamedTxns::new(limits.max_memory_bytes, std::env::temp_dir()),
            spare,
            speculation: None,
            txn: SourceTxn::Outside,
            txn_commit: Lsn::default(),
            txn_seq: 0,
            backfill_version: None,
            joined: HashMap::new(),
            included: None,
            last_commit_time: PgTimestamp::default(),
            chunks: None,
            batch_started: None,
            batch_rows: 0,
            batch_bytes: 0,
            limits,
            applied,
            stats: Stats::default(),
            metrics,
        }
    }

    /// Tables copied after the snapshot, with the position each copy saw up to.
    pub fn set_joined(&mut self, joined: HashMap<TableName, Lsn>) {
        self.joined = joined;
    }

    /// Whether a joined table's copy still covers transactions ahead of the stream, or a
    /// chunked copy runs: their commit position must be known before applying (to skip them,
    /// or to hold them in a watermark window), so nothing is applied ahead meanwhile.
    fn joining(&self) -> bool {
        self.joined.values().any(|&at| at > self.applied) || self.chunking()
    }

    /// Whether a change of `map` in the current transaction is already in its table's copy.
    fn in_joined_copy(&self, map: &TableMap) -> bool {
        self.joined
            .get(&map.source)
            .is_some_and(|&at| self.txn_commit < at)
    }

    /// The position the destination has committed.
    pub fn applied(&self) -> Lsn {
        self.applied
    }

    /// Nothing received is waiting to be applied: no open source transaction, no uncommitted
    /// destination work, no buffered in-progress transaction.
    pub fn is_idle(&self) -> bool {
        self.txn == SourceTxn::Outside
            && self.included.is_none()
            && !self.applier.in_transaction()
            && self.streamed.is_empty()
            && self.speculation.is_none()
            && !self.chunking()
    }

    /// When the open batch must be committed (the latency bound), if one is waiting.
    pub fn commit_deadline(&self) -> Option<Instant> {
        if self.in_window() {
            return None;
        }
        match (self.txn, self.included, self.batch_started) {
            (SourceTxn::Outside, Some(_), Some(start)) => {
                Some(start + Duration::from_millis(self.limits.batch_max_wait_ms))
            }
            _ => None,
        }
    }

    /// Handle one XLogData payload. Returns the new applied position if this committed.
    pub async fn handle(
        &mut self,
        data: Bytes,
        decoder: &mut PgOutputDecoder,
        wal_start: Lsn,
    ) -> Result<Option<Lsn>> {
        let msg = decoder.decode(data.clone()).map_err(|source| {
            Error::from(crate::error::Cause::Decode {
                lsn: wal_start,
                source,
            })
        })?;
        if let (Some(xid), false) = (
            decoder.open_stream(),
            matches!(msg, LogicalMessage::StreamStart(_)),
        ) {
            self.streamed.push(xid, data)?;
            if self.speculating_on(xid) {
                self.speculate(msg).await?;
            }
            return Ok(None);
        }
        match msg {
            LogicalMessage::StreamStart(s) if s.first_segment => {
                self.begin_speculation(s.xid)?;
                Ok(None)
            }
            LogicalMessage::StreamCommit(c) if self.speculating_on(c.xid) => {
                self.commit_speculation(c.commit_lsn, c.end_lsn, c.commit_time)
                    .await
            }
            LogicalMessage::StreamCommit(c) => {
                self.replay(c.xid, c.commit_lsn, c.end_lsn, c.commit_time)
                    .await
            }
            LogicalMessage::StreamAbort(a) => {
                self.streamed.abort(a.xid, a.subxid);
                if self.speculating_on(a.xid) {
                    // A whole abort: nothing to keep. A subtransaction's: its rows are mixed
                    // into the open transaction, so replay the rest from the spilled copy.
                    self.abandon_speculation("an aborted subtransaction")
                        .await?;
                }
                Ok(None)
            }
            other => self.process(other).await,
        }
    }

    /// One message outside a stream block (or replayed from one).
    async fn process(&mut self, msg: LogicalMessage) -> Result<Option<Lsn>> {
        match msg {
            LogicalMessage::Begin(b) => {
                // Applied before a restart: its commit precedes the recorded end of the last one.
                self.txn = SourceTxn::begin(b.final_lsn, self.applied);
                self.txn_commit = b.final_lsn;
                self.txn_seq = 0;
            }
            LogicalMessage::Commit(c) => {
                return self.end_transaction(c.end_lsn, c.commit_time).await
            }
            LogicalMessage::Relation(r) => {
                self.on_relation(r, true).await?;
            }
            change @ (LogicalMessage::Insert(_)
            | LogicalMessage::Update(_)
            | LogicalMessage::Delete(_)) => {
                if let Some((relation_id, op)) = row_change(change) {
                    self.push(relation_id, op).await?;
                }
            }
            LogicalMessage::Truncate(t) => {
                if self.txn != SourceTxn::Skipping {
                    let mut maps = Vec::new();
                    for id in &t.relation_ids {
                        if let Some(m) = self.mapping(*id)? {
                            if !self.in_joined_copy(&m) {
                                maps.push(m);
                            }
                        }
                    }
                    for m in &maps {
                        self.truncated(&m.source);
                    }
                    if !maps.is_empty() {
                        self.start_batch();
                        self.applier.truncate(&maps, t.restart_identity).await?;
                    }
                }
            }
            LogicalMessage::Message(m) => self.on_message(m).await?,
            LogicalMessage::Type(_) | LogicalMessage::Origin(_) => {}
            LogicalMessage::StreamStart(_) | LogicalMessage::StreamStop => {}
            LogicalMessage::StreamCommit(_) | LogicalMessage::StreamAbort(_) => {
                return Err(Error::from(crate::error::Cause::Protocol {
                    context: "replaying a streamed transaction".into(),
                    detail: "nested stream end".into(),
                }))
            }
            LogicalMessage::BeginPrepare(_)
            | LogicalMessage::Prepare(_)
            | LogicalMessage::CommitPrepared(_)
            | LogicalMessage::RollbackPrepared(_)
            | LogicalMessage::StreamPrepare(_) => {
                return Err(Error::from(crate::error::Cause::Protocol {
                    context: "streaming".into(),
                    detail: "two-phase message received although two_phase was not requested"
                        .into(),
                }))
            }
        }
        Ok(None)
    }

    async fn replay(
        &mut self,
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        time: PgTimestamp,
    ) -> Result<Option<Lsn>> {
        let (mut replay, aborted) = self.streamed.take(xid)?;
        self.txn = SourceTxn::begin(commit_lsn, self.applied);
        self.txn_commit = commit_lsn;
        self.txn_seq = 0;
        let mut decoder = PgOutputDecoder::inside_stream(xid);
        while let Some(m) = replay.next_message()? {
            let msg = decoder.decode(m).map_err(|source| {
                Error::from(crate::error::Cause::Decode {
                    lsn: commit_lsn,
                    source,
                })
            })?;
            let sub = match &msg {
                LogicalMessage::Insert(x) => x.xid,
                LogicalMessage::Update(x) => x.xid,
                LogicalMessage::Delete(x) => x.xid,
                LogicalMessage::Truncate(x) => x.xid,
                _ => None,
            };
            if sub.is_some_and(|s| aborted.contains(&s)) {
                continue;
            }
            self.process(msg).await?;
        }
        self.end_transaction(end_lsn, time).await
    }

    fn start_batch(&mut self) {
        self.batch_started.get_or_insert_with(Instant::now);
    }

    fn mapping(&self, relation_id: u32) -> Result<Option<Arc<TableMap>>> {
        self.relations.get(&relation_id).cloned().ok_or_else(|| {
            Error::from(crate::error::Cause::Protocol {
                context: "streaming".into(),
                detail: format!("change for relation {relation_id} before its Relation message"),
            })
        })
    }

    async fn push(&mut self, relation_id: u32, op: RowOp) -> Result<()> {
        // Counted before anything is filtered: the same WAL gives the same versions.
        let version = match self.backfill_version {
            Some(v) => v,
            None => {
                self.txn_seq += 1;
                version(self.txn_commit, self.txn_seq)
            }
        };
        if self.txn == SourceTxn::Skipping {
            return Ok(());
        }
        let Some(map) = self.mapping(relation_id)? else {
            return Ok(());
        };
        if self.in_joined_copy(&map) {
            return Ok(());
        }
        let Some(op) = self.hold(&map, op, version) else {
            self.start_batch();
            return Ok(());
        };
        self.push_mapped(&map, op, version).await
    }

    /// Queue a change for the destination, writing into the open transaction when the batch
    /// is full.
    async fn push_mapped(
        &mut self,
        map: &Arc<TableMap>,
        op: RowOp,
        version: Version,
    ) -> Result<()> {
        self.metrics.row(&map.dest.to_string(), op.kind());
        self.start_batch();
        let before = self.applier.pending_bytes();
        self.applier.push(map, op, version);
        self.batch_rows += 1;
        self.batch_bytes += self.applier.pending_bytes() - before;
        self.stats.rows += 1;
        // Memory stays bounded whatever the transaction size: write into the open destination
        // transaction (without committing) once the batch limits are reached.
        if self
            .limits
            .batch_full(self.applier.pending_rows(), self.applier.pending_bytes())
        {
            self.applier.flush().await?;
        }
        Ok(())
    }

    async fn end_transaction(&mut self, end_lsn: Lsn, time: PgTimestamp) -> Result<Option<Lsn>> {
        let skipped = std::mem::replace(&mut self.txn, SourceTxn::Outside) == SourceTxn::Skipping;
        if skipped {
            return Ok(None);
        }
        self.stats.transactions += 1;
        self.last_commit_time = time;
        self.metrics.transaction();
        self.included = Some((end_lsn, time));
        self.start_batch();
        let waited = self.batch_started.map_or(Duration::ZERO, |s| s.elapsed());
        if self.batch_rows >= self.limits.batch_rows()
            || self.batch_bytes >= self.limits.batch_max_bytes
            || waited >= Duration::from_millis(self.limits.batch_max_wait_ms)
        {
            return self.commit().await;
        }
        Ok(None)
    }

    /// Commit the open batch if it holds whole source transactions; returns the new position.
    pub async fn commit(&mut self) -> Result<Option<Lsn>> {
        // A watermark window commits whole with its chunk (see chunks.rs).
        if self.txn != SourceTxn::Outside || self.in_window() {
            return Ok(None);
        }
        let Some((lsn, time)) = self.included.take() else {
            return Ok(None);
        };
        let started = Instant::now();
        self.applier.commit(lsn, time).await?;
        self.metrics.batch(
            self.batch_rows,
            started.elapsed().as_secs_f64(),
            time.to_system_time(),
        );
        tracing::debug!(lsn = %lsn, rows = self.batch_rows, "destination transaction committed");
        self.applied = lsn;
        self.batch_started = None;
        self.batch_rows = 0;
        self.batch_bytes = 0;
        self.stats.batches += 1;
        self.chunks_committed();
        Ok(Some(lsn))
    }

    /// On shutdown: commit whole transactions, roll back a partial one.
    pub async fn finish(&mut self) -> Result<()> {
        if self.txn != SourceTxn::Outside {
            self.txn = SourceTxn::Outside;
            self.included = None;
            self.applier.rollback().await?;
        }
        self.commit().await?;
        self.applier.rollback().await?;
        // Last: the speculative task may be waiting for locks the main session held.
        self.abandon_speculation("a shutdown").await
    }

    /// Nothing is in flight and the server has sent everything up to `wal_end`: record it as
    /// applied, so that an idle publication does not pin WAL. Returns whether it advanced.
    pub async fn advance_idle(&mut self, wal_end: Lsn) -> Result<bool> {
        if !self.is_idle() || wal_end <= self.applied {
            return Ok(false);
        }
        self.applier.advance_idle(wal_end).await?;
        self.applied = wal_end;
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
