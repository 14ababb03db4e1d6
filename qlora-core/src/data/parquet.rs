//! Parquet files (what the Hugging Face Hub and `datasets` store datasets as): every row becomes
//! a record whose fields are its columns, nested lists and structs as JSON arrays and objects
//! (a `messages` column of `list<struct<role, content>>` reads as the JSON Lines form does).

use std::fs::File;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;

use super::records::{Place, Record};
use crate::error::{Error, Result};

/// The magic bytes a parquet file starts and ends with.
const MAGIC: &[u8; 4] = b"PAR1";

/// Whether `path` names a parquet file (by its extension).
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Every row of the parquet file `path`, located by row group and row. A file that is not
/// parquet (or is cut short) and a row that cannot be decoded are errors naming the file (and
/// the row group and row); a damaged file the parquet library panics on is one too.
pub fn read_parquet(path: &Path) -> Result<Vec<Record>> {
    std::panic::catch_unwind(|| read_rows(path)).unwrap_or_else(|_| {
        Err(Error::file(
            path,
            "not a readable parquet file: the parquet library failed on it (damaged?)",
        ))
    })
}

fn read_rows(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut &file, &mut head)
        .map_err(|_| Error::file(path, "not a parquet file (too short)"))?;
    if &head != MAGIC {
        return Err(Error::file(path, "not a parquet file (no PAR1 header)"));
    }
    let reader = SerializedFileReader::new(file).map_err(|e| {
        Error::file(
            path,
            format!("not a readable parquet file ({len} bytes; truncated?): {e}"),
        )
    })?;
    let metadata = reader.metadata();
    // Not sized by the footer's row count: a damaged footer may claim any number.
    let mut records = Vec::new();
    for group in 0..metadata.num_row_groups() {
        let at = |row: usize| Record {
            file: path.to_path_buf(),
            place: Place::Row { group, row },
            fields: Default::default(),
        };
        let bad = |row: usize, e: parquet::errors::ParquetError| {
            Error::invalid(format!("{}: cannot read the row: {e}", at(row).location()))
        };
        let row_group = reader.get_row_group(group).map_err(|e| bad(0, e))?;
        let iter = row_group.get_row_iter(None).map_err(|e| bad(0, e))?;
        for (row, value) in iter.enumerate() {
            let value = value.map_err(|e| bad(row, e))?;
            let fields = match value.to_json_value() {
                Value::Object(fields) => fields,
                _ => unreachable!("a row is a group"),
            };
            records.push(Record { fields, ..at(row) });
        }
    }
    Ok(records)
}
