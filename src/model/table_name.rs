//! Schema-qualified table names as SQL reads them: unquoted parts fold to lower case,
//! double-quoted parts are taken as written.

use std::fmt;

use super::sql::quote_ident;

/// `schema.table`, each part an exact (already folded) identifier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// Parse `schema.table`, `"Schema"."Table"` and mixtures.
    pub fn parse(s: &str) -> Result<TableName, String> {
        let parts = split_identifiers(s.trim())?;
        match parts.as_slice() {
            [schema, name] => Ok(TableName { schema: schema.clone(), name: name.clone() }),
            [name] => Err(format!("{name:?} is not schema-qualified: write it as public.{name} (or the schema it lives in)")),
            _ => Err(format!("{s:?} has {} dot-separated parts; expected schema.table", parts.len())),
        }
    }

    /// `"schema"."name"`, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

fn split_identifiers(s: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => part.push('"'),
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("unterminated quoted identifier in {s:?}")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != '.') {
                if c.is_whitespace() || c == '"' {
                    return Err(format!(
                        "{s:?}: quote identifiers that contain spaces or quotes"
                    ));
                }
                part.extend(c.to_lowercase());
            }
        }
        if part.is_empty() {
            return Err(format!("empty identifier in {s:?}"));
        }
        if part.len() > 63 {
            return Err(format!(
                "identifier {part:?} is longer than Postgres's 63 bytes"
            ));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => {
                return Err(format!(
                    "unexpected {c:?} after a quoted identifier in {s:?}"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_unquoted_and_keeps_quoted() {
        let t = TableName::parse("Public.Orders").unwrap();
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "orders"));
        let t = TableName::parse(r#""Sales"."Q1 ""final""""#).unwrap();
        assert_eq!(
            (t.schema.as_str(), t.name.as_str()),
            ("Sales", r#"Q1 "final""#)
        );
        assert_eq!(t.quoted(), r#""Sales"."Q1 ""final""""#);
    }

    #[test]
    fn rejects_unqualified_and_malformed_names() {
        assert!(TableName::parse("orders")
            .unwrap_err()
            .contains("public.orders"));
        for bad in ["a.b.c", "a.", ".b", "\"a.b", "a b.c", ""] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
