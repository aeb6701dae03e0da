//! The values the pgoutput decoder produces, one type per protocol message.
//!
//! Field names follow the PostgreSQL documentation ("Logical Replication Message Formats").
//! `xid` fields typed `Option<u32>` are present on the wire only inside a streamed-transaction
//! block (between Stream Start and Stream Stop, protocol 2+).

use bytes::Bytes;

use crate::lsn::Lsn;

/// Microseconds since 2000-01-01 00:00:00 UTC, the Postgres epoch, as carried by the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Seconds between the Unix epoch and the Postgres epoch.
    const POSTGRES_EPOCH_UNIX_SECS: u64 = 946_684_800;

    /// The same instant as a `SystemTime`.
    pub fn to_system_time(self) -> std::time::SystemTime {
        let epoch =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(Self::POSTGRES_EPOCH_UNIX_SECS);
        let delta = std::time::Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            epoch + delta
        } else {
            epoch - delta
        }
    }

    /// The Postgres timestamp of a `SystemTime` (used for standby status updates).
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        let epoch =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(Self::POSTGRES_EPOCH_UNIX_SECS);
        match t.duration_since(epoch) {
            Ok(d) => PgTimestamp(d.as_micros() as i64),
            Err(e) => PgTimestamp(-(e.duration().as_micros() as i64)),
        }
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum LogicalMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(Message),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(BeginPrepare),
    Prepare(Prepare),
    CommitPrepared(CommitPrepared),
    RollbackPrepared(RollbackPrepared),
    StreamPrepare(Prepare),
}

/// Start of a (non-streamed) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

/// End of a transaction; everything since Begin is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Currently unused by Postgres, kept so nothing on the wire is dropped.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm once applied.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// The transaction was replicated into the source from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// How a table identifies the old row of an UPDATE or DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key (`d`).
    Default,
    /// Nothing: updates and deletes cannot be replicated (`n`).
    Nothing,
    /// The whole old row (`f`).
    Full,
    /// A chosen unique index (`i`).
    Index,
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`: length of varchar, precision of numeric, ... (-1 when none).
    pub type_modifier: i32,
}

/// Schema of a table, sent before the first change that uses it and again after it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub xid: Option<u32>,
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// A user-defined type used by a following Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: String,
    pub name: String,
}

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value that did not change: the receiver must keep what it has.
    UnchangedToast,
    /// The type's text output, in the connection's client encoding.
    Text(Bytes),
    /// The type's binary send format (only when `binary 'true'` was requested).
    Binary(Bytes),
}

/// One row, one `Datum` per column of the Relation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Datum>);

/// The old row of an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica identity columns are set (`K`); other columns are Null.
    Key(Tuple),
    /// The whole old row (`O`), with REPLICA IDENTITY FULL.
    Full(Tuple),
}

impl OldTuple {
    /// The row, whichever kind it is.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<u32>,
    pub relation_id: u32,
    pub new: Tuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<u32>,
    pub relation_id: u32,
    /// Present when the key changed (`K`) or the table has REPLICA IDENTITY FULL (`O`).
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub relation_id: u32,
    pub old: OldTuple,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<u32>,
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_ids: Vec<u32>,
}

/// A message written with `pg_logical_emit_message` (only with `messages 'true'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub xid: Option<u32>,
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// A chunk of an in-progress transaction begins (protocol 2+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    /// The first chunk of this transaction.
    pub first_segment: bool,
}

/// A streamed transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// A streamed transaction (`subxid == xid`) or one of its subtransactions aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
    /// Abort LSN and time: sent only with protocol 4 and `streaming 'parallel'`.
    pub abort: Option<(Lsn, PgTimestamp)>,
}

/// Start of a prepared (two-phase) transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

/// `PREPARE TRANSACTION` (also the body of Stream Prepare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

/// `COMMIT PREPARED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

/// `ROLLBACK PREPARED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    pub flags: u8,
    pub prepare_end_lsn: Lsn,
    pub rollback_end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub rollback_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}
