//! Deploy-time work: turn uploaded bytes into a [`Prepared`] function.
//!
//! Components and core wasip1 modules (commands, run on wasmtime's preview1
//! implementation) are compiled ahead of time and the artifact is kept in
//! the cache directory as `<wasm sha256>-<engine hash>.cwasm`, so a restart
//! maps it back in with `deserialize_file` instead of compiling again.
//!
//! A big WASI 0.2 component may be compiled by Winch first, when the caller
//! allows it ([`PrepareSpec::tiering`]): its artifact is cached under the
//! Winch engine's hash, and serves until the caller prepares the version
//! again for a tier-up, which compiles it with Cranelift at low priority.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use updraft_core::wasm::Shape;
use updraft_core::{Digest, FunctionKind, Limits};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre, Type};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyIndices;

use crate::calls::{HANDLER_EXPORT, HandlerIndices};
use crate::capability::Grants;
use crate::engine::{Sandbox, Tier, Tiering};
use crate::error::PrepareError;
use crate::host::Host;
use crate::warm::WarmPool;

/// Where a prepared function's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadedFrom {
    /// Compiled by this process.
    Compile,
    /// Mapped from the on-disk artifact cache.
    Cache,
}

#[derive(Clone)]
pub(crate) enum Pre {
    /// Instantiated, then its `wasi:http/incoming-handler` looked up by index.
    Http {
        pre: InstancePre<Host>,
        proxy: ProxyIndices,
    },
    /// A WASI 0.3 service (`wasi:http/handler@0.3`), run concurrently.
    HttpP3(wasmtime_wasi_http::p3::bindings::ServicePre<Host>),
    Command(CommandPre<Host>),
    /// A WASI 0.3 command (`wasi:cli/run@0.3`), run concurrently.
    CommandP3(wasmtime_wasi::p3::bindings::CommandPre<Host>),
    /// A core wasip1 command module: `_start` is called.
    Core(wasmtime::InstancePre<Host>),
}

impl Pre {
    /// The component's pre-instance; `None` for a core module.
    pub(crate) fn instance_pre(&self) -> Option<&InstancePre<Host>> {
        match self {
            Pre::Http { pre, .. } => Some(pre),
            Pre::HttpP3(pre) => Some(pre.instance_pre()),
            Pre::Command(pre) => Some(pre.instance_pre()),
            Pre::CommandP3(pre) => Some(pre.instance_pre()),
            Pre::Core(_) => None,
        }
    }

    /// The engine it was compiled by; its stores must be of that engine.
    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        match self {
            Pre::Http { pre, .. } => pre.engine(),
            Pre::HttpP3(pre) => pre.instance_pre().engine(),
            Pre::Command(pre) => pre.instance_pre().engine(),
            Pre::CommandP3(pre) => pre.instance_pre().engine(),
            Pre::Core(pre) => pre.module().engine(),
        }
    }
}

/// The engines whose artifacts are cached, each under its own hash.
#[derive(Debug, Clone, Copy)]
enum ArtifactEngine {
    /// Cranelift: WASI 0.2 components and core modules.
    Main,
    /// Cranelift, concurrency on: WASI 0.3 components.
    P3,
    /// Winch: big WASI 0.2 components, until Cranelift's code is ready.
    Baseline,
}

impl ArtifactEngine {
    fn tier(self) -> Tier {
        match self {
            ArtifactEngine::Main | ArtifactEngine::P3 => Tier::Optimized,
            ArtifactEngine::Baseline => Tier::Baseline,
        }
    }
}

/// What [`Sandbox::load_or_compile`] found or made.
struct Artifact {
    compiled: Compiled,
    loaded_from: LoadedFrom,
    /// Bytes of the artifact.
    bytes: u64,
    tier: Tier,
}

/// A compiled binary: a component, or a core module.
enum Compiled {
    Component(Component),
    Module(wasmtime::Module),
}

/// A deployed version, ready to instantiate: the per-version half of the work.
pub struct Prepared {
    pub name: String,
    pub kind: FunctionKind,
    pub wasm_digest: Digest,
    pub limits: Limits,
    pub loaded_from: LoadedFrom,
    /// Which compiler made its code.
    pub tier: Tier,
    /// Time spent compiling or loading.
    pub prepare_ms: u64,
    pub compiled_bytes: u64,
    pub(crate) env: Vec<(String, String)>,
    /// `argv`: the name, then the manifest's `args`.
    pub(crate) argv: Vec<String>,
    /// Its file system: files at `/`, `/tmp`.
    pub(crate) mounts: crate::files::Mounts,
    pub(crate) pre: Pre,
    /// Its `updraft:platform/handler` export, when it takes calls directly.
    pub(crate) handler: Option<HandlerIndices>,
    /// What its manifest lets it reach.
    pub(crate) grants: Grants,
    /// Idle instances kept between requests, in reuse mode only.
    pub(crate) warm: Option<Arc<WarmPool>>,
    /// Instances made ahead, each for one invocation: http functions
    /// (WASI 0.2) that do not reuse instances ([`Sandbox::replenish`]).
    pub(crate) spares: Option<Arc<WarmPool>>,
    /// Which lane its next invocation starts in.
    pub(crate) lane_history: Arc<crate::lanes::History>,
    /// Its invocations in flight and their adaptive limit.
    pub(crate) load: Arc<crate::shed::Load>,
}

impl Prepared {
    /// Its `[variables]` for one invocation, secrets read now.
    pub(crate) async fn config(&self) -> Option<crate::config::Resolved> {
        match &self.grants.config {
            Some(grant) => Some(grant.resolve().await),
            None => None,
        }
    }

    /// Whether calls from other functions reach it directly, through its
    /// `updraft:platform/handler` export ([`Sandbox::invoke_handler`]).
    pub fn takes_calls(&self) -> bool {
        self.handler.is_some()
    }
}

/// Reads a version's Wasm; called only when there is no usable compiled
/// artifact, so loading from the cache never touches the (maybe large) Wasm.
/// `Bytes`, not a copy: a fresh upload is a mapping of its spooled file, and
/// the compiler reads only the pages it needs (a custom section it skips is
/// never read into memory).
pub type WasmSource<'a> = &'a (dyn Fn() -> Result<bytes::Bytes, String> + Sync);

/// What [`Sandbox::prepare`] needs to know about the version.
pub struct PrepareSpec<'a> {
    pub name: &'a str,
    pub wasm: WasmSource<'a>,
    pub wasm_digest: Digest,
    pub kind: Option<FunctionKind>,
    pub limits: Limits,
    pub env: Vec<(String, String)>,
    /// A command's arguments after its name.
    pub args: Vec<String>,
    /// Its `argv[0]`, if not its name.
    pub argv0: Option<String>,
    /// Its files bundle, if the manifest lists files.
    pub files: Option<crate::files::FilesSpec>,
    /// Each invocation writes to a private copy of the files.
    pub files_writable: bool,
    /// MiB of `/tmp` per invocation; none when 0.
    pub tmp_mb: u32,
    /// Its capabilities ([`Grants::for_function`]).
    pub grants: Grants,
    /// Whether Winch's code may serve, and whether Cranelift compiles in
    /// the background.
    pub tiering: Tiering,
}

impl Sandbox {
    /// Compiles (or loads from the cache) and links one version. CPU-heavy:
    /// call it from a blocking thread.
    pub fn prepare(&self, spec: PrepareSpec<'_>) -> Result<Prepared, PrepareError> {
        let started = Instant::now();
        let argv = argv(&spec);
        let mounts = self.mounts(&spec)?;
        let Artifact {
            compiled,
            loaded_from,
            bytes: compiled_bytes,
            tier,
        } = self.load_or_compile(spec.wasm, &spec.wasm_digest, spec.tiering)?;
        let component = match compiled {
            Compiled::Component(component) => component,
            Compiled::Module(module) => {
                return self.prepare_module(spec, module, loaded_from, compiled_bytes, started);
            }
        };
        let handler = exports_handler(component.engine(), &component)?;
        let detected = self.detect_kind(&component)?;
        if let Some(stated) = spec.kind
            && stated != detected
        {
            return Err(PrepareError::KindMismatch { stated, detected });
        }
        let reuse = spec.limits.instance_reuse_max > 1;
        if reuse && detected == FunctionKind::Command {
            return Err(PrepareError::ReuseForCommand);
        }
        let p3 = wasmtime::Engine::same(component.engine(), &self.p3_engine);
        if reuse && p3 {
            return Err(PrepareError::ReuseForWasi03);
        }
        let linker = match tier {
            Tier::Baseline => self.baseline().map(|b| &b.linker).ok_or_else(|| {
                PrepareError::Internal(updraft_core::Failure::msg(
                    "Winch code without the Winch engine",
                ))
            })?,
            Tier::Optimized if p3 => &self.p3_linker,
            Tier::Optimized => &self.linker,
        };
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| PrepareError::Link(link_message(&e)))?;
        let link = |e: wasmtime::Error| PrepareError::Link(format!("{e:#}"));
        let handler = if handler {
            Some(HandlerIndices::new(&instance_pre).map_err(link)?)
        } else {
            None
        };
        let pre = match detected {
            FunctionKind::Http if is_p3_service(&component) => Pre::HttpP3(
                wasmtime_wasi_http::p3::bindings::ServicePre::new(instance_pre).map_err(link)?,
            ),
            FunctionKind::Http => Pre::Http {
                proxy: ProxyIndices::new(&instance_pre).map_err(link)?,
                pre: instance_pre,
            },
            FunctionKind::Command if is_p3_command(&component) => Pre::CommandP3(
                wasmtime_wasi::p3::bindings::CommandPre::new(instance_pre).map_err(link)?,
            ),
            FunctionKind::Command => Pre::Command(CommandPre::new(instance_pre).map_err(link)?),
        };
        let spares = (!reuse && matches!(pre, Pre::Http { .. }))
            .then(|| Arc::new(WarmPool::new(self.warm_budget.clone())));
        Ok(Prepared {
            name: spec.name.to_string(),
            kind: detected,
            wasm_digest: spec.wasm_digest,
            limits: spec.limits,
            loaded_from,
            tier,
            prepare_ms: started.elapsed().as_millis() as u64,
            compiled_bytes,
            env: spec.env,
            argv,
            mounts,
            pre,
            handler,
            grants: spec.grants,
            spares,
            warm: reuse.then(|| Arc::new(WarmPool::new(self.warm_budget.clone()))),
            lane_history: Arc::default(),
            load: Arc::new(crate::shed::Load::new(Duration::from_millis(
                spec.limits.timeout_ms,
            ))),
        })
    }

    /// A core wasip1 command module: linked against preview1, no
    /// capabilities beyond WASI, one instance per invocation.
    fn prepare_module(
        &self,
        spec: PrepareSpec<'_>,
        module: wasmtime::Module,
        loaded_from: LoadedFrom,
        compiled_bytes: u64,
        started: Instant,
    ) -> Result<Prepared, PrepareError> {
        let argv = argv(&spec);
        let mounts = self.mounts(&spec)?;
        if let Some(stated) = spec.kind
            && stated != FunctionKind::Command
        {
            return Err(PrepareError::KindMismatch {
                stated,
                detected: FunctionKind::Command,
            });
        }
        if spec.limits.instance_reuse_max > 1 {
            return Err(PrepareError::ReuseForCommand);
        }
        if module.get_export("_start").is_none() {
            return Err(PrepareError::NoStart);
        }
        let pre = self
            .core_linker
            .instantiate_pre(&module)
            .map_err(|e| PrepareError::Link(link_message(&e)))?;
        Ok(Prepared {
            name: spec.name.to_string(),
            kind: FunctionKind::Command,
            wasm_digest: spec.wasm_digest,
            limits: spec.limits,
            loaded_from,
            tier: Tier::Optimized,
            prepare_ms: started.elapsed().as_millis() as u64,
            compiled_bytes,
            env: spec.env,
            argv,
            mounts,
            pre: Pre::Core(pre),
            handler: None,
            grants: spec.grants,
            warm: None,
            spares: None,
            lane_history: Arc::default(),
            load: Arc::new(crate::shed::Load::new(Duration::from_millis(
                spec.limits.timeout_ms,
            ))),
        })
    }

    /// Only checks that the bytes are Wasm of a shape Updraft runs; cheap.
    pub fn check_bytes(wasm: &[u8]) -> Result<(), PrepareError> {
        Ok(updraft_core::wasm::check_bytes(wasm)?)
    }

    /// Where the artifact of this Wasm compiled by `engine` is cached.
    fn artifact_path(&self, digest: &Digest, engine: ArtifactEngine) -> Option<PathBuf> {
        let hash = match engine {
            ArtifactEngine::Main => &self.engine_hash,
            ArtifactEngine::P3 => &self.p3_engine_hash,
            // No Winch engine here: no Winch artifact either.
            ArtifactEngine::Baseline => &self.baseline()?.hash,
        };
        Some(
            self.cache_dir
                .join(format!("{}-{hash}.cwasm", digest.hex())),
        )
    }

    /// Whether Cranelift's artifact of this Wasm is in the cache.
    pub fn is_cached(&self, digest: &Digest) -> bool {
        [ArtifactEngine::Main, ArtifactEngine::P3]
            .into_iter()
            .filter_map(|engine| self.artifact_path(digest, engine))
            .any(|path| path.is_file())
    }

    /// Whether Winch's artifact of this Wasm is in the cache.
    pub fn has_baseline(&self, digest: &Digest) -> bool {
        self.tier_up_min_bytes.is_some()
            && self
                .artifact_path(digest, ArtifactEngine::Baseline)
                .is_some_and(|path| path.is_file())
    }

    /// Removes the cached artifacts of this Wasm, and its unpacked files
    /// bundle (when no version uses it any more).
    pub fn evict(&self, digest: &Digest) {
        // Every engine's (`<wasm hex>-<engine hash>.cwasm`), found by name:
        // the Winch engine is not built just to name its artifact, and an
        // older engine's go too.
        let prefix = format!("{}-", digest.hex());
        if let Ok(entries) = std::fs::read_dir(&self.cache_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&prefix) && name.ends_with(".cwasm") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        self.evict_files(digest);
    }

    /// Removes Winch's artifact of this Wasm: Cranelift's now serves.
    pub fn evict_baseline(&self, digest: &Digest) {
        if self.tier_up_min_bytes.is_some()
            && let Some(path) = self.artifact_path(digest, ArtifactEngine::Baseline)
        {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Cranelift's artifact from the cache; with [`Tiering::Baseline`],
    /// else Winch's; else compiles: with Winch if tiering and the Wasm is a
    /// big enough WASI 0.2 component, otherwise with Cranelift.
    fn load_or_compile(
        &self,
        wasm: WasmSource<'_>,
        digest: &Digest,
        tiering: Tiering,
    ) -> Result<Artifact, PrepareError> {
        let mut cached = vec![ArtifactEngine::Main, ArtifactEngine::P3];
        if tiering == Tiering::Baseline && self.tier_up_min_bytes.is_some() {
            cached.push(ArtifactEngine::Baseline);
        }
        for engine in cached {
            let Some(path) = self.artifact_path(digest, engine) else {
                continue;
            };
            if !path.is_file() {
                continue;
            }
            match self.load_artifact(&path, engine) {
                Ok(compiled) => {
                    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    return Ok(Artifact {
                        compiled,
                        loaded_from: LoadedFrom::Cache,
                        bytes: size,
                        tier: engine.tier(),
                    });
                }
                // A torn or stale artifact is only a cache miss: compile again.
                Err(e) => tracing::warn!(
                    "recompiling {}: cached artifact unusable: {e}",
                    path.display()
                ),
            }
        }
        let wasm = wasm().map_err(|e| PrepareError::Internal(updraft_core::Failure::msg(e)))?;
        // Refuses a wrong binary in milliseconds, before Cranelift.
        let Shape { component, p3 } = updraft_core::wasm::check(&wasm)?;
        let baseline = tiering == Tiering::Baseline
            && component
            && !p3
            && self
                .tier_up_min_bytes
                .is_some_and(|min| wasm.len() as u64 >= min);
        let engine = match (component, p3) {
            _ if baseline && self.baseline().is_some() => ArtifactEngine::Baseline,
            (true, true) => ArtifactEngine::P3,
            _ => ArtifactEngine::Main,
        };
        let path = self.artifact_path(digest, engine).ok_or_else(|| {
            PrepareError::Internal(updraft_core::Failure::msg(
                "no artifact path for the engine chosen",
            ))
        })?;
        let compiling = self.engine_of(engine).ok_or_else(|| {
            PrepareError::Internal(updraft_core::Failure::msg("the engine chosen is gone"))
        })?;
        let compile = || {
            if component {
                compiling.precompile_component(&wasm)
            } else {
                compiling.precompile_module(&wasm)
            }
        };
        let compiled = match tiering {
            Tiering::Up => self.in_background(compile),
            Tiering::Off | Tiering::Baseline => compile(),
        }
        .map_err(|e| PrepareError::Invalid(format!("{e:#}")))?;
        self.count_compile();
        updraft_state::registry::write_atomically(&path, &compiled).map_err(|e| {
            PrepareError::Internal(updraft_core::Failure::context(
                format!("writing {}", path.display()),
                e,
            ))
        })?;
        let loaded = self.load_artifact(&path, engine).map_err(|e| {
            PrepareError::Internal(updraft_core::Failure::boxed(
                "loading the fresh artifact",
                e.into_boxed_dyn_error(),
            ))
        })?;
        Ok(Artifact {
            compiled: loaded,
            loaded_from: LoadedFrom::Compile,
            bytes: compiled.len() as u64,
            tier: engine.tier(),
        })
    }

    fn engine_of(&self, engine: ArtifactEngine) -> Option<&wasmtime::Engine> {
        match engine {
            ArtifactEngine::Main => Some(&self.engine),
            ArtifactEngine::P3 => Some(&self.p3_engine),
            ArtifactEngine::Baseline => self.baseline().map(|b| &b.engine),
        }
    }

    #[allow(unsafe_code)]
    fn load_artifact(&self, path: &Path, engine: ArtifactEngine) -> wasmtime::Result<Compiled> {
        let engine = self
            .engine_of(engine)
            .ok_or_else(|| wasmtime::format_err!("the Winch engine cannot run here"))?;
        // SAFETY: the file was written by `precompile_component` or
        // `precompile_module` of an engine with the same compatibility hash
        // (it is in the file name), into a directory only Updraft writes, via
        // write-then-rename so it is never seen half-written; wasmtime also
        // checks the header and engine flags.
        match wasmtime::Engine::detect_precompiled_file(path)? {
            Some(wasmtime::Precompiled::Module) => Ok(Compiled::Module(unsafe {
                wasmtime::Module::deserialize_file(engine, path)
            }?)),
            _ => Ok(Compiled::Component(unsafe {
                Component::deserialize_file(engine, path)
            }?)),
        }
    }

    fn detect_kind(&self, component: &Component) -> Result<FunctionKind, PrepareError> {
        let ty = component.component_type();
        let mut http = false;
        let mut command = false;
        for (name, _) in ty.exports(component.engine()) {
            http |= name.starts_with("wasi:http/incoming-handler@0.2")
                || name.starts_with("wasi:http/handler@0.3");
            command |= name.starts_with("wasi:cli/run@0.2") || name.starts_with("wasi:cli/run@0.3");
        }
        match (http, command) {
            (true, _) => Ok(FunctionKind::Http),
            (false, true) => Ok(FunctionKind::Command),
            (false, false) => Err(PrepareError::UnknownWorld),
        }
    }
}

/// Whether the component is a WASI 0.3 service.
fn is_p3_service(component: &Component) -> bool {
    component
        .component_type()
        .exports(component.engine())
        .any(|(name, _)| name.starts_with("wasi:http/handler@0.3"))
}

/// Whether the component is a WASI 0.3 command.
fn is_p3_command(component: &Component) -> bool {
    component
        .component_type()
        .exports(component.engine())
        .any(|(name, _)| name.starts_with("wasi:cli/run@0.3"))
}

/// Whether the component exports `updraft:platform/handler`, so calls from
/// other functions reach it directly. An export of that name whose `handle`
/// has another type is refused here, at deploy, not at every call.
fn exports_handler(engine: &wasmtime::Engine, component: &Component) -> Result<bool, PrepareError> {
    let ty = component.component_type();
    let Some((name, export)) = ty
        .exports(engine)
        .find(|(name, _)| name.starts_with(HANDLER_EXPORT))
    else {
        return Ok(false);
    };
    let is_bytes = |t: &Type| matches!(t, Type::List(list) if list.ty() == Type::U8);
    let handle = match export.ty {
        ComponentItem::ComponentInstance(instance) => {
            instance.get_export(engine, "handle").map(|e| e.ty)
        }
        _ => None,
    };
    let fits = match handle {
        Some(ComponentItem::ComponentFunc(func)) => {
            let params: Vec<Type> = func.params().map(|(_, t)| t).collect();
            let results: Vec<Type> = func.results().collect();
            let response = match results.as_slice() {
                [Type::Record(record)] => {
                    let fields: Vec<_> = record
                        .fields()
                        .map(|f| (f.name.to_string(), f.ty))
                        .collect();
                    matches!(fields.as_slice(),
                        [(status, Type::U16), (body, b)] if status == "status" && body == "body" && is_bytes(b))
                }
                _ => false,
            };
            matches!(params.as_slice(), [p] if is_bytes(p)) && response
        }
        _ => false,
    };
    if fits {
        Ok(true)
    } else {
        Err(PrepareError::Link(format!(
            "the component exports {name} without `handle: func(payload: list<u8>) -> response` \
             (response: record {{ status: u16, body: list<u8> }}); generate its bindings from \
             crates/updraft-sandbox/wit/invoke, world updraft:platform/callable"
        )))
    }
}

impl Sandbox {
    /// The version's file system, its bundle unpacked on this node.
    fn mounts(&self, spec: &PrepareSpec<'_>) -> Result<crate::files::Mounts, PrepareError> {
        Ok(crate::files::Mounts {
            files: spec
                .files
                .as_ref()
                .map(|f| self.unpack_files(f))
                .transpose()?,
            files_writable: spec.files_writable,
            tmp_bytes: u64::from(spec.tmp_mb) << 20,
        })
    }
}

fn argv(spec: &PrepareSpec<'_>) -> Vec<String> {
    std::iter::once(spec.argv0.clone().unwrap_or_else(|| spec.name.to_string()))
        .chain(spec.args.iter().cloned())
        .collect()
}

/// What a guest may import, for link errors.
pub const PROVIDED_INTERFACES: &str = "WASI 0.2.x (wasi:cli, wasi:clocks, wasi:random, wasi:io, \
     wasi:filesystem, wasi:sockets; wasi_snapshot_preview1 for core modules), wasi:http@0.2.x, WASI 0.3.0 \
     (wasi:cli, wasi:clocks, wasi:random, wasi:filesystem, wasi:sockets, wasi:http), \
     wasi:keyvalue@0.2.0-draft and @0.2.0-draft2 (store, atomics, batch), \
     wasi:config/store@0.2.0-rc.1, \
     updraft:platform/blobs, invoke and messaging@0.1.0";

/// Wasmtime's link error (which names the missing import), and what
/// Updraft provides instead.
fn link_message(e: &wasmtime::Error) -> String {
    format!("{e:#}; Updraft provides {PROVIDED_INTERFACES}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use updraft_core::Limits;

    use super::*;
    use crate::engine::SandboxConfig;

    /// A handler export whose `handle` has another type is refused at
    /// deploy, with the type it should have.
    #[test]
    fn a_handler_export_of_the_wrong_type_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SandboxConfig::new(dir.path().to_path_buf());
        config.instances_max = 2;
        config.warm_instances_max = 0;
        let sandbox = Sandbox::new(config).unwrap();
        let wasm = wat::parse_str(
            r#"(component
                 (core module $m (func (export "h") (param i32) (result i32) local.get 0))
                 (core instance $i (instantiate $m))
                 (func $handle (param "x" u32) (result u32) (canon lift (core func $i "h")))
                 (instance $h (export "handle" (func $handle)))
                 (export "updraft:platform/handler@0.1.0" (instance $h)))"#,
        )
        .unwrap();
        let source = || Ok(bytes::Bytes::from(wasm.clone()));
        let error = sandbox
            .prepare(PrepareSpec {
                name: "odd",
                wasm: &source,
                wasm_digest: Digest::of(&wasm),
                kind: None,
                limits: Limits::default(),
                env: Vec::new(),
                args: Vec::new(),
                argv0: None,
                files: None,
                files_writable: false,
                tmp_mb: 0,
                grants: Grants::default(),
                tiering: crate::Tiering::Off,
            })
            .err()
            .expect("the deploy must fail");
        let message = error.to_string();
        assert!(
            message.contains("handle: func(payload: list<u8>) -> response"),
            "{message}"
        );
    }
}
