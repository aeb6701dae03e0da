//! Rows of Postgres `COPY ... TO STDOUT` text format: one row per line, fields separated by
//! tabs, `\N` for NULL, backslash escapes for control characters and the backslash itself.
//! Chunks may split a row anywhere; `RowReader` keeps the unfinished tail for the next one.

/// Splits COPY text chunks into rows of fields (`None` = NULL).
#[derive(Default)]
pub struct RowReader {
    tail: Vec<u8>,
}

impl RowReader {
    /// Feed one chunk; every complete row in it is handed to `row`.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut row: impl FnMut(Vec<Option<String>>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut data = chunk;
        if !self.tail.is_empty() {
            let Some(end) = chunk.iter().position(|&b| b == b'\n') else {
                self.tail.extend_from_slice(chunk);
                return Ok(());
            };
            self.tail.extend_from_slice(&chunk[..end]);
            let line = std::mem::take(&mut self.tail);
            row(parse_line(&line)?)?;
            data = &chunk[end + 1..];
        }
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            row(parse_line(&data[..end])?)?;
            data = &data[end + 1..];
        }
        self.tail.extend_from_slice(data);
        Ok(())
    }

    /// After the last chunk: an unfinished row is an error.
    pub fn finish(&self) -> Result<(), String> {
        if self.tail.is_empty() {
            Ok(())
        } else {
            Err("COPY output ended in the middle of a row".into())
        }
    }
}

/// One line into its fields.
pub fn parse_line(line: &[u8]) -> Result<Vec<Option<String>>, String> {
    line.split(|&b| b == b'\t').map(parse_field).collect()
}

fn parse_field(raw: &[u8]) -> Result<Option<String>, String> {
    if raw == b"\\N" {
        return Ok(None);
    }
    if !raw.contains(&b'\\') {
        return String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|_| "COPY field is not valid UTF-8".into());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let c = *raw.get(i + 1).ok_or("COPY field ends with a backslash")?;
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| "COPY field is not valid UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_nulls_and_escapes() {
        assert_eq!(
            parse_line(b"1\t\\N\ta\\tb\\\\c\\nd\t\t\\x41\\101").unwrap(),
            vec![
                Some("1".into()),
                None,
                Some("a\tb\\c\nd".into()),
                Some(String::new()),
                Some("AA".into())
            ]
        );
        assert_eq!(
            parse_line("é\\\\N".as_bytes()).unwrap(),
            vec![Some("é\\N".into())]
        );
    }

    #[test]
    fn rows_split_across_chunks() {
        let data = b"1\tone\n2\ttwo\n3\tth\\nree\n";
        for cut in 0..data.len() {
            let mut r = RowReader::default();
            let mut rows = Vec::new();
            r.feed(&data[..cut], |row| {
                rows.push(row);
                Ok(())
            })
            .unwrap();
            r.feed(&data[cut..], |row| {
                rows.push(row);
                Ok(())
            })
            .unwrap();
            r.finish().unwrap();
            assert_eq!(rows.len(), 3, "cut at {cut}");
            assert_eq!(rows[2][1].as_deref(), Some("th\nree"));
        }
        let mut r = RowReader::default();
        r.feed(b"1\tpartial", |_| Ok(())).unwrap();
        assert!(r.finish().is_err());
    }
}
