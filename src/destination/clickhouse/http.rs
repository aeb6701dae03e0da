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
use crate::endpoint::ClickHouseUrl;
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
            let code = response.code.or_else(|| code_in_body(&message));
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

/// Why a response cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadResponse {
    /// It stops short: the connection closed before the whole answer came.
    Truncated(&'static str),
    /// It is not HTTP as expected.
    Malformed(String),
}

impl From<&str> for BadResponse {
    fn from(s: &str) -> Self {
        BadResponse::Malformed(s.to_owned())
    }
}

impl From<String> for BadResponse {
    fn from(s: String) -> Self {
        BadResponse::Malformed(s)
    }
}

/// A whole HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `X-ClickHouse-Exception-Code`: the server's error code, when it reports one.
    pub code: Option<u32>,
    pub body: Bytes,
}

/// The error code of a ClickHouse error text (`Code: 252. DB::Exception: …`), for answers
/// whose header did not carry it.
fn code_in_body(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Status, error code and body of a whole HTTP/1.1 response (`Content-Length`, chunked, or
/// to the end).
pub fn parse_response(raw: &[u8]) -> std::result::Result<Response, BadResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(BadResponse::Truncated("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not text")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let mut chunked = false;
    let mut length = None;
    let mut code = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse::<usize>().ok();
        } else if k == "x-clickhouse-exception-code" {
            code = v.parse::<u32>().ok();
        }
    }
    let body = &raw[end + 4..];
    if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or(BadResponse::Truncated("a chunk without its size line"))?;
            let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err(BadResponse::Truncated("a chunk shorter than its size"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        Ok(Response {
            status,
            code,
            body: Bytes::from(out),
        })
    } else {
        let body = match length {
            Some(n) if n <= body.len() => &body[..n],
            Some(_) => {
                return Err(BadResponse::Truncated(
                    "a body shorter than its Content-Length",
                ))
            }
            None => body,
        };
        Ok(Response {
            status,
            code,
            body: Bytes::copy_from_slice(body),
        })
    }
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
    fn responses_with_length_chunks_or_neither() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA").unwrap();
        assert_eq!((r.status, r.code, &r.body[..]), (200, None, &b"abc"[..]));
        let r = parse_response(
            b"HTTP/1.1 500 Internal\r\nX-ClickHouse-Exception-Code: 252\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nCode\r\n2;x\r\n: \r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.status, r.code, &r.body[..]),
            (500, Some(252), &b"Code: "[..])
        );
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!(&r.body[..], b"to the end");
        assert_eq!(
            code_in_body("Code: 241. DB::Exception: Memory limit (total) exceeded"),
            Some(241)
        );
        assert_eq!(code_in_body("<html>503 Service Unavailable</html>"), None);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"),
            Err(BadResponse::Truncated(
                "a body shorter than its Content-Length"
            ))
        );
        assert!(matches!(
            parse_response(b""),
            Err(BadResponse::Truncated(_))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"),
            Err(BadResponse::Truncated(_))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 xx OK\r\n\r\n"),
            Err(BadResponse::Malformed(_))
        ));
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
