//! One invocation: a fresh `Store` and instance from the pool, the request in,
//! the response out, and a [`Report`] of what happened (logs, outcome, time,
//! memory) once the guest is done.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use updraft_core::LogStream;
use wasmtime::component::{InstancePre, ResourceTable};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::artifact::{Pre, Prepared};
use crate::capture::CapturePipe;
use crate::engine::Sandbox;
use crate::error::InvokeError;
use crate::host::{Host, MemoryLimiter, StateUsage};
use crate::lanes::{Background, FOREGROUND_CPU_MAX, HEAVY_CPU, History, Share};
use crate::outbound::Outbound;
use crate::spans::traced;
use crate::warm::{Exports, WarmInstance, WarmPool};

/// Guest stdout/stderr kept per invocation for the logs; the rest is dropped.
pub const LOG_CAPTURE_BYTES_MAX: usize = 256 * 1024;

/// Spare instances kept per version ([`Sandbox::replenish`]): two, so a
/// sequence of calls or requests finds one while the last is replaced.
pub const SPARES_PER_VERSION: usize = 2;

/// Response body handed to the gateway.
pub type ResponseBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Who is being invoked, for the logs.
#[derive(Debug, Clone)]
pub struct InvocationCtx {
    pub invocation_id: String,
    /// Whose CPU share it runs in once in the background lane (with the
    /// function, the last of `chain`).
    pub tenant: Arc<str>,
    /// The chain of function calls this invocation ends (itself last).
    pub chain: Arc<[Arc<str>]>,
    /// The caller's deadline, when it is a call from another function: the
    /// invocation stops at the earlier of it and its own timeout.
    pub deadline: Option<Instant>,
    /// Run an http guest to its end, its body buffered, before returning.
    /// A call from another guest does: the caller gets the whole response
    /// and the callee's outcome (a failure after the response is sent is
    /// the call's failure), and no callee store outlives the call.
    pub inline: bool,
    /// The tenant's memory quota, when an admin set one: its instances'
    /// memory counts against it ([`crate::MemoryBudget`]).
    pub memory_quota: Option<Arc<crate::MemoryBudget>>,
    /// Where in its trace the guest runs: its calls and publishes continue
    /// from here (`None` with tracing off).
    pub trace: Option<updraft_core::trace::TraceParent>,
    /// What makes spans of its instantiation, state operations and
    /// outgoing requests (used only when `trace` is sampled).
    pub tracer: Option<Arc<dyn crate::HostTracer>>,
}

impl InvocationCtx {
    /// Its share of the background lane.
    fn share(&self) -> Share {
        Share {
            tenant: self.tenant.clone(),
            function: self.chain.last().cloned().unwrap_or_else(|| Arc::from("")),
        }
    }

    /// When this invocation must stop, started now with `timeout_ms`.
    fn timing(&self, started: Instant, timeout_ms: u64) -> Timing {
        let own = started + Duration::from_millis(timeout_ms);
        let by_caller = self.deadline.is_some_and(|caller| caller < own);
        Timing {
            started,
            deadline: self.deadline.map_or(own, |caller| caller.min(own)),
            by_caller,
        }
    }
}

/// What happened during one invocation, known once the guest has finished.
#[derive(Debug, Clone)]
pub struct Report {
    pub invocation_id: String,
    pub outcome: Result<(), InvokeError>,
    /// Guest output, line by line, plus platform notes (traps, limits).
    pub logs: Vec<(LogStream, String)>,
    pub duration: Duration,
    pub memory_peak_bytes: u64,
    /// Time this process spent running the guest and its host calls (not
    /// time spent waiting): see [`CpuTimed`].
    pub cpu_time: Duration,
    /// Request body (or stdin) bytes the function received.
    pub bytes_in: u64,
    pub state: StateUsage,
}

impl Report {
    /// The report of an invocation that failed before the guest ran.
    fn early(invocation_id: &str, error: InvokeError, started: Instant) -> Report {
        Report {
            invocation_id: invocation_id.to_string(),
            outcome: Err(error),
            logs: Vec::new(),
            duration: started.elapsed(),
            memory_peak_bytes: 0,
            cpu_time: Duration::ZERO,
            bytes_in: 0,
            state: StateUsage::default(),
        }
    }
}

/// What an invocation run to its end gave, and its [`Report`].
pub struct Output<T> {
    pub result: Result<T, InvokeError>,
    pub report: Report,
}

impl<T> Output<T> {
    /// An invocation that failed before the guest ran.
    fn early(invocation_id: &str, error: InvokeError, started: Instant) -> Output<T> {
        Output {
            result: Err(error.clone()),
            report: Report::early(invocation_id, error, started),
        }
    }
}

/// A command's stdout.
pub type CommandOutput = Output<Bytes>;

/// A direct call's ([`Sandbox::invoke_handler`]) status and body.
pub type CallOutput = Output<(u16, Bytes)>;

/// Refuses input over the function's request body limit.
fn check_input(len: usize, limit: u64) -> Result<(), InvokeError> {
    if len as u64 > limit {
        Err(InvokeError::RequestTooLarge { limit })
    } else {
        Ok(())
    }
}

/// Trap payload of the epoch callback once the deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("deadline reached")]
struct DeadlineReached;

pub(crate) struct Pipes {
    stdout: CapturePipe,
    stderr: CapturePipe,
}

/// When an invocation started, and when it must stop.
#[derive(Debug, Clone, Copy)]
struct Timing {
    started: Instant,
    deadline: Instant,
    /// The deadline is its caller's, earlier than its own timeout.
    by_caller: bool,
}

/// A store for one invocation: a warm instance's (with its exports), or a
/// fresh one to instantiate into.
struct Checkout {
    store: Store<Host>,
    pipes: Pipes,
    exports: Option<Exports>,
    /// Invocations the instance has served before.
    uses: u32,
}

/// Whose invocation a new store serves: the call chain it ends, and the
/// tenant's memory quota.
struct Owner {
    chain: Arc<[Arc<str>]>,
    memory_quota: Option<Arc<crate::MemoryBudget>>,
    trace: Option<updraft_core::trace::TraceParent>,
    tracing: Option<crate::Tracing>,
}

impl Owner {
    fn of(ctx: &InvocationCtx) -> Owner {
        Owner {
            chain: ctx.chain.clone(),
            memory_quota: ctx.memory_quota.clone(),
            trace: ctx.trace,
            tracing: crate::Tracing::of(ctx.tracer.as_ref(), ctx.trace),
        }
    }
}

impl Sandbox {
    fn new_store(
        &self,
        prepared: &Prepared,
        stdin: Option<Bytes>,
        stdout_bytes_max: usize,
        deadline: Instant,
        owner: Owner,
        config: Option<crate::config::Resolved>,
    ) -> Result<(Store<Host>, Pipes), InvokeError> {
        let Owner {
            chain,
            memory_quota,
            trace,
            tracing,
        } = owner;
        let pipes = Pipes {
            stdout: CapturePipe::new(stdout_bytes_max),
            stderr: CapturePipe::new(LOG_CAPTURE_BYTES_MAX),
        };
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&prepared.argv)
            .envs(&prepared.env)
            .stdout(pipes.stdout.clone())
            .stderr(pipes.stderr.clone());
        if let Some(stdin) = stdin {
            wasi.stdin(MemoryInputPipe::new(stdin));
        }
        let scratch = self.mount(&prepared.mounts, &mut wasi)?;
        let mut hooks = Outbound::new(prepared.grants.outbound.clone(), deadline);
        hooks.traced(trace, tracing.clone());
        hooks.grant_sockets(&mut wasi);
        // A core module reads WASI through preview1; the p2 context is unused.
        let (wasi, p1) = match prepared.pre {
            Pre::Core(_) => (
                WasiCtxBuilder::new().build(),
                Some(Box::new(wasi.build_p1())),
            ),
            _ => (wasi.build(), None),
        };
        let host = Host {
            deadline,
            wasi,
            p1,
            http: WasiHttpCtx::new(),
            hooks,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(
                prepared.limits.memory_bytes(),
                self.memory_budget.clone(),
                memory_quota,
                deadline,
            ),
            grants: prepared.grants.clone(),
            chain,
            trace,
            tracing,
            notes: Vec::new(),
            usage: StateUsage::default(),
            config,
            scratch,
        };
        let mut store = Store::new(prepared.pre.engine(), host);
        store.limiter_async(|host| &mut host.limiter);
        // Every tick the guest yields to the runtime (long CPU work cannot
        // starve other requests); past the deadline it is stopped.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Err(wasmtime::Error::new(DeadlineReached))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok((store, pipes))
    }

    /// A store for a deploy-time run of `prepared` (pre-initialisation):
    /// an invocation's limits, no caller, its stderr kept.
    pub(crate) fn deploy_store(
        &self,
        prepared: &Prepared,
        deadline: Instant,
    ) -> Result<(Store<Host>, Pipes), InvokeError> {
        let owner = Owner {
            chain: Arc::new([]),
            memory_quota: None,
            trace: None,
            tracing: None,
        };
        self.new_store(prepared, None, LOG_CAPTURE_BYTES_MAX, deadline, owner, None)
    }

    /// Where the invocation goes once it has used its foreground share.
    fn demote(&self, ctx: &InvocationCtx, prepared: &Prepared) -> Option<Demote> {
        Some(Demote {
            background: self.background.clone()?,
            share: ctx.share(),
            history: prepared.lane_history.clone(),
            load: prepared.load.clone(),
        })
    }

    /// A warm instance of `prepared` set up for a new invocation, or a fresh store.
    fn checkout(
        &self,
        prepared: &Prepared,
        deadline: Instant,
        ctx: &InvocationCtx,
        config: Option<crate::config::Resolved>,
    ) -> Result<Checkout, InvokeError> {
        let kept = match (&prepared.warm, &prepared.spares) {
            (Some(warm), _) => warm.take(),
            (None, Some(spares)) => spares.take().inspect(|_| self.spares.count_used()),
            (None, None) => None,
        };
        match kept {
            Some(WarmInstance {
                mut store,
                exports,
                pipes,
                uses,
            }) => {
                let host = store.data_mut();
                host.deadline = deadline;
                host.chain = ctx.chain.clone();
                host.trace = ctx.trace;
                host.tracing = crate::Tracing::of(ctx.tracer.as_ref(), ctx.trace);
                host.limiter.reset_for_invocation(deadline);
                host.notes.clear();
                host.usage = StateUsage::default();
                host.hooks.reset(deadline);
                host.hooks.traced(host.trace, host.tracing.clone());
                host.config = config;
                store.set_epoch_deadline(1);
                Ok(Checkout {
                    store,
                    pipes,
                    exports: Some(exports),
                    uses,
                })
            }
            None => {
                let (store, pipes) = self.new_store(
                    prepared,
                    None,
                    LOG_CAPTURE_BYTES_MAX,
                    deadline,
                    Owner::of(ctx),
                    config,
                )?;
                Ok(Checkout {
                    store,
                    pipes,
                    exports: None,
                    uses: 0,
                })
            }
        }
    }

    /// Tops up the spare instances of `prepared` (a WASI 0.2 http function
    /// that does not reuse instances) to [`SPARES_PER_VERSION`], after an
    /// invocation of it took one or found none, on the
    /// [`SpareMaker`](crate::warm::SpareMaker)'s thread: the next invocation
    /// skips instantiating. The caller asks only while a core is idle, so a
    /// loaded server works as it would without spares (its invocations
    /// instantiate inline). Each spare serves one invocation only:
    /// isolation is unchanged. `memory_quota` is the function's tenant's.
    pub fn replenish(
        self: &Arc<Self>,
        prepared: &Arc<Prepared>,
        memory_quota: Option<Arc<crate::MemoryBudget>>,
    ) {
        let Some(spares) = &prepared.spares else {
            return;
        };
        let Some(maker) = self.spares.maker() else {
            return;
        };
        let Some(filling) = spares.start_filling(SPARES_PER_VERSION) else {
            return;
        };
        let (sandbox, version) = (self.clone(), prepared.clone());
        let fill = async move {
            while filling.pool().wants(SPARES_PER_VERSION) {
                match sandbox.spare(&version, memory_quota.clone()).await {
                    Ok(spare) => {
                        if !filling.pool().put(spare) {
                            break;
                        }
                        sandbox.spares.count_made();
                    }
                    Err(e) => {
                        // The invocation that needs it instantiates inline
                        // and reports the failure, if it is one.
                        tracing::debug!(function = %version.name, "no spare instance: {e}");
                        break;
                    }
                }
            }
        };
        maker.submit(Box::pin(fill));
    }

    /// A fresh instance of `prepared` for a later invocation, which sets its
    /// deadline, call chain, trace and config at checkout. Its memory is
    /// counted as any instance's, but it never waits for memory: it
    /// yields to invocations.
    async fn spare(
        &self,
        prepared: &Prepared,
        memory_quota: Option<Arc<crate::MemoryBudget>>,
    ) -> Result<WarmInstance, InvokeError> {
        let Pre::Http { pre, .. } = &prepared.pre else {
            return Err(InvokeError::Internal(updraft_core::Failure::msg(
                "spares are made for WASI 0.2 http functions only",
            )));
        };
        let deadline = Instant::now() + Duration::from_millis(prepared.limits.timeout_ms);
        let owner = Owner {
            chain: Arc::new([]),
            memory_quota,
            trace: None,
            tracing: None,
        };
        let (mut store, pipes) =
            self.new_store(prepared, None, LOG_CAPTURE_BYTES_MAX, deadline, owner, None)?;
        store
            .data_mut()
            .limiter
            .reset_for_invocation(Instant::now());
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(instantiate_error)?;
        Ok(WarmInstance {
            store,
            exports: Exports::new(instance),
            pipes,
            uses: 0,
        })
    }

    /// Runs a call from another function through the callee's
    /// `updraft:platform/handler` export: the payload in, the status and
    /// body out, in the caller's task. The instance is reused like an http
    /// function's when `instance_reuse_max` allows.
    pub async fn invoke_handler(
        &self,
        prepared: &Prepared,
        payload: Bytes,
        ctx: InvocationCtx,
    ) -> CallOutput {
        let started = Instant::now();
        let limits = prepared.limits;
        let timing = ctx.timing(started, limits.timeout_ms);
        let deadline = timing.deadline;
        let fail = |error| CallOutput::early(&ctx.invocation_id, error, started);
        let Some(indices) = &prepared.handler else {
            return fail(InvokeError::Internal(updraft_core::Failure::msg(
                "the function exports no updraft:platform/handler",
            )));
        };
        if let Err(e) = check_input(payload.len(), limits.request_body_bytes_max) {
            return fail(e);
        }
        let Checkout {
            mut store,
            pipes,
            exports,
            uses,
        } = match self.checkout(prepared, deadline, &ctx, prepared.config().await) {
            Ok(checkout) => checkout,
            Err(e) => return fail(e),
        };
        let Some(pre) = prepared.pre.instance_pre() else {
            return fail(InvokeError::Internal(updraft_core::Failure::msg(
                "a core module takes no calls",
            )));
        };
        let tmp = crate::files::tmp_of(store.data().scratch.as_ref(), &prepared.mounts);
        let (pre, indices) = (pre.clone(), indices.clone());
        let bytes_in = payload.len() as u64;
        let demote = self.demote(&ctx, prepared);
        let (invocation_id, warm) = (ctx.invocation_id, prepared.warm.clone());
        let guest = Box::pin(async move {
            let run = async {
                let mut exports = match exports {
                    Some(exports) => exports,
                    None => instantiate(&pre, &mut store).await?,
                };
                let response = exports
                    .handler(&mut store, &indices)
                    .map_err(Failure::Run)?
                    .call_handle(&mut store, &payload)
                    .await
                    .map_err(Failure::Run)?;
                Ok((exports, response))
            };
            let run = crate::files::within_tmp(run, tmp, Failure::Run);
            let result = tokio::time::timeout_at(deadline.into(), run).await;
            let (result, done) = split(result);
            let report = finish(&store, &pipes, result, timing, invocation_id, None);
            // The store ends here, in the invocation's own lane (see
            // `invoke_command`).
            let response = match done {
                Some((_, response))
                    if response.body.len() as u64 > limits.response_body_bytes_max =>
                {
                    Err(InvokeError::ResponseTooLarge {
                        limit: limits.response_body_bytes_max,
                    })
                }
                Some((exports, response)) => {
                    let used = Checkout {
                        store,
                        pipes,
                        exports: Some(exports),
                        uses,
                    };
                    checkin(warm.as_deref(), &report, limits.instance_reuse_max, used);
                    Ok((response.status, Bytes::from(response.body)))
                }
                None => Err(report
                    .outcome
                    .clone()
                    .err()
                    .unwrap_or(InvokeError::NoResponse)),
            };
            (report, response)
        });
        let ((mut report, response), cpu_time) = CpuTimed::new(guest, demote).await;
        report.cpu_time = cpu_time;
        report.bytes_in = bytes_in;
        Output {
            result: response,
            report,
        }
    }

    /// Runs an http function on `request`. Returns once the guest has set its
    /// response (or failed); the body then streams while the guest runs on.
    ///
    /// The guest runs inside the caller's task until it sets the response.
    /// Most guests have finished by then (the whole body written), so no task
    /// is spawned; one that is still streaming its body goes on in a task of
    /// its own. `on_done` receives the [`Report`] once the guest has finished.
    pub async fn invoke_http<B>(
        &self,
        prepared: &Prepared,
        mut request: http::Request<B>,
        ctx: InvocationCtx,
        on_done: OnDone,
    ) -> Result<http::Response<ResponseBody>, InvokeError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // wasi:http needs an authority: HTTP/1.0 clients, calls and events
        // may bring none.
        if request.uri().authority().is_none()
            && !request.headers().contains_key(http::header::HOST)
        {
            request.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        let started = Instant::now();
        let limits = prepared.limits;
        let timing = ctx.timing(started, limits.timeout_ms);
        let deadline = timing.deadline;
        let early_failure = |error: InvokeError, on_done: OnDone| {
            on_done(Report::early(&ctx.invocation_id, error.clone(), started));
            Err(error)
        };
        let request_limit = limits.request_body_bytes_max;
        if content_length(request.headers()).is_some_and(|len| len > request_limit) {
            return early_failure(
                InvokeError::RequestTooLarge {
                    limit: request_limit,
                },
                on_done,
            );
        }
        let (request, watch) = watched(request, request_limit);
        let too_large_flag = watch.too_large.clone();
        let too_large = || {
            too_large_flag
                .load(Ordering::Relaxed)
                .then_some(InvokeError::RequestTooLarge {
                    limit: request_limit,
                })
        };

        let Checkout {
            mut store,
            pipes,
            exports,
            uses,
        } = match self.checkout(prepared, deadline, &ctx, prepared.config().await) {
            Ok(checkout) => checkout,
            Err(e) => return early_failure(e, on_done),
        };
        let guest = HttpGuest {
            tmp: crate::files::tmp_of(store.data().scratch.as_ref(), &prepared.mounts),
            timing,
            invocation_id: ctx.invocation_id.clone(),
            warm: prepared.warm.clone(),
            reuse_max: limits.instance_reuse_max,
            received: watch.received,
            demote: self.demote(&ctx, prepared),
        };
        match &prepared.pre {
            Pre::HttpP3(pre) => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                let pre = pre.clone();
                let mut request = request;
                absolute_uri(&mut request);
                let run = guest.start(store, pipes, uses, move |store: &mut Store<Host>| {
                    Box::pin(async move {
                        let span = store.data().span("instantiate", &[]);
                        let service = traced(span, pre.instantiate_async(&mut *store))
                            .await
                            .map_err(Failure::Instantiate)?;
                        store
                            .run_concurrent(async move |accessor| {
                                serve_p3(accessor, &service, request, sender).await
                            })
                            .await
                            .and_then(|served| served)
                            .map_err(Failure::Run)?;
                        Ok(None)
                    })
                });
                respond(run, receiver, ctx.inline, limits, too_large, on_done).await
            }
            Pre::Http { pre, proxy } => {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                let resources = {
                    let mut http = store.data_mut().http();
                    http.new_incoming_request(Scheme::Http, request)
                        .and_then(|req| Ok((req, http.new_response_outparam(sender)?)))
                };
                let (req, out) = match resources {
                    Ok(pair) => pair,
                    Err(e) => {
                        let failure = updraft_core::Failure::boxed(
                            "setting up the request",
                            e.into_boxed_dyn_error(),
                        );
                        return early_failure(InvokeError::Internal(failure), on_done);
                    }
                };
                let (pre, indices) = (pre.clone(), proxy.clone());
                let run = guest.start(store, pipes, uses, move |store: &mut Store<Host>| {
                    Box::pin(async move {
                        let mut exports = match exports {
                            Some(exports) => exports,
                            None => instantiate(&pre, store).await?,
                        };
                        exports
                            .proxy(&mut *store, &indices)
                            .map_err(Failure::Run)?
                            .wasi_http_incoming_handler()
                            .call_handle(&mut *store, req, out)
                            .await
                            .map_err(Failure::Run)?;
                        Ok(Some(exports))
                    })
                });
                respond(run, receiver, ctx.inline, limits, too_large, on_done).await
            }
            _ => early_failure(
                InvokeError::Internal(updraft_core::Failure::msg("not an http function")),
                on_done,
            ),
        }
    }

    /// Creates a store and an instance of the function, then drops both: the
    /// per-invocation cost without the guest's own work (for benchmarks).
    pub async fn instantiate_only(&self, prepared: &Prepared) -> Result<(), InvokeError> {
        let deadline = Instant::now() + Duration::from_millis(prepared.limits.timeout_ms);
        let owner = Owner {
            chain: Arc::new([]),
            memory_quota: None,
            trace: None,
            tracing: None,
        };
        let (mut store, _pipes) = self.new_store(
            prepared,
            None,
            LOG_CAPTURE_BYTES_MAX,
            deadline,
            owner,
            prepared.config().await,
        )?;
        let result = match &prepared.pre {
            Pre::Core(pre) => pre.instantiate_async(&mut store).await.map(drop),
            other => match other.instance_pre() {
                Some(pre) => pre.instantiate_async(&mut store).await.map(drop),
                None => Ok(()),
            },
        };
        result.map_err(instantiate_error)
    }

    /// Runs a command function: `stdin` in, stdout out.
    pub async fn invoke_command(
        &self,
        prepared: &Prepared,
        stdin: Bytes,
        ctx: InvocationCtx,
    ) -> CommandOutput {
        let started = Instant::now();
        let limits = prepared.limits;
        let timing = ctx.timing(started, limits.timeout_ms);
        let deadline = timing.deadline;
        let fail = |error| CommandOutput::early(&ctx.invocation_id, error, started);
        if !matches!(
            prepared.pre,
            Pre::Command(_) | Pre::CommandP3(_) | Pre::Core(_)
        ) {
            return fail(InvokeError::Internal(updraft_core::Failure::msg(
                "not a command function",
            )));
        }
        if let Err(e) = check_input(stdin.len(), limits.request_body_bytes_max) {
            return fail(e);
        }
        // One byte over the limit tells "exactly at the limit" from "cut off".
        let stdout_max = (limits.response_body_bytes_max as usize).saturating_add(1);
        let bytes_in = stdin.len() as u64;
        let (mut store, pipes) = match self.new_store(
            prepared,
            Some(stdin),
            stdout_max,
            deadline,
            Owner::of(&ctx),
            prepared.config().await,
        ) {
            Ok(created) => created,
            Err(e) => return fail(e),
        };
        let tmp = crate::files::tmp_of(store.data().scratch.as_ref(), &prepared.mounts);
        let pre = prepared.pre.clone();
        let demote = self.demote(&ctx, prepared);
        let invocation_id = ctx.invocation_id;
        let guest = Box::pin(async move {
            let run = async {
                match &pre {
                    Pre::Core(pre) => {
                        let span = store.data().span("instantiate", &[]);
                        let instance = traced(span, pre.instantiate_async(&mut store))
                            .await
                            .map_err(Failure::Instantiate)?;
                        let start = instance
                            .get_typed_func::<(), ()>(&mut store, "_start")
                            .map_err(Failure::Instantiate)?;
                        // `proc_exit(n)` ends the run as an `I32Exit` error.
                        start.call_async(&mut store, ()).await.map_err(Failure::Run)
                    }
                    Pre::Command(pre) => {
                        let span = store.data().span("instantiate", &[]);
                        let command = traced(span, pre.instantiate_async(&mut store))
                            .await
                            .map_err(Failure::Instantiate)?;
                        match command.wasi_cli_run().call_run(&mut store).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(())) => Err(Failure::ExitCode(1)),
                            Err(e) => Err(Failure::Run(e)),
                        }
                    }
                    Pre::CommandP3(pre) => {
                        let span = store.data().span("instantiate", &[]);
                        let command = traced(span, pre.instantiate_async(&mut store))
                            .await
                            .map_err(Failure::Instantiate)?;
                        let run = store
                            .run_concurrent(async move |store| {
                                command.wasi_cli_run().call_run(store).await
                            })
                            .await;
                        match run {
                            Ok(Ok(Ok(()))) => Ok(()),
                            Ok(Ok(Err(()))) => Err(Failure::ExitCode(1)),
                            Ok(Err(e)) | Err(e) => Err(Failure::Run(e)),
                        }
                    }
                    Pre::Http { .. } | Pre::HttpP3(_) => Ok(()),
                }
            };
            let run = crate::files::within_tmp(run, tmp, Failure::Run);
            let result = tokio::time::timeout_at(deadline.into(), run).await;
            let report = finish(
                &store,
                &pipes,
                result,
                timing,
                invocation_id,
                Some(limits.response_body_bytes_max),
            );
            // Here, not in the caller: giving a large memory back to the
            // kernel is this invocation's cost, in its own lane.
            drop(store);
            (report, pipes)
        });
        let ((mut report, pipes), cpu_time) = CpuTimed::new(guest, demote).await;
        report.cpu_time = cpu_time;
        report.bytes_in = bytes_in;
        let output = pipes.stdout.take();
        // A full stdout pipe explains whatever came after (a failed write
        // usually makes the guest exit non-zero), so it is reported first.
        let stdout = if output.len() as u64 > limits.response_body_bytes_max {
            Err(InvokeError::ResponseTooLarge {
                limit: limits.response_body_bytes_max,
            })
        } else {
            match &report.outcome {
                Ok(()) => Ok(output),
                Err(InvokeError::Exit { code, .. }) => Err(InvokeError::Exit {
                    code: *code,
                    stdout: output,
                }),
                Err(e) => Err(e.clone()),
            }
        };
        Output {
            result: stdout,
            report,
        }
    }
}

/// A future, and the time a thread spent polling it: for a guest, its own
/// compute and the host calls it made, not the time it spent waiting.
///
/// Timed with the monotonic clock (vDSO, tens of nanoseconds), not the
/// thread CPU clock, which is a system call and cost ~9% of a consumer's
/// CPU at tens of thousands of events a second. A poll does not block, so
/// the two agree unless the thread is preempted mid-poll.
///
/// It also moves the future to the background lane ([`crate::lanes`]) once
/// it has used [`FOREGROUND_CPU_MAX`] and yields, or starts it there when
/// its function's last invocation was a hog ([`History`]). A callee run
/// inside its caller's poll stays in its caller's lane and moves with it:
/// apart, the caller's deadline could cut the callee off before the callee
/// saw its own (the same instant), and the callee's report would be lost.
struct CpuTimed<T> {
    lane: Lane<T>,
    /// Its own time: what is billed.
    spent: Duration,
    /// Its time with its callees': what moves it.
    polled: Duration,
    /// Where it goes past its foreground share; `None` once there, or
    /// where it stays put (a test, or already in the background).
    demote: Option<Demote>,
    /// Told at the end where this invocation ended up.
    history: Option<Arc<History>>,
    /// Told at the end the CPU it used.
    load: Option<Arc<crate::shed::Load>>,
}

/// Where an invocation goes past its foreground share.
struct Demote {
    background: Arc<Background>,
    /// Its turn there.
    share: Share,
    /// Its function's.
    history: Arc<History>,
    /// Its function's, told how long its polls wait there.
    load: Arc<crate::shed::Load>,
}

enum Lane<T> {
    Foreground(Pin<Box<dyn Future<Output = T> + Send>>),
    Background(async_task::Task<(T, Duration)>),
    /// Only while moving from one to the other.
    Moving,
}

impl<T: Send + 'static> CpuTimed<T> {
    fn new(inner: Pin<Box<dyn Future<Output = T> + Send>>, demote: Option<Demote>) -> Self {
        let nested = DEPTH.get() > 0;
        let demote = demote.filter(|_| !crate::lanes::on_background() && !nested);
        let history = demote.as_ref().map(|d| d.history.clone());
        let load = demote.as_ref().map(|d| d.load.clone());
        let timed = CpuTimed {
            lane: Lane::Foreground(inner),
            spent: Duration::ZERO,
            polled: Duration::ZERO,
            demote: None,
            history,
            load,
        };
        match demote {
            Some(demote) if demote.history.heavy() => {
                match demote.background.spawn(demote.share, demote.load, timed) {
                    Ok(task) => CpuTimed {
                        lane: Lane::Background(task),
                        spent: Duration::ZERO,
                        polled: Duration::ZERO,
                        demote: None,
                        history: None,
                        load: None,
                    },
                    // No background thread: it runs here.
                    Err(timed) => timed,
                }
            }
            demote => CpuTimed { demote, ..timed },
        }
    }
}

thread_local! {
    /// Time in the guest polls under way on this thread, nested ones
    /// included: a callee run inside its caller's host call is the
    /// callee's time, not the caller's too.
    static POLLING: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
    /// Guest polls under way on this thread: above 0, a new invocation is
    /// a callee inside its caller's poll.
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One level of [`DEPTH`], left when dropped (a panicking guest poll too).
struct Depth;

impl Depth {
    fn enter() -> Depth {
        DEPTH.set(DEPTH.get() + 1);
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.set(DEPTH.get().saturating_sub(1));
    }
}

impl<T: Send + 'static> Future for CpuTimed<T> {
    type Output = (T, Duration);

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let inner = match &mut this.lane {
            Lane::Foreground(inner) => inner,
            Lane::Background(task) => return Pin::new(task).poll(cx),
            Lane::Moving => return Poll::Pending,
        };
        let outer = POLLING.get();
        let start = Instant::now();
        let poll = {
            let _depth = Depth::enter();
            inner.as_mut().poll(cx)
        };
        let spent = start.elapsed();
        let nested = POLLING.get().saturating_sub(outer);
        POLLING.set(outer + spent);
        this.spent += spent.saturating_sub(nested);
        this.polled += spent;
        let total = this.spent;
        let heavy = this.polled >= HEAVY_CPU;
        if let Some(history) = &this.history
            && (heavy || poll.is_ready())
        {
            // A hog marks its function as soon as it is one, so the rest of
            // a burst of it starts in the background; the end says what the
            // invocation was.
            history.set_heavy(heavy);
        }
        if poll.is_ready() {
            this.history = None;
            if let Some(load) = this.load.take() {
                load.ran(this.polled);
            }
        }
        if poll.is_pending()
            && this.polled >= FOREGROUND_CPU_MAX
            && let Some(demote) = this.demote.take()
            && let Lane::Foreground(inner) = std::mem::replace(&mut this.lane, Lane::Moving)
        {
            let rest = CpuTimed {
                lane: Lane::Foreground(inner),
                spent: total,
                polled: this.polled,
                demote: None,
                history: this.history.take(),
                load: this.load.take(),
            };
            match demote.background.spawn(demote.share, demote.load, rest) {
                Ok(mut task) => {
                    // Registers this task's waker for the output.
                    let poll = Pin::new(&mut task).poll(cx);
                    this.lane = Lane::Background(task);
                    return poll;
                }
                // No background thread: it goes on here.
                Err(rest) => {
                    this.lane = rest.lane;
                    this.history = rest.history;
                    this.load = rest.load;
                }
            }
        }
        poll.map(|out| (out, total))
    }
}

/// A running http guest: its future ends with the [`Report`].
type Guest = Pin<Box<dyn Future<Output = Report> + Send>>;

/// Receives the [`Report`] of an invocation once the guest has finished.
pub type OnDone = Box<dyn FnOnce(Report) + Send>;

/// A running http guest and who waits for its report. Dropping it hands the
/// report on if the guest has finished, else lets the guest run to its end
/// (still bounded by its deadline) in a task of its own — also when the
/// caller goes away early, so a client that disconnects does not cut a
/// function short or lose its logs.
struct GuestRun {
    guest: Option<Guest>,
    report: Option<Report>,
    on_done: Option<OnDone>,
}

impl GuestRun {
    /// Runs the guest until `receiver` has the response; `None` when the
    /// guest finished without setting one.
    fn poll_response<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        receiver: &mut tokio::sync::oneshot::Receiver<T>,
    ) -> Poll<Option<T>> {
        if let Some(guest) = &mut self.guest
            && let Poll::Ready(report) = guest.as_mut().poll(cx)
        {
            self.guest = None;
            self.report = Some(report);
        }
        match Pin::new(receiver).poll(cx) {
            Poll::Ready(sent) => Poll::Ready(sent.ok()),
            // Finished without a word: the outparam is gone with the store.
            Poll::Pending if self.guest.is_none() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Runs the guest to its end; its outcome (the report is handed on at drop).
    fn poll_outcome(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), InvokeError>> {
        if let Some(guest) = &mut self.guest {
            let report = std::task::ready!(guest.as_mut().poll(cx));
            self.guest = None;
            self.report = Some(report);
        }
        Poll::Ready(match &self.report {
            Some(report) => report.outcome.clone(),
            None => Err(InvokeError::NoResponse),
        })
    }
}

impl Drop for GuestRun {
    fn drop(&mut self) {
        let Some(on_done) = self.on_done.take() else {
            return;
        };
        if let Some(report) = self.report.take() {
            on_done(report);
        } else if let Some(guest) = self.guest.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { on_done(guest.await) });
        }
    }
}

/// What an http guest's future needs besides its store and its run.
struct HttpGuest {
    tmp: Option<(std::path::PathBuf, u64)>,
    timing: Timing,
    invocation_id: String,
    warm: Option<Arc<WarmPool>>,
    reuse_max: u32,
    /// Request body bytes the guest read.
    received: Arc<AtomicU64>,
    demote: Option<Demote>,
}

/// An http guest's work in its store: instantiate (unless warm) and handle
/// the request; gives back the exports worth keeping for reuse.
type HttpRun<'s> = Pin<Box<dyn Future<Output = Result<Option<Exports>, Failure>> + Send + 's>>;

impl HttpGuest {
    /// The guest's future: `run` within the deadline (and `/tmp`'s limit),
    /// then its [`Report`]; a cleanly finished instance goes back to the
    /// warm pool if the function reuses instances. The one timer of the
    /// request bounds the guest, and with it the wait for the response: a
    /// guest stopped at the deadline drops the response's sender.
    fn start<F>(self, mut store: Store<Host>, pipes: Pipes, uses: u32, run: F) -> Guest
    where
        F: for<'s> FnOnce(&'s mut Store<Host>) -> HttpRun<'s> + Send + 'static,
    {
        let HttpGuest {
            tmp,
            timing,
            invocation_id,
            warm,
            reuse_max,
            received,
            demote,
        } = self;
        Box::pin(async move {
            let guest = Box::pin(async move {
                let run = crate::files::within_tmp(run(&mut store), tmp, Failure::Run);
                let result = tokio::time::timeout_at(timing.deadline.into(), run).await;
                let (result, exports) = split(result);
                let report = finish(&store, &pipes, result, timing, invocation_id, None);
                let used = Checkout {
                    store,
                    pipes,
                    exports: exports.flatten(),
                    uses,
                };
                checkin(warm.as_deref(), &report, reuse_max, used);
                report
            });
            let (mut report, cpu_time) = CpuTimed::new(guest, demote).await;
            report.cpu_time = cpu_time;
            report.bytes_in = received.load(Ordering::Relaxed);
            report
        })
    }
}

/// Drives an http guest until it sets its response, then hands that on:
/// for an inline call whole, with the guest run to its end; otherwise
/// streaming, the guest running on as the body is read.
async fn respond<B, E>(
    guest: Guest,
    mut receiver: tokio::sync::oneshot::Receiver<Result<http::Response<B>, E>>,
    inline: bool,
    limits: updraft_core::Limits,
    too_large: impl Fn() -> Option<InvokeError>,
    on_done: OnDone,
) -> Result<http::Response<ResponseBody>, InvokeError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: std::fmt::Debug,
{
    let mut run = GuestRun {
        guest: Some(guest),
        report: None,
        on_done: Some(on_done),
    };
    let sent = std::future::poll_fn(|cx| run.poll_response(cx, &mut receiver)).await;
    match sent {
        Some(Ok(response)) if inline => {
            let limit = limits.response_body_bytes_max;
            let (parts, body) = response.into_parts();
            // Both in this task: the guest may need its body read to finish.
            let (body, outcome) = futures::join!(
                Limited::new(body, limit as usize).collect(),
                std::future::poll_fn(|cx| run.poll_outcome(cx))
            );
            drop(run);
            if let Some(error) = too_large() {
                return Err(error);
            }
            outcome?;
            let body = body.map_err(|e| {
                if e.is::<LengthLimitError>() {
                    InvokeError::ResponseTooLarge { limit }
                } else {
                    InvokeError::Guest(format!("the response body failed: {e}"))
                }
            })?;
            let body = http_body_util::Full::new(body.to_bytes())
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok(http::Response::from_parts(parts, body))
        }
        Some(Ok(response)) => {
            drop(run);
            if let Some(error) = too_large() {
                return Err(error);
            }
            let limit = limits.response_body_bytes_max;
            Ok(response.map(|body| {
                Limited::new(body, limit as usize)
                    .map_err(move |e| {
                        if e.is::<LengthLimitError>() {
                            format!(
                                "response body exceeded response_body_bytes_max ({limit} bytes)"
                            )
                            .into()
                        } else {
                            e
                        }
                    })
                    .boxed_unsync()
            }))
        }
        Some(Err(code)) => Err(too_large().unwrap_or(InvokeError::Guest(format!("{code:?}")))),
        None => {
            // The guest dropped its response sender: it finished or failed
            // without answering. Its report says why.
            let outcome = std::future::poll_fn(|cx| run.poll_outcome(cx)).await;
            Err(too_large().unwrap_or_else(|| outcome.err().unwrap_or(InvokeError::NoResponse)))
        }
    }
}

/// A WASI 0.3 service's handling of one request, inside the store's
/// concurrent event loop: the response goes to `sender` as soon as the
/// guest returns it, and the loop runs on until the guest's tasks are done
/// (its body written).
async fn serve_p3<B>(
    accessor: &wasmtime::component::Accessor<Host>,
    service: &wasmtime_wasi_http::p3::bindings::Service,
    request: http::Request<B>,
    sender: tokio::sync::oneshot::Sender<P3Response>,
) -> wasmtime::Result<()>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (request, request_io) = accessor.with(|mut access| {
        let (request, io) =
            wasmtime_wasi_http::p3::Request::from_http(access.get().http().hooks, request);
        // Boxed: the future is 'static, but its opaque type names the hooks' borrow.
        let io: Pin<Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>> = Box::pin(io);
        (request, io)
    });
    match service.handle(accessor, request).await? {
        Ok(response) => {
            let response =
                accessor.with(|mut access| response.into_http(&mut access, request_io))?;
            let _ = sender.send(Ok(response));
        }
        Err(code) => {
            let _ = sender.send(Err(code));
        }
    }
    std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
    Ok(())
}

/// What a WASI 0.3 service answers: a response, or its error code.
type P3Response = Result<
    http::Response<UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>>,
    wasmtime_wasi_http::p3::bindings::http::types::ErrorCode,
>;

/// WASI 0.3 requests carry their scheme and authority: the gateway's
/// request has a path only, the authority is in its `Host` header.
fn absolute_uri<B>(request: &mut http::Request<B>) {
    if request.uri().scheme().is_some() {
        return;
    }
    let authority = request
        .headers()
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| host.parse::<http::uri::Authority>().ok())
        .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// A fresh instance in `store`.
async fn instantiate(pre: &InstancePre<Host>, store: &mut Store<Host>) -> Result<Exports, Failure> {
    let span = store.data().span("instantiate", &[]);
    let instance = traced(span, pre.instantiate_async(store))
        .await
        .map_err(Failure::Instantiate)?;
    Ok(Exports::new(instance))
}

/// A run's ending for [`finish`], and what a successful run gave back.
/// What the guest did with its request body: how much it read, and whether
/// it read past the limit.
struct BodyWatch {
    received: Arc<AtomicU64>,
    too_large: Arc<AtomicBool>,
}

/// The request with its body counted and held to `limit` bytes: reading
/// past it is a wasi:http body-size error for the guest, and sets the
/// watch's `too_large`.
fn watched<B>(
    request: http::Request<B>,
    limit: u64,
) -> (
    http::Request<
        impl http_body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
    >,
    BodyWatch,
)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let watch = BodyWatch {
        received: Arc::new(AtomicU64::new(0)),
        too_large: Arc::new(AtomicBool::new(false)),
    };
    let (counter, flag) = (watch.received.clone(), watch.too_large.clone());
    let request = request.map(move |body| {
        let body = body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        });
        Limited::new(body, limit as usize).map_err(move |e| {
            if e.is::<LengthLimitError>() {
                flag.store(true, Ordering::Relaxed);
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
            } else {
                wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
            }
        })
    });
    (request, watch)
}

fn split<T>(
    result: Result<Result<T, Failure>, tokio::time::error::Elapsed>,
) -> (
    Result<Result<(), Failure>, tokio::time::error::Elapsed>,
    Option<T>,
) {
    match result {
        Ok(Ok(kept)) => (Ok(Ok(())), Some(kept)),
        Ok(Err(failure)) => (Ok(Err(failure)), None),
        Err(elapsed) => (Err(elapsed), None),
    }
}

/// Keeps an instance for a later invocation. Only one that finished cleanly
/// is trusted with another, and only `reuse_max` times in all.
fn checkin(warm: Option<&WarmPool>, report: &Report, reuse_max: u32, used: Checkout) {
    let Checkout {
        store,
        pipes,
        exports,
        uses,
    } = used;
    if let (Some(warm), Some(exports)) = (warm, exports)
        && report.outcome.is_ok()
        && uses + 1 < reuse_max
    {
        warm.put(WarmInstance {
            store,
            exports,
            pipes,
            uses: uses + 1,
        });
    }
}

/// How the guest's run ended, before classification.
enum Failure {
    Instantiate(wasmtime::Error),
    Run(wasmtime::Error),
    ExitCode(i32),
}

/// Why a deploy-time run stopped, said for the function's author, with the
/// end of what it wrote to stderr.
pub(crate) fn deploy_run_failure(
    e: &wasmtime::Error,
    store: &Store<Host>,
    pipes: &Pipes,
    timeout_ms: u64,
) -> String {
    let limiter = &store.data().limiter;
    let why = if e.downcast_ref::<DeadlineReached>().is_some() {
        format!(
            "it did not finish within timeout_ms ({timeout_ms} ms): shorten it or raise timeout_ms"
        )
    } else if limiter.hit {
        format!(
            "it grew past memory_mb ({} MiB): use less or raise memory_mb",
            limiter.bytes_max >> 20
        )
    } else {
        format!("it trapped: {e:#}")
    };
    let stderr = pipes.stderr.take();
    let tail = &stderr[stderr.len().saturating_sub(STDERR_TAIL_BYTES)..];
    match String::from_utf8_lossy(tail).trim() {
        "" => why,
        text => format!("{why}; its stderr ends: {text}"),
    }
}

/// How much of a failed deploy-time run's stderr its error quotes.
const STDERR_TAIL_BYTES: usize = 1024;

/// Wasmtime's error kept whole as the source (the logs show it), under a
/// message that names no internals.
fn instantiate_error(e: wasmtime::Error) -> InvokeError {
    InvokeError::Instantiate(updraft_core::Failure::boxed(
        "the server's instance pool or memory is exhausted",
        e.into(),
    ))
}

/// Classifies the end of a run and gathers the logs into a [`Report`].
fn finish(
    store: &Store<Host>,
    pipes: &Pipes,
    result: Result<Result<(), Failure>, tokio::time::error::Elapsed>,
    timing: Timing,
    invocation_id: String,
    stdout_is_response: Option<u64>,
) -> Report {
    let Timing {
        started,
        deadline,
        by_caller,
    } = timing;
    let limiter = &store.data().limiter;
    let timeout_ms = deadline.duration_since(started).as_millis() as u64;
    let timed_out = || match by_caller {
        true => InvokeError::CallerDeadline { ran_ms: timeout_ms },
        false => InvokeError::Timeout { timeout_ms },
    };
    let memory_mb = (limiter.bytes_max >> 20) as u32;
    let mut notes = Vec::new();
    let outcome = match result {
        Err(_elapsed) => Err(timed_out()),
        Ok(Ok(())) => Ok(()),
        Ok(Err(Failure::ExitCode(code))) => Err(InvokeError::Exit {
            code,
            stdout: Bytes::new(),
        }),
        Ok(Err(Failure::Instantiate(e))) if limiter.hit => {
            notes.push(format!("instantiation failed: {e:#}"));
            Err(InvokeError::MemoryLimit { memory_mb })
        }
        Ok(Err(Failure::Instantiate(e))) => Err(instantiate_error(e)),
        Ok(Err(Failure::Run(e))) => {
            if limiter.hit {
                Err(InvokeError::MemoryLimit { memory_mb })
            } else if let Some(tmp) = e.downcast_ref::<crate::files::TmpLimitExceeded>() {
                Err(InvokeError::TmpLimit {
                    tmp_mb: (tmp.0 >> 20) as u32,
                })
            } else if e.is::<DeadlineReached>() || Instant::now() >= deadline {
                Err(timed_out())
            } else if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                if exit.0 == 0 {
                    Ok(())
                } else {
                    Err(InvokeError::Exit {
                        code: exit.0,
                        stdout: Bytes::new(),
                    })
                }
            } else {
                notes.push(format!("{e:?}"));
                Err(InvokeError::Trap {
                    message: trap_summary(&e),
                })
            }
        }
    };
    // A budget that stayed full is why the guest failed, whatever it did
    // when its memory did not grow.
    let outcome = match (outcome, limiter.budget_full) {
        (Err(_), Some((crate::host::SERVER_BUDGET, budget_mb))) => {
            Err(InvokeError::ServerMemoryFull { budget_mb })
        }
        (Err(_), Some((_, budget_mb))) => Err(InvokeError::TenantMemoryFull { budget_mb }),
        (outcome, _) => outcome,
    };
    let memory_peak_bytes = limiter.bytes_peak as u64;
    notes.extend(store.data().notes.iter().cloned());
    let outbound = store.data().hooks.take_tally();
    notes.extend(outbound.notes);
    let mut logs = Vec::new();
    if stdout_is_response.is_none() {
        push_lines(&mut logs, LogStream::Stdout, &pipes.stdout.take());
    }
    let stderr = pipes.stderr.take();
    push_lines(&mut logs, LogStream::Stderr, &stderr);
    if stderr.len() >= LOG_CAPTURE_BYTES_MAX {
        logs.push((
            LogStream::Platform,
            format!("log output cut at {LOG_CAPTURE_BYTES_MAX} bytes"),
        ));
    }
    if let Err(error) = &outcome {
        logs.push((LogStream::Platform, error.to_string()));
    }
    for note in notes {
        logs.push((LogStream::Platform, note));
    }
    Report {
        invocation_id,
        outcome,
        logs,
        duration: started.elapsed(),
        memory_peak_bytes,
        cpu_time: Duration::ZERO,
        bytes_in: 0,
        state: StateUsage {
            outbound_requests: outbound.requests,
            outbound_bytes: outbound.bytes_out,
            ..store.data().usage
        },
    }
}

/// The line of a trap that names the cause, without the backtrace.
fn trap_summary(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let first = root.lines().next().unwrap_or("unknown trap").trim();
    first.to_string()
}

fn push_lines(logs: &mut Vec<(LogStream, String)>, stream: LogStream, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        logs.push((stream, line.to_string()));
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps this thread busy for `busy`.
    fn burn(busy: Duration) {
        let start = Instant::now();
        while start.elapsed() < busy {
            std::hint::black_box(0u64);
        }
    }

    #[tokio::test]
    async fn a_nested_run_is_not_counted_twice() {
        let inner = Duration::from_millis(40);
        let outer = CpuTimed::new(
            Box::pin(async move {
                let (_, nested) = CpuTimed::new(Box::pin(async move { burn(inner) }), None).await;
                nested
            }),
            None,
        );
        let (nested, own) = outer.await;
        assert!(nested >= inner, "the callee's {nested:?}");
        // The caller did next to nothing itself; it must not be billed the
        // callee's 40 ms of CPU as well.
        assert!(own < inner / 2, "the caller's {own:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_function_starts_where_its_last_invocation_ended() {
        let background = Arc::new(Background::new(1));
        let history = Arc::new(History::default());
        let demote = || {
            Some(Demote {
                background: background.clone(),
                share: Share {
                    tenant: Arc::from("tenant"),
                    function: Arc::from("function"),
                },
                history: history.clone(),
                load: Arc::default(),
            })
        };
        let where_it_ends = || Box::pin(async { crate::lanes::on_background() });
        // Light while the function has no history: stays in the foreground.
        assert!(!CpuTimed::new(where_it_ends(), demote()).await.0);
        // Past the foreground share but no hog (a cold start, say): moves,
        // but its function's next invocation still starts in the foreground.
        let burning = |busy: Duration| {
            Box::pin(async move {
                for _ in 0..2 {
                    burn(busy);
                    tokio::task::yield_now().await;
                }
                crate::lanes::on_background()
            })
        };
        assert!(CpuTimed::new(burning(FOREGROUND_CPU_MAX), demote()).await.0);
        assert!(!history.heavy());
        assert!(!CpuTimed::new(where_it_ends(), demote()).await.0);
        let long = burning(HEAVY_CPU);
        assert!(CpuTimed::new(long, demote()).await.0, "a long run moves");
        assert!(history.heavy());
        // The next starts in the background; ending within the foreground
        // share, it brings its function back.
        assert!(CpuTimed::new(where_it_ends(), demote()).await.0);
        assert!(!history.heavy());
        assert!(!CpuTimed::new(where_it_ends(), demote()).await.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn with_no_background_thread_a_hog_still_runs_to_its_end_here() {
        // As when the OS refuses the lane its threads.
        let background = Arc::new(Background::new(0));
        let history = Arc::new(History::default());
        history.set_heavy(true);
        let demote = Demote {
            background,
            share: Share {
                tenant: Arc::from("tenant"),
                function: Arc::from("function"),
            },
            history: history.clone(),
            load: Arc::default(),
        };
        let hog = Box::pin(async {
            for _ in 0..2 {
                burn(HEAVY_CPU);
                tokio::task::yield_now().await;
            }
            crate::lanes::on_background()
        });
        let (moved, cpu) = CpuTimed::new(hog, Some(demote)).await;
        assert!(!moved);
        assert!(cpu >= HEAVY_CPU * 2, "{cpu:?}");
        assert!(history.heavy());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_callee_moves_with_its_caller() {
        let background = Arc::new(Background::new(1));
        let demote = || {
            Some(Demote {
                background: background.clone(),
                share: Share {
                    tenant: Arc::from("tenant"),
                    function: Arc::from("function"),
                },
                history: Arc::default(),
                load: Arc::default(),
            })
        };
        let callee_demote = demote();
        let caller = Box::pin(async move {
            let callee = Box::pin(async {
                for _ in 0..3 {
                    burn(HEAVY_CPU);
                    tokio::task::yield_now().await;
                }
                crate::lanes::on_background()
            });
            let (callee_moved, _) = CpuTimed::new(callee, callee_demote).await;
            (callee_moved, crate::lanes::on_background())
        });
        let ((callee_moved, caller_moved), own) = CpuTimed::new(caller, demote()).await;
        // Both ended on the same background thread, the caller not billed
        // the callee's 30 ms (a margin for a preempted poll on a busy box).
        assert!(callee_moved && caller_moved);
        assert!(own < HEAVY_CPU, "the caller's {own:?}");
    }
}
