//! Snowflake's Arrow results as text rows. cdc's own queries cast what they read to VARCHAR,
//! so the columns are strings; numbers and booleans (row counts, status answers) print as
//! Arrow's display does.

use arrow_array::{Array, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_ipc::reader::StreamReader;

use super::client::Rows;
use crate::error::{Cause, Error, Result};

fn bad(detail: impl std::fmt::Display) -> Error {
    Error::from(Cause::Protocol {
        context: "reading a Snowflake Arrow result".into(),
        detail: detail.to_string(),
    })
}

/// Every row of an Arrow IPC stream.
pub fn arrow_rows(stream: &[u8]) -> Result<Rows> {
    let reader = StreamReader::try_new(std::io::Cursor::new(stream), None).map_err(bad)?;
    let mut rows = Vec::new();
    for batch in reader {
        append(&batch.map_err(bad)?, &mut rows)?;
    }
    Ok(rows)
}

fn append(batch: &RecordBatch, rows: &mut Rows) -> Result<()> {
    let options = FormatOptions::default();
    let columns: Vec<(&dyn Array, ArrayFormatter<'_>)> = batch
        .columns()
        .iter()
        .map(|c| {
            ArrayFormatter::try_new(c.as_ref(), &options)
                .map(|f| (c.as_ref(), f))
                .map_err(bad)
        })
        .collect::<Result<_>>()?;
    for i in 0..batch.num_rows() {
        rows.push(
            columns
                .iter()
                .map(|(a, f)| (!a.is_null(i)).then(|| f.value(i).to_string()))
                .collect(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_ipc::writer::StreamWriter;
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn strings_numbers_and_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a'b"), None])),
                Arc::new(Int64Array::from(vec![None, Some(42)])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut w = StreamWriter::try_new(&mut out, &schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        assert_eq!(
            arrow_rows(&out).unwrap(),
            vec![
                vec![Some("a'b".to_owned()), None],
                vec![None, Some("42".to_owned())]
            ]
        );
        assert!(arrow_rows(b"not arrow").is_err());
    }
}
