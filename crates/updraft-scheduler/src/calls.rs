//! Calls from one function to another (`updraft:platform/invoke`): the
//! scheduler's side of the sandbox's [`FunctionCaller`]. A call runs the
//! callee's serving version in process, like any invocation (admission,
//! logs, a usage record with trigger `call`), under the chain's deadline.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use updraft_core::{FunctionKind, Trigger};
use updraft_sandbox::{CallError, CallRequest, FunctionCaller, InvokeError};

use crate::error::PlatformError;
use crate::platform::{Loaded, Platform};

/// The platform as the sandbox sees it: weak, so a function's grant does
/// not keep the platform alive.
pub(crate) struct PlatformCaller(pub(crate) Weak<Platform>);

impl FunctionCaller for PlatformCaller {
    fn call(&self, request: CallRequest) -> BoxFuture<'static, Result<(u16, Bytes), CallError>> {
        let Some(platform) = self.0.upgrade() else {
            return Box::pin(async {
                Err(CallError::Failed("the platform is shutting down".into()))
            });
        };
        let Some(loaded) = platform.get(&request.owner, &request.function) else {
            return Box::pin(async { Err(CallError::NotFound) });
        };
        // A callee with a handler export runs right in the caller's host
        // call: no task, no wake-up of another thread.
        let direct = loaded.prepared().is_some_and(|p| p.takes_calls());
        if direct {
            return Box::pin(async move { platform.call(loaded, request).await });
        }
        // Any other callee runs in a task of its own, never nested inside
        // the caller's store: an http guest's store suspended (at an epoch
        // yield) inside another guest's host call confuses Wasmtime's fibers.
        let callee = tokio::spawn(async move { platform.call(loaded, request).await });
        Box::pin(async move {
            callee
                .await
                .unwrap_or_else(|e| Err(CallError::Failed(format!("the call failed: {e}"))))
        })
    }
}

fn call_error(e: PlatformError) -> CallError {
    match e {
        PlatformError::Invoke(InvokeError::Timeout { .. }) => CallError::Timeout,
        other => CallError::Failed(other.to_string()),
    }
}

impl Platform {
    /// Runs one call: a callee with a handler export gets the payload
    /// directly, any other http callee gets `POST /` with it, a command gets
    /// it on stdin.
    async fn call(
        self: Arc<Self>,
        loaded: Arc<Loaded>,
        request: CallRequest,
    ) -> Result<(u16, Bytes), CallError> {
        let id = uuid::Uuid::now_v7().to_string();
        // Prepared first (it may have been unloaded while idle): whether it
        // takes calls directly is known only then.
        let prepared = self.ensure_prepared(&loaded).await.map_err(call_error)?;
        if prepared.takes_calls() {
            let payload = request.payload.clone();
            let (_, response) = self
                .invoke_handler_as(&loaded, payload, Trigger::Call, id, Some(&request))
                .await;
            return response.map_err(call_error);
        }
        match loaded.version.kind {
            FunctionKind::Http => {
                let http_request = http::Request::builder()
                    .method("POST")
                    .uri("/")
                    .header(http::header::HOST, "localhost")
                    .body(http_body_util::Full::new(request.payload.clone()))
                    .map_err(|e| CallError::Failed(e.to_string()))?;
                let (_, response) = self
                    .invoke_http_as(&loaded, http_request, Trigger::Call, id, Some(&request))
                    .await;
                let response = response.map_err(call_error)?;
                let status = response.status().as_u16();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| CallError::Failed(format!("the response body failed: {e}")))?
                    .to_bytes();
                Ok((status, body))
            }
            FunctionKind::Command => {
                let payload = request.payload.clone();
                let (_, stdout) = self
                    .invoke_command_as(&loaded, payload, Trigger::Call, id, Some(&request))
                    .await;
                Ok((200, stdout.map_err(call_error)?))
            }
        }
    }
}
