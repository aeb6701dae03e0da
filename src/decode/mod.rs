//! pgoutput decoder: bytes of one XLogData payload in, one [`LogicalMessage`] out.
//!
//! ```text
//!   XLogData payload (Bytes) ──► PgOutputDecoder::decode ──► LogicalMessage
//!                                      │
//!                                      └─ remembers whether a Stream Start is open,
//!                                         because that decides if an xid prefix follows
//! ```
//!
//! **The decoder does no I/O and cannot fail except on malformed input**: every read is
//! bounds-checked (see `reader.rs`), lengths are validated before allocation, and a message with
//! bytes left over is rejected rather than half-understood. It covers every message of protocol
//! versions 1 to 4. The only state it keeps is whether it is inside a streamed-transaction block;
//! assembling messages into transactions belongs to the stage after it.

mod message;
mod reader;

#[cfg(test)]
mod encode;
#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use message::*;
use reader::Reader;

const BEGIN_TAG: u8 = b'B';
const COMMIT_TAG: u8 = b'C';
const ORIGIN_TAG: u8 = b'O';
const RELATION_TAG: u8 = b'R';
const TYPE_TAG: u8 = b'Y';
const INSERT_TAG: u8 = b'I';
const UPDATE_TAG: u8 = b'U';
const DELETE_TAG: u8 = b'D';
const TRUNCATE_TAG: u8 = b'T';
const MESSAGE_TAG: u8 = b'M';
const STREAM_START_TAG: u8 = b'S';
const STREAM_STOP_TAG: u8 = b'E';
const STREAM_COMMIT_TAG: u8 = b'c';
const STREAM_ABORT_TAG: u8 = b'A';
const BEGIN_PREPARE_TAG: u8 = b'b';
const PREPARE_TAG: u8 = b'P';
const COMMIT_PREPARED_TAG: u8 = b'K';
const ROLLBACK_PREPARED_TAG: u8 = b'r';
const STREAM_PREPARE_TAG: u8 = b'p';

const TUPLE_NEW_TAG: u8 = b'N';
const TUPLE_KEY_TAG: u8 = b'K';
const TUPLE_OLD_TAG: u8 = b'O';

const DATUM_NULL: u8 = b'n';
const DATUM_UNCHANGED_TOAST: u8 = b'u';
const DATUM_TEXT: u8 = b't';
const DATUM_BINARY: u8 = b'b';

const TRUNCATE_CASCADE: u8 = 1;
const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// Why a message could not be decoded. Every variant means the input is not valid pgoutput.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {0:?}")]
    UnknownTag(char),
    #[error("pgoutput message ends early while reading {what}")]
    UnexpectedEnd { what: &'static str },
    #[error("negative length {len} for {what}")]
    NegativeLength { what: &'static str, len: i32 },
    #[error("string {what} is not terminated by NUL")]
    UnterminatedString { what: &'static str },
    #[error("string {what} is not valid UTF-8 (the connection must use client_encoding UTF8)")]
    InvalidUtf8 { what: &'static str },
    #[error("{count} unexpected trailing bytes after pgoutput message {tag:?}")]
    TrailingBytes { tag: char, count: usize },
    #[error("unknown tuple column kind {0:?} (expected n, u, t or b)")]
    UnknownDatumKind(char),
    #[error("unknown replica identity {0:?} (expected d, n, f or i)")]
    UnknownReplicaIdentity(char),
    #[error("expected tuple marker {expected} but found {found:?}")]
    UnexpectedTupleMarker { expected: &'static str, found: char },
    #[error("Stream Start for xid {xid} while the stream of xid {open} is still open")]
    NestedStreamStart { xid: u32, open: u32 },
    #[error("Stream Stop without a Stream Start")]
    StreamStopWithoutStart,
}

/// Decodes pgoutput messages of one replication stream, in order.
#[derive(Debug, Default)]
pub struct PgOutputDecoder {
    /// The xid of the open streamed-transaction block, if any. Inside such a block the
    /// data messages carry an extra xid field.
    open_stream: Option<u32>,
}

impl PgOutputDecoder {
    /// A decoder at the start of a stream, outside any streamed-transaction block.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder positioned inside the streamed block of `xid`, for re-reading messages that
    /// were buffered from such a block.
    pub fn inside_stream(xid: u32) -> Self {
        PgOutputDecoder {
            open_stream: Some(xid),
        }
    }

    /// The transaction whose streamed chunk is being received, if any.
    pub fn open_stream(&self) -> Option<u32> {
        self.open_stream
    }

    /// Decode one message (the payload of one XLogData).
    pub fn decode(&mut self, data: Bytes) -> Result<LogicalMessage, DecodeError> {
        let mut r = Reader::new(data);
        let tag = r.u8("message tag").map_err(|_| DecodeError::Empty)?;
        let msg = self.decode_body(tag, &mut r)?;
        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                tag: tag as char,
                count: r.remaining(),
            });
        }
        // State changes only once the whole message is known to be valid.
        match &msg {
            LogicalMessage::StreamStart(s) => self.open_stream = Some(s.xid),
            LogicalMessage::StreamStop => self.open_stream = None,
            _ => {}
        }
        Ok(msg)
    }

    // Long: one arm per pgoutput message tag, each a few reads; split, the arms would only move.
    fn decode_body(&self, tag: u8, r: &mut Reader) -> Result<LogicalMessage, DecodeError> {
        // Data messages inside a streamed block are prefixed with the transaction's xid.
        let streamed_xid = |r: &mut Reader| -> Result<Option<u32>, DecodeError> {
            match self.open_stream {
                Some(_) => Ok(Some(r.u32("xid")?)),
                None => Ok(None),
            }
        };
        Ok(match tag {
            BEGIN_TAG => LogicalMessage::Begin(Begin {
                final_lsn: r.lsn("final lsn")?,
                commit_time: PgTimestamp(r.i64("commit timestamp")?),
                xid: r.u32("xid")?,
            }),
            COMMIT_TAG => LogicalMessage::Commit(Commit {
                flags: r.u8("flags")?,
                commit_lsn: r.lsn("commit lsn")?,
                end_lsn: r.lsn("end lsn")?,
                commit_time: PgTimestamp(r.i64("commit timestamp")?),
            }),
            ORIGIN_TAG => LogicalMessage::Origin(Origin {
                commit_lsn: r.lsn("origin commit lsn")?,
                name: r.cstr("origin name")?,
            }),
            RELATION_TAG => LogicalMessage::Relation(decode_relation(streamed_xid(r)?, r)?),
            TYPE_TAG => LogicalMessage::Type(Type {
                xid: streamed_xid(r)?,
                oid: r.u32("type oid")?,
                namespace: r.cstr("type namespace")?,
                name: r.cstr("type name")?,
            }),
            INSERT_TAG => {
                let xid = streamed_xid(r)?;
                let relation_id = r.u32("relation id")?;
                expect_marker(r, TUPLE_NEW_TAG, "N")?;
                LogicalMessage::Insert(Insert {
                    xid,
                    relation_id,
                    new: decode_tuple(r)?,
                })
            }
            UPDATE_TAG => {
                let xid = streamed_xid(r)?;
                let relation_id = r.u32("relation id")?;
                let old = match r.u8("tuple marker")? {
                    TUPLE_NEW_TAG => None,
                    TUPLE_KEY_TAG => Some(OldTuple::Key(decode_tuple(r)?)),
                    TUPLE_OLD_TAG => Some(OldTuple::Full(decode_tuple(r)?)),
                    other => {
                        return Err(DecodeError::UnexpectedTupleMarker {
                            expected: "K, O or N",
                            found: other as char,
                        })
                    }
                };
                if old.is_some() {
                    expect_marker(r, TUPLE_NEW_TAG, "N")?;
                }
                LogicalMessage::Update(Update {
                    xid,
                    relation_id,
                    old,
                    new: decode_tuple(r)?,
                })
            }
            DELETE_TAG => {
                let xid = streamed_xid(r)?;
                let relation_id = r.u32("relation id")?;
                let old = match r.u8("tuple marker")? {
                    TUPLE_KEY_TAG => OldTuple::Key(decode_tuple(r)?),
                    TUPLE_OLD_TAG => OldTuple::Full(decode_tuple(r)?),
                    other => {
                        return Err(DecodeError::UnexpectedTupleMarker {
                            expected: "K or O",
                            found: other as char,
                        })
                    }
                };
                LogicalMessage::Delete(Delete {
                    xid,
                    relation_id,
                    old,
                })
            }
            TRUNCATE_TAG => {
                let xid = streamed_xid(r)?;
                let count = r.i32("relation count")?;
                let count = usize::try_from(count).map_err(|_| DecodeError::NegativeLength {
                    what: "relation count",
                    len: count,
                })?;
                let options = r.u8("truncate options")?;
                // Never trust a count for an allocation: at most what the bytes can hold.
                let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
                for _ in 0..count {
                    relation_ids.push(r.u32("relation id")?);
                }
                LogicalMessage::Truncate(Truncate {
                    xid,
                    cascade: options & TRUNCATE_CASCADE != 0,
                    restart_identity: options & TRUNCATE_RESTART_IDENTITY != 0,
                    relation_ids,
                })
            }
            MESSAGE_TAG => LogicalMessage::Message(Message {
                xid: streamed_xid(r)?,
                transactional: r.u8("flags")? & 1 != 0,
                lsn: r.lsn("message lsn")?,
                prefix: r.cstr("message prefix")?,
                content: r.counted_bytes("message content")?,
            }),
            STREAM_START_TAG => {
                let xid = r.u32("xid")?;
                if let Some(open) = self.open_stream {
                    return Err(DecodeError::NestedStreamStart { xid, open });
                }
                LogicalMessage::StreamStart(StreamStart {
                    xid,
                    first_segment: r.u8("first segment flag")? == 1,
                })
            }
            STREAM_STOP_TAG => {
                if self.open_stream.is_none() {
                    return Err(DecodeError::StreamStopWithoutStart);
                }
                LogicalMessage::StreamStop
            }
            STREAM_COMMIT_TAG => LogicalMessage::StreamCommit(StreamCommit {
                xid: r.u32("xid")?,
                flags: r.u8("flags")?,
                commit_lsn: r.lsn("commit lsn")?,
                end_lsn: r.lsn("end lsn")?,
                commit_time: PgTimestamp(r.i64("commit timestamp")?),
            }),
            STREAM_ABORT_TAG => {
                let xid = r.u32("xid")?;
                let subxid = r.u32("subtransaction xid")?;
                // Protocol 4 with parallel streaming appends the abort position; older
                // protocols end here. The length decides, so one decoder serves all versions.
                let abort = if r.remaining() > 0 {
                    Some((r.lsn("abort lsn")?, PgTimestamp(r.i64("abort timestamp")?)))
                } else {
                    None
                };
                LogicalMessage::StreamAbort(StreamAbort { xid, subxid, abort })
            }
            BEGIN_PREPARE_TAG => LogicalMessage::BeginPrepare(BeginPrepare {
                prepare_lsn: r.lsn("prepare lsn")?,
                end_lsn: r.lsn("end lsn")?,
                prepare_time: PgTimestamp(r.i64("prepare timestamp")?),
                xid: r.u32("xid")?,
                gid: r.cstr("gid")?,
            }),
            PREPARE_TAG => LogicalMessage::Prepare(decode_prepare(r)?),
            STREAM_PREPARE_TAG => LogicalMessage::StreamPrepare(decode_prepare(r)?),
            COMMIT_PREPARED_TAG => LogicalMessage::CommitPrepared(CommitPrepared {
                flags: r.u8("flags")?,
                commit_lsn: r.lsn("commit lsn")?,
                end_lsn: r.lsn("end lsn")?,
                commit_time: PgTimestamp(r.i64("commit timestamp")?),
                xid: r.u32("xid")?,
                gid: r.cstr("gid")?,
            }),
            ROLLBACK_PREPARED_TAG => LogicalMessage::RollbackPrepared(RollbackPrepared {
                flags: r.u8("flags")?,
                prepare_end_lsn: r.lsn("prepare end lsn")?,
                rollback_end_lsn: r.lsn("rollback end lsn")?,
                prepare_time: PgTimestamp(r.i64("prepare timestamp")?),
                rollback_time: PgTimestamp(r.i64("rollback timestamp")?),
                xid: r.u32("xid")?,
                gid: r.cstr("gid")?,
            }),
            other => return Err(DecodeError::UnknownTag(other as char)),
        })
    }
}

fn expect_marker(r: &mut Reader, marker: u8, expected: &'static str) -> Result<(), DecodeError> {
    let found = r.u8("tuple marker")?;
    if found != marker {
        return Err(DecodeError::UnexpectedTupleMarker {
            expected,
            found: found as char,
        });
    }
    Ok(())
}

fn decode_relation(xid: Option<u32>, r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = r.cstr("relation namespace")?;
    let name = r.cstr("relation name")?;
    let replica_identity = match r.u8("replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(DecodeError::UnknownReplicaIdentity(other as char)),
    };
    let ncols = r.i16("column count")?;
    let ncols = usize::try_from(ncols).map_err(|_| DecodeError::NegativeLength {
        what: "column count",
        len: ncols.into(),
    })?;
    let mut columns = Vec::with_capacity(ncols.min(r.remaining() / 10));
    for _ in 0..ncols {
        columns.push(Column {
            is_key: r.u8("column flags")? & 1 != 0,
            name: r.cstr("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        xid,
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_tuple(r: &mut Reader) -> Result<Tuple, DecodeError> {
    let ncols = r.i16("tuple column count")?;
    let ncols = usize::try_from(ncols).map_err(|_| DecodeError::NegativeLength {
        what: "tuple column count",
        len: ncols.into(),
    })?;
    let mut datums = Vec::with_capacity(ncols.min(r.remaining()));
    for _ in 0..ncols {
        datums.push(match r.u8("tuple column kind")? {
            DATUM_NULL => Datum::Null,
            DATUM_UNCHANGED_TOAST => Datum::UnchangedToast,
            DATUM_TEXT => Datum::Text(r.counted_bytes("text column value")?),
            DATUM_BINARY => Datum::Binary(r.counted_bytes("binary column value")?),
            other => return Err(DecodeError::UnknownDatumKind(other as char)),
        });
    }
    Ok(Tuple(datums))
}

fn decode_prepare(r: &mut Reader) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: r.u8("flags")?,
        prepare_lsn: r.lsn("prepare lsn")?,
        end_lsn: r.lsn("end lsn")?,
        prepare_time: PgTimestamp(r.i64("prepare timestamp")?),
        xid: r.u32("xid")?,
        gid: r.cstr("gid")?,
    })
}
