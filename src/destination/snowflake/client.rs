//! Snowflake's REST protocol, as its own drivers speak it: `login-request` (password or a
//! key-pair JWT) gives a session token; each statement is one `query-request` whose answer
//! carries the rows as JSON or as an Arrow stream (inline, then in chunks fetched from the
//! URLs it lists); a statement still running after the server's wait comes back as "in
//! progress" and is polled at the URL it names. HTTP/1.1 on our own socket, as for ClickHouse.
//!
//! One session per [`Client`]: statements on it run in order, and `BEGIN` … `COMMIT` spans
//! them (a session is Snowflake's unit of transactions).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::arrow::arrow_rows;
use super::jwt;
use crate::destination::response::{parse_response, BadResponse, Response};
use crate::endpoint::percent_encode as encode;
use crate::destination::snowflake::SnowflakeUrl;
use crate::error::{Cause, Error, Result};

/// A result's rows, each value as Snowflake prints it (`None` is NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// A result column: name, type (as `types::from_rowtype` spells it) and whether it may be NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
    pub nullable: bool,
}

/// A statement's answer.
pub struct Answer {
    pub columns: Vec<Column>,
    pub rows: Rows,
}

/// Error codes after which the same statement can succeed later.
const RETRYABLE: &[&str] = &[
    // The session's token expired (handled by logging in again first).
    "390112", // Warehouse resuming, or too many statements queued on it.
    "000625", "000630",
];

/// Codes with a clearer word for the user.
fn advice(code: &str) -> Option<&'static str> {
    Some(match code {
        "390100" => "check the user in destination.url and the password (CDC_DESTINATION_PASSWORD or destination.password_file)",
        "390144" | "394304" => "the key-pair login was refused: check private_key_file and that its public key is set on the user (ALTER USER ... SET RSA_PUBLIC_KEY = ...)",
        "390201" | "390189" => "the database, schema, warehouse or role in destination.url does not exist or is not granted to the user",
        "000606" => "no warehouse is in use: add ?warehouse=NAME to destination.url (one the role may use)",
        "002003" => "an object does not exist or the role may not use it: check destination.url's database and schema and the role's grants",
        _ => return None,
    })
}

/// One Snowflake session.
pub struct Client {
    url: SnowflakeUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Mutex<Option<String>>,
    /// Held by each statement, and across a [`Client::transaction`]'s statements, so that
    /// nothing else runs on the session inside one.
    session: Mutex<()>,
    sequence: AtomicU64,
    /// Statements sent (what an account is billed by, roughly): for benchmarks and logs.
    statements: AtomicU64,
    /// The session's QUERY_TAG.
    tag: String,
}

impl Client {
    pub fn new(url: SnowflakeUrl) -> Result<Client> {
        Client::tagged(url, "cdc".into())
    }

    /// A session whose statements carry `tag` (Snowflake's QUERY_TAG, shown in its query
    /// history).
    pub fn tagged(url: SnowflakeUrl, tag: String) -> Result<Client> {
        let tls = if url.secure {
            Some(crate::tls::https_config(None).map_err(|e| Error::from(Cause::Tls(e)))?)
        } else {
            None
        };
        Ok(Client {
            url,
            tls,
            token: Mutex::new(None),
            session: Mutex::new(()),
            sequence: AtomicU64::new(1),
            statements: AtomicU64::new(0),
            tag,
        })
    }

    pub fn url(&self) -> &SnowflakeUrl {
        &self.url
    }

    /// Statements sent so far on this session.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Log in (once; again after the token expires).
    async fn token(&self) -> Result<String> {
        let mut held = self.token.lock().await;
        if let Some(t) = &*held {
            return Ok(t.clone());
        }
        let u = &self.url;
        let mut data = json!({
            "CLIENT_APP_ID": "cdc",
            "CLIENT_APP_VERSION": env!("CARGO_PKG_VERSION"),
            "ACCOUNT_NAME": u.account_name(),
            "LOGIN_NAME": u.user,
            "CLIENT_ENVIRONMENT": {"APPLICATION": "cdc"},
            // Values print the way cdc compares them; every session sees UTC.
            "SESSION_PARAMETERS": {
                "AUTOCOMMIT": true,
                "TIMEZONE": "UTC",
                "TIMESTAMP_OUTPUT_FORMAT": "YYYY-MM-DD HH24:MI:SS.FF6 TZH:TZM",
                "TIMESTAMP_NTZ_OUTPUT_FORMAT": "YYYY-MM-DD HH24:MI:SS.FF6",
                "TIMESTAMP_TZ_OUTPUT_FORMAT": "YYYY-MM-DD HH24:MI:SS.FF6 TZH:TZM",
                "BINARY_OUTPUT_FORMAT": "HEX",
                "QUERY_TAG": self.tag,
            },
        });
        if let Some(key) = &u.private_key_file {
            data["AUTHENTICATOR"] = json!("SNOWFLAKE_JWT");
            data["TOKEN"] = json!(jwt::token(key, &u.account_name(), &u.user)?);
        } else if let Some(pw) = &u.password {
            data["PASSWORD"] = json!(pw.expose());
        } else {
            return Err(Error::definite(
                "Snowflake needs a password (CDC_DESTINATION_PASSWORD or destination.password_file) \
                 or a key pair (?private_key_file=PATH in destination.url)"
                    .into(),
            ));
        }
        let mut path = format!(
            "/session/v1/login-request?databaseName={}&schemaName={}",
            encode(&u.database),
            encode(&u.schema)
        );
        if let Some(w) = &u.warehouse {
            path.push_str(&format!("&warehouse={}", encode(w)));
        }
        if let Some(r) = &u.role {
            path.push_str(&format!("&roleName={}", encode(r)));
        }
        path.push_str(&format!("&requestId={}", request_id()));
        let body = json!({ "data": data }).to_string();
        let answer = self
            .call("POST", &path, None, Some(body), "logging in to Snowflake")
            .await?;
        let token = answer["data"]["token"]
            .as_str()
            .ok_or_else(|| protocol("the login answer has no token"))?
            .to_owned();
        *held = Some(token.clone());
        Ok(token)
    }

    /// Run one statement; its rows as text.
    pub async fn query(&self, sql: &str) -> Result<Rows> {
        Ok(self.answer(sql).await?.rows)
    }

    /// Run one statement; its columns and rows.
    pub async fn answer(&self, sql: &str) -> Result<Answer> {
        let _held = self.session.lock().await;
        self.answer_held(sql).await
    }

    /// Run statements in one transaction (rolled back when one fails).
    pub async fn transaction(&self, sqls: &[String]) -> Result<()> {
        let _held = self.session.lock().await;
        self.answer_held("BEGIN").await?;
        for s in sqls {
            if let Err(e) = self.answer_held(s).await {
                let _ = self.answer_held("ROLLBACK").await;
                return Err(e);
            }
        }
        self.answer_held("COMMIT").await.map(|_| ())
    }

    async fn answer_held(&self, sql: &str) -> Result<Answer> {
        let shown: String = sql.chars().take(120).collect();
        let mut relogged = false;
        loop {
            let token = self.token().await?;
            match self.statement(&token, sql, &shown).await {
                Err(e) if !relogged && code(&e) == Some("390112") => {
                    // Session expired (idle for hours): log in again, once.
                    *self.token.lock().await = None;
                    relogged = true;
                }
                other => return other,
            }
        }
    }

    /// Run statements in order.
    pub async fn run(&self, sqls: &[String]) -> Result<()> {
        for s in sqls {
            self.query(s).await?;
        }
        Ok(())
    }

    async fn statement(&self, token: &str, sql: &str, shown: &str) -> Result<Answer> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let body = json!({
            "sqlText": sql,
            "asyncExec": false,
            "sequenceId": self.sequence.fetch_add(1, Ordering::Relaxed),
            "querySubmissionTime": millis,
        })
        .to_string();
        let path = format!("/queries/v1/query-request?requestId={}", request_id());
        let mut answer = self
            .call("POST", &path, Some(token), Some(body), shown)
            .await?;
        // Still running after the server's wait: poll where it says, until done.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.url.timeout_s);
        while matches!(answer["code"].as_str(), Some("333333" | "333334")) {
            let Some(poll) = answer["data"]["getResultUrl"].as_str().map(str::to_owned) else {
                return Err(protocol("an in-progress answer without its result URL"));
            };
            if tokio::time::Instant::now() > deadline {
                return Err(Error::timeout(
                    format!("Snowflake ran {shown}"),
                    self.url.timeout_s,
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            answer = self.call("GET", &poll, Some(token), None, shown).await?;
        }
        let data = &answer["data"];
        let mut rows = if let Some(set) = data["rowset"].as_array() {
            json_rows(set)
        } else {
            match data["rowsetBase64"].as_str() {
                Some(b) if !b.is_empty() => arrow_rows(&decode_base64(b)?)?,
                _ => Vec::new(),
            }
        };
        if let Some(chunks) = data["chunks"].as_array() {
            for chunk in chunks {
                let url = chunk["url"]
                    .as_str()
                    .ok_or_else(|| protocol("a result chunk without its URL"))?;
                let raw = self
                    .fetch_chunk(url, &data["chunkHeaders"], data["qrmk"].as_str())
                    .await?;
                if data["queryResultFormat"].as_str() == Some("json") {
                    // JSON chunks are rows without the enclosing brackets.
                    let text = format!("[{}]", String::from_utf8_lossy(&raw));
                    let set: Value = serde_json::from_str(&text)
                        .map_err(|e| protocol(format!("a JSON result chunk: {e}")))?;
                    rows.extend(json_rows(set.as_array().map_or(&[][..], |v| v)));
                } else {
                    rows.extend(arrow_rows(&raw)?);
                }
            }
        }
        let columns = data["rowtype"]
            .as_array()
            .map_or(&[][..], |v| v)
            .iter()
            .map(|c| Column {
                name: c["name"].as_str().unwrap_or_default().to_owned(),
                type_name: super::types::from_rowtype(
                    c["type"].as_str().unwrap_or_default(),
                    c["precision"].as_i64(),
                    c["scale"].as_i64(),
                ),
                nullable: c["nullable"].as_bool().unwrap_or(true),
            })
            .collect();
        Ok(Answer { columns, rows })
    }

    /// One chunk of a large result, from the cloud storage URL the answer gave.
    async fn fetch_chunk(&self, url: &str, headers: &Value, qrmk: Option<&str>) -> Result<Bytes> {
        let mut extra = Vec::new();
        if let Some(h) = headers.as_object() {
            for (k, v) in h {
                extra.push((k.clone(), v.as_str().unwrap_or_default().to_owned()));
            }
        } else if let Some(key) = qrmk {
            // Chunks encrypted with the query result master key (when no headers are given).
            extra.push((
                "x-amz-server-side-encryption-customer-algorithm".into(),
                "AES256".into(),
            ));
            extra.push((
                "x-amz-server-side-encryption-customer-key".into(),
                key.into(),
            ));
        }
        let (secure, rest) = match url.split_once("://") {
            Some(("https", r)) => (true, r),
            Some(("http", r)) => (false, r),
            _ => return Err(protocol(format!("a result chunk URL {url:?}"))),
        };
        let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().unwrap_or(if secure { 443 } else { 80 })),
            None => (hostport, if secure { 443 } else { 80 }),
        };
        let head = extra
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect::<String>();
        let response = self
            .exchange(host, port, secure, "GET", path, &head, None)
            .await?;
        if response.status != 200 {
            return Err(refused(
                "fetching a result chunk".into(),
                response.status,
                None,
                String::from_utf8_lossy(&response.body).into_owned(),
                response.status >= 500 || response.status == 429,
            ));
        }
        Ok(response.body)
    }

    /// One request to the account's endpoint; the JSON answer when it says success.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
        shown: &str,
    ) -> Result<Value> {
        let mut head =
            String::from("Accept: application/snowflake\r\nContent-Type: application/json\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Snowflake Token=\"{t}\"\r\n"));
        }
        let u = &self.url;
        let response = self
            .exchange(&u.host, u.port, u.secure, method, path, &head, body)
            .await?;
        let answer: Value = match serde_json::from_slice(&response.body) {
            Ok(v) => v,
            Err(_) => {
                let text: String = String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(300)
                    .collect();
                return Err(refused(
                    shown.to_owned(),
                    response.status,
                    None,
                    text,
                    matches!(response.status, 429 | 500 | 502 | 503 | 504),
                ));
            }
        };
        if answer["success"].as_bool() == Some(true)
            || matches!(answer["code"].as_str(), Some("333333" | "333334"))
        {
            return Ok(answer);
        }
        let code = answer["code"]
            .as_str()
            .or_else(|| answer["data"]["errorCode"].as_str())
            .map(str::to_owned);
        // Some servers repeat the whole statement in the message: it stays out of logs.
        let mut message: String = answer["message"]
            .as_str()
            .unwrap_or("no message")
            .chars()
            .take(400)
            .collect();
        if let Some(hint) = code.as_deref().and_then(advice) {
            message = format!("{message} ({hint})");
        }
        let transient = matches!(response.status, 429 | 500 | 502 | 503 | 504)
            || code.as_deref().is_some_and(|c| RETRYABLE.contains(&c));
        Err(refused(
            shown.to_owned(),
            response.status,
            code,
            message,
            transient,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        host: &str,
        port: u16,
        secure: bool,
        method: &str,
        path: &str,
        head: &str,
        body: Option<String>,
    ) -> Result<Response> {
        let work = async {
            let tcp = TcpStream::connect((host, port)).await.map_err(Error::io(format!(
                "cannot connect to Snowflake at {host}:{port} (check the account in destination.url)"
            )))?;
            tcp.set_nodelay(true).ok();
            if !secure {
                return send(tcp, host, method, path, head, body).await;
            }
            let config = match &self.tls {
                Some(c) => c.clone(),
                None => crate::tls::https_config(None).map_err(|e| Error::from(Cause::Tls(e)))?,
            };
            let name = crate::tls::server_name(host).map_err(Error::io("Snowflake host name"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(Error::io(format!("TLS handshake with Snowflake at {host}")))?;
            send(stream, host, method, path, head, body).await
        };
        let limit = Duration::from_secs(self.url.timeout_s);
        tokio::time::timeout(limit, work).await.map_err(|_| {
            Error::timeout(
                format!("Snowflake answered {method} {host}"),
                limit.as_secs(),
            )
        })?
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    method: &str,
    path: &str,
    head: &str,
    body: Option<String>,
) -> Result<Response> {
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cdc/{}\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let io = |what: &'static str| Error::io(format!("{what} Snowflake"));
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io("writing to"))?;
    stream
        .write_all(body.as_bytes())
        .await
        .map_err(io("writing to"))?;
    stream.flush().await.map_err(io("writing to"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(io("reading from"))?;
    parse_response(&raw).map_err(|bad| match bad {
        BadResponse::Truncated(why) => Error::from(Cause::Io {
            context: "the connection to Snowflake closed before its whole answer arrived".into(),
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why),
        }),
        BadResponse::Malformed(detail) => protocol(detail),
    })
}

fn protocol(detail: impl Into<String>) -> Error {
    Error::from(Cause::Protocol {
        context: "reading a Snowflake answer".into(),
        detail: detail.into(),
    })
}

/// JSON rows: strings and nulls (Snowflake sends every value as a string).
fn json_rows(set: &[Value]) -> Rows {
    set.iter()
        .map(|row| {
            row.as_array()
                .map_or(&[][..], |v| v)
                .iter()
                .map(|v| match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
                .collect()
        })
        .collect()
}

fn decode_base64(s: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| protocol(format!("an Arrow result that is not base64: {e}")))
}

/// A fresh request id (Snowflake dedupes retried requests by it): random, UUID-shaped.
fn request_id() -> String {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).ok();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Snowflake's answer to a request it refused: the HTTP status and, when it said, its error
/// code (`390100`, `002003`, ...).
#[derive(Debug, thiserror::Error)]
#[error("Snowflake refused {statement} (HTTP {status}{}): {message}", .code.as_ref().map(|c| format!(", code {c}")).unwrap_or_default())]
pub struct Refused {
    pub statement: String,
    pub status: u16,
    pub code: Option<String>,
    pub message: String,
}

/// The error for a refused request; `transient` as decided from the answer.
fn refused(
    statement: String,
    status: u16,
    code: Option<String>,
    message: String,
    transient: bool,
) -> Error {
    let kind = if transient {
        crate::error::Kind::Transient
    } else {
        crate::error::Kind::Definite
    };
    let refused = Refused {
        statement,
        status,
        code,
        message,
    };
    Error::driver(kind, refused)
}

/// Snowflake's error code, when Snowflake refused with one.
pub fn code(e: &Error) -> Option<&str> {
    e.driver_error::<Refused>().and_then(|r| r.code.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rows_keep_nulls_and_text() {
        let set: Value = serde_json::from_str(r#"[["1", null], ["x", "y"]]"#).unwrap();
        assert_eq!(
            json_rows(set.as_array().unwrap()),
            vec![
                vec![Some("1".to_owned()), None],
                vec![Some("x".to_owned()), Some("y".to_owned())]
            ]
        );
    }

    #[test]
    fn request_ids_are_uuid_shaped_and_fresh() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(advice("390100").unwrap().contains("password"));
        assert!(advice("000606").unwrap().contains("warehouse"));
    }
}
