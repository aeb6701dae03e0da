//! Apply a large in-progress transaction *before* it commits, so that its commit on the
//! source becomes visible on the destination almost at once.
//!
//! ```text
//!  Stream Start (first chunk) ─► a task takes the second destination session
//!  chunks ─► spilled to disk (the fallback) AND grouped into batches by the stream reader,
//!            sent to the task, which writes them in one open transaction: the next batch is
//!            read and decoded while the destination writes this one
//!  Stream Commit ─► main batch committed first (earlier commits), then the task commits
//!  Stream Abort ─► the task rolls back: nothing of it was ever visible
//! ```
//!
//! **Why a second session and why it cannot deadlock with the first**: while the big
//! transaction X is open on the source, other transactions keep committing and must reach the
//! destination first (commit order). They run in the main session. On the source, X holds a
//! lock on every row it changed until it commits, so no transaction committing before X can
//! touch those rows: the main session never waits for the speculative one. The other way
//! round, X may change rows that a still uncommitted main batch wrote: then the task waits,
//! but the main session is never waiting for the task (only at X's commit, after committing
//! its own batch), so the main batch's commit at its deadline releases the task.
//!
//! **Whenever speculation could be wrong, it steps back** (rolls back, and the transaction is
//! replayed from its spilled copy at commit, as without speculation): a subtransaction abort
//! (its rows are mixed into the open transaction), a schema change (DDL would lock tables the
//! main session needs), a TRUNCATE, a table without a key (its rows are matched by value, so
//! the sessions could pick the same row), a change before its Relation message.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::apply::Applier;

use crate::decode::{LogicalMessage, PgTimestamp};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::model::change::{Batch, Pending};

use super::Streamer;

/// Batches queued for the task before the stream reader waits for it: one being written, one
/// ready, so the destination never waits for the reader while the reader keeps up.
const QUEUE_BATCHES: usize = 2;

/// What the stream reader tells the task.
enum Command {
    Write(Batch),
    /// Record the position and commit; hand the session back.
    Commit(Lsn, PgTimestamp, oneshot::Sender<(Applier, Result<()>)>),
    /// Roll back; hand the session back.
    Rollback(oneshot::Sender<(Applier, Result<()>)>),
}

/// The in-progress transaction being applied ahead of its commit.
pub(super) struct Speculation {
    pub xid: u32,
    commands: mpsc::Sender<Command>,
    /// Rows not yet sent to the task.
    pending: Pending,
    rows: usize,
}

/// The task: write batches into one open transaction. After a failed write it only waits for
/// the end, where the error is reported.
async fn apply_ahead(mut applier: Applier, mut commands: mpsc::Receiver<Command>) {
    let mut failed: Option<Error> = None;
    // Where the task's time goes, for the log: waiting for the reader vs. writing.
    let (mut waiting, mut writing, mut batches) = (Duration::ZERO, Duration::ZERO, 0u64);
    loop {
        let asked = Instant::now();
        let Some(command) = commands.recv().await else {
            return;
        };
        if batches > 0 {
            waiting += asked.elapsed();
        }
        match command {
            Command::Write(batch) => {
                if failed.is_none() {
                    let started = Instant::now();
                    if let Err(e) = applier.write(batch).await {
                        failed = Some(e);
                    }
                    writing += started.elapsed();
                    batches += 1;
                }
            }
            Command::Commit(lsn, time, reply) => {
                tracing::debug!(
                    batches,
                    writing_ms = writing.as_millis() as u64,
                    waiting_for_reader_ms = waiting.as_millis() as u64,
                    "apply-ahead task finished writing"
                );
                let result = match failed.take() {
                    Some(e) => {
                        let _ = applier.rollback().await;
                        Err(e)
                    }
                    None => applier.commit(lsn, time).await,
                };
                let _ = reply.send((applier, result));
                return;
            }
            Command::Rollback(reply) => {
                let result = applier.rollback().await;
                let _ = reply.send((applier, result));
                return;
            }
        }
    }
}

fn task_gone() -> Error {
    Error::definite("the task applying a streamed transaction ended unexpectedly".into())
}

impl Streamer {
    /// Whether `xid`'s chunks are being applied ahead of its commit.
    pub(super) fn speculating_on(&self, xid: u32) -> bool {
        self.speculation.as_ref().is_some_and(|s| s.xid == xid)
    }

    /// The first chunk of a streamed transaction: apply it ahead if the spare session is free.
    /// Its fallback copy goes straight to disk.
    pub(super) fn begin_speculation(&mut self, xid: u32) -> Result<()> {
        if self.speculation.is_some()
            || self.txn != super::SourceTxn::Outside
            || self.spare.is_none()
            || self.joining()
        {
            return Ok(());
        }
        self.streamed.keep_on_disk(xid)?;
        let applier = self.spare.take().expect("checked above");
        tracing::debug!(xid, "applying a streamed transaction ahead of its commit");
        let (commands, receiver) = mpsc::channel(QUEUE_BATCHES);
        tokio::spawn(apply_ahead(applier, receiver));
        self.speculation = Some(Speculation {
            xid,
            commands,
            pending: Pending::default(),
            rows: 0,
        });
        Ok(())
    }

    /// One message of the speculated transaction's chunks.
    pub(super) async fn speculate(&mut self, msg: LogicalMessage) -> Result<()> {
        let msg = match msg {
            LogicalMessage::Relation(r) => {
                if !self.on_relation(r, false).await? {
                    self.abandon_speculation("a schema change").await?;
                }
                return Ok(());
            }
            LogicalMessage::Truncate(_) => return self.abandon_speculation("a TRUNCATE").await,
            other => other,
        };
        let Some((relation_id, op)) = super::row_change(msg) else {
            return Ok(());
        };
        let map = match self.relations.get(&relation_id) {
            None => {
                return self
                    .abandon_speculation("a change before its Relation message")
                    .await
            }
            Some(None) => return Ok(()), // a table we do not replicate
            Some(Some(map)) if map.is_keyless() => {
                return self.abandon_speculation("a table without a key").await
            }
            Some(Some(map)) => map.clone(),
        };
        self.metrics.row(&map.dest.to_string(), op.kind());
        let spec = self
            .speculation
            .as_mut()
            .expect("speculate is only called while speculating");
        spec.rows += 1;
        spec.pending.push(&map, op);
        if self
            .limits
            .batch_full(spec.pending.rows(), spec.pending.bytes())
        {
            // Handed over whole: the task writes it while the reader gathers the next one.
            let batch = spec.pending.take_batch();
            spec.commands
                .send(Command::Write(batch))
                .await
                .map_err(|_| task_gone())?;
        }
        Ok(())
    }

    /// Stream Commit of the speculated transaction: commit what came before, then it.
    pub(super) async fn commit_speculation(
        &mut self,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        time: PgTimestamp,
    ) -> Result<Option<Lsn>> {
        let spec = self
            .speculation
            .take()
            .expect("commit_speculation is only called while speculating");
        // The spilled copy is not needed: dropping it removes its file.
        drop(self.streamed.take(spec.xid)?);
        if commit_lsn < self.applied {
            // Applied before a restart: undo the second application.
            self.end_task(spec, None).await?;
            return Ok(None);
        }
        // The earlier source commits first (end_task would too, but the timing below is of
        // this transaction's commit alone).
        self.commit().await?;
        let started = std::time::Instant::now();
        let rows = spec.rows;
        self.end_task(spec, Some((end_lsn, time))).await?;
        self.metrics.transaction();
        self.metrics
            .batch(rows, started.elapsed().as_secs_f64(), time.to_system_time());
        self.stats.transactions += 1;
        self.stats.batches += 1;
        self.stats.rows += rows as u64;
        self.applied = end_lsn;
        tracing::debug!(lsn = %end_lsn, rows, "streamed transaction committed (applied ahead)");
        Ok(Some(end_lsn))
    }

    /// Roll back the speculated transaction; it will be replayed from its spilled copy.
    pub(super) async fn abandon_speculation(&mut self, why: &str) -> Result<()> {
        if let Some(spec) = self.speculation.take() {
            tracing::info!(
                xid = spec.xid,
                "the in-progress transaction contains {why}: it will be applied at its commit instead"
            );
            self.end_task(spec, None).await?;
        }
        Ok(())
    }

    /// Commit (with the position) or roll back in the task, and take the session back.
    async fn end_task(
        &mut self,
        mut spec: Speculation,
        commit: Option<(Lsn, PgTimestamp)>,
    ) -> Result<()> {
        // The task may be waiting for a lock of the open main batch: commit that first, or
        // both would wait for each other. (Stream messages never arrive inside a source
        // transaction, so the main batch holds only whole ones.)
        self.commit().await?;
        let (reply, answer) = oneshot::channel();
        let command = match commit {
            Some((lsn, time)) => {
                let rest = spec.pending.take_batch();
                if spec.commands.send(Command::Write(rest)).await.is_err() {
                    return Err(task_gone());
                }
                Command::Commit(lsn, time, reply)
            }
            None => Command::Rollback(reply),
        };
        if spec.commands.send(command).await.is_err() {
            return Err(task_gone());
        }
        let (applier, result) = answer.await.map_err(|_| task_gone())?;
        self.spare = Some(applier);
        result
    }
}
