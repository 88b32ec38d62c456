//! Errors of the platform operations, gathering those of the layers below.
//! Every one has a [`ErrorKind`] and a code ([`Classify`]), so whoever shows
//! it (the gateway, an async attempt) decides by kind, not by variant.

use updraft_core::{Classify, ErrorKind, ManifestError};
use updraft_sandbox::{InvokeError, PrepareError};
use updraft_state::StateError;
use updraft_state::blob::BlobError;
use updraft_state::kv::KvError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// 503: all instance slots stayed busy for the whole timeout.
    #[error("all {0} instance slots are busy: retry later, or raise the server's instance limit")]
    Busy(u32),
    /// 429: the function's own `max_concurrency` stayed reached for its
    /// `queue_timeout_ms`.
    #[error(
        "{function} is running {max} invocations, its max_concurrency: retry later, or raise max_concurrency in its updraft.toml"
    )]
    ConcurrencyLimit { function: String, max: u32 },
    /// 429: the tenant's quota of concurrent invocations stayed reached.
    #[error(
        "tenant {tenant} is running {max} invocations, its quota: retry later, or ask an admin to raise it (updraft quota set)"
    )]
    TenantConcurrencyLimit { tenant: String, max: u32 },
    /// 429: the tenant started its quota of invocations this second.
    #[error(
        "tenant {tenant} may start {rps} invocations a second, its quota: retry after a pause, or ask an admin to raise it (updraft quota set)"
    )]
    TenantRateLimit { tenant: String, rps: u32 },
    /// 429: the server is past saturation for the function: its
    /// invocations wait too long for CPU, and the excess is refused at once
    /// rather than queued (see the sandbox's load shedding).
    #[error(
        "{function} has more invocations than this server's CPU keeps up with ({limit} at once now): retry after a pause, or spread the load over more nodes"
    )]
    Overloaded { function: String, limit: u32 },
    /// 400 (404 for a missing key, 409 for a non-integer counter, 500 for storage).
    #[error(transparent)]
    Kv(#[from] KvError),
    /// 400 for a bad name or value, 404 for a missing secret.
    #[error(transparent)]
    Secret(#[from] updraft_state::secrets::SecretError),
    /// 400 (404 for a missing blob, 413 for one too large, 500 for storage).
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// 404: no deployed function lists the store or container.
    #[error("no function uses the {what} {name:?} ({known}): list it in a function's updraft.toml")]
    NotInUse {
        what: &'static str,
        name: String,
        known: String,
    },
    /// 404.
    #[error("key {key:?} is not in store {store:?}")]
    KeyNotFound { store: String, key: String },
    /// 402 for a spent budget; 400 for bad input; 500 for storage.
    #[error(transparent)]
    Metering(#[from] updraft_metering::MeteringError),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 400: a published CloudEvent is malformed.
    #[error("invalid CloudEvent: {0}")]
    InvalidEvent(String),
    /// 404.
    #[error(
        "no queue or topic named {0:?}: create one with `updraft queues create {0}` or `updraft topics create {0}`"
    )]
    UnknownChannel(String),
    /// 400: a trigger names a queue or topic that does not exist.
    #[error("invalid [[trigger]]: {0}")]
    Trigger(String),
    /// 409.
    #[error(
        "{kind} {name:?} is the trigger of {functions}: remove those triggers (redeploy) first"
    )]
    ChannelInUse {
        kind: updraft_state::queue::ChannelKind,
        name: String,
        functions: String,
    },
    /// 400 for bad input (413 for a payload too large); 500 for storage.
    #[error(transparent)]
    Queue(#[from] updraft_state::queue::QueueError),
    /// 400: the request body stopped before its end (the client went away
    /// or sent a broken chunked body); not a size problem.
    #[error(
        "the request body could not be read to its end (the client stopped sending it, or its \
         framing is broken): send the whole body"
    )]
    BodyRead(#[source] updraft_core::BoxError),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 503 (400 for a bad `[cluster]` section): cluster mode cannot reach
    /// its NATS.
    #[error(transparent)]
    Cluster(#[from] updraft_state::nats::ClusterError),
    /// 500: a task of the platform failed (a panic, a cancelled worker).
    #[error("an internal task failed")]
    Task(#[source] updraft_core::BoxError),
}

impl PlatformError {
    /// 404: `tenant` has no function `name`.
    pub fn function_not_found(name: impl Into<String>) -> PlatformError {
        PlatformError::State(StateError::FunctionNotFound(name.into()))
    }

    /// A command's non-zero exit: its code and what it wrote to stdout.
    pub fn exit(&self) -> Option<(i32, &bytes::Bytes)> {
        match self {
            PlatformError::Invoke(InvokeError::Exit { code, stdout }) => Some((*code, stdout)),
            _ => None,
        }
    }

    /// The function (not the platform) is at fault: its message is written
    /// for its author, and shown even on a 500.
    pub fn is_guest_fault(&self) -> bool {
        matches!(self, PlatformError::Invoke(e) if e.is_guest_fault())
    }

    /// The error as a guest may read it (a failed call or publish): its
    /// own message, unless the platform itself failed; then a generic one
    /// with an id, and the whole chain goes to the server's log under that
    /// id. A tenant's code reads no paths or database messages.
    pub(crate) fn for_guest(&self) -> String {
        if self.kind() != ErrorKind::Internal || self.is_guest_fault() {
            return self.to_string();
        }
        let id = uuid::Uuid::now_v7();
        tracing::error!(error_id = %id, "internal error: {}", updraft_core::error::chain(self));
        format!("internal error {id}: the platform failed; retry (its log has the detail)")
    }
}

impl Classify for PlatformError {
    fn kind(&self) -> ErrorKind {
        match self {
            PlatformError::Manifest(e) => e.kind(),
            PlatformError::BadRequest(_)
            | PlatformError::InvalidEvent(_)
            | PlatformError::Trigger(_)
            | PlatformError::BodyRead(_) => ErrorKind::Invalid,
            PlatformError::Prepare(e) => e.kind(),
            PlatformError::State(e) => e.kind(),
            PlatformError::Invoke(e) => e.kind(),
            PlatformError::Kv(e) => e.kind(),
            PlatformError::Secret(e) => e.kind(),
            PlatformError::Blob(e) => e.kind(),
            PlatformError::Metering(e) => e.kind(),
            PlatformError::Queue(e) => e.kind(),
            PlatformError::Cluster(e) => e.kind(),
            PlatformError::Busy(_) => ErrorKind::Busy,
            PlatformError::ConcurrencyLimit { .. }
            | PlatformError::TenantConcurrencyLimit { .. }
            | PlatformError::TenantRateLimit { .. }
            | PlatformError::Overloaded { .. } => ErrorKind::TooManyRequests,
            PlatformError::NotInUse { .. }
            | PlatformError::KeyNotFound { .. }
            | PlatformError::UnknownChannel(_) => ErrorKind::NotFound,
            PlatformError::ChannelInUse { .. } => ErrorKind::Conflict,
            PlatformError::Forbidden(_) => ErrorKind::Forbidden,
            PlatformError::Task(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            PlatformError::Manifest(e) => e.code(),
            PlatformError::BadRequest(_) => "bad_request",
            PlatformError::InvalidEvent(_) => "invalid_cloudevent",
            PlatformError::Trigger(_) => "invalid_trigger",
            PlatformError::BodyRead(_) => "body_read_failed",
            PlatformError::Prepare(e) => e.code(),
            PlatformError::State(e) => e.code(),
            PlatformError::Invoke(e) => Classify::code(e),
            PlatformError::Kv(e) => e.code(),
            PlatformError::Secret(e) => e.code(),
            PlatformError::Blob(e) => e.code(),
            PlatformError::Metering(e) => e.code(),
            PlatformError::Queue(e) => e.code(),
            PlatformError::Cluster(e) => e.code(),
            PlatformError::Busy(_) => "busy",
            PlatformError::ConcurrencyLimit { .. } => "concurrency_limit",
            PlatformError::TenantConcurrencyLimit { .. } => "tenant_concurrency_limit",
            PlatformError::TenantRateLimit { .. } => "tenant_rate_limit",
            PlatformError::Overloaded { .. } => "overloaded",
            PlatformError::NotInUse { what, .. } if what.starts_with("blob") => {
                "container_not_found"
            }
            PlatformError::NotInUse { .. } => "store_not_found",
            PlatformError::KeyNotFound { .. } => "key_not_found",
            PlatformError::UnknownChannel(_) => "channel_not_found",
            PlatformError::ChannelInUse { .. } => "channel_in_use",
            PlatformError::Forbidden(_) => "forbidden",
            PlatformError::Task(_) => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_kind_and_code_the_api_documents() {
        let cases: Vec<(PlatformError, ErrorKind, &str)> = vec![
            (
                PlatformError::function_not_found("f"),
                ErrorKind::NotFound,
                "function_not_found",
            ),
            (
                PlatformError::State(StateError::ApiKeyNotFound("k".into())),
                ErrorKind::NotFound,
                "api_key_not_found",
            ),
            (
                PlatformError::KeyNotFound {
                    store: "s".into(),
                    key: "k".into(),
                },
                ErrorKind::NotFound,
                "key_not_found",
            ),
            (
                PlatformError::NotInUse {
                    what: "blob container",
                    name: "c".into(),
                    known: String::new(),
                },
                ErrorKind::NotFound,
                "container_not_found",
            ),
            (PlatformError::Busy(4), ErrorKind::Busy, "busy"),
            (
                PlatformError::Overloaded {
                    function: "f".into(),
                    limit: 3,
                },
                ErrorKind::TooManyRequests,
                "overloaded",
            ),
            (
                PlatformError::Kv(KvError::NotAnInteger { key: "k".into() }),
                ErrorKind::Conflict,
                "not_an_integer",
            ),
            (
                PlatformError::Blob(BlobError::TooLarge { max: 1 }),
                ErrorKind::TooLarge,
                "blob_too_large",
            ),
            (
                PlatformError::Invoke(InvokeError::Timeout { timeout_ms: 1 }),
                ErrorKind::Timeout,
                "timeout",
            ),
            (
                PlatformError::Metering(updraft_metering::MeteringError::BudgetExceeded {
                    tenant: "t".into(),
                    budget: "$1".into(),
                    spent: "$1".into(),
                }),
                ErrorKind::BudgetSpent,
                "budget_exceeded",
            ),
            (
                PlatformError::BodyRead("reset".into()),
                ErrorKind::Invalid,
                "body_read_failed",
            ),
            (
                PlatformError::Kv(KvError::storage("disk")),
                ErrorKind::Internal,
                "storage",
            ),
        ];
        for (error, kind, code) in cases {
            assert_eq!((error.kind(), error.code()), (kind, code), "{error}");
        }
    }

    #[test]
    fn only_the_functions_own_failures_are_its_fault() {
        let trap = PlatformError::Invoke(InvokeError::Trap {
            message: "x".into(),
        });
        assert!(trap.is_guest_fault());
        let internal =
            PlatformError::Invoke(InvokeError::Internal(updraft_core::Failure::msg("x")));
        assert!(!internal.is_guest_fault());
        assert!(!PlatformError::Kv(KvError::storage("disk")).is_guest_fault());
    }

    #[test]
    fn a_guest_reads_no_internals() {
        let internal = PlatformError::Kv(KvError::Storage(updraft_core::Failure::context(
            "the store failed",
            std::io::Error::other("/var/lib/updraft/kv.redb: corrupt page"),
        )));
        let shown = internal.for_guest();
        assert!(shown.starts_with("internal error "), "{shown}");
        assert!(
            !shown.contains("kv.redb") && !shown.contains("store failed"),
            "{shown}"
        );
        let refused = PlatformError::UnknownChannel("jobs".into());
        assert_eq!(refused.for_guest(), refused.to_string());
        let trap = PlatformError::Invoke(InvokeError::Trap {
            message: "unreachable".into(),
        });
        assert_eq!(trap.for_guest(), trap.to_string());
    }
}
