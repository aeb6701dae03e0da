//! The replication sub-protocol inside CopyData: XLogData and keepalives in, standby status
//! updates out. Pure functions over bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::decode::PgTimestamp;
use crate::lsn::Lsn;

const XLOG_DATA_TAG: u8 = b'w';
const KEEPALIVE_TAG: u8 = b'k';
const STANDBY_STATUS_TAG: u8 = b'r';

/// One message of the WAL stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// A chunk of decoded WAL: for pgoutput, exactly one logical message.
    XLogData {
        /// Where the data starts in WAL (0/0 for messages without a position, like Relation).
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        server_time: PgTimestamp,
        data: Bytes,
    },
    /// The server is alive; `reply_requested` asks for a status update now.
    Keepalive {
        wal_end: Lsn,
        server_time: PgTimestamp,
        reply_requested: bool,
    },
}

/// Why a CopyData payload is not a replication message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty CopyData in replication stream")]
    Empty,
    #[error("replication message {tag:?} is {len} bytes, shorter than its header")]
    Short { tag: char, len: usize },
    #[error("unknown replication message tag {0:?}")]
    UnknownTag(char),
}

/// Parse the payload of one CopyData received during START_REPLICATION.
pub fn parse_copy_data(mut data: Bytes) -> Result<ReplicationEvent, FrameError> {
    let len = data.len();
    if data.is_empty() {
        return Err(FrameError::Empty);
    }
    let tag = data.get_u8();
    match tag {
        XLOG_DATA_TAG => {
            if data.len() < 24 {
                return Err(FrameError::Short { tag: 'w', len });
            }
            Ok(ReplicationEvent::XLogData {
                wal_start: Lsn(data.get_u64()),
                wal_end: Lsn(data.get_u64()),
                server_time: PgTimestamp(data.get_i64()),
                data,
            })
        }
        KEEPALIVE_TAG => {
            if data.len() < 17 {
                return Err(FrameError::Short { tag: 'k', len });
            }
            Ok(ReplicationEvent::Keepalive {
                wal_end: Lsn(data.get_u64()),
                server_time: PgTimestamp(data.get_i64()),
                reply_requested: data.get_u8() == 1,
            })
        }
        other => Err(FrameError::UnknownTag(other as char)),
    }
}

/// What we tell the server about our progress. `flushed` is the position the server may
/// release WAL up to, so it must never exceed what the destination durably committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StandbyStatus {
    pub written: Lsn,
    pub flushed: Lsn,
    pub applied: Lsn,
}

/// Encode a standby status update (the payload of a CopyData).
pub fn encode_status(status: StandbyStatus, now: PgTimestamp, reply_requested: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(34);
    b.put_u8(STANDBY_STATUS_TAG);
    b.put_u64(status.written.0);
    b.put_u64(status.flushed.0);
    b.put_u64(status.applied.0);
    b.put_i64(now.0);
    b.put_u8(reply_requested as u8);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut raw = vec![b'w'];
        raw.extend_from_slice(&1u64.to_be_bytes());
        raw.extend_from_slice(&2u64.to_be_bytes());
        raw.extend_from_slice(&3i64.to_be_bytes());
        raw.extend_from_slice(b"B...");
        assert_eq!(
            parse_copy_data(Bytes::from(raw)).unwrap(),
            ReplicationEvent::XLogData {
                wal_start: Lsn(1),
                wal_end: Lsn(2),
                server_time: PgTimestamp(3),
                data: Bytes::from_static(b"B...")
            }
        );
        let mut raw = vec![b'k'];
        raw.extend_from_slice(&9u64.to_be_bytes());
        raw.extend_from_slice(&8i64.to_be_bytes());
        raw.push(1);
        assert_eq!(
            parse_copy_data(Bytes::from(raw)).unwrap(),
            ReplicationEvent::Keepalive {
                wal_end: Lsn(9),
                server_time: PgTimestamp(8),
                reply_requested: true
            }
        );
    }

    #[test]
    fn status_update_layout() {
        let s = StandbyStatus {
            written: Lsn(1),
            flushed: Lsn(2),
            applied: Lsn(3),
        };
        let b = encode_status(s, PgTimestamp(4), true);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[9..17], &2u64.to_be_bytes());
        assert_eq!(b[33], 1);
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_copy_data(Bytes::from(raw));
        }
    }
}
