//! Every typed message against the reference vectors of sas-protocol.md §3, byte for byte, and
//! encode∘decode round trips over generated values for every message type.
// Test helpers outside `#[test]` functions are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used)]

use firmware_protocols::crc::append_crc;
use firmware_protocols::sas::message::{
    AftTransferStatus, BasicMeters, DateTime, EnabledFeatures, ExtendedMeter, ExtendedMeters,
    HandpayInfo, LastBill, LegacyBonusWin, MachineInfo, MeterPoll, Meters10To15, ProgressiveWin,
    ProgressiveWins, ReplyLen, SelectedMeters, TicketDetail, TicketMessage, ValidationRecord,
    VersionAndSerial,
};
use firmware_protocols::sas::{
    Address, Exception, HostMessage, LongPoll, MeterCode, RealTimeEvent, Reply,
};
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn a(n: u8) -> Address {
    Address::new(n).unwrap()
}

/// Encodes `poll` to `address`, checks the wire bytes, and decodes them back.
fn assert_poll(poll: LongPoll, address: u8, wire: &str) {
    let bytes = poll.encode(address).unwrap();
    assert_eq!(bytes, hex(wire), "encoding of {poll:?}");
    let decoded = HostMessage::decode(&bytes).unwrap();
    let expected = match Address::new(address) {
        Some(addr) => HostMessage::LongPoll(addr, poll),
        None => HostMessage::Broadcast(poll),
    };
    assert_eq!(decoded, expected);
}

/// Decodes a reply frame of address 1, checks the typed value, and re-encodes it byte for byte.
fn assert_reply(wire: &str, expected: Reply) {
    let bytes = hex(wire);
    assert_eq!(Reply::decode_frame(a(1), &bytes).unwrap(), expected, "decoding of {wire}");
    assert_eq!(expected.encode(a(1)).unwrap(), bytes, "encoding of {expected:?}");
}

fn march_15_2024() -> DateTime {
    DateTime { year: 2024, month: 3, day: 15, hour: 13, minute: 45, second: 30 }
}

// === Host → machine ===

#[test]
fn lpa0_enabled_features_request_and_reply() {
    let poll = LongPoll::SendEnabledFeatures { game: 0 };
    let bytes = poll.encode(1).unwrap();
    assert_eq!((bytes[..4].to_vec(), bytes.len()), (vec![0x01, 0xA0, 0x00, 0x00], 6));
    assert_eq!(HostMessage::decode(&bytes).unwrap(), HostMessage::LongPoll(a(1), poll));
    let features = EnabledFeatures { game: 0, features: [0xC0, 0x48, 0x01] };
    let frame = Reply::EnabledFeatures(features).encode(a(1)).unwrap();
    assert_eq!(frame[..7], [0x01, 0xA0, 0x00, 0x00, 0xC0, 0x48, 0x01]);
    assert_eq!(Reply::decode_frame(a(1), &frame).unwrap(), Reply::EnabledFeatures(features));
    assert_eq!(features.validation(), "secure_enhanced");
    assert!(features.ticket_redemption() && features.aft() && features.extended_meters());
    assert!(!features.legacy_bonus_awards() && !features.multi_denomination());
}

#[test]
fn lp4d_enhanced_validation_request_and_record() {
    let poll = LongPoll::SendEnhancedValidation { function: 0 };
    let bytes = poll.encode(1).unwrap();
    assert_eq!(bytes[..3], [0x01, 0x4D, 0x00]);
    assert_eq!(bytes.len(), 5, "addr 4D function crc");
    assert_eq!(HostMessage::decode(&bytes).unwrap(), HostMessage::LongPoll(a(1), poll.clone()));
    assert!(!poll.moves_money());
    let record = ValidationRecord {
        validation_type: 0x00,
        index: 3,
        date_time: Some(march_15_2024()),
        validation_number: 1_234_567_890_123_456,
        amount: 12_345,
        ticket_number: 42,
        validation_system_id: 7,
        expiration: 30,
        pool_id: 0x0102,
    };
    let frame = Reply::EnhancedValidation(record).encode(a(1)).unwrap();
    assert_eq!(frame.len(), 35, "fixed length: 2 + 31 + CRC");
    assert_eq!(
        frame[2..33],
        hex("00 03 03 15 20 24 13 45 30 12 34 56 78 90 12 34 56 00 00 01 23 45 00 42 07 \
             00 00 00 30 02 01")[..]
    );
    assert_eq!(Reply::decode_frame(a(1), &frame).unwrap(), Reply::EnhancedValidation(record));
    let empty = Reply::EnhancedValidation(ValidationRecord::default()).encode(a(1)).unwrap();
    let Reply::EnhancedValidation(decoded) = Reply::decode_frame(a(1), &empty).unwrap() else {
        panic!("LP4D")
    };
    assert!(decoded.is_empty(), "an all-zero record is no record");
}

#[test]
fn lp01_shutdown_and_lp02_startup() {
    assert_poll(LongPoll::Shutdown, 1, "01 01 51 08"); // addr, cmd 01, CRC 0851 low byte first
    assert_poll(LongPoll::Startup, 1, "01 02 CA 3A");
    assert_poll(LongPoll::Shutdown, 0, "00 01 89 11"); // the same as a type G broadcast
}

#[test]
fn lp0e_real_time_event_reporting() {
    assert_poll(LongPoll::RealTimeEventReporting(true), 1, "01 0E 01 45 D1"); // flag 01 = on
    assert_poll(LongPoll::RealTimeEventReporting(false), 1, "01 0E 00 CC C0");
    // Values above 1 are NACKed by machines and refused here (MON LP0E parser).
    assert!(HostMessage::decode(&firmware_protocols_crc("01 0E 02")).is_err());
}

fn firmware_protocols_crc(body: &str) -> Vec<u8> {
    let mut b = hex(body);
    append_crc(&mut b);
    b
}

#[test]
fn lp21_rom_signature_seed_is_binary_lsb_first() {
    assert_poll(LongPoll::RomSignature { seed: 0 }, 1, "01 21 00 00 5C 45");
}

#[test]
fn lp7f_set_date_time_per_machine_and_broadcast() {
    // 03 15 2024 = MMDDYYYY, 13 45 30 = HHMMSS, all BCD.
    assert_poll(LongPoll::SetDateTime(march_15_2024()), 1, "01 7F 03 15 20 24 13 45 30 ED 74");
    assert_poll(LongPoll::SetDateTime(march_15_2024()), 0, "00 7F 03 15 20 24 13 45 30 10 39");
}

#[test]
fn lp2f_selected_meters_request() {
    // len 06 = game (2) + 4 codes; game 9876 in BCD; codes 0C 05 1B 0D.
    assert_poll(
        LongPoll::SendSelectedMeters { game: 9876, meters: vec![0x0C, 0x05, 0x1B, 0x0D] },
        1,
        "01 2F 06 98 76 0C 05 1B 0D 06 5E",
    );
}

#[test]
fn lp6f_extended_meters_request_codes_are_lsb_first() {
    assert_poll(
        LongPoll::SendExtendedMeters {
            alternate: false,
            game: 0,
            meters: vec![MeterCode(0x0000), MeterCode(0x0005)],
        },
        1,
        "01 6F 06 00 00 00 00 05 00 3B 09",
    );
}

#[test]
fn lp71_redeem_ticket_status_query() {
    // len 01, transfer code FF = "status only" (ARD ConfirmRedeem).
    assert_poll(
        LongPoll::RedeemTicket(TicketMessage { status: 0xFF, detail: None }),
        1,
        "01 71 01 FF 1F D0",
    );
}

#[test]
fn type_r_polls_are_two_bytes_without_crc() {
    for poll in [
        LongPoll::SendMeters10To15,
        LongPoll::SendCurrentCredits,
        LongPoll::SendHandpayInfo,
        LongPoll::SendMeters,
        LongPoll::SendMachineInfo,
        LongPoll::SendLastBill,
        LongPoll::SendVersionAndSerial,
        LongPoll::SendTicketValidationData,
        LongPoll::SendDateTime,
        LongPoll::SendMeter(MeterPoll::CoinIn),
    ] {
        let bytes = poll.encode(1).unwrap();
        assert_eq!(bytes, [0x01, poll.command()]);
        assert_eq!(HostMessage::decode(&bytes).unwrap(), HostMessage::LongPoll(a(1), poll));
    }
}

#[test]
fn general_and_sync_polls_are_one_byte() {
    assert_eq!(HostMessage::GeneralPoll(a(1)).encode().unwrap(), [0x81]);
    assert_eq!(HostMessage::SyncPoll.encode().unwrap(), [0x80]);
    assert_eq!(HostMessage::decode(&[0xFF]).unwrap(), HostMessage::GeneralPoll(a(127)));
    assert_eq!(HostMessage::decode(&[0x80]).unwrap(), HostMessage::SyncPoll);
}

#[test]
fn a_long_poll_with_a_bad_crc_is_rejected() {
    assert!(HostMessage::decode(&hex("01 01 52 08")).is_err());
}

#[test]
fn too_many_meter_codes_are_refused_on_encode() {
    let poll = LongPoll::SendSelectedMeters { game: 0, meters: vec![0; 11] };
    assert!(poll.encode(1).is_err());
}

// === Machine → host ===

#[test]
fn lp1a_current_credits() {
    assert_reply("01 1A 00 01 00 00 1F A6", Reply::CurrentCredits(10_000));
}

#[test]
fn lp1c_basic_meters() {
    assert_reply(
        "01 1C \
         00 12 34 56  00 10 00 00  00 05 00 00  00 00 00 00 \
         00 00 07 89  00 00 03 21  00 00 00 12  00 00 00 03  E1 56",
        Reply::Meters(BasicMeters {
            coin_in: 123_456,
            coin_out: 100_000,
            drop: 50_000,
            jackpot: 0,
            games_played: 789,
            games_won: 321,
            slot_door_opened: 12,
            power_resets: 3,
        }),
    );
}

#[test]
fn lp0f_meters_10_to_15() {
    assert_reply(
        "01 0F 00 00 20 00  00 12 34 56  00 10 00 00  00 05 00 00  00 00 00 00  00 00 07 89  0F 7D",
        Reply::Meters10To15(Meters10To15 {
            cancelled_credits: 2000,
            coin_in: 123_456,
            coin_out: 100_000,
            drop: 50_000,
            jackpot: 0,
            games_played: 789,
        }),
    );
}

#[test]
fn lp1f_machine_info_with_accounting_denomination() {
    assert_reply(
        // "AT" "123" denom 01 maxbet C9 group 12 options 0000 "123456" "9050"
        "01 1F 41 54 31 32 33 01 C9 12 00 00 31 32 33 34 35 36 39 30 35 30 40 96",
        Reply::MachineInfo(MachineInfo {
            game_id: *b"AT",
            additional_id: *b"123",
            denomination: 0x01,
            max_bet: 0xC9,
            progressive_group: 0x12,
            game_options: 0,
            paytable_id: *b"123456",
            base_percentage: *b"9050",
        }),
    );
}

#[test]
fn lp54_version_and_serial() {
    // len 09 = "602" + "ABC123".
    assert_reply(
        "01 54 09 36 30 32 41 42 43 31 32 33 D7 3A",
        Reply::VersionAndSerial(VersionAndSerial { version: *b"602", serial: b"ABC123".to_vec() }),
    );
}

#[test]
fn lp2f_selected_meters_reply_uses_five_bytes_for_cents_meters() {
    assert_reply(
        "01 2F 17 98 76 \
         0C 00 00 12 34  05 00 00 56 78  1B 00 00 90 12  0D 00 00 00 67 89  D2 53",
        Reply::SelectedMeters(SelectedMeters {
            game: 9876,
            meters: vec![(0x0C, 1234), (0x05, 5678), (0x1B, 9012), (0x0D, 6789)],
        }),
    );
}

#[test]
fn lp6f_extended_meters_reply_carries_sizes() {
    assert_reply(
        "01 6F 11 00 00  00 00 05 00 00 12 34 56  05 00 04 00 00 07 89  DE 8F",
        Reply::ExtendedMeters(ExtendedMeters {
            alternate: false,
            game: 0,
            meters: vec![
                ExtendedMeter { code: MeterCode(0), size: 5, value: 123_456 },
                ExtendedMeter { code: MeterCode(5), size: 4, value: 789 },
            ],
        }),
    );
}

#[test]
fn lp7e_date_time_reply() {
    assert_reply("01 7E 03 15 20 24 13 45 30 52 F5", Reply::DateTime(march_15_2024()));
}

#[test]
fn an_impossible_date_is_refused() {
    // Month 13.
    let frame = firmware_protocols_crc("01 7E 13 15 20 24 13 45 30");
    assert!(Reply::decode_frame(a(1), &frame).is_err());
}

#[test]
fn rte_game_started_game_ended_game_selected_bill_accepted() {
    assert_reply(
        // FF marker, 7E, wager 0025 credits, coin-in 00123481, wager type 41, group 00
        "01 FF 7E 00 25 00 12 34 81 41 00 44 46",
        Reply::Event(RealTimeEvent::GameStarted {
            credits_wagered: 25,
            total_coin_in: 123_481,
            wager_type: 0x41,
            progressive_group: 0,
        }),
    );
    assert_reply("01 FF 7F 00 00 00 40 F4 5F", Reply::Event(RealTimeEvent::GameEnded { win: 40 }));
    assert_reply("01 FF 8C 00 03 42 55", Reply::Event(RealTimeEvent::GameSelected { game: 3 }));
    assert_reply(
        "01 FF 4F 37 02 00 00 00 17 91 C8",
        Reply::Event(RealTimeEvent::BillAccepted { country: 37, denomination_code: 2, count: 17 }),
    );
}

#[test]
fn a_reply_from_another_address_is_refused() {
    let bytes = hex("01 1A 00 01 00 00 1F A6");
    assert!(Reply::decode_frame(a(2), &bytes).is_err());
}

#[test]
fn a_non_bcd_meter_is_refused_not_guessed() {
    let frame = firmware_protocols_crc("01 1A 00 01 0A 00");
    assert!(Reply::decode_frame(a(1), &frame).is_err());
}

#[test]
fn single_byte_answers() {
    assert_eq!(Reply::Ack.encode(a(5)).unwrap(), [0x05]);
    assert_eq!(Reply::Nack.encode(a(5)).unwrap(), [0x85]);
    assert_eq!(Reply::Busy.encode(a(5)).unwrap(), [0x05, 0x00]);
    assert_eq!(Reply::Exception(Exception::HandpayPending).encode(a(5)).unwrap(), [0x51]);
}

// === Round trips over generated values ===

fn address() -> impl Strategy<Value = Address> {
    (1u8..=127).prop_map(|n| Address::new(n).unwrap())
}

fn bcd(digits: u32) -> impl Strategy<Value = u64> {
    0..10u64.pow(digits)
}

fn date_time() -> impl Strategy<Value = DateTime> {
    (0u16..=9999, 1u8..=12, 1u8..=31, 0u8..24, 0u8..60, 0u8..60).prop_map(
        |(year, month, day, hour, minute, second)| DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        },
    )
}

fn ticket() -> impl Strategy<Value = TicketMessage> {
    (
        any::<u8>(),
        proptest::option::of((bcd(10), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40))),
    )
        .prop_map(|(status, detail)| TicketMessage {
            status,
            detail: detail.map(|(amount, parsing_code, validation_data)| TicketDetail {
                amount,
                parsing_code,
                validation_data,
            }),
        })
}

fn long_poll() -> impl Strategy<Value = LongPoll> {
    prop_oneof![
        Just(LongPoll::Shutdown),
        Just(LongPoll::Startup),
        any::<bool>().prop_map(LongPoll::RealTimeEventReporting),
        Just(LongPoll::SendMeters10To15),
        proptest::sample::select(MeterPoll::ALL.to_vec()).prop_map(LongPoll::SendMeter),
        Just(LongPoll::SendCurrentCredits),
        Just(LongPoll::SendHandpayInfo),
        Just(LongPoll::SendMeters),
        Just(LongPoll::SendMachineInfo),
        any::<u16>().prop_map(|seed| LongPoll::RomSignature { seed }),
        (bcd(4), proptest::collection::vec(any::<u8>(), 0..=10))
            .prop_map(|(game, meters)| LongPoll::SendSelectedMeters { game: game as u16, meters }),
        Just(LongPoll::SendLastBill),
        Just(LongPoll::SendVersionAndSerial),
        (any::<bool>(), bcd(4), proptest::collection::vec(any::<u16>(), 0..=12)).prop_map(
            |(alternate, game, meters)| LongPoll::SendExtendedMeters {
                alternate,
                game: game as u16,
                meters: meters.into_iter().map(MeterCode).collect(),
            }
        ),
        Just(LongPoll::SendTicketValidationData),
        ticket().prop_map(LongPoll::RedeemTicket),
        Just(LongPoll::SendDateTime),
        date_time().prop_map(LongPoll::SetDateTime),
    ]
}

fn real_time_event() -> impl Strategy<Value = RealTimeEvent> {
    prop_oneof![
        (bcd(4), bcd(8), any::<u8>(), any::<u8>()).prop_map(|(w, c, t, g)| {
            RealTimeEvent::GameStarted {
                credits_wagered: w,
                total_coin_in: c,
                wager_type: t,
                progressive_group: g,
            }
        }),
        bcd(8).prop_map(|win| RealTimeEvent::GameEnded { win }),
        bcd(4).prop_map(|g| RealTimeEvent::GameSelected { game: g as u16 }),
        (bcd(2), bcd(2), bcd(8)).prop_map(|(c, d, n)| RealTimeEvent::BillAccepted {
            country: c as u8,
            denomination_code: d as u8,
            count: n,
        }),
        (any::<u8>(), any::<u8>())
            .prop_map(|(reel, physical_stop)| RealTimeEvent::ReelStopped { reel, physical_stop }),
        any::<u8>().prop_map(|card| RealTimeEvent::CardHeld { card }),
        (any::<u8>(), bcd(8), any::<u8>(), bcd(8)).prop_map(|(m, w, t, b)| {
            RealTimeEvent::LegacyBonus { multiplier: m, multiplied_win: w, tax_status: t, bonus: b }
        }),
        // Every named exception without an RTE payload travels as a plain event.
        proptest::sample::select(
            Exception::ALL
                .iter()
                .copied()
                .filter(|e| RealTimeEvent::frame_len(e.code()) == Some(5))
                .collect::<Vec<_>>()
        )
        .prop_map(RealTimeEvent::Exception),
    ]
}

fn frame_reply() -> impl Strategy<Value = Reply> {
    let meter_poll = proptest::sample::select(MeterPoll::ALL.to_vec()).prop_flat_map(|poll| {
        let (count, width) = poll.layout();
        proptest::collection::vec(bcd(2 * width as u32), count)
            .prop_map(move |values| Reply::Meter { poll, values })
    });
    prop_oneof![
        real_time_event().prop_map(Reply::Event),
        any::<u16>().prop_map(Reply::RomSignature),
        proptest::collection::vec(bcd(8), 6).prop_map(|v| Reply::Meters10To15(Meters10To15 {
            cancelled_credits: v[0],
            coin_in: v[1],
            coin_out: v[2],
            drop: v[3],
            jackpot: v[4],
            games_played: v[5],
        })),
        meter_poll,
        bcd(8).prop_map(Reply::CurrentCredits),
        (any::<u8>(), any::<u8>(), bcd(10), bcd(4), any::<u8>()).prop_map(|(g, l, amt, pp, id)| {
            Reply::HandpayInfo(HandpayInfo {
                progressive_group: g,
                level: l,
                amount: amt,
                partial_pay: pp,
                reset_id: id,
            })
        }),
        proptest::collection::vec(bcd(8), 8).prop_map(|v| Reply::Meters(BasicMeters {
            coin_in: v[0],
            coin_out: v[1],
            drop: v[2],
            jackpot: v[3],
            games_played: v[4],
            games_won: v[5],
            slot_door_opened: v[6],
            power_resets: v[7],
        })),
        (
            any::<[u8; 2]>(),
            any::<[u8; 3]>(),
            any::<[u8; 3]>(),
            any::<u16>(),
            any::<[u8; 6]>(),
            any::<[u8; 4]>()
        )
            .prop_map(
                |(game_id, additional_id, b, game_options, paytable_id, base_percentage)| {
                    Reply::MachineInfo(MachineInfo {
                        game_id,
                        additional_id,
                        denomination: b[0],
                        max_bet: b[1],
                        progressive_group: b[2],
                        game_options,
                        paytable_id,
                        base_percentage,
                    })
                }
            ),
        (bcd(4), proptest::collection::vec((any::<u8>(), any::<u32>()), 0..10)).prop_map(
            |(game, raw)| Reply::SelectedMeters(SelectedMeters {
                game: game as u16,
                meters: raw
                    .into_iter()
                    .map(|(code, v)| {
                        let digits = 2 * MeterCode(code.into()).lp2f_value_len() as u32;
                        (code, u64::from(v) % 10u64.pow(digits))
                    })
                    .collect(),
            })
        ),
        (bcd(2), bcd(2), bcd(8)).prop_map(|(c, d, n)| Reply::LastBill(LastBill {
            country: c as u8,
            denomination_code: d as u8,
            count: n,
        })),
        (any::<[u8; 3]>(), proptest::collection::vec(any::<u8>(), 0..=40)).prop_map(
            |(version, serial)| Reply::VersionAndSerial(VersionAndSerial { version, serial })
        ),
        (
            any::<bool>(),
            bcd(4),
            proptest::collection::vec((any::<u16>(), 1u8..=9, any::<u64>()), 0..12)
        )
            .prop_map(|(alternate, game, raw)| Reply::ExtendedMeters(ExtendedMeters {
                alternate,
                game: game as u16,
                meters: raw
                    .into_iter()
                    .map(|(code, size, v)| ExtendedMeter {
                        code: MeterCode(code),
                        size,
                        value: v % 10u64.pow(2 * u32::from(size)),
                    })
                    .collect(),
            })),
        ticket().prop_map(Reply::TicketValidationData),
        ticket().prop_map(Reply::TicketRedemption),
        date_time().prop_map(Reply::DateTime),
    ]
}

proptest! {
    #[test]
    fn every_long_poll_round_trips(address in address(), poll in long_poll()) {
        let bytes = poll.encode(address.get()).unwrap();
        prop_assert_eq!(HostMessage::decode(&bytes).unwrap(), HostMessage::LongPoll(address, poll));
    }

    #[test]
    fn every_broadcast_round_trips(poll in long_poll()) {
        let bytes = poll.encode(0).unwrap();
        prop_assert_eq!(HostMessage::decode(&bytes).unwrap(), HostMessage::Broadcast(poll));
    }

    #[test]
    fn every_reply_frame_round_trips(address in address(), reply in frame_reply()) {
        let bytes = reply.encode(address).unwrap();
        prop_assert_eq!(Reply::decode_frame(address, &bytes).unwrap(), reply);
    }

    #[test]
    fn every_reply_frame_is_found_by_the_codec(
        address in address(),
        reply in frame_reply(),
        noise in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        use firmware_protocols::sas::codec::{Expect, ReplyDecoder};
        let bytes = reply.encode(address).unwrap();
        let expect = match &reply {
            Reply::Event(_) | Reply::RomSignature(_) => Expect::GeneralPoll,
            _ => Expect::Data { command: bytes[1] },
        };
        // Noise that cannot be taken for an answer by itself, then the frame.
        let noise: Vec<u8> = noise.into_iter().filter(|&b| b != address.get() && b != address.get() | 0x80).collect();
        let mut decoder = ReplyDecoder::new(address, expect, true);
        for &b in noise.iter().chain(&bytes) {
            decoder.push(b);
        }
        prop_assert_eq!(decoder.decode(true), Ok(Some(reply)));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(address in address(), bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Reply::decode_frame(address, &bytes);
        let _ = HostMessage::decode(&bytes);
    }
}

/// R22: LP72 exists here only as an interrogation. Its encoding is `addr 72 02 FF index crc`
/// (sas-protocol.md §3.3 vector `01 72 02 FF 00 0F 22`), and no other transfer code decodes
/// into a poll: a transfer request, a partial transfer or a cancel has no `LongPoll` value, so
/// nothing can queue, encode or send one.
#[test]
fn lp72_is_only_ever_an_interrogation() {
    let poll = LongPoll::AftInterrogate { index: 0 };
    assert_eq!(poll.encode(1).unwrap(), [0x01, 0x72, 0x02, 0xFF, 0x00, 0x0F, 0x22]);
    assert!(!poll.moves_money());
    for index in 0..=u8::MAX {
        let bytes = LongPoll::AftInterrogate { index }.encode(1).unwrap();
        assert_eq!(bytes[..5], [0x01, 0x72, 0x02, 0xFF, index]);
        assert_eq!(LongPoll::decode(&bytes).unwrap(), LongPoll::AftInterrogate { index });
    }
    for code in (0..=u8::MAX).filter(|c| *c != 0xFF) {
        let mut short = vec![0x01, 0x72, 0x02, code, 0x00];
        append_crc(&mut short);
        assert!(HostMessage::decode(&short).is_err(), "transfer code {code:02X}");
        // A whole transfer request: type 00, 25.00 cashable, asset, no registration key, ID "1".
        let mut body = vec![code, 0x00, 0x00, 0x00, 0x00, 0x00, 0x25, 0x00];
        body.extend_from_slice(&[0; 10]);
        body.extend_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x00]);
        body.extend_from_slice(&[0; 20]);
        body.extend_from_slice(&[0x01, b'1', 0, 0, 0, 0, 0, 0, 0]);
        let mut request = vec![0x01, 0x72, body.len() as u8];
        request.extend_from_slice(&body);
        append_crc(&mut request);
        assert!(HostMessage::decode(&request).is_err(), "transfer code {code:02X}");
    }
}

#[test]
fn lp72_lp85_lp90_answers_round_trip() {
    let status = AftTransferStatus {
        position: 0,
        status: 0x00,
        receipt_status: 0xFF,
        transfer_type: 0x80,
        cashable: 12_345,
        restricted: 0,
        non_restricted: 500,
        flags: 0,
        asset_number: 0x0102_0304,
        transaction_id: b"TX-42".to_vec(),
        completed: Some(march_15_2024()),
    };
    for reply in [
        Reply::AftTransfer(status.clone()),
        Reply::AftTransfer(AftTransferStatus { status: 0xFF, ..Default::default() }),
        Reply::ProgressiveWin(ProgressiveWin { group: 3, level: 0x20, amount: 1_000_000 }),
        Reply::ProgressiveWins(ProgressiveWins {
            group: 3,
            levels: vec![(0x01, 12_345), (0x20, 9_999_999_999)],
        }),
        Reply::ProgressiveWins(ProgressiveWins { group: 0, levels: Vec::new() }),
        Reply::LegacyBonusWin(LegacyBonusWin {
            multiplier: 0,
            multiplied_win: 0,
            tax_status: 1,
            bonus: 250,
        }),
    ] {
        let frame = reply.encode(a(1)).unwrap();
        assert_eq!(Reply::decode_frame(a(1), &frame).unwrap(), reply);
        let len = Reply::data_reply_len(frame[1], &frame);
        assert_eq!(len, Some(ReplyLen::Fixed(frame.len())));
    }
    // The short form a machine with no transfer to report may send: position and status.
    let mut short = vec![0x01, 0x72, 0x02, 0x00, 0xFF];
    append_crc(&mut short);
    let Reply::AftTransfer(decoded) = Reply::decode_frame(a(1), &short).unwrap() else {
        unreachable!()
    };
    assert_eq!((decoded.status, decoded.is_complete()), (0xFF, false));
    assert!(status.is_complete());
}

#[test]
fn lp51_number_of_games_and_lp53_game_configuration() {
    // LP51 is type R: `addr 51`, no CRC; the reply is the count in 2 BCD bytes.
    let poll = LongPoll::SendNumberOfGames;
    assert_eq!(poll.encode(1).unwrap(), [0x01, 0x51]);
    assert_eq!(HostMessage::decode(&[0x01, 0x51]).unwrap(), HostMessage::LongPoll(a(1), poll));
    let frame = Reply::NumberOfGames(12).encode(a(1)).unwrap();
    assert_eq!((frame[..4].to_vec(), frame.len()), (vec![0x01, 0x51, 0x00, 0x12], 6));
    assert_eq!(Reply::decode_frame(a(1), &frame).unwrap(), Reply::NumberOfGames(12));
    // LP53 is type M: `addr 53 game(2 BCD) crc`; the reply is the game number and LP1F's fields.
    let poll = LongPoll::SendGameConfiguration { game: 12 };
    let bytes = poll.encode(1).unwrap();
    assert_eq!((bytes[..4].to_vec(), bytes.len()), (vec![0x01, 0x53, 0x00, 0x12], 6));
    assert_eq!(HostMessage::decode(&bytes).unwrap(), HostMessage::LongPoll(a(1), poll));
    let info = MachineInfo {
        game_id: *b"AT",
        additional_id: *b"123",
        denomination: 0x02,
        max_bet: 10,
        progressive_group: 0,
        game_options: 0,
        paytable_id: *b"PT0012",
        base_percentage: *b"9600",
    };
    let reply = Reply::GameConfiguration { game: 12, info };
    let frame = reply.encode(a(1)).unwrap();
    assert_eq!(frame.len(), 2 + 2 + 20 + 2);
    assert_eq!(frame[..9], [0x01, 0x53, 0x00, 0x12, b'A', b'T', b'1', b'2', b'3']);
    assert_eq!(frame[9], 0x02, "the game's denomination");
    assert_eq!(Reply::decode_frame(a(1), &frame).unwrap(), reply);
    for (command, frame) in [(0x51, vec![0x01, 0x51]), (0x53, vec![0x01, 0x53])] {
        let expected = if command == 0x51 { 6 } else { 26 };
        assert_eq!(Reply::data_reply_len(command, &frame), Some(ReplyLen::Fixed(expected)));
    }
    assert!(!LongPoll::SendNumberOfGames.moves_money());
    assert!(!LongPoll::SendGameConfiguration { game: 1 }.moves_money());
}
