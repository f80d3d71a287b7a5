//! Helpers shared by the end-to-end test crates: the real `slotgate` binary as simulator and
//! gateway, configurations for them, and reading the journal and the simulator's ledger back.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_slotgate");

/// A child process that is killed if the test fails before stopping it.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Polls `done` every 200 ms until it holds; fails the test naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One simulated machine as `slotgate simulate` announces it.
#[derive(Debug, Clone)]
pub struct Simulated {
    pub address: u8,
    pub serial: String,
    /// `127.0.0.1:PORT` for TCP, the slave path for a pty.
    pub endpoint: String,
    pub pty: bool,
}

/// Starts `slotgate simulate` with `args` and reads the endpoint lines it prints.
pub fn simulate(machines: u16, ledger: &Path, args: &[&str]) -> (Proc, Vec<Simulated>) {
    let transport: &[&str] = if args.contains(&"--pty") { &[] } else { &["--tcp", "127.0.0.1:0"] };
    let mut child = Command::new(BIN)
        .arg("simulate")
        .args(["--machines", &machines.to_string()])
        .args(transport)
        .arg("--ledger")
        .arg(ledger)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let mut found = Vec::new();
    for line in BufReader::new(stdout).lines().take(usize::from(machines)) {
        let line = line.unwrap();
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key} in {line}"))
                .to_owned()
        };
        let pty = line.contains(" pty=");
        let endpoint = if pty { field("pty") } else { field("tcp") };
        found.push(Simulated {
            address: field("address").parse().unwrap(),
            serial: field("serial"),
            endpoint,
            pty,
        });
    }
    assert_eq!(found.len(), usize::from(machines));
    (proc, found)
}

/// A configuration with one TCP line per simulated machine; registry ids are `EGM-<serial>`.
/// Even-numbered machines have their denomination configured; odd ones learn it from LP1F.
pub fn write_config(dir: &Path, machines: &[Simulated]) -> PathBuf {
    let mut text = String::from(
        "[venue]\nid = \"UA-TEST-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [polling]\nmeter_snapshot_interval = \"10s\"\n\n\
         [admin]\nsocket = \"admin.sock\"\n\n\
         [storage]\ndir = \"state\"\n",
    );
    for (i, m) in machines.iter().enumerate() {
        let endpoint = if m.pty {
            // A pty has no 9th bit: the simulator frames by the 5 ms gap (firmware-protocols README).
            format!("kind = \"serial\"\ndevice = \"{}\"\nwakeup = \"none\"\n", m.endpoint)
        } else {
            format!("kind = \"tcp\"\naddress = \"{}\"\nconnect_timeout = \"1s\"\n", m.endpoint)
        };
        let denomination = if i % 2 == 0 { "  denomination = \"0.01\"\n" } else { "" };
        text.push_str(&format!(
            "\n[[line]]\nname = \"line-{i}\"\n{endpoint}\n  [[line.machine]]\n  address = {}\n  \
             registry_id = \"EGM-{}\"\n{denomination}",
            m.address, m.serial
        ));
    }
    let path = dir.join("slotgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The canonical events in the journal at `dir`, through `slotgate journal export` (which reads
/// a copy, so it works while the daemon runs; a copy caught mid-write reads as nothing yet).
pub fn journal_events(dir: &Path) -> Vec<Value> {
    let Ok(out) = Command::new(BIN).args(["journal", "export", "--dir"]).arg(dir).output() else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|mut r| r.get_mut("event").map(Value::take))
        .filter(|e| !e.is_null())
        .collect()
}

pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    // A line being written right now may be incomplete; it is read next time.
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// (bet, win) credits of each game, per machine serial.
pub type Games = BTreeMap<String, Vec<(u64, u64)>>;

/// (bet, win) credits per serial, from the ledger.
pub fn ledger_games(ledger: &[Value]) -> Games {
    let mut games: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for r in ledger.iter().filter(|r| r["type"] == "game") {
        let serial = r["serial"].as_str().unwrap().to_owned();
        games
            .entry(serial)
            .or_default()
            .push((r["bet"].as_u64().unwrap(), r["win"].as_u64().unwrap()));
    }
    games
}

/// (bet, win) credits per serial, from the gateway's events: each `bet_accepted` with the next
/// `game_ended` of the same machine. Amounts are checked against the 0.01 denomination; the
/// number of amounts that could not be priced (denomination not known yet) is returned per serial.
pub fn event_games(events: &[Value]) -> (Games, BTreeMap<String, usize>) {
    let mut games: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut unpriced: BTreeMap<String, usize> = BTreeMap::new();
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        let serial =
            e["machine"]["registry_id"].as_str().unwrap().trim_start_matches("EGM-").to_owned();
        let mut credits_of = |amount: &Value| {
            let credits = amount["credits"].as_u64().unwrap();
            assert_eq!(amount["currency"], "UAH");
            if amount["status"] == "exact" {
                assert_eq!(amount["minor_units"].as_u64(), Some(credits), "denomination 0.01: {e}");
            } else {
                assert_eq!(amount["status"], "denomination_unknown", "{e}");
                *unpriced.entry(serial.clone()).or_default() += 1;
            }
            credits
        };
        match e["kind"].as_str().unwrap() {
            "bet_accepted" => {
                assert_eq!(e["derived"], false, "RTE gives every bet: {e}");
                let bet = credits_of(&e["data"]["amount"]);
                assert!(open.insert(serial.clone(), bet).is_none(), "two bets without an end: {e}");
            }
            "game_ended" => {
                let win = credits_of(&e["data"]["win"]);
                let bet = open
                    .remove(&serial)
                    .unwrap_or_else(|| panic!("a game end without its bet: {e}"));
                games.entry(serial).or_default().push((bet, win));
            }
            _ => {}
        }
    }
    (games, unpriced)
}

/// Play at 0.05 a credit (cents and credits differ) with small bills.
pub const NICKEL_PLAY: [&str; 8] = [
    "--denomination",
    "2",
    "--bills",
    "1,5,10",
    "--bet",
    "1:1,5:1,25:1",
    "--win",
    "0:6,1:2,2:1,20:1",
];

/// The movements a mixed floor must show at least once (not only play): that it really mixed.
pub const FLOOR_MOVEMENTS: [&str; 8] = [
    "credits_in",
    "ticket_out",
    "ticket_in",
    "handpay",
    "handpay_receipt",
    "aft_transfer",
    "progressive_win",
    "bonus_award",
];

/// An AFT transfer's reference, `direction/transaction_id`: the same fields in a ledger record
/// and in an `aft_transfer` event's data.
pub fn aft_reference(transfer: &Value) -> String {
    format!(
        "{}/{}",
        transfer["direction"].as_str().unwrap(),
        transfer["transaction_id"].as_str().unwrap()
    )
}

/// What identifies a money event's instrument and its class, as the state system sees them: a
/// ticket's last 4 digits (the number must leave masked) and class, an AFT transfer's
/// [`aft_reference`] and class; nothing for other kinds.
pub fn event_reference(event: &Value) -> (Option<String>, Option<String>) {
    let data = &event["data"];
    match data["ticket"].as_object() {
        Some(ticket) => {
            let number = ticket["validation_number"].as_str().unwrap();
            assert!(ticket["masked"].as_bool().unwrap(), "masked by default: {event}");
            assert!(number.starts_with("**************"), "only 4 digits leave: {event}");
            (Some(number[number.len() - 4..].to_owned()), ticket["class"].as_str().map(Into::into))
        }
        None if event["kind"] == "aft_transfer" => {
            (Some(aft_reference(data)), data["class"].as_str().map(Into::into))
        }
        None => (None, None),
    }
}

/// The cashless meters of one machine against the events that move them: (meter, the last
/// machine-wide value the gateway read in minor units, Σ of its events). AFT in and out per class
/// (00A0…00BC), progressives paid by the machine (001D) and by an attendant (0020: handpays with
/// a level), legacy bonuses (001E). The simulator's meters start at zero, so lifetime = Σ.
pub fn cashless_balances(
    events: &[Value],
    registry_id: &str,
) -> Vec<(&'static str, Option<i64>, i64)> {
    let mine: Vec<&Value> =
        events.iter().filter(|e| e["machine"]["registry_id"] == registry_id).collect();
    let amount = |e: &&&Value| e["data"]["amount"]["minor_units"].as_i64().unwrap();
    let meter = |name: &str| {
        mine.iter()
            .filter(|e| e["kind"] == "meter_snapshot")
            .filter(|e| e["data"]["game_number"].as_u64().unwrap_or(0) == 0)
            .filter_map(|e| e["data"]["meters"][name]["amount"]["minor_units"].as_i64())
            .next_back()
    };
    let sum = |kind: &str| mine.iter().filter(|e| e["kind"] == kind).map(|e| amount(&e)).sum();
    let aft = |direction: &str, class: &str| -> i64 {
        mine.iter()
            .filter(|e| e["kind"] == "aft_transfer")
            .filter(|e| e["data"]["direction"] == direction && e["data"]["class"] == class)
            .map(|e| amount(&e))
            .sum()
    };
    let progressive_handpays = mine
        .iter()
        .filter(|e| e["kind"] == "handpay")
        .filter(|e| e["data"]["level"].as_u64().is_some_and(|l| (1..=0x20).contains(&l)))
        .map(|e| amount(&e))
        .sum();
    let mut out: Vec<(&'static str, Option<i64>, i64)> = [
        ("aft_cashable_in_cents", "to_machine", "cashable"),
        ("aft_restricted_in_cents", "to_machine", "restricted"),
        ("aft_non_restricted_in_cents", "to_machine", "non_restricted"),
        ("aft_cashable_out_cents", "to_host", "cashable"),
        ("aft_restricted_out_cents", "to_host", "restricted"),
        ("aft_non_restricted_out_cents", "to_host", "non_restricted"),
    ]
    .into_iter()
    .map(|(name, direction, class)| (name, meter(name), aft(direction, class)))
    .collect();
    out.push((
        "machine_paid_progressive",
        meter("machine_paid_progressive"),
        sum("progressive_win"),
    ));
    out.push((
        "machine_paid_external_bonus",
        meter("machine_paid_external_bonus"),
        sum("bonus_award"),
    ));
    out.push((
        "attendant_paid_progressive",
        meter("attendant_paid_progressive"),
        progressive_handpays,
    ));
    out
}

/// Every machine's events are numbered 0, 1, 2, … without a gap, and keys are unique.
pub fn assert_sequences_gap_free(events: &[Value]) {
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    let mut keys = std::collections::HashSet::new();
    for e in events {
        let id = e["machine"]["registry_id"].as_str().unwrap().to_owned();
        let seq = e["machine_seq"].as_u64().unwrap();
        let expected = next.entry(id.clone()).or_default();
        assert_eq!(seq, *expected, "machine {id}: sequence gap or repeat");
        *expected += 1;
        assert!(
            keys.insert(e["idempotency_key"].as_str().unwrap().to_owned()),
            "duplicate key {e}"
        );
    }
}

/// Per machine serial: the play reports (`(true, wagered)` for 7E, `(false, win)` for 7F) the
/// machine dropped from its queue because the host acknowledged them, in the machine's order;
/// and every play report it produced, acknowledged or not.
pub fn ledger_reports(ledger: &[Value]) -> (Reports, Reports) {
    let key = |r: &Value| (r["serial"].as_str().unwrap().to_owned(), r["exception_seq"].as_u64());
    let acknowledged: std::collections::HashSet<_> =
        ledger.iter().filter(|r| r["type"] == "exception_acknowledged").map(key).collect();
    let (mut acked, mut all) = (Reports::new(), Reports::new());
    for r in ledger.iter().filter(|r| r["type"] == "exception") {
        let report = match r["code"].as_u64() {
            Some(0x7E) => (true, r["event"]["credits_wagered"].as_u64().unwrap()),
            Some(0x7F) => (false, r["event"]["win"].as_u64().unwrap()),
            _ => continue,
        };
        let serial = r["serial"].as_str().unwrap().to_owned();
        if acknowledged.contains(&key(r)) {
            acked.entry(serial.clone()).or_default().push(report);
        }
        all.entry(serial).or_default().push(report);
    }
    (acked, all)
}

pub type Reports = BTreeMap<String, Vec<(bool, u64)>>;

/// Runs one `slotgate` command against the configuration `config` (`--config` goes last).
pub fn slotgate(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(BIN).args(args).arg("--config").arg(config).env("NO_COLOR", "1").output().unwrap()
}

/// Starts `slotgate run` on `config`, its log appended to `log` (runs after a restart add to it).
pub fn run_gateway(config: &Path, log: &Path) -> Proc {
    run_gateway_with(config, log, &[])
}

/// [`run_gateway`] with more environment variables (`NOTIFY_SOCKET`, say).
pub fn run_gateway_with(config: &Path, log: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Proc(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "slotgate=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// What each machine reported about play, in order: `(true, credits wagered)` for a 7E and
/// `(false, win)` for a 7F, leaving out reports the machine itself lost (a RAM clear empties its
/// queue; sas-protocol.md §5, 3A), which no host can recover.
pub fn machine_reports(ledger: &[Value]) -> BTreeMap<String, Vec<(bool, u64)>> {
    reports_of(ledger, true)
}

/// Every play report the machine produced, including those it later lost.
pub fn all_machine_reports(ledger: &[Value]) -> BTreeMap<String, Vec<(bool, u64)>> {
    reports_of(ledger, false)
}

pub fn reports_of(ledger: &[Value], without_lost: bool) -> BTreeMap<String, Vec<(bool, u64)>> {
    let key = |r: &Value| {
        (r["serial"].as_str().unwrap().to_owned(), r["exception_seq"].as_u64().unwrap())
    };
    // Dropped while its report awaited the host's ACK and then acknowledged: the host has it.
    let acknowledged: std::collections::HashSet<(String, u64)> =
        ledger.iter().filter(|r| r["type"] == "exception_acknowledged").map(key).collect();
    let lost: std::collections::HashSet<(String, u64)> = ledger
        .iter()
        .filter(|r| r["type"] == "exception_lost")
        .map(key)
        .filter(|k| !acknowledged.contains(k))
        .collect();
    let mut reports: BTreeMap<String, Vec<(bool, u64)>> = BTreeMap::new();
    for r in ledger.iter().filter(|r| r["type"] == "exception") {
        let serial = r["serial"].as_str().unwrap().to_owned();
        if without_lost && lost.contains(&(serial.clone(), r["exception_seq"].as_u64().unwrap())) {
            continue;
        }
        let report = match r["code"].as_u64() {
            Some(0x7E) => (true, r["event"]["credits_wagered"].as_u64().unwrap()),
            Some(0x7F) => (false, r["event"]["win"].as_u64().unwrap()),
            _ => continue,
        };
        reports.entry(serial).or_default().push(report);
    }
    reports
}

/// The same from the gateway's events (reported amounts only; derived ones are left out).
pub fn gateway_reports(events: &[Value]) -> BTreeMap<String, Vec<(bool, u64)>> {
    let mut reports: BTreeMap<String, Vec<(bool, u64)>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["derived"] == false) {
        let serial =
            e["machine"]["registry_id"].as_str().unwrap().trim_start_matches("EGM-").to_owned();
        let report = match e["kind"].as_str() {
            Some("bet_accepted") => (true, e["data"]["amount"]["credits"].as_u64().unwrap()),
            Some("game_ended") => (false, e["data"]["win"]["credits"].as_u64().unwrap()),
            _ => continue,
        };
        reports.entry(serial).or_default().push(report);
    }
    reports
}

/// A normalizer for machine `registry_id` at SAS `address` of `venue` (UAH, Kyiv), turning
/// session events into the canonical events its line task would journal.
pub fn normalizer(venue: &str, registry_id: &str, address: u8) -> slotgate::normalizer::Normalizer {
    use slotgate::event::{Currency, RegistryId, VenueId};
    use slotgate::normalizer::{MachineIdentity, Normalizer, VenueSettings};
    Normalizer::new(
        VenueSettings {
            venue_id: VenueId::new(venue).unwrap(),
            currency: Currency::UAH,
            time_zone: jiff::tz::TimeZone::get("Europe/Kyiv").unwrap(),
            clock_drift_threshold: Duration::from_secs(60),
            ticket_numbers: Default::default(),
        },
        MachineIdentity {
            registry_id: RegistryId::new(registry_id).unwrap(),
            address: firmware_protocols::sas::Address::new(address).unwrap(),
            asset_number: None,
            denomination_code: None,
        },
        0,
    )
}

/// Waits until the gateway has reported `games` finished games in total.
pub fn wait_for_games(journal: &Path, games: usize, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let events = journal_events(journal);
        let ended = events.iter().filter(|e| e["kind"] == "game_ended").count();
        if ended >= games {
            return events;
        }
        assert!(Instant::now() < deadline, "only {ended} of {games} games reported in {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs `command` with standard error on a pseudo-terminal of its own; returns its exit status
/// and everything it wrote there.
pub fn stderr_on_terminal(mut command: Command) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    for fd in [&pty.master, &pty.slave] {
        let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
        nix::fcntl::fcntl(fd, cloexec).unwrap();
    }
    let mut child = command.stderr(Stdio::from(pty.slave)).spawn().unwrap();
    // Ours closed, the child's end is the only one: the terminal reads EIO once it exits.
    drop(command);
    let mut master = std::fs::File::from(pty.master);
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    while let Ok(n @ 1..) = master.read(&mut buf) {
        seen.extend_from_slice(&buf[..n]);
    }
    (child.wait().unwrap(), String::from_utf8_lossy(&seen).into_owned())
}
