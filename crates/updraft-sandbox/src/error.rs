//! Errors of the sandbox: why a Wasm binary could not be prepared, and why an
//! invocation failed. Messages are written for the function's author.

use updraft_core::{Classify, ErrorKind, FunctionKind};

/// Why a binary was rejected at deploy. Every variant maps to HTTP 400 except
/// [`PrepareError::Internal`] (500).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    #[error(
        "the upload is not a WebAssembly binary (it does not start with \\0asm): upload the .wasm file your toolchain produced"
    )]
    NotWasm,
    #[error("the WebAssembly binary is invalid: {0}")]
    Invalid(String),
    #[error(
        "the binary exports neither wasi:http/incoming-handler (an HTTP function, world wasi:http/proxy) nor wasi:cli/run (a command); build it for one of those worlds"
    )]
    UnknownWorld,
    #[error(
        "the manifest says kind = \"{stated}\" but the binary is a {detected} function: fix `kind` in updraft.toml or leave it out"
    )]
    KindMismatch {
        stated: FunctionKind,
        detected: FunctionKind,
    },
    #[error(
        "instance_reuse_max applies to http functions only (a command runs once per instance): remove it from updraft.toml"
    )]
    ReuseForCommand,
    #[error(
        "this core module has no `_start` export: build a WASI command (a wasm32-wasip1 binary with main), or a wasi:http component"
    )]
    NoStart,
    #[error("the function cannot be linked: {0}")]
    Link(String),
    /// `preinitialize = true`, and the initialisation could not run or
    /// failed: what to fix is in the message.
    #[error("pre-initialisation failed: {0}")]
    Preinit(String),
    #[error(
        "instance_reuse_max is not supported for WASI 0.3 components yet (each request gets a fresh instance): remove it from updraft.toml, or build the function for WASI 0.2"
    )]
    ReuseForWasi03,
    /// The platform failed (a disk, the engine): the detail is in the
    /// source, for the logs.
    #[error("internal error while preparing the function: {0}")]
    Internal(#[source] updraft_core::Failure),
    #[error(
        "the instance pool cannot reserve address space for {slots} instances \
         (--instances-max and the warm ones; about 9 GiB each, none of it memory \
         until used): lower --instances-max"
    )]
    Pool {
        slots: u32,
        #[source]
        source: updraft_core::Failure,
    },
}

impl From<updraft_core::wasm::WasmError> for PrepareError {
    fn from(e: updraft_core::wasm::WasmError) -> PrepareError {
        use updraft_core::wasm::WasmError;
        match e {
            WasmError::NotWasm => PrepareError::NotWasm,
            WasmError::Invalid(reason) => PrepareError::Invalid(reason),
            WasmError::UnknownWorld => PrepareError::UnknownWorld,
            WasmError::NoStart => PrepareError::NoStart,
            // A reason added later is still the binary's fault.
            other => PrepareError::Invalid(other.to_string()),
        }
    }
}

/// Why an invocation failed. The gateway maps each to a status.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvokeError {
    /// 504: the invocation ran past `timeout_ms`.
    #[error(
        "the function did not finish within its timeout of {timeout_ms} ms (raise timeout_ms in updraft.toml if it needs longer)"
    )]
    Timeout { timeout_ms: u64 },
    /// 504: a call from another function ran into its caller's deadline
    /// (the first caller's timeout bounds the whole chain) before its own.
    #[error(
        "the calling function's deadline passed after {ran_ms} ms, before this function finished; its own timeout_ms is not what stopped it (raise timeout_ms of the first function in the chain if the chain needs longer)"
    )]
    CallerDeadline { ran_ms: u64 },
    /// 500: the guest tried to grow its memory past `memory_mb`.
    #[error(
        "the function exceeded its memory limit of {memory_mb} MiB (raise memory_mb in updraft.toml, or use less memory)"
    )]
    MemoryLimit { memory_mb: u32 },
    /// 503: the server's memory budget stayed in use by other invocations
    /// while this one grew its memory.
    #[error(
        "the server's memory budget of {budget_mb} MiB is in use by other invocations: retry after a pause (an operator can raise [memory] budget_mb)"
    )]
    ServerMemoryFull { budget_mb: u64 },
    /// 429: the tenant's memory quota stayed in use by its other invocations.
    #[error(
        "the tenant's memory quota of {budget_mb} MiB is in use by its other invocations: retry after a pause, or ask an admin to raise it (updraft quota set --memory-mb)"
    )]
    TenantMemoryFull { budget_mb: u64 },
    /// 500: the guest wrote more than `tmp_mb` to `/tmp`.
    #[error(
        "the function wrote more than its /tmp limit of {tmp_mb} MiB (raise tmp_mb in updraft.toml, or write less)"
    )]
    TmpLimit { tmp_mb: u32 },
    /// 500: the guest trapped (panic, unreachable, out-of-bounds access…).
    #[error("the function trapped: {message}")]
    Trap { message: String },
    /// 500: a command exited with a non-zero code; what it wrote to
    /// stdout until then comes back with it.
    #[error("the function exited with code {code}")]
    Exit { code: i32, stdout: bytes::Bytes },
    /// 500: an http function returned without setting a response.
    #[error("the function returned without sending a response")]
    NoResponse,
    /// 500: an http function answered with a wasi:http error code.
    #[error("the function answered with an error: {0}")]
    Guest(String),
    /// 413: the request body is larger than `request_body_bytes_max`.
    #[error(
        "the request body is larger than this function's limit of {limit} bytes (request_body_bytes_max)"
    )]
    RequestTooLarge { limit: u64 },
    /// 500: the response body is larger than `response_body_bytes_max`.
    #[error(
        "the function's response is larger than its limit of {limit} bytes (response_body_bytes_max)"
    )]
    ResponseTooLarge { limit: u64 },
    /// 503: no instance could be set up (the pool's slots or memory ran
    /// out); Wasmtime's error is the source, for the logs.
    #[error("an instance could not be created: {0}; retry")]
    Instantiate(#[source] updraft_core::Failure),
    /// 500: the platform failed, not the function.
    #[error("internal error: {0}")]
    Internal(#[source] updraft_core::Failure),
}

impl Classify for PrepareError {
    fn kind(&self) -> ErrorKind {
        match self {
            PrepareError::Internal(_) | PrepareError::Pool { .. } => ErrorKind::Internal,
            _ => ErrorKind::Invalid,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            PrepareError::NotWasm => "not_wasm",
            PrepareError::Invalid(_) => "invalid_wasm",
            PrepareError::UnknownWorld
            | PrepareError::NoStart
            | PrepareError::KindMismatch { .. } => "wrong_world",
            PrepareError::Link(_) => "link_error",
            PrepareError::Preinit(_) => "preinit_failed",
            PrepareError::ReuseForCommand | PrepareError::ReuseForWasi03 => "invalid_manifest",
            PrepareError::Internal(_) | PrepareError::Pool { .. } => "internal",
        }
    }
}

impl Classify for InvokeError {
    /// What the function did wrong is `Internal` from the caller's point of
    /// view (a 500, as every serverless platform answers a crashed handler),
    /// and worth a retry for an async invocation.
    fn kind(&self) -> ErrorKind {
        match self {
            InvokeError::Timeout { .. } | InvokeError::CallerDeadline { .. } => ErrorKind::Timeout,
            InvokeError::RequestTooLarge { .. } => ErrorKind::TooLarge,
            InvokeError::Instantiate(_) => ErrorKind::Unavailable,
            InvokeError::ServerMemoryFull { .. } => ErrorKind::Busy,
            InvokeError::TenantMemoryFull { .. } => ErrorKind::TooManyRequests,
            _ => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        InvokeError::code(self)
    }
}

impl InvokeError {
    /// Whether the guest is to blame (its code, its limits), rather than the
    /// platform: its message is the function author's to read.
    pub fn is_guest_fault(&self) -> bool {
        !matches!(
            self,
            InvokeError::Instantiate(_)
                | InvokeError::Internal(_)
                | InvokeError::ServerMemoryFull { .. }
                | InvokeError::TenantMemoryFull { .. }
        )
    }

    /// The error's short code, as the API and usage records show it.
    pub fn code(&self) -> &'static str {
        match self {
            InvokeError::Timeout { .. } | InvokeError::CallerDeadline { .. } => "timeout",
            InvokeError::MemoryLimit { .. } => "memory_limit",
            InvokeError::ServerMemoryFull { .. } => "memory_busy",
            InvokeError::TenantMemoryFull { .. } => "tenant_memory_limit",
            InvokeError::TmpLimit { .. } => "tmp_limit",
            InvokeError::Trap { .. } => "trap",
            InvokeError::Exit { .. } => "exit_code",
            InvokeError::NoResponse | InvokeError::Guest(_) => "function_error",
            InvokeError::RequestTooLarge { .. } => "request_too_large",
            InvokeError::ResponseTooLarge { .. } => "response_too_large",
            InvokeError::Instantiate(_) => "instantiate_failed",
            InvokeError::Internal(_) => "internal",
        }
    }
}
