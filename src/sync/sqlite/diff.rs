//! A SQLite table's `diff` pass: its rows' fingerprint against the stored one, else both sides
//! walked together in key order.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{into_writer, SqliteRead, SqliteSide, FINGERPRINT};
use crate::error::{Error, Result};
use crate::model::change::TableMap;
use crate::model::kind::Kind;
use crate::source::sqlite::read::{self, OnReject, Reading};
use crate::source::sqlite::select::{select_sql, source_key};
use crate::source::RowSource;
use crate::sync::source::{Key, Outcome};
use crate::sync::write::Writer;
use crate::sync::{Chosen, Ctx, TableSummary};
use crate::verify::merge::{Found, Merge};

/// `diff`: nothing when the source's fingerprint is the stored one; else both sides merged in
/// key order, the extra keys left to delete.
pub(super) async fn diff(
    side: &SqliteSide<'_>,
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    read: &SqliteRead,
    position: Option<&str>,
    summary: &mut TableSummary,
) -> Result<Outcome> {
    let table = &read.table;
    let mut writer = Writer::open(
        ctx.dest.as_ref(),
        &table.schema,
        &t.destination,
        ctx.batch_rows(t),
    )
    .await?;
    let key = source_key(table);
    let sql = select_sql(table, t.config.filter.as_deref(), None, &key, None);
    let mut q = into_writer(ctx, table, &writer, sql.clone(), Vec::new(), &key);
    q.fingerprint_only = true;
    let scanned = Reading::start(read.conn.clone(), q, Box::new(|_| Ok(())))
        .finish()
        .await?;
    let fingerprint = format!("{FINGERPRINT}{}", scanned.fingerprint);
    let unchanged = |rows| Outcome {
        position: Some(fingerprint.clone()),
        deletes: Vec::new(),
        rows,
    };
    if position == Some(fingerprint.as_str()) {
        tracing::info!(table = %t.source, rows = scanned.rows, "unchanged since the last pass");
        return Ok(unchanged(0));
    }
    let rejected = AtomicU64::new(0);
    let q = into_writer(ctx, table, &writer, sql, Vec::new(), &key);
    let mut merge = merge_of(
        ctx,
        t,
        read,
        writer.map(),
        q,
        side.rejects.handler(&t.source, &rejected),
    )
    .await?;
    let mut deletes: Vec<Key> = Vec::new();
    let budget = t.config.max_rows.unwrap_or(u64::MAX);
    let mut written = 0u64;
    let walked = async {
        while written < budget {
            match merge.next().await? {
                None => break,
                Some(Found::Missing(row)) => {
                    summary.inserted += 1;
                    written += 1;
                    writer.upsert(row).await?;
                }
                Some(Found::Different(row, _)) => {
                    summary.updated += 1;
                    written += 1;
                    writer.upsert(row).await?;
                }
                Some(Found::Extra(row)) => deletes.push(
                    merge
                        .key()
                        .iter()
                        .map(|&k| (writer.map().columns[k].name.clone(), row[k].clone()))
                        .collect(),
                ),
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    let (reading, _) = merge.into_sides();
    let done = reading.finish().await;
    summary.rejected += rejected.load(Ordering::Relaxed);
    walked?;
    done?;
    writer.finish().await?;
    summary.rows_read = summary.inserted + summary.updated;
    if summary.rejected > 0 || written >= budget {
        if !deletes.is_empty() {
            tracing::warn!(table = %t.source, extra = deletes.len(),
                "rows were rejected or the pass was capped: extra destination rows are not deleted this pass");
        }
        return Ok(Outcome {
            position: None,
            deletes: Vec::new(),
            rows: summary.rows_read,
        });
    }
    Ok(Outcome {
        deletes,
        ..unchanged(summary.rows_read)
    })
}

/// Both sides of `read`'s table in key order, walked together: the source by `q`, the
/// destination table `writer` writes.
async fn merge_of<'a>(
    ctx: &Ctx<'_>,
    t: &Chosen<'_>,
    read: &SqliteRead,
    map: &TableMap,
    q: read::Query,
    on_reject: OnReject<'a>,
) -> Result<Merge<Reading<'a>, Box<dyn RowSource>>> {
    let kinds = q.kinds.clone();
    let key = q.key.clone();
    let text_key: Vec<bool> = key
        .iter()
        .map(|&k| matches!(kinds[k], Kind::Text { .. } | Kind::AnyText))
        .collect();
    let rows = ctx.dest.rows_by_key(map, &text_key).await?;
    let reading = Reading::start(read.conn.clone(), q, on_reject);
    Ok(Merge::new(kinds, key, t.source.to_string(), reading, rows))
}
