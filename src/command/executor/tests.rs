#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::CommandSettings;

fn settings(policy: OfflinePolicy) -> CommandSettings {
    CommandSettings {
        keys: Vec::new(),
        max_clock_skew: std::time::Duration::from_secs(60),
        bulk_threshold: 10,
        bulk_signatures: 2,
        offline_policy: policy,
        confirm_window: std::time::Duration::from_secs(60),
        local_key: None,
    }
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn record(id: u128, action: Action, issued: i64, expires: i64, targets: &[&str]) -> CommandRecord {
    CommandRecord {
        id: Uuid::from_u128(id),
        action,
        reason: "r".into(),
        issued_at: t(issued),
        not_before: t(issued),
        expires_at: t(expires),
        origin: "test".into(),
        signers: vec!["k".into()],
        envelope: String::new(),
        state: State::Verified,
        targets: targets.iter().map(|m| ((*m).to_owned(), State::Verified)).collect(),
        history: Vec::new(),
    }
}

fn executor(policy: OfflinePolicy) -> Executor {
    Executor::new(&settings(policy), ["M1".to_owned(), "M2".to_owned()], Vec::new(), &[])
}

/// The steps and sends, compactly: ("sent", id) / ("send", control).
fn summary(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| match o {
            Output::Step(s) => format!("{}:{}:{}", s.machine, s.command.as_u128(), s.to.name()),
            Output::Send { machine, control, reassert, .. } => {
                format!(
                    "{machine}:{control:?}{}",
                    reassert.map(|r| format!("({})", r.name())).unwrap_or_default()
                )
            }
        })
        .collect()
}

#[test]
fn a_command_for_an_online_machine_is_sent_confirmed_and_done_after_the_window() {
    let mut e = executor(OfflinePolicy::Queue);
    assert!(e.observe(t(0), "M1", Observation::LinkUp).is_empty());
    let out = e.submit(t(1), &record(1, Action::Disable, 0, 600, &["M1"]));
    assert_eq!(summary(&out), ["M1:1:sent", "M1:Shutdown"]);
    assert_eq!(e.desired("M1").unwrap().action, Action::Disable);
    let out = e.observe(t(2), "M1", Observation::Acknowledged(RemoteControl::Shutdown));
    assert_eq!(summary(&out), ["M1:1:confirmed"]);
    // The game in progress ends: expected.
    assert!(e.observe(t(10), "M1", Observation::GameEnded).is_empty());
    assert_eq!(e.next_deadline(), Some(t(62)));
    assert!(e.tick(t(61)).is_empty());
    assert_eq!(summary(&e.tick(t(62))), ["M1:1:done"]);
    assert_eq!(e.next_deadline(), None);
}

#[test]
fn a_game_started_after_the_shutdown_fails_the_command_and_reasserts_it() {
    let mut e = executor(OfflinePolicy::Queue);
    e.observe(t(0), "M1", Observation::LinkUp);
    e.submit(t(1), &record(1, Action::Disable, 0, 600, &["M1"]));
    // Before the ACK a game start is the game in progress.
    assert!(e.observe(t(1), "M1", Observation::GameStarted).is_empty());
    e.observe(t(2), "M1", Observation::Acknowledged(RemoteControl::Shutdown));
    let out = e.observe(t(5), "M1", Observation::GameStarted);
    assert_eq!(summary(&out), ["M1:1:failed", "M1:Shutdown(game_started)"]);
}

#[test]
fn the_desired_state_is_reasserted_until_an_enable_arrives() {
    let mut e = executor(OfflinePolicy::Queue);
    e.observe(t(0), "M1", Observation::LinkUp);
    e.submit(t(1), &record(1, Action::Disable, 0, 600, &["M1"]));
    e.observe(t(2), "M1", Observation::Acknowledged(RemoteControl::Shutdown));
    assert_eq!(summary(&e.observe(t(3), "M1", Observation::PowerUp)), ["M1:Shutdown(power_cycle)"]);
    assert_eq!(summary(&e.observe(t(4), "M1", Observation::RamClear)), ["M1:Shutdown(ram_clear)"]);
    assert!(e.observe(t(5), "M1", Observation::LinkDown).is_empty());
    assert!(e.observe(t(6), "M1", Observation::PowerUp).is_empty(), "offline: nothing to send to");
    assert_eq!(summary(&e.observe(t(7), "M1", Observation::LinkUp)), ["M1:Shutdown(link_up)"]);
    let out = e.submit(t(8), &record(2, Action::Enable, 8, 600, &["M1"]));
    assert_eq!(summary(&out), ["M1:1:done", "M1:2:sent", "M1:Startup"], "1 was acknowledged");
    assert_eq!(
        summary(&e.observe(t(9), "M1", Observation::Acknowledged(RemoteControl::Startup))),
        ["M1:2:confirmed", "M1:2:done"]
    );
    assert_eq!(summary(&e.observe(t(10), "M1", Observation::PowerUp)), ["M1:Startup(power_cycle)"]);
    // An older command never overrides the newer one.
    let out = e.submit(t(11), &record(3, Action::Disable, 5, 600, &["M1"]));
    assert_eq!(summary(&out), ["M1:3:failed"]);
}

#[test]
fn a_queued_command_runs_at_link_up_unless_it_expired_meanwhile() {
    let mut e = executor(OfflinePolicy::Queue);
    let out = e.submit(t(0), &record(1, Action::Disable, 0, 100, &["M1", "M2"]));
    assert!(out.is_empty(), "both offline: queued");
    assert_eq!(summary(&e.observe(t(50), "M1", Observation::LinkUp)), ["M1:1:sent", "M1:Shutdown"]);
    assert_eq!(e.next_deadline(), Some(t(100)));
    assert_eq!(summary(&e.tick(t(100))), ["M2:1:expired"]);
    assert!(e.observe(t(101), "M2", Observation::LinkUp).is_empty(), "never executed");
    assert_eq!(e.desired("M2"), None);
}

#[test]
fn an_expired_queued_command_found_at_link_up_is_not_sent() {
    let mut e = executor(OfflinePolicy::Queue);
    e.submit(t(0), &record(1, Action::Disable, 0, 100, &["M1"]));
    // No tick ran (the gateway was busy or restarting): the link-up still checks.
    assert_eq!(summary(&e.observe(t(200), "M1", Observation::LinkUp)), ["M1:1:expired"]);
}

#[test]
fn the_reject_policy_rejects_commands_for_offline_machines() {
    let mut e = executor(OfflinePolicy::Reject);
    e.observe(t(0), "M2", Observation::LinkUp);
    let out = e.submit(t(0), &record(1, Action::Disable, 0, 100, &["M1", "M2"]));
    assert_eq!(summary(&out), ["M1:1:rejected", "M2:1:sent", "M2:Shutdown"]);
    let Output::Step(step) = &out[0] else { panic!() };
    assert_eq!(step.reason.unwrap().name(), "machine_offline");
}

#[test]
fn after_a_restart_the_desired_state_is_reasserted_and_a_sent_command_confirmed_by_the_ack() {
    let mut sent = record(1, Action::Disable, 0, 600, &["M1"]);
    sent.targets[0].1 = State::Sent;
    let desired =
        DesiredState { action: Action::Disable, command_id: sent.id, issued_at: t(0), since: t(1) };
    let mut e = Executor::new(
        &settings(OfflinePolicy::Queue),
        ["M1".to_owned()],
        vec![("M1".into(), desired)],
        &[sent],
    );
    assert_eq!(
        summary(&e.observe(t(100), "M1", Observation::LinkUp)),
        ["M1:Shutdown(gateway_restart)"]
    );
    assert_eq!(
        summary(&e.observe(t(101), "M1", Observation::Acknowledged(RemoteControl::Shutdown))),
        ["M1:1:confirmed"]
    );
    assert!(e.observe(t(102), "M1", Observation::LinkDown).is_empty());
    assert_eq!(summary(&e.observe(t(103), "M1", Observation::LinkUp)), ["M1:Shutdown(link_up)"]);
}

#[test]
fn a_failed_poll_fails_the_command_and_keeps_the_desired_state() {
    let mut e = executor(OfflinePolicy::Queue);
    e.observe(t(0), "M1", Observation::LinkUp);
    e.submit(t(1), &record(1, Action::Disable, 0, 600, &["M1"]));
    assert!(e.observe(t(2), "M1", Observation::PollFailed(RemoteControl::Startup)).is_empty());
    assert_eq!(
        summary(&e.observe(t(2), "M1", Observation::PollFailed(RemoteControl::Shutdown))),
        ["M1:1:failed"]
    );
    assert_eq!(e.desired("M1").unwrap().action, Action::Disable);
    // A command not yet acknowledged when a newer one is sent is superseded.
    let out = e.submit(t(3), &record(2, Action::Enable, 3, 600, &["M1"]));
    let out2 = e.submit(t(4), &record(3, Action::Disable, 4, 600, &["M1"]));
    assert_eq!(summary(&out), ["M1:2:sent", "M1:Startup"]);
    assert_eq!(summary(&out2), ["M1:2:failed", "M1:3:sent", "M1:Shutdown"]);
}
