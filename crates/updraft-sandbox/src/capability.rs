//! The capabilities a guest may import beyond WASI and wasi:http. Each is
//! one module that owns three things, in the manner of Spin's factors and
//! wasmtime-wasi's `XxxCtx` + `add_to_linker`:
//!
//! - its **grant**: what the manifest lets the function reach, built once
//!   per deployed version by the module's `grant(tenant, manifest,
//!   backends)` (nothing is reachable that the manifest does not list);
//! - its **per-store context**: the grant, shared into every store through
//!   [`Grants`], plus whatever the module keeps in the resource table;
//! - its **linker registration**: `add_to_linker`, once per process.
//!
//! This file is where they are registered. Adding a capability is writing
//! its module and adding one line to each of: [`Grants`]' fields,
//! [`Grants::for_function`] and [`add_to_linker`]. `docs/capabilities.md`
//! walks through it.

use std::sync::Arc;

use updraft_core::Manifest;
use updraft_state::blob::Blobs;
use updraft_state::kv::KvStore;
use wasmtime::component::Linker;

use crate::blobs::BlobGrant;
use crate::calls::{CallGrant, FunctionCaller};
use crate::config::{ConfigGrant, SecretSource};
use crate::host::Host;
use crate::keyvalue::KvGrant;
use crate::messaging::{PublishGrant, Publisher};
use crate::outbound::OutboundGrant;

/// What the capabilities are served by: the platform's backends, handed
/// over once; each grant keeps the part it needs.
#[derive(Clone)]
pub struct Backends {
    pub kv: Arc<dyn KvStore>,
    pub blobs: Arc<Blobs>,
    /// Runs calls from one function to another.
    pub caller: Arc<dyn FunctionCaller>,
    /// Publishes messages for guests.
    pub publisher: Arc<dyn Publisher>,
    /// Reads tenants' secrets for `[variables]`.
    pub secrets: Arc<dyn SecretSource>,
}

/// Every capability a function holds: `None` where its manifest grants
/// nothing. Cloned into each store (a few reference counts).
#[derive(Clone, Default)]
pub struct Grants {
    pub(crate) kv: Option<Arc<KvGrant>>,
    pub(crate) blobs: Option<Arc<BlobGrant>>,
    pub(crate) calls: Option<Arc<CallGrant>>,
    pub(crate) publishes: Option<Arc<PublishGrant>>,
    /// `[variables]`, through wasi:config.
    pub(crate) config: Option<Arc<ConfigGrant>>,
    /// Outgoing HTTP; served by the wasi:http hooks, not a linker entry.
    pub(crate) outbound: Option<Arc<OutboundGrant>>,
}

impl Grants {
    /// What the function `manifest` of `tenant` may reach, each capability
    /// deciding from its own manifest keys.
    pub fn for_function(tenant: &str, manifest: &Manifest, backends: &Backends) -> Grants {
        Grants {
            kv: crate::keyvalue::grant(tenant, manifest, backends).map(Arc::new),
            blobs: crate::blobs::grant(tenant, manifest, backends).map(Arc::new),
            calls: crate::calls::grant(tenant, manifest, backends).map(Arc::new),
            publishes: crate::messaging::grant(tenant, manifest, backends).map(Arc::new),
            config: crate::config::grant(tenant, manifest, backends).map(Arc::new),
            outbound: crate::outbound::grant(tenant, manifest, backends).map(Arc::new),
        }
    }
}

/// Registers every capability's host functions (once per process).
pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    crate::keyvalue::add_to_linker(linker)?;
    crate::keyvalue_draft::add_to_linker(linker)?;
    crate::blobs::add_to_linker(linker)?;
    crate::calls::add_to_linker(linker)?;
    crate::messaging::add_to_linker(linker)?;
    crate::config::add_to_linker(linker)?;
    Ok(())
}
