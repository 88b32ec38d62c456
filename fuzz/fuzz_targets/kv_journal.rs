//! Replay of the KV journal at start-up, on whatever a crash, a torn write
//! or a bad disk left in the files.
//!
//! The input's first byte picks a cut; the rest is, at once, a journal file
//! as found on disk (of either format: with checksums, or from before them)
//! and the material of records written by the real journal. Properties:
//! decoding never panics and returns records whose encoding is a prefix of
//! the bytes (replay stops at the first record that does not make sense,
//! it never skips or invents one); records written by the journal, across
//! rotations, come back in order; a file cut anywhere gives back exactly
//! the records before the cut; `recover` reads the files oldest first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use updraft_state::kv::fuzzing::{Record, decode, encode, recover, write};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };

    // Bytes found on disk, as a file from before checksums (most inputs)
    // and as a file with them.
    let _ = decode(bytes);
    let file = [encode(&[]).expect("no records encode"), bytes.to_vec()].concat();
    let found = decode(&file);
    let again = encode(&found).expect("decoded records encode");
    assert!(file.starts_with(&again), "replay did not read a prefix");

    // Records the journal writes: a torn tail loses only the last ones.
    let records = records_from(bytes);
    let whole = encode(&records).expect("small records encode");
    assert_eq!(decode(&whole), records);
    let cut = whole.len() * usize::from(cut) / 255;
    let kept = decode(&whole[..cut]);
    assert!(records.starts_with(&kept));
    // Exactly the records wholly before the cut (none if the cut is
    // inside the file's magic).
    assert!(kept.is_empty() || encode(&kept).expect("encode").len() <= cut);
    if kept.len() < records.len() {
        let one_more = encode(&records[..=kept.len()]).expect("encode");
        assert!(
            one_more.len() > cut,
            "a whole record before the cut was dropped"
        );
    }

    // Files on disk: three rotations of the running journal, then the
    // newest torn; replay is oldest first.
    let dir = tempfile::tempdir().expect("a temp dir");
    let files: Vec<Vec<Record>> = records.chunks(3).map(<[Record]>::to_vec).collect();
    write(dir.path(), &files).expect("the journal writes");
    assert_eq!(recover(dir.path()).expect("replay"), records);
    if let Some(last) = files.len().checked_sub(1) {
        let path = dir.path().join(format!("kv.journal.{last}"));
        let bytes = std::fs::read(&path).expect("read");
        // Within what was written, not the zeros allocated after it.
        let written = encode(&files[last]).expect("encode").len();
        let cut = written * usize::from(data[0]) / 255;
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let replayed = recover(dir.path()).expect("replay of a torn file");
        assert!(
            records.starts_with(&replayed),
            "a torn file replayed out of order"
        );
        let before: usize = files[..last].iter().map(Vec::len).sum();
        assert!(
            replayed.len() >= before,
            "a torn newest file lost older files' records"
        );
    }
});

/// Up to 8 records of up to 20-byte names and values, taken from `bytes`.
fn records_from(bytes: &[u8]) -> Vec<Record> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    bytes
        .chunks(40)
        .take(8)
        .map(|c| {
            let (a, rest) = c.split_at(c.len().min(6));
            let (b, rest) = rest.split_at(rest.len().min(6));
            let (k, v) = rest.split_at(rest.len().min(8));
            let value = (a.first().copied().unwrap_or(0) % 4 != 0).then(|| v.to_vec());
            (text(a), text(b), text(k), value)
        })
        .collect()
}
