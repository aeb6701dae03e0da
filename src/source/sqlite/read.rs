//! A query's rows from a SQLite file, converted to destination text on a blocking thread and
//! handed to the async side in blocks (a bounded channel: memory stays a few blocks whatever
//! the table's size).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::types::{Value, ValueRef};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::types::{convert, describe, Kind};
use super::SqliteSource;
use crate::decode::Datum;
use crate::error::{Error, Result};

/// Rows per block handed over.
const BLOCK_ROWS: usize = 2048;
/// Blocks in flight between the reading thread and the writer.
const BLOCKS_IN_FLIGHT: usize = 4;

/// What to read and how to convert it.
pub struct Query {
    pub sql: String,
    pub params: Vec<Value>,
    /// The kind of each selected column (the destination column's), in select order.
    pub kinds: Vec<Kind>,
    /// Column names for messages (as the destination names them).
    pub columns: Vec<String>,
    /// Positions of the key columns (for messages).
    pub key: Vec<usize>,
    /// A column whose last value (as SQLite has it) is reported: the next position.
    pub order: Option<usize>,
    /// Only count and fingerprint the rows; send none.
    pub fingerprint_only: bool,
}

/// One row read: converted, or refused.
pub enum Item {
    Row(Vec<Datum>),
    Reject(Reject),
}

/// A row with a value that does not fit its column.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reject {
    /// `column=value` of the key columns.
    pub key: String,
    pub column: String,
    pub value: String,
    pub problem: String,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "row {}: column {} holds {}, {}",
            self.key, self.column, self.value, self.problem
        )
    }
}

/// The end of a read.
#[derive(Debug, Default)]
pub struct Done {
    pub rows: u64,
    pub last_order: Option<String>,
    /// SHA-256 of the column kinds and every row's values as stored, in read order (hex, 32
    /// digits).
    pub fingerprint: String,
}

/// Start reading; rows arrive on the receiver, the summary from the handle once it closed.
pub fn spawn(
    source: Arc<Mutex<SqliteSource>>,
    query: Query,
) -> (
    mpsc::Receiver<Vec<Item>>,
    tokio::task::JoinHandle<Result<Done>>,
) {
    let (tx, rx) = mpsc::channel(BLOCKS_IN_FLIGHT);
    let handle = tokio::task::spawn_blocking(move || {
        let source = source.lock().unwrap_or_else(|p| p.into_inner());
        read(&source, &query, &tx)
    });
    (rx, handle)
}

/// What a read does with a row that does not fit its column: an error, or somewhere to put it.
pub type OnReject<'a> = Box<dyn FnMut(Reject) -> Result<()> + Send + 'a>;

/// A read in flight: its converted rows in blocks (rejected ones handed to its `OnReject`),
/// then its end from [`Reading::finish`].
pub struct Reading<'a> {
    rx: mpsc::Receiver<Vec<Item>>,
    handle: tokio::task::JoinHandle<Result<Done>>,
    on_reject: OnReject<'a>,
}

impl<'a> Reading<'a> {
    pub fn start(source: Arc<Mutex<SqliteSource>>, query: Query, on_reject: OnReject<'a>) -> Self {
        let (rx, handle) = spawn(source, query);
        Reading {
            rx,
            handle,
            on_reject,
        }
    }

    /// End the read (early or not); its count, last order value and fingerprint. The reading
    /// thread's errors surface here.
    pub async fn finish(self) -> Result<Done> {
        drop(self.rx);
        self.handle.await.map_err(Error::stopped("SQLite reader"))?
    }
}

#[async_trait::async_trait]
impl crate::source::RowSource for Reading<'_> {
    async fn next_rows(&mut self) -> Result<Option<Vec<Vec<Datum>>>> {
        loop {
            let Some(items) = self.rx.recv().await else {
                return Ok(None);
            };
            let mut rows = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Item::Row(r) => rows.push(r),
                    Item::Reject(r) => (self.on_reject)(r)?,
                }
            }
            if !rows.is_empty() {
                return Ok(Some(rows));
            }
        }
    }
}

fn read(source: &SqliteSource, q: &Query, tx: &mpsc::Sender<Vec<Item>>) -> Result<Done> {
    let fail = |e| source.error("reading rows", e);
    let mut stmt = source.conn.prepare(&q.sql).map_err(fail)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(q.params.iter()))
        .map_err(fail)?;
    let mut done = Done::default();
    let mut hash = Sha256::new();
    let mut block = Vec::with_capacity(BLOCK_ROWS);
    // The kinds are part of the fingerprint: the same values converted for other column
    // types are another result.
    hash.update(format!("{:?}", q.kinds).as_bytes());
    while let Some(row) = rows.next().map_err(fail)? {
        done.rows += 1;
        for i in 0..q.kinds.len() {
            hash_value(&mut hash, row.get_ref(i).map_err(fail)?);
        }
        if q.fingerprint_only {
            if let Some(o) = q.order {
                done.last_order = raw_text(row.get_ref(o).map_err(fail)?);
            }
            continue;
        }
        let mut out = Vec::with_capacity(q.kinds.len());
        let mut reject = None;
        for (i, kind) in q.kinds.iter().enumerate() {
            let value = row.get_ref(i).map_err(fail)?;
            match convert(*kind, value) {
                Ok(Some(text)) => out.push(Datum::Text(Bytes::from(text))),
                Ok(None) => out.push(Datum::Null),
                Err(problem) => {
                    reject.get_or_insert(Reject {
                        key: key_text(q, row)?,
                        column: q.columns[i].clone(),
                        value: describe(value),
                        problem,
                    });
                    out.push(Datum::Null);
                }
            }
        }
        if let Some(o) = q.order {
            done.last_order = raw_text(row.get_ref(o).map_err(fail)?);
        }
        block.push(match reject {
            Some(r) => Item::Reject(r),
            None => Item::Row(out),
        });
        if block.len() >= BLOCK_ROWS {
            let full = std::mem::replace(&mut block, Vec::with_capacity(BLOCK_ROWS));
            if tx.blocking_send(full).is_err() {
                // The receiver gave up (an error on the writing side, reported there).
                return Ok(done);
            }
        }
    }
    if !block.is_empty() {
        let _ = tx.blocking_send(block);
    }
    done.fingerprint = hash
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(done)
}

/// A value as SQLite stores it, into the fingerprint: the fingerprint says whether the file's
/// rows changed, so it needs no conversion (which costs more than reading them).
fn hash_value(hash: &mut Sha256, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => hash.update([0]),
        ValueRef::Integer(i) => {
            hash.update([1]);
            hash.update(i.to_le_bytes());
        }
        ValueRef::Real(f) => {
            hash.update([2]);
            hash.update(f.to_bits().to_le_bytes());
        }
        ValueRef::Text(t) => {
            hash.update([3]);
            hash.update((t.len() as u64).to_le_bytes());
            hash.update(t);
        }
        ValueRef::Blob(b) => {
            hash.update([4]);
            hash.update((b.len() as u64).to_le_bytes());
            hash.update(b);
        }
    }
}

fn key_text(q: &Query, row: &rusqlite::Row<'_>) -> Result<String> {
    let mut parts = Vec::new();
    for &k in &q.key {
        let v = row
            .get_ref(k)
            .map_err(Error::sqlite("reading a key column"))?;
        parts.push(format!("{}={}", q.columns[k], describe(v)));
    }
    Ok(if parts.is_empty() {
        "(no key)".into()
    } else {
        parts.join(", ")
    })
}

/// A value as SQLite compares it again in `WHERE col >= ?` (positions are stored as text).
fn raw_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null | ValueRef::Blob(_) => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(super::types::float_text(f)),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}
