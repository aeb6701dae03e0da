//! Test-only encoder: the inverse of the decoder, so property tests can check that any message
//! survives encode → decode unchanged. It writes exactly what the documentation specifies.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn put_xid(b: &mut BytesMut, xid: Option<u32>) {
    if let Some(x) = xid {
        b.put_u32(x);
    }
}

fn put_tuple(b: &mut BytesMut, t: &Tuple) {
    b.put_i16(t.0.len() as i16);
    for d in &t.0 {
        match d {
            Datum::Null => b.put_u8(DATUM_NULL),
            Datum::UnchangedToast => b.put_u8(DATUM_UNCHANGED_TOAST),
            Datum::Text(v) | Datum::Binary(v) => {
                b.put_u8(if matches!(d, Datum::Text(_)) {
                    DATUM_TEXT
                } else {
                    DATUM_BINARY
                });
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
    }
}

fn put_old(b: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(t) => {
            b.put_u8(TUPLE_KEY_TAG);
            put_tuple(b, t)
        }
        OldTuple::Full(t) => {
            b.put_u8(TUPLE_OLD_TAG);
            put_tuple(b, t)
        }
    }
}

fn put_prepare(b: &mut BytesMut, p: &Prepare) {
    b.put_u8(p.flags);
    b.put_u64(p.prepare_lsn.0);
    b.put_u64(p.end_lsn.0);
    b.put_i64(p.prepare_time.0);
    b.put_u32(p.xid);
    put_cstr(b, &p.gid);
}

// Long: one arm per message type, the exact inverse of `decode_body`, kept side by side.
pub(crate) fn encode(msg: &LogicalMessage) -> Bytes {
    let mut b = BytesMut::new();
    match msg {
        LogicalMessage::Begin(m) => {
            b.put_u8(BEGIN_TAG);
            b.put_u64(m.final_lsn.0);
            b.put_i64(m.commit_time.0);
            b.put_u32(m.xid);
        }
        LogicalMessage::Commit(m) => {
            b.put_u8(COMMIT_TAG);
            b.put_u8(m.flags);
            b.put_u64(m.commit_lsn.0);
            b.put_u64(m.end_lsn.0);
            b.put_i64(m.commit_time.0);
        }
        LogicalMessage::Origin(m) => {
            b.put_u8(ORIGIN_TAG);
            b.put_u64(m.commit_lsn.0);
            put_cstr(&mut b, &m.name);
        }
        LogicalMessage::Relation(m) => {
            b.put_u8(RELATION_TAG);
            put_xid(&mut b, m.xid);
            b.put_u32(m.id);
            put_cstr(&mut b, &m.namespace);
            put_cstr(&mut b, &m.name);
            b.put_u8(match m.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            });
            b.put_i16(m.columns.len() as i16);
            for c in &m.columns {
                b.put_u8(c.is_key as u8);
                put_cstr(&mut b, &c.name);
                b.put_u32(c.type_oid);
                b.put_i32(c.type_modifier);
            }
        }
        LogicalMessage::Type(m) => {
            b.put_u8(TYPE_TAG);
            put_xid(&mut b, m.xid);
            b.put_u32(m.oid);
            put_cstr(&mut b, &m.namespace);
            put_cstr(&mut b, &m.name);
        }
        LogicalMessage::Insert(m) => {
            b.put_u8(INSERT_TAG);
            put_xid(&mut b, m.xid);
            b.put_u32(m.relation_id);
            b.put_u8(TUPLE_NEW_TAG);
            put_tuple(&mut b, &m.new);
        }
        LogicalMessage::Update(m) => {
            b.put_u8(UPDATE_TAG);
            put_xid(&mut b, m.xid);
            b.put_u32(m.relation_id);
            if let Some(old) = &m.old {
                put_old(&mut b, old);
            }
            b.put_u8(TUPLE_NEW_TAG);
            put_tuple(&mut b, &m.new);
        }
        LogicalMessage::Delete(m) => {
            b.put_u8(DELETE_TAG);
            put_xid(&mut b, m.xid);
            b.put_u32(m.relation_id);
            put_old(&mut b, &m.old);
        }
        LogicalMessage::Truncate(m) => {
            b.put_u8(TRUNCATE_TAG);
            put_xid(&mut b, m.xid);
            b.put_i32(m.relation_ids.len() as i32);
            b.put_u8(
                ((m.cascade as u8) * TRUNCATE_CASCADE)
                    | ((m.restart_identity as u8) * TRUNCATE_RESTART_IDENTITY),
            );
            for id in &m.relation_ids {
                b.put_u32(*id);
            }
        }
        LogicalMessage::Message(m) => {
            b.put_u8(MESSAGE_TAG);
            put_xid(&mut b, m.xid);
            b.put_u8(m.transactional as u8);
            b.put_u64(m.lsn.0);
            put_cstr(&mut b, &m.prefix);
            b.put_i32(m.content.len() as i32);
            b.put_slice(&m.content);
        }
        LogicalMessage::StreamStart(m) => {
            b.put_u8(STREAM_START_TAG);
            b.put_u32(m.xid);
            b.put_u8(m.first_segment as u8);
        }
        LogicalMessage::StreamStop => b.put_u8(STREAM_STOP_TAG),
        LogicalMessage::StreamCommit(m) => {
            b.put_u8(STREAM_COMMIT_TAG);
            b.put_u32(m.xid);
            b.put_u8(m.flags);
            b.put_u64(m.commit_lsn.0);
            b.put_u64(m.end_lsn.0);
            b.put_i64(m.commit_time.0);
        }
        LogicalMessage::StreamAbort(m) => {
            b.put_u8(STREAM_ABORT_TAG);
            b.put_u32(m.xid);
            b.put_u32(m.subxid);
            if let Some((lsn, ts)) = m.abort {
                b.put_u64(lsn.0);
                b.put_i64(ts.0);
            }
        }
        LogicalMessage::BeginPrepare(m) => {
            b.put_u8(BEGIN_PREPARE_TAG);
            b.put_u64(m.prepare_lsn.0);
            b.put_u64(m.end_lsn.0);
            b.put_i64(m.prepare_time.0);
            b.put_u32(m.xid);
            put_cstr(&mut b, &m.gid);
        }
        LogicalMessage::Prepare(m) => {
            b.put_u8(PREPARE_TAG);
            put_prepare(&mut b, m);
        }
        LogicalMessage::StreamPrepare(m) => {
            b.put_u8(STREAM_PREPARE_TAG);
            put_prepare(&mut b, m);
        }
        LogicalMessage::CommitPrepared(m) => {
            b.put_u8(COMMIT_PREPARED_TAG);
            b.put_u8(m.flags);
            b.put_u64(m.commit_lsn.0);
            b.put_u64(m.end_lsn.0);
            b.put_i64(m.commit_time.0);
            b.put_u32(m.xid);
            put_cstr(&mut b, &m.gid);
        }
        LogicalMessage::RollbackPrepared(m) => {
            b.put_u8(ROLLBACK_PREPARED_TAG);
            b.put_u8(m.flags);
            b.put_u64(m.prepare_end_lsn.0);
            b.put_u64(m.rollback_end_lsn.0);
            b.put_i64(m.prepare_time.0);
            b.put_i64(m.rollback_time.0);
            b.put_u32(m.xid);
            put_cstr(&mut b, &m.gid);
        }
    }
    b.freeze()
}
