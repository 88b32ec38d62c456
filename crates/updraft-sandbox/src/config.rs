//! `wasi:config/store` (`@0.2.0-rc.1`, the draft wasmtime-wasi-config 48
//! and `wasmtime serve -S config` implement) for guests, served from the
//! manifest's `[variables]`: `get` answers a variable, `get-all` all of
//! them.
//!
//! A variable may reference the tenant's secrets (`{{ secret.NAME }}`).
//! Those are read when an invocation starts, so a secret set again is what
//! the next invocation sees, without a redeploy. A secret that is missing
//! or unreadable makes its variable an `upstream` error naming the secret,
//! never the value.

use std::sync::Arc;

use futures::future::BoxFuture;
use updraft_core::Manifest;
use updraft_core::manifest::{Piece, parse_template};
use wasmtime::component::{HasSelf, Linker};

use crate::capability::Backends;
use crate::host::Host;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/config",
        world: "wasi:config/imports",
        imports: { default: trappable },
    });
}

use bindings::wasi::config::store;

/// Reads a tenant's secrets: implemented by the scheduler. The error is a
/// message for the function's author (it never holds a value).
pub trait SecretSource: Send + Sync + 'static {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>>;
}

/// A version's variables, their secret references parsed.
pub struct ConfigGrant {
    tenant: String,
    vars: Vec<(String, Vec<Piece>)>,
    secrets: Arc<dyn SecretSource>,
    /// Without secret references, what every invocation sees, made once.
    fixed: Option<Resolved>,
}

/// The variables one invocation sees: a value, or why it has none.
pub(crate) type Resolved = Arc<Vec<(String, Result<String, String>)>>;

/// The grant of a manifest with `[variables]` (checked at deploy: a value
/// that no longer parses is taken as plain text).
pub(crate) fn grant(tenant: &str, manifest: &Manifest, backends: &Backends) -> Option<ConfigGrant> {
    if manifest.variables.is_empty() {
        return None;
    }
    let vars: Vec<(String, Vec<Piece>)> = manifest
        .variables
        .iter()
        .map(|(k, v)| {
            let pieces = parse_template(v).unwrap_or_else(|_| vec![Piece::Text(v.clone())]);
            (k.clone(), pieces)
        })
        .collect();
    let references_secrets = vars
        .iter()
        .any(|(_, pieces)| pieces.iter().any(|p| matches!(p, Piece::Secret(_))));
    let fixed = (!references_secrets).then(|| {
        Arc::new(
            vars.iter()
                .map(|(name, pieces)| (name.clone(), Ok(text_of(pieces))))
                .collect(),
        )
    });
    Some(ConfigGrant {
        tenant: tenant.to_string(),
        vars,
        secrets: backends.secrets.clone(),
        fixed,
    })
}

fn text_of(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(text) => text.as_str(),
            Piece::Secret(_) => "",
        })
        .collect()
}

impl ConfigGrant {
    /// The variables as this invocation sees them: secrets read now.
    pub(crate) async fn resolve(&self) -> Resolved {
        if let Some(fixed) = &self.fixed {
            return fixed.clone();
        }
        let mut out = Vec::with_capacity(self.vars.len());
        for (name, pieces) in &self.vars {
            let mut value = String::new();
            let mut failed = None;
            for piece in pieces {
                match piece {
                    Piece::Text(text) => value.push_str(text),
                    Piece::Secret(secret) => match self.secrets.get(&self.tenant, secret).await {
                        Ok(Some(v)) => value.push_str(&v),
                        Ok(None) => {
                            failed = Some(format!(
                                "variable {name} needs the secret {secret}, which is not set: `updraft secrets set {secret}`"
                            ));
                            break;
                        }
                        Err(e) => {
                            failed = Some(format!("variable {name}: {e}"));
                            break;
                        }
                    },
                }
            }
            out.push((name.clone(), failed.map_or(Ok(value), Err)));
        }
        Arc::new(out)
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    store::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)
}

impl store::Host for Host {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, store::Error>> {
        let Some(vars) = &self.config else {
            return Ok(Ok(None));
        };
        Ok(match vars.iter().find(|(k, _)| *k == key) {
            None => Ok(None),
            Some((_, Ok(value))) => Ok(Some(value.clone())),
            Some((_, Err(why))) => Err(store::Error::Upstream(why.clone())),
        })
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, store::Error>> {
        let Some(vars) = &self.config else {
            return Ok(Ok(Vec::new()));
        };
        let mut all = Vec::with_capacity(vars.len());
        for (name, value) in vars.iter() {
            match value {
                Ok(value) => all.push((name.clone(), value.clone())),
                Err(why) => return Ok(Err(store::Error::Upstream(why.clone()))),
            }
        }
        Ok(Ok(all))
    }
}
