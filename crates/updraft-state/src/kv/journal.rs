//! The journal of the `process` durability level: each group of writes is
//! appended here with one `write(2)` before its callers are answered, so it
//! survives a killed Updraft (the kernel has the bytes) without waiting for
//! a disk sync. The writer syncs the database every [`SYNC_INTERVAL`] and
//! then empties the journal; at start-up, whatever the journal still holds
//! is replayed on top of the last synced state.
//!
//! A record is the final state of one key: `[u32 length][payload]`, the
//! payload holding owner, store and key (each `u16` length + bytes) and the
//! value (`u8` 1 + `u32` length + bytes) or a deletion (`u8` 0). Replaying a
//! record twice is harmless. A record cut short at the end (the process died
//! inside the `write`) was never acknowledged and is dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use super::StoreId;

/// How long an acknowledged write may wait for its disk sync.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The final state of one key after a group of writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) store: StoreId,
    pub(super) key: String,
    /// `None`: deleted.
    pub(super) value: Option<Vec<u8>>,
}

pub(super) struct Journal {
    file: File,
}

impl Journal {
    /// Opens (or creates) the journal and reads the records it holds.
    pub(super) fn open(path: &Path) -> io::Result<(Journal, Vec<Record>)> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok((Journal { file }, decode(&bytes)))
    }

    /// Appends `records` with one write.
    pub(super) fn append(&mut self, records: &[Record]) -> io::Result<()> {
        let mut buf = Vec::new();
        for record in records {
            encode(record, &mut buf)?;
        }
        self.file.write_all(&buf)
    }

    /// Empties the journal once the database holds everything in it.
    pub(super) fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) -> io::Result<()> {
    let len = u16::try_from(s.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

fn encode(record: &Record, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut payload = Vec::new();
    put_str(&mut payload, &record.store.owner)?;
    put_str(&mut payload, &record.store.name)?;
    put_str(&mut payload, &record.key)?;
    match &record.value {
        Some(value) => {
            payload.push(1);
            let len = u32::try_from(value.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "value too large"))?;
            payload.extend_from_slice(&len.to_le_bytes());
            payload.extend_from_slice(value);
        }
        None => payload.push(0),
    }
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&payload);
    Ok(())
}

/// Reads records until the bytes run out or stop making sense (a torn tail).
fn decode(mut bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    while let Some((payload, rest)) = take_len::<4>(bytes) {
        bytes = rest;
        match decode_one(payload) {
            Some(record) => records.push(record),
            None => break,
        }
    }
    records
}

/// Splits off a little-endian length of `N` bytes and that many bytes.
fn take_len<const N: usize>(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<N>()?;
    let mut wide = [0u8; 8];
    wide[..N].copy_from_slice(len);
    let len = usize::try_from(u64::from_le_bytes(wide)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn decode_one(payload: &[u8]) -> Option<Record> {
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).ok();
    let (owner, rest) = take_len::<2>(payload)?;
    let (name, rest) = take_len::<2>(rest)?;
    let (key, rest) = take_len::<2>(rest)?;
    let value = match rest.split_first()? {
        (1, rest) => Some(take_len::<4>(rest)?.0.to_vec()),
        (0, _) => None,
        _ => return None,
    };
    Some(Record {
        store: StoreId::new(text(owner)?, text(name)?),
        key: text(key)?,
        value,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.journal");
        let records = vec![
            Record {
                store: StoreId::new("local", "default"),
                key: "a/1".into(),
                value: Some(b"one".to_vec()),
            },
            Record {
                store: StoreId::new("other", "x"),
                key: "k".into(),
                value: None,
            },
        ];
        let (mut journal, old) = Journal::open(&path).unwrap();
        assert!(old.is_empty());
        journal.append(&records).unwrap();
        drop(journal);
        let (_, read) = Journal::open(&path).unwrap();
        assert_eq!(read, records);

        // Cut the last record short: only the first one is replayed.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let (mut journal, read) = Journal::open(&path).unwrap();
        assert_eq!(read, records[..1]);
        journal.clear().unwrap();
        drop(journal);
        assert!(Journal::open(&path).unwrap().1.is_empty());
    }
}
