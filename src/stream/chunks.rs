//! The stream's half of a chunked copy: watermark windows, and each chunk's rows written at its
//! high watermark, reconciled with the changes the stream saw meanwhile.
//!
//! ```text
//!  chunker (snapshot/chunked.rs)            stream (in WAL order)
//!   low watermark ──────────────────────►  L: open the window: the table's changes are held
//!   temporary slot, exported snapshot at C
//!   SELECT the chunk under it ─► channel
//!   high watermark ─────────────────────►  H: the chunk's rows (as of C), then the held
//!                                             changes minus those already in the chunk
//!   ◄── ack after the destination commit ──  (no destination commit inside a window)
//! ```
//!
//! Why that is exact: the exported snapshot of a slot created after L sees every transaction
//! committed before C and none after (the snapshot is built from the WAL itself, so there is no
//! race between a commit record and its visibility). A held change committed at or after C is
//! newer than the chunk's row and is written after it; one committed before C is in the chunk's
//! row when its key is among the chunk's keys, and is dropped there; any other held change is
//! written as the stream would have without a chunk (its row is not in the chunk: it did not
//! exist at C, or lies outside the chunk's key range). Keys are compared as the same output
//! text on both paths, never ordered, so no collation enters.
//!
//! A window never spans a destination commit: a crash inside one loses the held changes and
//! the open transaction together, and the stream resumes before L, where the chunk is read
//! again. A chunk whose columns no longer match the stream's (a schema change in between), or
//! whose held changes cannot be split (a key moved out of a chunk row with TOAST values left
//! unchanged), is not written: its held changes are applied as usual and the chunk is read
//! again.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Streamer;
use crate::decode::{Datum, Message, Relation};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::model::change::{key_values, version, RowOp, TableMap, Version};
use crate::model::schema::TableName;

/// The prefix of cdc's `pg_logical_emit_message` watermarks.
pub const PREFIX: &str = "cdc";

/// A watermark's content, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    /// `low` or `high`.
    pub mark: String,
    /// The chunker that wrote it (a stream resumed from an earlier position sees old ones).
    pub run: u64,
    pub chunk: u64,
    pub table: String,
}

impl Mark {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a mark serializes")
    }

    fn parse(content: &[u8]) -> Option<Mark> {
        serde_json::from_slice(content).ok()
    }
}

/// One chunk's rows, read under the snapshot of `consistent`.
#[derive(Debug)]
pub struct Chunk {
    pub chunk: u64,
    pub table: TableName,
    /// The table as pgoutput would describe it now: the rows' column order.
    pub relation: Relation,
    pub consistent: Lsn,
    pub rows: Vec<Vec<Datum>>,
    /// Empty the destination table first (the first chunk of a `cdc resync`).
    pub truncate_first: bool,
}

/// What became of a chunk, sent back to its chunker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Its rows are committed on the destination.
    Written { chunk: u64 },
    /// It was not written; read it again.
    Redo { chunk: u64, why: String },
}

/// A chunker's channels, given to the stream for as long as the chunker runs.
pub struct Chunks {
    run: u64,
    rows: mpsc::Receiver<Chunk>,
    acks: mpsc::UnboundedSender<Ack>,
    window: Option<Window>,
    /// Chunks written into the open destination transaction, acknowledged after its commit.
    written: Vec<u64>,
}

impl Chunks {
    pub fn new(run: u64, rows: mpsc::Receiver<Chunk>, acks: mpsc::UnboundedSender<Ack>) -> Self {
        Chunks {
            run,
            rows,
            acks,
            window: None,
            written: Vec::new(),
        }
    }

    /// Whether the chunker may still send (or a window is open): no change may be applied
    /// ahead of its commit meanwhile.
    pub fn active(&self) -> bool {
        self.window.is_some() || !self.written.is_empty() || !self.rows.is_closed()
    }
}

struct Window {
    table: TableName,
    chunk: u64,
    held: Vec<Held>,
    /// The mapping each held change came through (parallel to `held`).
    maps: Vec<Arc<TableMap>>,
    /// The table was truncated in the window, at this commit (the held changes before it are
    /// gone with it).
    truncated_at: Option<Lsn>,
}

/// A change of the chunked table held back in a window.
#[derive(Debug, Clone)]
pub struct Held {
    pub op: RowOp,
    pub version: Version,
    /// Its transaction's commit LSN.
    pub commit: Lsn,
}

type Key = Vec<Option<Bytes>>;

fn protocol(detail: String) -> Error {
    Error::from(crate::error::Cause::Protocol {
        context: "a chunked copy's watermarks".into(),
        detail,
    })
}

fn key(row: &[Datum], positions: &[usize]) -> Key {
    key_values(row, positions)
        .into_iter()
        .map(|k| k.map(Bytes::copy_from_slice))
        .collect()
}

/// The writes of a chunk at its high watermark, in order: the chunk's rows as inserts (at the
/// version of `consistent`, below every change committed from there on), then the held changes
/// that are not in them. `None` when the held changes cannot be split (read the chunk again);
/// `held` is left as it was, for the caller to write as the stream would without the chunk.
pub fn reconcile(
    key_positions: &[usize],
    rows: Vec<Vec<Datum>>,
    consistent: Lsn,
    held: &[Held],
    truncated_at: Option<Lsn>,
) -> Option<Vec<(RowOp, Version)>> {
    // Truncated after the snapshot: the chunk's rows are gone on the source too.
    let rows = if truncated_at.is_some_and(|t| t >= consistent) {
        Vec::new()
    } else {
        rows
    };
    let keys: HashSet<Key> = rows.iter().map(|r| key(r, key_positions)).collect();
    let in_chunk = |row: &[Datum]| keys.contains(&key(row, key_positions));
    let mut out: Vec<(RowOp, Version)> = rows
        .into_iter()
        .map(|r| (RowOp::Insert(r), version(consistent, 0)))
        .collect();
    for h in held {
        let kept = || (h.op.clone(), h.version);
        if h.commit >= consistent {
            out.push(kept());
            continue;
        }
        match &h.op {
            RowOp::Insert(new) | RowOp::Update { old: None, new } => {
                if !in_chunk(new) {
                    out.push(kept());
                }
            }
            RowOp::Delete(old) => {
                if !in_chunk(old) {
                    out.push(kept());
                }
            }
            RowOp::Update {
                old: Some(old),
                new,
            } => {
                let moved = key(old, key_positions) != key(new, key_positions);
                match (moved && in_chunk(old), in_chunk(new)) {
                    (false, false) => out.push(kept()),
                    (false, true) if moved => {
                        // The new row is the chunk's; the old key's row must still go.
                        out.push((RowOp::Delete(old.clone()), h.version));
                    }
                    (false, true) | (true, true) => {}
                    (true, false) => {
                        if new.contains(&Datum::UnchangedToast) {
                            return None;
                        }
                        out.push((RowOp::Insert(new.clone()), h.version));
                    }
                }
            }
        }
    }
    Some(out)
}

impl Streamer {
    /// A chunker runs: its watermarks are acted on, its chunks written.
    pub fn set_chunks(&mut self, chunks: Chunks) {
        self.chunks = Some(chunks);
    }

    /// Whether a chunker runs (then nothing is applied ahead of its commit).
    pub(super) fn chunking(&self) -> bool {
        self.chunks.as_ref().is_some_and(Chunks::active)
    }

    /// Whether a watermark window is open (then the destination does not commit).
    pub(super) fn in_window(&self) -> bool {
        self.chunks.as_ref().is_some_and(|c| c.window.is_some())
    }

    /// Hold `op` back if a window is open on `map`'s table; returns it otherwise.
    pub(super) fn hold(
        &mut self,
        map: &Arc<TableMap>,
        op: RowOp,
        version: Version,
    ) -> Option<RowOp> {
        let commit = self.txn_commit;
        match self.chunks.as_mut().and_then(|c| c.window.as_mut()) {
            Some(w) if w.table == map.source => {
                w.held.push(Held {
                    op,
                    version,
                    commit,
                });
                w.maps.push(map.clone());
                None
            }
            _ => Some(op),
        }
    }

    /// A truncate of `table` in the window drops what was held of it.
    pub(super) fn truncated(&mut self, table: &TableName) {
        let commit = self.txn_commit;
        if let Some(w) = self.chunks.as_mut().and_then(|c| c.window.as_mut()) {
            if w.table == *table {
                w.held.clear();
                w.maps.clear();
                w.truncated_at = Some(commit);
            }
        }
    }

    /// Acknowledge the chunks the last destination commit holds.
    pub(super) fn chunks_committed(&mut self) {
        if let Some(c) = self.chunks.as_mut() {
            for chunk in c.written.drain(..) {
                let _ = c.acks.send(Ack::Written { chunk });
            }
        }
    }

    /// A `pg_logical_emit_message` outside a transaction.
    pub(super) async fn on_message(&mut self, m: Message) -> Result<()> {
        if m.transactional || m.prefix != PREFIX {
            return Ok(());
        }
        let Some(mark) = Mark::parse(&m.content) else {
            return Ok(());
        };
        let Some(chunks) = self.chunks.as_mut().filter(|c| c.run == mark.run) else {
            return Ok(()); // an earlier chunker's, before a restart
        };
        let table = TableName::parse(&mark.table).map_err(Error::definite)?;
        match mark.mark.as_str() {
            "low" => {
                if chunks.window.is_some() {
                    return Err(protocol(format!(
                        "chunk {} of {table} began inside another chunk's window",
                        mark.chunk
                    )));
                }
                chunks.window = Some(Window {
                    table,
                    chunk: mark.chunk,
                    held: Vec::new(),
                    maps: Vec::new(),
                    truncated_at: None,
                });
                // A transaction applied ahead would bypass the window: replay it at commit.
                self.abandon_speculation("a chunked copy").await
            }
            "high" => self.write_chunk(mark.chunk, m.lsn).await,
            _ => Ok(()),
        }
    }

    async fn write_chunk(&mut self, chunk_no: u64, at: Lsn) -> Result<()> {
        let chunks = self.chunks.as_mut().expect("checked by on_message");
        let window = match chunks.window.take() {
            Some(w) if w.chunk == chunk_no => w,
            _ => {
                return Err(protocol(format!(
                    "high watermark of chunk {chunk_no} without its low one"
                )))
            }
        };
        let chunk = chunks.rows.recv().await.filter(|c| c.chunk == chunk_no);
        let Some(chunk) = chunk else {
            return Err(protocol(format!(
                "the rows of chunk {chunk_no} of {} did not arrive",
                window.table
            )));
        };
        let map = self
            .chunk_map(&chunk)
            .await?
            // Held changes mapped otherwise (a Relation in the window) are not split.
            .filter(|m| window.maps.iter().all(|h| Arc::ptr_eq(h, m)));
        let writes = map.as_ref().and_then(|m| {
            reconcile(
                &m.key,
                chunk.rows,
                chunk.consistent,
                &window.held,
                window.truncated_at,
            )
        });
        let (Some(map), Some(writes)) = (map, writes) else {
            // Written as the stream would have without the chunk, which is read again.
            for (h, m) in window.held.into_iter().zip(&window.maps) {
                self.push_mapped(m, h.op, h.version).await?;
            }
            self.ack(Ack::Redo {
                chunk: chunk_no,
                why: "its columns changed, or a key moved out of it with unchanged TOAST values"
                    .into(),
            });
            return Ok(());
        };
        self.start_batch();
        if chunk.truncate_first {
            self.applier
                .truncate(std::slice::from_ref(&map), false)
                .await?;
        }
        for (op, version) in writes {
            self.push_mapped(&map, op, version).await?;
        }
        // The destination commit after this records a position past the high watermark.
        let time = self.included.map_or(self.last_commit_time, |(_, t)| t);
        let lsn = self.included.map_or(at, |(l, _)| l.max(at));
        self.included = Some((lsn, time));
        if let Some(c) = self.chunks.as_mut() {
            c.written.push(chunk_no);
        }
        Ok(())
    }

    fn ack(&mut self, ack: Ack) {
        if let Some(c) = self.chunks.as_mut() {
            let _ = c.acks.send(ack);
        }
    }

    /// The mapping the chunk's rows are written through: the stream's, if its columns are the
    /// chunk's, else one made from the chunk's relation; `None` when they differ from the
    /// destination's (a schema change the stream has yet to apply).
    async fn chunk_map(&mut self, chunk: &Chunk) -> Result<Option<Arc<TableMap>>> {
        let same = |m: &TableMap| {
            m.columns.len() == chunk.relation.columns.len()
                && m.columns
                    .iter()
                    .zip(&chunk.relation.columns)
                    .all(|(a, b)| a.name == b.name)
        };
        if let Some(Some(m)) = self.relations.get(&chunk.relation.id) {
            return Ok(same(m).then(|| m.clone()));
        }
        if !self.on_relation(chunk.relation.clone(), false).await? {
            return Ok(None);
        }
        Ok(self
            .relations
            .get(&chunk.relation.id)
            .cloned()
            .flatten()
            .filter(|m| same(m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }
    fn row(k: &str, v: &str) -> Vec<Datum> {
        vec![t(k), t(v)]
    }
    fn held(op: RowOp, commit: u64) -> Held {
        Held {
            op,
            version: version(Lsn(commit), 1),
            commit: Lsn(commit),
        }
    }
    fn values(out: &[(RowOp, Version)]) -> Vec<String> {
        out.iter().map(|(op, _)| format!("{op:?}")).collect()
    }

    #[test]
    fn a_change_after_the_snapshot_is_written_after_the_chunk_row() {
        let c = Lsn(100);
        let out = reconcile(
            &[0],
            vec![row("1", "old")],
            c,
            &vec![held(
                RowOp::Update {
                    old: None,
                    new: row("1", "new"),
                },
                150,
            )],
            None,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0].0, RowOp::Insert(r) if r[1] == t("old")));
        assert!(matches!(&out[1].0, RowOp::Update { new, .. } if new[1] == t("new")));
        assert!(
            out[0].1 < out[1].1,
            "the chunk row is older than the change"
        );
    }

    #[test]
    fn a_change_the_chunk_already_holds_is_dropped() {
        let out = reconcile(
            &[0],
            vec![row("1", "v2")],
            Lsn(100),
            &vec![
                held(
                    RowOp::Update {
                        old: None,
                        new: row("1", "v2"),
                    },
                    90,
                ),
                // Not among the chunk's keys: inserted and deleted before the snapshot, or
                // outside the chunk's range; written as the stream would.
                held(RowOp::Insert(row("7", "x")), 91),
                held(RowOp::Delete(row("7", "x")), 92),
            ],
            None,
        )
        .unwrap();
        assert_eq!(out.len(), 3, "{:?}", values(&out));
        assert!(matches!(&out[1].0, RowOp::Insert(r) if r[0] == t("7")));
        assert!(matches!(&out[2].0, RowOp::Delete(r) if r[0] == t("7")));
    }

    #[test]
    fn a_key_moved_into_the_chunk_still_deletes_its_old_row() {
        let out = reconcile(
            &[0],
            vec![row("2", "a")],
            Lsn(100),
            &vec![held(
                RowOp::Update {
                    old: Some(row("1", "a")),
                    new: row("2", "a"),
                },
                90,
            )],
            None,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[1].0, RowOp::Delete(r) if r[0] == t("1")));
    }

    #[test]
    fn a_key_moved_out_of_the_chunk_with_unchanged_toast_cannot_be_split() {
        let moved = RowOp::Update {
            old: Some(row("1", "a")),
            new: vec![t("9"), Datum::UnchangedToast],
        };
        // Key 1 was inserted again before the snapshot, so the chunk holds it.
        assert!(reconcile(
            &[0],
            vec![row("1", "b")],
            Lsn(100),
            &vec![held(moved, 90)],
            None
        )
        .is_none());
        let whole = RowOp::Update {
            old: Some(row("1", "a")),
            new: row("9", "a"),
        };
        let out = reconcile(
            &[0],
            vec![row("1", "b")],
            Lsn(100),
            &vec![held(whole, 90)],
            None,
        )
        .unwrap();
        assert!(matches!(&out[1].0, RowOp::Insert(r) if r[0] == t("9")));
    }

    #[test]
    fn a_truncate_after_the_snapshot_empties_the_chunk() {
        let out = reconcile(
            &[0],
            vec![row("1", "a")],
            Lsn(100),
            &vec![held(RowOp::Insert(row("5", "b")), 130)],
            Some(Lsn(120)),
        )
        .unwrap();
        assert_eq!(values(&out).len(), 1);
        assert!(matches!(&out[0].0, RowOp::Insert(r) if r[0] == t("5")));
        let kept = reconcile(&[0], vec![row("1", "a")], Lsn(100), &[], Some(Lsn(80))).unwrap();
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn marks_round_trip_and_foreign_messages_are_not_marks() {
        let m = Mark {
            mark: "low".into(),
            run: 7,
            chunk: 3,
            table: "public.\"T\"".into(),
        };
        assert_eq!(Mark::parse(m.to_json().as_bytes()), Some(m));
        assert_eq!(Mark::parse(b"hello"), None);
    }
}
