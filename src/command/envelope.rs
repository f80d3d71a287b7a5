//! The remote-command envelope, as the rest of slotgate sees it. Parsing and the canonical
//! signed encoding live in the workspace crate `command-envelope`, which has no I/O, no clock
//! and no dependency on the daemon, so that the fuzz crate (`firmware-protocols/fuzz`, target
//! `envelope`) can run the parser of untrusted bytes on its own. The wire format is documented
//! byte by byte in `docs/upstream-protocol.md`, "Remote commands", with a test vector pinned in
//! `command-envelope/src/tests.rs`.

pub use command_envelope::{
    Action, DOMAIN, Envelope, MAX_ENVELOPE_BYTES, MAX_TARGETS, ParseError, SignatureEntry,
    encode_hex, parse,
};
