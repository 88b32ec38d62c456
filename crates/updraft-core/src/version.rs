//! Deployed versions: immutable, content-addressed records of one deploy.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::manifest::{FunctionKind, Limits, Manifest};

/// A sha256 digest, shown as `sha256:<hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Digest, String> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(&s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|e| format!("bad digest {s:?}: {e}"))?;
        Ok(Digest(out))
    }
}

/// One immutable deployed version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Sequential per function, starting at 1; what users type in `rollback`.
    pub version: u64,
    /// sha256 of the Wasm bytes plus the normalized manifest: the version's identity.
    pub digest: Digest,
    /// sha256 of the Wasm bytes as uploaded; names the stored Wasm and compiled artifact.
    pub wasm_digest: Digest,
    pub wasm_bytes: u64,
    /// The kind, resolved at deploy (stated in the manifest or detected).
    pub kind: FunctionKind,
    /// The manifest as deployed (without `source`).
    pub manifest: Manifest,
    pub limits: Limits,
    /// Unix milliseconds.
    pub created_at_ms: u64,
}

impl VersionRecord {
    /// Identity of a (wasm, manifest) pair: same inputs, same digest.
    pub fn digest_of(wasm_digest: &Digest, manifest: &Manifest) -> Digest {
        let mut h = Sha256::new();
        h.update(wasm_digest.0);
        // Serializing a struct with BTreeMap fields is deterministic.
        h.update(serde_json::to_vec(manifest).unwrap_or_default());
        Digest(h.finalize().into())
    }
}
