//! `cdc extract` / `cdc load`: a table (or the rows one sync pass would move) as files, for
//! carrying data across an air gap and for looking at what a pass would load.
//!
//! ```text
//!  DIR/schema.table.csv          COPY … (FORMAT csv, HEADER, FORCE_QUOTE *): every value
//!                                quoted, so an unquoted empty field is NULL and "" is ''
//!  DIR/schema.table.schema.json  columns (name, type), key, rows, what was extracted;
//!                                written last: its presence means the CSV is complete
//! ```
//!
//! `load` creates the destination table from the schema file if it is missing and upserts the
//! rows by key (inserts for a keyless table) through a destination session, a transaction per
//! batch: loading the same files twice leaves the same rows.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::choose;
use super::read::{self, Since};
use super::write::Writer;
use crate::config::{Config, Strategy};
use crate::decode::Datum;
use crate::destination::SnapshotTable;
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use crate::model::schema::{ColumnDef, TableSchema};
use crate::source::postgres::catalog;
use crate::source::postgres::copy_out::CopySource;
use crate::source::sqlite::read::Reading;
use crate::source::sqlite::select::{self, select_sql, source_key};
use crate::source::sqlite::SqliteSource;
use crate::source::RowSource;

/// The schema file.
#[derive(Debug, Serialize, Deserialize)]
pub struct SchemaFile {
    pub source: String,
    pub columns: Vec<SchemaColumn>,
    pub primary_key: Vec<String>,
    pub rows: u64,
    /// `table`, or the strategy whose delta this is (`modified since …`).
    pub extracted: String,
    /// CSV conventions, for people reading the files.
    pub format: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SchemaColumn {
    pub name: String,
    /// The source's `format_type`.
    #[serde(rename = "type")]
    pub type_sql: String,
    pub type_oid: u32,
    pub not_null: bool,
    #[serde(default)]
    pub dims: usize,
}

/// What `extract` wrote.
pub struct Extracted {
    pub data: PathBuf,
    pub schema: PathBuf,
    pub rows: u64,
}

pub(super) fn paths(dir: &Path, table: &TableName) -> (PathBuf, PathBuf) {
    // Names are written as they are (quoted parts unquoted): `public.orders.csv`.
    let base = format!("{}.{}", table.schema, table.name).replace('/', "_");
    (
        dir.join(format!("{base}.csv")),
        dir.join(format!("{base}.schema.json")),
    )
}

/// Write `table` (a configured table) to `dir`; with `delta`, only the rows its sync strategy
/// would move from its stored position.
pub async fn extract(config: &Config, table: &str, dir: &Path, delta: bool) -> Result<Extracted> {
    if let Some(path) = config.sqlite_source()? {
        return extract_sqlite(config, &path, table, dir, delta).await;
    }
    let chosen = super::choose(config, &[table.to_owned()])?;
    let t = &chosen[0];
    let src_info = config.source_conninfo()?;
    let catalog = crate::pg::connect_qualified(&src_info).await?;
    let schema = catalog::read_table(&catalog, &t.source)
        .await?
        .ok_or_else(|| Error::definite(format!("source table {} does not exist", t.source)))?;
    let (since, what) = if delta {
        delta_since(config, t, &schema).await?
    } else {
        (Since::All, "table".to_owned())
    };
    let order = match &since {
        Since::KeyAbove(_) => read::order_column(Strategy::NewRows, &schema, None),
        Since::ModifiedFrom(_) => t.config.modified_column.as_deref(),
        _ => None,
    };
    let select = read::select_sql(&schema, &since, order, t.config.filter.as_deref(), None);
    let names: Vec<String> = schema
        .copied_columns()
        .map(|c| crate::model::sql::quote_ident(&c.name))
        .collect();
    let copy = format!(
        "COPY (SELECT {} FROM ({select}) AS s) TO STDOUT WITH (FORMAT csv, HEADER, FORCE_QUOTE *)",
        names.join(", ")
    );
    std::fs::create_dir_all(dir).map_err(file_error(dir))?;
    let (data, schema_path) = paths(dir, &t.destination);
    // A schema file left from an earlier extract would vouch for a half-written CSV.
    let _ = std::fs::remove_file(&schema_path);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&data).map_err(file_error(&data))?);
    let mut src = CopySource::connect(&src_info).await?;
    src.copy_out(&copy).await?;
    // Records end at a newline outside quotes (a value may hold newlines; an escaped quote
    // `""` toggles twice): counted as the chunks pass, the header included.
    let (mut records, mut quoted) = (0u64, false);
    while let Some(chunk) = src.next_chunk().await? {
        for &b in chunk.iter() {
            match b {
                b'"' => quoted = !quoted,
                b'\n' if !quoted => records += 1,
                _ => {}
            }
        }
        out.write_all(&chunk).map_err(file_error(&data))?;
    }
    src.close().await;
    out.flush().map_err(file_error(&data))?;
    drop(out);
    let rows = records.saturating_sub(1);
    let file = SchemaFile {
        source: t.source.to_string(),
        columns: schema
            .copied_columns()
            .map(|c| SchemaColumn {
                name: c.name.clone(),
                type_sql: c.type_sql.clone(),
                type_oid: c.type_oid,
                not_null: c.not_null,
                dims: c.dims,
            })
            .collect(),
        primary_key: schema.primary_key.clone(),
        rows,
        extracted: what,
        format: "CSV, header row; every value quoted; an unquoted empty field is NULL".into(),
    };
    let json = serde_json::to_string_pretty(&file).expect("schema file serializes");
    std::fs::write(&schema_path, json).map_err(file_error(&schema_path))?;
    Ok(Extracted {
        data,
        schema: schema_path,
        rows,
    })
}

/// Where a delta starts: the table's strategy from its stored position.
async fn delta_since(
    config: &Config,
    t: &super::Chosen<'_>,
    schema: &TableSchema,
) -> Result<(Since, String)> {
    let strategy = t.config.strategy.unwrap_or(Strategy::Diff);
    let dest = crate::destination::open(config).await?;
    let name = t.destination.to_string();
    let position = dest
        .sync_states()
        .await?
        .into_iter()
        .find(|s| s.destination_table == name && s.strategy == strategy.name())
        .and_then(|s| s.position);
    let Some(p) = position else {
        return Ok((Since::All, format!("{strategy}: every row (no pass yet)")));
    };
    let since = match strategy {
        Strategy::NewRows if schema.primary_key.len() == 1 => Since::KeyAbove(p.clone()),
        Strategy::Modified => Since::ModifiedFrom(p.clone()),
        Strategy::Xmin => Since::XminFrom {
            horizon: p.parse().unwrap_or(0),
            // Everything up to now: the extract's own snapshot decides.
            xmax: p.parse::<u64>().unwrap_or(0) + (1 << 31) - 1,
        },
        other => {
            return Err(Error::definite(format!(
                "--delta reads from a stored position, which strategy {other} of {} does not keep: \
                 use new_rows, modified or xmin, or extract the whole table",
                t.source
            )))
        }
    };
    Ok((since, format!("{strategy} since {p}")))
}

/// Load the files of `table` from `dir` into its destination table.
pub async fn load(config: &Config, table: &str, dir: &Path) -> Result<u64> {
    let chosen = super::choose(config, &[table.to_owned()])?;
    let t = &chosen[0];
    let (data, schema_path) = paths(dir, &t.destination);
    let text = std::fs::read_to_string(&schema_path).map_err(|e| {
        Error::definite(format!(
            "cannot read {}: {e} (`cdc extract` writes it last: without it the extract is incomplete)",
            schema_path.display()
        ))
    })?;
    let file: SchemaFile = serde_json::from_str(&text).map_err(|e| {
        Error::definite(format!(
            "{} is not a cdc schema file: {e}",
            schema_path.display()
        ))
    })?;
    let schema = TableSchema {
        name: TableName::parse(&file.source)
            .map_err(|e| Error::definite(format!("{}: source {e}", schema_path.display())))?,
        oid: 0,
        columns: file
            .columns
            .iter()
            .map(|c| ColumnDef {
                name: c.name.clone(),
                type_sql: c.type_sql.clone(),
                type_oid: c.type_oid,
                not_null: c.not_null,
                dims: c.dims,
                generated: None,
            })
            .collect(),
        primary_key: file.primary_key.clone(),
        key_include: Vec::new(),
        replica_identity: 'd',
        indexes: Vec::new(),
        estimated_rows: file.rows as i64,
        pages: 0,
        partitioned: false,
        leaves: Vec::new(),
    };
    let dest = crate::destination::open(config).await?;
    if !dest.table_exists(&t.destination).await? {
        let target = SnapshotTable {
            schema: &schema,
            destination: &t.destination,
        };
        dest.create_tables(std::slice::from_ref(&target), &[], false)
            .await?;
        dest.finish_table(None, &target, 0).await?;
    }
    let batch = config
        .apply
        .batch_max_rows
        .unwrap_or(dest.default_batch_rows());
    let mut writer = Writer::open(dest.as_ref(), &schema, &t.destination, batch).await?;
    let mut csv = CsvReader::open(&data)?;
    let header = csv
        .next_record()?
        .ok_or_else(|| Error::definite(format!("{} is empty (no header row)", data.display())))?;
    let names: Vec<Option<String>> = schema
        .copied_columns()
        .map(|c| Some(c.name.clone()))
        .collect();
    if header != names {
        return Err(Error::definite(format!(
            "the header of {} does not match the columns in {}",
            data.display(),
            schema_path.display()
        )));
    }
    let keyed = !schema.primary_key.is_empty();
    while let Some(record) = csv.next_record()? {
        if record.len() != names.len() {
            return Err(Error::definite(format!(
                "{}: record {} has {} fields, the header {}",
                data.display(),
                writer.written + 1,
                record.len(),
                names.len()
            )));
        }
        let row: Vec<Datum> = record
            .into_iter()
            .map(|v| match v {
                Some(v) => Datum::Text(bytes::Bytes::from(v)),
                None => Datum::Null,
            })
            .collect();
        if keyed {
            writer.upsert(row).await?;
        } else {
            writer.insert(row).await?;
        }
    }
    writer.finish().await
}

/// Records of a CSV file as COPY writes it: `Some("")` for `""`, `None` for an empty field.
pub struct CsvReader {
    input: BufReader<Box<dyn Read + Send>>,
    path: PathBuf,
}

impl CsvReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(file_error(path))?;
        Ok(CsvReader {
            input: BufReader::with_capacity(1 << 20, Box::new(file)),
            path: path.to_owned(),
        })
    }

    #[cfg(test)]
    fn from_bytes(bytes: &'static [u8]) -> Self {
        CsvReader {
            input: BufReader::new(Box::new(bytes)),
            path: PathBuf::from("test"),
        }
    }

    /// The next record, `None` at the end of the file. A record is read a line at a time
    /// until its quotes close (values may hold newlines).
    pub fn next_record(&mut self) -> Result<Option<Vec<Option<String>>>> {
        let mut line = Vec::new();
        let path = self.path.clone();
        if self
            .input
            .read_until(b'\n', &mut line)
            .map_err(file_error(&path))?
            == 0
        {
            return Ok(None);
        }
        loop {
            if let Some(fields) = parse_record(&line, &path)? {
                return Ok(Some(fields));
            }
            if self
                .input
                .read_until(b'\n', &mut line)
                .map_err(file_error(&path))?
                == 0
            {
                return Err(Error::definite(format!(
                    "{}: the file ends inside a quoted value (truncated?)",
                    path.display()
                )));
            }
        }
    }
}

/// The fields of one record, or `None` while a quoted value is still open at the end.
fn parse_record(bytes: &[u8], path: &Path) -> Result<Option<Vec<Option<String>>>> {
    let mut fields = Vec::new();
    let mut field: Vec<u8> = Vec::new();
    let (mut quoted, mut in_quotes) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_quotes {
            match (b, bytes.get(i + 1)) {
                (b'"', Some(b'"')) => {
                    field.push(b'"');
                    i += 1;
                }
                (b'"', _) => in_quotes = false,
                _ => field.push(b),
            }
        } else {
            match b {
                b'"' => (in_quotes, quoted) = (true, true),
                b',' => {
                    fields.push(finish(&mut field, quoted, path)?);
                    quoted = false;
                }
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => {}
                b'\n' => break,
                _ => field.push(b),
            }
        }
        i += 1;
    }
    if in_quotes {
        return Ok(None);
    }
    fields.push(finish(&mut field, quoted, path)?);
    Ok(Some(fields))
}

fn finish(field: &mut Vec<u8>, quoted: bool, path: &Path) -> Result<Option<String>> {
    let bytes = std::mem::take(field);
    if bytes.is_empty() && !quoted {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Error::definite(format!("{}: a value is not UTF-8", path.display())))
}

/// File problems are the user's to fix (a path, a permission), not worth retrying.
pub(super) fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::definite(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_keeps_null_apart_from_the_empty_string() {
        let mut r =
            CsvReader::from_bytes(b"\"a\",\"b\",\"c\"\n\"1\",,\"\"\n\"x,\"\"y\"\"\nz\",\"\",\n");
        assert_eq!(
            r.next_record().unwrap(),
            Some(vec![Some("a".into()), Some("b".into()), Some("c".into())])
        );
        assert_eq!(
            r.next_record().unwrap(),
            Some(vec![Some("1".into()), None, Some(String::new())])
        );
        assert_eq!(
            r.next_record().unwrap(),
            Some(vec![Some("x,\"y\"\nz".into()), Some(String::new()), None])
        );
        assert_eq!(r.next_record().unwrap(), None);
    }

    #[test]
    fn a_truncated_file_is_an_error() {
        let mut r = CsvReader::from_bytes(b"\"a\"\n\"unfinished");
        r.next_record().unwrap();
        assert!(r.next_record().is_err());
    }
}

/// `cdc extract` from a SQLite file: the whole table as CSV (values as the destination would
/// get them: the declared types' conversions) and its schema file, written last.
async fn extract_sqlite(
    config: &Config,
    path: &Path,
    table_name: &str,
    dir: &Path,
    delta: bool,
) -> Result<Extracted> {
    if delta {
        return Err(Error::definite(
            "--delta reads a Postgres source's positions; from a SQLite file extract the whole table".into(),
        ));
    }
    let chosen = choose(config, &[table_name.to_owned()])?;
    let t = &chosen[0];
    // Only the file is needed: an extract carries data to a destination out of reach.
    let (source, mut table) = {
        let (path, name) = (path.to_owned(), t.source.clone());
        tokio::task::spawn_blocking(move || {
            let source = SqliteSource::open(&path)?;
            let table = crate::source::sqlite::catalog::read_table(&source.conn, &name)?;
            Ok::<_, Error>((source, table))
        })
        .await
        .map_err(Error::stopped("SQLite reader"))??
    };
    let mut table = table
        .take()
        .ok_or_else(|| Error::definite(format!("the SQLite file has no table {}", t.source)))?;
    table.rename(&t.config.columns, &t.config.ignore_columns)?;
    let source = Arc::new(Mutex::new(source));
    std::fs::create_dir_all(dir).map_err(file_error(dir))?;
    let (data, schema_path) = paths(dir, &t.destination);
    let _ = std::fs::remove_file(&schema_path);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&data).map_err(file_error(&data))?);
    let names: Vec<String> = table
        .schema
        .columns
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let quote = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
    let header: Vec<String> = names.iter().map(|n| quote(n)).collect();
    writeln!(out, "{}", header.join(",")).map_err(file_error(&data))?;
    let key = source_key(&table);
    let sql = select_sql(&table, t.config.filter.as_deref(), None, &key, None);
    let q = select::into_new_table(&table, sql, &key);
    let name = &t.source;
    let mut reading = Reading::start(
        source,
        q,
        Box::new(move |r| Err(Error::definite(format!("{name}: {r}")))),
    );
    let mut count = 0u64;
    let written = async {
        while let Some(rows) = reading.next_rows().await? {
            for row in rows {
                let fields: Vec<String> = row
                    .iter()
                    .map(|d| crate::model::change::text(d).map(quote).unwrap_or_default())
                    .collect();
                writeln!(out, "{}", fields.join(",")).map_err(file_error(&data))?;
                count += 1;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    let done = reading.finish().await;
    written?;
    done?;
    out.flush().map_err(file_error(&data))?;
    drop(out);
    let file = SchemaFile {
        source: t.source.to_string(),
        columns: table
            .schema
            .columns
            .iter()
            .map(|c| SchemaColumn {
                name: c.name.clone(),
                type_sql: c.type_sql.clone(),
                type_oid: c.type_oid,
                not_null: c.not_null,
                dims: 0,
            })
            .collect(),
        primary_key: table.schema.primary_key.clone(),
        rows: count,
        extracted: "table".into(),
        format: "CSV, header row; every value quoted; an unquoted empty field is NULL".into(),
    };
    let json = serde_json::to_string_pretty(&file).expect("schema file serializes");
    std::fs::write(&schema_path, json).map_err(file_error(&schema_path))?;
    Ok(Extracted {
        data,
        schema: schema_path,
        rows: count,
    })
}
