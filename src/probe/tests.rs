//! The probe's script against machines written as functions of the message they receive.

use firmware_protocols::profile::BUILT_IN;
use firmware_protocols::sas::Exception;
use firmware_protocols::sas::message::RealTimeEvent;
use firmware_protocols::{FirmwareProfile, sas::message::LongPoll};

use super::*;

fn plan(address: u8) -> Plan {
    let profile = FirmwareProfile::from_toml_str(BUILT_IN[0].0, BUILT_IN[0].1).unwrap();
    Plan {
        address: Address::new(address).unwrap(),
        timing: profile.timing,
        rounds: 3,
        first_listen: FIRST_LISTEN,
    }
}

/// Every message the probe sent and when, and when it ended.
struct Run {
    sent: Vec<(Duration, Vec<u8>)>,
    ended: Duration,
}

/// Runs the probe to its end; `machine` answers each message (its bytes) with characters that
/// arrive 1 ms later.
fn run(probe: &mut Probe, start: Instant, mut machine: impl FnMut(&[u8]) -> Vec<Character>) -> Run {
    let mut now = start;
    let mut sent = Vec::new();
    for _ in 0..10_000 {
        while let Some(characters) = probe.poll_transmit(now) {
            assert!(characters[0].wakeup && characters[1..].iter().all(|c| !c.wakeup));
            let bytes: Vec<u8> = characters.iter().map(|c| c.byte).collect();
            probe.sent(now);
            let reply = machine(&bytes);
            sent.push((now - start, bytes));
            if !reply.is_empty() {
                now += Duration::from_millis(1);
                probe.handle_input(now, &reply);
            }
        }
        let Some(at) = probe.poll_timeout() else { return Run { sent, ended: now - start } };
        now = now.max(at);
        probe.handle_timeout(now);
    }
    panic!("the probe never finished");
}

fn chars(bytes: &[u8]) -> Vec<Character> {
    bytes.iter().map(|&byte| Character { byte, wakeup: false }).collect()
}

fn info() -> MachineInfo {
    MachineInfo {
        game_id: *b"AT",
        additional_id: *b"001",
        denomination: 1,
        max_bet: 10,
        progressive_group: 0,
        game_options: 0,
        paytable_id: *b"PT0001",
        base_percentage: *b"9600",
    }
}

/// A healthy machine at address 1 with nothing to report.
fn healthy(bytes: &[u8]) -> Vec<Character> {
    let address = Address::new(1).unwrap();
    let reply = match bytes {
        [0x80] => return Vec::new(),
        [0x81] => return chars(&[0x00]),
        [1, 0x54] => {
            Reply::VersionAndSerial(VersionAndSerial { version: *b"602", serial: b"SN42".to_vec() })
        }
        [1, 0x1F] => Reply::MachineInfo(info()),
        [1, 0x1C] => Reply::Meters(BasicMeters { coin_in: 500, ..Default::default() }),
        other => panic!("the probe sent {other:02X?}"),
    };
    chars(&reply.encode(address).unwrap())
}

#[test]
fn a_healthy_machine_is_read_and_gets_the_answers_verdict() {
    let start = Instant::now();
    let mut probe = Probe::new(&plan(1), start);
    let Run { sent, .. } = run(&mut probe, start, healthy);
    let bytes: Vec<&[u8]> = sent.iter().map(|(_, b)| b.as_slice()).collect();
    let expected: [&[u8]; 10] = [
        &[0x80],
        &[1, 0x54],
        &[1, 0x1F],
        &[1, 0x1C],
        &[0x80],
        &[0x81],
        &[0x80],
        &[0x81],
        &[0x80],
        &[0x81],
    ];
    assert_eq!(bytes, expected);
    // Silence first, then polls to the machine at least 200 ms apart (§4.1).
    assert_eq!(sent[0].0, FIRST_LISTEN);
    let to_machine: Vec<Duration> =
        sent.iter().filter(|(_, b)| b != &[0x80]).map(|(t, _)| *t).collect();
    assert!(to_machine.windows(2).all(|w| w[1] - w[0] >= Duration::from_millis(200)));
    let findings = probe.findings();
    assert_eq!(
        findings.version,
        Some(Version { sas_version: "6.02".into(), serial: "SN42".into() })
    );
    assert_eq!(findings.game.as_ref().map(|g| g.base_percentage.as_str()), Some("96.00"));
    assert_eq!(findings.meters.as_ref().map(|m| m.coin_in), Some(500));
    assert_eq!(
        findings.general_polls,
        GeneralPolls { sent: 3, answered: 3, last_answer: Some("NoActivity".into()) }
    );
    assert_eq!(findings.counters.answers, 6);
    let times = findings.reply_ms.unwrap();
    assert_eq!((times.min, times.median, times.max, times.samples), (1.0, 1.0, 1.0, 6));
    let verdict = verdict(1, &findings, true);
    assert_eq!(verdict.outcome, VerdictKind::Answers);
    assert_eq!(verdict.text, "machine at address 1 answers: SAS 6.02, game ID AT, 0 CRC errors");
}

#[test]
fn the_probe_sends_only_reads() {
    for read in READS {
        assert!(!read.long_poll().moves_money(), "{read:?}");
    }
    assert_eq!(
        READS.map(|r| r.long_poll()),
        [LongPoll::SendVersionAndSerial, LongPoll::SendMachineInfo, LongPoll::SendMeters]
    );
}

#[test]
fn a_reported_exception_is_nacked_out_and_nothing_acknowledges_it() {
    let start = Instant::now();
    let mut probe = Probe::new(&plan(1), start);
    // Door open (11) is queued: every general poll that gets an answer offers it. MON answers
    // the third identical poll (the final NACK) with silence.
    let mut general_polls = 0;
    let Run { sent, .. } = run(&mut probe, start, |bytes| match bytes {
        [0x81] => {
            general_polls += 1;
            if general_polls < 3 { chars(&[0x11]) } else { Vec::new() }
        }
        other => healthy(other),
    });
    let bytes: Vec<&[u8]> = sent.iter().map(|(_, b)| b.as_slice()).collect();
    // After the report: the same general poll twice more, then nothing at all (an `80` or any
    // other poll would be the implied ACK).
    let tail: [&[u8]; 4] = [&[0x80], &[0x81], &[0x81], &[0x81]];
    assert_eq!(&bytes[4..], tail);
    let findings = probe.findings();
    assert_eq!(findings.report_left_queued.as_deref(), Some("exception 11 (SlotDoorOpened)"));
    assert_eq!(findings.counters.no_answers, 0, "the final NACK's silence is expected");
    let verdict = verdict(1, &findings, true);
    assert_eq!(verdict.outcome, VerdictKind::Answers);
    assert!(verdict.text.ends_with("; events left queued"), "{}", verdict.text);
}

#[test]
fn a_machine_that_answers_even_the_final_nack_gets_a_loop_break_of_silence() {
    let start = Instant::now();
    let mut probe = Probe::new(&plan(1), start);
    let Run { sent, ended } = run(&mut probe, start, |bytes| match bytes {
        [0x81] => chars(&[0x11]),
        other => healthy(other),
    });
    let bytes: Vec<&[u8]> = sent.iter().map(|(_, b)| b.as_slice()).collect();
    let tail: [&[u8]; 4] = [&[0x80], &[0x81], &[0x81], &[0x81]];
    assert_eq!(&bytes[4..], tail, "nothing after the final NACK");
    // The probe ends a loop break after its last transmission, not at once.
    let (last, _) = sent.last().unwrap();
    assert!(ended - *last >= LOOP_BREAK, "{:?}", ended - *last);
}

#[test]
fn an_rte_event_overriding_a_read_is_nacked_out_too() {
    let start = Instant::now();
    let mut probe = Probe::new(&plan(1), start);
    let address = Address::new(1).unwrap();
    let event = Reply::Event(RealTimeEvent::Exception(Exception::from_code(0x11)));
    let frame = chars(&event.encode(address).unwrap());
    let Run { sent, .. } = run(&mut probe, start, |bytes| match bytes {
        [1, 0x54] => frame.clone(),
        other => healthy(other),
    });
    let bytes: Vec<&[u8]> = sent.iter().map(|(_, b)| b.as_slice()).collect();
    let expected: [&[u8]; 4] = [&[0x80], &[1, 0x54], &[1, 0x54], &[1, 0x54]];
    assert_eq!(bytes, expected);
    let findings = probe.findings();
    assert_eq!(findings.failed_reads, ["LP 54: overridden by a pending event"]);
    assert!(findings.report_left_queued.is_some());
}

#[test]
fn no_answer_listens_for_a_loop_break_and_names_the_chirping_address() {
    let start = Instant::now();
    let mut probe = Probe::new(&plan(1), start);
    let Run { sent, .. } = run(&mut probe, start, |_| Vec::new());
    // Only LP 54 of the reads was tried: with nothing answering, the general polls say more.
    let reads = sent.iter().filter(|(_, b)| b.len() == 2).count();
    assert_eq!(reads, 3, "LP 54 three times");
    assert!(probe.is_done());
    let findings = probe.findings();
    assert_eq!(findings.general_polls.sent, 3);
    assert_eq!(findings.counters.no_answers, 3 * 3 + 3);

    // The same with a machine at address 3 that starts chirping 5 s after the last poll.
    let mut probe = Probe::new(&plan(1), start);
    let mut polled_until = start;
    let mut now = start;
    loop {
        while let Some(_chars) = probe.poll_transmit(now) {
            probe.sent(now);
            polled_until = now;
        }
        let Some(at) = probe.poll_timeout() else { break };
        let chirp = polled_until + LOOP_BREAK;
        if at > chirp && now < chirp && probe.findings().chirps_from.is_empty() {
            now = chirp;
            probe.handle_input(now, &[Character { byte: 3, wakeup: true }]);
            continue;
        }
        now = now.max(at);
        probe.handle_timeout(now);
    }
    // The listen ended soon after the chirp instead of running its full length.
    assert!(now - polled_until < LOOP_BREAK + CHIRP_INTERVAL * 2, "{:?}", now - polled_until);
    let findings = probe.findings();
    assert_eq!(findings.chirps_from, BTreeSet::from([3]));
    let verdict = verdict(1, &findings, true);
    assert_eq!(verdict.outcome, VerdictKind::NoAnswer);
    assert_eq!(
        verdict.text,
        "no answer at address 1: check cable and address; the line carries chirps from address 3"
    );
}

#[test]
fn corrupt_answers_are_counted_and_retried_and_name_the_wiring() {
    let start = Instant::now();
    let mut probe = Probe::new(&plan(1), start);
    let mut first = true;
    run(&mut probe, start, |bytes| {
        let mut reply = healthy(bytes);
        // The first LP 54 answer has a bad CRC; its retry (an implied NACK) gets it right.
        if bytes == [1, 0x54]
            && std::mem::take(&mut first)
            && let Some(last) = reply.last_mut()
        {
            last.byte ^= 0xFF;
        }
        reply
    });
    let findings = probe.findings();
    assert_eq!((findings.counters.crc_errors, findings.counters.retries), (1, 1));
    assert!(findings.version.is_some(), "the retry was answered");
    let verdict = verdict(1, &findings, true);
    assert_eq!(verdict.outcome, VerdictKind::AnswersWithErrors);
    assert_eq!(
        verdict.text,
        "machine at address 1 answers with errors: SAS 6.02, game ID AT, 1 CRC error, 0 other; \
         check cable, baud rate and 9th-bit wiring"
    );
}

#[test]
fn the_human_report_fits_100_columns() {
    let start = Instant::now();
    let mut probe = Probe::new(&plan(1), start);
    run(&mut probe, start, healthy);
    let findings = probe.findings();
    let report = Report {
        line: "line-0".into(),
        address: 1,
        transport: "serial /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0".into(),
        wakeup: Wakeup {
            method: crate::transport::WakeupMethod::OddEvenSwitching.to_string(),
            sees_chirps: true,
            fallback: Some("the driver did not keep CMSPAR".into()),
        },
        daemon: "released",
        first_listen_ms: 450,
        verdict: Verdict {
            outcome: VerdictKind::AnswersWithErrors,
            text: format!(
                "{} and then some more words{}",
                verdict(1, &findings, true).text,
                " x".repeat(60)
            ),
        },
        findings,
    };
    let mut out = Vec::new();
    write_human(&mut out, &report).unwrap();
    let text = String::from_utf8(out).unwrap();
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "{} columns: {line}", line.chars().count());
    }
    assert!(text.contains("\nLP 54         SAS 6.02, serial SN42\n"), "{text}");
    assert!(text.contains("\nreply time    min 1.0 ms, median 1.0 ms, max 1.0 ms (6 answers)\n"));
    assert!(text.contains(
        "\nverdict: machine at address 1 answers: SAS 6.02, game ID AT, 0 CRC errors and"
    ));
    assert!(text.ends_with(" x x\n"), "{text}");
    assert!(text.lines().last().unwrap().starts_with("         x x"), "{text}");
}
