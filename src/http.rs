//! `/healthz` and `/metrics` of `cdc run`, on `status.listen`.
//!
//! Two fixed GET routes do not need an HTTP framework: read the request head, answer, close.
//! A slow or malformed client only ever occupies its own task, bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Bind `listen` and serve until the task is dropped.
pub async fn serve(
    listen: &str,
    metrics: Arc<Metrics>,
    max_lag_bytes: u64,
    max_lag_seconds: u64,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        Error::definite(format!("cannot listen on {listen} for /healthz and /metrics ({e}): set status.listen to a free address"))
    })?;
    tracing::info!(listen, "serving /healthz and /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    answer(socket, &m, max_lag_bytes, max_lag_seconds),
                )
                .await;
            });
        }
    }))
}

async fn answer(
    mut socket: TcpStream,
    m: &Metrics,
    max_lag_bytes: u64,
    max_lag_seconds: u64,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", m.render()),
        ("GET", "/healthz") => match m.health(max_lag_bytes, max_lag_seconds) {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
            Err(reason) => (
                "503 Service Unavailable",
                "text/plain",
                format!("{reason}\n"),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /healthz or /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}
