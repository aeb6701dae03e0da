//! Map a field path like `tables[1].source` back to its line in the TOML text.

use toml::de::{DeTable, DeValue};

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The line of the value at `path`, or of its nearest enclosing table that is in the file;
/// 0 when no part of the path is in the file (the value is a default).
pub(super) fn line_of(text: &str, path: &str) -> usize {
    let Ok(root) = DeTable::parse(text) else {
        return 0;
    };
    let mut found = 0;
    let mut table = root.get_ref();
    let mut segments = path.split('.').peekable();
    while let Some(seg) = segments.next() {
        let (key, index) = match seg.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref() == key) else {
            break;
        };
        found = line_col(text, k.span().start).0;
        let mut value = v;
        if let (Some(i), DeValue::Array(items)) = (index, value.get_ref()) {
            match items.get(i) {
                Some(item) => {
                    value = item;
                    found = line_col(text, item.span().start).0;
                }
                None => break,
            }
        }
        match value.get_ref() {
            DeValue::Table(t) if segments.peek().is_some() => table = t,
            _ => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_and_array_fields() {
        let text = "[source]\nurl = \"x\"\nslot = \"s\"\n\n[[tables]]\nsource = \"a\"\n\n[[tables]]\nsource = \"b\"\n";
        assert_eq!(line_of(text, "source.slot"), 3);
        assert_eq!(line_of(text, "tables[1].source"), 9);
        assert_eq!(line_of(text, "tables[0].source"), 6);
        // A defaulted field points at its table.
        assert_eq!(line_of(text, "source.publication"), 1);
        assert_eq!(line_of(text, "apply.batch_max_rows"), 0);
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
