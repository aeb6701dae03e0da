//! How a source relation maps onto its destination table: column positions, destination
//! types (for casts), and the key used to match rows.

use crate::config::TableName;
use crate::decode::Relation;
use crate::destination::DestColumn;

/// One replicated column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedColumn {
    pub name: String,
    /// The destination column's type in the destination's own spelling (Postgres: qualified
    /// `format_type`, used in casts).
    pub dest_type: String,
}

/// A source relation and the destination table it is applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMap {
    pub relation_id: u32,
    pub source: TableName,
    pub dest: TableName,
    /// The relation's columns, in the order of its tuples.
    pub columns: Vec<MappedColumn>,
    /// Positions (in `columns`) of the destination's primary key; empty for a keyless table,
    /// whose rows are matched on all their values.
    pub key: Vec<usize>,
}

impl TableMap {
    pub fn is_keyless(&self) -> bool {
        self.key.is_empty()
    }

    /// Build the map from a Relation message and the destination's columns (generated
    /// columns excluded).
    pub fn new(
        rel: &Relation,
        source: TableName,
        dest: TableName,
        dest_columns: &[DestColumn],
    ) -> Result<Self, String> {
        let mut columns = Vec::with_capacity(rel.columns.len());
        for c in &rel.columns {
            let Some(DestColumn { type_name: ty, .. }) =
                dest_columns.iter().find(|d| d.name == c.name)
            else {
                return Err(format!(
                    "column {} of {source} does not exist in {dest}",
                    c.name
                ));
            };
            columns.push(MappedColumn {
                name: c.name.clone(),
                dest_type: ty.clone(),
            });
        }
        let mut key = Vec::new();
        for DestColumn {
            name, key: is_pk, ..
        } in dest_columns
        {
            if *is_pk {
                let pos = columns
                    .iter()
                    .position(|c| c.name == *name)
                    .ok_or_else(|| {
                        format!(
                            "primary key column {name} of {dest} is not replicated from {source}"
                        )
                    })?;
                key.push(pos);
            }
        }
        // The old row a change carries holds the source's replica identity only: with an
        // identity index that leaves out a key column, updates and deletes would look for
        // their rows under a key they do not carry.
        let unsent: Vec<&str> = key
            .iter()
            .filter(|&&k| !rel.columns[k].is_key)
            .map(|&k| columns[k].name.as_str())
            .collect();
        if !unsent.is_empty() {
            let q = source.quoted();
            return Err(format!(
                "the replica identity of {source} (REPLICA IDENTITY USING INDEX) leaves out key columns {unsent:?} \
                 that {dest} matches rows by, so its updates and deletes cannot be applied exactly: ALTER TABLE {q} \
                 REPLICA IDENTITY DEFAULT (or FULL) on the source, then restart cdc run"
            ));
        }
        Ok(TableMap {
            relation_id: rel.id,
            source,
            dest,
            columns,
            key,
        })
    }
}
