//! What a write that adds data asks first. A tenant's disk quota is the
//! scheduler's to know; the key-value and blob layers ask it through
//! [`WriteGate`] before they store anything more for an owner.

use async_trait::async_trait;

/// Admits or refuses writes that add data for an owner (a tenant).
#[async_trait]
pub trait WriteGate: Send + Sync {
    /// `Err(message)`: the owner may store no more; the message says why
    /// and what to do.
    async fn admit(&self, owner: &str) -> Result<(), String>;
}
