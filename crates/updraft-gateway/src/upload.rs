//! Deploy uploads: the Wasm streams, chunk by chunk, into a temp file in
//! the platform's uploads dir (`DATA_DIR/scratch/uploads`, emptied at
//! start, only this user's), and the compiler reads it from a read-only
//! mapping of that file. A 200 MB upload thus costs disk and page cache,
//! which the kernel reclaims, not 200 MB of the server's own memory, and
//! six at once do not cost six times that. [`crate::api`]'s deploy calls
//! [`spool`]; the file is gone when the deploy ends, whatever its outcome.

use std::path::Path;

use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::StatusCode;
use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;

/// The error every over-limit upload gets, before or during its transfer.
pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the upload is over {} MiB, the most a deploy takes: make the Wasm smaller \
             (strip debug info: `wasm-tools strip`, or build in release mode)",
            limit >> 20
        ),
    )
}

/// The server's own failure (a full disk answers 507 `storage_full`).
fn failed(what: &str, e: std::io::Error) -> ApiError {
    ApiError::from(updraft_scheduler::PlatformError::Task(Box::new(
        updraft_core::Failure::context(what.to_string(), e),
    )))
}

/// Writes `chunks` to a new temp file in `dir` (mode 0600, removed when
/// the returned file is dropped), refusing more than `limit` bytes as soon
/// as they arrive. Returns the file and its length.
pub(crate) async fn spool<S, E>(
    dir: &Path,
    chunks: S,
    limit: usize,
    broken: impl Fn(E) -> ApiError,
) -> Result<(NamedTempFile, u64), ApiError>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    let mut chunks = std::pin::pin!(chunks);
    let temp = tempfile::Builder::new()
        .prefix("deploy-")
        .tempfile_in(dir)
        .map_err(|e| failed("creating a deploy's temp file", e))?;
    let writer = temp
        .as_file()
        .try_clone()
        .map_err(|e| failed("opening a deploy's temp file", e))?;
    let mut writer = tokio::io::BufWriter::new(tokio::fs::File::from_std(writer));
    let mut len: u64 = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(&broken)?;
        len += chunk.len() as u64;
        if len > limit as u64 {
            return Err(too_large(limit));
        }
        writer
            .write_all(&chunk)
            .await
            .map_err(|e| failed("writing a deploy's temp file", e))?;
    }
    writer
        .flush()
        .await
        .map_err(|e| failed("writing a deploy's temp file", e))?;
    Ok((temp, len))
}

/// The raw body of a request, as a stream of chunks.
pub(crate) fn body_chunks(body: Body) -> impl Stream<Item = Result<Bytes, axum::Error>> {
    body.into_data_stream()
}

/// The spooled file's bytes, mapped read-only: pages are read from the
/// page cache as the compiler touches them and are not the process's own
/// memory. The file may be unlinked while mapped.
pub(crate) fn map(file: &NamedTempFile, len: u64) -> Result<Bytes, ApiError> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: a mapping's bytes must not change or vanish (SIGBUS) while
    // it lives. The file is this process's own temp file in a directory
    // only its user may write (mode 0700), written completely before it
    // is mapped and never written or truncated again.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(file.as_file()) }
        .map_err(|e| failed("mapping a deploy's temp file", e))?;
    Ok(Bytes::from_owner(map))
}
