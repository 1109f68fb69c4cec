//! Validated names: `PackRef` (`core`) and `ActionRef` (`core.echo`). Constructed only through `parse`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "pack ref {0:?} is invalid: use 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter"
    )]
    Pack(String),
    #[error("action ref {0:?} is invalid: expected PACK.NAME, e.g. core.echo (a-z, 0-9, '_' or '-')")]
    Action(String),
}

/// Longest pack name, and longest action name within a pack.
pub const MAX_SEGMENT: usize = 64;
/// The pack name rule as a regular expression (for the API documents).
pub const PACK_PATTERN: &str = "^[a-z][a-z0-9_-]{0,63}$";
/// The action ref rule as a regular expression (for the API documents).
pub const ACTION_PATTERN: &str = "^[a-z][a-z0-9_-]{0,63}\\.[a-z][a-z0-9_-]{0,63}$";

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SEGMENT
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The name of a pack, e.g. `core`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackRef(String);

impl PackRef {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if valid_segment(s) {
            Ok(PackRef(s.to_owned()))
        } else {
            Err(NameError::Pack(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of an action, `PACK.NAME`, e.g. `core.echo`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionRef(String);

impl ActionRef {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s.split_once('.') {
            Some((pack, name)) if valid_segment(pack) && valid_segment(name) => Ok(ActionRef(s.to_owned())),
            _ => Err(NameError::Action(s.to_owned())),
        }
    }
    pub fn new(pack: &PackRef, name: &str) -> Result<Self, NameError> {
        Self::parse(&format!("{}.{}", pack.as_str(), name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn pack(&self) -> PackRef {
        PackRef(self.0.split_once('.').map(|(p, _)| p).unwrap_or_default().to_owned())
    }
    pub fn name(&self) -> &str {
        self.0.split_once('.').map(|(_, n)| n).unwrap_or_default()
    }
}

macro_rules! string_name {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
        impl std::str::FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                <$t>::parse(s)
            }
        }
    };
}
string_name!(PackRef);
string_name!(ActionRef);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_refs() {
        let a = ActionRef::parse("core.echo").unwrap();
        assert_eq!(a.pack().as_str(), "core");
        assert_eq!(a.name(), "echo");
        assert!(ActionRef::parse("core").is_err());
        assert!(ActionRef::parse("core.").is_err());
        assert!(ActionRef::parse("Core.echo").is_err());
        assert!(ActionRef::parse("core.echo.x").is_err());
        assert!(PackRef::parse("my_pack-2").is_ok());
        assert!(PackRef::parse("2pack").is_err());
        assert!(PackRef::parse("").is_err());
    }

    #[test]
    fn serde_validates() {
        let r: Result<ActionRef, _> = serde_json::from_str("\"no dot\"");
        assert!(r.is_err());
        let r: ActionRef = serde_json::from_str("\"core.noop\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"core.noop\"");
    }
}
