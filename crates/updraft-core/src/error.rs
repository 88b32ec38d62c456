//! What every error of the platform has in common: a [`ErrorKind`] that
//! says whose move it is (fix the input, wait, or nothing: our fault), and a
//! stable `code` a client can match on. The gateway turns a kind into an
//! HTTP status in one place; nothing below it knows about HTTP.

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing named does not exist (404).
    NotFound,
    /// The input is malformed or breaks a rule (400).
    Invalid,
    /// The input clashes with what exists (409).
    Conflict,
    /// The input is larger than a limit allows (413).
    TooLarge,
    /// The caller may not do this (403).
    Forbidden,
    /// The caller's budget for the month is spent (402).
    BudgetSpent,
    /// The tenant's disk quota is used up: delete data, or have it raised
    /// (507, as WebDAV's quotas answer: RFC 4331).
    StorageQuota,
    /// A requested byte range is outside the data (416).
    OutOfRange,
    /// The platform is at capacity: retry later (503).
    Busy,
    /// A limit on concurrent invocations or request rate is reached: retry
    /// after a pause (429).
    TooManyRequests,
    /// A function ran past its time limit (504).
    Timeout,
    /// Something this depends on is down or failing: retry later (503).
    Unavailable,
    /// The platform or the function failed (500): not the caller's fault,
    /// and nothing the caller sent explains it.
    Internal,
}

impl ErrorKind {
    /// Whether trying the same thing again later may succeed. Async
    /// invocations retry these and dead-letter the rest at once.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Busy
                | ErrorKind::TooManyRequests
                | ErrorKind::Timeout
                | ErrorKind::Unavailable
                | ErrorKind::Internal
        )
    }
}

/// An error that knows its kind and code.
pub trait Classify: std::error::Error {
    fn kind(&self) -> ErrorKind;
    /// A short, stable identifier: `function_not_found`, `value_too_large`.
    fn code(&self) -> &'static str;
}

/// A failure of the machinery below (a disk, a database, a network), kept
/// whole as an error's source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What failed below a storage operation: a short account of it, and the
/// error of the disk or database that caused it, kept as the source (never
/// flattened into the text), for the logs. Clones share the source, so the
/// errors that carry it can be cloned.
#[derive(Debug, Clone)]
pub struct Failure {
    what: std::borrow::Cow<'static, str>,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Failure {
    /// The error itself, not the `Arc` around it, so callers can downcast
    /// it (to an `io::Error`, say).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Failure {
    /// A failure caused by `source`.
    pub fn new(source: impl std::error::Error + Send + Sync + 'static) -> Failure {
        Failure::context("the storage layer failed", source)
    }

    /// A failure with no error under it: `what` says it all.
    pub fn msg(what: impl Into<std::borrow::Cow<'static, str>>) -> Failure {
        Failure {
            what: what.into(),
            source: None,
        }
    }

    /// `what` was being done when the boxed `source` happened.
    pub fn boxed(what: impl Into<std::borrow::Cow<'static, str>>, source: BoxError) -> Failure {
        Failure {
            what: what.into(),
            source: Some(std::sync::Arc::from(source)),
        }
    }

    /// `what` was being done when `source` happened.
    pub fn context(
        what: impl Into<std::borrow::Cow<'static, str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        Failure {
            what: what.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }
}

/// Two failures are equal when they tell the same story (errors of the
/// layers below rarely compare).
impl PartialEq for Failure {
    fn eq(&self, other: &Failure) -> bool {
        chain(self) == chain(other)
    }
}

impl Eq for Failure {}

/// An error and every source under it, one line: `a: b: c`. For logs,
/// where the whole story belongs.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Whether a disk that is full (or over its quota) is somewhere under
/// `error`: a failure the operator mends by freeing space, and one the
/// caller may simply retry later.
pub fn is_disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded)
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_walks_every_source_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "outer: disk on fire");
        let plain = std::io::Error::other("alone");
        assert_eq!(chain(&plain), "alone");
    }

    #[test]
    fn a_full_disk_is_found_however_deep() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let failure = Failure::context("writing the page", full);
        assert!(is_disk_full(&Outer(std::io::Error::other(failure))));
        assert!(!is_disk_full(&Outer(std::io::Error::other("other"))));
    }

    #[test]
    fn only_failures_of_the_moment_are_transient() {
        assert!(ErrorKind::Busy.is_transient());
        assert!(ErrorKind::Internal.is_transient());
        assert!(!ErrorKind::BudgetSpent.is_transient());
        assert!(!ErrorKind::Invalid.is_transient());
        assert!(!ErrorKind::NotFound.is_transient());
    }
}
