//! Ordinary SQL connections (catalog queries, snapshot COPY, destination writes) on stock
//! tokio-postgres, with our TLS policy.

use tokio_postgres::Client;

use crate::conninfo::ConnInfo;
use crate::error::{Error, Result};
use crate::tls::{client_config, MakeRustls};

/// Connect and spawn the connection's I/O task. The task ends when the `Client` is dropped.
pub async fn connect(info: &ConnInfo) -> Result<Client> {
    let config = info.to_tokio_postgres();
    let ctx = format!("cannot connect to {info}");
    // Like libpq, never TLS over a Unix socket (there is no host name to verify, nothing to hide).
    let tls = if info.is_unix_socket() {
        None
    } else {
        client_config(info)?
    };
    let client = match tls {
        Some(tls) => {
            let (client, conn) = config
                .connect(MakeRustls::new(tls))
                .await
                .map_err(Error::pg(ctx))?;
            tokio::spawn(drive(conn));
            client
        }
        None => {
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(Error::pg(ctx))?;
            tokio::spawn(drive(conn));
            client
        }
    };
    // The same text conventions as the replication session, so both sides print values alike.
    client
        .batch_execute("SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET TimeZone = 'UTC'")
        .await
        .map_err(Error::pg("setting session parameters"))?;
    Ok(client)
}

/// Empty `search_path` on a session: every name we send is qualified, and `format_type` and
/// `pg_get_indexdef` qualify every non-`pg_catalog` name, so derived SQL means the same thing
/// on any server whatever its search path.
pub async fn qualify_names(client: &Client) -> Result<()> {
    client
        .batch_execute("SET search_path = ''")
        .await
        .map_err(Error::pg("emptying the session's search_path"))
}

/// [`connect`], then [`qualify_names`].
pub async fn connect_qualified(info: &ConnInfo) -> Result<Client> {
    let client = connect(info).await?;
    qualify_names(&client).await?;
    Ok(client)
}

/// Run a connection's I/O until the client goes away; its errors surface on the client too.
async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "sql connection ended");
    }
}
