//! Calls from one function to another (`updraft:platform/invoke`): the
//! scheduler's side of the sandbox's [`FunctionCaller`]. A call runs the
//! callee's serving version in process, like any invocation (admission,
//! logs, a usage record with trigger `call`), under the chain's deadline.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use updraft_core::Trigger;
use updraft_sandbox::{CallError, CallRequest, FunctionCaller, InvokeError};

use crate::error::PlatformError;
use crate::functions::Loaded;
use crate::invoker::{Input, Invocation, Invoker};

/// The invoker as the sandbox sees it: weak, so a function's grant does
/// not keep the platform alive.
pub(crate) struct InvokerCaller(pub(crate) Weak<Invoker>);

impl FunctionCaller for InvokerCaller {
    fn call(&self, request: CallRequest) -> BoxFuture<'static, Result<(u16, Bytes), CallError>> {
        let Some(invoker) = self.0.upgrade() else {
            return Box::pin(async {
                Err(CallError::Failed("the platform is shutting down".into()))
            });
        };
        let Some(loaded) = invoker.functions().get(&request.owner, &request.function) else {
            return Box::pin(async { Err(CallError::NotFound) });
        };
        // A callee with a handler export runs right in the caller's host
        // call: no task, no wake-up of another thread.
        let direct = loaded.prepared().is_some_and(|p| p.takes_calls());
        if direct {
            return Box::pin(async move { invoker.call(loaded, request).await });
        }
        // Any other callee runs in a task of its own, never nested inside
        // the caller's store: an http guest's store suspended (at an epoch
        // yield) inside another guest's host call confuses Wasmtime's fibers.
        let callee = tokio::spawn(async move { invoker.call(loaded, request).await });
        Box::pin(async move {
            callee
                .await
                .unwrap_or_else(|e| Err(CallError::Failed(format!("the call failed: {e}"))))
        })
    }
}

fn call_error(e: PlatformError) -> CallError {
    match e {
        PlatformError::Invoke(InvokeError::Timeout { .. } | InvokeError::CallerDeadline { .. }) => {
            CallError::Timeout
        }
        other => CallError::Failed(other.for_guest()),
    }
}

impl Invoker {
    /// Runs one call through [`Invoker::run`]: the payload goes to the
    /// callee's handler export, or as `POST /` to an http callee, or on a
    /// command's stdin; the caller gets the whole answer.
    async fn call(
        self: Arc<Self>,
        loaded: Arc<Loaded>,
        request: CallRequest,
    ) -> Result<(u16, Bytes), CallError> {
        let mut invocation = Invocation::new(
            &loaded,
            Input::Payload(request.payload.clone()),
            Trigger::Call,
        );
        invocation.call = Some(&request);
        // The caller's side of the call, the callee's invocation under it.
        let mut span = self.traces().start(
            format!("call {}", loaded.name),
            SpanKind::Client,
            request.trace,
            vec![
                KeyValue::new("faas.invoked_name", loaded.name.to_string()),
                KeyValue::new("faas.invoked_provider", "updraft"),
                KeyValue::new(crate::traces::TENANT, loaded.tenant.to_string()),
            ],
        );
        invocation.trace = span.position();
        let (_, outcome) = self.run(invocation).await;
        let answer = match outcome {
            Ok(outcome) => outcome.collect().await,
            Err(e) => Err(e),
        };
        if let Err(e) = &answer {
            span.fail(updraft_core::Classify::code(e));
        }
        span.end();
        answer.map_err(call_error)
    }
}
