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

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// Traces kept for `updraft trace`: the newest, a few MB at most.
pub const TRACES_KEPT: usize = 2_000;

/// Spans kept per trace: a fan-out of thousands of calls keeps its first.
pub const SPANS_PER_TRACE_MAX: usize = 512;

/// Spans kept in all (about 1 KB each): past it the oldest traces go, so
/// fan-outs cannot make the store hold 2,000 × 512 spans.
pub const SPANS_KEPT_MAX: usize = 20_000;

/// The traces service.
pub struct Traces {
    /// `None` with tracing off.
    tracer: Option<(SdkTracerProvider, SdkTracer)>,
    recent: Arc<Recent>,
}

/// How traces are kept and sent.
#[derive(Debug, Clone, Default)]
pub struct TraceConfig {
    pub enabled: bool,
    /// An OTLP/HTTP collector's base URL (`http://host:4318`): spans are
    /// sent to `{endpoint}/v1/traces`.
    pub otlp_endpoint: Option<String>,
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
    pub fn new(config: &TraceConfig) -> Result<Traces, TraceError> {
        let recent = Arc::new(Recent::default());
        if !config.enabled {
            return Ok(Traces {
                tracer: None,
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
                .with_timeout(Duration::from_secs(10))
                .build()
                .map_err(|source| TraceError { endpoint, source })?;
            builder = builder.with_batch_exporter(exporter);
        }
        let provider = builder.build();
        let tracer = provider.tracer("updraft");
        Ok(Traces {
            tracer: Some((provider, tracer)),
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
        let parent_cx = match parent {
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(parent.trace_id),
                SpanId::from_bytes(parent.span_id),
                if parent.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
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

/// The newest traces, bounded.
#[derive(Debug, Default)]
struct Recent {
    inner: Mutex<RecentInner>,
}

#[derive(Debug, Default)]
struct RecentInner {
    /// Kept as the SDK hands them over: made readable only when asked for,
    /// so keeping a span costs the invocation path no formatting.
    traces: HashMap<[u8; 16], Vec<SpanData>>,
    /// Oldest first: the first is dropped for a new one past the bound.
    order: VecDeque<[u8; 16]>,
    by_invocation: HashMap<String, [u8; 16]>,
    /// Spans in `traces`, all told.
    spans: usize,
}

impl Recent {
    fn keep(&self, span: SpanData) {
        let trace = span.span_context.trace_id().to_bytes();
        let invocation = invocation_id(&span).map(|id| id.to_string());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        if !inner.traces.contains_key(&trace) {
            inner.order.push_back(trace);
        }
        // The oldest traces make room (never the one this span joins).
        while (inner.order.len() > TRACES_KEPT || inner.spans >= SPANS_KEPT_MAX)
            && inner.order.front() != Some(&trace)
            && let Some(old) = inner.order.pop_front()
        {
            for span in inner.traces.remove(&old).unwrap_or_default() {
                inner.spans -= 1;
                if let Some(id) = invocation_id(&span) {
                    inner.by_invocation.remove(id.as_str());
                }
            }
        }
        if let Some(id) = invocation {
            inner.by_invocation.insert(id, trace);
        }
        let spans = inner.traces.entry(trace).or_default();
        if spans.len() < SPANS_PER_TRACE_MAX {
            spans.push(span);
            inner.spans += 1;
        }
    }

    fn trace(&self, id: &str) -> Option<Vec<SpanRecord>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let trace = match inner.by_invocation.get(id) {
            Some(trace) => *trace,
            None => {
                let mut trace = [0u8; 16];
                hex::decode_to_slice(id, &mut trace).ok()?;
                trace
            }
        };
        let mut spans: Vec<SpanRecord> = inner.traces.get(&trace)?.iter().map(record).collect();
        spans.sort_by_key(|s| s.start_us);
        Some(spans)
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

    #[test]
    fn children_join_their_parents_trace_and_are_kept() {
        let traces = Traces::new(&TraceConfig {
            enabled: true,
            otlp_endpoint: None,
        })
        .unwrap();
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
        let traces = Traces::new(&TraceConfig {
            enabled: true,
            otlp_endpoint: None,
        })
        .unwrap();
        let client =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let span = traces.start("hello", SpanKind::Server, Some(client), Vec::new());
        assert_eq!(span.position().map(|p| p.sampled), Some(false));
        span.end();
        assert!(traces.trace("4bf92f3577b34da6a3ce929d0e0e4736").is_none());
    }

    #[test]
    fn old_traces_make_room_for_new_ones() {
        let traces = Traces::new(&TraceConfig {
            enabled: true,
            otlp_endpoint: None,
        })
        .unwrap();
        for i in 0..=TRACES_KEPT {
            let attributes = vec![KeyValue::new(INVOCATION_ID, format!("inv-{i}"))];
            traces.start("f", SpanKind::Server, None, attributes).end();
        }
        assert!(traces.trace("inv-0").is_none(), "the oldest went");
        assert!(traces.trace("inv-1").is_some());
        assert!(traces.trace(&format!("inv-{TRACES_KEPT}")).is_some());
        let inner = traces.recent.inner.lock().unwrap();
        assert_eq!(inner.traces.len(), TRACES_KEPT);
        assert_eq!(inner.by_invocation.len(), TRACES_KEPT);
    }

    #[test]
    fn wide_traces_are_bounded_by_the_spans_kept_in_all() {
        let traces = Traces::new(&TraceConfig {
            enabled: true,
            otlp_endpoint: None,
        })
        .unwrap();
        // Traces of SPANS_PER_TRACE_MAX spans each, until past the bound.
        let wide = SPANS_KEPT_MAX / SPANS_PER_TRACE_MAX + 2;
        for t in 0..wide {
            let root = traces.start(
                "fan-out",
                SpanKind::Server,
                None,
                vec![KeyValue::new(INVOCATION_ID, format!("root-{t}"))],
            );
            for _ in 0..SPANS_PER_TRACE_MAX - 1 {
                traces
                    .start("call", SpanKind::Client, root.position(), Vec::new())
                    .end();
            }
            root.end();
        }
        let inner = traces.recent.inner.lock().unwrap();
        assert!(inner.spans <= SPANS_KEPT_MAX, "{}", inner.spans);
        assert_eq!(
            inner.spans,
            inner.traces.values().map(Vec::len).sum::<usize>()
        );
        drop(inner);
        assert!(traces.trace("root-0").is_none(), "the oldest went");
        assert!(traces.trace(&format!("root-{}", wide - 1)).is_some());
    }
}
