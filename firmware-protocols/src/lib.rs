//! Sans-IO SAS 6.0x host protocol for slotgate.
//!
//! **No I/O and no clock.** This crate opens no port, socket or file, spawns nothing and never
//! reads the time: every function that depends on time takes `now` as a parameter, in the manner
//! of quinn-proto. That keeps the protocol deterministic under test and fuzzing, and lets one
//! implementation serve the serial transport, the TCP transport and the simulator.
//!
//! # Layout
//! - [`crc`], [`bcd`]: the two field encodings every frame uses.
//! - [`sas`]: messages, framing, the 9-bit TCP framing and the host session.
//! - [`profile`]: firmware profiles, parsed from TOML text.
//! - [`error`]: decode, encode and BCD errors.

// Wire bytes come from machines and peers we do not control: an index out of range is a panic
// on hostile input, so every access goes through `get` and fails as a `DecodeError`.
#![deny(clippy::indexing_slicing)]

pub mod bcd;
pub mod crc;
pub mod error;
pub mod profile;
pub mod sas;

pub use error::{BcdError, DecodeError, EncodeError};
pub use profile::FirmwareProfile;
