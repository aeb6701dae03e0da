//! A plain (non-replication) source session for the snapshot's `COPY ... TO STDOUT`, read
//! straight off the socket.
//!
//! Why not tokio-postgres here: the server sends one CopyData message per row, and
//! tokio-postgres hands every message from its connection task to the caller through a
//! channel, so a 5-million-row table meant 5 million hand-offs and wake-ups in `cdc snapshot`'s
//! own CPU (1.8 s of it for 5M pgbench rows, on a 2-core machine whose cores the two servers
//! need). Here the frames are stripped in place and their payloads joined into large chunks,
//! which is all `COPY ... FROM STDIN` on the destination needs.

use bytes::{Bytes, BytesMut};

use crate::conninfo::ConnInfo;
use crate::error::Result;
use crate::source::postgres::replication::startup_params;
use crate::source::postgres::replication::wire::PgWire;

/// Largest chunk handed to the destination at once.
const CHUNK_BYTES: usize = 256 * 1024;

/// A source session that runs simple statements and streams COPY TO output in chunks.
pub struct CopySource {
    wire: PgWire,
    copying: Option<String>,
}

impl CopySource {
    /// Connect with the same session settings as every other source session (they decide how
    /// values print in text COPY).
    pub async fn connect(info: &ConnInfo) -> Result<Self> {
        Ok(CopySource {
            wire: PgWire::connect(info, &startup_params(info, false)).await?,
            copying: None,
        })
    }

    /// Run statements (simple protocol), discarding any rows.
    pub async fn execute(&mut self, sql: &str) -> Result<()> {
        self.wire.simple_query(sql).await.map(drop)
    }

    /// Start `sql`, a `COPY ... TO STDOUT`; then call `next_chunk` until it returns `None`.
    pub async fn copy_out(&mut self, sql: &str) -> Result<()> {
        self.wire.start_copy_out(sql).await?;
        self.copying = Some(sql.to_owned());
        Ok(())
    }

    /// The next chunk of COPY data (whole CopyData payloads joined), or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        let Some(sql) = self.copying.as_deref() else {
            return Ok(None);
        };
        let mut chunk = BytesMut::with_capacity(CHUNK_BYTES);
        let more = self
            .wire
            .read_copy_data(&mut chunk, CHUNK_BYTES, sql)
            .await?;
        if !more {
            self.copying = None;
        }
        Ok((!chunk.is_empty() || more).then(|| chunk.freeze()))
    }

    /// Leave, best effort.
    pub async fn close(self) {
        self.wire.terminate().await
    }
}
