//! Deserializing a value from a JSON string without first copying the
//! string: serde's `Cow<str>` impl always allocates, and the decode hot path
//! reads several such strings per event.

use serde::de::{Error, Visitor};
use serde::Deserializer;
use std::fmt;

/// Hands the string (borrowed from the input where possible) to `parse`.
pub(crate) fn from_str_with<'de, D, T, F>(d: D, expecting: &'static str, parse: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct StrVisitor<F> {
        expecting: &'static str,
        parse: F,
    }
    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for StrVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: Error>(self, s: &str) -> Result<T, E> {
            (self.parse)(s).map_err(E::custom)
        }
    }
    d.deserialize_str(StrVisitor { expecting, parse })
}
