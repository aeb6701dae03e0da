//! ClickHouse's HTTP interface: one POST per statement, the statement in the URL when a body
//! of rows follows it, else in the body. Plain HTTP/1.1 on our own socket (and rustls for
//! `clickhouses://`): a statement and a body go out, a status and a body come back; nothing
//! else of HTTP is needed, and no HTTP stack has to be built for it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::endpoint::percent_encode as encode;
use crate::destination::clickhouse::ClickHouseUrl;
use crate::destination::response::{parse_response, BadResponse, Response};
use crate::error::{Error, Result};

/// What follows the request head.
enum Body {
    Full(Bytes),
    /// Sent with chunked transfer encoding as it comes; an `Err` abandons the request (the
    /// connection is dropped before the last chunk, so ClickHouse inserts nothing).
    Stream(tokio::sync::mpsc::Receiver<Result<Bytes>>),
}

/// A client for one ClickHouse server and database.
#[derive(Clone)]
pub struct Client {
    url: ClickHouseUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    pub fn new(url: ClickHouseUrl) -> Result<Client> {
        let tls = if url.secure {
            Some(crate::tls::https_config(url.root_cert.as_deref())?)
        } else {
            None
        };
        Ok(Client { url, tls })
    }

    /// The database statements run in.
    pub fn database(&self) -> &str {
        &self.url.database
    }

    /// Run `sql` (no rows sent); its output (in the statement's FORMAT, if any).
    pub async fn query(&self, sql: &str) -> Result<Bytes> {
        self.post(
            None,
            Body::Full(Bytes::copy_from_slice(sql.as_bytes())),
            sql,
        )
        .await
    }

    /// Run `sql` (an `INSERT … FORMAT …`) with `rows` as its data.
    pub async fn insert(&self, sql: &str, rows: Bytes) -> Result<Bytes> {
        self.post(Some(sql), Body::Full(rows), sql).await
    }

    /// Run `sql` (an `INSERT … FORMAT …`) with rows sent as they arrive: one INSERT however
    /// many blocks. An `Err` from `rows` abandons the INSERT (nothing of it is inserted) and
    /// is returned.
    pub async fn insert_stream(
        &self,
        sql: &str,
        rows: tokio::sync::mpsc::Receiver<Result<Bytes>>,
    ) -> Result<Bytes> {
        self.post(Some(sql), Body::Stream(rows), sql).await
    }

    async fn post(&self, in_url: Option<&str>, body: Body, what: &str) -> Result<Bytes> {
        let shown: String = what.chars().take(120).collect();
        let work = async {
            let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
                .await
                .map_err(Error::io(format!(
                    "cannot connect to ClickHouse at {}:{}",
                    self.url.host, self.url.port
                )))?;
            tcp.set_nodelay(true).ok();
            match &self.tls {
                None => self.exchange(tcp, in_url, body).await,
                Some(config) => {
                    let name = crate::tls::server_name(&self.url.host)
                        .map_err(Error::io("ClickHouse host name"))?;
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(Error::io(format!(
                            "TLS handshake with ClickHouse at {}",
                            self.url.host
                        )))?;
                    self.exchange(stream, in_url, body).await
                }
            }
        };
        let limit = Duration::from_secs(self.url.timeout_s);
        let response = tokio::time::timeout(limit, work)
            .await
            .map_err(|_| Error::timeout(format!("ClickHouse ran {shown}"), limit.as_secs()))??;
        if response.status != 200 {
            let message = String::from_utf8_lossy(&response.body).trim().to_owned();
            let code = response
                .header("x-clickhouse-exception-code")
                .and_then(|c| c.parse().ok())
                .or_else(|| code_in_body(&message));
            let transient = is_transient(response.status, code);
            return Err(Error::clickhouse(
                shown,
                response.status,
                code,
                message,
                transient,
            ));
        }
        Ok(response.body)
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        in_url: Option<&str>,
        body: Body,
    ) -> Result<Response> {
        // Decimals print with their scale (`2.00`), as Postgres prints numeric(p,s); lookups of
        // many keys at once are long statements.
        let mut target = format!(
            "/?database={}&output_format_decimal_trailing_zeros=1&max_query_size=67108864",
            encode(&self.url.database)
        );
        if let Some(sql) = in_url {
            target.push_str("&query=");
            target.push_str(&encode(sql));
        }
        let mut head = format!(
            "POST {target} HTTP/1.1\r\nHost: {}:{}\r\nX-ClickHouse-User: {}\r\n",
            self.url.host, self.url.port, self.url.user
        );
        if let Some(pw) = &self.url.password {
            head.push_str(&format!("X-ClickHouse-Key: {}\r\n", pw.expose()));
        }
        let io = |what: &'static str| Error::io(format!("{what} ClickHouse"));
        match body {
            Body::Full(body) => {
                head.push_str(&format!(
                    "Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                ));
                stream
                    .write_all(head.as_bytes())
                    .await
                    .map_err(io("writing to"))?;
                stream.write_all(&body).await.map_err(io("writing to"))?;
            }
            Body::Stream(mut rx) => {
                head.push_str("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
                stream
                    .write_all(head.as_bytes())
                    .await
                    .map_err(io("writing to"))?;
                while let Some(block) = rx.recv().await {
                    // An error leaves the request unfinished: dropping the connection before
                    // the last chunk makes ClickHouse discard the INSERT.
                    let block = block?;
                    if block.is_empty() {
                        continue;
                    }
                    stream
                        .write_all(format!("{:x}\r\n", block.len()).as_bytes())
                        .await
                        .map_err(io("writing to"))?;
                    stream.write_all(&block).await.map_err(io("writing to"))?;
                    stream.write_all(b"\r\n").await.map_err(io("writing to"))?;
                }
                stream
                    .write_all(b"0\r\n\r\n")
                    .await
                    .map_err(io("writing to"))?;
            }
        }
        stream.flush().await.map_err(io("writing to"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(io("reading from"))?;
        parse_response(&raw).map_err(|bad| match bad {
            // The server went away mid-answer (stopped, restarted): a lost connection, which
            // the run loop retries.
            BadResponse::Truncated(why) => Error::from(crate::error::Cause::Io {
                context: "the connection to ClickHouse closed before its whole answer arrived"
                    .into(),
                source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why),
            }),
            BadResponse::Malformed(detail) => Error::from(crate::error::Cause::Protocol {
                context: "reading a ClickHouse HTTP response".into(),
                detail,
            }),
        })
    }
}

/// The error code of a ClickHouse error text (`Code: 252. DB::Exception: …`), for answers
/// whose header did not carry it.
fn code_in_body(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// ClickHouse error codes after which the same statement can succeed later: the server or a
/// replica is overloaded, out of memory for now, restarting, or lost its coordination service.
/// From ClickHouse's `ErrorCodes.cpp` and the retry lists its own clients keep.
pub const RETRYABLE: &[(u32, &str)] = &[
    (3, "UNEXPECTED_END_OF_FILE"),
    (32, "ATTEMPT_TO_READ_AFTER_EOF"),
    (159, "TIMEOUT_EXCEEDED"),
    (202, "TOO_MANY_SIMULTANEOUS_QUERIES"),
    (203, "NO_FREE_CONNECTION"),
    (209, "SOCKET_TIMEOUT"),
    (210, "NETWORK_ERROR"),
    (225, "NO_ZOOKEEPER"),
    (236, "ABORTED"),
    (241, "MEMORY_LIMIT_EXCEEDED"),
    (242, "TABLE_IS_READ_ONLY"),
    (252, "TOO_MANY_PARTS"),
    (279, "ALL_CONNECTION_TRIES_FAILED"),
    (285, "TOO_FEW_LIVE_REPLICAS"),
    (319, "UNKNOWN_STATUS_OF_INSERT"),
    (373, "SESSION_IS_LOCKED"),
    (394, "QUERY_WAS_CANCELLED"),
    (425, "SYSTEM_ERROR"),
    (439, "CANNOT_SCHEDULE_TASK"),
    (999, "KEEPER_EXCEPTION"),
    (1000, "POCO_EXCEPTION"),
];

/// Whether a ClickHouse error answer is worth retrying: by its code when it has one, else by the
/// HTTP status (a load balancer or proxy in front answering 502/503/504/429 has no code).
fn is_transient(status: u16, code: Option<u32>) -> bool {
    match code {
        Some(code) => RETRYABLE.iter().any(|(c, _)| *c == code),
        None => matches!(status, 429 | 502 | 503 | 504),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_retried_by_code_or_by_a_proxys_status() {
        for code in [252, 241, 202, 159, 209, 210, 242, 999] {
            assert!(is_transient(500, Some(code)), "code {code}");
        }
        for status in [502, 503, 504, 429] {
            assert!(is_transient(status, None), "HTTP {status} without a code");
        }
        // Unknown column, type mismatch, syntax error, unknown table, a 500 with no code.
        for code in [47, 53, 62, 60] {
            assert!(!is_transient(400, Some(code)), "code {code}");
        }
        assert!(!is_transient(500, None));
        assert!(
            !is_transient(503, Some(62)),
            "the code decides over the status"
        );
    }

    #[test]
    fn an_error_code_is_read_from_the_body_when_no_header_says() {
        assert_eq!(
            code_in_body("Code: 241. DB::Exception: Memory limit (total) exceeded"),
            Some(241)
        );
        assert_eq!(code_in_body("<html>503 Service Unavailable</html>"), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("INSERT INTO `a b` FORMAT TSV"),
            "INSERT%20INTO%20%60a%20b%60%20FORMAT%20TSV"
        );
        assert_eq!(encode("é&="), "%C3%A9%26%3D");
    }
}
