//! ClickHouse tables for a source table: SQL generation only (pure, tested without a server).
//!
//! ```text
//!  DATABASE.orders__cdc_versions   ReplacingMergeTree(_cdc_version, _cdc_deleted) ORDER BY key:
//!                                  every change is an INSERT of a whole row with its version
//!  DATABASE.orders                 VIEW: SELECT the source's columns FROM … FINAL
//!                                  WHERE _cdc_deleted = 0 — what users query
//! ```
//! With `cluster = "NAME"`: the storage table is `ReplicatedReplacingMergeTree` created
//! `ON CLUSTER`, a `Distributed` table over it (sharded by a hash of the key, so every version
//! of a row lands on one shard and FINAL sees them together), and the view reads that.

use super::types::clickhouse_type;
use crate::model::schema::TableName;
use crate::model::schema::TableSchema;

/// Our version column: from the change's commit LSN and its order in the transaction.
pub const VERSION: &str = "_cdc_version";
/// Our deleted flag: 1 on a tombstone.
pub const DELETED: &str = "_cdc_deleted";
/// Suffix of the storage table behind the view a user queries.
pub const STORAGE_SUFFIX: &str = "__cdc_versions";
/// Suffix of the `Distributed` table of a cluster.
pub const DISTRIBUTED_SUFFIX: &str = "__cdc_distributed";

/// `` `name` `` with backslashes and backticks escaped (ClickHouse's identifier quoting).
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// Where a source table lives in ClickHouse: the URL's database, `public` tables by their own
/// name, other schemas as `schema_table` (or the `[[tables]] destination` as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub database: String,
    /// The view users query.
    pub view: String,
    pub storage: String,
    pub distributed: String,
}

impl Names {
    pub fn of(database: &str, table: &TableName) -> Names {
        let view = if table.schema == "public" || table.schema == database {
            table.name.clone()
        } else {
            format!("{}_{}", table.schema, table.name)
        };
        Names {
            database: database.to_owned(),
            storage: format!("{view}{STORAGE_SUFFIX}"),
            distributed: format!("{view}{DISTRIBUTED_SUFFIX}"),
            view,
        }
    }

    fn qualified(&self, name: &str) -> String {
        format!("{}.{}", quote(&self.database), quote(name))
    }

    /// The table rows are written to and looked up in: the storage table, or on a cluster the
    /// `Distributed` one (which sends each key's rows to one shard), qualified.
    pub fn rows_table(&self, cluster: Option<&str>) -> String {
        match cluster {
            None => self.qualified(&self.storage),
            Some(_) => self.qualified(&self.distributed),
        }
    }
}

/// ` ON CLUSTER `name`` when there is a cluster, else nothing.
pub fn on_cluster(cluster: Option<&str>) -> String {
    cluster.map_or(String::new(), |c| format!(" ON CLUSTER {}", quote(c)))
}

/// The statements that create `table`'s storage (and distributed) table and its view.
/// A table without a primary key is refused by the caller (rows need a key to be replaced).
pub fn create_table(names: &Names, table: &TableSchema, cluster: Option<&str>) -> Vec<String> {
    create_table_with_enums(names, table, cluster, &[])
}

/// [`create_table`], with the source's enum types (`enums`: their qualified names) stored as
/// `LowCardinality(String)`: the label text, few distinct values.
pub fn create_table_with_enums(
    names: &Names,
    table: &TableSchema,
    cluster: Option<&str>,
    enums: &[String],
) -> Vec<String> {
    let key: Vec<String> = table.primary_key.iter().map(|k| quote(k)).collect();
    let mut cols: Vec<String> = table
        .copied_columns()
        .map(|c| {
            let in_key = table.primary_key.contains(&c.name);
            let t = clickhouse_type(c, in_key);
            let t = if c.dims == 0 && enums.contains(&c.type_sql) {
                t.replace("String", "LowCardinality(String)").replace(
                    "Nullable(LowCardinality(String))",
                    "LowCardinality(Nullable(String))",
                )
            } else {
                t
            };
            format!("{} {t}", quote(&c.name))
        })
        .collect();
    cols.push(format!("{} UInt128", quote(VERSION)));
    cols.push(format!("{} UInt8", quote(DELETED)));
    let engine = match cluster {
        None => format!("ReplacingMergeTree({}, {})", quote(VERSION), quote(DELETED)),
        Some(_) => format!(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{{database}}/{{table}}', '{{replica}}', {}, {})",
            quote(VERSION),
            quote(DELETED)
        ),
    };
    let mut sql = vec![
        format!(
            "CREATE DATABASE IF NOT EXISTS {}{}",
            quote(&names.database),
            on_cluster(cluster)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {}{} ({}) ENGINE = {engine} ORDER BY ({})",
            names.qualified(&names.storage),
            on_cluster(cluster),
            cols.join(", "),
            key.join(", ")
        ),
    ];
    let read_from = match cluster {
        None => names.rows_table(None),
        Some(c) => {
            sql.push(format!(
                "CREATE TABLE IF NOT EXISTS {}{} AS {} ENGINE = Distributed({}, {}, {}, cityHash64({}))",
                names.qualified(&names.distributed),
                on_cluster(cluster),
                names.qualified(&names.storage),
                quote(c),
                quote(&names.database),
                quote(&names.storage),
                key.join(", ")
            ));
            names.rows_table(cluster)
        }
    };
    let visible: Vec<String> = table.copied_columns().map(|c| quote(&c.name)).collect();
    sql.push(format!(
        "CREATE OR REPLACE VIEW {}{} AS SELECT {} FROM {read_from} FINAL WHERE {} = 0",
        names.qualified(&names.view),
        on_cluster(cluster),
        visible.join(", "),
        quote(DELETED)
    ));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::ColumnDef;

    fn orders() -> TableSchema {
        let col = |name: &str, type_sql: &str, oid: u32, not_null: bool| ColumnDef {
            name: name.into(),
            type_sql: type_sql.into(),
            type_oid: oid,
            not_null,
            dims: 0,
            generated: None,
        };
        TableSchema {
            name: TableName::parse("sales.orders").unwrap(),
            oid: 1,
            columns: vec![
                col("id", "bigint", 20, true),
                col("note`s", "text", 25, false),
                col("total", "numeric(12,2)", 1700, false),
            ],
            primary_key: vec!["id".into()],
            key_include: Vec::new(),
            replica_identity: 'd',
            indexes: Vec::new(),
            estimated_rows: 0,
            pages: 0,
            partitioned: false,
            leaves: Vec::new(),
        }
    }

    #[test]
    fn names_follow_the_source_schema() {
        let n = Names::of("analytics", &TableName::parse("public.orders").unwrap());
        assert_eq!(
            (n.view.as_str(), n.storage.as_str()),
            ("orders", "orders__cdc_versions")
        );
        let n = Names::of("analytics", &TableName::parse("sales.orders").unwrap());
        assert_eq!(n.view, "sales_orders");
        assert_eq!(quote("a`b\\c"), "`a\\`b\\\\c`");
    }

    #[test]
    fn a_single_server_gets_a_versioned_table_and_a_final_view() {
        let n = Names::of("analytics", &TableName::parse("public.orders").unwrap());
        let sql = create_table(&n, &orders(), None);
        assert_eq!(
            sql,
            [
                "CREATE DATABASE IF NOT EXISTS `analytics`",
                "CREATE TABLE IF NOT EXISTS `analytics`.`orders__cdc_versions` (`id` Int64, `note\\`s` Nullable(String), \
                 `total` Nullable(Decimal(12, 2)), `_cdc_version` UInt128, `_cdc_deleted` UInt8) \
                 ENGINE = ReplacingMergeTree(`_cdc_version`, `_cdc_deleted`) ORDER BY (`id`)",
                "CREATE OR REPLACE VIEW `analytics`.`orders` AS SELECT `id`, `note\\`s`, `total` \
                 FROM `analytics`.`orders__cdc_versions` FINAL WHERE `_cdc_deleted` = 0",
            ]
        );
    }

    #[test]
    fn enums_are_low_cardinality_strings() {
        let n = Names::of("analytics", &TableName::parse("public.orders").unwrap());
        let mut t = orders();
        t.columns[1].type_sql = "public.mood".into();
        let sql = create_table_with_enums(&n, &t, None, &["public.mood".into()]);
        assert!(
            sql[1].contains("`note\\`s` LowCardinality(Nullable(String))"),
            "{}",
            sql[1]
        );
    }

    #[test]
    fn a_cluster_gets_replicated_storage_a_distributed_table_and_the_view_on_cluster() {
        let n = Names::of("analytics", &TableName::parse("public.orders").unwrap());
        let sql = create_table(&n, &orders(), Some("prod"));
        assert_eq!(
            sql[0],
            "CREATE DATABASE IF NOT EXISTS `analytics` ON CLUSTER `prod`"
        );
        assert!(sql[1].starts_with(
            "CREATE TABLE IF NOT EXISTS `analytics`.`orders__cdc_versions` ON CLUSTER `prod` ("
        ));
        assert!(sql[1].contains(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', `_cdc_version`, `_cdc_deleted`) ORDER BY (`id`)"
        ));
        assert_eq!(
            sql[2],
            "CREATE TABLE IF NOT EXISTS `analytics`.`orders__cdc_distributed` ON CLUSTER `prod` AS \
             `analytics`.`orders__cdc_versions` ENGINE = Distributed(`prod`, `analytics`, `orders__cdc_versions`, cityHash64(`id`))"
        );
        assert_eq!(
            sql[3],
            "CREATE OR REPLACE VIEW `analytics`.`orders` ON CLUSTER `prod` AS SELECT `id`, `note\\`s`, `total` \
             FROM `analytics`.`orders__cdc_distributed` FINAL WHERE `_cdc_deleted` = 0"
        );
    }
}
