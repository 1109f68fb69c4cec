//! The key store's shapes and rules: a key is a name (global, or scoped to a pack) and a value;
//! a secret key's value is kept encrypted and never shown again once set.

use serde::{Deserialize, Serialize};

/// A key as listed or shown. A secret key's `value` is always absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyInfo {
    pub name: String,
    /// The pack the key belongs to; absent for a global key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<String>,
    pub secret: bool,
    /// The value of a key that is not secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub created_at: crate::Timestamp,
    pub updated_at: crate::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// Longest key name.
pub const MAX_NAME: usize = 128;
/// Largest key value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Why `name` cannot name a key, if it cannot: 1 to 128 of letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid key name {name:?}: 1 to {MAX_NAME} letters, digits, '.', '_' or '-'"))
    }
}

/// Why `value` cannot be a key's value, if it cannot.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!("a key's value is at most {MAX_VALUE_BYTES} bytes"));
    }
    if value.contains('\0') {
        return Err("a key's value may not contain NUL".into());
    }
    Ok(())
}
