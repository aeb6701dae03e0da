//! Our replication-protocol client.
//!
//! ```text
//!  ReplicationClient::connect ── startup with replication=database, TLS, SCRAM/MD5
//!        │  identify_system / create_logical_slot / drop_slot   (simple queries)
//!        ▼
//!  start_logical_replication ──► ReplicationStream ── next() ──► XLogData / Keepalive
//!                                       ▲
//!                                       └── send_status(flushed) ◄── only after the
//!                                                                     destination committed
//! ```
//!
//! Facts this module is built around: an exported snapshot lives only until the replication
//! session runs its next command, so the snapshot copy must finish before anything else is sent
//! on the connection that created the slot; Relation messages carry no WAL position; a missing
//! publication is reported only when the first change is decoded.

mod frames;
mod stream;
pub(crate) mod wire;

use std::time::Duration;

pub use frames::{encode_status, parse_copy_data, FrameError, ReplicationEvent, StandbyStatus};
pub use stream::ReplicationStream;

use crate::conninfo::ConnInfo;
use crate::error::Result;
use crate::lsn::Lsn;
use crate::model::sql::{quote_ident, quote_literal};
use wire::PgWire;

/// Session settings that decide how pgoutput prints values as text. They are fixed so that the
/// text we receive is unambiguous and identical to what a fresh destination session parses.
const STARTUP_PARAMS: &[(&str, &str)] = &[
    ("replication", "database"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
];

/// Result of IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemId {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// A slot just created, with the snapshot that sees exactly the data before its consistent point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    pub consistent_point: Lsn,
    pub snapshot_name: Option<String>,
}

/// How a slot is created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotOptions {
    /// Export a snapshot that sees exactly the data before the consistent point.
    pub export_snapshot: bool,
    /// Dropped when the session ends (a table joining a running pipeline uses one).
    pub temporary: bool,
    /// Synchronized to standbys so it survives a failover (Postgres 17+).
    pub failover: bool,
}

/// The CREATE_REPLICATION_SLOT command for `server_version` (server_version_num), or why the
/// server cannot do what `options` ask.
pub fn create_slot_sql(
    slot: &str,
    options: &SlotOptions,
    server_version: u32,
) -> std::result::Result<String, String> {
    if options.failover && server_version < 170000 {
        return Err(format!(
            "source.failover needs Postgres 17 or later (the source runs {}): remove it, or upgrade the source",
            server_version / 10000
        ));
    }
    let temporary = if options.temporary { " TEMPORARY" } else { "" };
    let rest = if server_version >= 150000 {
        let mut list = vec![if options.export_snapshot {
            "SNAPSHOT 'export'"
        } else {
            "SNAPSHOT 'nothing'"
        }];
        if options.failover {
            list.push("FAILOVER true");
        }
        format!(" ({})", list.join(", "))
    } else if options.export_snapshot {
        " EXPORT_SNAPSHOT".to_owned()
    } else {
        " NOEXPORT_SNAPSHOT".to_owned()
    };
    Ok(format!(
        "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput{rest}",
        quote_ident(slot)
    ))
}

/// Options of the pgoutput plugin for START_REPLICATION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOutputOptions {
    /// 1 on Postgres 10+, 2 (streaming) on 14+, 3 (two-phase) on 15+, 4 (parallel) on 16+.
    pub proto_version: u32,
    pub publication_names: Vec<String>,
    /// Receive large in-progress transactions in chunks (protocol 2+).
    pub streaming: bool,
    /// Receive `pg_logical_emit_message` messages.
    pub messages: bool,
    /// Receive values in binary send format instead of text.
    pub binary: bool,
    /// Decode prepared transactions at PREPARE (protocol 3+; the slot must have TWO_PHASE).
    pub two_phase: bool,
}

impl PgOutputOptions {
    /// The highest protocol `server_version_num` supports, with streaming where available.
    pub fn for_server(server_version_num: u32, publication: &str) -> Self {
        let proto_version = match server_version_num {
            v if v >= 160000 => 4,
            v if v >= 150000 => 3,
            v if v >= 140000 => 2,
            _ => 1,
        };
        PgOutputOptions {
            proto_version,
            publication_names: vec![publication.to_owned()],
            streaming: proto_version >= 2,
            messages: false,
            binary: false,
            two_phase: false,
        }
    }

    /// The option list of START_REPLICATION, every value quoted.
    fn to_sql(&self) -> String {
        let pubs: Vec<String> = self
            .publication_names
            .iter()
            .map(|p| quote_ident(p))
            .collect();
        let mut opts = vec![
            format!("\"proto_version\" '{}'", self.proto_version),
            format!("\"publication_names\" {}", quote_literal(&pubs.join(","))),
        ];
        // Postgres 15 accepts only a boolean here, and protocol 1 refuses the option entirely.
        if self.streaming {
            opts.push("\"streaming\" 'on'".into());
        }
        if self.messages {
            opts.push("\"messages\" 'true'".into());
        }
        if self.binary {
            opts.push("\"binary\" 'true'".into());
        }
        if self.two_phase {
            opts.push("\"two_phase\" 'on'".into());
        }
        format!("({})", opts.join(", "))
    }
}

/// A connection in replication mode.
pub struct ReplicationClient {
    wire: PgWire,
    server_version_num: u32,
}

/// The startup parameters of a source session on our wire code: `STARTUP_PARAMS` (without
/// `replication` for a plain session) and the application name.
pub(crate) fn startup_params(info: &ConnInfo, replication: bool) -> Vec<(&str, &str)> {
    let mut params: Vec<(&str, &str)> = STARTUP_PARAMS
        .iter()
        .copied()
        .filter(|(k, _)| replication || *k != "replication")
        .collect();
    params.push((
        "application_name",
        info.application_name.as_deref().unwrap_or("cdc"),
    ));
    params
}

impl ReplicationClient {
    /// Connect with `replication=database` to the database named in `info`.
    pub async fn connect(info: &ConnInfo) -> Result<Self> {
        let params = startup_params(info, true);
        let wire = PgWire::connect(info, &params).await?;
        let version = wire
            .params
            .get("server_version")
            .cloned()
            .unwrap_or_default();
        let server_version_num = parse_server_version(&version).ok_or_else(|| {
            wire::protocol(
                "starting up",
                format!("unparsable server_version {version:?}"),
            )
        })?;
        Ok(ReplicationClient {
            wire,
            server_version_num,
        })
    }

    /// `server_version_num` of the server, e.g. 150018 for 15.18.
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// Whether the session is encrypted with TLS.
    pub fn is_tls(&self) -> bool {
        self.wire.tls
    }

    /// Run a replication command (or, with replication=database, plain SQL) and return its rows.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.wire.simple_query(sql).await
    }

    /// IDENTIFY_SYSTEM. Note: running it destroys a snapshot exported on this connection.
    pub async fn identify_system(&mut self) -> Result<SystemId> {
        let rows = self.wire.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| wire::protocol("IDENTIFY_SYSTEM", "no row"))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemId {
            system_id: col(0).unwrap_or_default(),
            timeline: col(1).and_then(|t| t.parse().ok()).unwrap_or(0),
            xlog_pos: col(2)
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| wire::protocol("IDENTIFY_SYSTEM", "bad xlogpos"))?,
            dbname: col(3),
        })
    }

    /// Create a pgoutput slot. With `export_snapshot`, the returned snapshot name can be imported
    /// by other sessions (`SET TRANSACTION SNAPSHOT`) until this connection runs another command.
    pub async fn create_logical_slot(
        &mut self,
        slot: &str,
        export_snapshot: bool,
    ) -> Result<CreatedSlot> {
        let options = SlotOptions {
            export_snapshot,
            ..SlotOptions::default()
        };
        self.create_slot_with(slot, &options).await
    }

    /// CREATE_REPLICATION_SLOT with `options`, in the syntax of the server's version.
    pub async fn create_slot_with(
        &mut self,
        slot: &str,
        options: &SlotOptions,
    ) -> Result<CreatedSlot> {
        let sql = create_slot_sql(slot, options, self.server_version_num)
            .map_err(crate::error::Error::definite)?;
        let rows = self.wire.simple_query(&sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| wire::protocol("CREATE_REPLICATION_SLOT", "no row"))?;
        Ok(CreatedSlot {
            slot_name: row.first().cloned().flatten().unwrap_or_default(),
            consistent_point: row
                .get(1)
                .cloned()
                .flatten()
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| wire::protocol("CREATE_REPLICATION_SLOT", "bad consistent_point"))?,
            snapshot_name: row.get(2).cloned().flatten(),
        })
    }

    /// A temporary slot whose exported snapshot sees exactly the transactions committed before
    /// its consistent point (returned with the snapshot's name); both end with this session's
    /// next command or the session itself.
    pub async fn create_temporary_snapshot(&mut self, slot: &str) -> Result<(Lsn, String)> {
        let options = SlotOptions {
            export_snapshot: true,
            temporary: true,
            failover: false,
        };
        let created = self.create_slot_with(slot, &options).await?;
        let snapshot = created.snapshot_name.ok_or_else(|| {
            crate::error::Error::definite("the server exported no snapshot".into())
        })?;
        Ok((created.consistent_point, snapshot))
    }

    /// DROP_REPLICATION_SLOT; with `wait`, wait for another session holding it to release it.
    pub async fn drop_slot(&mut self, slot: &str, wait: bool) -> Result<()> {
        let sql = format!(
            "DROP_REPLICATION_SLOT {}{}",
            quote_ident(slot),
            if wait { " WAIT" } else { "" }
        );
        self.wire.simple_query(&sql).await.map(|_| ())
    }

    /// START_REPLICATION from `start` (0/0 means the slot's confirmed position).
    /// `read_timeout` bounds the silence we tolerate from the server; see `ReplicationStream`.
    pub async fn start_logical_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &PgOutputOptions,
        read_timeout: Duration,
    ) -> Result<ReplicationStream> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} {}",
            quote_ident(slot),
            options.to_sql()
        );
        stream::start(self.wire_mut(), &sql).await?;
        Ok(ReplicationStream::new(
            self,
            read_timeout,
            options.publication_names.clone(),
        ))
    }

    fn wire_mut(&mut self) -> &mut PgWire {
        &mut self.wire
    }

    /// Close the session politely.
    pub async fn close(self) {
        self.wire.terminate().await
    }
}

/// "15.18 (Debian 15.18-0+deb12u1)" → 150018; "9.6.24" → 90624.
fn parse_server_version(v: &str) -> Option<u32> {
    let num = v
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = num.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let patch = parts.next().flatten().unwrap_or(0);
        Some(major * 10000 + minor * 100 + patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_created_in_each_versions_syntax() {
        let export = SlotOptions {
            export_snapshot: true,
            ..SlotOptions::default()
        };
        assert_eq!(
            create_slot_sql("s", &export, 140000).unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        let temporary = SlotOptions {
            temporary: true,
            ..export.clone()
        };
        assert_eq!(
            create_slot_sql("s", &temporary, 150000).unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        let failover = SlotOptions {
            failover: true,
            ..export
        };
        assert_eq!(
            create_slot_sql("s", &failover, 170000).unwrap(),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)"
        );
        let err = create_slot_sql("s", &failover, 160004).unwrap_err();
        assert!(
            err.contains("Postgres 17") && err.contains("runs 16"),
            "{err}"
        );
    }

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-0+deb12u1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("16beta1"), Some(160000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("x"), None);
    }

    #[test]
    fn protocol_follows_server_version() {
        assert_eq!(PgOutputOptions::for_server(130010, "p").proto_version, 1);
        assert!(!PgOutputOptions::for_server(130010, "p").streaming);
        assert_eq!(PgOutputOptions::for_server(150018, "p").proto_version, 3);
        assert_eq!(PgOutputOptions::for_server(170000, "p").proto_version, 4);
    }

    #[test]
    fn options_quote_every_name() {
        let o = PgOutputOptions {
            proto_version: 2,
            publication_names: vec!["a".into(), "we'ird\"pub".into()],
            streaming: true,
            messages: true,
            binary: false,
            two_phase: false,
        };
        assert_eq!(
            o.to_sql(),
            r#"("proto_version" '2', "publication_names" '"a","we''ird""pub"', "streaming" 'on', "messages" 'true')"#
        );
    }
}
