//! Enum labels added on the source after the snapshot (`ALTER TYPE … ADD VALUE`).
//!
//! pgoutput says nothing when an enum gains a label: the first row using it simply fails on
//! the destination with "invalid input value for enum" (SQLSTATE 22P02). The destination
//! transaction is then rolled back, so nothing is lost; `cdc run` calls [`sync`], which adds
//! the source's missing labels to the destination's copies of the enums the configured tables
//! use (in the source's order), and resumes from the stored position. If nothing was missing,
//! the error was about something else and stops the run as before.
//!
//! Each `ADD VALUE` runs in its own transaction: a label added inside a transaction cannot be
//! used before that transaction commits. Renamed or removed labels are not mirrored (pgoutput
//! cannot tell a rename from an addition); `cdc verify` shows rows that differ because of one.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::schema::UserType;
use crate::model::sql::quote_literal;
use crate::source::postgres::catalog;

/// `ALTER TYPE` statements that give `name` on the destination every label of `source`, in
/// the source's order (each new label goes right after its predecessor in `source`).
pub fn add_statements(name: &str, source: &[String], dest: &[String]) -> Vec<String> {
    let mut have: Vec<&str> = dest.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for (i, label) in source.iter().enumerate() {
        if have.contains(&label.as_str()) {
            continue;
        }
        let position = if i > 0 {
            format!(" AFTER {}", quote_literal(&source[i - 1]))
        } else if let Some(next) = source[1..].iter().find(|l| have.contains(&l.as_str())) {
            format!(" BEFORE {}", quote_literal(next))
        } else {
            String::new()
        };
        out.push(format!(
            "ALTER TYPE {name} ADD VALUE IF NOT EXISTS {}{position}",
            quote_literal(label)
        ));
        have.push(label);
    }
    out
}

/// Add to the destination the enum labels the source has and it lacks, for every enum the
/// configured tables use (directly, in arrays, domains or composites). Returns the statements
/// it ran; empty when nothing was missing.
pub async fn sync(config: &Config) -> Result<Vec<String>> {
    let src = crate::pg::connect(&config.source_conninfo()?).await?;
    let dst = crate::pg::connect(&config.destination_conninfo()?).await?;
    catalog::prepare_session(&src).await?;
    catalog::prepare_session(&dst).await?;
    let mut oids = Vec::new();
    for (source, _) in config.table_pairs() {
        if let Some(t) = catalog::read_table(&src, &source).await? {
            oids.extend(t.columns.iter().map(|c| c.type_oid));
        }
    }
    let mut ran = Vec::new();
    for t in catalog::user_types(&src, &oids).await? {
        let UserType::Enum { name, labels } = t else {
            continue;
        };
        let ctx = || format!("reading the labels of {name} on the destination");
        let dest: Vec<String> = dst
            .query(
                "SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = to_regtype($1) ORDER BY e.enumsortorder",
                &[&name],
            )
            .await
            .map_err(Error::pg(ctx()))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if dest.is_empty() {
            continue; // not on the destination (or mapped elsewhere): nothing we can fix here
        }
        for sql in add_statements(&name, &labels, &dest) {
            dst.batch_execute(&sql).await.map_err(Error::pg(format!(
                "adding an enum label on the destination: {sql}"
            )))?;
            ran.push(sql);
        }
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn missing_labels_are_added_in_the_source_order() {
        assert!(add_statements("public.m", &v(&["a", "b"]), &v(&["a", "b"])).is_empty());
        assert_eq!(
            add_statements("public.m", &v(&["z", "a", "b", "c", "d"]), &v(&["a", "b"])),
            [
                "ALTER TYPE public.m ADD VALUE IF NOT EXISTS 'z' BEFORE 'a'",
                "ALTER TYPE public.m ADD VALUE IF NOT EXISTS 'c' AFTER 'b'",
                "ALTER TYPE public.m ADD VALUE IF NOT EXISTS 'd' AFTER 'c'",
            ]
        );
        assert_eq!(
            add_statements("public.m", &v(&["it's"]), &v(&["x"])),
            ["ALTER TYPE public.m ADD VALUE IF NOT EXISTS 'it''s'"]
        );
    }
}
