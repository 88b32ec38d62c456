//! The journal of the `process` durability level: each write is appended
//! here with one `write(2)` before its caller is answered, so it survives a
//! killed Updraft (the kernel has the bytes) without waiting for a disk
//! sync. Every [`SYNC_INTERVAL`] the sync thread switches to a new journal
//! file, commits what the old one covers to the database durably, and
//! deletes it; at start-up, whatever journal files remain are replayed,
//! oldest first, on top of the last synced state.
//!
//! Files are `kv.journal.N`, N rising. A record is the final state of one
//! key: `[u32 length][payload]`, the payload holding owner, store and key
//! (each `u16` length + bytes) and the value (`u8` 1 + `u32` length +
//! bytes) or a deletion (`u8` 0). Replaying a file again, or older files
//! before newer ones, is harmless. A record cut short at the end (the
//! process died inside the `write`) was never acknowledged and is dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::StoreId;

/// How long an acknowledged write may wait for its disk sync.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The name of journal files before they were numbered (replayed first).
const UNNUMBERED: &str = "kv.journal";

/// The final state of one key after a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) store: StoreId,
    pub(super) key: String,
    /// `None`: deleted.
    pub(super) value: Option<Vec<u8>>,
}

/// The journal file being appended to.
pub(super) struct Journal {
    dir: PathBuf,
    number: u64,
    file: File,
    /// Reused for each append, so appending does not allocate.
    buf: Vec<u8>,
}

/// The journal files in `dir`, oldest first.
fn files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let number = if name == UNNUMBERED {
            0
        } else if let Some(n) = name
            .strip_prefix(UNNUMBERED)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            n + 1
        } else {
            continue;
        };
        files.push((number, path));
    }
    files.sort_unstable();
    Ok(files)
}

/// The records every journal file in `dir` holds, oldest first.
pub(super) fn recover(dir: &Path) -> io::Result<Vec<Record>> {
    let mut records = Vec::new();
    for (_, path) in files(dir)? {
        records.extend(decode(&std::fs::read(path)?));
    }
    Ok(records)
}

/// Deletes every journal file in `dir`, oldest first (so a crash halfway
/// leaves only newer ones, which replay correctly on their own). Call it
/// once the database durably holds what they cover.
pub(super) fn remove_all(dir: &Path) -> io::Result<()> {
    for (_, path) in files(dir)? {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

fn create(dir: &Path, number: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{UNNUMBERED}.{number}")))
}

impl Journal {
    /// Starts a new journal in `dir`, which must hold none.
    pub(super) fn start(dir: &Path) -> io::Result<Journal> {
        Ok(Journal {
            dir: dir.to_path_buf(),
            number: 0,
            file: create(dir, 0)?,
            buf: Vec::new(),
        })
    }

    /// Appends the final states of the keys of one write with one `write`.
    pub(super) fn append<'a>(
        &mut self,
        store: &StoreId,
        changes: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> io::Result<()> {
        self.buf.clear();
        for (key, value) in changes {
            encode(store, key, value, &mut self.buf)?;
        }
        self.file.write_all(&self.buf)
    }

    /// Appends to a new file from now on; returns the old one, to be
    /// deleted once the database durably holds what it covers.
    pub(super) fn rotate(&mut self) -> io::Result<PathBuf> {
        let old = self.path();
        self.file = create(&self.dir, self.number + 1)?;
        self.number += 1;
        Ok(old)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format!("{UNNUMBERED}.{}", self.number))
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) -> io::Result<()> {
    let len = u16::try_from(s.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

pub(super) fn encode(
    store: &StoreId,
    key: &str,
    value: Option<&[u8]>,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    put_str(buf, &store.owner)?;
    put_str(buf, &store.name)?;
    put_str(buf, key)?;
    match value {
        Some(value) => {
            buf.push(1);
            let len = u32::try_from(value.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "value too large"))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(value);
        }
        None => buf.push(0),
    }
    let len = u32::try_from(buf.len() - start - 4)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Reads records until the bytes run out or stop making sense (a torn
/// tail): what it returns, encoded again, is a prefix of `bytes`.
pub(super) fn decode(mut bytes: &[u8]) -> Vec<Record> {
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

/// One record's payload; `None` unless it is exactly one record (bytes
/// left over mean the length or the fields are corrupt, as a torn tail is).
fn decode_one(payload: &[u8]) -> Option<Record> {
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).ok();
    let (owner, rest) = take_len::<2>(payload)?;
    let (name, rest) = take_len::<2>(rest)?;
    let (key, rest) = take_len::<2>(rest)?;
    let value = match rest.split_first()? {
        (1, rest) => match take_len::<4>(rest)? {
            (value, []) => Some(value.to_vec()),
            _ => return None,
        },
        (0, []) => None,
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
    fn records_round_trip_oldest_file_first_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (acme, other) = (StoreId::new("local", "default"), StoreId::new("other", "x"));
        let record = |store: &StoreId, key: &str, value: Option<&[u8]>| Record {
            store: store.clone(),
            key: key.into(),
            value: value.map(<[u8]>::to_vec),
        };
        // Files left by a crash: one from before files were numbered, and
        // numbers that sort differently as text (10 < 2) than as numbers.
        let write = |name: &str, records: &[Record]| {
            let mut buf = Vec::new();
            for r in records {
                encode(&r.store, &r.key, r.value.as_deref(), &mut buf).unwrap();
            }
            std::fs::write(dir.path().join(name), buf).unwrap();
        };
        let zero = record(&acme, "a/1", Some(b"zero"));
        let (one, gone) = (
            record(&acme, "a/1", Some(b"one")),
            record(&other, "k", None),
        );
        let two = record(&acme, "a/1", Some(b"two"));
        write("kv.journal.10", std::slice::from_ref(&two));
        write("kv.journal.2", &[one.clone(), gone.clone()]);
        write(UNNUMBERED, std::slice::from_ref(&zero));
        std::fs::write(dir.path().join("kv.redb"), b"not a journal").unwrap();
        assert_eq!(
            recover(dir.path()).unwrap(),
            [zero, one.clone(), gone.clone(), two]
        );

        // Cut the newest file short: its record is dropped.
        let newest = dir.path().join("kv.journal.10");
        let bytes = std::fs::read(&newest).unwrap();
        std::fs::write(&newest, &bytes[..bytes.len() - 2]).unwrap();
        assert_eq!(
            recover(dir.path()).unwrap()[1..],
            [one.clone(), gone.clone()]
        );

        // A record whose length covers more than its fields is corrupt:
        // replay stops there, as at a torn tail (found by fuzz/kv_journal).
        let mut padded = Vec::new();
        encode(&acme, "a/1", Some(b"one"), &mut padded).unwrap();
        encode(&acme, "a/2", None, &mut padded).unwrap();
        let third = padded.len();
        encode(&acme, "a/3", None, &mut padded).unwrap();
        padded.push(0);
        padded[third] += 1;
        assert_eq!(decode(&padded), [one.clone(), record(&acme, "a/2", None)]);

        remove_all(dir.path()).unwrap();
        assert!(recover(dir.path()).unwrap().is_empty());
        assert!(dir.path().join("kv.redb").exists());

        // A running journal: appends, then rotates; both files are read.
        let mut journal = Journal::start(dir.path()).unwrap();
        journal
            .append(&acme, [("a/1", Some(&b"one"[..])), ("b", None)])
            .unwrap();
        let old = journal.rotate().unwrap();
        journal.append(&other, [("k", None)]).unwrap();
        let b_gone = record(&acme, "b", None);
        assert_eq!(
            recover(dir.path()).unwrap(),
            [one.clone(), b_gone, gone.clone()]
        );
        std::fs::remove_file(old).unwrap();
        assert_eq!(recover(dir.path()).unwrap(), [gone]);
    }
}
