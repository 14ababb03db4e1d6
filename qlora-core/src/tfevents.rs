//! TensorBoard event files (`events.out.tfevents.*`), as TensorFlow and PyTorch's
//! `SummaryWriter` write them: TFRecord framing (a little-endian `u64` length, the masked CRC32C
//! of those 8 bytes, the record, the masked CRC32C of the record) around `Event` protobufs
//! (`tensorflow/core/util/event.proto`): first `file_version: "brain.Event:2"`, then one event a
//! step whose `Summary` holds a `simple_value` per scalar. `wandb sync DIR` uploads them.
//!
//! Every event is written and flushed at once, so a killed run keeps its curves. A run that
//! resumes writes a new file that opens with a `SessionLog` `START` at the step it continues
//! from: TensorBoard then drops what earlier files hold from that step on (the steps the killed
//! run took after its last checkpoint), as it does for TensorFlow's restarted runs.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::error::{Error, Result};

/// `tensorflow.Event`: the fields written here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// `brain.Event:2` in a file's first event.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// Scalars.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    /// A session starting (a resumed run); field 6 is the deprecated `log_message`.
    #[prost(message, optional, tag = "7")]
    pub session_log: Option<SessionLog>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a scalar.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// The curve's name (`train/loss`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The scalar.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// 1 is `START`.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `SessionLog.START`.
pub const SESSION_START: i32 = 1;

/// TFRecord's masked CRC32C.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its CRC, the data, its CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The records of a TFRecord file, each checked against its CRCs; an error names the record's
/// offset.
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let bad = |what: &str| Error::file(path, format!("record at byte {at}: {what}"));
        let header = bytes
            .get(at..at + 12)
            .ok_or_else(|| bad("truncated header"))?;
        let (len, len_crc) = header.split_at(8);
        if masked_crc32c(len) != u32::from_le_bytes(len_crc.try_into().expect("4 bytes")) {
            return Err(bad("length CRC mismatch"));
        }
        let len = usize::try_from(u64::from_le_bytes(len.try_into().expect("8 bytes")))
            .map_err(|_| bad("length too large"))?;
        let data = at
            .checked_add(12 + len)
            .and_then(|end| bytes.get(at + 12..end))
            .ok_or_else(|| bad("truncated data"))?;
        let crc = bytes
            .get(at + 12 + len..at + 16 + len)
            .ok_or_else(|| bad("truncated data CRC"))?;
        if masked_crc32c(data) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("data CRC mismatch"));
        }
        records.push(data.to_vec());
        at += 16 + len;
    }
    Ok(records)
}

/// The events of an event file.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    read_records(path)?
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Event::decode(r.as_slice())
                .map_err(|e| Error::file(path, format!("record {}: not an Event: {e}", i + 1)))
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.contains(['/', '\\']))
        .unwrap_or_else(|| "localhost".into())
}

/// An open event file.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// A new `events.out.tfevents.SECONDS.HOST.PID.N` in `dir` (created if needed). With
    /// `resumed_from`, the file opens with a session start at the step after it, so TensorBoard
    /// forgets what earlier files logged from there on.
    pub fn create(dir: &Path, resumed_from: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let wall_time = now();
        let stem = format!(
            "events.out.tfevents.{}.{}.{}",
            wall_time as u64,
            hostname(),
            std::process::id()
        );
        let (file, path) = (0..)
            .find_map(|n| {
                let path = dir.join(format!("{stem}.{n}"));
                match File::options().write(true).create_new(true).open(&path) {
                    Ok(file) => Some(Ok((file, path))),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    Err(e) => Some(Err(Error::io(&path, e))),
                }
            })
            .expect("an unused name")?;
        let mut writer = EventWriter { file, path };
        writer.write(&Event {
            wall_time,
            file_version: Some("brain.Event:2".into()),
            ..Event::default()
        })?;
        if let Some(step) = resumed_from {
            writer.write(&Event {
                wall_time,
                step: step as i64 + 1,
                session_log: Some(SessionLog {
                    status: SESSION_START,
                }),
                ..Event::default()
            })?;
        }
        Ok(writer)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write one event and flush it.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        self.file
            .write_all(&frame(&event.encode_to_vec()))
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The scalars of one step.
    pub fn scalars(&mut self, step: u64, values: &[(impl AsRef<str>, f64)]) -> Result<()> {
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            summary: Some(Summary {
                value: values
                    .iter()
                    .map(|(tag, v)| SummaryValue {
                        tag: tag.as_ref().into(),
                        simple_value: Some(*v as f32),
                    })
                    .collect(),
            }),
            ..Event::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TFRecord's framing of known bytes: the CRC32C check value and the mask of TensorFlow's
    /// `crc32c::Mask`.
    #[test]
    fn crc_and_framing() {
        const MASKED: u32 = 0xc78a_b0e5;
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // TensorFlow's Mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
        assert_eq!(masked_crc32c(b"123456789"), MASKED);
        let framed = frame(b"abc");
        assert_eq!(framed.len(), 3 + 16);
        assert_eq!(&framed[..8], &3u64.to_le_bytes());
    }

    #[test]
    fn events_round_trip_and_corruption_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), Some(4)).unwrap();
        w.scalars(5, &[("train/loss", 1.5), ("train/learning_rate", 2e-4)])
            .unwrap();
        let path = w.path().to_path_buf();
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("events.out.tfevents.")
        );
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(
            (
                events[1].step,
                events[1].session_log.as_ref().unwrap().status
            ),
            (5, 1)
        );
        let values = &events[2].summary.as_ref().unwrap().value;
        assert_eq!(events[2].step, 5);
        assert_eq!(values[0].tag, "train/loss");
        assert_eq!(values[0].simple_value, Some(1.5));
        assert_eq!(values[1].simple_value, Some(2e-4));

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("data CRC mismatch"), "{err}");
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let err = read_events(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
