//! Reading datasets: JSON Lines or a JSON array of objects, with errors that name file and line.

mod records;

pub use records::{Record, read_records};
