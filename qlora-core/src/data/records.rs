use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Where a record is in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A line of JSON Lines (1-based; for a JSON array, the element's index plus 1).
    Line(usize),
    /// A row of a parquet file: its row group and its row in the group (both 0-based, as
    /// pyarrow counts them).
    Row {
        /// The row group.
        group: usize,
        /// The row within the group.
        row: usize,
    },
}

/// One record of a dataset file (a JSON object, or a parquet row as one) and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The file the record is in.
    pub file: PathBuf,
    /// Where in the file.
    pub place: Place,
    /// Its fields (a parquet file's columns).
    pub fields: Map<String, Value>,
}

impl Record {
    /// `file:line`, or `file: row group G, row R`, for messages.
    pub fn location(&self) -> String {
        match self.place {
            Place::Line(line) => format!("{}:{line}", self.file.display()),
            Place::Row { group, row } => {
                format!("{}: row group {group}, row {row}", self.file.display())
            }
        }
    }

    /// An error about `field` of this record (a column, in a parquet file).
    pub fn error(&self, field: &str, message: impl std::fmt::Display) -> Error {
        let noun = match self.place {
            Place::Line(_) => "field",
            Place::Row { .. } => "column",
        };
        Error::invalid(format!("{}: {noun} `{field}`: {message}", self.location()))
    }

    /// A required string field.
    pub fn string(&self, field: &str) -> Result<&str> {
        match self.fields.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => {
                Err(self.error(field, format!("expected a string, found {}", kind(other))))
            }
            None => Err(self.error(field, "missing")),
        }
    }

    /// An optional string field (absent or null is `None`).
    pub fn optional_string(&self, field: &str) -> Result<Option<&str>> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(field).map(Some),
        }
    }
}

/// What kind of JSON value `value` is, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Read every record of `path`: JSON Lines (one object a line, blank lines skipped), or a
/// single JSON array of objects (a file whose first non-blank character is `[`).
pub fn read_json_records(path: &Path) -> Result<Vec<Record>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut first = String::new();
    // Peek at the first non-blank line to tell the two layouts apart.
    let mut lines_before = 0;
    loop {
        first.clear();
        let n = reader
            .read_line(&mut first)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 || !first.trim().is_empty() {
            break;
        }
        lines_before += 1;
    }
    if first.trim_start().starts_with('[') {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut reader, &mut rest).map_err(|e| Error::io(path, e))?;
        let text = first + &rest;
        let values: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(format!(
                "{}:{}: invalid JSON: {e}",
                path.display(),
                e.line() + lines_before
            ))
        })?;
        // serde_json does not report element lines; locate each element by index instead.
        return values
            .into_iter()
            .enumerate()
            .map(|(i, value)| match value {
                Value::Object(fields) => Ok(Record {
                    file: path.to_path_buf(),
                    place: Place::Line(i + 1),
                    fields,
                }),
                other => Err(Error::invalid(format!(
                    "{}: element {}: expected a JSON object, found {}",
                    path.display(),
                    i + 1,
                    kind(&other)
                ))),
            })
            .collect();
    }
    let mut records = Vec::new();
    let mut line_number = lines_before;
    let mut line = first;
    loop {
        line_number += 1;
        if !line.trim().is_empty() {
            let value: Value = serde_json::from_str(&line).map_err(|e| {
                // The last line, cut short: the file was truncated (a copy or a write that
                // did not finish).
                let cut = if e.is_eof() && !line.ends_with('\n') {
                    "; the file ends inside this record (truncated while it was written or \
                     copied?)"
                } else {
                    ""
                };
                Error::invalid(format!(
                    "{}:{line_number}: invalid JSON: {e}{cut}",
                    path.display()
                ))
            })?;
            match value {
                Value::Object(fields) => records.push(Record {
                    file: path.to_path_buf(),
                    place: Place::Line(line_number),
                    fields,
                }),
                other => {
                    return Err(Error::invalid(format!(
                        "{}:{line_number}: expected a JSON object, found {}",
                        path.display(),
                        kind(&other)
                    )));
                }
            }
        }
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn jsonl_and_array_with_locations() {
        let f = write("\n{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n");
        let records = read_json_records(f.path()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].place, records[1].place),
            (Place::Line(2), Place::Line(4))
        );
        assert_eq!(records[1].string("text").unwrap(), "b");
        let f = write("[{\"text\": \"a\"}, {\"x\": 1}]");
        let records = read_json_records(f.path()).unwrap();
        let err = records[1].string("text").unwrap_err().to_string();
        assert!(err.ends_with(":2: field `text`: missing"), "{err}");
        let err = records[1]
            .fields
            .get("x")
            .map(|_| records[1].string("x").unwrap_err().to_string())
            .unwrap();
        assert!(err.contains("expected a string, found a number"), "{err}");
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let f = write("{\"text\": \"a\"}\n{\"text\": \n");
        let err = read_json_records(f.path()).unwrap_err().to_string();
        assert!(err.contains(":2: invalid JSON"), "{err}");
        let f = write("{\"text\": \"a\"}\n[1]\n");
        let err = read_json_records(f.path()).unwrap_err().to_string();
        assert!(err.contains(":2: expected a JSON object"), "{err}");
    }
}
