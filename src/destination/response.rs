//! An HTTP/1.1 response read whole, for the destinations reached over HTTP (ClickHouse,
//! Snowflake), whose clients write their requests on their own sockets.

use bytes::Bytes;

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
    /// Header names in lower case, values trimmed, in the order they came.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Response {
    /// The first value of the header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Status, headers and body of a whole HTTP/1.1 response (`Content-Length`, chunked, or
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
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse::<usize>().ok();
        }
        headers.push((k, v.to_owned()));
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
            headers,
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
            headers,
            body: Bytes::copy_from_slice(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_chunks_or_neither() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA").unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"abc"[..]));
        let r = parse_response(
            b"HTTP/1.1 500 Internal\r\nX-ClickHouse-Exception-Code: 252\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nCode\r\n2;x\r\n: \r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (
                r.status,
                r.header("x-clickhouse-exception-code"),
                &r.body[..]
            ),
            (500, Some("252"), &b"Code: "[..])
        );
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!(&r.body[..], b"to the end");
        assert_eq!(r.header("content-length"), None);
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
}
