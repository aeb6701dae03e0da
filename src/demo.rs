//! `cdc demo`: see the change stream with nothing installed but Postgres.
//!
//! Starts a throwaway source server from the local binaries, creates a sample `orders` table
//! and a publication, opens our replication connection, runs a write load for a few seconds,
//! and prints every decoded transaction. It confirms each commit back to the server, so the
//! slot advances as it would under `cdc run`. The server is removed at the end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::decode::{Datum, LogicalMessage, PgOutputDecoder, Relation, Tuple};
use crate::error::{Error, Result};
use crate::local_pg::{LocalPostgres, Options};
use crate::lsn::Lsn;
use crate::source::replication::{
    PgOutputOptions, ReplicationClient, ReplicationEvent, StandbyStatus,
};

const SETUP: &str = "
    CREATE TABLE public.orders (
        id bigserial PRIMARY KEY,
        customer text NOT NULL,
        amount numeric(10,2) NOT NULL,
        status text NOT NULL DEFAULT 'new',
        created_at timestamptz NOT NULL DEFAULT now());
    CREATE PUBLICATION cdc_demo FOR TABLE public.orders;";

/// One transaction of the sample load: a few inserts, an update, sometimes a delete.
const WRITE: &str = "
    BEGIN;
    INSERT INTO orders (customer, amount) SELECT 'customer ' || (random() * 100)::int, round((random() * 500)::numeric, 2) FROM generate_series(1, 3);
    UPDATE orders SET status = 'paid' WHERE id = (SELECT max(id) - 2 FROM orders);
    DELETE FROM orders WHERE id = (SELECT min(id) FROM orders) AND random() < 0.3;
    COMMIT;";

/// Run the demo for `load` of writes, then print a summary.
pub async fn run(load: Duration) -> Result<()> {
    println!("Starting a throwaway source Postgres (wal_level=logical) from the local binaries...");
    let server = tokio::task::spawn_blocking(|| {
        LocalPostgres::start(&Options {
            logical: true,
            ..Default::default()
        })
    })
    .await
    .map_err(|e| Error::Definite(format!("demo server start panicked: {e}")))?
    .map_err(|e| Error::Definite(format!("cannot start a local Postgres for the demo: {e}")))?;
    let info = server.conninfo("postgres");
    println!(
        "Source running on 127.0.0.1:{}; creating table public.orders and publication cdc_demo.",
        server.port()
    );
    let sql = crate::pg::connect(&info).await?;
    sql.batch_execute(SETUP)
        .await
        .map_err(Error::pg("creating the demo table"))?;

    let mut repl = ReplicationClient::connect(&info).await?;
    let slot = repl.create_logical_slot("cdc_demo", false).await?;
    println!(
        "Created slot cdc_demo at {}; streaming with pgoutput.",
        slot.consistent_point
    );
    let options = PgOutputOptions::for_server(repl.server_version_num(), "cdc_demo");
    let mut stream = repl
        .start_logical_replication("cdc_demo", Lsn::INVALID, &options, Duration::from_secs(30))
        .await?;

    // The write load runs beside the stream reader and reports how many transactions it wrote.
    let mut writer = tokio::spawn(async move {
        let deadline = Instant::now() + load;
        let mut n = 0u64;
        while Instant::now() < deadline {
            sql.batch_execute(WRITE)
                .await
                .map_err(Error::pg("demo write"))?;
            n += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok::<u64, Error>(n)
    });

    let started = Instant::now();
    let mut decoder = PgOutputDecoder::new();
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut lines: Vec<String> = Vec::new();
    let (mut committed, mut changes) = (0u64, 0u64);
    let mut written: Option<u64> = None;
    while written.is_none_or(|w| committed < w) {
        if written.is_none() && writer.is_finished() {
            written = Some(
                (&mut writer)
                    .await
                    .map_err(|e| Error::Definite(format!("demo writer panicked: {e}")))??,
            );
            continue;
        }
        let event = match tokio::time::timeout(Duration::from_millis(250), stream.next()).await {
            Err(_) => continue,
            Ok(event) => event?,
        };
        let Some(ReplicationEvent::XLogData {
            wal_start, data, ..
        }) = event
        else {
            continue;
        };
        let msg = decoder.decode(data).map_err(|source| Error::Decode {
            lsn: wal_start,
            source,
        })?;
        match msg {
            LogicalMessage::Relation(r) => {
                relations.insert(r.id, r);
            }
            LogicalMessage::Insert(i) => lines.push(format!(
                "  INSERT {}",
                row(&relations, i.relation_id, &i.new)
            )),
            LogicalMessage::Update(u) => lines.push(format!(
                "  UPDATE {}",
                row(&relations, u.relation_id, &u.new)
            )),
            LogicalMessage::Delete(d) => lines.push(format!(
                "  DELETE {}",
                row(&relations, d.relation_id, d.old.tuple())
            )),
            LogicalMessage::Commit(c) => {
                committed += 1;
                changes += lines.len() as u64;
                println!("COMMIT {} ({} changes)", c.end_lsn, lines.len());
                for l in lines.drain(..) {
                    println!("{l}");
                }
                // Nothing is applied anywhere in the demo, so it is safe to release the WAL.
                let at = c.end_lsn;
                stream
                    .send_status(
                        StandbyStatus {
                            written: at,
                            flushed: at,
                            applied: at,
                        },
                        false,
                    )
                    .await?;
            }
            _ => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\nDecoded {committed} transactions with {changes} row changes in {secs:.1}s; every commit was confirmed to the slot."
    );
    println!("This build streams and decodes the source side; applying to a destination comes with `cdc run`.");
    stream.close().await;
    drop(server);
    Ok(())
}

/// `orders(id=1, customer='customer 7', ...)`, with the relation's column names.
fn row(relations: &HashMap<u32, Relation>, relation_id: u32, tuple: &Tuple) -> String {
    let Some(rel) = relations.get(&relation_id) else {
        return format!("relation {relation_id}: {tuple:?}");
    };
    let cols: Vec<String> = rel
        .columns
        .iter()
        .zip(&tuple.0)
        .filter(|(_, d)| !matches!(d, Datum::Null))
        .map(|(c, d)| match d {
            Datum::Text(t) => format!("{}={}", c.name, String::from_utf8_lossy(t)),
            Datum::UnchangedToast => format!("{}=<unchanged>", c.name),
            Datum::Binary(b) => format!("{}=<{} bytes>", c.name, b.len()),
            Datum::Null => unreachable!("filtered"),
        })
        .collect();
    format!("{}.{}({})", rel.namespace, rel.name, cols.join(", "))
}
