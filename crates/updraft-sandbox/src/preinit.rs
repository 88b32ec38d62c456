//! Deploy-time pre-initialisation (`preinitialize = true` in the manifest):
//! the component's [`INIT_EXPORT`] runs once, at deploy, in a store like an
//! invocation's (its env, args, timeout and memory limit; no files, stores
//! or network), and the memories and globals it leaves are written into a
//! new component by Wasmtime's Wizer. Every instance then starts from that
//! state instead of building it per request. The version's Wasm is the
//! snapshot, so a restart, another node or a rollback never runs the
//! initialisation again.

use std::time::{Duration, Instant};

use updraft_core::{Digest, Limits};
use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use crate::artifact::PrepareSpec;
use crate::capability::Grants;
use crate::engine::Sandbox;
use crate::error::PrepareError;
use crate::host::Host;
use crate::invoke::deploy_run_failure;

/// The export that initialises: Wizer's convention, `func()`.
pub const INIT_EXPORT: &str = "wizer-initialize";

/// What the initialisation runs with: the version's own settings.
pub struct InitSpec {
    pub name: String,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub argv0: Option<String>,
    pub limits: Limits,
}

fn failed(what: impl std::fmt::Display) -> PrepareError {
    PrepareError::Preinit(what.to_string())
}

impl Sandbox {
    /// Runs `wasm`'s [`INIT_EXPORT`] once and returns the component with
    /// the state it left, to deploy in its place. Compiles: call it from a
    /// blocking thread of the runtime (the run itself is async).
    pub fn preinitialize(&self, wasm: &[u8], spec: InitSpec) -> Result<Vec<u8>, PrepareError> {
        let shape = updraft_core::wasm::check(wasm)?;
        if !shape.component || shape.p3 {
            return Err(failed(
                "it applies to WASI 0.2 components (wasi:http/proxy or wasi:cli/command): remove `preinitialize` from updraft.toml",
            ));
        }
        let mut wizer = Wizer::new();
        // The component still lifts the export from the core module it
        // snapshots; the platform never calls it again.
        wizer.keep_init_func(true);
        let (cx, instrumented) = wizer
            .instrument_component(wasm)
            .map_err(|e| failed(format!("{e:#}")))?;
        // The instrumented component (it also exports its state, for the
        // snapshot) is prepared as a version would be, then forgotten.
        let digest = Digest::of(&instrumented);
        let source = || Ok(bytes::Bytes::from(instrumented.clone()));
        let timeout_ms = spec.limits.timeout_ms;
        let prepared = self.prepare(PrepareSpec {
            name: &spec.name,
            wasm: &source,
            wasm_digest: digest,
            kind: None,
            limits: spec.limits,
            env: spec.env,
            args: spec.args,
            argv0: spec.argv0,
            files: None,
            files_writable: false,
            tmp_mb: 0,
            grants: Grants::default(),
            tiering: crate::Tiering::Off,
        });
        self.evict(&digest);
        let prepared = prepared?;
        let pre = prepared
            .pre
            .instance_pre()
            .ok_or_else(|| failed("a core module has nothing to pre-initialise"))?;
        match pre.component().get_export(None, INIT_EXPORT) {
            Some((ComponentItem::ComponentFunc(ty), _))
                if ty.params().len() == 0 && ty.results().len() == 0 => {}
            Some(_) => {
                return Err(failed(format!(
                    "the component's `{INIT_EXPORT}` export is not a `func()`: export `{INIT_EXPORT}: func()`"
                )));
            }
            None => {
                return Err(failed(format!(
                    "the component does not export `{INIT_EXPORT}: func()`, which runs the initialisation: export it, or remove `preinitialize` from updraft.toml"
                )));
            }
        }
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let (mut store, pipes) = self
            .deploy_store(&prepared, deadline)
            .map_err(|e| failed(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| failed("it must run inside the server's runtime"))?;
        let run = runtime.block_on(async {
            let instance = pre.instantiate_async(&mut store).await?;
            let init = instance
                .get_func(&mut store, INIT_EXPORT)
                .ok_or_else(|| wasmtime::Error::msg(format!("no `{INIT_EXPORT}` function")))?;
            init.call_async(&mut store, &[], &mut []).await?;
            Ok::<_, wasmtime::Error>(instance)
        });
        let instance = run.map_err(|e| {
            failed(format!(
                "`{INIT_EXPORT}` {}",
                deploy_run_failure(&e, &store, &pipes, timeout_ms)
            ))
        })?;
        let mut state = State {
            store: &mut store,
            instance,
            error: None,
        };
        let snapshot = runtime
            .block_on(wizer.snapshot_component(&cx, &mut state))
            .map_err(|e| failed(format!("taking the snapshot: {e:#}")))?;
        match state.error {
            Some(e) => Err(failed(format!("reading the state to snapshot: {e:#}"))),
            None => Ok(snapshot),
        }
    }
}

/// The initialised instance, read by Wizer through the accessors its
/// instrumentation exported. Wizer's callbacks cannot fail: the first error
/// is kept here and the snapshot discarded.
struct State<'a> {
    store: &'a mut Store<Host>,
    instance: Instance,
    error: Option<wasmtime::Error>,
}

impl State<'_> {
    /// Calls `func` of the exported `instance` (`() -> R`).
    async fn call<R>(&mut self, instance: &str, func: &str) -> Option<R>
    where
        R: Lift + Send + Sync + 'static,
    {
        if self.error.is_some() {
            return None;
        }
        match self.try_call(instance, func).await {
            Ok(value) => Some(value),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }

    async fn try_call<R>(&mut self, instance: &str, func: &str) -> wasmtime::Result<R>
    where
        R: Lift + Send + Sync + 'static,
    {
        let missing = |name: &str| wasmtime::Error::msg(format!("no export `{name}`"));
        let (_, parent) = self
            .instance
            .get_export(&mut *self.store, None, instance)
            .ok_or_else(|| missing(instance))?;
        let (_, index) = self
            .instance
            .get_export(&mut *self.store, Some(&parent), func)
            .ok_or_else(|| missing(func))?;
        let func = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, index)?;
        Ok(func.call_async(&mut *self.store, ()).await?.0)
    }
}

impl ComponentInstanceState for State<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        if let Some(list) = self.call::<WasmList<u8>>(instance, func).await {
            contents(list.as_le_slice(&*self.store));
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func)
            .await
            .map_or(0, f32::to_bits)
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func)
            .await
            .map_or(0, f64::to_bits)
    }
}
