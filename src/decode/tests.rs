//! Unit and property tests of the decoder. Bytes captured from a real server are tested in
//! `tests/decoder_fixtures.rs`; here the focus is totality and exact field layout.

use bytes::Bytes;
use proptest::prelude::*;

use super::encode::encode;
use super::*;
use crate::lsn::Lsn;

fn decoder_in_stream(xid: Option<u32>) -> PgOutputDecoder {
    PgOutputDecoder { open_stream: xid }
}

/// The xid prefix a data message carries, which decides the decoder state it needs.
fn stream_xid(msg: &LogicalMessage) -> Option<u32> {
    match msg {
        LogicalMessage::Relation(m) => m.xid,
        LogicalMessage::Type(m) => m.xid,
        LogicalMessage::Insert(m) => m.xid,
        LogicalMessage::Update(m) => m.xid,
        LogicalMessage::Delete(m) => m.xid,
        LogicalMessage::Truncate(m) => m.xid,
        LogicalMessage::Message(m) => m.xid,
        LogicalMessage::StreamStop => Some(1),
        _ => None,
    }
}

#[test]
fn begin_layout_matches_the_documentation() {
    let mut raw = vec![b'B'];
    raw.extend_from_slice(&0x0000_0001_0000_0028u64.to_be_bytes());
    raw.extend_from_slice(&777i64.to_be_bytes());
    raw.extend_from_slice(&42u32.to_be_bytes());
    let msg = PgOutputDecoder::new().decode(Bytes::from(raw)).unwrap();
    assert_eq!(
        msg,
        LogicalMessage::Begin(Begin {
            final_lsn: "1/28".parse().unwrap(),
            commit_time: PgTimestamp(777),
            xid: 42
        })
    );
}

#[test]
fn insert_with_every_datum_kind() {
    let mut raw = vec![b'I'];
    raw.extend_from_slice(&16384u32.to_be_bytes());
    raw.push(b'N');
    raw.extend_from_slice(&4i16.to_be_bytes());
    raw.push(b'n');
    raw.push(b'u');
    raw.push(b't');
    raw.extend_from_slice(&2i32.to_be_bytes());
    raw.extend_from_slice(b"42");
    raw.push(b'b');
    raw.extend_from_slice(&1i32.to_be_bytes());
    raw.push(0);
    let msg = PgOutputDecoder::new().decode(Bytes::from(raw)).unwrap();
    assert_eq!(
        msg,
        LogicalMessage::Insert(Insert {
            xid: None,
            relation_id: 16384,
            new: Tuple(vec![
                Datum::Null,
                Datum::UnchangedToast,
                Datum::Text(Bytes::from_static(b"42")),
                Datum::Binary(Bytes::from_static(&[0])),
            ]),
        })
    );
}

#[test]
fn data_messages_inside_a_stream_block_carry_an_xid() {
    let mut d = PgOutputDecoder::new();
    d.decode(Bytes::from_static(&[b'S', 0, 0, 2, 0, 1]))
        .unwrap();
    assert_eq!(d.open_stream(), Some(512));
    // Truncate with the xid prefix: xid 512, 1 relation, cascade, relid 7.
    let raw = [b'T', 0, 0, 2, 0, 0, 0, 0, 1, 1, 0, 0, 0, 7];
    let msg = d.decode(Bytes::copy_from_slice(&raw)).unwrap();
    assert_eq!(
        msg,
        LogicalMessage::Truncate(Truncate {
            xid: Some(512),
            cascade: true,
            restart_identity: false,
            relation_ids: vec![7]
        })
    );
    d.decode(Bytes::from_static(b"E")).unwrap();
    assert_eq!(d.open_stream(), None);
    // Outside the block, the same bytes are no longer a valid message.
    assert!(d.decode(Bytes::copy_from_slice(&raw)).is_err());
}

#[test]
fn protocol_rules_are_named_errors() {
    let mut d = PgOutputDecoder::new();
    assert_eq!(
        d.decode(Bytes::from_static(b"E")),
        Err(DecodeError::StreamStopWithoutStart)
    );
    d.decode(Bytes::from_static(&[b'S', 0, 0, 0, 9, 1]))
        .unwrap();
    assert_eq!(
        d.decode(Bytes::from_static(&[b'S', 0, 0, 0, 10, 0])),
        Err(DecodeError::NestedStreamStart { xid: 10, open: 9 })
    );
    assert_eq!(d.decode(Bytes::new()), Err(DecodeError::Empty));
    assert_eq!(
        d.decode(Bytes::from_static(b"Z")),
        Err(DecodeError::UnknownTag('Z'))
    );
}

#[test]
fn trailing_bytes_and_bad_markers_are_rejected() {
    let mut d = PgOutputDecoder::new();
    assert_eq!(
        d.decode(Bytes::from_static(&[b'S', 0, 0, 0, 9, 1, 0])),
        Err(DecodeError::TrailingBytes { tag: 'S', count: 1 })
    );
    // Still outside a stream: the invalid Stream Start changed no state.
    assert_eq!(d.open_stream(), None);
    let raw = [b'D', 0, 0, 0, 1, b'N', 0, 0];
    assert_eq!(
        d.decode(Bytes::copy_from_slice(&raw)),
        Err(DecodeError::UnexpectedTupleMarker {
            expected: "K or O",
            found: 'N'
        })
    );
    let raw = [b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0xff, 0xff, 0xff, 0xff];
    assert_eq!(
        d.decode(Bytes::copy_from_slice(&raw)),
        Err(DecodeError::NegativeLength {
            what: "text column value",
            len: -1
        })
    );
}

#[test]
fn stream_abort_with_and_without_protocol_4_fields() {
    let mut raw = vec![b'A', 0, 0, 0, 5, 0, 0, 0, 6];
    let short = PgOutputDecoder::new()
        .decode(Bytes::from(raw.clone()))
        .unwrap();
    assert_eq!(
        short,
        LogicalMessage::StreamAbort(StreamAbort {
            xid: 5,
            subxid: 6,
            abort: None
        })
    );
    raw.extend_from_slice(&0x10u64.to_be_bytes());
    raw.extend_from_slice(&99i64.to_be_bytes());
    let long = PgOutputDecoder::new()
        .decode(Bytes::from(raw.clone()))
        .unwrap();
    assert_eq!(
        long,
        LogicalMessage::StreamAbort(StreamAbort {
            xid: 5,
            subxid: 6,
            abort: Some((Lsn(0x10), PgTimestamp(99)))
        })
    );
    raw.pop();
    assert!(PgOutputDecoder::new().decode(Bytes::from(raw)).is_err());
}

#[test]
fn timestamps_convert_around_the_postgres_epoch() {
    let t = PgTimestamp(0).to_system_time();
    assert_eq!(
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        946_684_800
    );
    for us in [-1_000_000i64, 0, 1, 1_700_000_000_000_000] {
        assert_eq!(
            PgTimestamp::from_system_time(PgTimestamp(us).to_system_time()),
            PgTimestamp(us)
        );
    }
}

// ---- property tests -------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    // Names never contain NUL (Postgres forbids it).
    "[^\u{0}]{0,12}"
}

fn datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(Datum::Null),
        Just(Datum::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Datum::Text(Bytes::from(v))),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| Datum::Binary(Bytes::from(v))),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    proptest::collection::vec(datum(), 0..8).prop_map(Tuple)
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn ts() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

fn xid() -> impl Strategy<Value = Option<u32>> {
    proptest::option::of(any::<u32>())
}

fn prepare() -> impl Strategy<Value = Prepare> {
    (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), text()).prop_map(
        |(flags, prepare_lsn, end_lsn, prepare_time, xid, gid)| Prepare {
            flags,
            prepare_lsn,
            end_lsn,
            prepare_time,
            xid,
            gid,
        },
    )
}

// Long: one generator per message type, in one `prop_oneof!` so every type is drawn alike.
fn message() -> impl Strategy<Value = LogicalMessage> {
    let column = (any::<bool>(), text(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| Column {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    );
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index)
    ];
    prop_oneof![
        (lsn(), ts(), any::<u32>()).prop_map(
            |(final_lsn, commit_time, xid)| LogicalMessage::Begin(Begin {
                final_lsn,
                commit_time,
                xid
            })
        ),
        (any::<u8>(), lsn(), lsn(), ts()).prop_map(|(flags, commit_lsn, end_lsn, commit_time)| {
            LogicalMessage::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            })
        }),
        (lsn(), text())
            .prop_map(|(commit_lsn, name)| LogicalMessage::Origin(Origin { commit_lsn, name })),
        (
            xid(),
            any::<u32>(),
            text(),
            text(),
            identity,
            proptest::collection::vec(column, 0..6)
        )
            .prop_map(|(xid, id, namespace, name, replica_identity, columns)| {
                LogicalMessage::Relation(Relation {
                    xid,
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (xid(), any::<u32>(), text(), text()).prop_map(|(xid, oid, namespace, name)| {
            LogicalMessage::Type(Type {
                xid,
                oid,
                namespace,
                name,
            })
        }),
        (xid(), any::<u32>(), tuple()).prop_map(|(xid, relation_id, new)| LogicalMessage::Insert(
            Insert {
                xid,
                relation_id,
                new
            }
        )),
        (
            xid(),
            any::<u32>(),
            proptest::option::of(old_tuple()),
            tuple()
        )
            .prop_map(
                |(xid, relation_id, old, new)| LogicalMessage::Update(Update {
                    xid,
                    relation_id,
                    old,
                    new
                })
            ),
        (xid(), any::<u32>(), old_tuple()).prop_map(|(xid, relation_id, old)| {
            LogicalMessage::Delete(Delete {
                xid,
                relation_id,
                old,
            })
        }),
        (
            xid(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(any::<u32>(), 0..5)
        )
            .prop_map(|(xid, cascade, restart_identity, relation_ids)| {
                LogicalMessage::Truncate(Truncate {
                    xid,
                    cascade,
                    restart_identity,
                    relation_ids,
                })
            }),
        (
            xid(),
            any::<bool>(),
            lsn(),
            text(),
            proptest::collection::vec(any::<u8>(), 0..30)
        )
            .prop_map(|(xid, transactional, lsn, prefix, content)| {
                LogicalMessage::Message(Message {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content: Bytes::from(content),
                })
            }),
        (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| LogicalMessage::StreamStart(
            StreamStart { xid, first_segment }
        )),
        Just(LogicalMessage::StreamStop),
        (any::<u32>(), any::<u8>(), lsn(), lsn(), ts()).prop_map(
            |(xid, flags, commit_lsn, end_lsn, commit_time)| {
                LogicalMessage::StreamCommit(StreamCommit {
                    xid,
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            }
        ),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::option::of((lsn(), ts()))
        )
            .prop_map(
                |(xid, subxid, abort)| LogicalMessage::StreamAbort(StreamAbort {
                    xid,
                    subxid,
                    abort
                })
            ),
        (lsn(), lsn(), ts(), any::<u32>(), text()).prop_map(
            |(prepare_lsn, end_lsn, prepare_time, xid, gid)| {
                LogicalMessage::BeginPrepare(BeginPrepare {
                    prepare_lsn,
                    end_lsn,
                    prepare_time,
                    xid,
                    gid,
                })
            }
        ),
        prepare().prop_map(LogicalMessage::Prepare),
        prepare().prop_map(LogicalMessage::StreamPrepare),
        (any::<u8>(), lsn(), lsn(), ts(), any::<u32>(), text()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time, xid, gid)| {
                LogicalMessage::CommitPrepared(CommitPrepared {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                    xid,
                    gid,
                })
            }
        ),
        (any::<u8>(), lsn(), lsn(), ts(), ts(), any::<u32>(), text()).prop_map(
            |(flags, prepare_end_lsn, rollback_end_lsn, prepare_time, rollback_time, xid, gid)| {
                LogicalMessage::RollbackPrepared(RollbackPrepared {
                    flags,
                    prepare_end_lsn,
                    rollback_end_lsn,
                    prepare_time,
                    rollback_time,
                    xid,
                    gid,
                })
            }
        ),
    ]
}

proptest! {
    // 4096 cases per run by default; `PROPTEST_CASES=N` runs longer fuzzing sessions.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4096)
    ))]

    #[test]
    fn every_message_round_trips(msg in message()) {
        let mut d = decoder_in_stream(stream_xid(&msg));
        prop_assert_eq!(d.decode(encode(&msg)).unwrap(), msg);
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_an_error(msg in message()) {
        let bytes = encode(&msg);
        for cut in 0..bytes.len() {
            let mut d = decoder_in_stream(stream_xid(&msg));
            // A shorter prefix may still be a valid different message only for Stream Abort
            // (its protocol-4 tail is optional); everything else must be rejected.
            let res = d.decode(bytes.slice(..cut));
            if !matches!(msg, LogicalMessage::StreamAbort(_)) {
                prop_assert!(res.is_err(), "prefix of {} bytes decoded as {:?}", cut, res);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..200), open in xid()) {
        let _ = decoder_in_stream(open).decode(Bytes::from(raw));
    }

    #[test]
    fn corrupted_valid_messages_never_panic(msg in message(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut raw = encode(&msg).to_vec();
        let i = pos % raw.len();
        raw[i] = byte;
        let _ = decoder_in_stream(stream_xid(&msg)).decode(Bytes::from(raw));
    }
}
