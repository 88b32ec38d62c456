//! Spans of what the host does for a guest: its instantiation, its
//! key-value and blob operations, its outgoing requests. The sandbox times
//! them; whoever runs it (the scheduler's traces service) makes and keeps
//! the spans, through [`HostTracer`]. Only a recorded trace's invocation
//! gets a tracer, so an unrecorded one pays nothing here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use updraft_core::trace::TraceParent;

/// What a span is, as OpenTelemetry's span kinds say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostSpanKind {
    /// Work inside the platform (instantiation, a key-value operation).
    Internal,
    /// A request to another service (an outgoing HTTP request).
    Client,
}

/// Makes spans of host work.
pub trait HostTracer: Send + Sync + std::fmt::Debug {
    /// Starts a span under `parent`.
    fn start(
        &self,
        name: &'static str,
        kind: HostSpanKind,
        parent: TraceParent,
        attributes: &[(&'static str, &str)],
    ) -> Box<dyn HostSpan>;
}

/// A span in progress.
pub trait HostSpan: Send {
    /// Where its children go: an outgoing request carries it on.
    fn position(&self) -> Option<TraceParent>;

    /// Sets an attribute learnt along the way (a response's status).
    fn set(&mut self, key: &'static str, value: i64);

    /// Ends it, failed with `error` when there is one.
    fn end(self: Box<Self>, error: Option<String>);
}

/// Spans of host work one invocation makes at most: a guest that reads a
/// million keys in a recorded trace gets its first operations traced, not
/// a million spans (which would crowd every other trace out of the store
/// and cost more than the reads).
pub const HOST_SPANS_MAX: u32 = 128;

/// An invocation's tracer and where in its trace its guest runs.
#[derive(Debug, Clone)]
pub struct Tracing {
    pub tracer: Arc<dyn HostTracer>,
    pub parent: TraceParent,
    /// Spans it may still make (of [`HOST_SPANS_MAX`]), shared by the
    /// host and its outgoing requests.
    left: Arc<AtomicU32>,
}

impl Tracing {
    /// What an invocation at `trace` traces with: only a recorded trace's.
    pub fn of(tracer: Option<&Arc<dyn HostTracer>>, trace: Option<TraceParent>) -> Option<Tracing> {
        match (tracer, trace) {
            (Some(tracer), Some(parent)) if parent.sampled => Some(Tracing {
                tracer: tracer.clone(),
                parent,
                left: Arc::new(AtomicU32::new(HOST_SPANS_MAX)),
            }),
            _ => None,
        }
    }

    /// A span, unless the invocation has made its [`HOST_SPANS_MAX`].
    pub fn span(
        &self,
        name: &'static str,
        kind: HostSpanKind,
        attributes: &[(&'static str, &str)],
    ) -> Option<Box<dyn HostSpan>> {
        self.take()
            .then(|| self.tracer.start(name, kind, self.parent, attributes))
    }

    /// Whether it may make another span.
    pub fn has_room(&self) -> bool {
        self.left.load(Ordering::Relaxed) > 0
    }

    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Runs `op` inside `span` (if traced), which ends failed when `op` fails.
pub(crate) async fn traced<T, E: std::fmt::Display>(
    span: Option<Box<dyn HostSpan>>,
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = op.await;
    if let Some(span) = span {
        span.end(result.as_ref().err().map(ToString::to_string));
    }
    result
}
