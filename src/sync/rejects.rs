//! `--on-error`: where the rows of a SQLite source whose values do not fit their
//! destination columns go — an error naming table, key, column and value, or a line of JSON
//! in the rejects file while the rest of the table goes on.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::OnError;
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use crate::source::sqlite::read::{OnReject, Reject};

/// Where `--on-error` sends rejected rows.
pub(super) struct Rejects {
    on_error: OnError,
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl Rejects {
    pub(super) fn new(on_error: OnError, path: PathBuf) -> Self {
        Rejects {
            on_error,
            path,
            file: Mutex::new(None),
        }
    }

    /// A rejected row of `table`: an error, or a line in the rejects file (counted).
    fn take(&self, table: &TableName, r: Reject, count: &AtomicU64) -> Result<()> {
        if self.on_error == OnError::Fail {
            return Err(Error::definite(format!(
                "{table}: {r}. Fix the value in the SQLite file (or the destination column's type), \
                 or run with --on-error skip to write such rows to a rejects file and go on"
            )));
        }
        count.fetch_add(1, Ordering::Relaxed);
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            *file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(Error::io(format!(
                        "cannot write the rejects file {}",
                        self.path.display()
                    )))?,
            );
        }
        let line = serde_json::json!({
            "table": table.to_string(),
            "key": r.key,
            "column": r.column,
            "value": r.value,
            "problem": r.problem,
        });
        let f = file.as_mut().expect("opened above");
        writeln!(f, "{line}").map_err(Error::io("writing the rejects file"))?;
        tracing::warn!(%table, row = %r, "row written to the rejects file");
        Ok(())
    }

    /// What a read of `table` does with a rejected row.
    pub(super) fn handler<'a>(
        &'a self,
        table: &'a TableName,
        count: &'a AtomicU64,
    ) -> OnReject<'a> {
        Box::new(move |r| self.take(table, r, count))
    }
}
