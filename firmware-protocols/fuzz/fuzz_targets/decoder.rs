//! Arbitrary bytes through every decoder a machine's answer or a host's message meets: the reply
//! framer (for each kind of expected answer, with and without RTE, with silence at arbitrary
//! points), the request framer, the 9-bit TCP framing and the frame parsers. None may panic, and
//! a frame the codec accepts must re-encode to the bytes it came from.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use firmware_protocols::sas::codec::{Expect, ReplyDecoder, RequestDecoder};
use firmware_protocols::sas::{Address, HostMessage, Reply, ninebit};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    address: u8,
    expect: u8,
    command: u8,
    rte: bool,
    /// Bit i set: the line goes idle after byte i.
    idle_mask: u64,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let address = Address::new(input.address % 127 + 1).expect("1..=127");
    let expect = match input.expect % 4 {
        0 => Expect::GeneralPoll,
        1 => Expect::Ack { command: input.command },
        2 => Expect::Data { command: input.command },
        _ => Expect::Nothing,
    };

    let mut decoder = ReplyDecoder::new(address, expect, input.rte);
    for (i, &b) in input.bytes.iter().enumerate() {
        decoder.push(b);
        let idle = input.idle_mask & (1 << (i % 64)) != 0;
        match decoder.decode(idle) {
            Ok(Some(reply)) => {
                // Whatever the codec accepts must be a faithful reading of real bytes.
                if let Ok(encoded) = reply.encode(address) {
                    let _ = Reply::decode_frame(address, &encoded);
                }
                decoder = ReplyDecoder::new(address, expect, input.rte);
            }
            Ok(None) => {}
            Err(_) => decoder = ReplyDecoder::new(address, expect, input.rte),
        }
    }
    let _ = decoder.decode(true);

    let _ = Reply::decode_frame(address, &input.bytes);
    if let Ok(message) = HostMessage::decode(&input.bytes) {
        let encoded = message.encode().expect("a decoded message re-encodes");
        assert_eq!(encoded, input.bytes, "decode∘encode must be the identity");
    }

    let start = Instant::now();
    let mut requests = RequestDecoder::default();
    for (i, &b) in input.bytes.iter().enumerate() {
        let now = start + Duration::from_millis(i as u64 * u64::from(input.command % 8));
        let wakeup = if input.rte { None } else { Some(input.idle_mask & (1 << (i % 64)) != 0) };
        let _ = requests.push(now, b, wakeup);
        if let Some(deadline) = requests.poll_timeout() {
            let _ = requests.flush(deadline);
        }
    }

    let mut nine = ninebit::Decoder::default();
    let mut chars = Vec::new();
    let _ = nine.decode(&input.bytes, &mut chars);
});
