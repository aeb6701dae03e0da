//! The verdict of `cdc verify`, for humans and for repair scripts.
//!
//! The machine formats carry enough to repair the destination: a missing row with every
//! source value (INSERT it), a different row with its key and each differing column's two
//! values (UPDATE it), an extra row with its key and values (DELETE it). Values are the
//! canonical text Postgres prints; SQL NULL is `null` in JSON and an unquoted empty field in
//! CSV, where every other value is quoted (the convention of `COPY ... (FORMAT csv)`).

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::{Difference, RowText, Stats, TablePair};

/// Named values in column order (a JSON object that keeps its order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields(pub Vec<(String, Option<String>)>);

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Fields {
    /// `id=7, region='eu'` for human eyes.
    fn display(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={}", show(v.as_deref())))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A row of the source that the destination lacks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MissingRow {
    pub key: Fields,
    pub source: Fields,
}

/// A row present on both sides with different values.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DifferentRow {
    pub key: Fields,
    /// Only the columns that differ.
    pub columns: Vec<ColumnChange>,
}

/// One column of a different row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ColumnChange {
    pub column: String,
    pub source: Option<String>,
    pub destination: Option<String>,
}

/// A row of the destination that the source lacks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExtraRow {
    pub key: Fields,
    pub destination: Fields,
}

/// The columns a comparison used.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub key: Vec<String>,
    pub compared: Vec<String>,
    pub only_in_source: Vec<String>,
    pub only_in_destination: Vec<String>,
}

/// One table pair's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub source: String,
    pub destination: String,
    pub equal: bool,
    pub key: Vec<String>,
    pub columns: Vec<String>,
    pub columns_only_in_source: Vec<String>,
    pub columns_only_in_destination: Vec<String>,
    pub source_rows: i64,
    pub destination_rows: i64,
    pub missing: Vec<MissingRow>,
    pub different: Vec<DifferentRow>,
    pub extra: Vec<ExtraRow>,
    /// The difference limit was reached: more rows may differ.
    pub truncated: bool,
    /// How many times the differing rows were looked at again.
    pub rechecks: u32,
    pub stats: Stats,
    pub elapsed_ms: u64,
}

impl TableReport {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        pair: &TablePair,
        columns: Columns,
        (source_rows, destination_rows): (i64, i64),
        differences: Vec<Difference>,
        truncated: bool,
        rechecks: u32,
        stats: Stats,
        elapsed: Duration,
    ) -> TableReport {
        let named = |row: &RowText| {
            Fields(
                columns
                    .compared
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect(),
            )
        };
        let key_fields = |key: &[String]| {
            Fields(
                columns
                    .key
                    .iter()
                    .cloned()
                    .zip(key.iter().cloned().map(Some))
                    .collect(),
            )
        };
        let (mut missing, mut different, mut extra) = (Vec::new(), Vec::new(), Vec::new());
        for d in differences {
            match d {
                Difference::Missing { key, source } => missing.push(MissingRow {
                    key: key_fields(&key),
                    source: named(&source),
                }),
                Difference::Changed {
                    key,
                    source,
                    destination,
                } => different.push(DifferentRow {
                    key: key_fields(&key),
                    columns: columns
                        .compared
                        .iter()
                        .zip(source.into_iter().zip(destination))
                        .filter(|(_, (s, d))| s != d)
                        .map(|(c, (s, d))| ColumnChange {
                            column: c.clone(),
                            source: s,
                            destination: d,
                        })
                        .collect(),
                }),
                Difference::Extra { key, destination } => extra.push(ExtraRow {
                    key: key_fields(&key),
                    destination: named(&destination),
                }),
            }
        }
        let equal = missing.is_empty()
            && different.is_empty()
            && extra.is_empty()
            && columns.only_in_source.is_empty()
            && columns.only_in_destination.is_empty();
        TableReport {
            source: pair.source.to_string(),
            destination: pair.destination.to_string(),
            equal,
            key: columns.key,
            columns: columns.compared,
            columns_only_in_source: columns.only_in_source,
            columns_only_in_destination: columns.only_in_destination,
            source_rows,
            destination_rows,
            missing,
            different,
            extra,
            truncated,
            rechecks,
            stats,
            elapsed_ms: elapsed.as_millis() as u64,
        }
    }

    /// `3 missing, 1 different, 0 extra` style one-liner, or `equal`.
    pub fn verdict(&self) -> String {
        if self.equal {
            return "equal".into();
        }
        let mut parts = vec![format!(
            "{} missing, {} different, {} extra",
            self.missing.len(),
            self.different.len(),
            self.extra.len()
        )];
        if !self.columns_only_in_source.is_empty() {
            parts.push(format!(
                "columns only in source: {}",
                self.columns_only_in_source.join(", ")
            ));
        }
        if !self.columns_only_in_destination.is_empty() {
            parts.push(format!(
                "columns only in destination: {}",
                self.columns_only_in_destination.join(", ")
            ));
        }
        if self.truncated {
            parts.push("stopped at the difference limit, there may be more".into());
        }
        parts.join("; ")
    }
}

/// Every table's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub equal: bool,
    pub tables: Vec<TableReport>,
}

/// Output formats of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Csv,
}

impl Report {
    pub(super) fn new(tables: Vec<TableReport>) -> Report {
        Report {
            equal: tables.iter().all(|t| t.equal),
            tables,
        }
    }

    /// Write the report in `format`.
    pub fn write(&self, format: Format, out: &mut dyn Write) -> io::Result<()> {
        match format {
            Format::Human => out.write_all(self.human(usize::MAX).as_bytes()),
            Format::Json => {
                serde_json::to_writer_pretty(&mut *out, self)?;
                out.write_all(b"\n")
            }
            Format::Csv => self.csv(out),
        }
    }

    /// A summary per table, listing at most `limit` rows of each kind.
    pub fn human(&self, limit: usize) -> String {
        let mut s = String::new();
        for t in &self.tables {
            let _ = writeln!(
                s,
                "{} -> {}: {} ({} source rows, {} destination rows; {} ranges compared, {} rows fetched, {:.1}s)",
                t.source,
                t.destination,
                t.verdict(),
                t.source_rows,
                t.destination_rows,
                t.stats.ranges_compared,
                t.stats.rows_fetched,
                t.elapsed_ms as f64 / 1000.0
            );
            let more = |s: &mut String, n: usize| {
                if n > limit {
                    let _ = writeln!(s, "  ... and {} more", n - limit);
                }
            };
            for m in t.missing.iter().take(limit) {
                let _ = writeln!(s, "  missing    {}", m.key.display());
            }
            more(&mut s, t.missing.len());
            for d in t.different.iter().take(limit) {
                let cols: Vec<String> = d
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {} -> {}",
                            c.column,
                            show(c.source.as_deref()),
                            show(c.destination.as_deref())
                        )
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "  different  {}: {} (source -> destination)",
                    d.key.display(),
                    cols.join("; ")
                );
            }
            more(&mut s, t.different.len());
            for e in t.extra.iter().take(limit) {
                let _ = writeln!(s, "  extra      {}", e.key.display());
            }
            more(&mut s, t.extra.len());
        }
        let differing = self.tables.iter().filter(|t| !t.equal).count();
        if self.equal {
            let _ = writeln!(s, "All {} tables are equal.", self.tables.len());
        } else {
            let _ = writeln!(s, "{differing} of {} tables differ.", self.tables.len());
        }
        s
    }

    /// One line per differing value: `table,kind,key,column,source_value,destination_value`,
    /// the key as a JSON object.
    fn csv(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "table,kind,key,column,source_value,destination_value")?;
        for t in &self.tables {
            let mut line =
                |kind: &str, key: &Fields, col: &str, s: Option<&str>, d: Option<&str>| {
                    writeln!(
                        out,
                        "{},{},{},{},{},{}",
                        csv_field(Some(&t.source)),
                        csv_field(Some(kind)),
                        csv_field(Some(&key.json())),
                        csv_field(Some(col)),
                        csv_field(s),
                        csv_field(d)
                    )
                };
            for m in &t.missing {
                for (col, v) in &m.source.0 {
                    line("missing", &m.key, col, v.as_deref(), None)?;
                }
            }
            for d in &t.different {
                for c in &d.columns {
                    line(
                        "different",
                        &d.key,
                        &c.column,
                        c.source.as_deref(),
                        c.destination.as_deref(),
                    )?;
                }
            }
            for e in &t.extra {
                for (col, v) in &e.destination.0 {
                    line("extra", &e.key, col, None, v.as_deref())?;
                }
            }
        }
        Ok(())
    }
}

/// NULL is an empty unquoted field; every value is quoted, so an empty string is `""`.
fn csv_field(v: Option<&str>) -> String {
    match v {
        None => String::new(),
        Some(v) => format!("\"{}\"", v.replace('"', "\"\"")),
    }
}

fn show(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some(v) => format!("'{}'", v.replace('\'', "''")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::TableName;

    fn report() -> Report {
        let pair = TablePair {
            source: TableName::parse("public.t").unwrap(),
            destination: TableName::parse("public.t").unwrap(),
            source_filter: None,
        };
        let s = |v: &str| Some(v.to_owned());
        let t = TableReport::new(
            &pair,
            Columns {
                key: vec!["id".into()],
                compared: vec!["id".into(), "note".into()],
                ..Columns::default()
            },
            (2, 2),
            vec![
                Difference::Missing {
                    key: vec!["1".into()],
                    source: vec![s("1"), None],
                },
                Difference::Changed {
                    key: vec!["2".into()],
                    source: vec![s("2"), s("a \"q\"")],
                    destination: vec![s("2"), s("")],
                },
                Difference::Extra {
                    key: vec!["3".into()],
                    destination: vec![s("3"), s("x")],
                },
            ],
            false,
            0,
            Stats::default(),
            Duration::from_millis(5),
        );
        Report::new(vec![t])
    }

    #[test]
    fn csv_tells_null_from_empty_and_lists_each_value() {
        let mut out = Vec::new();
        report().write(Format::Csv, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "table,kind,key,column,source_value,destination_value",
                r#""public.t","missing","{""id"":""1""}","id","1","#,
                r#""public.t","missing","{""id"":""1""}","note",,"#,
                r#""public.t","different","{""id"":""2""}","note","a ""q""","""#,
                r#""public.t","extra","{""id"":""3""}","id",,"3""#,
                r#""public.t","extra","{""id"":""3""}","note",,"x""#,
            ]
        );
    }

    #[test]
    fn json_keeps_column_order_and_nulls() {
        let v: serde_json::Value = serde_json::to_value(report()).unwrap();
        assert_eq!(v["equal"], false);
        let t = &v["tables"][0];
        assert_eq!(t["missing"][0]["source"]["note"], serde_json::Value::Null);
        assert_eq!(t["different"][0]["columns"][0]["column"], "note");
        assert_eq!(t["different"][0]["columns"][0]["destination"], "");
        let fields = Fields(vec![("z".into(), None), ("a".into(), Some("1".into()))]);
        assert_eq!(
            serde_json::to_string(&fields).unwrap(),
            r#"{"z":null,"a":"1"}"#
        );
    }

    #[test]
    fn human_summary_limits_rows_per_kind() {
        let r = report();
        let text = r.human(1);
        assert!(text.contains("1 missing, 1 different, 1 extra"), "{text}");
        assert!(
            text.contains("different  id='2': note: 'a \"q\"' -> '' (source -> destination)"),
            "{text}"
        );
        assert!(text.contains("1 of 1 tables differ."));
    }
}
