//! What the source's catalog says about a table: columns and exact types, keys, indexes, and
//! the user-defined types the destination must create first.
//!
//! Every query runs with `search_path = ''`, so `format_type` and `pg_get_indexdef` qualify
//! every non-`pg_catalog` name: the SQL we derive from them means the same thing on the
//! destination whatever its search path.

use std::collections::HashSet;

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::model::schema::{
    ColumnDef, IndexDef, Leaf, TableName, TableSchema, UserType, FIRST_NORMAL_OID,
};

/// A SQL session for catalog reads (`search_path` emptied for the reasons above).
pub async fn prepare_session(client: &Client) -> Result<()> {
    crate::pg::qualify_names(client).await
}

/// Read one table; `None` when it does not exist.
pub async fn read_table(client: &Client, name: &TableName) -> Result<Option<TableSchema>> {
    let ctx = || format!("reading the catalog for {name}");
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, c.reltuples::int8, c.relpages::int8, c.relkind = 'p'
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&name.schema, &name.name],
        )
        .await
        .map_err(Error::pg(ctx()))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let partitioned: bool = row.get(4);
    let (mut estimated_rows, mut pages): (i64, i64) = (row.get::<_, i64>(2).max(0), row.get(3));
    let mut leaves = Vec::new();
    if partitioned {
        // The root holds no rows: its size is its leaves'.
        leaves = read_leaves(client, oid, name).await?;
        estimated_rows = leaves.iter().map(|(_, rows)| rows).sum();
        pages = leaves.iter().map(|(l, _)| l.pages).sum();
    }
    let leaves: Vec<Leaf> = leaves.into_iter().map(|(l, _)| l).collect();
    let replica_identity = row.get::<_, String>(1).chars().next().unwrap_or('d');
    let columns = client
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attnotnull,
                    CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END, a.attndims::int4
               FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(Error::pg(ctx()))?
        .into_iter()
        .map(|r| ColumnDef {
            name: r.get(0),
            type_sql: r.get(1),
            type_oid: r.get(2),
            not_null: r.get(3),
            generated: r.get(4),
            dims: r.get::<_, i32>(5).max(0) as usize,
        })
        .collect();
    // Key columns come first in `indkey`, `INCLUDE` columns after the first `indnkeyatts`.
    let (mut primary_key, mut key_include) = (Vec::new(), Vec::new());
    for r in client
        .query(
            "SELECT a.attname, k.ord <= i.indnkeyatts
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = $1 AND i.indisprimary
              ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(Error::pg(ctx()))?
    {
        if r.get::<_, bool>(1) {
            primary_key.push(r.get(0));
        } else {
            key_include.push(r.get(0));
        }
    }
    let indexes = read_indexes(client, oid, name).await?;
    Ok(Some(TableSchema {
        name: name.clone(),
        oid,
        columns,
        primary_key,
        key_include,
        replica_identity,
        indexes,
        estimated_rows,
        pages,
        partitioned,
        leaves,
    }))
}

/// A partitioned table's leaves, largest first, with their estimated rows.
async fn read_leaves(client: &Client, oid: u32, name: &TableName) -> Result<Vec<(Leaf, i64)>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, l.relname::text, l.relpages::int8, l.relkind = 'r',
                    greatest(l.reltuples, 0)::int8
               FROM pg_partition_tree($1::oid::regclass) t
               JOIN pg_class l ON l.oid = t.relid
               JOIN pg_namespace n ON n.oid = l.relnamespace
              WHERE t.isleaf ORDER BY l.relpages DESC, n.nspname, l.relname",
            &[&oid],
        )
        .await
        .map_err(Error::pg(format!("reading the partitions of {name}")))?;
    Ok(rows
        .iter()
        .map(|r| {
            let leaf = Leaf {
                name: TableName {
                    schema: r.get(0),
                    name: r.get(1),
                },
                pages: r.get(2),
                heap: r.get(3),
            };
            (leaf, r.get::<_, i64>(4))
        })
        .collect())
}

/// The table's valid indexes other than the primary key, as the tails of their definitions.
async fn read_indexes(client: &Client, oid: u32, name: &TableName) -> Result<Vec<IndexDef>> {
    let mut indexes = Vec::new();
    for r in client
        .query(
            "SELECT ic.relname, pg_get_indexdef(i.indexrelid), i.indisunique,
                    format('%s.%s', quote_ident(n.nspname), quote_ident(c.relname))
               FROM pg_index i
               JOIN pg_class ic ON ic.oid = i.indexrelid
               JOIN pg_class c ON c.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE i.indrelid = $1 AND NOT i.indisprimary AND i.indisvalid
              ORDER BY ic.relname",
            &[&oid],
        )
        .await
        .map_err(Error::pg(format!("reading the indexes of {name}")))?
    {
        let (index_name, def, unique, table): (String, String, bool, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        // "CREATE [UNIQUE] INDEX name ON [ONLY] schema.table USING ..." → " USING ...".
        let tail = def
            .find(&format!(" ON {table} "))
            .map(|at| &def[at + 4 + table.len()..])
            .or_else(|| {
                def.find(&format!(" ON ONLY {table} "))
                    .map(|at| &def[at + 9 + table.len()..])
            });
        match tail {
            Some(tail) => indexes.push(IndexDef {
                name: index_name,
                definition_tail: tail.to_owned(),
                unique,
            }),
            None => {
                tracing::warn!(index = %index_name, definition = %def, "index definition not understood; not copied")
            }
        }
    }
    Ok(indexes)
}

/// The user-defined types behind `type_oids`, dependencies first, each once.
pub async fn user_types(client: &Client, type_oids: &[u32]) -> Result<Vec<UserType>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for &oid in type_oids {
        visit(client, oid, &mut seen, &mut out).await?;
    }
    Ok(out)
}

/// Depth-first: a type's dependencies are pushed before the type itself.
fn visit<'a>(
    client: &'a Client,
    oid: u32,
    seen: &'a mut HashSet<u32>,
    out: &'a mut Vec<UserType>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>> {
    Box::pin(async move {
        if oid < FIRST_NORMAL_OID || !seen.insert(oid) {
            return Ok(());
        }
        let ctx = || format!("reading type {oid}");
        let t = client
            .query_one(
                "SELECT t.typtype::text, t.typelem, t.typbasetype, t.typtypmod, t.typnotnull, t.typrelid,
                        format_type(t.oid, NULL), t.typcategory::text,
                        format_type(t.typbasetype, t.typtypmod)
                   FROM pg_type t WHERE t.oid = $1",
                &[&oid],
            )
            .await
            .map_err(Error::pg(ctx()))?;
        let (typtype, elem, base): (String, u32, u32) = (t.get(0), t.get(1), t.get(2));
        let name: String = t.get(6);
        let category: String = t.get(7);
        if category == "A" && elem != 0 {
            return visit(client, elem, seen, out).await;
        }
        let user_type = match typtype.as_str() {
            "e" => {
                let labels = client
                    .query("SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder", &[&oid])
                    .await
                    .map_err(Error::pg(ctx()))?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
                UserType::Enum { name, labels }
            }
            "d" => {
                visit(client, base, seen, out).await?;
                let checks = client
                    .query(
                        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = $1 ORDER BY conname",
                        &[&oid],
                    )
                    .await
                    .map_err(Error::pg(ctx()))?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
                UserType::Domain {
                    name,
                    base: t.get(8),
                    not_null: t.get(4),
                    checks,
                }
            }
            "c" => {
                let relid: u32 = t.get(5);
                let rows = client
                    .query(
                        "SELECT attname::text, format_type(atttypid, atttypmod), atttypid FROM pg_attribute
                          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                        &[&relid],
                    )
                    .await
                    .map_err(Error::pg(ctx()))?;
                let mut attributes = Vec::new();
                for r in rows {
                    visit(client, r.get(2), seen, out).await?;
                    attributes.push((r.get(0), r.get(1)));
                }
                UserType::Composite { name, attributes }
            }
            other => UserType::External {
                name,
                kind: match other {
                    "r" => "range".into(),
                    "m" => "multirange".into(),
                    "b" => "base".into(),
                    k => format!("kind {k}"),
                },
            },
        };
        out.push(user_type);
        Ok(())
    })
}
