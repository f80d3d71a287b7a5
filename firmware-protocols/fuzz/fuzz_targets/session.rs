//! The host session driven by an arbitrary machine: arbitrary answers, silences, chirps, queued
//! polls and confirmations, with time advancing by arbitrary steps. The session must never panic,
//! never send while holding unconfirmed events except an identical retry, and never send the same
//! poll twice in a row unless it says the second is a retry (the implied-NACK rule, §4.2).
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use firmware_protocols::FirmwareProfile;
use firmware_protocols::profile::BUILT_IN;
use firmware_protocols::sas::message::{MeterPoll, TicketMessage};
use firmware_protocols::sas::session::HostSession;
use firmware_protocols::sas::{Address, Character, HostMessage, LongPoll, MeterCode};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Step {
    Advance(u16),
    Input { bytes: Vec<u8>, wakeup_first: bool },
    Enqueue(u8),
    Confirm,
    Timeout,
}

#[derive(Debug, Arbitrary)]
struct Input {
    profile: u8,
    address: u8,
    steps: Vec<Step>,
}

fn poll(n: u8) -> LongPoll {
    match n % 12 {
        0 => LongPoll::Shutdown,
        1 => LongPoll::Startup,
        2 => LongPoll::SendMeters,
        3 => LongPoll::SendMeters10To15,
        4 => LongPoll::SendMachineInfo,
        5 => LongPoll::SendVersionAndSerial,
        6 => LongPoll::SendHandpayInfo,
        7 => LongPoll::SendMeter(MeterPoll::CoinIn),
        8 => LongPoll::SendExtendedMeters { alternate: false, game: 0, meters: vec![MeterCode(0)] },
        9 => LongPoll::SendSelectedMeters { game: 0, meters: vec![0, 1, 0x0D] },
        10 => LongPoll::RedeemTicket(TicketMessage { status: 0xFF, detail: None }),
        _ => LongPoll::SendDateTime,
    }
}

/// What machines compare to recognise a repeat: the general-poll byte, or address and command.
fn identity(message: &HostMessage) -> Option<Vec<u8>> {
    let bytes = message.encode().ok()?;
    match message {
        HostMessage::SyncPoll | HostMessage::Broadcast(_) => None,
        _ => Some(bytes.iter().take(2).copied().collect()),
    }
}

fuzz_target!(|input: Input| {
    let (file, text) = BUILT_IN[usize::from(input.profile) % BUILT_IN.len()];
    let profile = FirmwareProfile::from_toml_str(file, text).expect("built-in profile is valid");
    let address = Address::new(input.address % 127 + 1).expect("1..=127");
    let start = Instant::now();
    let mut now = start;
    let mut session = HostSession::new(address, &profile, now);
    let mut previous: Option<Option<Vec<u8>>> = None;

    for step in input.steps.into_iter().take(512) {
        match step {
            Step::Advance(ms) => now += Duration::from_micros(u64::from(ms) * 50),
            Step::Input { bytes, wakeup_first } => {
                let chars: Vec<Character> = bytes
                    .iter()
                    .enumerate()
                    .map(|(i, &byte)| Character { byte, wakeup: wakeup_first && i == 0 })
                    .collect();
                session.handle_input(now, &chars);
            }
            Step::Enqueue(n) => {
                let _ = session.enqueue(poll(n));
            }
            Step::Confirm => {
                while session.poll_event().is_some() {}
                session.confirm_events();
            }
            Step::Timeout => {
                if let Some(deadline) = session.poll_timeout() {
                    now = now.max(deadline);
                    session.handle_timeout(now);
                }
            }
        }
        let holding = session.is_holding();
        while let Some(transmit) = session.poll_transmit(now) {
            let id = identity(&transmit.message);
            if let (Some(Some(prev)), Some(cur)) = (&previous, &id) {
                assert!(transmit.retry || prev != cur, "identical poll sent twice without a retry");
            }
            assert!(!holding || transmit.retry, "a new message was sent while events were held");
            previous = Some(id);
        }
    }
});
