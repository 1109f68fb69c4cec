//! Integers as JSON counts them: `5` and `5.0` are the same number, and JSON Schema calls both an
//! integer. serde refuses `5.0` for an integer field; clients that compute with floats (Python,
//! JavaScript) send it. Fields that take a count use `#[serde(with = "whole")]` (or
//! `whole::option`): an integral float within range is taken, anything else is refused with a
//! message that says why.

use std::{fmt, marker::PhantomData};

use serde::{de, Deserializer, Serializer};

struct Whole<T>(PhantomData<T>);

impl<'de, T> de::Visitor<'de> for Whole<T>
where
    T: TryFrom<u64> + TryFrom<i64>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a whole number in range")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(E::custom(format!("{v} is not a whole number")));
        }
        if v >= 0.0 && v <= u64::MAX as f64 {
            self.visit_u64(v as u64)
        } else if v < 0.0 && v >= i64::MIN as f64 {
            self.visit_i64(v as i64)
        } else {
            Err(E::custom(format!("{v} is out of range")))
        }
    }
}

pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + TryFrom<i64>,
{
    d.deserialize_any(Whole(PhantomData))
}

pub fn serialize<S: Serializer, T: serde::Serialize>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    v.serialize(s)
}

/// The same for an optional field (`null` or absent is `None`; use with `#[serde(default)]`).
pub mod option {
    use super::*;

    struct Opt<T>(PhantomData<T>);

    impl<'de, T> de::Visitor<'de> for Opt<T>
    where
        T: TryFrom<u64> + TryFrom<i64>,
    {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a whole number in range, or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64> + TryFrom<i64>,
    {
        d.deserialize_option(Opt(PhantomData))
    }

    pub fn serialize<S: Serializer, T: serde::Serialize>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(v, s)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct T {
        #[serde(with = "super")]
        n: u32,
        #[serde(default, with = "super::option")]
        o: Option<i32>,
    }

    #[test]
    fn integral_floats_are_integers() {
        let t: T = serde_json::from_str(r#"{"n": 73.0, "o": -5.0}"#).unwrap();
        assert_eq!(t, T { n: 73, o: Some(-5) });
        let t: T = serde_json::from_str(r#"{"n": 7, "o": null}"#).unwrap();
        assert_eq!(t, T { n: 7, o: None });
        let t: T = serde_json::from_str(r#"{"n": 7}"#).unwrap();
        assert_eq!(t.o, None);
        for bad in
            [r#"{"n": 1.5}"#, r#"{"n": -1}"#, r#"{"n": 4294967296}"#, r#"{"n": "7"}"#, r#"{"n": 1e300}"#]
        {
            assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
        }
    }
}
