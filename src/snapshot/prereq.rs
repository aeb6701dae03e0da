//! Everything that must hold before `cdc snapshot` changes anything, checked read-only and
//! reported all at once, each problem with the fix.

use tokio_postgres::Client;

use crate::model::schema::{TableSchema, UserType};

use crate::destination::{Destination, SnapshotTable};
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use crate::model::sql::quote_ident;
use crate::source::postgres::catalog;

/// What the checks learned, for the steps after them.
pub struct Checked {
    /// Source schema of each configured table, in config order.
    pub tables: Vec<TableSchema>,
    /// User-defined types the destination needs, dependencies first.
    pub types: Vec<UserType>,
    /// Whether the publication already exists.
    pub publication_exists: bool,
}

/// One table to check: source and destination names and the optional snapshot filter.
pub struct Wanted<'a> {
    pub source: &'a TableName,
    pub destination: &'a TableName,
    pub filter: Option<&'a str>,
}

/// Run every check. `own_slot_exists` discounts our own slot from the slot budget (it will be
/// dropped and recreated); `replace_tables` allows existing destination tables to be replaced.
pub async fn check(
    src: &Client,
    dest: &dyn Destination,
    wanted: &[Wanted<'_>],
    publication: &str,
    state_schema: &str,
    own_slot_exists: bool,
    replace_tables: bool,
) -> Result<Checked> {
    let mut problems = Vec::new();
    let role = check_server(src, own_slot_exists, &mut problems).await?;
    let (publication_exists, published) =
        check_publication(src, publication, &role, &mut problems).await?;
    let table_check = TableCheck {
        src,
        role: &role,
        published: &published,
        publication,
    };
    let mut tables = Vec::new();
    for w in wanted {
        let name = w.source;
        let Some(t) = catalog::read_table(src, name).await? else {
            problems.push(format!(
                "table {name} does not exist on the source (unquoted names fold to lower case; quote mixed-case names)"
            ));
            continue;
        };
        table_check.check(w, &t, &mut problems).await?;
        tables.push(t);
    }

    let type_oids: Vec<u32> = tables
        .iter()
        .flat_map(|t| t.columns.iter().map(|c| c.type_oid))
        .collect();
    let types = catalog::user_types(src, &type_oids).await?;
    let targets: Vec<SnapshotTable<'_>> = wanted
        .iter()
        .zip(&tables)
        .map(|(w, schema)| SnapshotTable {
            schema,
            destination: w.destination,
        })
        .collect();
    problems.extend(
        dest.check(&targets, &types, state_schema, replace_tables)
            .await?,
    );

    if problems.is_empty() {
        Ok(Checked {
            tables,
            types,
            publication_exists,
        })
    } else {
        Err(Error::from(crate::error::Cause::Prerequisites(problems)))
    }
}

/// The role the source session runs as.
struct Role {
    user: String,
    superuser: bool,
}

/// wal_level, the role's right to replicate, a free slot and WAL sender.
async fn check_server(
    src: &Client,
    own_slot_exists: bool,
    problems: &mut Vec<String>,
) -> Result<Role> {
    let setting = |name: &'static str| async move {
        src.query_one("SELECT current_setting($1)", &[&name])
            .await
            .map(|r| r.get::<_, String>(0))
    };
    let wal_level = setting("wal_level")
        .await
        .map_err(Error::pg("reading wal_level"))?;
    if wal_level != "logical" {
        problems.push(format!(
            "wal_level is '{wal_level}' on the source; logical replication needs 'logical': run \
             ALTER SYSTEM SET wal_level = logical; and restart the source server"
        ));
    }
    let role = src
        .query_one("SELECT current_user::text, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(Error::pg("reading the source role"))?;
    let (user, superuser, replication): (String, bool, bool) =
        (role.get(0), role.get(1), role.get(2));
    if !superuser && !replication {
        problems.push(format!(
            "role {user} may not replicate: run ALTER ROLE {} REPLICATION; on the source",
            quote_ident(&user)
        ));
    }
    let free = src
        .query_one(
            "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)::int",
            &[],
        )
        .await
        .map_err(Error::pg("counting replication slots"))?;
    let free_slots: i32 = free.get::<_, i32>(0) + i32::from(own_slot_exists);
    if free_slots < 1 {
        problems.push(
            "no free replication slot on the source: drop unused slots (SELECT pg_drop_replication_slot(name)) \
             or raise max_replication_slots and restart"
                .into(),
        );
    }
    if free.get::<_, i32>(1) < 1 {
        problems.push("no free WAL sender on the source: raise max_wal_senders and restart".into());
    }
    Ok(Role { user, superuser })
}

/// Whether the publication exists, the tables it has, and whether the role may create it.
async fn check_publication(
    src: &Client,
    publication: &str,
    role: &Role,
    problems: &mut Vec<String>,
) -> Result<(bool, Vec<(String, String)>)> {
    let (user, superuser) = (&role.user, role.superuser);
    let publication_exists = src
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await
        .map_err(Error::pg("reading publications"))?
        .get::<_, bool>(0);
    let published: Vec<(String, String)> = src
        .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&publication])
        .await
        .map_err(Error::pg("reading the publication"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if !publication_exists && !superuser {
        let can_create: bool = src
            .query_one(
                "SELECT has_database_privilege(current_database(), 'CREATE')",
                &[],
            )
            .await
            .map_err(Error::pg("checking privileges"))?
            .get(0);
        if !can_create {
            problems.push(format!(
                "role {user} cannot create publication {publication}: GRANT CREATE ON DATABASE to it, or create \
                 the publication yourself: CREATE PUBLICATION {} FOR TABLE ...",
                quote_ident(publication)
            ));
        }
    }

    Ok((publication_exists, published))
}

/// What one table needs: read and publish rights, columns, a way to match rows, a valid filter.
struct TableCheck<'a> {
    src: &'a Client,
    role: &'a Role,
    published: &'a [(String, String)],
    publication: &'a str,
}

impl TableCheck<'_> {
    async fn check(
        &self,
        w: &Wanted<'_>,
        t: &TableSchema,
        problems: &mut Vec<String>,
    ) -> Result<()> {
        let (src, published, publication) = (self.src, self.published, self.publication);
        let (user, superuser) = (&self.role.user, self.role.superuser);
        let name = w.source;
        let checks = src
            .query_one(
                "SELECT has_table_privilege($1::oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE')
                       FROM pg_class c WHERE c.oid = $1::oid",
                &[&t.oid],
            )
            .await
            .map_err(Error::pg("checking table privileges"))?;
        let (can_select, owns): (bool, bool) = (checks.get(0), checks.get(1));
        if !can_select {
            problems.push(format!(
                "role {user} cannot read {name}: GRANT SELECT ON {} TO {}",
                name.quoted(),
                quote_ident(&user)
            ));
        }
        let in_publication = published
            .iter()
            .any(|(s, n)| *s == name.schema && *n == name.name);
        if !in_publication && !owns && !superuser {
            problems.push(format!(
                    "role {user} must own {name} to add it to publication {publication}: add it as the owner with \
                     ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(publication),
                    name.quoted()
                ));
        }
        // `CREATE TABLE t ()` is legal and holds rows, but a row of no values cannot be told
        // from another, keyed, or written by COPY: say so before anything is created.
        if t.columns.is_empty() {
            problems.push(format!(
                    "table {name} has no columns, so its rows cannot be copied or told apart: add a key column \
                 (ALTER TABLE {q} ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY) or leave the table out",
                    q = name.quoted()
                ));
        }
        match (t.primary_key.is_empty(), t.replica_identity) {
                (_, 'n') => problems.push(format!(
                    "table {name} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be replicated: \
                     ALTER TABLE {} REPLICA IDENTITY DEFAULT (with a primary key) or FULL",
                    name.quoted()
                )),
                (true, 'd') => problems.push(format!(
                    "table {name} has no primary key: add one (ALTER TABLE {q} ADD PRIMARY KEY (...)) or let rows be \
                     matched by all their values (ALTER TABLE {q} REPLICA IDENTITY FULL)",
                    q = name.quoted()
                )),
                _ => {}
            }
        if t.partitioned {
            reordered_partitions(src, t, problems).await?;
        }
        if let Some(filter) = w.filter {
            let probe = format!("EXPLAIN SELECT 1 FROM {} WHERE ({filter})", name.quoted());
            if let Err(e) = src.batch_execute(&probe).await {
                let why = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string());
                problems.push(format!(
                    "the where filter of {name} is not valid SQL for that table: {why}"
                ));
            }
        }
        Ok(())
    }
}

/// Partitions whose columns are stored in another order than their root's (attached tables
/// created on their own, or dropped columns), on servers before 15. Postgres 13 and 14's
/// pgoutput builds the leaf-to-root tuple conversion lazily, and a cache invalidation arriving
/// while it does (autovacuum's statistics are enough) can leave it unbuilt: the leaf's tuple is
/// then sent read with the root's layout, wrong values with no error (seen in our 013_partition
/// conformance case on 14.23: text bytes arriving as an int). 15 builds the conversion when it
/// validates its cache. Refused here rather than risk it.
async fn reordered_partitions(
    src: &Client,
    t: &TableSchema,
    problems: &mut Vec<String>,
) -> Result<()> {
    let rows = src
        .query(
            "WITH layout AS (
                 SELECT attrelid, array_agg(CASE WHEN attisdropped THEN '' ELSE attname::text END ORDER BY attnum) cols
                   FROM pg_attribute WHERE attnum > 0 GROUP BY attrelid)
             SELECT t.relid::regclass::text, array_to_string(l.cols, ', '), array_to_string(r.cols, ', ')
               FROM pg_partition_tree($1::oid::regclass) t
               JOIN layout l ON l.attrelid = t.relid
               JOIN layout r ON r.attrelid = $1::oid
              WHERE t.isleaf AND l.cols IS DISTINCT FROM r.cols
                AND current_setting('server_version_num')::int < 150000
              ORDER BY 1",
            &[&t.oid],
        )
        .await
        .map_err(Error::pg(format!("reading the partitions of {}", t.name)))?;
    for r in rows {
        let (leaf, cols, root): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        problems.push(format!(
            "partition {leaf} of {name} stores its columns as ({cols}), not as {name} does ({root}); on this \
             Postgres (before 15) pgoutput can send such a partition's rows unconverted, as wrong values: \
             recreate the partition in its root's order (CREATE TABLE ... PARTITION OF {q}, then move its rows \
             over), or upgrade the source to Postgres 15 or later (an empty name is a dropped column)",
            name = t.name,
            q = t.name.quoted()
        ));
    }
    Ok(())
}
