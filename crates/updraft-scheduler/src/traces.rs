//! Traces: a span for every invocation and its steps (admission, the run),
//! for each call to another function and each message published, joined
//! into one trace by W3C `traceparent` ([`updraft_core::trace`]): from the
//! client's request, through calls, async invocations and queue or topic
//! deliveries (the message keeps it, so a retry an hour later joins the
//! trace it began in).
//!
//! Spans are made with the OpenTelemetry SDK. Finished spans go to a
//! bounded store of recent traces (`GET /v1/traces/{id}`, `updraft trace`)
//! and, when `[telemetry] otlp_endpoint` is set, to an OTLP/HTTP
//! collector in batches, off the invocation path. Attributes follow
//! OpenTelemetry's FaaS and messaging conventions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanProcessor};
use serde::Serialize;
use updraft_core::trace::TraceParent;

/// Spans kept for `updraft trace`, the newest (about 1 KB each, so some
/// 20 MB): a plain invocation's three spans leave room for about 6,600.
pub const SPANS_KEPT_MAX: usize = 20_000;

/// How long one batch may take to reach the collector: a collector that
/// hangs costs a batch of spans, and the export thread moves on.
pub const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans shown of one trace: a fan-out of thousands of calls shows its
/// first.
pub const SPANS_PER_TRACE_MAX: usize = 512;

/// The traces service.
#[derive(Debug)]
pub struct Traces {
    /// `None` with tracing off.
    tracer: Option<(SdkTracerProvider, SdkTracer)>,
    /// Decides for new traces. The SDK only sees spans of recorded traces:
    /// an unrecorded one costs two random ids, not a span.
    reservoir: Reservoir,
    recent: Arc<Recent>,
}

/// How traces are kept and sent.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    pub enabled: bool,
    /// An OTLP/HTTP collector's base URL (`http://host:4318`): spans are
    /// sent to `{endpoint}/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// New traces recorded each second, whatever the ratio: every trace
    /// of a quiet server, a steady sample of a busy one.
    pub reservoir_per_second: u32,
    /// The share of new traces recorded past the reservoir, 0 to 1. A trace
    /// begun elsewhere follows its parent's decision (the `traceparent`
    /// sampled flag) instead.
    pub sample_ratio: f64,
}

/// New traces recorded each second before the ratio applies (AWS X-Ray's
/// default reservoir is one a second; a hundred keeps every trace of a
/// developer's or a test's requests).
pub const RESERVOIR_PER_SECOND_DEFAULT: u32 = 100;

/// The share of new traces recorded past the reservoir: enough to see a
/// busy function's shape, cheap enough that tracing costs little at 20,000
/// requests a second (BENCHMARKS.md).
pub const SAMPLE_RATIO_DEFAULT: f64 = 0.05;

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            enabled: true,
            otlp_endpoint: None,
            reservoir_per_second: RESERVOIR_PER_SECOND_DEFAULT,
            sample_ratio: SAMPLE_RATIO_DEFAULT,
        }
    }
}

/// Which new traces are recorded: the first `per_second` each second of
/// the clock, then `ratio` of the rest, at random.
#[derive(Debug)]
struct Reservoir {
    clock: updraft_core::SharedClock,
    per_second: u32,
    ratio: f64,
    /// The second being counted (ms since the epoch / 1000).
    second: std::sync::atomic::AtomicU64,
    taken: std::sync::atomic::AtomicU32,
}

impl Reservoir {
    fn new(clock: updraft_core::SharedClock, per_second: u32, ratio: f64) -> Reservoir {
        Reservoir {
            clock,
            per_second,
            ratio,
            second: Default::default(),
            taken: Default::default(),
        }
    }

    /// Whether a new trace is recorded.
    fn sample(&self) -> bool {
        self.take() || (self.ratio > 0.0 && fastrand::f64() < self.ratio)
    }

    /// Takes one of this second's places, if one is left.
    fn take(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.clock.now_ms() / 1000;
        let second = self.second.load(Relaxed);
        // One thread turns the second over; a few racing ones may take a
        // place of the old second, which only rounds the count.
        if now != second
            && self
                .second
                .compare_exchange(second, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.taken.store(0, Relaxed);
        }
        self.taken.fetch_add(1, Relaxed) < self.per_second
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP exporter for {endpoint} could not be made: {source}")]
pub struct TraceError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

impl Traces {
    pub fn new(
        config: &TraceConfig,
        clock: updraft_core::SharedClock,
    ) -> Result<Traces, TraceError> {
        let recent = Arc::new(Recent::default());
        let reservoir = Reservoir::new(clock, config.reservoir_per_second, config.sample_ratio);
        if !config.enabled {
            return Ok(Traces {
                tracer: None,
                reservoir,
                recent,
            });
        }
        let mut builder = SdkTracerProvider::builder()
            .with_resource(
                opentelemetry_sdk::Resource::builder_empty()
                    .with_service_name("updraft")
                    .build(),
            )
            .with_span_processor(Keep(recent.clone()));
        if let Some(base) = &config.otlp_endpoint {
            let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint.clone())
                .with_timeout(OTLP_EXPORT_TIMEOUT)
                .build()
                .map_err(|source| TraceError { endpoint, source })?;
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();
        let tracer = provider.tracer("updraft");
        Ok(Traces {
            tracer: Some((provider, tracer)),
            reservoir,
            recent,
        })
    }

    /// Starts a span under `parent` (a new trace without one).
    pub fn start(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<TraceParent>,
        attributes: Vec<KeyValue>,
    ) -> Span {
        let Some((_, tracer)) = &self.tracer else {
            return Span {
                inner: None,
                position: None,
            };
        };
        let recorded = match parent {
            Some(parent) => parent.sampled,
            None => self.reservoir.sample(),
        };
        if !recorded {
            // Not recorded, but carried on: its children learn the trace
            // and that it is not sampled.
            let root = TraceParent::new_root();
            return Span {
                inner: None,
                position: Some(TraceParent {
                    trace_id: parent.map_or(root.trace_id, |p| p.trace_id),
                    span_id: root.span_id,
                    sampled: false,
                }),
            };
        }
        let parent_cx = match parent {
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(parent.trace_id),
                SpanId::from_bytes(parent.span_id),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent_cx);
        let cx = opentelemetry::trace::Span::span_context(&span);
        let position = cx.is_valid().then(|| TraceParent {
            trace_id: cx.trace_id().to_bytes(),
            span_id: cx.span_id().to_bytes(),
            sampled: cx.is_sampled(),
        });
        Span {
            inner: Some(span),
            position,
        }
    }

    /// Whether spans are made.
    pub fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// A recent trace's spans, oldest first: by trace id (32 hex digits)
    /// or by the id of an invocation in it.
    pub fn trace(&self, id: &str) -> Option<Vec<SpanRecord>> {
        self.recent.trace(id)
    }

    /// Sends what is batched (at shutdown).
    pub fn flush(&self) {
        if let Some((provider, _)) = &self.tracer
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!("traces not all exported: {e}");
        }
    }
}

/// A span in progress; ended when dropped, or with [`Span::end`].
pub struct Span {
    inner: Option<opentelemetry_sdk::trace::Span>,
    position: Option<TraceParent>,
}

impl Span {
    /// Where children of this span go (`None` with tracing off).
    pub fn position(&self) -> Option<TraceParent> {
        self.position
    }

    pub fn set(&mut self, attribute: KeyValue) {
        if let Some(span) = &mut self.inner {
            opentelemetry::trace::Span::set_attribute(span, attribute);
        }
    }

    /// Names it (a name known only to be worth making once recording).
    pub fn rename(&mut self, name: String) {
        if let Some(span) = &mut self.inner {
            opentelemetry::trace::Span::update_name(span, name);
        }
    }

    pub fn set_all(&mut self, attributes: Vec<KeyValue>) {
        if let Some(span) = &mut self.inner {
            opentelemetry::trace::Span::set_attributes(span, attributes);
        }
    }

    /// Whether it will be kept (tracing on, and its trace sampled).
    pub fn recording(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(opentelemetry::trace::Span::is_recording)
    }

    /// Marks the span failed with `message`.
    pub fn fail(&mut self, message: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(span) = &mut self.inner {
            opentelemetry::trace::Span::set_status(span, Status::error(message));
        }
    }

    pub fn end(mut self) {
        if let Some(mut span) = self.inner.take() {
            opentelemetry::trace::Span::end(&mut span);
        }
    }

    /// Ends it `at` (a span whose end was measured elsewhere).
    pub fn end_at(mut self, at: SystemTime) {
        if let Some(mut span) = self.inner.take() {
            opentelemetry::trace::Span::end_with_timestamp(&mut span, at);
        }
    }
}

/// The sandbox's spans of host work (instantiation, state operations,
/// outgoing requests) are made here.
impl updraft_sandbox::HostTracer for Traces {
    fn start(
        &self,
        name: &'static str,
        kind: updraft_sandbox::HostSpanKind,
        parent: TraceParent,
        attributes: &[(&'static str, &str)],
    ) -> Box<dyn updraft_sandbox::HostSpan> {
        let kind = match kind {
            updraft_sandbox::HostSpanKind::Internal => SpanKind::Internal,
            updraft_sandbox::HostSpanKind::Client => SpanKind::Client,
        };
        let attributes = attributes
            .iter()
            .map(|(key, value)| KeyValue::new(*key, value.to_string()))
            .collect();
        Box::new(Traces::start(self, name, kind, Some(parent), attributes))
    }
}

impl updraft_sandbox::HostSpan for Span {
    fn position(&self) -> Option<TraceParent> {
        Span::position(self)
    }

    fn set(&mut self, key: &'static str, value: i64) {
        Span::set(self, KeyValue::new(key, value));
    }

    fn end(mut self: Box<Self>, error: Option<String>) {
        if let Some(error) = error {
            self.fail(error);
        }
        Span::end(*self);
    }
}

/// A finished span as `GET /v1/traces/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    /// `None` for the trace's root (or a span whose parent was the client's).
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    /// Microseconds since the Unix epoch.
    pub start_us: u64,
    pub duration_us: u64,
    /// `ok`, or `error` with the message.
    pub status: String,
    pub attributes: BTreeMap<String, String>,
}

/// The attribute that names an invocation (FaaS conventions).
pub const INVOCATION_ID: &str = "faas.invocation_id";
/// The attribute that names a span's tenant: a trace is shown to its tenant.
pub const TENANT: &str = "updraft.tenant";

/// The newest spans, bounded: a ring, so keeping one is a push under a
/// short lock. Finding a trace scans it, which only a reader pays for.
#[derive(Debug, Default)]
struct Recent {
    /// Kept as the SDK hands them over, oldest first: made readable only
    /// when asked for, so keeping a span costs the invocation path no
    /// formatting.
    spans: Mutex<VecDeque<SpanData>>,
}

impl Recent {
    fn keep(&self, span: SpanData) {
        let oldest = {
            let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
            let oldest = (spans.len() >= SPANS_KEPT_MAX)
                .then(|| spans.pop_front())
                .flatten();
            spans.push_back(span);
            oldest
        };
        // Freed outside the lock.
        drop(oldest);
    }

    fn trace(&self, id: &str) -> Option<Vec<SpanRecord>> {
        let spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        let by_invocation = || {
            spans
                .iter()
                .rev()
                .find(|span| invocation_id(span).map(|i| i.as_str()) == Some(id))
                .map(|span| span.span_context.trace_id())
        };
        let trace = match by_invocation() {
            Some(trace) => trace,
            None => {
                let mut trace = [0u8; 16];
                hex::decode_to_slice(id, &mut trace).ok()?;
                TraceId::from_bytes(trace)
            }
        };
        let mut found: Vec<&SpanData> = spans
            .iter()
            .filter(|span| span.span_context.trace_id() == trace)
            .collect();
        if found.is_empty() {
            return None;
        }
        found.sort_by_key(|span| span.start_time);
        found.truncate(SPANS_PER_TRACE_MAX);
        Some(found.into_iter().map(record).collect())
    }
}

/// The span's `faas.invocation_id`, if it names an invocation.
fn invocation_id(span: &SpanData) -> Option<&opentelemetry::StringValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == INVOCATION_ID)
        .and_then(|kv| match &kv.value {
            opentelemetry::Value::String(id) => Some(id),
            _ => None,
        })
}

fn record(span: &SpanData) -> SpanRecord {
    let micros = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    };
    let parent = span.parent_span_id;
    SpanRecord {
        trace_id: span.span_context.trace_id().to_string(),
        span_id: span.span_context.span_id().to_string(),
        parent_span_id: (parent != SpanId::INVALID).then(|| parent.to_string()),
        name: span.name.to_string(),
        kind: match span.span_kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
            SpanKind::Internal => "internal",
        },
        start_us: micros(span.start_time),
        duration_us: micros(span.end_time).saturating_sub(micros(span.start_time)),
        status: match &span.status {
            Status::Error { description } => format!("error: {description}"),
            _ => "ok".into(),
        },
        attributes: span
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect(),
    }
}

/// The span processor that keeps finished spans in [`Recent`].
#[derive(Debug)]
struct Keep(Arc<Recent>);

impl SpanProcessor for Keep {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.0.keep(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// `traceparent` of an event or request headers, if valid.
pub fn parent_of(value: Option<&str>) -> Option<TraceParent> {
    value.and_then(TraceParent::parse)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Every trace recorded.
    fn all() -> TraceConfig {
        TraceConfig {
            sample_ratio: 1.0,
            ..TraceConfig::default()
        }
    }

    #[test]
    fn children_join_their_parents_trace_and_are_kept() {
        let traces = Traces::new(&all(), updraft_core::system_clock()).unwrap();
        let client =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let root = traces.start(
            "hello",
            SpanKind::Server,
            Some(client),
            vec![KeyValue::new(INVOCATION_ID, "inv-1")],
        );
        let at = root.position().unwrap();
        assert_eq!(at.trace_id, client.trace_id);
        let mut child = traces.start("run", SpanKind::Internal, Some(at), Vec::new());
        child.fail("trap");
        child.end();
        root.end();
        let spans = traces.trace("inv-1").unwrap();
        assert_eq!(spans.len(), 2);
        let by_trace = traces.trace("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(by_trace, spans);
        let run = spans.iter().find(|s| s.name == "run").unwrap();
        assert_eq!(
            run.parent_span_id.as_deref(),
            Some(hex::encode(at.span_id).as_str())
        );
        assert_eq!(run.status, "error: trap");
        let hello = spans.iter().find(|s| s.name == "hello").unwrap();
        assert_eq!(hello.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    }

    #[test]
    fn an_unsampled_parent_records_nothing_but_propagates() {
        let traces = Traces::new(&all(), updraft_core::system_clock()).unwrap();
        let client =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let span = traces.start("hello", SpanKind::Server, Some(client), Vec::new());
        assert_eq!(span.position().map(|p| p.sampled), Some(false));
        span.end();
        assert!(traces.trace("4bf92f3577b34da6a3ce929d0e0e4736").is_none());
    }

    #[test]
    fn old_spans_make_room_for_new_ones() {
        let traces = Traces::new(&all(), updraft_core::system_clock()).unwrap();
        for i in 0..=SPANS_KEPT_MAX {
            let attributes = vec![KeyValue::new(INVOCATION_ID, format!("inv-{i}"))];
            traces.start("f", SpanKind::Server, None, attributes).end();
        }
        assert!(traces.trace("inv-0").is_none(), "the oldest went");
        assert!(traces.trace("inv-1").is_some());
        assert!(traces.trace(&format!("inv-{SPANS_KEPT_MAX}")).is_some());
        assert_eq!(traces.recent.spans.lock().unwrap().len(), SPANS_KEPT_MAX);
    }

    #[test]
    fn a_wide_trace_shows_its_first_spans() {
        let traces = Traces::new(&all(), updraft_core::system_clock()).unwrap();
        let root = traces.start(
            "fan-out",
            SpanKind::Server,
            None,
            vec![KeyValue::new(INVOCATION_ID, "root")],
        );
        for _ in 0..SPANS_PER_TRACE_MAX + 10 {
            traces
                .start("call", SpanKind::Client, root.position(), Vec::new())
                .end();
        }
        root.end();
        let spans = traces.trace("root").unwrap();
        assert_eq!(spans.len(), SPANS_PER_TRACE_MAX);
        assert!(
            spans.iter().any(|s| s.name == "fan-out"),
            "the root started first"
        );
        assert!(spans.windows(2).all(|w| w[0].start_us <= w[1].start_us));
    }

    #[test]
    fn new_traces_fill_each_seconds_reservoir_then_follow_the_ratio() {
        let clock = updraft_core::ManualClock::new(5_000);
        let config = TraceConfig {
            reservoir_per_second: 3,
            sample_ratio: 0.0,
            ..TraceConfig::default()
        };
        let traces = Traces::new(&config, clock.clone()).unwrap();
        let sampled = |parent: Option<TraceParent>| {
            let span = traces.start("f", SpanKind::Server, parent, Vec::new());
            let recording = span.recording();
            assert_eq!(span.position().map(|p| p.sampled), Some(recording));
            recording
        };
        let roots: Vec<bool> = (0..5).map(|_| sampled(None)).collect();
        assert_eq!(roots, [true, true, true, false, false]);
        // A parent's decision stands, whatever the reservoir holds.
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert!(sampled(Some(parent)));
        let unsampled = TraceParent {
            sampled: false,
            ..parent
        };
        clock.advance(1_000);
        assert!(!sampled(Some(unsampled)));
        let next: Vec<bool> = (0..4).map(|_| sampled(None)).collect();
        assert_eq!(
            next,
            [true, true, true, false],
            "a new second, a new reservoir"
        );
        let everything = Traces::new(
            &TraceConfig {
                reservoir_per_second: 0,
                sample_ratio: 1.0,
                ..TraceConfig::default()
            },
            clock,
        )
        .unwrap();
        assert!((0..10).all(|_| {
            everything
                .start("f", SpanKind::Server, None, Vec::new())
                .recording()
        }));
    }
}
