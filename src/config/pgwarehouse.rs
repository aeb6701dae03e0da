//! `cdc init --from-pgwarehouse FILE`: a `config.toml` written from pgwarehouse's
//! `pgwarehouse_conf.yaml`, for the users of that unmaintained tool.
//!
//! ```text
//!  postgres:  pghost pgport pgdatabase pguser pgschema max_records ─► [source] url, max_records
//!  warehouse: backend clickhouse (clickhouse_host … _secure) | duckdb (duckdb_path) ─► [destination] url
//!  tables:    - name                         ─► strategy = "new_rows" (its default)
//!             - name: {reload: true}          ─► strategy = "reload"
//!             - name: {last_modified: col}    ─► strategy = "modified", modified_column
//!             - name: {reload: sun | [sun, mon] | 15 | [1, 15]} ─► reload_on
//!             - name: {skip: true}            ─► strategy = "skip"
//! ```
//! Passwords are never copied into the file: the notes say which variable takes them. What
//! has no counterpart (a Snowflake warehouse, options cdc does not know) is listed in the notes.

use yaml_rust2::{Yaml, YamlLoader};

use super::env::{clickhouse_url, duckdb_url, percent};
use super::ReloadDay;

/// The config written, and what could not be carried over.
#[derive(Debug)]
pub struct Converted {
    pub toml: String,
    pub notes: Vec<String>,
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A scalar as text (YAML reads `5432` as a number and `yes` as text).
fn text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn truthy(y: &Yaml) -> bool {
    match y {
        Yaml::Boolean(b) => *b,
        Yaml::Integer(i) => *i != 0,
        Yaml::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "1" | "on"),
        _ => false,
    }
}

/// The keys of a mapping other than `known`, for the notes.
fn unknown(stanza: &str, y: &Yaml, known: &[&str], notes: &mut Vec<String>) {
    if let Yaml::Hash(h) = y {
        for k in h.keys().filter_map(text) {
            if !known.contains(&k.as_str()) {
                notes.push(format!(
                    "{stanza}.{k}: not carried over (cdc has no such setting)"
                ));
            }
        }
    }
}

/// Convert the text of a `pgwarehouse_conf.yaml`.
pub fn convert(yaml: &str) -> Result<Converted, String> {
    let docs = YamlLoader::load_from_str(yaml).map_err(|e| format!("not valid YAML: {e}"))?;
    let doc = docs.first().cloned().unwrap_or(Yaml::Null);
    if !matches!(doc, Yaml::Hash(_)) {
        return Err(
            "not a pgwarehouse config: expected `postgres:`, `warehouse:` and `tables:` stanzas"
                .into(),
        );
    }
    let mut notes = Vec::new();
    let mut out =
        String::from("# Written by `cdc init --from-pgwarehouse` from a pgwarehouse_conf.yaml.\n");
    let schema = source(&doc["postgres"], &mut out, &mut notes);
    destination(&doc["warehouse"], &mut out, &mut notes);
    tables(&doc["tables"], &schema, &mut out, &mut notes)?;
    unknown("", &doc, &["postgres", "warehouse", "tables"], &mut notes);
    Ok(Converted { toml: out, notes })
}

/// `[source]` from the `postgres` stanza; returns the schema unqualified tables live in.
fn source(pg: &Yaml, out: &mut String, notes: &mut Vec<String>) -> String {
    let field = |k: &str| text(&pg[k]).filter(|v| !v.is_empty());
    out.push_str("\n[source]\n");
    match (field("pghost"), field("pgdatabase")) {
        (Some(host), Some(db)) => {
            let user = field("pguser").map_or(String::new(), |u| format!("{}@", percent(&u)));
            let port = field("pgport").map_or(String::new(), |p| format!(":{p}"));
            out.push_str(&format!(
                "url = {}\n",
                quoted(&format!("postgresql://{user}{host}{port}/{}", percent(&db)))
            ));
        }
        _ => out.push_str(
            "# url left out: taken from PGHOST, PGPORT, PGDATABASE, PGUSER (as pgwarehouse did)\n",
        ),
    }
    if field("pgpassword").is_some() {
        notes.push(
            "postgres.pgpassword: not written into the file; set CDC_SOURCE_PASSWORD (or PGPASSWORD) \
             or source.password_file"
                .into(),
        );
    }
    if let Some(n) = field("max_records") {
        out.push_str(&format!("max_records = {n}\n"));
    }
    unknown(
        "postgres",
        pg,
        &[
            "pghost",
            "pgport",
            "pgdatabase",
            "pguser",
            "pgpassword",
            "pgschema",
            "max_records",
        ],
        notes,
    );
    field("pgschema").unwrap_or_else(|| "public".into())
}

/// `[destination]` from the `warehouse` stanza.
fn destination(wh: &Yaml, out: &mut String, notes: &mut Vec<String>) {
    let field = |k: &str| text(&wh[k]).filter(|v| !v.is_empty());
    out.push_str("\n[destination]\n");
    let backend = field("backend").map(|b| b.to_ascii_lowercase());
    let backend = backend.or_else(|| {
        if field("clickhouse_host").is_some() {
            Some("clickhouse".into())
        } else if field("duckdb_path").is_some() {
            Some("duckdb".into())
        } else {
            None
        }
    });
    match backend.as_deref() {
        Some("clickhouse") => match field("clickhouse_host") {
            Some(host) => {
                let url = clickhouse_url(
                    &host,
                    None,
                    truthy(&wh["clickhouse_secure"]),
                    field("clickhouse_user").as_deref(),
                    field("clickhouse_database").as_deref(),
                );
                out.push_str(&format!("url = {}\n", quoted(&url)));
                if field("clickhouse_password").is_some() {
                    notes.push(
                        "warehouse.clickhouse_password: not written into the file; set \
                         CDC_DESTINATION_PASSWORD (or CLICKHOUSE_PWD) or destination.password_file"
                            .into(),
                    );
                }
            }
            None => out.push_str(
                "# url left out: taken from CLICKHOUSE_HOST, CLICKHOUSE_DATABASE, CLICKHOUSE_USER, \
                 CLICKHOUSE_PWD, CLICKHOUSE_SECURE\n",
            ),
        },
        Some("duckdb") => match field("duckdb_path") {
            Some(path) => out.push_str(&format!("url = {}\n", quoted(&duckdb_url(&path)))),
            None => out.push_str("# url left out: taken from DUCKDB_PATH\n"),
        },
        Some("snowflake") => match field("snowsql_account") {
            Some(account) => {
                let (user, database) = (field("snowsql_user"), field("snowsql_database"));
                let (schema, warehouse) = (field("snowsql_schema"), field("snowsql_warehouse"));
                let role = field("snowsql_role");
                let url = super::env::snowflake_url(&super::env::Snowflake {
                    account: &account,
                    user: user.as_deref(),
                    database: database.as_deref(),
                    schema: schema.as_deref(),
                    warehouse: warehouse.as_deref(),
                    role: role.as_deref(),
                });
                out.push_str(&format!("url = {}\n", quoted(&url)));
                if field("snowsql_pwd").is_some() {
                    notes.push(
                        "warehouse.snowsql_pwd: not written into the file; set CDC_DESTINATION_PASSWORD \
                         (or SNOWSQL_PWD) or destination.password_file"
                            .into(),
                    );
                }
            }
            None => out.push_str(
                "# url left out: taken from SNOWSQL_ACCOUNT, SNOWSQL_USER, SNOWSQL_DATABASE, \
                 SNOWSQL_SCHEMA, SNOWSQL_WAREHOUSE, SNOWSQL_ROLE, SNOWSQL_PWD\n",
            ),
        },
        Some(other) => notes.push(format!("warehouse.backend: {other:?} is not one cdc knows")),
        None => out.push_str(
            "# url left out: taken from CLICKHOUSE_HOST (with CLICKHOUSE_*) or DUCKDB_PATH\n",
        ),
    }
    let mut known = vec![
        "backend",
        "clickhouse_host",
        "clickhouse_database",
        "clickhouse_user",
    ];
    known.extend(["clickhouse_password", "clickhouse_secure", "duckdb_path"]);
    let snowflake = [
        "snowsql_account",
        "snowsql_database",
        "snowsql_schema",
        "snowsql_warehouse",
    ];
    known.extend(snowflake);
    known.extend(["snowsql_user", "snowsql_role", "snowsql_pwd"]);
    unknown("warehouse", wh, &known, notes);
}

/// `[[tables]]` from the `tables` list.
fn tables(
    list: &Yaml,
    schema: &str,
    out: &mut String,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let Yaml::Array(items) = list else {
        notes.push(
            "tables: none listed (pgwarehouse then synced every table of the schema): add a \
             [[tables]] entry for each table to sync"
                .into(),
        );
        return Ok(());
    };
    for item in items {
        let (name, options) = match item {
            Yaml::Hash(h) if h.len() == 1 => {
                let (k, v) = h.iter().next().expect("one entry");
                (text(k).ok_or("tables: an entry whose name is not text")?, v.clone())
            }
            other => match text(other) {
                Some(name) => (name, Yaml::Null),
                None => return Err(format!("tables: cannot read the entry {other:?}: write `- name` or `- name: {{options}}`")),
            },
        };
        let qualified = if name.contains('.') {
            name.clone()
        } else {
            format!("{schema}.{name}")
        };
        out.push_str(&format!("\n[[tables]]\nsource = {}\n", quoted(&qualified)));
        table_options(&name, &options, out, notes);
    }
    Ok(())
}

/// One table's strategy from its pgwarehouse options.
fn table_options(name: &str, options: &Yaml, out: &mut String, notes: &mut Vec<String>) {
    let skip = truthy(&options["skip"]);
    let modified = text(&options["last_modified"]).filter(|c| !c.is_empty());
    let reload = &options["reload"];
    let reload_always = matches!(reload, Yaml::Boolean(true));
    let days = reload_days(name, reload, notes);
    let strategy = if skip {
        "skip"
    } else if reload_always {
        "reload"
    } else if modified.is_some() {
        "modified"
    } else {
        // pgwarehouse's default: new records by a greater primary key.
        "new_rows"
    };
    out.push_str(&format!("strategy = \"{strategy}\"\n"));
    if let (Some(col), "modified") = (&modified, strategy) {
        out.push_str(&format!("modified_column = {}\n", quoted(col)));
    }
    if !days.is_empty() && !reload_always && !skip {
        let written: Vec<String> = days
            .iter()
            .map(|d| match d {
                ReloadDay::MonthDay(n) => n.to_string(),
                ReloadDay::Weekday(w) => quoted(w),
            })
            .collect();
        out.push_str(&format!("reload_on = [{}]\n", written.join(", ")));
    }
    unknown(
        &format!("tables.{name}"),
        options,
        &["skip", "last_modified", "reload"],
        notes,
    );
}

/// `reload: sun`, `[sun, mon]`, `15`, `[1, 15]` as `reload_on` days.
fn reload_days(name: &str, reload: &Yaml, notes: &mut Vec<String>) -> Vec<ReloadDay> {
    let items: Vec<Yaml> = match reload {
        Yaml::Array(a) => a.clone(),
        Yaml::BadValue | Yaml::Null | Yaml::Boolean(_) => Vec::new(),
        one => vec![one.clone()],
    };
    let mut days = Vec::new();
    for item in items {
        let day = match &item {
            Yaml::Integer(n) => Some(ReloadDay::MonthDay(*n)),
            Yaml::String(s) => weekday(s)
                .map(|w| ReloadDay::Weekday(w.into()))
                .or_else(|| s.trim().parse().ok().map(ReloadDay::MonthDay)),
            _ => None,
        };
        match day.filter(|d| d.check().is_ok()) {
            Some(d) => days.push(d),
            None => notes.push(format!(
                "tables.{name}.reload: {:?} is not a weekday or a day of the month; left out",
                text(&item).unwrap_or_default()
            )),
        }
    }
    days
}

/// pgwarehouse's weekday spellings (`thur`, `tues`, full names) as cdc's.
fn weekday(s: &str) -> Option<&'static str> {
    let s = s.trim().to_ascii_lowercase();
    ReloadDay::WEEKDAYS
        .iter()
        .copied()
        .find(|w| s.starts_with(w))
}

#[cfg(test)]
mod tests;
