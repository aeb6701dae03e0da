//! Apply a large in-progress transaction *before* it commits, so that its commit on the
//! source becomes visible on the destination almost at once.
//!
//! ```text
//!  Stream Start (first chunk) ─► second destination session opens a transaction
//!  chunks ─► spilled as always (the fallback) AND applied in that open transaction
//!  Stream Commit ─► main batch committed first (earlier commits), then this one: done
//!  Stream Abort ─► ROLLBACK: nothing of it was ever visible
//! ```
//!
//! **Why a second session and why it cannot deadlock with the first**: while the big
//! transaction X is open on the source, other transactions keep committing and must reach the
//! destination first (commit order). They run in the main session. On the source, X holds a
//! lock on every row it changed until it commits, so no transaction committing before X can
//! touch those rows: the main session never waits for the speculative one. The other way
//! round, X may change rows that an earlier, still uncommitted main batch wrote, so the main
//! batch is committed before the speculative session writes anything.
//!
//! **Whenever speculation could be wrong, it steps back** (rolls back, and the transaction is
//! replayed from its spilled copy at commit, as without speculation): a subtransaction abort
//! (its rows are mixed into the open transaction), a schema change (DDL would lock tables the
//! main session needs), a TRUNCATE, a table without a key (its rows are matched by value, so
//! the sessions could pick the same row), a change before its Relation message.

use crate::apply::{Applier, RowOp};
use crate::decode::{LogicalMessage, PgTimestamp};
use crate::error::Result;
use crate::lsn::Lsn;

use super::Streamer;

/// The in-progress transaction being applied ahead of its commit.
pub(super) struct Speculation {
    pub xid: u32,
    pub applier: Applier,
    pub rows: usize,
}

impl Streamer {
    /// Whether `xid`'s chunks are being applied ahead of its commit.
    pub(super) fn speculating_on(&self, xid: u32) -> bool {
        self.speculation.as_ref().is_some_and(|s| s.xid == xid)
    }

    /// The first chunk of a streamed transaction: apply it ahead if the spare session is free.
    /// Returns a new applied position if the main batch had to commit first.
    pub(super) async fn begin_speculation(&mut self, xid: u32) -> Result<Option<Lsn>> {
        if self.speculation.is_some() || self.txn.is_some() {
            return Ok(None);
        }
        let Some(applier) = self.spare.take() else {
            return Ok(None);
        };
        let committed = self.commit().await?;
        tracing::debug!(xid, "applying a streamed transaction ahead of its commit");
        self.speculation = Some(Speculation {
            xid,
            applier,
            rows: 0,
        });
        Ok(committed)
    }

    /// One message of the speculated transaction's chunks.
    pub(super) async fn speculate(&mut self, msg: LogicalMessage) -> Result<Option<Lsn>> {
        let (relation_id, op) = match msg {
            LogicalMessage::Insert(i) => (i.relation_id, RowOp::Insert(i.new.0)),
            LogicalMessage::Update(u) => {
                let old = u.old.map(|o| o.tuple().0.clone());
                (u.relation_id, RowOp::Update { old, new: u.new.0 })
            }
            LogicalMessage::Delete(d) => (d.relation_id, RowOp::Delete(d.old.tuple().0.clone())),
            LogicalMessage::Relation(r) => {
                if !self.on_relation(r, false).await? {
                    self.abandon_speculation("a schema change").await?;
                }
                return Ok(None);
            }
            LogicalMessage::Truncate(_) => {
                self.abandon_speculation("a TRUNCATE").await?;
                return Ok(None);
            }
            _ => return Ok(None),
        };
        let map = match self.relations.get(&relation_id) {
            None => {
                self.abandon_speculation("a change before its Relation message")
                    .await?;
                return Ok(None);
            }
            Some(None) => return Ok(None), // a table we do not replicate
            Some(Some(map)) if map.is_keyless() => {
                self.abandon_speculation("a table without a key").await?;
                return Ok(None);
            }
            Some(Some(map)) => map.clone(),
        };
        let mut spec = self
            .speculation
            .take()
            .expect("speculate is only called while speculating");
        let op_name = match &op {
            RowOp::Insert(_) => "insert",
            RowOp::Update { .. } => "update",
            RowOp::Delete(_) => "delete",
        };
        self.metrics.row(&map.dest.to_string(), op_name);
        spec.applier.push(&map, op);
        spec.rows += 1;
        let mut committed = None;
        if spec.applier.pending_rows() >= self.limits.batch_max_rows
            || spec.applier.pending_bytes() >= self.limits.batch_max_bytes
        {
            // The open main batch may hold rows this transaction changes: commit it first.
            committed = self.commit().await?;
            spec.applier.flush().await?;
        }
        self.speculation = Some(spec);
        Ok(committed)
    }

    /// Stream Commit of the speculated transaction: commit what came before, then it.
    pub(super) async fn commit_speculation(
        &mut self,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        time: PgTimestamp,
    ) -> Result<Option<Lsn>> {
        let mut spec = self
            .speculation
            .take()
            .expect("commit_speculation is only called while speculating");
        // The spilled copy is not needed: dropping it removes its file.
        drop(self.streamed.take(spec.xid)?);
        if commit_lsn < self.applied {
            // Applied before a restart: undo the second application.
            spec.applier.rollback().await?;
            self.spare = Some(spec.applier);
            return Ok(None);
        }
        self.commit().await?;
        let started = std::time::Instant::now();
        let result = spec.applier.commit(end_lsn, time).await;
        self.spare = Some(spec.applier);
        result?;
        self.metrics.transaction();
        self.metrics.batch(
            spec.rows,
            started.elapsed().as_secs_f64(),
            time.to_system_time(),
        );
        self.stats.transactions += 1;
        self.stats.batches += 1;
        self.stats.rows += spec.rows as u64;
        self.applied = end_lsn;
        tracing::debug!(lsn = %end_lsn, rows = spec.rows, "streamed transaction committed (applied ahead)");
        Ok(Some(end_lsn))
    }

    /// Roll back the speculated transaction; it will be replayed from its spilled copy.
    pub(super) async fn abandon_speculation(&mut self, why: &str) -> Result<()> {
        if let Some(mut spec) = self.speculation.take() {
            tracing::info!(
                xid = spec.xid,
                "the in-progress transaction contains {why}: it will be applied at its commit instead"
            );
            let result = spec.applier.rollback().await;
            self.spare = Some(spec.applier);
            result?;
        }
        Ok(())
    }
}
