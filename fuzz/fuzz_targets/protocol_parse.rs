//! The WebSocket protocol parser: any client text frame → a command or an
//! error frame in our own words, never a panic. Checks that what it accepts
//! keeps the protocol's bounds (non-empty strings, filter tokens ≤
//! `MAX_FILTER_TOKEN_BYTES`, an `id` only when a string or number), that no
//! library wording reaches the client, and that the reply frames built from
//! the result are JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moonx_ws::deliver::protocol::{self, Request, MAX_FILTER_TOKEN_BYTES};
use moonx_ws::deliver::Channel;
use serde_json::Value;

/// Phrases of serde_json's errors that must stay in the log.
const LIBRARY_WORDS: [&str; 5] = ["line 1", "column", "expected", "invalid type", "EOF"];

fn assert_json(frame: &str) {
    assert!(serde_json::from_str::<Value>(frame).is_ok(), "a reply frame is not JSON: {frame}");
}

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (tungstenite checks before we see them).
    let Ok(text) = std::str::from_utf8(data) else { return };
    match protocol::parse(text) {
        Ok(message) => {
            if let Some(id) = &message.id {
                assert!(id.is_string() || id.is_number(), "id kept: {id}");
            }
            match &message.request {
                Request::Subscribe { channel, tokens, since: _ } => {
                    assert!(!channel.is_empty());
                    for t in tokens.iter().flatten() {
                        assert!(!t.is_empty() && t.len() <= MAX_FILTER_TOKEN_BYTES, "token kept: {t:?}");
                    }
                    if let Some(c) = Channel::parse(channel) {
                        assert_json(&protocol::subscribed(c, tokens.as_deref(), &message.id));
                    }
                }
                Request::Unsubscribe { channel } => assert!(!channel.is_empty()),
                Request::Auth { token } => assert!(!token.is_empty()),
                Request::Ping => assert_json(&protocol::pong(&message.id)),
            }
        }
        Err(e) => {
            for word in LIBRARY_WORDS {
                assert!(!e.message.contains(word), "library wording reaches the client: {}", e.message);
            }
            assert_json(&protocol::error(e.code, &e.message, &e.id));
        }
    }
});
