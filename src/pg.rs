//! Ordinary SQL connections (catalog queries, snapshot COPY, destination writes) on stock
//! tokio-postgres, with our TLS policy.

use tokio_postgres::Client;

use crate::conninfo::{ConnInfo, ServerState, TargetSessionAttrs};
use crate::error::{Error, Result};
use crate::tls::{client_config, MakeRustls};

/// Open a session on the first server of `info`'s host list that `open` reaches and that meets
/// its `target_session_attrs` (walking the list twice for `prefer-standby`), as libpq does.
/// `open(server, check)` connects to one server and, when `check`, also says its state.
pub(crate) async fn first_fitting<T, F, Fut>(info: &ConnInfo, mut open: F) -> Result<T>
where
    F: FnMut(ConnInfo, bool) -> Fut,
    Fut: std::future::Future<Output = Result<(T, Option<ServerState>)>>,
{
    let attrs = info.target_session_attrs;
    let check = attrs != TargetSessionAttrs::Any;
    let candidates = info.candidates();
    // What each server said, for the error; whether any answered but did not fit.
    let (mut said, mut mismatched, mut last_error) = (Vec::new(), false, None);
    for round in 0..attrs.rounds() {
        for one in &candidates {
            let at = format!("{}:{}", one.host, one.port);
            match open(one.clone(), check).await {
                Ok((_, Some(state))) if !attrs.accepts(state, round) => {
                    mismatched = true;
                    said.push(format!("{at} is {}", state.describe()));
                }
                Ok((session, _)) => return Ok(session),
                Err(e) if candidates.len() == 1 && !check => return Err(e),
                Err(e) => {
                    tracing::warn!(server = %at, error = %e, "cannot connect; trying the next server of the host list");
                    said.push(format!("{at}: {e}"));
                    last_error = Some(e);
                }
            }
        }
    }
    match last_error {
        // Nobody answered: the last failure says why, with its own kind (a refused password
        // stays definite).
        Some(e) if !mismatched => Err(e),
        _ => Err(Error::from(crate::error::Cause::NoServerFits {
            wanted: attrs.as_str().to_owned(),
            servers: said.join("; "),
        })),
    }
}

/// Connect and spawn the connection's I/O task. The task ends when the `Client` is dropped.
pub async fn connect(info: &ConnInfo) -> Result<Client> {
    first_fitting(info, |one, check| async move {
        let client = connect_one(&one).await?;
        let state = if check {
            let row = client
                .query_one(ServerState::SQL, &[])
                .await
                .map_err(Error::pg(format!("reading whether {one} accepts writes")))?;
            Some(ServerState::of_row(row.get(0), row.get(1)))
        } else {
            None
        };
        Ok((client, state))
    })
    .await
}

/// [`connect`] to one server.
async fn connect_one(info: &ConnInfo) -> Result<Client> {
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
