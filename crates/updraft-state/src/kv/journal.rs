//! The key-value journal: each write's final key states are appended here
//! before its caller is answered.
//! - At `process` durability one `write(2)` per write suffices: the kernel
//!   has the bytes, so the write survives a killed Updraft.
//! - At `disk` the writer thread appends a whole group of writes with one
//!   `write` and makes it durable with one `fdatasync`: the group survives
//!   a power cut. An append and a sync of one file is the cheapest durable
//!   write there is; a database commit writes several scattered pages.
//!
//! Every [`SYNC_INTERVAL`] the sync thread switches to a new journal file,
//! commits what the old one covers to the database durably, and deletes it;
//! at start-up, whatever journal files remain are replayed, oldest first,
//! on top of the last synced state.
//!
//! Files are `kv.journal.N`, N rising. Each starts with [`MAGIC`] and has
//! [`PREALLOCATE_BYTES`] allocated ahead of its writes, so that syncing a
//! write inside the allocation does not also have to sync the file growing
//! (the zeros after the last record end it). A record is the final state
//! of one key: `[u32 length][u32 CRC-32 of the payload][payload]`, the
//! payload holding owner, store and key (each `u16` length + bytes) and the
//! value (`u8` 1 + `u32` length + bytes) or a deletion (`u8` 0). Replaying
//! a file again, or older files before newer ones, is harmless. A record
//! cut short or torn (the process died inside the `write`, the power went
//! before its sync) was never acknowledged: replay stops there. A file
//! without the magic comes from before records had checksums and is read
//! as such (`[u32 length][payload]`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::StoreId;

/// How long an acknowledged write may wait for its database commit.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The name of journal files before they were numbered (replayed first).
const UNNUMBERED: &str = "kv.journal";

/// The first bytes of a journal file whose records carry checksums.
const MAGIC: &[u8; 8] = b"UPKVJ02\n";

/// Space allocated ahead in a journal file, and the least it grows by:
/// 100 ms of small writes fit many times over, and a mostly idle store's
/// file costs no more than this.
const PREALLOCATE_BYTES: u64 = 1 << 20;

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
    /// Where the next record goes.
    end: u64,
    /// Bytes allocated to the file; past `end` they are zeros.
    allocated: u64,
    /// `disk` durability: a new file's name is synced into the directory
    /// before anything in it is acknowledged.
    durable: bool,
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
/// once the database durably holds what they cover. The deletions are
/// durable when it returns: were a file back after a power cut, replaying
/// it would undo newer writes (a journal started afresh is numbered 0).
pub(super) fn remove_all(dir: &Path) -> io::Result<()> {
    for (_, path) in files(dir)? {
        std::fs::remove_file(path)?;
    }
    sync_dir(dir)
}

/// Makes the creation and deletion of files in `dir` durable: syncing a
/// file does not sync its name.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A new, empty journal file, allocated ahead.
fn create(dir: &Path, number: u64, durable: bool) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.join(format!("{UNNUMBERED}.{number}")))?;
    file.write_all_at(MAGIC, 0)?;
    let allocated = preallocate(&file, 0, PREALLOCATE_BYTES);
    if durable {
        sync_dir(dir)?;
    }
    Ok((file, allocated))
}

/// Allocates `len` bytes of `file` from `at` on; returns where the
/// allocation now ends. Best effort: on a full disk, or a filesystem that
/// cannot, the file grows with its writes as any file does.
fn preallocate(file: &File, at: u64, len: u64) -> u64 {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), at, len) {
        Ok(()) => at + len,
        Err(_) => at,
    }
}

impl Journal {
    /// Starts a new journal in `dir`, which must hold none; `durable`: its
    /// appends will be synced, so its files' names are too.
    pub(super) fn start(dir: &Path, durable: bool) -> io::Result<Journal> {
        let (file, allocated) = create(dir, 0, durable)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            number: 0,
            file,
            end: MAGIC.len() as u64,
            allocated,
            durable,
            buf: Vec::new(),
        })
    }

    /// Appends the final states of the keys of one or more writes with one
    /// `write`. They are durable once [`Journal::sync`] returns.
    pub(super) fn append<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a StoreId, &'a str, Option<&'a [u8]>)>,
    ) -> io::Result<()> {
        self.buf.clear();
        for (store, key, value) in changes {
            encode(store, key, value, &mut self.buf)?;
        }
        let len = self.buf.len() as u64;
        if self.end + len > self.allocated {
            let at = self.allocated.max(self.end);
            self.allocated = preallocate(&self.file, at, PREALLOCATE_BYTES.max(len));
        }
        // At `end`, not appended: a write that failed halfway is written
        // over by the next one.
        self.file.write_all_at(&self.buf, self.end)?;
        self.end += len;
        Ok(())
    }

    /// Waits until everything appended is on disk.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Whether appends are synced before they are acknowledged.
    pub(super) fn is_durable(&self) -> bool {
        self.durable
    }

    /// Appends to a new file from now on; returns the old one, to be
    /// deleted once the database durably holds what it covers.
    pub(super) fn rotate(&mut self) -> io::Result<PathBuf> {
        let old = self.path();
        let (file, allocated) = create(&self.dir, self.number + 1, self.durable)?;
        self.file = file;
        self.number += 1;
        self.end = MAGIC.len() as u64;
        self.allocated = allocated;
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

/// Appends one record to `buf`.
pub(super) fn encode(
    store: &StoreId,
    key: &str,
    value: Option<&[u8]>,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
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
    let payload = &buf[start + 8..];
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The bytes of a journal file holding `records`.
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn encode_file(records: &[Record]) -> io::Result<Vec<u8>> {
    let mut buf = MAGIC.to_vec();
    for r in records {
        encode(&r.store, &r.key, r.value.as_deref(), &mut buf)?;
    }
    Ok(buf)
}

/// Reads one journal file's records until the bytes run out or stop making
/// sense (a torn tail, the zeros after the last record): what it returns,
/// encoded again, is a prefix of `bytes`.
pub(super) fn decode(bytes: &[u8]) -> Vec<Record> {
    let (mut bytes, checksummed) = match bytes.strip_prefix(MAGIC) {
        Some(records) => (records, true),
        None => (bytes, false),
    };
    let mut records = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<4>() {
        let (crc, rest) = match checksummed {
            true => match rest.split_first_chunk::<4>() {
                Some((crc, rest)) => (Some(u32::from_le_bytes(*crc)), rest),
                None => break,
            },
            false => (None, rest),
        };
        let Ok(len) = usize::try_from(u32::from_le_bytes(*len)) else {
            break;
        };
        if rest.len() < len {
            break;
        }
        let (payload, rest) = rest.split_at(len);
        if crc.is_some_and(|crc| crc != crc32fast::hash(payload)) {
            break;
        }
        match decode_one(payload) {
            Some(record) => records.push(record),
            None => break,
        }
        bytes = rest;
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

    fn record(store: &StoreId, key: &str, value: Option<&[u8]>) -> Record {
        Record {
            store: store.clone(),
            key: key.into(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    /// A record as journals wrote them before checksums.
    fn encode_unchecked(r: &Record, buf: &mut Vec<u8>) {
        let mut checked = Vec::new();
        encode(&r.store, &r.key, r.value.as_deref(), &mut checked).unwrap();
        buf.extend_from_slice(&checked[..4]);
        buf.extend_from_slice(&checked[8..]);
    }

    #[test]
    fn records_round_trip_oldest_file_first_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (acme, other) = (StoreId::new("local", "default"), StoreId::new("other", "x"));
        let write = |name: &str, records: &[Record]| {
            std::fs::write(dir.path().join(name), encode_file(records).unwrap()).unwrap();
        };
        // Files left by a crash: one from before files were numbered (and
        // records had checksums), and numbers that sort differently as text
        // (10 < 2) than as numbers.
        let zero = record(&acme, "a/1", Some(b"zero"));
        let (one, gone) = (
            record(&acme, "a/1", Some(b"one")),
            record(&other, "k", None),
        );
        let two = record(&acme, "a/1", Some(b"two"));
        write("kv.journal.10", std::slice::from_ref(&two));
        write("kv.journal.2", &[one.clone(), gone.clone()]);
        let mut unchecked = Vec::new();
        encode_unchecked(&zero, &mut unchecked);
        std::fs::write(dir.path().join(UNNUMBERED), unchecked).unwrap();
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

        // A torn record (a byte of its value never reached the disk) fails
        // its checksum: replay stops there, though it still parses.
        let a2 = record(&acme, "a/2", None);
        let three = record(&acme, "a/3", Some(b"three"));
        let mut torn = encode_file(&[one.clone(), a2.clone(), three.clone()]).unwrap();
        let last = torn.len() - 1;
        torn[last] = 0;
        assert_eq!(decode(&torn), [one.clone(), a2.clone()]);
        // The zeros after the last record (the file's allocation) end it.
        let mut allocated = encode_file(&[one.clone(), a2.clone()]).unwrap();
        allocated.resize(allocated.len() + 4096, 0);
        assert_eq!(decode(&allocated), [one.clone(), a2.clone()]);

        // Unchecked, a record whose length covers more than its fields is
        // corrupt: replay stops there, as at a torn tail (found by
        // fuzz/kv_journal).
        let mut padded = Vec::new();
        encode_unchecked(&one, &mut padded);
        encode_unchecked(&a2, &mut padded);
        let third = padded.len();
        encode_unchecked(&record(&acme, "a/3", None), &mut padded);
        padded.push(0);
        padded[third] += 1;
        assert_eq!(decode(&padded), [one.clone(), a2]);

        remove_all(dir.path()).unwrap();
        assert!(recover(dir.path()).unwrap().is_empty());
        assert!(dir.path().join("kv.redb").exists());

        // A running journal: appends (synced or not), then rotates; both
        // files are read, their allocated tails ignored.
        for durable in [false, true] {
            let mut journal = Journal::start(dir.path(), durable).unwrap();
            journal
                .append([(&acme, "a/1", Some(&b"one"[..])), (&acme, "b", None)])
                .unwrap();
            journal.sync().unwrap();
            let old = journal.rotate().unwrap();
            // Bigger than the allocation: the file grows.
            let big = vec![7u8; PREALLOCATE_BYTES as usize + 10];
            journal.append([(&other, "k", None)]).unwrap();
            journal.append([(&other, "big", Some(&big[..]))]).unwrap();
            journal.append([(&other, "after", None)]).unwrap();
            journal.sync().unwrap();
            let b_gone = record(&acme, "b", None);
            let (big, after) = (
                record(&other, "big", Some(&big)),
                record(&other, "after", None),
            );
            assert_eq!(
                recover(dir.path()).unwrap(),
                [
                    one.clone(),
                    b_gone,
                    gone.clone(),
                    big.clone(),
                    after.clone()
                ]
            );
            std::fs::remove_file(old).unwrap();
            assert_eq!(recover(dir.path()).unwrap(), [gone.clone(), big, after]);
            remove_all(dir.path()).unwrap();
        }
    }
}
