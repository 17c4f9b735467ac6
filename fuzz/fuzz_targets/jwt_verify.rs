//! JWT handling as the server sees it: any token string → an identity or a
//! refusal in our words ([`AuthError`]), never a panic, never an identity
//! for a token the server's secret did not sign.
//!
//! Two kinds of input. `Raw`: any text as a token (the fuzzer cannot forge
//! an HMAC, so every one must be refused). `Signed`: a token built from a
//! fuzzed header and fuzzed claims, signed with the server's secret (or
//! another), optionally with one byte changed after signing. For these the
//! target knows the verdict: an identity exactly when every rule of
//! `deliver::auth` holds (then with the claims' values), else a refusal
//! whose reason is one of the rules broken. Times within a few seconds of a
//! boundary are left unjudged (the clock moves between signing and verifying).
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use moonx_ws::deliver::auth::{AuthError, Authenticator, ADMIN_ROLE, JS_MAX_SAFE_INTEGER};
use serde_json::{Map, Value};
use std::sync::OnceLock;

const SECRET: &str = "fuzz-secret";
const MAX_LIFETIME_SECS: u64 = moonx_ws::config::defaults::JWT_MAX_LIFETIME_SECS;
/// Seconds around a time boundary where the verdict is not judged.
const CLOCK_MARGIN: i64 = 3;

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(String),
    Signed(Box<Signed>),
}

#[derive(Arbitrary, Debug)]
struct Signed {
    alg: Alg,
    typ: Option<String>,
    kid: Option<String>,
    crit: Option<Vec<String>>,
    sub: Claim<String>,
    roles: Claim<Vec<String>>,
    exp: Time,
    nbf: Time,
    iat: Time,
    /// Claims we do not read (registered names are modelled above).
    extra: Vec<(String, String)>,
    /// Sign with another secret.
    wrong_secret: bool,
    /// Appended raw to the claims' JSON: `"sub": <text>` a second time.
    duplicate_sub: Option<String>,
    /// Overwrite one byte of the signed token.
    tamper: Option<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Other(String),
    Missing,
    NotText(i64),
}

/// A claim that is absent, null, of its own type, or of another.
#[derive(Arbitrary, Debug)]
enum Claim<T> {
    Missing,
    Null,
    Value(T),
    Number(i64),
    Text(String),
    Flag(bool),
}

#[derive(Arbitrary, Debug)]
enum Time {
    Missing,
    Null,
    /// Seconds from now.
    Offset(i32),
    Absolute(u64),
    Float(f64),
    Text(String),
}

fn now_secs() -> i64 {
    (moonx_events::validate::now_ms() / 1000) as i64
}

/// The claim as JSON; `None` when absent.
fn claim<T: Into<Value>>(c: Claim<T>) -> Option<Value> {
    Some(match c {
        Claim::Missing => return None,
        Claim::Null => Value::Null,
        Claim::Value(v) => v.into(),
        Claim::Number(n) => n.into(),
        Claim::Text(s) => s.into(),
        Claim::Flag(b) => b.into(),
    })
}

fn time(t: &Time, now: i64) -> Option<Value> {
    Some(match t {
        Time::Missing => return None,
        Time::Null => Value::Null,
        Time::Offset(o) => (now + i64::from(*o)).into(),
        Time::Absolute(n) => (*n).into(),
        Time::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Time::Text(s) => s.clone().into(),
    })
}

/// What the server must answer: an identity when `refusals` is empty, else
/// a refusal for one of them; nothing is judged when `unjudged` (too close
/// to a clock boundary).
struct Verdict {
    refusals: Vec<AuthError>,
    unjudged: bool,
}

impl Verdict {
    fn refuse(&mut self, why: AuthError) {
        self.refusals.push(why);
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn authenticator() -> &'static Authenticator {
    static A: OnceLock<Authenticator> = OnceLock::new();
    A.get_or_init(|| Authenticator::new(Some(SECRET), MAX_LIFETIME_SECS))
}

fn check_signed(s: Signed) {
    let now = now_secs();
    let mut verdict = Verdict { refusals: Vec::new(), unjudged: false };

    let mut header = Map::new();
    let sign_with = match &s.alg {
        Alg::Hs256 => Algorithm::HS256,
        Alg::Hs384 => Algorithm::HS384,
        Alg::Hs512 => Algorithm::HS512,
        _ => Algorithm::HS256,
    };
    match &s.alg {
        Alg::Hs256 => {
            header.insert("alg".into(), "HS256".into());
        }
        Alg::Hs384 => {
            header.insert("alg".into(), "HS384".into());
        }
        Alg::Hs512 => {
            header.insert("alg".into(), "HS512".into());
        }
        Alg::Other(a) => {
            header.insert("alg".into(), a.clone().into());
        }
        Alg::Missing => {}
        Alg::NotText(n) => {
            header.insert("alg".into(), (*n).into());
        }
    }
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        verdict.refuse(AuthError::WrongAlgorithm);
    }
    if let Some(t) = &s.typ {
        header.insert("typ".into(), t.clone().into());
    }
    if let Some(k) = &s.kid {
        header.insert("kid".into(), k.clone().into());
    }
    if let Some(c) = &s.crit {
        header.insert("crit".into(), c.clone().into());
        verdict.refuse(AuthError::CriticalHeader);
    }

    let mut claims = Map::new();
    const MODELLED: [&str; 7] = ["sub", "roles", "exp", "nbf", "iat", "aud", "iss"];
    for (k, v) in &s.extra {
        if !MODELLED.contains(&k.as_str()) {
            claims.insert(k.clone(), v.clone().into());
        }
    }
    // sub: a non-blank string.
    let sub = claim(s.sub);
    match &sub {
        Some(Value::String(t)) if !t.trim().is_empty() => {}
        _ => verdict.refuse(AuthError::BadClaims),
    }
    if let Some(v) = &sub {
        claims.insert("sub".into(), v.clone());
    }
    // roles: absent or an array of strings.
    let roles = claim(s.roles);
    match &roles {
        None => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => verdict.refuse(AuthError::BadClaims),
    }
    if let Some(v) = &roles {
        claims.insert("roles".into(), v.clone());
    }
    // exp: required, an integer (the server reads it as u64: a fraction is
    // refused), not before now, at most MAX_LIFETIME_SECS ahead.
    let exp = time(&s.exp, now);
    match exp.as_ref().map(|v| (v, v.as_u64())) {
        None | Some((Value::Null, _)) => verdict.refuse(AuthError::BadClaims),
        Some((_, None)) => verdict.refuse(AuthError::BadClaims),
        Some((_, Some(e))) => {
            let e = i128::from(e);
            let (now, max) = (i128::from(now), i128::from(MAX_LIFETIME_SECS));
            let margin = i128::from(CLOCK_MARGIN);
            if (e - now).abs() <= margin || (e - (now + max)).abs() <= margin {
                verdict.unjudged = true;
            }
            if e < now {
                verdict.refuse(AuthError::Expired);
            } else if e > now + max {
                verdict.refuse(AuthError::LifetimeTooLong);
            }
        }
    }
    if let Some(v) = &exp {
        claims.insert("exp".into(), v.clone());
    }
    // nbf: optional, but when present a non-negative number (null is
    // refused; the library rounds a fraction, as RFC 7519 allows), not after now.
    let nbf = time(&s.nbf, now);
    let nbf_secs = |v: &Value| {
        v.as_u64().map(|n| n as f64).or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64))
    };
    match nbf.as_ref().map(|v| (v, nbf_secs(v))) {
        None => {}
        Some((_, None)) => verdict.refuse(AuthError::BadClaims),
        Some((v, Some(n))) => {
            let n = v.as_u64().map_or_else(|| n.round() as i128, i128::from);
            if (n - i128::from(now)).abs() <= i128::from(CLOCK_MARGIN) {
                verdict.unjudged = true;
            }
            if n > i128::from(now) {
                verdict.refuse(AuthError::NotYetValid);
            }
        }
    }
    if let Some(v) = &nbf {
        claims.insert("nbf".into(), v.clone());
    }
    // iat: optional (null counts as absent), an integer.
    let iat = time(&s.iat, now);
    match iat.as_ref().map(|v| (v, v.as_u64())) {
        None | Some((Value::Null, _)) | Some((_, Some(_))) => {}
        Some((_, None)) => verdict.refuse(AuthError::BadClaims),
    }
    if let Some(v) = &iat {
        claims.insert("iat".into(), v.clone());
    }

    let mut claims_text = Value::Object(claims.clone()).to_string();
    if let (Some(dup), Some(_)) = (&s.duplicate_sub, &sub) {
        // Two `sub`s: which one is the user? Ambiguity must be refused.
        let tail = format!("{}\"sub\":{}}}", if claims.is_empty() { "" } else { "," }, Value::from(dup.as_str()));
        claims_text.pop();
        claims_text.push_str(&tail);
        verdict.refuse(AuthError::BadClaims);
    }
    let message = format!("{}.{}", b64(Value::Object(header).to_string().as_bytes()), b64(claims_text.as_bytes()));
    let secret = if s.wrong_secret { "another-secret" } else { SECRET };
    if s.wrong_secret {
        verdict.refuse(AuthError::BadSignature);
    }
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(secret.as_bytes()), sign_with)
        .expect("HMAC signing cannot fail");
    let signed = format!("{message}.{signature}");

    let mut token = signed.clone().into_bytes();
    let mut tampered = false;
    if let Some((at, byte)) = s.tamper {
        let at = usize::from(at) % token.len();
        tampered = token[at] != byte;
        token[at] = byte;
    }
    // Tokens arrive in JSON strings: always UTF-8.
    let Ok(token) = String::from_utf8(token) else { return };

    let result = authenticator().verify(&token);
    if tampered {
        assert!(result.is_err(), "a token changed after signing was accepted: {token}");
        return;
    }
    if verdict.unjudged {
        return;
    }
    match (result, verdict.refusals.is_empty()) {
        (Ok(identity), true) => {
            let Some(Value::String(sub)) = sub else { unreachable!() };
            assert_eq!(identity.user_id, sub);
            let admin = matches!(&roles, Some(Value::Array(r)) if r.iter().any(|r| r == ADMIN_ROLE));
            assert_eq!(identity.admin, admin);
            let exp = exp.and_then(|v| v.as_u64()).unwrap();
            assert_eq!(identity.expires_at_ms, exp.saturating_mul(1000).min(JS_MAX_SAFE_INTEGER));
            assert_eq!(identity.issued_at_secs, iat.and_then(|v| v.as_u64()));
        }
        (Ok(identity), false) => {
            panic!("accepted as {identity:?}, but must be refused for one of {:?}: {token}", verdict.refusals)
        }
        (Err(e), true) => panic!("refused ({e:?}) a token that keeps every rule: {token}"),
        (Err(e), false) => {
            assert!(verdict.refusals.contains(&e), "refused as {e:?}, expected one of {:?}: {token}", verdict.refusals)
        }
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(token) => {
            if let Ok(identity) = authenticator().verify(&token) {
                panic!("a token the fuzzer wrote without the secret was accepted as {identity:?}: {token}");
            }
        }
        Input::Signed(signed) => check_signed(*signed),
    }
});
