//! Tenants: every function, store, container and usage record belongs to
//! one. Their names follow the rules of function names, and a function is
//! known inside the platform by its key, `tenant/name`.

use crate::manifest::NAME_LEN_MAX;

/// The tenant of the embedded default: the owner of everything deployed
/// with the admin key, and of data from before tenants existed.
pub const LOCAL_TENANT: &str = "local";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid tenant name {0:?}: use 1-{NAME_LEN_MAX} lowercase letters, digits or '-', starting with a letter"
)]
pub struct TenantNameError(pub String);

impl crate::error::Classify for TenantNameError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }

    fn code(&self) -> &'static str {
        "bad_request"
    }
}

pub fn validate_tenant(name: &str) -> Result<(), TenantNameError> {
    crate::manifest::validate_name(name).map_err(|_| TenantNameError(name.to_string()))
}

/// The platform-wide key of `tenant`'s function `name`.
pub fn function_key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// `(tenant, name)` of a function key; a key from before tenants existed
/// (no `/`) belongs to [`LOCAL_TENANT`].
pub fn split_function_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((LOCAL_TENANT, key))
}
