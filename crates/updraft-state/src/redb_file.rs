//! A redb database file that recovers from a failed write by itself.
//!
//! After an I/O error (a full disk, EIO) redb answers every later operation
//! with `PreviousIo` until the database is closed and opened again, which
//! repairs it. [`RedbFile`] remembers the failure, refuses writes naming
//! it, and reopens the file on a later write once a probe shows the disk
//! takes writes again: the store recovers without a restart. Reads keep
//! the old handle meanwhile (redb still reads what it committed).
//!
//! A store with state of its own beside the file (an overlay, an index)
//! mends it when [`Writable::reopened`] says the file was reopened.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::Database;
use updraft_core::Failure;

/// Least time between two attempts to reopen a failed file: a reopen may
/// repair (read) the whole file, and while the disk is still full each
/// write would pay for one.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Bytes the probe writes and syncs before a reopen: room for redb's
/// repair and the first commits after it.
pub const PROBE_BYTES: usize = 1 << 20;

/// One redb file with its failure, if any.
pub struct RedbFile {
    path: PathBuf,
    /// `None` only between closing a failed handle and a successful reopen.
    db: RwLock<Option<Arc<Database>>>,
    /// Whether a write failed and the file has not been reopened since:
    /// the fast path reads only this.
    failed: AtomicBool,
    fault: Mutex<Option<Fault>>,
}

struct Fault {
    cause: Failure,
    next_try: Instant,
}

/// The database to write to, and whether it was just reopened (what the
/// store keeps beside it may need mending: see the module doc).
pub struct Writable {
    pub db: Arc<Database>,
    pub reopened: bool,
}

impl RedbFile {
    /// Opens (or creates) the database at `path`.
    pub fn create(path: impl Into<PathBuf>) -> Result<RedbFile, redb::DatabaseError> {
        let path = path.into();
        let db = Database::create(&path)?;
        Ok(RedbFile {
            path,
            db: RwLock::new(Some(Arc::new(db))),
            failed: AtomicBool::new(false),
            fault: Mutex::new(None),
        })
    }

    /// The database to read from, failed or not.
    pub fn db(&self) -> Result<Arc<Database>, Failure> {
        match &*self.db.read().unwrap_or_else(PoisonError::into_inner) {
            Some(db) => Ok(db.clone()),
            None => Err(self.refused()),
        }
    }

    /// The database to write to. After a failed write, the file is
    /// reopened first if the disk takes writes again (tried at most once
    /// per [`RETRY_INTERVAL`]); until then the answer is the failure.
    pub fn writable(&self) -> Result<Writable, Failure> {
        self.writable_after(|| {})
    }

    /// [`RedbFile::writable`], calling `release` before a reopen to let go
    /// of what the store keeps open on the old handle (a cached read).
    pub fn writable_after(&self, release: impl FnOnce()) -> Result<Writable, Failure> {
        if !self.failed.load(Ordering::Acquire) {
            return self.db().map(|db| Writable {
                db,
                reopened: false,
            });
        }
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(f) = fault.as_mut() else {
            // Another writer reopened it meanwhile.
            return self.db().map(|db| Writable {
                db,
                reopened: false,
            });
        };
        let now = Instant::now();
        if now < f.next_try {
            return Err(refusal(&self.path, &f.cause));
        }
        f.next_try = now + RETRY_INTERVAL;
        if let Err(e) = probe(self.dir()) {
            tracing::debug!("{} still cannot write: {e}", self.path.display());
            return Err(refusal(&self.path, &f.cause));
        }
        release();
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = slot.take() {
            match Arc::try_unwrap(old) {
                // Closed here, so that the file can be opened again.
                Ok(old) => drop(old),
                Err(in_use) => {
                    *slot = Some(in_use);
                    return Err(refusal(&self.path, &f.cause));
                }
            }
        }
        match Database::create(&self.path) {
            Ok(db) => {
                let db = Arc::new(db);
                *slot = Some(db.clone());
                *fault = None;
                self.failed.store(false, Ordering::Release);
                tracing::info!(
                    "{} takes writes again: reopened after the failure",
                    self.path.display()
                );
                Ok(Writable { db, reopened: true })
            }
            // Still open elsewhere in this process (a read not yet done),
            // or the disk failed again: the next write tries again.
            Err(e) => {
                tracing::warn!(
                    "{} could not be reopened yet: {}",
                    self.path.display(),
                    updraft_core::error::chain(&e)
                );
                Err(refusal(&self.path, &f.cause))
            }
        }
    }

    /// Records that a write failed: writes are refused from now on, until
    /// [`RedbFile::writable`] reopens the file. The first failure is kept as
    /// the cause.
    pub fn failed(&self, cause: &(dyn std::error::Error + Send + Sync + 'static)) {
        let mut fault = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        if fault.is_none() {
            tracing::error!(
                "a write to {} failed; writes to it are refused until the disk takes them \
                 again: {}",
                self.path.display(),
                updraft_core::error::chain(cause)
            );
            *fault = Some(Fault {
                cause: Failure::context("the failed write", Cause::of(cause)),
                next_try: Instant::now(),
            });
        }
        self.failed.store(true, Ordering::Release);
    }

    /// Whether writes are refused now.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// What a write gets while the file refuses writes.
    pub fn refused(&self) -> Failure {
        match &*self.fault.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(f) => refusal(&self.path, &f.cause),
            None => Failure::msg(format!("{} is not open", self.path.display())),
        }
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// The error a refused write gets: what to expect, then the first cause
/// (so that a full disk is still recognised as one).
fn refusal(path: &Path, cause: &Failure) -> Failure {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Failure::context(
        format!(
            "{name} refuses writes since one failed; they resume by themselves once the \
             disk takes them again"
        ),
        cause.clone(),
    )
}

/// Whether `dir` takes a write of [`PROBE_BYTES`], synced.
fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = dir.join(".updraft-probe");
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0; PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// A failure's text and, where one is under it, the I/O error kind (what
/// [`updraft_core::error::is_disk_full`] looks for); errors rarely clone.
#[derive(Debug)]
struct Cause(String, Option<std::io::Error>);

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.1.as_ref().map(|e| e as _)
    }
}

impl Cause {
    fn of(error: &(dyn std::error::Error + 'static)) -> Cause {
        Cause(
            updraft_core::error::chain(error),
            io_under(error).map(|io| std::io::Error::from(io.kind())),
        )
    }
}

/// A storage failure that keeps the I/O error under a redb error: redb's
/// errors hold it in an `Io` variant but give no `source()`, and a full
/// disk must be recognised as one further up (507, not 500).
pub fn failure(error: impl std::error::Error + Send + Sync + 'static) -> Failure {
    match io_under(&error) {
        Some(io) => {
            let io = std::io::Error::new(io.kind(), io.to_string());
            Failure::context(
                "the storage layer failed",
                Cause(error.to_string(), Some(io)),
            )
        }
        None => Failure::new(error),
    }
}

/// The I/O error in `error`'s chain, looking inside redb's errors too.
fn io_under<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        let storage = e
            .downcast_ref::<redb::StorageError>()
            .or_else(|| match e.downcast_ref::<redb::CommitError>()? {
                redb::CommitError::Storage(s) => Some(s),
                _ => None,
            })
            .or_else(|| match e.downcast_ref::<redb::TransactionError>()? {
                redb::TransactionError::Storage(s) => Some(s),
                _ => None,
            })
            .or_else(|| match e.downcast_ref::<redb::TableError>()? {
                redb::TableError::Storage(s) => Some(s),
                _ => None,
            })
            .or_else(|| match e.downcast_ref::<redb::DatabaseError>()? {
                redb::DatabaseError::Storage(s) => Some(s),
                _ => None,
            });
        let io = e
            .downcast_ref::<std::io::Error>()
            .or_else(|| match storage? {
                redb::StorageError::Io(io) => Some(io),
                _ => None,
            })
            .or_else(|| match e.downcast_ref::<redb::Error>()? {
                redb::Error::Io(io) => Some(io),
                _ => None,
            });
        if io.is_some() {
            return io;
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_failed_file_refuses_writes_naming_the_cause_then_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let file = RedbFile::create(dir.path().join("t.redb")).unwrap();
        assert!(!file.writable().unwrap().reopened);
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        file.failed(&full);
        assert!(file.is_failed());
        // The first attempt is due at once and the disk takes writes: reopened.
        let writable = file.writable().unwrap();
        assert!(writable.reopened);
        assert!(!file.is_failed());
        drop(writable);
        assert!(!file.writable().unwrap().reopened);
    }

    #[test]
    fn a_refusal_keeps_the_disk_full_cause_and_waits_while_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let file = RedbFile::create(dir.path().join("t.redb")).unwrap();
        // A handle still in use keeps the file from being reopened.
        let held = file.db().unwrap();
        file.failed(&std::io::Error::from(std::io::ErrorKind::StorageFull));
        let refused = file.writable().err().unwrap();
        assert!(updraft_core::error::is_disk_full(&refused), "{refused}");
        let text = updraft_core::error::chain(&refused);
        assert!(text.contains("t.redb refuses writes"), "{text}");
        assert!(text.contains("resume by themselves"), "{text}");
        // Not due again yet, even with the handle gone.
        drop(held);
        assert!(file.writable().is_err());
        assert!(file.is_failed());
    }
}
