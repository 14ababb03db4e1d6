//! Lines on stderr written whole: one `write` a line, so the lines of processes sharing the
//! stream (the ranks of an `mpirun` job) interleave only between lines. `eprintln!` writes
//! each piece of its format on its own.

use std::fmt::Display;
use std::io::Write;

/// Write `text` and a newline to stderr in one write.
pub fn line(text: impl Display) {
    let line = format!("{text}\n");
    // Nothing is left to report an error of stderr to.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
