//! `wasi:config/store` (`@0.2.0-rc.1`, the draft wasmtime-wasi-config 48
//! implements) for guests, served from the manifest's `[variables]`: `get`
//! answers a variable, `get-all` all of them. Built once per version.

use std::sync::LazyLock;

use updraft_core::Manifest;
use wasmtime::component::Linker;
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use crate::capability::Backends;
use crate::host::Host;

/// A version's variables.
pub struct ConfigGrant {
    vars: WasiConfigVariables,
}

/// What a function without variables sees: none.
static NONE: LazyLock<WasiConfigVariables> = LazyLock::new(WasiConfigVariables::new);

/// The grant of a manifest with `[variables]`.
pub(crate) fn grant(_tenant: &str, manifest: &Manifest, _: &Backends) -> Option<ConfigGrant> {
    (!manifest.variables.is_empty()).then(|| ConfigGrant {
        vars: manifest
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn view(host: &mut Host) -> WasiConfig<'_> {
    WasiConfig::new(match &host.grants.config {
        Some(grant) => &grant.vars,
        None => &NONE,
    })
}

pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    wasmtime_wasi_config::add_to_linker(linker, view)
}
