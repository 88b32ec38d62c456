//! Packs a function's `files` into the bundle `deploy` uploads: one tar
//! archive whose paths are where the guest sees each file. Packed the same
//! way every time (sorted, no times or owners), so the same files make the
//! same bundle, and redeploying them makes no new version.

use std::path::Path;

use anyhow::{Context, Result, bail};
use updraft_core::files::{BUNDLE_BYTES_MAX, BUNDLE_ENTRIES_MAX, FileMount, guest_path};

/// The bundle of `mounts`, their sources relative to `base` (the
/// manifest's directory).
pub fn pack(base: &Path, mounts: &[FileMount]) -> Result<Vec<u8>> {
    let mut tar = Packer {
        builder: tar::Builder::new(Vec::new()),
        entries: 0,
        bytes: 0,
    };
    for mount in mounts {
        let source = base.join(&mount.source);
        let dest = guest_path(&mount.destination).map_err(|reason| {
            anyhow::anyhow!("files destination {:?}: {reason}", mount.destination)
        })?;
        let meta = std::fs::metadata(&source)
            .with_context(|| format!("files source {} (from the manifest)", source.display()))?;
        if meta.is_dir() {
            tar.dir(&source, &dest)?;
        } else {
            // A file at `/` keeps its name; elsewhere the destination is its path.
            let path = match dest.as_str() {
                "" => source
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                _ => dest,
            };
            tar.file(&source, &path)?;
        }
    }
    tar.builder.into_inner().context("packing the files")
}

struct Packer {
    builder: tar::Builder<Vec<u8>>,
    entries: usize,
    bytes: u64,
}

impl Packer {
    fn count(&mut self, bytes: u64) -> Result<()> {
        self.entries += 1;
        self.bytes += bytes;
        if self.entries > BUNDLE_ENTRIES_MAX {
            bail!("files: more than {BUNDLE_ENTRIES_MAX} files and directories");
        }
        if self.bytes > BUNDLE_BYTES_MAX {
            bail!(
                "files: more than {} MiB; keep large data in blobs",
                BUNDLE_BYTES_MAX >> 20
            );
        }
        Ok(())
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    fn dir(&mut self, source: &Path, dest: &str) -> Result<()> {
        if !dest.is_empty() {
            self.count(0)?;
            let mut header = Self::header(tar::EntryType::Directory, 0, 0o755);
            self.builder
                .append_data(&mut header, format!("{dest}/"), std::io::empty())
                .with_context(|| format!("packing {}", source.display()))?;
        }
        let mut children: Vec<_> = std::fs::read_dir(source)
            .with_context(|| format!("reading {}", source.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", source.display()))?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let name = child.file_name().to_string_lossy().into_owned();
            let path = match dest {
                "" => name,
                _ => format!("{dest}/{name}"),
            };
            // Links are followed: the bundle holds what they point at.
            let meta = std::fs::metadata(child.path())
                .with_context(|| format!("reading {}", child.path().display()))?;
            if meta.is_dir() {
                self.dir(&child.path(), &path)?;
            } else if meta.is_file() {
                self.file(&child.path(), &path)?;
            }
        }
        Ok(())
    }

    fn file(&mut self, source: &Path, path: &str) -> Result<()> {
        let data =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        self.count(data.len() as u64)?;
        let mut header = Self::header(tar::EntryType::Regular, data.len() as u64, 0o644);
        self.builder
            .append_data(&mut header, path, data.as_slice())
            .with_context(|| format!("packing {}", source.display()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_same_files_pack_to_the_same_bytes_at_their_destinations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("assets/img")).unwrap();
        std::fs::write(dir.path().join("assets/b.txt"), "bee").unwrap();
        std::fs::write(dir.path().join("assets/img/a.png"), "png").unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let mounts = vec![
            FileMount {
                source: "assets".into(),
                destination: "/static".into(),
            },
            FileMount {
                source: "config.json".into(),
                destination: "/".into(),
            },
        ];
        let bundle = pack(dir.path(), &mounts).unwrap();
        assert_eq!(bundle, pack(dir.path(), &mounts).unwrap());
        let info = updraft_core::files::check_bundle(&bundle).unwrap();
        assert_eq!((info.files, info.bytes), (3, 8));
        let read = |p| updraft_core::files::read_entry(&bundle, p).unwrap();
        assert_eq!(read("static/b.txt"), b"bee");
        assert_eq!(read("static/img/a.png"), b"png");
        assert_eq!(read("config.json"), b"{}");
    }
}
