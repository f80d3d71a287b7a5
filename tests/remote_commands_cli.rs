//! Remote commands from the technician's CLI end to end (issue 10): the real daemon polling
//! the real simulator, `slotgate machine disable|enable` and `slotgate commands` through the
//! admin socket, the command signed with the local technician key from a real key file. A
//! disabled machine is power-cycled while the gateway is SIGKILLed: after the restart the
//! machine is disabled again (LP 01 re-asserted, no game starts after it), and the audit trail
//! in the journal shows the command executed exactly once.

// Real processes and peers in real time (tests/common): std clocks and sleeps are theirs.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{
    BIN, journal_events, read_json_lines, run_gateway, simulate, slotgate, wait_until, write_config,
};
use serde_json::Value;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `slotgate commands show ID --json`, or null while the daemon does not answer.
fn command(config: &Path, id: &str) -> Value {
    let out = slotgate(&["commands", "show", id, "--json"], config);
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Gives a command through the CLI; its id.
fn give(config: &Path, action: &str, machine: &str, reason: &str) -> String {
    let out = slotgate(&["machine", action, machine, "--reason", reason, "--json"], config);
    assert!(out.status.success(), "{action}: {}", text(&out));
    let outcome: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcome["outcome"], "accepted", "{outcome}");
    outcome["command_id"].as_str().unwrap().to_owned()
}

/// Ledger positions (index into the ledger) of records of the one machine.
fn position(ledger: &[Value], from: usize, what: impl Fn(&Value) -> bool) -> Option<usize> {
    ledger.iter().enumerate().skip(from).find(|(_, r)| what(r)).map(|(i, _)| i)
}

fn game_start(r: &Value) -> bool {
    r["type"] == "exception" && r["code"] == 0x7E
}

fn host_command(name: &'static str) -> impl Fn(&Value) -> bool {
    move |r: &Value| r["type"] == "command" && r["name"] == name
}

/// The `remote_command` audit states journalled for command `id`, in order.
fn audit_states(journal: &Path, id: &str) -> Vec<String> {
    journal_events(journal)
        .iter()
        .filter(|e| e["kind"] == "remote_command" && e["data"]["command_id"] == id)
        .map(|e| e["data"]["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Creates the local technician key in `dir` and gives `config` a `[commands]` section with it
/// (and `settings`), trusted for `roles`; returns the configuration text without it.
fn with_local_key(dir: &Path, config: &Path, settings: &str, roles: &str) -> String {
    let keygen = Command::new(BIN)
        .args(["journal", "keygen", "--out"])
        .arg(dir.join("technician.key"))
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{}", text(&keygen));
    let plain = std::fs::read_to_string(config).unwrap();
    let section = format!(
        "\n[commands]\nlocal_key = \"technician.key\"\n{settings}\n[[commands.keys]]\n\
         id = \"technician\"\npublic_key_file = \"technician.key.pub\"\nroles = {roles}\n"
    );
    std::fs::write(config, format!("{plain}{section}")).unwrap();
    let checked = Command::new(BIN).args(["config", "check"]).arg(config).output().unwrap();
    assert!(checked.status.success(), "{}", text(&checked));
    plain
}

/// Starts the gateway and waits until its admin socket answers.
fn answering_gateway(config: &Path, log: &Path) -> common::Proc {
    let gateway = run_gateway(config, log);
    wait_until("the daemon answers", Duration::from_secs(30), || {
        slotgate(&["machines"], config).status.success()
    });
    gateway
}

#[test]
fn a_cli_disable_survives_a_power_cycle_and_a_gateway_kill_and_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let (simulator, sims) = simulate(
        1,
        &ledger_path,
        &["--game-rate", "60", "--game-duration", "1s", "--power-off-duration", "2s"],
    );
    let config = write_config(dir.path(), &sims);
    with_local_key(dir.path(), &config, "confirm_window = \"2s\"", r#"["disable", "enable"]"#);
    let machine = format!("EGM-{}", sims[0].serial);
    let journal = dir.path().join("state/journal");
    let log = dir.path().join("gateway.log");
    let ledger = || read_json_lines(&ledger_path);

    let mut gateway = run_gateway(&config, &log);
    wait_until("the machine plays under the gateway", Duration::from_secs(60), || {
        ledger().iter().filter(|r| game_start(r)).count() >= 2
            && slotgate(&["machine", "show", &machine, "--json"], &config).status.success()
    });

    // What the CLI refuses, with its exit status.
    let unknown = slotgate(&["machine", "disable", "EGM-NOPE", "--reason", "test"], &config);
    assert_eq!(unknown.status.code(), Some(4), "{}", text(&unknown));
    let malformed = slotgate(&["machine", "disable", &machine, "--reason", ""], &config);
    assert_eq!(malformed.status.code(), Some(5), "{}", text(&malformed));
    assert!(text(&malformed).contains("rejected: malformed"), "{}", text(&malformed));
    let nothing = "00000000-0000-4000-8000-000000000000";
    assert_eq!(slotgate(&["commands", "show", nothing], &config).status.code(), Some(4));

    // Disable: sent, confirmed by the ACK, done once no game started in the confirm window.
    let disable = give(&config, "disable", &machine, "test: cabinet forced");
    wait_until("the disable is done", Duration::from_secs(30), || {
        command(&config, &disable)["state"] == "done"
    });
    let short = &disable[..8];
    let shown = text(&slotgate(&["machine", "show", &machine], &config));
    assert!(shown.contains(&format!("disabled (cmd {short})")), "{shown}");
    let status = text(&slotgate(&["status"], &config));
    assert!(status.contains(&format!("desired: disabled (cmd {short})")), "{status}");
    let listed = text(&slotgate(&["commands", "list", "--state", "done"], &config));
    assert!(listed.contains(&format!("{short} disable done")), "{listed}");
    let history = text(&slotgate(&["commands", "show", &disable], &config));
    for state in ["received", "verified", "sent", "confirmed", "done"] {
        assert!(history.contains(&format!(" {state} ")), "{state}: {history}");
    }

    // Power-cycle the machine and kill the gateway while the machine is off.
    let before = ledger().len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(simulator.0.id() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    wait_until("the machine lost power", Duration::from_secs(10), || {
        position(&ledger(), before, |r| r["type"] == "power" && r["state"] == "lost").is_some()
    });
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();
    let down = slotgate(&["commands", "list"], &config);
    assert_eq!(down.status.code(), Some(3), "{}", text(&down));
    wait_until("the machine has power again", Duration::from_secs(10), || {
        position(&ledger(), before, |r| r["type"] == "power" && r["state"] == "applied").is_some()
    });
    gateway = run_gateway(&config, &log);

    // Back disabled: LP 01 re-asserted after the power-up, and no game starts after it.
    let powered =
        position(&ledger(), before, |r| r["type"] == "power" && r["state"] == "applied").unwrap();
    wait_until("the shutdown is re-asserted", Duration::from_secs(30), || {
        position(&ledger(), powered, host_command("shutdown")).is_some()
            && audit_states(&journal, &disable).iter().any(|s| s == "reasserted")
    });
    let reasserted = position(&ledger(), powered, host_command("shutdown")).unwrap();
    // Ten mean game intervals: an enabled machine would start about ten games.
    std::thread::sleep(Duration::from_secs(10));
    let after = ledger();
    assert_eq!(
        position(&after, reasserted, game_start).map(|i| &after[i]),
        None,
        "a game started after the shutdown was re-asserted"
    );
    let states = audit_states(&journal, &disable);
    let count = |s: &str| states.iter().filter(|t| *t == s).count();
    for step in ["received", "verified", "sent", "confirmed", "done"] {
        assert_eq!(count(step), 1, "{step} in {states:?}");
    }
    assert!(count("reasserted") >= 1, "{states:?}");
    assert_eq!(states.len(), 5 + count("reasserted"), "{states:?}");
    let origin = journal_events(&journal)
        .into_iter()
        .find(|e| e["kind"] == "remote_command" && e["data"]["command_id"] == disable.as_str())
        .map(|e| e["data"]["origin"].clone());
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(origin, Some(Value::from(format!("admin uid={uid}"))));
    let shown = text(&slotgate(&["machine", "show", &machine], &config));
    assert!(shown.contains(&format!("disabled (cmd {short})")), "{shown}");

    // Enable restores play.
    let enable = give(&config, "enable", &machine, "test: cabinet repaired");
    wait_until("the enable is done", Duration::from_secs(30), || {
        command(&config, &enable)["state"] == "done"
    });
    let started = position(&ledger(), reasserted, host_command("startup")).unwrap();
    wait_until("a game starts again", Duration::from_secs(30), || {
        position(&ledger(), started, game_start).is_some()
    });
    let rows = text(&slotgate(&["machines"], &config));
    assert!(rows.contains(&format!("enabled (cmd {})", &enable[..8])), "{rows}");
    assert!(gateway.terminate().success());
    assert!(simulator.terminate().success());
}

/// The local key's roles decide like any key's: a technician key that may only disable has its
/// enable rejected (exit status 5, the reason printed, the refusal audited with the caller's
/// uid). A disable for a machine that is offline waits, and the machine has no desired state
/// until it is sent. Another uid is refused by the socket. Without a local key nothing can be
/// given.
#[test]
fn the_local_keys_roles_decide_and_a_waiting_command_sets_no_desired_state() {
    assert!(nix::unistd::geteuid().is_root(), "this test runs the client as another uid too");
    let dir = tempfile::tempdir().unwrap();
    // A machine nobody answers for: the port is bound and closed again.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let sim = common::Simulated {
        address: 1,
        serial: "OFF000".into(),
        endpoint: closed.to_string(),
        pty: false,
    };
    let config = write_config(dir.path(), &[sim]);
    let plain = with_local_key(dir.path(), &config, "", r#"["disable"]"#);
    let log = dir.path().join("gateway.log");
    let gateway = answering_gateway(&config, &log);

    let enable = slotgate(&["machine", "enable", "EGM-OFF000", "--reason", "test"], &config);
    assert_eq!(enable.status.code(), Some(5), "{}", text(&enable));
    assert!(text(&enable).contains("rejected: role_not_allowed"), "{}", text(&enable));
    let disable = give(&config, "disable", "EGM-OFF000", "test: offline machine");
    assert_eq!(command(&config, &disable)["state"], "verified", "it waits for the machine");
    let waiting = text(&slotgate(&["commands", "list", "--state", "verified"], &config));
    assert!(waiting.contains(&format!("{} disable verified", &disable[..8])), "{waiting}");
    // Another uid, even with the socket's mode opened up, is refused (SO_PEERCRED) and gives
    // nothing.
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let open = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    open(dir.path(), 0o755);
    open(&config, 0o644);
    open(&dir.path().join("admin.sock"), 0o666);
    let nobody = Command::new(BIN)
        .args(["machine", "disable", "EGM-OFF000", "--reason", "test", "--config"])
        .arg(&config)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(nobody.status.code(), Some(1), "{}", text(&nobody));
    assert!(text(&nobody).contains("uid 65534 may not use this socket"), "{}", text(&nobody));
    let all: Value =
        serde_json::from_slice(&slotgate(&["commands", "list", "--json"], &config).stdout).unwrap();
    // Only the disable: the refused enable was not authenticated for its action, so it is
    // audited but not stored under its id.
    assert_eq!(all["commands"].as_array().map(Vec::len), Some(1), "{all}");
    let status: Value =
        serde_json::from_slice(&slotgate(&["status", "--json"], &config).stdout).unwrap();
    assert_eq!(status["desired"], serde_json::json!({}), "nothing was sent: {status}");
    assert!(!text(&slotgate(&["machines"], &config)).contains("desired states"));
    let uid = nix::unistd::getuid().as_raw();
    let journal = dir.path().join("state/journal");
    wait_until("the refusal is in the audit trail", Duration::from_secs(10), || {
        journal_events(&journal).iter().any(|e| {
            e["kind"] == "remote_command"
                && e["data"]["state"] == "rejected"
                && e["data"]["reason"] == "role_not_allowed"
                && e["data"]["origin"] == format!("admin uid={uid}").as_str()
        })
    });
    assert!(gateway.terminate().success());

    // Without a local key, nothing is signed.
    std::fs::write(&config, plain).unwrap();
    let gateway = answering_gateway(&config, &log);
    let refused = slotgate(&["machine", "disable", "EGM-OFF000", "--reason", "test"], &config);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    assert!(text(&refused).contains("no local technician key"), "{}", text(&refused));
    // The command given before the restart still waits, and is still listed.
    let listed = text(&slotgate(&["commands", "list"], &config));
    assert!(listed.contains(&disable[..8]), "{listed}");
    assert!(gateway.terminate().success());
}
