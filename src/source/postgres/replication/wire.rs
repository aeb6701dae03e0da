//! Frontend/backend framing over one socket: connect (TCP or Unix), optional TLS, startup,
//! authentication, and reading whole frames.
//!
//! Reading is **cancel-safe**: bytes are accumulated in `PgWire::buf` by `read_buf`, so a
//! `select!` that drops a pending read loses nothing, which the replication stream relies on.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::conninfo::{ChannelBinding as ChannelBindingMode, ConnInfo, ServerState, SslMode};
use crate::error::{DbError, Error, Result};

/// Anything we can speak the protocol over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// Refuse frames above this size: a corrupt length must not make us allocate gigabytes.
/// Postgres limits a single value to 1 GiB, and an XLogData adds a small header.
const MAX_FRAME_LEN: usize = (1 << 30) + (1 << 20);

/// Room made in the read buffer before each socket read during COPY TO: fewer, larger reads.
const COPY_READ_BYTES: usize = 256 * 1024;

/// A frame as read: tag and the whole message bytes including the 5-byte header, which is what
/// `postgres_protocol::message::backend::Message::parse` expects.
pub(crate) struct Frame {
    pub(crate) tag: u8,
    pub(crate) raw: BytesMut,
}

impl Frame {
    /// The message body, after tag and length.
    pub(crate) fn body(&self) -> &[u8] {
        &self.raw[5..]
    }

    pub(crate) fn parse(mut self) -> Result<backend::Message> {
        match backend::Message::parse(&mut self.raw) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(protocol("parsing a message", "incomplete frame")),
            Err(e) => Err(protocol("parsing a message", e)),
        }
    }
}

pub(crate) fn protocol(context: &str, detail: impl std::fmt::Display) -> Error {
    Error::from(crate::error::Cause::Protocol {
        context: context.to_owned(),
        detail: detail.to_string(),
    })
}

/// An ErrorResponse body as a `DbError`.
pub(crate) fn db_error(body: &backend::ErrorResponseBody) -> DbError {
    from_fields(body.fields())
}

/// A NoticeResponse body (the same fields, severity WARNING, NOTICE, ...) as a `DbError`.
pub(crate) fn notice(body: &backend::NoticeResponseBody) -> DbError {
    from_fields(body.fields())
}

fn from_fields(mut fields: backend::ErrorFields<'_>) -> DbError {
    let mut e = DbError {
        severity: "ERROR".into(),
        code: "XX000".into(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    e
}

pub(crate) struct PgWire {
    io: Box<dyn Io>,
    buf: BytesMut,
    out: BytesMut,
    /// ParameterStatus values reported by the server (server_version, ...).
    pub(crate) params: HashMap<String, String>,
    /// Whether the session is encrypted, for status output and tests.
    pub(crate) tls: bool,
    /// With TLS, the server certificate's `tls-server-end-point` hash for SCRAM channel binding
    /// (`None` when its signature algorithm defines none).
    end_point: Option<Vec<u8>>,
}

impl PgWire {
    /// Open a socket, negotiate TLS per `sslmode`, start up with `startup_params`, authenticate,
    /// and wait for the server to be ready for a query.
    /// With a host list, the first server that fits `target_session_attrs`, as libpq picks it.
    pub(crate) async fn connect(info: &ConnInfo, startup_params: &[(&str, &str)]) -> Result<Self> {
        crate::pg::first_fitting(info, |one, check| async move {
            let mut wire = Self::connect_one(&one, startup_params).await?;
            let state = match (check, ServerState::reported(&wire.params)) {
                (false, _) => None,
                (true, Some(reported)) => Some(reported),
                // Before Postgres 14 the server does not report it: ask.
                (true, None) => {
                    let rows = wire.simple_query(ServerState::SQL).await?;
                    let cell = |i: usize| {
                        rows.first()
                            .and_then(|r| r.get(i).cloned().flatten())
                            .unwrap_or_default()
                    };
                    Some(ServerState::of_row(&cell(0), &cell(1)))
                }
            };
            Ok((wire, state))
        })
        .await
    }

    async fn connect_one(info: &ConnInfo, startup_params: &[(&str, &str)]) -> Result<Self> {
        let timeout = info.connect_timeout.unwrap_or(Duration::from_secs(30));
        let what = format!("connecting to {info}");
        match tokio::time::timeout(timeout, Self::connect_inner(info, startup_params)).await {
            Ok(r) => r,
            Err(_) => Err(Error::from(crate::error::Cause::Timeout {
                what,
                seconds: timeout.as_secs(),
            })),
        }
    }

    async fn connect_inner(info: &ConnInfo, startup_params: &[(&str, &str)]) -> Result<Self> {
        let ctx = || format!("cannot connect to {info}");
        let (io, tls, end_point): (Box<dyn Io>, bool, Option<Vec<u8>>) = if info.is_unix_socket() {
            // As libpq: no TLS over a Unix socket.
            let path = format!("{}/.s.PGSQL.{}", info.host, info.port);
            (
                Box::new(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(Error::io(ctx()))?,
                ),
                false,
                None,
            )
        } else {
            let tcp = TcpStream::connect((info.host.as_str(), info.port))
                .await
                .map_err(Error::io(ctx()))?;
            let _ = tcp.set_nodelay(true);
            Self::negotiate_tls(info, tcp).await?
        };
        let mut wire = PgWire {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::new(),
            params: HashMap::new(),
            tls,
            end_point,
        };
        let mut params: Vec<(&str, &str)> = vec![("user", &info.user), ("database", &info.dbname)];
        params.extend_from_slice(startup_params);
        frontend::startup_message(params.iter().copied(), &mut wire.out)
            .map_err(Error::io("encoding startup"))?;
        wire.flush().await?;
        wire.authenticate(info).await?;
        wire.read_until_ready("starting up").await?;
        Ok(wire)
    }

    async fn negotiate_tls(
        info: &ConnInfo,
        mut tcp: TcpStream,
    ) -> Result<(Box<dyn Io>, bool, Option<Vec<u8>>)> {
        let Some(config) = crate::tls::client_config(info)? else {
            return Ok((Box::new(tcp), false, None));
        };
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        tcp.write_all(&req)
            .await
            .map_err(Error::io("sending SSLRequest"))?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(Error::io("reading SSLRequest answer"))?;
        match answer[0] {
            b'S' => {
                let name =
                    crate::tls::server_name(&info.host).map_err(Error::io("TLS server name"))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(Error::io(format!("TLS handshake with {info} failed")))?;
                let end_point = crate::tls::end_point_of(&stream);
                Ok((Box::new(stream), true, end_point))
            }
            b'N' if info.sslmode == SslMode::Prefer => Ok((Box::new(tcp), false, None)),
            b'N' => Err(Error::from(crate::error::Cause::TlsRefused(format!(
                "{info} does not accept TLS; enable ssl on the server or use sslmode=prefer/disable"
            )))),
            other => Err(protocol(
                "negotiating TLS",
                format!("unexpected answer byte {other:#x}"),
            )),
        }
    }

    async fn authenticate(&mut self, info: &ConnInfo) -> Result<()> {
        let password = || {
            info.password.as_ref().map(|p| p.expose().as_bytes()).ok_or_else(|| {
                Error::from(crate::error::Cause::Auth(format!(
                    "{info} asks for a password but none is configured: add it to the URL, or set the \
                     CDC_*_PASSWORD variable or the password_file option"
                )))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        let mut bound = false;
        let require = info.channel_binding == ChannelBindingMode::Require;
        loop {
            let frame = self.read_frame().await?;
            match frame.parse()? {
                backend::Message::AuthenticationOk if require && !bound => {
                    return Err(Error::from(crate::error::Cause::Auth(format!(
                        "channel_binding=require, but {info} authenticated us without channel binding: \
                         use TLS and SCRAM password authentication on the server, or relax channel_binding"
                    ))))
                }
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut self.out)
                        .map_err(Error::io("encoding password"))?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(info.user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.out)
                        .map_err(Error::io("encoding password"))?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let (s, plus) = self.sasl_start(info, &body, password()?)?;
                    bound = plus;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| protocol("authenticating", "SASL continue before start"))?;
                    s.update(body.data())
                        .map_err(|e| Error::from(crate::error::Cause::Auth(format!("SCRAM exchange failed: {e}"))))?;
                    frontend::sasl_response(s.message(), &mut self.out)
                        .map_err(Error::io("encoding SASL"))?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| protocol("authenticating", "SASL final before start"))?;
                    s.finish(body.data()).map_err(|e| {
                        Error::from(crate::error::Cause::Auth(format!("server's SCRAM signature is invalid: {e}")))
                    })?;
                    continue;
                }
                backend::Message::ErrorResponse(body) => {
                    return Err(Error::from(crate::error::Cause::Db {
                        context: format!("login to {info}"),
                        source: Box::new(db_error(&body)),
                    }))
                }
                _ => {
                    return Err(Error::from(crate::error::Cause::Auth(
                        "server asks for an authentication method we do not support".into(),
                    )))
                }
            }
            self.flush().await?;
        }
    }

    /// Answer the server's SASL offer: SCRAM-SHA-256, with channel binding (`-PLUS`) when
    /// both sides can. The exchange, and whether it is bound.
    fn sasl_start(
        &mut self,
        info: &ConnInfo,
        body: &backend::AuthenticationSaslBody,
        password: &[u8],
    ) -> Result<(sasl::ScramSha256, bool)> {
        let require = info.channel_binding == ChannelBindingMode::Require;
        let mut mechanisms = body.mechanisms();
        let (mut has_scram, mut has_plus) = (false, false);
        while let Ok(Some(m)) = mechanisms.next() {
            has_scram |= m == sasl::SCRAM_SHA_256;
            has_plus |= m == sasl::SCRAM_SHA_256_PLUS;
        }
        let end_point = self
            .end_point
            .clone()
            .filter(|_| info.channel_binding != ChannelBindingMode::Disable);
        // Bind when we can; otherwise say why not, so that a server offering
        // binding to a client that supports it detects a downgrade ("y").
        let (mechanism, binding) = match end_point {
            Some(hash) if has_plus => (
                sasl::SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(hash),
            ),
            _ if require => {
                return Err(Error::from(crate::error::Cause::Auth(format!(
                    "channel_binding=require, but {info} offers no SCRAM channel binding \
                     over this connection (it needs TLS, SCRAM-SHA-256-PLUS on the server, and \
                     a certificate signed with RSA or ECDSA)"
                ))))
            }
            Some(_) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
            None => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
        };
        if !has_scram && mechanism == sasl::SCRAM_SHA_256 {
            return Err(Error::from(crate::error::Cause::Auth(
                "server offers no SASL mechanism we support (need SCRAM-SHA-256)".into(),
            )));
        }
        let s = sasl::ScramSha256::new(password, binding);
        frontend::sasl_initial_response(mechanism, s.message(), &mut self.out)
            .map_err(Error::io("encoding SASL"))?;
        Ok((s, mechanism == sasl::SCRAM_SHA_256_PLUS))
    }

    /// Read until ReadyForQuery, remembering parameters and failing on ErrorResponse.
    async fn read_until_ready(&mut self, context: &str) -> Result<()> {
        loop {
            let frame = self.read_frame().await?;
            match frame.parse()? {
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ParameterStatus(p) => {
                    if let (Ok(k), Ok(v)) = (p.name(), p.value()) {
                        self.params.insert(k.to_owned(), v.to_owned());
                    }
                }
                backend::Message::ErrorResponse(body) => {
                    return Err(Error::from(crate::error::Cause::Db {
                        context: context.to_owned(),
                        source: Box::new(db_error(&body)),
                    }))
                }
                _ => {}
            }
        }
    }

    /// Write everything queued in `out`.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.io
            .write_all(&self.out)
            .await
            .map_err(Error::io("writing to server"))?;
        self.io
            .flush()
            .await
            .map_err(Error::io("writing to server"))?;
        self.out.clear();
        Ok(())
    }

    pub(crate) fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// The length field of the frame at the start of `buf` (which holds at least 5 bytes).
    fn buffered_frame_len(&self) -> Result<usize> {
        let len = (&self.buf[1..5]).get_u32() as usize;
        if !(4..=MAX_FRAME_LEN).contains(&len) {
            return Err(protocol("reading", format!("invalid message length {len}")));
        }
        Ok(len)
    }

    /// Read what the socket has into `buf`; the server closing the connection is an error.
    async fn read_more(&mut self) -> Result<()> {
        let n = self
            .io
            .read_buf(&mut self.buf)
            .await
            .map_err(Error::io("reading from server"))?;
        if n == 0 {
            return Err(Error::from(crate::error::Cause::Io {
                context: "server closed the connection".into(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }));
        }
        Ok(())
    }

    /// Read one whole frame. Cancel-safe.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if self.buf.len() >= 5 {
                let len = self.buffered_frame_len()?;
                if self.buf.len() > len {
                    let raw = self.buf.split_to(len + 1);
                    return Ok(Frame { tag: raw[0], raw });
                }
                self.buf.reserve(len + 1 - self.buf.len());
            }
            self.read_more().await?;
        }
    }

    /// Run one simple-protocol query and return its rows as text.
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.out).map_err(Error::io("encoding query"))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.parse()? {
                backend::Message::DataRow(row) => {
                    let buf = row.buffer();
                    let mut ranges = row.ranges();
                    let mut values = Vec::new();
                    while let Ok(Some(r)) = ranges.next() {
                        values.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(values);
                }
                backend::Message::ErrorResponse(body) => failure = Some(db_error(&body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match failure {
            Some(source) => Err(Error::from(crate::error::Cause::Db {
                context: sql.to_owned(),
                source: Box::new(source),
            })),
            None => Ok(rows),
        }
    }

    /// During `COPY ... TO STDOUT`: move the payloads of the CopyData frames already received
    /// into `chunk` (reading from the socket only when none is waiting) until it holds `max`
    /// bytes. Returns `false` once the copy has ended (CopyDone up to ReadyForQuery read);
    /// `chunk` may still hold the last data then. An ErrorResponse fails with `context`.
    ///
    /// Rows are never handled one by one beyond this header check and copy: the snapshot moves
    /// tables of millions of rows, one CopyData each, through here.
    pub(crate) async fn read_copy_data(
        &mut self,
        chunk: &mut BytesMut,
        max: usize,
        context: &str,
    ) -> Result<bool> {
        loop {
            while self.buf.len() >= 5 {
                let len = self.buffered_frame_len()?;
                if self.buf.len() <= len {
                    break;
                }
                match self.buf[0] {
                    b'd' => {
                        chunk.extend_from_slice(&self.buf[5..=len]);
                        self.buf.advance(len + 1);
                        if chunk.len() >= max {
                            return Ok(true);
                        }
                    }
                    b'c' => {
                        self.buf.advance(len + 1);
                        self.read_until_ready(context).await?;
                        return Ok(false);
                    }
                    _ => {
                        // Notices and parameter changes pass; an error ends the copy.
                        if let backend::Message::ErrorResponse(body) =
                            self.read_frame().await?.parse()?
                        {
                            return Err(Error::from(crate::error::Cause::Db {
                                context: context.to_owned(),
                                source: Box::new(db_error(&body)),
                            }));
                        }
                    }
                }
            }
            if !chunk.is_empty() {
                return Ok(true);
            }
            self.buf.reserve(COPY_READ_BYTES);
            self.read_more().await?;
        }
    }

    /// Send a simple query that starts `COPY ... TO STDOUT` and wait for CopyOutResponse.
    pub(crate) async fn start_copy_out(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.out).map_err(Error::io("encoding query"))?;
        self.flush().await?;
        loop {
            match self.read_frame().await?.parse()? {
                backend::Message::CopyOutResponse(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => {
                    let source = db_error(&body);
                    self.read_until_ready(sql).await.ok();
                    return Err(Error::from(crate::error::Cause::Db {
                        context: sql.to_owned(),
                        source: Box::new(source),
                    }));
                }
                backend::Message::ReadyForQuery(_) => {
                    return Err(protocol(
                        sql,
                        "the statement did not start a COPY TO STDOUT",
                    ))
                }
                _ => {}
            }
        }
    }

    /// Tell the server we are leaving, best effort.
    pub(crate) async fn terminate(mut self) {
        frontend::terminate(&mut self.out);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }
}
