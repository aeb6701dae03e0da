//! A source table's columns mapped onto the destination table they are written to: the same
//! columns (generated ones aside), the destination's types and key.

use std::sync::Arc;

use super::Destination;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::change::{MappedColumn, TableMap};
use crate::model::schema::{DestColumn, TableName, TableSchema};

/// `source`'s copied columns mapped onto `table` as the destination has it now.
pub async fn mapped(
    dest: &dyn Destination,
    source: &TableSchema,
    table: &TableName,
) -> Result<TableMap> {
    let mut session = dest.session(Arc::new(Metrics::default())).await?;
    let columns = session.columns(table).await?;
    table_map(source, table, &columns)
}

/// The source's copied columns mapped onto the destination table, which must have the same
/// columns (generated ones aside): a column on one side only is an error naming them all.
pub fn table_map(source: &TableSchema, table: &TableName, dest: &[DestColumn]) -> Result<TableMap> {
    let src: Vec<&str> = source.copied_columns().map(|c| c.name.as_str()).collect();
    let only_src: Vec<&str> = src
        .iter()
        .copied()
        .filter(|c| !dest.iter().any(|d| d.name == *c))
        .collect();
    let only_dst: Vec<&str> = dest
        .iter()
        .map(|d| d.name.as_str())
        .filter(|d| !src.contains(d))
        .collect();
    if !only_src.is_empty() || !only_dst.is_empty() {
        return Err(Error::definite(format!(
            "{table} does not have the columns of its source {}: only in the source: [{}]; only in the destination: [{}]. \
             Align the destination table (or drop it: the next pass copies it anew)",
            source.name,
            only_src.join(", "),
            only_dst.join(", ")
        )));
    }
    let columns: Vec<MappedColumn> = src
        .iter()
        .map(|name| {
            let d = dest
                .iter()
                .find(|d| d.name == *name)
                .expect("checked above");
            MappedColumn {
                name: d.name.clone(),
                dest_type: d.type_name.clone(),
            }
        })
        .collect();
    let key = dest
        .iter()
        .filter(|d| d.key)
        .filter_map(|d| columns.iter().position(|c| c.name == d.name))
        .collect();
    Ok(TableMap {
        relation_id: 0,
        source: source.name.clone(),
        dest: table.clone(),
        columns,
        key,
        identity_key: false,
    })
}
