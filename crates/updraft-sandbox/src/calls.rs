//! `updraft:platform/invoke` for guests: synchronous calls to other
//! functions of the same tenant. The sandbox only checks what it can see
//! (the manifest's `calls`, the chain, the deadline) and hands the call to a
//! [`FunctionCaller`], which the scheduler implements: the sandbox knows
//! nothing about which version runs or how.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use wasmtime::component::{HasSelf, Linker};

use crate::capability::Backends;
use crate::host::{Host, refused};
use updraft_core::Manifest;

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/invoke",
        world: "updraft:platform/callable",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bindings::updraft::platform::invoke;

/// The `updraft:platform/handler` export of a callee, found at deploy time.
pub(crate) use bindings::exports::updraft::platform::handler::{
    Guest as Handler, GuestIndices as HandlerIndices,
};

/// Name prefix of the export that makes a function callable directly.
pub(crate) use updraft_core::wasm::HANDLER_EXPORT;

/// Longest chain of calls: the first caller and 15 callees below it.
pub const CALL_DEPTH_MAX: usize = 16;

/// One call on its way to the platform.
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub owner: String,
    pub function: String,
    pub payload: Bytes,
    /// The functions of the chain so far, the callee last.
    pub chain: Arc<[Arc<str>]>,
    /// When the whole chain must be done.
    pub deadline: Instant,
    /// The caller's place in its trace.
    pub trace: Option<updraft_core::trace::TraceParent>,
}

/// Why the platform could not give a response. The scheduler's message in
/// `Failed` is one a guest may read (it names no internals).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the function does not exist")]
    NotFound,
    #[error("the chain's deadline passed before the callee finished")]
    Timeout,
    #[error("{0}")]
    Failed(String),
}

impl updraft_core::Classify for CallError {
    fn kind(&self) -> updraft_core::ErrorKind {
        use updraft_core::ErrorKind;
        match self {
            CallError::NotFound => ErrorKind::NotFound,
            CallError::Timeout => ErrorKind::Timeout,
            CallError::Failed(_) => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            CallError::NotFound => "function_not_found",
            CallError::Timeout => "timeout",
            CallError::Failed(_) => "call_failed",
        }
    }
}

/// Runs a call: implemented by the scheduler.
pub trait FunctionCaller: Send + Sync + 'static {
    fn call(&self, request: CallRequest) -> BoxFuture<'static, Result<(u16, Bytes), CallError>>;
}

/// What a function may call: the functions its manifest lists.
#[derive(Clone)]
pub struct CallGrant {
    pub caller: Arc<dyn FunctionCaller>,
    pub owner: String,
    pub functions: Vec<String>,
}

/// The functions of `calls`, if the manifest lists any.
pub(crate) fn grant(tenant: &str, manifest: &Manifest, backends: &Backends) -> Option<CallGrant> {
    let functions = &manifest.calls;
    (!functions.is_empty()).then(|| CallGrant {
        caller: backends.caller.clone(),
        owner: tenant.to_string(),
        functions: functions.clone(),
    })
}

pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    invoke::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)
}

impl invoke::Host for Host {
    async fn call(
        &mut self,
        function: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<invoke::Response, invoke::CallError>> {
        let Some(grant) = self
            .grants
            .calls
            .as_ref()
            .filter(|g| g.functions.contains(&function))
        else {
            let listed = self.grants.calls.as_ref().map(|g| g.functions.as_slice());
            let note = refused(&format!("call to {function:?}"), "calls", listed);
            self.note(note);
            return Ok(Err(invoke::CallError::NotAllowed(function)));
        };
        if self.chain.iter().any(|f| **f == *function) {
            let chain: Vec<&str> = self.chain.iter().map(|f| &**f).collect();
            return Ok(Err(invoke::CallError::Cycle(format!(
                "{} -> {function}",
                chain.join(" -> ")
            ))));
        }
        if self.chain.len() >= CALL_DEPTH_MAX {
            return Ok(Err(invoke::CallError::TooDeep(CALL_DEPTH_MAX as u32)));
        }
        if Instant::now() >= self.deadline {
            return Ok(Err(invoke::CallError::Timeout));
        }
        let chain: Arc<[Arc<str>]> = self
            .chain
            .iter()
            .cloned()
            .chain(std::iter::once(Arc::from(function.as_str())))
            .collect();
        let request = CallRequest {
            owner: grant.owner.clone(),
            function: function.clone(),
            payload: payload.into(),
            chain,
            deadline: self.deadline,
            trace: self.trace,
        };
        let call = grant.caller.call(request);
        Ok(match call.await {
            Ok((status, body)) => Ok(invoke::Response {
                status,
                body: body.to_vec(),
            }),
            Err(CallError::NotFound) => Err(invoke::CallError::NotAllowed(function)),
            Err(CallError::Timeout) => Err(invoke::CallError::Timeout),
            Err(CallError::Failed(reason)) => Err(invoke::CallError::Failed(reason)),
        })
    }
}
