//! Bytes a hostile or broken peer can send, through every decoder they reach: the frame parsers,
//! the reply framer, the request framer and the 9-bit framing. None may panic; a host message
//! that decodes re-encodes to the bytes it came from.
//!
//! Random bytes pass a 16-bit CRC once in 65,536 tries, so plain random input almost never
//! reaches the code behind the CRC check. The inputs here are built to: every input of up to
//! three bytes, every checked frame of four, and random frames with their CRC appended.
// Test helpers outside `#[test]` functions are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use firmware_protocols::crc::append_crc;
use firmware_protocols::sas::codec::{Expect, ReplyDecoder, RequestDecoder};
use firmware_protocols::sas::{Address, HostMessage, Reply, ninebit};
use proptest::prelude::*;

/// The address the first byte names, so that the decoders' address check lets the rest through.
fn claimed_address(bytes: &[u8]) -> Address {
    bytes.first().and_then(|&b| Address::new(b & 0x7F)).unwrap_or_else(|| Address::new(1).unwrap())
}

/// The frame parsers.
fn parse(bytes: &[u8]) {
    let address = claimed_address(bytes);
    let _ = Reply::decode_frame(address, bytes);
    if let Ok(message) = HostMessage::decode(bytes) {
        assert_eq!(message.encode().unwrap(), bytes, "decode∘encode of {bytes:02X?}");
    }
}

/// The framers, byte by byte, for every kind of expected answer, with and without RTE, with the
/// line going idle where `idle` says.
fn frame(bytes: &[u8], command: u8, idle: impl Fn(usize) -> bool) {
    let address = claimed_address(bytes);
    for expect in
        [Expect::GeneralPoll, Expect::Ack { command }, Expect::Data { command }, Expect::Nothing]
    {
        for rte in [false, true] {
            let mut decoder = ReplyDecoder::new(address, expect, rte);
            for (i, &b) in bytes.iter().enumerate() {
                decoder.push(b);
                if decoder.decode(idle(i)).is_err() {
                    decoder = ReplyDecoder::new(address, expect, rte);
                }
            }
            let _ = decoder.decode(true);
        }
    }
    let start = Instant::now();
    let mut requests = RequestDecoder::default();
    for (i, &b) in bytes.iter().enumerate() {
        let now = start + Duration::from_millis(u64::try_from(i).unwrap());
        let _ = requests.push(now, b, Some(i == 0 || idle(i)));
        if let Some(deadline) = requests.poll_timeout() {
            let _ = requests.flush(deadline);
        }
    }
    let mut chars = Vec::new();
    let _ = ninebit::Decoder::default().decode(bytes, &mut chars);
}

/// The reported panics: a three-byte frame whose CRC residue is zero.
#[test]
fn three_byte_frames_with_a_valid_crc_are_refused_not_panicked_on() {
    let address = Address::new(1).unwrap();
    assert!(Reply::decode_frame(address, &[0x01, 0x89, 0x11]).is_err());
    for bytes in [[0x20, 0x02, 0x21], [0x25, 0xAF, 0x76], [0x71, 0x0E, 0x62]] {
        assert!(HostMessage::decode(&bytes).is_err(), "{bytes:02X?}");
    }
}

/// Every input of up to two bytes, and every input of three or four bytes that gets past the CRC
/// check (one per leading byte, or pair of leading bytes); longer or unchecked inputs are the
/// random tests' job. Exhaustive over all three-byte inputs took half a minute unoptimised and
/// reached nothing more: the others are refused at the length or CRC check.
#[test]
fn every_short_input_and_every_checked_short_frame_decodes_without_panicking() {
    for n in 0..=u8::MAX {
        parse(&[n]);
        frame(&[n], n, |_| true);
        let mut checked = vec![n];
        append_crc(&mut checked);
        parse(&checked);
        frame(&checked, n, |i| i % 2 == 1);
    }
    for n in 0..=u16::MAX {
        let bytes = n.to_be_bytes();
        parse(&bytes);
        frame(&bytes, bytes[1], |i| i == 1);
        let mut checked = bytes.to_vec();
        append_crc(&mut checked);
        parse(&checked);
        frame(&checked, bytes[1], |i| i % 2 == 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn random_checked_frames_never_panic(
        head in proptest::collection::vec(any::<u8>(), 1..270),
        idle_mask in any::<u64>(),
    ) {
        let mut bytes = head;
        append_crc(&mut bytes);
        parse(&bytes);
        let command = bytes.get(1).copied().unwrap_or_default();
        frame(&bytes, command, |i| idle_mask & (1 << (i % 64)) != 0);
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        command: u8,
        idle_mask in any::<u64>(),
    ) {
        parse(&bytes);
        frame(&bytes, command, |i| idle_mask & (1 << (i % 64)) != 0);
    }
}
