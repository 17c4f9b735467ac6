//! What the fuzz targets of `fuzz/` found, pinned in the normal test suite
//! (RELIABILITY.md, Fuzzing), plus a replay of the committed corpora of the
//! gateway's parsers: every input the fuzzer kept still gets an answer (no
//! panic) and a parsed `since` position still round-trips, so a regression
//! shows here even where cargo-fuzz is not installed.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use moonx_ws::deliver::auth::{AuthError, Authenticator};
use moonx_ws::deliver::protocol;
use moonx_ws::deliver::resume::Position;
use serde_json::{json, Value};
use std::path::PathBuf;

const SECRET: &str = "fuzz-regression-secret";

fn now_secs() -> u64 {
    moonx_ws::events::validate::now_ms() / 1000
}

/// A token with any header and claims, HS256-signed with `SECRET`.
fn forge(header: Value, claims: Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

fn authenticator() -> Authenticator {
    Authenticator::new(Some(SECRET), moonx_ws::config::defaults::JWT_MAX_LIFETIME_SECS)
}

/// Found by `jwt_verify` (its first minute): `"nbf": null` is refused, not
/// read as "no nbf" (the model in the target had assumed the latter). A
/// present `nbf` must be a NumericDate; the refusal is in our words.
#[test]
fn a_null_nbf_is_refused_as_bad_claims() {
    let exp = now_secs() + 600;
    let null_nbf = forge(json!({"alg": "HS256"}), json!({"sub": "y", "exp": exp, "roles": [], "iat": null, "nbf": null}));
    assert_eq!(authenticator().verify(&null_nbf), Err(AuthError::BadClaims));
    // The same claims without nbf are accepted, with the null iat read as none.
    let no_nbf = forge(json!({"alg": "HS256"}), json!({"sub": "y", "exp": exp, "roles": [], "iat": null}));
    let identity = authenticator().verify(&no_nbf).expect("a token without nbf is accepted");
    assert_eq!((identity.user_id.as_str(), identity.issued_at_secs), ("y", None));
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "the corpus of {target} was not found in {}", dir.display());
    files.into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect()
}

#[test]
fn every_kept_protocol_frame_gets_a_command_or_an_error_in_our_words() {
    let (mut commands, mut errors) = (0, 0);
    for (file, bytes) in corpus("protocol_parse") {
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        match protocol::parse(text) {
            Ok(_) => commands += 1,
            Err(e) => {
                errors += 1;
                for word in ["line 1", "column", "expected", "invalid type", "EOF"] {
                    assert!(!e.message.contains(word), "{}: library wording {:?}", file.display(), e.message);
                }
            }
        }
    }
    assert!(commands > 0 && errors > 0, "the corpus lost its variety: {commands} commands, {errors} errors");
}

#[test]
fn every_kept_since_position_parses_totally_and_round_trips() {
    let mut parsed = 0;
    for (file, bytes) in corpus("since_position") {
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        if let Ok(position) = Position::parse(text) {
            parsed += 1;
            assert_eq!(Position::parse(&position.encode()), Ok(position), "{}", file.display());
        }
    }
    assert!(parsed > 0, "no valid position left in the corpus");
}
