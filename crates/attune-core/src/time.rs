//! Time as stored and compared: milliseconds since the Unix epoch. Logic takes `now` as a parameter
//! so that monitors and the state machine can be stepped in tests without sleeping.

use chrono::{DateTime, TimeZone, Utc};

/// Milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_millis())
    }
    pub fn millis(self) -> i64 {
        self.0
    }
    pub fn plus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(d.as_millis() as i64))
    }
    pub fn minus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_sub(d.as_millis() as i64))
    }
    /// Whole seconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn seconds_since(self, earlier: Timestamp) -> u64 {
        (self.0.saturating_sub(earlier.0).max(0) / 1000) as u64
    }
    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0).single().unwrap_or_default()
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_datetime().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let dt = DateTime::<Utc>::deserialize(d)?;
        Ok(Timestamp(dt.timestamp_millis()))
    }
}
