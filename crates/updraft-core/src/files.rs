//! A function's files: `files = [{ source, destination }]` in the manifest,
//! uploaded as one tar archive (the bundle) whose paths are where the guest
//! sees each file, below `/`. The bundle is stored content-addressed with the
//! version and mounted read-only (or, with `files_writable`, as a private
//! copy per invocation).

use std::io::Read;

use serde::{Deserialize, Serialize};

/// Mappings one function may list.
pub const FILE_MOUNTS_MAX: usize = 16;
/// Largest bundle, packed: files are for assets and data a function reads,
/// not for storage (that is what blobs are for).
pub const BUNDLE_BYTES_MAX: u64 = 64 << 20;
/// Most entries (files and directories) in a bundle.
pub const BUNDLE_ENTRIES_MAX: usize = 10_000;
/// Longest guest path.
const PATH_BYTES_MAX: usize = 1024;

/// One `files` entry: what the CLI packs, and where the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMount {
    /// A directory or file next to the manifest (the CLI reads it).
    pub source: String,
    /// An absolute guest path: a directory's contents go below it, a file
    /// is placed at it.
    #[serde(default = "root")]
    pub destination: String,
}

fn root() -> String {
    "/".to_string()
}

/// Why `files` or the uploaded bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("invalid files: {0}")]
    Manifest(String),
    #[error("invalid files bundle: {0}")]
    Bundle(String),
}

/// Checks the manifest's `files` entries.
pub fn check_mounts(mounts: &[FileMount]) -> Result<(), FilesError> {
    let err = |m: String| FilesError::Manifest(m);
    if mounts.len() > FILE_MOUNTS_MAX {
        return Err(err(format!(
            "{} entries listed, at most {FILE_MOUNTS_MAX} are allowed",
            mounts.len()
        )));
    }
    for m in mounts {
        if m.source.is_empty() {
            return Err(err("an entry has an empty source".into()));
        }
        guest_path(&m.destination).map_err(|reason| {
            err(format!(
                "destination {:?}: {reason}; write an absolute path like \"/\" or \"/static\"",
                m.destination
            ))
        })?;
    }
    Ok(())
}

/// The relative path below `/` of an absolute guest path, normalized
/// (`"/"` is `""`).
pub fn guest_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err("not absolute".into());
    }
    if path.len() > PATH_BYTES_MAX {
        return Err(format!("longer than {PATH_BYTES_MAX} bytes"));
    }
    let mut parts = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." || part.contains(['\0', '\\']) {
            return Err(format!("the segment {part:?} is not allowed"));
        }
        parts.push(part);
    }
    Ok(parts.join("/"))
}

/// What a checked bundle holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleInfo {
    pub files: usize,
    /// Bytes of file contents, unpacked.
    pub bytes: u64,
}

/// Checks an uploaded bundle: a tar archive of regular files and
/// directories only, with relative paths that stay below the root.
pub fn check_bundle(bundle: &[u8]) -> Result<BundleInfo, FilesError> {
    let err = |m: String| FilesError::Bundle(m);
    if bundle.len() as u64 > BUNDLE_BYTES_MAX {
        return Err(err(format!(
            "{} bytes, at most {BUNDLE_BYTES_MAX} are allowed",
            bundle.len()
        )));
    }
    let mut archive = tar::Archive::new(bundle);
    let entries = archive
        .entries()
        .map_err(|e| err(format!("not a tar archive: {e}")))?;
    let mut info = BundleInfo { files: 0, bytes: 0 };
    for (i, entry) in entries.enumerate() {
        if i >= BUNDLE_ENTRIES_MAX {
            return Err(err(format!("more than {BUNDLE_ENTRIES_MAX} entries")));
        }
        let mut entry = entry.map_err(|e| err(format!("entry {i} is unreadable: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| err(format!("entry {i} has no path: {e}")))?
            .to_string_lossy()
            .into_owned();
        check_entry_path(&path).map_err(|reason| err(format!("{path:?}: {reason}")))?;
        match entry.header().entry_type() {
            tar::EntryType::Regular => {
                info.files += 1;
                // Reading to the end checks the archive is whole.
                let n = std::io::copy(&mut entry.by_ref(), &mut std::io::sink())
                    .map_err(|e| err(format!("{path:?} is cut short: {e}")))?;
                info.bytes += n;
            }
            tar::EntryType::Directory => {}
            other => {
                return Err(err(format!(
                    "{path:?} is a {other:?}: only regular files and directories are packed (no links or devices)"
                )));
            }
        }
    }
    Ok(info)
}

/// A bundle path: relative, no `.`/`..` segments, no NUL or backslash.
pub fn check_entry_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err("absolute paths are not allowed".into());
    }
    if path.len() > PATH_BYTES_MAX {
        return Err(format!("longer than {PATH_BYTES_MAX} bytes"));
    }
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." || part.contains(['\0', '\\']) {
            return Err(format!("the segment {part:?} is not allowed"));
        }
    }
    Ok(())
}

/// Reads a whole bundle entry (for tests and tools).
pub fn read_entry(bundle: &[u8], wanted: &str) -> Option<Vec<u8>> {
    let mut archive = tar::Archive::new(bundle);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.path().ok()?.to_string_lossy() == wanted {
            let mut out = Vec::new();
            entry.read_to_end(&mut out).ok()?;
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // `set_path` refuses `..`: write the name bytes as a hostile
            // client would.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn bundles_hold_files_and_directories_below_the_root_only() {
        let good = tar_of(&[
            ("static/", tar::EntryType::Directory, b""),
            ("static/a.txt", tar::EntryType::Regular, b"hello"),
        ]);
        assert_eq!(
            check_bundle(&good).unwrap(),
            BundleInfo { files: 1, bytes: 5 }
        );
        assert_eq!(read_entry(&good, "static/a.txt").unwrap(), b"hello");
        for (bad, says) in [
            (tar_of(&[("../x", tar::EntryType::Regular, b"x")]), "\"..\""),
            (
                tar_of(&[("/etc/x", tar::EntryType::Regular, b"x")]),
                "absolute",
            ),
            (tar_of(&[("l", tar::EntryType::Symlink, b"")]), "no links"),
        ] {
            let e = check_bundle(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        // Cut inside the file's data.
        let cut = &good[..1024 + 3];
        assert!(check_bundle(cut).is_err());
    }

    #[test]
    fn destinations_are_absolute_and_plain() {
        assert_eq!(guest_path("/").unwrap(), "");
        assert_eq!(guest_path("/static//img/").unwrap(), "static/img");
        for bad in ["static", "/a/../b", "/a/./b", "/a\\b"] {
            assert!(guest_path(bad).is_err(), "{bad}");
        }
        let mounts = vec![FileMount {
            source: "assets".into(),
            destination: "relative".into(),
        }];
        assert!(
            check_mounts(&mounts)
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
    }
}
