//! Credentials in HTTP headers, read the same way everywhere (the WebSocket
//! upgrade, the publish API, the operator endpoints): `Authorization:
//! Bearer <credential>` with the scheme matched case-insensitively (RFC
//! 7235), or `X-API-Key: <key>`. A header sent twice is ambiguous and
//! counts as absent. Keys are compared in constant time.

use axum::http::{header, HeaderMap, HeaderName};

/// The credential of `Authorization: Bearer …` (any case of "Bearer").
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = single(headers, &header::AUTHORIZATION)?;
    let (scheme, credential) = value.trim_start().split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

/// An API key: `X-API-Key`, else the bearer credential.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    single(headers, &HeaderName::from_static("x-api-key")).map(str::trim).filter(|k| !k.is_empty()).or_else(|| bearer(headers))
}

/// Whether `given` is one of `keys` (empty keys never match).
pub fn key_matches(keys: &[String], given: &str) -> bool {
    // Every key is compared, so the time does not tell which one was close.
    keys.iter().fold(false, |hit, k| hit | (!k.is_empty() && constant_time_eq(k.as_bytes(), given.as_bytes())))
}

/// The header's value when it is present exactly once and visible ASCII.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc "] {
            assert_eq!(bearer(&headers(&[("authorization", v)])), Some("abc"), "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "Token abc"] {
            assert_eq!(bearer(&headers(&[("authorization", v)])), None, "{v}");
        }
        assert_eq!(bearer(&headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")])), None, "ambiguous");
    }

    #[test]
    fn api_keys_come_from_either_header() {
        assert_eq!(api_key(&headers(&[("x-api-key", "k1")])), Some("k1"));
        assert_eq!(api_key(&headers(&[("authorization", "bearer k2")])), Some("k2"));
        assert_eq!(api_key(&headers(&[])), None);
        let keys = vec!["k1".to_owned(), String::new()];
        assert!(key_matches(&keys, "k1"));
        assert!(!key_matches(&keys, ""));
        assert!(!key_matches(&keys, "k2"));
    }
}
