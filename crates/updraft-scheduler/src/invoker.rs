//! [`Invoker`], the data plane, and the one invocation path. Every way in —
//! a function's route, `POST /v1/functions/{name}/invoke`, a call from
//! another function, an async attempt, an event delivery — becomes one
//! [`Invocation`] and goes through [`Invoker::run`], which picks the
//! executor once, by what the input is and what the function exports, and
//! answers an [`Outcome`].
//!
//! Each executor (`Invoker::invoke_{http,command,handler}_as`) does the
//! same steps: the budget check, the compiled code, an instance slot
//! (admission), the sandbox run, then the run's logs and usage record.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use updraft_core::trace::TraceParent;
use updraft_core::{FunctionKind, SharedClock, Trigger};
use updraft_sandbox::{
    CallRequest, InvocationCtx, InvokeError, OnDone, Output, Prepared, ResponseBody, Sandbox,
};

use crate::error::PlatformError;
use crate::events::{AsyncRequest, Event};
use crate::functions::{Functions, Loaded};
use crate::logs::Logs;
use crate::usage::{PendingUsage, Usage};

/// The invoker service.
pub struct Invoker {
    functions: Arc<Functions>,
    sandbox: Arc<Sandbox>,
    usage: Arc<Usage>,
    logs: Arc<Logs>,
    /// One permit per instance slot, so bursts queue instead of failing.
    admission: Arc<Semaphore>,
    /// Tenants' quotas.
    quotas: crate::quotas::Quotas,
    /// The wall clock of usage records' start times (metering reads its
    /// dates from the same one, so a record and its month agree).
    clock: SharedClock,
    /// Invocations this process started (in `/healthz`: in a cluster, what
    /// this node has run).
    started: std::sync::atomic::AtomicU64,
    /// What each function version did, for `/metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Spans of invocations, calls and publishes.
    traces: Arc<crate::traces::Traces>,
    /// Whether the runtime has time to spare for spare instances.
    idle: Idleness,
}

/// How long one reading of the runtime's idleness holds.
const IDLE_WINDOW: Duration = Duration::from_millis(10);
/// Workers' time that must have been free over the last window for
/// spare instances to be made: half a worker, so a core is idle.
const IDLE_WORKERS_MIN: f64 = 0.5;

/// Whether the tokio workers, which run the gateway and the guests, had
/// half a worker's time free over the last [`IDLE_WINDOW`]. Counting
/// invocations in flight does not tell: on a saturated server the workers
/// run one each while the rest wait unadmitted. Read at each invocation,
/// measured at most once a window.
#[derive(Debug)]
struct Idleness {
    /// When it was last measured, and the workers' busy time then.
    last: std::sync::Mutex<(std::time::Instant, Duration)>,
    idle: std::sync::atomic::AtomicBool,
}

impl Idleness {
    fn new() -> Idleness {
        Idleness {
            last: std::sync::Mutex::new((std::time::Instant::now(), Duration::ZERO)),
            idle: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn idle(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        // Whoever holds the lock measures; the others read the last answer.
        if let Ok(mut last) = self.last.try_lock()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let now = std::time::Instant::now();
            let window = now.saturating_duration_since(last.0);
            if window >= IDLE_WINDOW {
                let metrics = runtime.metrics();
                let workers = metrics.num_workers();
                let busy: Duration = (0..workers)
                    .map(|w| metrics.worker_total_busy_duration(w))
                    .sum();
                let busy_workers = busy.saturating_sub(last.1).as_secs_f64() / window.as_secs_f64();
                self.idle
                    .store(workers as f64 - busy_workers >= IDLE_WORKERS_MIN, Relaxed);
                *last = (now, busy);
            }
        }
        self.idle.load(Relaxed)
    }
}

/// The body of a request handed to a function.
pub type RequestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;

/// Why a request body could not be read (the client went away, the framing
/// broke). A type of its own, not a bare boxed error: rustc cannot prove
/// futures holding a `Box<dyn Error>` body `Send` for every lifetime.
#[derive(Debug)]
pub struct BodyError(pub updraft_core::BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl updraft_core::Classify for BodyError {
    /// The client's: it stopped sending, or broke the framing.
    fn kind(&self) -> updraft_core::ErrorKind {
        updraft_core::ErrorKind::Invalid
    }

    fn code(&self) -> &'static str {
        "body_read_failed"
    }
}

/// What a function is invoked with.
pub enum Input {
    /// An HTTP request: the function's route, the invoke API, an async
    /// request replayed. An http function gets it as is; a command gets its
    /// body on stdin.
    Request(http::Request<RequestBody>),
    /// A payload, from another function's call: a handler export gets it
    /// directly, an http function as the body of `POST /`, a command on
    /// stdin.
    Payload(Bytes),
    /// A CloudEvent delivered from a queue, a topic, a schedule or a
    /// key-value change: structured JSON for a handler or a command,
    /// binary mode (`ce-*` headers) for an http function.
    Event {
        event: StoredEvent,
        /// When it was queued: its `time` if it has none.
        enqueued_ms: u64,
    },
}

/// An event as the queue keeps it.
pub enum StoredEvent {
    Parsed(Event),
    /// Structured JSON, checked when it was published.
    Json(Bytes),
}

/// A request whose body is held in memory.
pub fn boxed(request: http::Request<Bytes>) -> http::Request<RequestBody> {
    request.map(|body| {
        http_body_util::Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync()
    })
}

/// One invocation of one function.
pub struct Invocation<'a> {
    pub function: &'a Arc<Loaded>,
    pub input: Input,
    pub trigger: Trigger,
    /// Its id: in the logs, the usage record and the response.
    pub id: String,
    /// Set for a call from another function: the chain and its deadline.
    pub call: Option<&'a CallRequest>,
    /// Where the invocation's span goes in its trace: the client's
    /// `traceparent`, the caller's call, the message's publish (a new
    /// trace when `None`).
    pub trace: Option<TraceParent>,
}

impl<'a> Invocation<'a> {
    /// An invocation with a new id.
    pub fn new(function: &'a Arc<Loaded>, input: Input, trigger: Trigger) -> Invocation<'a> {
        Invocation {
            function,
            input,
            trigger,
            id: uuid::Uuid::now_v7().to_string(),
            call: None,
            trace: None,
        }
    }
}

/// What an invocation answered.
pub enum Outcome {
    /// An http function's response, its body streaming while the guest
    /// runs on.
    Streamed(http::Response<ResponseBody>),
    /// An answer the function gave whole: a handler's status and body.
    Buffered { status: u16, body: Bytes },
    /// A command's stdout, after it exited with code 0 (other codes are
    /// [`InvokeError::Exit`], with the stdout).
    Command { stdout: Bytes },
}

/// The header that carries a command's exit code.
pub const EXIT_CODE_HEADER: &str = "updraft-exit-code";

impl Outcome {
    /// The status and the whole body.
    pub async fn collect(self) -> Result<(u16, Bytes), PlatformError> {
        match self {
            Outcome::Buffered { status, body } => Ok((status, body)),
            Outcome::Command { stdout } => Ok((200, stdout)),
            Outcome::Streamed(response) => {
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map_err(|e| {
                    PlatformError::Invoke(InvokeError::Guest(format!(
                        "the response body failed: {e}"
                    )))
                })?;
                Ok((status, body.to_bytes()))
            }
        }
    }

    /// As an HTTP response.
    pub fn into_response(self) -> http::Response<ResponseBody> {
        match self {
            Outcome::Streamed(response) => response,
            Outcome::Buffered { status, body } => {
                let mut response = http::Response::new(
                    http_body_util::Full::new(body)
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                *response.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                response
            }
            Outcome::Command { stdout } => {
                let mut response = http::Response::new(
                    http_body_util::Full::new(stdout)
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                response
                    .headers_mut()
                    .insert(EXIT_CODE_HEADER, http::HeaderValue::from_static("0"));
                response
            }
        }
    }
}

/// An invocation admitted: when it started (for its usage record), its
/// code, and its slots (held until the guest ends).
struct Start {
    start_ms: u64,
    prepared: Arc<Prepared>,
    permit: Slots,
    /// The tenant's memory quota, when it has one.
    memory_quota: Option<Arc<updraft_sandbox::MemoryBudget>>,
}

/// An instance slot of the server, one of the function's own
/// `max_concurrency` and one of its tenant's quota, when they have them.
struct Slots {
    _load: Option<updraft_sandbox::InFlight>,
    _server: OwnedSemaphorePermit,
    _function: Option<OwnedSemaphorePermit>,
    _tenant: Option<OwnedSemaphorePermit>,
}

/// How the function takes its input: the one decision by kind.
enum Executor {
    Http,
    Command,
    Handler,
}

impl Invoker {
    pub(crate) fn new(
        functions: Arc<Functions>,
        sandbox: Arc<Sandbox>,
        usage: Arc<Usage>,
        logs: Arc<Logs>,
        clock: SharedClock,
        kv: Arc<dyn updraft_state::kv::KvStore>,
        (metrics, traces): (Arc<crate::metrics::Metrics>, Arc<crate::traces::Traces>),
    ) -> Invoker {
        Invoker {
            metrics,
            traces,
            admission: Arc::new(Semaphore::new(sandbox.instances_max() as usize)),
            quotas: crate::quotas::Quotas::new(kv),
            functions,
            sandbox,
            usage,
            logs,
            clock,
            started: std::sync::atomic::AtomicU64::new(0),
            idle: Idleness::new(),
        }
    }

    /// Invocations this process has started.
    pub fn started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Instances running now on this node: what it supplies.
    pub fn in_flight(&self) -> u32 {
        let free = u32::try_from(self.admission.available_permits()).unwrap_or(u32::MAX);
        self.sandbox.instances_max().saturating_sub(free)
    }

    /// Instance slots of the node.
    pub fn slots(&self) -> u32 {
        self.sandbox.instances_max()
    }

    /// Spare instances made since start, and invocations that took one.
    pub fn spares_made_used(&self) -> (u64, u64) {
        self.sandbox.spares_made_used()
    }

    /// Has the sandbox make spare instances of `prepared` while the
    /// runtime has time to spare ([`Idleness`]). A loaded server makes none;
    /// a function that takes none costs no measurement.
    fn replenish(
        &self,
        prepared: &Arc<Prepared>,
        memory_quota: Option<Arc<updraft_sandbox::MemoryBudget>>,
    ) {
        if self.sandbox.makes_spares(prepared) && self.idle.idle() {
            self.sandbox.replenish(prepared, memory_quota);
        }
    }

    /// Spans of invocations, calls and publishes.
    pub fn traces(&self) -> &Arc<crate::traces::Traces> {
        &self.traces
    }

    /// What each function version did.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The functions it runs.
    pub fn functions(&self) -> &Arc<Functions> {
        &self.functions
    }

    /// Tenants' quotas.
    pub fn quotas(&self) -> &crate::quotas::Quotas {
        &self.quotas
    }

    /// Runs one invocation; returns its id and what it answered.
    pub async fn run(
        &self,
        invocation: Invocation<'_>,
    ) -> (String, Result<Outcome, PlatformError>) {
        let Invocation {
            function,
            input,
            trigger,
            id,
            call,
            trace,
        } = invocation;
        let span = self.invocation_span(function, &input, trigger, &id, trace);
        let stats = self.count(function);
        let refused = |e: PlatformError, span: Traced| Err(span.refused(e, stats));
        // Only a payload or an event may go to a handler export.
        let may_take_payload = !matches!(input, Input::Request(_));
        let executor = match self.executor(function, may_take_payload).await {
            Ok(executor) => executor,
            Err(e) => return (id, refused(e, span)),
        };
        // The executors hand the id back: no copy of it per invocation.
        match (executor, input) {
            (Executor::Http, input) => match http_request(input, &id) {
                Ok(request) => {
                    let (id, response) = self
                        .invoke_http_as(function, request, trigger, id, call, span)
                        .await;
                    (id, response.map(Outcome::Streamed))
                }
                Err(e) => (id, refused(e, span)),
            },
            (Executor::Command, input) => match input_bytes(function, input, &id).await {
                Ok(stdin) => {
                    let (id, stdout) = self
                        .invoke_command_as(function, stdin, trigger, id, call, span)
                        .await;
                    (id, stdout.map(|stdout| Outcome::Command { stdout }))
                }
                Err(e) => (id, refused(e, span)),
            },
            (Executor::Handler, input) => match input_bytes(function, input, &id).await {
                Ok(payload) => {
                    let (id, answer) = self
                        .invoke_handler_as(function, payload, trigger, id, call, span)
                        .await;
                    (
                        id,
                        answer.map(|(status, body)| Outcome::Buffered { status, body }),
                    )
                }
                Err(e) => (id, refused(e, span)),
            },
        }
    }

    /// A request goes to an http function's handler of requests; a payload
    /// or an event to the handler export when there is one.
    async fn executor(
        &self,
        function: &Loaded,
        may_take_payload: bool,
    ) -> Result<Executor, PlatformError> {
        // Whether it exports a handler is known once it is prepared (it may
        // have been unloaded while idle).
        let takes_payloads = may_take_payload
            && self
                .functions
                .ensure_prepared(function)
                .await?
                .takes_calls();
        Ok(match (takes_payloads, function.version.kind) {
            (true, _) => Executor::Handler,
            (false, FunctionKind::Http) => Executor::Http,
            (false, FunctionKind::Command) => Executor::Command,
        })
    }

    /// The tenant's quota, a slot of the function's own (if it has a
    /// `max_concurrency`), then one of the server's, waiting at most
    /// `wait_ms` for all together.
    async fn admit(
        &self,
        loaded: &Loaded,
        prepared: &Prepared,
        wait_ms: u64,
    ) -> Result<(Slots, Option<Arc<updraft_sandbox::MemoryBudget>>), PlatformError> {
        // Past saturation the excess is refused at once, before it waits.
        let load = self
            .sandbox
            .admit(prepared)
            .map_err(|shed| PlatformError::Overloaded {
                function: loaded.name.to_string(),
                limit: shed.limit,
            })?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let crate::quotas::Admitted {
            slot: tenant,
            memory,
        } = self.quotas.admit(&loaded.tenant, deadline).await?;
        let function = match &loaded.concurrency {
            None => None,
            Some(slots) => Some(acquire(slots, deadline).await.ok_or_else(|| {
                PlatformError::ConcurrencyLimit {
                    function: loaded.name.to_string(),
                    max: loaded.version.limits.max_concurrency.unwrap_or(0),
                }
            })?),
        };
        let server = acquire(&self.admission, deadline)
            .await
            .ok_or(PlatformError::Busy(self.sandbox.instances_max()))?;
        Ok((
            Slots {
                _load: load,
                _server: server,
                _function: function,
                _tenant: tenant,
            },
            memory,
        ))
    }

    /// What every executor does first: refuse a spent budget, have the
    /// compiled code, take an instance slot (waiting at most what the
    /// function, or its caller's chain, allows).
    async fn start(
        &self,
        loaded: &Loaded,
        call: Option<&CallRequest>,
        span: &mut Traced,
    ) -> Result<Start, PlatformError> {
        let mut admission = self.traces.start(
            "admission",
            SpanKind::Internal,
            span.invocation.position(),
            Vec::new(),
        );
        let start = self.admitted(loaded, call).await;
        if let Err(e) = &start {
            admission.fail(updraft_core::Classify::code(e));
        }
        admission.end();
        if start.is_ok() {
            // The guest's run, instantiation included: its calls and
            // publishes are its children.
            span.run = Some(self.traces.start(
                "run",
                SpanKind::Internal,
                span.invocation.position(),
                Vec::new(),
            ));
        }
        start
    }

    async fn admitted(
        &self,
        loaded: &Loaded,
        call: Option<&CallRequest>,
    ) -> Result<Start, PlatformError> {
        self.usage.check_budget(&loaded.tenant)?;
        let start_ms = self.clock.now_ms();
        let prepared = self.functions.ensure_prepared(loaded).await?;
        let (permit, memory_quota) = self
            .admit(loaded, &prepared, admit_ms(loaded, call))
            .await?;
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Start {
            start_ms,
            prepared,
            permit,
            memory_quota,
        })
    }

    /// Runs an http function on `request` (see [`Invoker::run`]). The
    /// response comes back as soon as the guest sets it; logs and usage are
    /// recorded when the guest finishes.
    async fn invoke_http_as(
        &self,
        loaded: &Arc<Loaded>,
        mut request: http::Request<RequestBody>,
        trigger: Trigger,
        invocation_id: String,
        call: Option<&CallRequest>,
        mut span: Traced,
    ) -> (String, Result<http::Response<ResponseBody>, PlatformError>) {
        let Start {
            start_ms,
            prepared,
            permit,
            memory_quota,
        } = match self.start(loaded, call, &mut span).await {
            Ok(start) => start,
            Err(e) => return (invocation_id, Err(span.refused(e, self.stats(loaded)))),
        };
        let ctx = self.ctx(loaded, &invocation_id, call, memory_quota.clone(), &span);
        // The guest sees its own place in the trace: a request it forwards
        // continues it.
        if let Some(at) = span.position()
            && let Ok(value) = http::HeaderValue::from_bytes(&at.header_bytes())
        {
            request
                .headers_mut()
                .insert(updraft_core::trace::TRACEPARENT, value);
        }
        let logs = self.logs.clone();
        let function = loaded.clone();
        let pending = self.usage.pending(loaded.key.clone());
        // Made before the await, so a caller that goes away still releases it.
        let body_part = pending.as_ref().map(PendingUsage::body_part);
        let usage = pending;
        let stats = self.stats(loaded).cloned();
        let on_done: OnDone = Box::new(move |report| {
            if let Some(stats) = stats {
                stats.finished(&report);
            }
            span.finished(&report);
            logs.report(&function.key, &report);
            if let Some(usage) = usage {
                usage.report(crate::usage::record(
                    &function, trigger, start_ms, report, 0,
                ));
            }
            drop(permit);
        });
        let response = self
            .sandbox
            .invoke_http(&prepared, request, ctx, on_done)
            .await;
        self.replenish(&prepared, memory_quota);
        let response = match (response, body_part) {
            (Ok(response), Some(part)) => Ok(response.map(|body| part.wrap(body))),
            (response, _) => response,
        };
        (invocation_id, response.map_err(PlatformError::from))
    }

    /// Runs a command function with `stdin` (see [`Invoker::run`]);
    /// returns its stdout.
    async fn invoke_command_as(
        &self,
        loaded: &Arc<Loaded>,
        stdin: Bytes,
        trigger: Trigger,
        invocation_id: String,
        call: Option<&CallRequest>,
        span: Traced,
    ) -> (String, Result<Bytes, PlatformError>) {
        let run = |prepared: Arc<Prepared>, ctx| async move {
            self.sandbox.invoke_command(&prepared, stdin, ctx).await
        };
        let bytes_out = |out: &Bytes| out.len() as u64;
        self.invoke_buffered(loaded, trigger, invocation_id, call, span, bytes_out, run)
            .await
    }

    /// Hands `payload` to the function's handler export
    /// ([`Sandbox::invoke_handler`](updraft_sandbox::Sandbox::invoke_handler)):
    /// a call from another function, or an event.
    async fn invoke_handler_as(
        &self,
        loaded: &Arc<Loaded>,
        payload: Bytes,
        trigger: Trigger,
        invocation_id: String,
        call: Option<&CallRequest>,
        span: Traced,
    ) -> (String, Result<(u16, Bytes), PlatformError>) {
        let run = |prepared: Arc<Prepared>, ctx| async move {
            self.sandbox.invoke_handler(&prepared, payload, ctx).await
        };
        let bytes_out = |(_, body): &(u16, Bytes)| body.len() as u64;
        self.invoke_buffered(loaded, trigger, invocation_id, call, span, bytes_out, run)
            .await
    }

    /// What invocations run to their end before they answer (commands,
    /// direct calls) share: the budget, preparing, an instance slot, then
    /// `run`, whose report goes to the logs and to metering.
    // Each argument is one part of the invocation the executors share.
    #[allow(clippy::too_many_arguments)]
    async fn invoke_buffered<T, Fut>(
        &self,
        loaded: &Arc<Loaded>,
        trigger: Trigger,
        invocation_id: String,
        call: Option<&CallRequest>,
        mut span: Traced,
        bytes_out: impl Fn(&T) -> u64,
        run: impl FnOnce(Arc<Prepared>, InvocationCtx) -> Fut,
    ) -> (String, Result<T, PlatformError>)
    where
        Fut: Future<Output = Output<T>>,
    {
        let Start {
            start_ms,
            prepared,
            permit: _permit,
            memory_quota,
        } = match self.start(loaded, call, &mut span).await {
            Ok(start) => start,
            Err(e) => return (invocation_id, Err(span.refused(e, self.stats(loaded)))),
        };
        let ctx = self.ctx(loaded, &invocation_id, call, memory_quota.clone(), &span);
        let Output { result, report } = run(prepared.clone(), ctx).await;
        self.replenish(&prepared, memory_quota);
        if let Some(stats) = self.stats(loaded) {
            stats.finished(&report);
        }
        span.finished(&report);
        self.logs.report(&loaded.key, &report);
        if self.usage.is_metered() {
            let out = result.as_ref().map_or(0, &bytes_out);
            let record = crate::usage::record(loaded, trigger, start_ms, report, out);
            self.usage.meter(&loaded.key, record);
        }
        (invocation_id, result.map_err(PlatformError::from))
    }
}

/// An invocation's spans: the invocation itself, and its run once admitted.
struct Traced {
    invocation: crate::traces::Span,
    run: Option<crate::traces::Span>,
}

impl Traced {
    /// Where the guest's calls and publishes go: under its run.
    fn position(&self) -> Option<TraceParent> {
        self.run
            .as_ref()
            .and_then(crate::traces::Span::position)
            .or_else(|| self.invocation.position())
    }

    /// Refused before its run: counted, and its span ends failed.
    fn refused(
        mut self,
        e: PlatformError,
        stats: Option<&Arc<crate::metrics::FunctionStats>>,
    ) -> PlatformError {
        let code = updraft_core::Classify::code(&e);
        if let Some(stats) = stats {
            stats.failed(code);
        }
        self.invocation.set(KeyValue::new("error.type", code));
        self.invocation.fail(e.to_string());
        self.invocation.end();
        e
    }

    /// The run ended as `report` says.
    fn finished(mut self, report: &updraft_sandbox::Report) {
        if let Some(mut run) = self.run.take() {
            if let Err(e) = &report.outcome {
                run.fail(e.to_string());
            }
            run.end();
        }
        if let Err(e) = &report.outcome {
            self.invocation
                .set(KeyValue::new("error.type", updraft_core::Classify::code(e)));
            self.invocation.fail(e.to_string());
        }
        self.invocation.end();
    }
}

impl Invoker {
    /// What the sandbox needs of an admitted invocation.
    fn ctx(
        &self,
        loaded: &Loaded,
        id: &str,
        call: Option<&CallRequest>,
        memory_quota: Option<Arc<updraft_sandbox::MemoryBudget>>,
        span: &Traced,
    ) -> InvocationCtx {
        let trace = span.position();
        InvocationCtx {
            invocation_id: id.to_string(),
            tenant: loaded.tenant.clone(),
            chain: match call {
                Some(call) => call.chain.clone(),
                None => Arc::new([Arc::from(&*loaded.name)]),
            },
            deadline: call.map(|c| c.deadline),
            inline: call.is_some(),
            memory_quota,
            trace,
            // Only a recorded trace's host work is traced.
            tracer: trace
                .is_some_and(|t| t.sampled)
                .then(|| self.traces.clone() as Arc<dyn updraft_sandbox::HostTracer>),
        }
    }

    /// The invocation's span, with the FaaS conventions' attributes.
    fn invocation_span(
        &self,
        function: &Loaded,
        input: &Input,
        trigger: Trigger,
        id: &str,
        parent: Option<TraceParent>,
    ) -> Traced {
        if !self.traces.enabled() {
            return Traced {
                invocation: self.traces.start("", SpanKind::Internal, None, Vec::new()),
                run: None,
            };
        }
        let (kind, faas_trigger) = match (trigger, input) {
            (_, Input::Event { .. }) => (SpanKind::Consumer, "pubsub"),
            (Trigger::Async, _) => (SpanKind::Consumer, "other"),
            (Trigger::Http | Trigger::Api, _) => (SpanKind::Server, "http"),
            _ => (SpanKind::Server, "other"),
        };
        let mut invocation = self.traces.start("invocation", kind, parent, Vec::new());
        // An unsampled trace's spans are never seen: their name and
        // attributes are not made.
        if invocation.recording() {
            invocation.rename(function.name.to_string());
            let mut attributes = vec![
                KeyValue::new("faas.trigger", faas_trigger),
                KeyValue::new(crate::traces::INVOCATION_ID, id.to_string()),
                KeyValue::new("faas.name", function.name.clone()),
                KeyValue::new("faas.version", function.version_label.clone()),
                KeyValue::new("faas.coldstart", function.prepared().is_none()),
                KeyValue::new(crate::traces::TENANT, function.tenant.clone()),
                KeyValue::new("updraft.trigger", trigger.name()),
            ];
            if let Input::Request(request) = input {
                attributes.push(KeyValue::new(
                    "http.request.method",
                    request.method().as_str().to_string(),
                ));
                attributes.push(KeyValue::new("url.path", request.uri().path().to_string()));
            }
            invocation.set_all(attributes);
        }
        Traced {
            invocation,
            run: None,
        }
    }
}

/// A permit of `slots` by `deadline`. The fast path takes no timer: a free
/// slot is the common case.
pub(crate) async fn acquire(
    slots: &Arc<Semaphore>,
    deadline: tokio::time::Instant,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Some(permit);
    }
    tokio::time::timeout_at(deadline, slots.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
}

/// How long an invocation may wait for its slots: its `queue_timeout_ms`
/// (by default its timeout), and a call from another function no longer
/// than its chain has left.
fn admit_ms(loaded: &Loaded, call: Option<&CallRequest>) -> u64 {
    let limits = &loaded.version.limits;
    let own = limits.queue_timeout_ms.unwrap_or(limits.timeout_ms);
    match call {
        Some(call) => {
            let left = call
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            own.min(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
        }
        None => own,
    }
}

/// The input as an HTTP request for an http function.
fn http_request(input: Input, id: &str) -> Result<http::Request<RequestBody>, PlatformError> {
    match input {
        Input::Request(request) => Ok(request),
        Input::Payload(payload) => Ok(boxed(post_root(payload))),
        Input::Event { event, enqueued_ms } => {
            let event = match event {
                StoredEvent::Parsed(event) => event,
                StoredEvent::Json(json) => Event::from_structured(&json)?,
            };
            crate::events::binary_request(&event, id, enqueued_ms).into_http()
        }
    }
}

/// `POST /` with `body`.
fn post_root(body: Bytes) -> http::Request<Bytes> {
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    request
}

/// The input as bytes, for a command's stdin or a handler's payload: a
/// request's body (read up to the function's limit), a payload as it is,
/// an event as structured JSON.
async fn input_bytes(function: &Loaded, input: Input, id: &str) -> Result<Bytes, PlatformError> {
    match input {
        Input::Payload(payload) => Ok(payload),
        Input::Event { event, enqueued_ms } => Ok(match event {
            StoredEvent::Parsed(event) => event.structured(id, enqueued_ms),
            StoredEvent::Json(json) => json,
        }),
        Input::Request(request) => {
            let limit = function.version.limits.request_body_bytes_max;
            let limited = http_body_util::Limited::new(
                request.into_body(),
                usize::try_from(limit).unwrap_or(usize::MAX),
            );
            match limited.collect().await {
                Ok(body) => Ok(body.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    Err(PlatformError::Invoke(InvokeError::RequestTooLarge {
                        limit,
                    }))
                }
                Err(e) => Err(PlatformError::BodyRead(e)),
            }
        }
    }
}

impl AsyncRequest {
    /// The stored request as an HTTP request again.
    pub(crate) fn into_http(self) -> Result<http::Request<RequestBody>, PlatformError> {
        let mut builder = http::Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str());
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_slice());
        }
        let request = builder.body(self.body).map_err(|e| {
            PlatformError::BadRequest(format!("the stored request is invalid: {e}"))
        })?;
        Ok(boxed(request))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn an_outcome_is_a_response_or_a_whole_body_either_way() {
        let buffered = Outcome::Buffered {
            status: 201,
            body: Bytes::from_static(b"made"),
        };
        let response = buffered.into_response();
        assert_eq!(response.status(), 201);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"made");
        let streamed = Outcome::Streamed(
            http::Response::builder()
                .status(404)
                .body(
                    http_body_util::Full::new(Bytes::from_static(b"none"))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap(),
        );
        let (status, body) = streamed.collect().await.unwrap();
        assert_eq!((status, &body[..]), (404, &b"none"[..]));
    }

    #[test]
    fn a_stored_request_becomes_an_http_request_again() {
        let stored = AsyncRequest {
            method: "PUT".into(),
            path: "/orders?id=7".into(),
            headers: vec![("x-a".into(), b"1".to_vec())],
            body: Bytes::from_static(b"{}"),
        };
        let request = stored.into_http().unwrap();
        assert_eq!(request.method(), http::Method::PUT);
        assert_eq!(request.uri(), "/orders?id=7");
        assert_eq!(request.headers()["x-a"], "1");
        let broken = AsyncRequest {
            method: "NOT A METHOD".into(),
            path: "/".into(),
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let err = broken.into_http().unwrap_err();
        assert!(
            err.to_string().contains("stored request is invalid"),
            "{err}"
        );
    }
}
