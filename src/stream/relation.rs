//! Relation messages: a source table mapped to its destination table, and the schema
//! changes a Relation shows (columns added, dropped, retyped) applied to the destination
//! first, with the backfill of added columns' existing values (`backfill.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::{backfill, Streamer};
use crate::decode::Relation;
use crate::error::{Error, Result};
use crate::model::change::{version, TableMap};
use crate::model::schema::{DestColumn, SchemaChange, SourceType, TableName};

impl Streamer {
    /// Map a Relation to its destination, applying schema changes first. Without
    /// `allow_ddl`, a relation that needs DDL changes nothing and returns false.
    pub(super) async fn on_relation(&mut self, r: Relation, allow_ddl: bool) -> Result<bool> {
        let Some((src, dest)) = self
            .pairs
            .iter()
            .find(|(s, _)| s.schema == r.namespace && s.name == r.name)
            .cloned()
        else {
            if self.relations.insert(r.id, None).is_none() {
                tracing::warn!(table = %format!("{}.{}", r.namespace, r.name), "changes for a table not in the config are ignored");
            }
            return Ok(true);
        };
        let mut dest_cols = self.applier.dest_columns(&dest).await?;
        if self
            .joined
            .get(&src)
            .is_some_and(|&at| self.txn_commit < at)
        {
            // A table copied after this transaction (joined): its destination table already has
            // the shape of its copy, which is later than this message; its changes here are
            // skipped, and a later shape comes with a Relation of its own.
            let map = TableMap::new(&r, src, dest, &dest_cols).ok().map(Arc::new);
            self.relations.insert(r.id, map);
            return Ok(true);
        }
        let change = self.schema_change(&r, &src, &dest, &dest_cols).await?;
        if !change.is_empty() {
            if !allow_ddl {
                return Ok(false);
            }
            self.start_batch();
            self.applier.alter(&dest, &change).await?;
            dest_cols = self.applier.dest_columns(&dest).await?;
        }
        let map = Arc::new(TableMap::new(&r, src, dest, &dest_cols).map_err(Error::definite)?);
        self.relations.insert(r.id, Some(map.clone()));
        if !change.added.is_empty() || !change.retyped.is_empty() {
            let added: Vec<String> = change.added.into_iter().map(|(n, _)| n).collect();
            let retyped: Vec<String> = change.retyped.into_iter().map(|(n, _)| n).collect();
            self.backfill(&map, &added, retyped).await?;
        }
        Ok(true)
    }

    /// Give the destination's existing rows the source's values of added columns that have
    /// them and of retyped columns (the source converted them with its own cast or `USING`
    /// expression, which the destination cannot repeat), see `backfill.rs`; inside the open
    /// destination transaction.
    async fn backfill(
        &mut self,
        map: &Arc<TableMap>,
        added: &[String],
        retyped: Vec<String>,
    ) -> Result<()> {
        let mut columns = backfill::columns_with_values(&self.catalog, map, added).await?;
        columns.extend(retyped);
        if columns.is_empty() {
            return Ok(());
        }
        if map.is_keyless() {
            // Its rows cannot be found by key to fill in: the table is copied again instead.
            return Err(Error::from(crate::error::Cause::Recopy {
                table: map.source.clone(),
                why: format!(
                    "the source filled columns {columns:?} of its existing rows, and a table without a key \
                     cannot have them filled row by row"
                ),
            }));
        }
        let started = Instant::now();
        let mut reader = backfill::Reader::open(&self.catalog, map, &columns).await?;
        let mut rows = 0u64;
        // One version for every backfilled row (each key once), taking one place in the
        // transaction's order: how many rows there are depends on when the source is read.
        self.txn_seq += 1;
        self.backfill_version = Some(version(self.txn_commit, self.txn_seq));
        let read = async {
            loop {
                let ops = reader.next(&self.catalog).await?;
                if ops.is_empty() {
                    break;
                }
                for op in ops {
                    rows += 1;
                    self.push(map.relation_id, op).await?;
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        self.backfill_version = None;
        read?;
        tracing::info!(table = %map.dest, columns = ?columns, rows, ms = started.elapsed().as_millis() as u64,
            "new columns with defaults, or retyped columns, on the source: their values for existing rows were read from the source by key");
        Ok(())
    }

    /// What makes `dest` match the relation: added columns, dropped columns, changed types.
    async fn schema_change(
        &mut self,
        r: &Relation,
        src: &TableName,
        dest: &TableName,
        dest_cols: &[DestColumn],
    ) -> Result<SchemaChange> {
        let oids: Vec<u32> = r.columns.iter().map(|c| c.type_oid).collect();
        let mods: Vec<i32> = r.columns.iter().map(|c| c.type_modifier).collect();
        let types: Vec<SourceType> = self
            .catalog
            .query("SELECT format_type(t, m) FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS x(t, m, o) ORDER BY o", &[&oids, &mods])
            .await
            .map_err(Error::pg("reading source column types"))?
            .into_iter()
            .zip(&oids)
            .map(|(row, &oid)| SourceType { sql: row.get(0), oid })
            .collect();
        let src_names: HashSet<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
        let readded = readded_columns(r, dest_cols);
        let mut change = SchemaChange::default();
        for (c, ty) in r.columns.iter().zip(&types) {
            if readded.contains(&c.name) {
                // Dropped and added again under the same name: the destination's values
                // belong to the old column; the new one starts over, at the end.
                change.dropped.push(c.name.clone());
                change.added.push((c.name.clone(), ty.clone()));
                continue;
            }
            match dest_cols.iter().find(|d| d.name == c.name) {
                None => change.added.push((c.name.clone(), ty.clone())),
                Some(d) => {
                    if !self.applier.session().type_matches(&d.type_name, ty) {
                        change.retyped.push((c.name.clone(), ty.clone()));
                    }
                }
            }
        }
        change.dropped.extend(
            dest_cols
                .iter()
                .map(|d| d.name.as_str())
                .filter(|n| !src_names.contains(n))
                .map(str::to_owned),
        );
        if let Some(have) = self.applier.session().generated_columns(dest).await? {
            // Postgres before 18 leaves stored generated columns out of Relation messages:
            // the source catalog says which the destination lacks.
            let rows = self
                .catalog
                .query(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid,
                            pg_get_expr(d.adbin, d.adrelid)
                       FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                      WHERE a.attrelid = to_regclass($1) AND a.attgenerated = 's' AND NOT a.attisdropped
                      ORDER BY a.attnum",
                    &[&src.quoted()],
                )
                .await
                .map_err(Error::pg(format!("reading the generated columns of {src}")))?;
            change.added_generated = rows
                .into_iter()
                .filter(|r| !have.contains(&r.get::<_, String>(0)))
                .map(|r| {
                    let ty = SourceType {
                        sql: r.get(1),
                        oid: r.get(2),
                    };
                    (r.get(0), ty, r.get(3))
                })
                .collect();
        }
        let gone: Vec<&String> = change
            .dropped
            .iter()
            .filter(|n| !readded.contains(*n))
            .collect();
        let new: Vec<&String> = change
            .added
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !readded.contains(*n))
            .collect();
        if !gone.is_empty() && !new.is_empty() {
            return Err(Error::definite(format!(
                "{src} changed shape: columns {gone:?} disappeared and {new:?} appeared (a rename?). cdc cannot tell \
                 which is which: apply the change to {dest} by hand (ALTER TABLE ... RENAME COLUMN ...), then restart"
            )));
        }
        Ok(change)
    }
}

/// Columns of a Relation message that the destination has under the same name but that were
/// dropped and added again on the source. `ADD COLUMN` always appends, so such a column shows
/// up out of the destination's order (`a, c, b` against `a, b, c`), or after a column that is
/// new to the destination. (A last column dropped and added again with the same type keeps its
/// place and looks unchanged: nothing in the stream tells it apart.)
pub(super) fn readded_columns(r: &Relation, dest_cols: &[DestColumn]) -> HashSet<String> {
    let mut readded = HashSet::new();
    let (mut last, mut seen_new) = (None, false);
    for c in &r.columns {
        match dest_cols.iter().position(|d| d.name == c.name) {
            None => seen_new = true,
            Some(at) if seen_new || last.is_some_and(|l| at < l) => {
                readded.insert(c.name.clone());
            }
            Some(at) => last = Some(at),
        }
    }
    readded
}
