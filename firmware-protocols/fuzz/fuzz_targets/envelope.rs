//! Arbitrary bytes through the remote-command envelope parser (`command-envelope`), the first
//! thing untrusted command bytes from MQTT, HTTPS or the admin socket meet. It may not panic;
//! what it accepts must survive a round trip through the wire form unchanged, keep to the
//! documented limits, and have a canonical encoding no longer than the limits allow.
#![no_main]

use command_envelope::{
    MAX_ENVELOPE_BYTES, MAX_REASON_BYTES, MAX_SIGNATURES, MAX_TARGETS, ParseError, parse,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match parse(bytes) {
        Err(ParseError::Oversized { len, limit }) => {
            assert_eq!((len, limit), (bytes.len(), MAX_ENVELOPE_BYTES));
        }
        Err(ParseError::Malformed(_)) => assert!(bytes.len() <= MAX_ENVELOPE_BYTES),
        Ok(envelope) => {
            assert!(!envelope.targets.is_empty() && envelope.targets.len() <= MAX_TARGETS);
            assert!(envelope.reason.len() <= MAX_REASON_BYTES);
            assert!(envelope.signatures.len() <= MAX_SIGNATURES);
            assert!(envelope.issued_at <= envelope.not_before);
            assert!(envelope.not_before < envelope.expires_at);
            let again = parse(envelope.to_json().as_bytes()).expect("its own wire form parses");
            assert_eq!(again, envelope);
            assert_eq!(again.signed_bytes(), envelope.signed_bytes());
        }
    }
});
