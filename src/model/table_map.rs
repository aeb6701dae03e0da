//! How a source relation maps onto its destination table: column positions, destination
//! types (for casts), and the key used to match rows.

use crate::decode::Relation;
use crate::model::schema::DestColumn;
use crate::model::schema::TableName;

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
    /// Positions (in `columns`) of the columns rows are matched by: the destination's primary
    /// key, or the source's replica identity index when that leaves out key columns (see
    /// `identity_key`); empty for a keyless table, whose rows are matched on all their values.
    pub key: Vec<usize>,
    /// `key` is the source's `REPLICA IDENTITY USING INDEX` columns, not the primary key: the
    /// old rows changes carry hold only those, so rows are found by them (they are unique and
    /// NOT NULL, as an identity index must be).
    pub identity_key: bool,
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
        // The old row a change carries holds the source's replica identity only (read again
        // from every Relation message, so a switch while streaming is followed): with an
        // identity index that leaves out a key column, rows are found by that index's columns.
        let mut identity_key = false;
        if key.iter().any(|&k| !rel.columns[k].is_key) {
            let identity: Vec<usize> = (0..rel.columns.len())
                .filter(|&i| rel.columns[i].is_key)
                .collect();
            if identity.is_empty() {
                let q = source.quoted();
                return Err(format!(
                    "{source} has no replica identity (REPLICA IDENTITY NOTHING), so its updates and deletes do not \
                     say which row they change: ALTER TABLE {q} REPLICA IDENTITY DEFAULT (or FULL) on the source, then \
                     restart cdc run"
                ));
            }
            key = identity;
            identity_key = true;
        }
        Ok(TableMap {
            relation_id: rel.id,
            source,
            dest,
            columns,
            key,
            identity_key,
        })
    }
}
