//! Decimal amounts travel as strings (as in the seed) so that no precision is
//! lost in JSON numbers; this module checks that such a string is a decimal.

use serde::{Deserialize, Deserializer, Serialize};

/// A decimal number kept as its exact string, e.g. `"3000.00"` or `"-0.05"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Decimal(String);

impl Decimal {
    /// Accepts `-?digits(.digits)?`; no exponent, no leading `+`, no spaces.
    pub fn parse(s: &str) -> Option<Decimal> {
        is_decimal(s).then(|| Decimal(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A string already checked by [`is_decimal`] (the borrowed model's).
    pub(crate) fn from_checked(s: String) -> Decimal {
        debug_assert!(is_decimal(&s));
        Decimal(s)
    }

    pub fn is_negative(&self) -> bool {
        self.0.starts_with('-') && self.0.bytes().any(|b| (b'1'..=b'9').contains(&b))
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::str_visitor::from_str_with(d, "a decimal string", |s| {
            Decimal::parse(s).ok_or_else(|| format!("{s:?} is not a decimal string"))
        })
    }
}

impl TryFrom<&str> for Decimal {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Decimal::parse(s).ok_or_else(|| format!("{s:?} is not a decimal string"))
    }
}

/// The decimal grammar shared by the model and `schema/` (`^-?[0-9]+(\.[0-9]+)?$`).
pub fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    all_digits(int) && frac.is_none_or(all_digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_decimals() {
        for s in ["0", "1", "3000.00", "-0.05", "1000000", "0.0001"] {
            assert!(is_decimal(s), "{s}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for s in ["", "-", ".5", "5.", "1e5", "+1", " 1", "1,0", "NaN", "1.2.3", "0x10"] {
            assert!(!is_decimal(s), "{s}");
        }
    }
}
