//! The `since` position parser (SPEC 6.1): any string a client sends →
//! a position or `PositionError`, never a panic. A parsed position
//! re-encodes to a string that parses back to the same position and is no
//! longer than the input (so never over `MAX_POSITION_LEN`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moonx_ws::deliver::resume::{Position, MAX_POSITION_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(position) = Position::parse(text) {
        let encoded = position.encode();
        assert!(encoded.len() <= text.len().min(MAX_POSITION_LEN), "{text:?} re-encodes longer: {encoded:?}");
        assert_eq!(Position::parse(&encoded), Ok(position), "{text:?} does not round-trip via {encoded:?}");
    }
});
