//! The CopyBoth phase of START_REPLICATION.
//!
//! **Liveness without false alarms**: the walsender sends keepalives only when *we* have been
//! silent for half its `wal_sender_timeout`, so a client that reports progress often may hear
//! nothing from an idle server. When half of `read_timeout` passes in silence, the stream
//! re-sends the last status it was given with "reply requested"; only if the server still says
//! nothing for the other half is the connection declared dead. The probe never reports a
//! position beyond what the caller last reported.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::{backend, frontend};
use tokio::time::Instant;

use super::frames::{encode_status, parse_copy_data, ReplicationEvent, StandbyStatus};
use super::wire::{db_error, notice, protocol, PgWire};
use super::ReplicationClient;
use crate::decode::PgTimestamp;
use crate::error::{Error, Result};

const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
const COPY_DATA_TAG: u8 = b'd';
const COPY_DONE_TAG: u8 = b'c';

/// Send START_REPLICATION and wait for CopyBothResponse, which postgres-protocol does not parse.
pub(super) async fn start(wire: &mut PgWire, sql: &str) -> Result<()> {
    frontend::query(sql, wire.out()).map_err(Error::io("encoding START_REPLICATION"))?;
    wire.flush().await?;
    loop {
        let frame = wire.read_frame().await?;
        let tag = frame.tag;
        match tag {
            COPY_BOTH_RESPONSE_TAG => return Ok(()),
            _ => match frame.parse()? {
                backend::Message::ErrorResponse(body) => {
                    return Err(Error::from(crate::error::Cause::Db {
                        context: sql.to_owned(),
                        source: Box::new(db_error(&body)),
                    }));
                }
                backend::Message::NoticeResponse(_) | backend::Message::ParameterStatus(_) => {}
                _ => {
                    return Err(protocol(
                        "starting replication",
                        format!("unexpected message {:?}", tag as char),
                    ))
                }
            },
        }
    }
}

/// A running logical replication stream.
pub struct ReplicationStream {
    client: ReplicationClient,
    read_timeout: Duration,
    last_status: StandbyStatus,
    last_heard: Instant,
    probed: bool,
    done: bool,
    /// The publications streamed for, to recognise the walsender's warning that one is gone.
    publications: Vec<String>,
}

impl ReplicationStream {
    pub(super) fn new(
        client: ReplicationClient,
        read_timeout: Duration,
        publications: Vec<String>,
    ) -> Self {
        ReplicationStream {
            publications,
            client,
            read_timeout,
            last_status: StandbyStatus::default(),
            last_heard: Instant::now(),
            probed: false,
            done: false,
        }
    }

    /// The next message, or `None` once the server has ended the stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<ReplicationEvent>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let half = self.read_timeout / 2;
            let deadline = self.last_heard + if self.probed { self.read_timeout } else { half };
            let frame = match tokio::time::timeout_at(deadline, self.client.wire_mut().read_frame())
                .await
            {
                Ok(frame) => frame?,
                Err(_) if !self.probed => {
                    self.probed = true;
                    self.write_status(true).await?;
                    continue;
                }
                Err(_) => {
                    return Err(Error::from(crate::error::Cause::Timeout {
                        what: "waiting for the replication stream (no keepalive from the server)"
                            .into(),
                        seconds: self.read_timeout.as_secs(),
                    }))
                }
            };
            self.last_heard = Instant::now();
            self.probed = false;
            let tag = frame.tag;
            match tag {
                COPY_DATA_TAG => {
                    let data = Bytes::copy_from_slice(frame.body());
                    return parse_copy_data(data)
                        .map(Some)
                        .map_err(|e| protocol("reading the replication stream", e));
                }
                COPY_DONE_TAG => {
                    self.done = true;
                    return Ok(None);
                }
                _ => match frame.parse()? {
                    backend::Message::ErrorResponse(body) => {
                        return Err(Error::from(crate::error::Cause::Db {
                            context: "replication stream".into(),
                            source: Box::new(db_error(&body)),
                        }))
                    }
                    backend::Message::NoticeResponse(body) => {
                        stream_notice(notice(&body), &self.publications)?
                    }
                    backend::Message::ParameterStatus(_) => {}
                    // A walsender told to shut down (`pg_ctl stop/restart -m fast`) sends what
                    // it has, ends the COPY with CommandComplete and exits, without CopyDone:
                    // the connection is going away, which is retried like any lost connection.
                    backend::Message::CommandComplete(_) | backend::Message::ReadyForQuery(_) => {
                        self.done = true;
                        return Err(Error::from(crate::error::Cause::Io {
                            context:
                                "the source ended the replication stream (server shutting down)"
                                    .into(),
                            source: std::io::Error::new(
                                std::io::ErrorKind::ConnectionAborted,
                                "walsender finished",
                            ),
                        }));
                    }
                    _ => {
                        return Err(protocol(
                            "reading the replication stream",
                            format!("unexpected message {:?}", tag as char),
                        ))
                    }
                },
            }
        }
    }

    /// Report progress. `status.flushed` lets the server recycle WAL up to it: pass only a
    /// position the destination has durably committed.
    pub async fn send_status(
        &mut self,
        status: StandbyStatus,
        reply_requested: bool,
    ) -> Result<()> {
        self.last_status = status;
        self.write_status(reply_requested).await
    }

    /// The last status sent.
    pub fn last_status(&self) -> StandbyStatus {
        self.last_status
    }

    async fn write_status(&mut self, reply_requested: bool) -> Result<()> {
        let payload = encode_status(
            self.last_status,
            PgTimestamp::from_system_time(SystemTime::now()),
            reply_requested,
        );
        let wire = self.client.wire_mut();
        let mut buf = BytesMut::new();
        frontend::CopyData::new(&payload[..])
            .map_err(Error::io("encoding status"))?
            .write(&mut buf);
        wire.out().extend_from_slice(&buf);
        wire.flush().await
    }

    /// End the stream (CopyDone) and close the connection.
    pub async fn close(mut self) {
        frontend::copy_done(self.client.wire_mut().out());
        let _ = self.client.wire_mut().flush().await;
        self.client.close().await
    }
}

/// A notice from the walsender while it streams. Postgres 18 no longer fails when a
/// publication it streams for has been dropped: it warns (`skipped loading publication "…"`,
/// SQLSTATE 55000) and goes on without it, sending none of its tables' changes, and the slot
/// would then confirm past them. That is the silent loss cdc refuses: it stops, before
/// confirming anything newer. The SQLSTATE is a generic one, so the warning is told by it
/// together with a publication's name in the text (names are not translated; the words may
/// be). Other notices are logged.
fn stream_notice(n: crate::error::DbError, publications: &[String]) -> Result<()> {
    let names_ours = publications.iter().any(|p| n.message.contains(p.as_str()));
    if n.code == "55000" && n.severity == "WARNING" && names_ours {
        return Err(Error::definite(format!(
            "the source says \"{}\": the publication was dropped while cdc streamed, and \
             Postgres now sends none of its tables' changes. cdc stopped before confirming any, \
             but changes made after the drop can never be decoded for it again: take a new \
             snapshot with `cdc snapshot --force`",
            n.message
        )));
    }
    tracing::warn!(severity = %n.severity, code = %n.code, message = %n.message, "the source's walsender says");
    Ok(())
}

#[cfg(test)]
mod notice_tests {
    use super::*;

    fn notice(code: &str, message: &str) -> crate::error::DbError {
        crate::error::DbError {
            severity: "WARNING".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn a_skipped_publication_of_ours_stops_the_stream_and_other_notices_pass() {
        let ours = ["cdc".to_string()];
        let e = stream_notice(
            notice("55000", "skipped loading publication \"cdc\""),
            &ours,
        )
        .unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("cdc snapshot --force"), "{e}");
        // Someone else's publication, another warning, another code: logged only.
        assert!(stream_notice(
            notice("55000", "skipped loading publication \"other\""),
            &ours
        )
        .is_ok());
        assert!(stream_notice(notice("01000", "publication \"cdc\" is fine"), &ours).is_ok());
    }
}
