//! `cdc teardown`: remove what `cdc` created on the source, so that uninstalling it never
//! leaves a slot pinning WAL. The destination's tables and state are left alone (they are the
//! user's data); a later `cdc snapshot` sees the missing slot and starts over.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::sql::quote_ident;
use crate::source::postgres::replication::ReplicationClient;

/// Drop the slot and the publication (only report them unless `confirmed`). Returns one line
/// per object, saying what was (or would be) done.
pub async fn run(config: &Config, confirmed: bool) -> Result<Vec<String>> {
    let info = config.source_conninfo()?;
    let sql = crate::pg::connect(&info).await?;
    let slot = &config.source.slot;
    let publication = &config.source.publication;
    let slot_row = sql
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(Error::pg("reading the slot"))?;
    let pub_exists: bool = sql
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[publication],
        )
        .await
        .map_err(Error::pg("reading publications"))?
        .get(0);
    let mut out = Vec::new();
    match (&slot_row, confirmed) {
        (None, _) => out.push(format!("slot {slot}: does not exist")),
        (Some(row), false) => {
            let pid: Option<i32> = row.get(0);
            out.push(format!(
                "slot {slot}: would be dropped{}",
                pid.map_or(String::new(), |p| format!(" (in use by pid {p})"))
            ))
        }
        (Some(row), true) => {
            if let Some(pid) = row.get::<_, Option<i32>>(0) {
                return Err(Error::definite(format!(
                    "slot {slot} is in use by pid {pid} (a running `cdc run`?): stop it first, then run teardown again"
                )));
            }
            let mut repl = ReplicationClient::connect(&info).await?;
            repl.drop_slot(slot, false).await?;
            repl.close().await;
            out.push(format!("slot {slot}: dropped"));
        }
    }
    match (pub_exists, confirmed) {
        (false, _) => out.push(format!("publication {publication}: does not exist")),
        (true, false) => out.push(format!("publication {publication}: would be dropped")),
        (true, true) => {
            sql.batch_execute(&format!("DROP PUBLICATION {}", quote_ident(publication)))
                .await
                .map_err(Error::pg("dropping the publication"))?;
            out.push(format!("publication {publication}: dropped"));
        }
    }
    if !confirmed {
        out.push("nothing was changed: run `cdc teardown --yes` to drop them".into());
    }
    Ok(out)
}
