//! What a table is, on either side: the source's columns, keys, indexes and user types as its
//! catalog describes them, the destination's columns, and a change of shape between the two.
//! Plain data read by sources and written by destinations; no I/O.

pub use super::table_name::TableName;

/// One column as the destination must declare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(10,2)`, `public.mood[]`.
    pub type_sql: String,
    pub type_oid: u32,
    pub not_null: bool,
    /// Declared array dimensions (`int[][]`: 2; 0 for a non-array). Postgres does not enforce
    /// them; a destination with fixed nesting (DuckDB lists) relies on them.
    pub dims: usize,
    /// Expression of a `GENERATED ALWAYS AS (...) STORED` column: never copied, recomputed.
    pub generated: Option<String>,
}

/// A secondary index (the primary key is kept apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDef {
    pub name: String,
    /// `pg_get_indexdef` after `ON <table>`: ` USING btree (a DESC) WHERE ...`.
    pub definition_tail: String,
    pub unique: bool,
}

/// A source table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSchema {
    pub name: TableName,
    pub oid: u32,
    pub columns: Vec<ColumnDef>,
    /// Primary-key columns in key order; empty when the table has none. Only the index's key
    /// columns (`indnkeyatts`): `PRIMARY KEY (a) INCLUDE (b)` is keyed on `a` alone.
    pub primary_key: Vec<String>,
    /// The primary-key index's `INCLUDE` columns: stored in the index, not part of the key, and
    /// free to be NULL.
    pub key_include: Vec<String>,
    /// `relreplident`: d (default: the key), f (full), i (index), n (nothing).
    pub replica_identity: char,
    pub indexes: Vec<IndexDef>,
    /// Planner estimate, for progress display.
    pub estimated_rows: i64,
    /// Size of the heap in 8 kB pages, for splitting the copy into ctid ranges.
    pub pages: i64,
    /// A partitioned table: rows live in its partitions (`leaves`), which are copied each on
    /// its own (through queries: COPY cannot read a partitioned root) and streamed through the
    /// root (`publish_via_partition_root`). Its size and estimate are its leaves' sums.
    pub partitioned: bool,
    pub leaves: Vec<Leaf>,
}

/// A leaf partition of a partitioned source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub name: TableName,
    pub pages: i64,
    /// A plain table (not foreign): its pages can be split into ctid ranges.
    pub heap: bool,
}

impl TableSchema {
    /// Columns that COPY moves (generated columns are recomputed by the destination).
    pub fn copied_columns(&self) -> impl Iterator<Item = &ColumnDef> {
        self.columns.iter().filter(|c| c.generated.is_none())
    }

    /// Whether every column type is built into Postgres, so binary COPY works across servers
    /// (binary arrays and records embed type OIDs, which differ for user-defined types).
    pub fn binary_copy_safe(&self) -> bool {
        self.columns.iter().all(|c| c.type_oid < FIRST_NORMAL_OID)
    }
}

/// OIDs below this are assigned by initdb: the same built-in types on every server.
pub const FIRST_NORMAL_OID: u32 = 16384;

/// A user-defined type a table needs, in the order they must be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserType {
    Enum {
        name: String,
        labels: Vec<String>,
    },
    Domain {
        name: String,
        base: String,
        not_null: bool,
        checks: Vec<String>,
    },
    Composite {
        name: String,
        attributes: Vec<(String, String)>,
    },
    /// A type we cannot create (from an extension, a range, a base type in C): it must exist.
    External {
        name: String,
        kind: String,
    },
}

impl UserType {
    /// The qualified, quoted name as `format_type` prints it.
    pub fn name(&self) -> &str {
        match self {
            UserType::Enum { name, .. }
            | UserType::Domain { name, .. }
            | UserType::Composite { name, .. }
            | UserType::External { name, .. } => name,
        }
    }
}

/// One column of a destination table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestColumn {
    pub name: String,
    /// The column's type in the destination's own spelling (see [`Session::type_matches`]).
    pub type_name: String,
    /// Part of the primary key (rows are matched on these).
    pub key: bool,
}

/// A foreign key to create on a destination table (destination names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestForeignKey {
    pub columns: Vec<String>,
    pub references: TableName,
    pub referenced_columns: Vec<String>,
    /// `NO ACTION`, `CASCADE`, `SET NULL`, `SET DEFAULT` or `RESTRICT`.
    pub on_delete: String,
    pub on_update: String,
}

/// A source column's type: `format_type` text (qualified) and its OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceType {
    pub sql: String,
    pub oid: u32,
}

/// A source table's change of shape, to repeat on its destination table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaChange {
    pub added: Vec<(String, SourceType)>,
    pub dropped: Vec<String>,
    /// Columns whose destination type no longer matches the source's.
    pub retyped: Vec<(String, SourceType)>,
    /// Stored generated columns the source gained (not in Relation messages before Postgres
    /// 18): name, type, expression. Only for destinations that keep generated columns.
    pub added_generated: Vec<(String, SourceType, String)>,
}

impl SchemaChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.dropped.is_empty()
            && self.retyped.is_empty()
            && self.added_generated.is_empty()
    }
}
