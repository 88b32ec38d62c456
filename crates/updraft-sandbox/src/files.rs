//! A function's file system: its files bundle, unpacked once per node and
//! mounted at `/` (read-only, or as a private copy per invocation), and a
//! fresh `/tmp` per invocation. Each invocation's writable space is one
//! directory under the scratch dir, removed when its store is dropped; the
//! whole scratch dir is emptied at start, so a crash leaves nothing behind.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use updraft_core::Digest;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::engine::Sandbox;
use crate::error::{InvokeError, PrepareError};

/// A version's files: the bundle's digest, and its bytes when this node
/// has not unpacked it yet.
pub struct FilesSpec {
    pub digest: Digest,
    pub bundle: Option<Bytes>,
}

/// What a prepared version mounts.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mounts {
    /// The unpacked bundle, seen at `/`.
    pub(crate) files: Option<PathBuf>,
    /// Copy the bundle per invocation, writable.
    pub(crate) files_writable: bool,
    /// Bytes of `/tmp`; none when 0.
    pub(crate) tmp_bytes: u64,
}

impl Mounts {
    /// Whether an invocation needs a scratch directory of its own.
    fn needs_scratch(&self) -> bool {
        self.tmp_bytes > 0 || (self.files_writable && self.files.is_some())
    }
}

/// Invocations' scratch directories, numbered in this process.
static NEXT_SCRATCH: AtomicU64 = AtomicU64::new(0);

/// One invocation's writable space; removed when dropped (off the async
/// threads when there is a runtime).
pub(crate) struct Scratch {
    path: PathBuf,
    /// Where `/tmp` is, for the size check.
    pub(crate) tmp: Option<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            if let Err(e) = std::fs::remove_dir_all(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove scratch {}: {e}", path.display());
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

impl Sandbox {
    fn files_dir(&self, digest: &Digest) -> PathBuf {
        self.cache_dir.join("files").join(digest.hex())
    }

    /// Removes the unpacked bundle `digest`, if this node has one.
    pub(crate) fn evict_files(&self, digest: &Digest) {
        let dir = self.files_dir(digest);
        if dir.is_dir()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!("cannot remove the unused files {}: {e}", dir.display());
        }
    }

    /// Whether this node has unpacked the bundle `digest`.
    pub fn has_files(&self, digest: &Digest) -> bool {
        self.files_dir(digest).is_dir()
    }

    /// The unpacked bundle of `spec`, unpacking it first if needed (into a
    /// temporary directory renamed into place, so a half-unpacked bundle is
    /// never used).
    pub(crate) fn unpack_files(&self, spec: &FilesSpec) -> Result<PathBuf, PrepareError> {
        let dir = self.files_dir(&spec.digest);
        if dir.is_dir() {
            return Ok(dir);
        }
        let internal = |what: String, e: std::io::Error| {
            PrepareError::Internal(updraft_core::Failure::context(what, e))
        };
        let Some(bundle) = &spec.bundle else {
            return Err(PrepareError::Internal(updraft_core::Failure::msg(format!(
                "the files bundle {} left the cache while it was loaded; retry",
                spec.digest
            ))));
        };
        let n = NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .cache_dir
            .join("files")
            .join(format!(".unpacking-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&tmp)
            .map_err(|e| internal(format!("creating {}", tmp.display()), e))?;
        if let Err(e) = unpack(bundle, &tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            // Another prepare of the same bundle got there first.
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(internal(
                    format!("moving the files to {}", dir.display()),
                    e,
                ))
            }
        }
    }

    /// Sets up an invocation's file system on `wasi`: the files at `/`,
    /// `/tmp`. Returns its scratch space, if it has one.
    pub(crate) fn mount(
        &self,
        mounts: &Mounts,
        wasi: &mut WasiCtxBuilder,
    ) -> Result<Option<Scratch>, InvokeError> {
        let failed = |what: &str, e: std::io::Error| {
            InvokeError::Internal(updraft_core::Failure::context(
                format!("preparing the function's files: {what}"),
                e,
            ))
        };
        let scratch = match mounts.needs_scratch() {
            false => None,
            true => {
                let n = NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed);
                let path = self.scratch_dir.join(format!("{n}"));
                std::fs::create_dir_all(&path).map_err(|e| failed("scratch", e))?;
                Some(Scratch { path, tmp: None })
            }
        };
        let mut scratch = scratch;
        if let Some(files) = &mounts.files {
            match (&scratch, mounts.files_writable) {
                (Some(s), true) => {
                    let root = s.path.join("root");
                    copy_tree(files, &root).map_err(|e| failed("copying", e))?;
                    wasi.preopened_dir(&root, "/", FsPerms::ReadWrite)
                        .map_err(|e| failed("mounting /", std::io::Error::other(e.to_string())))?;
                }
                _ => {
                    wasi.preopened_dir(files, "/", FsPerms::ReadOnly)
                        .map_err(|e| failed("mounting /", std::io::Error::other(e.to_string())))?;
                }
            }
        }
        if mounts.tmp_bytes > 0
            && let Some(s) = &mut scratch
        {
            let tmp = s.path.join("tmp");
            std::fs::create_dir(&tmp).map_err(|e| failed("/tmp", e))?;
            wasi.preopened_dir(&tmp, "/tmp", FsPerms::ReadWrite)
                .map_err(|e| failed("mounting /tmp", std::io::Error::other(e.to_string())))?;
            s.tmp = Some(tmp);
        }
        Ok(scratch)
    }
}

/// How often `/tmp` is measured while an invocation runs.
const TMP_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Raised (as the run's error) when `/tmp` grew past its limit.
#[derive(Debug, thiserror::Error)]
#[error("/tmp holds more than {0} bytes")]
pub(crate) struct TmpLimitExceeded(pub(crate) u64);

/// `/tmp` and its limit, if the invocation has one.
pub(crate) fn tmp_of(scratch: Option<&Scratch>, mounts: &Mounts) -> Option<(PathBuf, u64)> {
    scratch
        .and_then(|s| s.tmp.clone())
        .map(|dir| (dir, mounts.tmp_bytes))
}

/// Runs `run`, measuring `/tmp` every [`TMP_CHECK_EVERY`] and at the end:
/// past its limit the run fails with [`TmpLimitExceeded`]. Measured, not
/// enforced by the kernel: a burst may pass the limit by what the disk
/// writes in one period before it is stopped (and removed).
pub(crate) async fn within_tmp<T, E>(
    run: impl Future<Output = Result<T, E>>,
    tmp: Option<(PathBuf, u64)>,
    stop: impl Fn(wasmtime::Error) -> E,
) -> Result<T, E> {
    let Some((dir, max)) = tmp else {
        return run.await;
    };
    let measure = |dir: PathBuf| async move {
        tokio::task::spawn_blocking(move || tree_bytes(&dir))
            .await
            .unwrap_or(0)
    };
    let mut run = std::pin::pin!(run);
    let mut every = tokio::time::interval(TMP_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut run => {
                // Measured once more at the end: a run never succeeds past
                // its limit, however fast it wrote.
                if out.is_ok() && measure(dir.clone()).await > max {
                    return Err(stop(wasmtime::Error::new(TmpLimitExceeded(max))));
                }
                return out;
            }
            _ = every.tick() => {
                if measure(dir.clone()).await > max {
                    return Err(stop(wasmtime::Error::new(TmpLimitExceeded(max))));
                }
            }
        }
    }
}

/// Empties the scratch dir (what a crash left) and makes sure it exists.
pub(crate) fn reset_scratch(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)
}

/// Unpacks a bundle checked at deploy; checked again entry by entry, so a
/// bundle never writes outside `into`.
fn unpack(bundle: &[u8], into: &Path) -> Result<(), PrepareError> {
    let bad = |m: String| PrepareError::Invalid(format!("the files bundle: {m}"));
    let io = |what: String, e: std::io::Error| {
        PrepareError::Internal(updraft_core::Failure::context(what, e))
    };
    let mut archive = tar::Archive::new(bundle);
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        updraft_core::files::check_entry_path(&path).map_err(|r| bad(format!("{path:?}: {r}")))?;
        let target = into.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&target)
                .map_err(|e| io(format!("creating {}", target.display()), e))?,
            tar::EntryType::Regular => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| io(format!("creating {}", parent.display()), e))?;
                }
                let mut file = std::fs::File::create(&target)
                    .map_err(|e| io(format!("creating {}", target.display()), e))?;
                std::io::copy(&mut entry.by_ref(), &mut file)
                    .map_err(|e| io(format!("writing {}", target.display()), e))?;
            }
            other => return Err(bad(format!("{path:?} is a {other:?}"))),
        }
    }
    Ok(())
}

/// Copies a directory tree of regular files and directories.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Bytes of the regular files under `dir` (for the `/tmp` limit).
pub(crate) fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => total += tree_bytes(&entry.path()),
            // Allocated blocks, not the length: a sparse file that claims
            // terabytes holds no disk.
            Ok(_) => total += entry.metadata().map_or(0, |m| allocated(&m)),
            Err(_) => {}
        }
    }
    total
}

#[cfg(unix)]
fn allocated(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks() * 512
}

#[cfg(not(unix))]
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.len()
}
