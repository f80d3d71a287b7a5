//! The binary as an operator and systemd meet it: what `config check` and `run` refuse and how
//! (exit status 2 naming the field, never echoing a password), the exit status table, one
//! daemon per state directory, private state files whatever the umask, logs without colour
//! codes when nobody looks at a terminal, and the systemd unit as shipped.

// clippy.toml allows unwrap in #[test] functions only; the helpers of this test crate need it too.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A configuration with one TCP line to a port nobody listens on, plus `extra` (appended
/// top-level tables, e.g. `[journal]` or `[[destination]]`).
fn config_with(dir: &Path, extra: &str) -> PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = format!(
        "[venue]\nid = \"UA-TEST-1\"\ncurrency = \"UAH\"\ntime_zone = \"Europe/Kyiv\"\n\n\
         [admin]\nsocket = \"admin.sock\"\n\n[storage]\ndir = \"state\"\n\n\
         [[line]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n\n\
         [[line.machine]]\naddress = 1\nregistry_id = \"EGM-1\"\n\n{extra}"
    );
    let path = dir.join("slotgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn slotgate(args: &[&str], config: &Path) -> Output {
    Command::new(BIN).args(args).arg(config).env("NO_COLOR", "1").output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `run` and `config check` both refuse the configuration with exit status 2, naming `field`
/// and `reason` on standard error; returns everything they printed.
fn assert_refused(config: &Path, field: &str, reason: &str) -> String {
    let mut printed = String::new();
    for args in [&["config", "check"][..], &["run", "--config"]] {
        let started = Instant::now();
        let out = slotgate(args, config);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&format!("`{field}`")) && err.contains(reason), "{args:?}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            started.elapsed()
        );
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&err);
    }
    printed
}

/// Starts `slotgate run` and waits for its first status file.
fn start_daemon(config: &Path, log: &Path) -> Proc {
    let daemon = run_gateway(config, log);
    let status = config.parent().unwrap().join("state/status.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status.exists() {
        assert!(Instant::now() < deadline, "no status file: {}", read(log));
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn private(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_path_buf()
}

// === Files the configuration names (issue 15, item 9) ===

#[test]
fn missing_keys_certificates_secrets_and_devices_are_configuration_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("missing");
    let journal = format!("[journal]\nsigning_key = \"{}\"\n", missing.display());
    assert_refused(&config_with(d, &journal), "journal.signing_key", "No such file");

    let out = Command::new(BIN)
        .args(["journal", "keygen", "--out"])
        .arg(d.join("journal.key"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let journal = format!("[journal]\nsigning_key = \"{}\"\n", d.join("journal.key").display());
    let token = private(&d.join("token"), "t0ken\n");
    let https = |field: &str, path: &Path| {
        format!(
            "{journal}\n[[destination]]\nname = \"central\"\nkind = \"https\"\n\
             url = \"https://127.0.0.1:1/events\"\ntoken_file = \"{}\"\n{field} = \"{}\"\n",
            token.display(),
            path.display()
        )
    };
    assert_refused(
        &config_with(d, &https("ca_file", &missing)),
        "destination[0].ca_file",
        "missing",
    );
    assert_refused(
        &config_with(d, &https("hmac_key_file", &missing)),
        "destination[0].hmac_key_file",
        "No such file",
    );
    // A directory where a file should be: opening it works, reading it does not.
    assert_refused(
        &config_with(d, &https("api_key_file", d)),
        "destination[0].api_key_file",
        "directory",
    );
    let empty = private(&d.join("empty"), " \n");
    assert_refused(
        &config_with(d, &https("api_key_file", &empty)),
        "destination[0].api_key_file",
        "empty",
    );
    let control = private(&d.join("control"), "key\x01with-a-control-character\n");
    assert_refused(
        &config_with(d, &https("api_key_file", &control)),
        "destination[0].api_key_file",
        "HTTP header",
    );
    let not_pem = d.join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    assert_refused(
        &config_with(d, &https("ca_file", &not_pem)),
        "destination[0].ca_file",
        "not.pem",
    );

    // A serial device that is not there; a staging box may skip device checks.
    let serial = config_with(d, &journal).display().to_string();
    let text = read(Path::new(&serial)).replace(
        "kind = \"tcp\"\naddress",
        &format!("kind = \"serial\"\ndevice = \"{}\"\n#", d.join("ttyUSB9").display()),
    );
    std::fs::write(&serial, text).unwrap();
    assert_refused(Path::new(&serial), "line[0].device", "ttyUSB9");
    let out = Command::new(BIN)
        .args(["config", "check", "--skip-device-checks"])
        .arg(&serial)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // A regular file is no serial device either.
    let text = read(Path::new(&serial)).replace("ttyUSB9", "token");
    std::fs::write(&serial, text).unwrap();
    assert_refused(Path::new(&serial), "line[0].device", "not a serial device");
}

#[test]
fn secret_files_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = d.join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let destination = format!(
        "[[destination]]\nname = \"central\"\nkind = \"https\"\n\
         url = \"http://127.0.0.1:1/events\"\nallow_plaintext = true\ntoken_file = \"{}\"\n",
        token.display()
    );
    let config = config_with(d, &destination);
    assert_refused(&config, "destination[0].token_file", "chmod 600");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = slotgate(&["config", "check"], &config);
    assert!(out.status.success(), "{}", stderr(&out));
}

// === Credentials in URLs (issue 15, item 5) ===

#[test]
fn a_destination_url_with_a_password_is_refused_and_the_password_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, url) in [
        ("https", "https://gw-1:Hunter2-secret@central.example.com/events?token=Hunter2-secret"),
        ("mqtt", "mqtts://gw-1:Hunter2-secret@broker.example.com:8883"),
    ] {
        let destination =
            format!("[[destination]]\nname = \"up\"\nkind = \"{kind}\"\nurl = \"{url}\"\n");
        let printed = assert_refused(
            &config_with(dir.path(), &destination),
            "destination[0].url",
            "user name or password",
        );
        assert!(!printed.contains("Hunter2"), "{printed}");
    }
}

// === Task supervision, configuration side (issue 15, item 10) ===

#[test]
fn an_empty_mqtt_client_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let destination = "[[destination]]\nname = \"up\"\nkind = \"mqtt\"\n\
                       url = \"mqtt://127.0.0.1:1883\"\nallow_plaintext = true\nclient_id = \"\"\n";
    assert_refused(&config_with(dir.path(), destination), "destination[0].client_id", "1–256");
}

// === Exit status (issue 15, item 15) ===

/// A journal of `records` alarm records at `dir`.
fn journal_of(dir: &Path, records: u32) {
    use slotgate::journal::{Body, Class, Journal, JournalConfig, NewRecord};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (journal, writer) = Journal::open(JournalConfig::in_dir(dir)).unwrap();
        for batch in 0..records / 100 {
            let alarms = (0..100)
                .map(|n| NewRecord {
                    class: Class::Alarm,
                    machine: String::new(),
                    machine_seq: None,
                    body: Body::Alarm {
                        alarm: "test".into(),
                        level: "info".into(),
                        message: format!("record {batch}/{n}: {}", "x".repeat(200)),
                    },
                    snapshot_of: None,
                })
                .collect();
            journal.append(alarms).await.unwrap();
        }
        drop(journal);
        tokio::task::spawn_blocking(move || writer.join()).await.unwrap().unwrap();
    });
}

#[test]
fn an_export_whose_reader_goes_away_is_a_quiet_success() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    // About 1 MB of output: far more than a pipe holds, so the export is still writing when
    // the reader leaves.
    journal_of(&journal, 3_000);

    // `slotgate journal export | head -c 100`
    let mut child = Command::new(BIN)
        .args(["journal", "export", "--dir"])
        .arg(&journal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_exact(&mut [0; 100]).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "quiet");

    // `slotgate journal export 2>&1 | head -c 100`
    // Close-on-exec, or the child would inherit the reading end and never see the pipe close.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut child = Command::new(BIN)
        .args(["journal", "export", "--dir"])
        .arg(&journal)
        .stdout(Stdio::from(writer.try_clone().unwrap()))
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap();
    let mut reader = std::fs::File::from(reader);
    reader.read_exact(&mut [0; 100]).unwrap();
    drop(reader);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn exit_status_3_says_the_daemon_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "");
    let out = slotgate(&["status", "--config"], &config);
    assert_eq!(out.status.code(), Some(3), "never started: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));

    let log = dir.path().join("run.log");
    let daemon = start_daemon(&config, &log);
    let out = slotgate(&["status", "--config"], &config);
    assert_eq!(out.status.code(), Some(0), "running: {}", stderr(&out));
    assert!(daemon.terminate().success(), "{}", read(&log));
    let out = slotgate(&["status", "--config"], &config);
    assert_eq!(out.status.code(), Some(3), "stopped: {}", String::from_utf8_lossy(&out.stdout));
    let out = slotgate(&["status", "--json", "--config"], &config);
    assert_eq!(out.status.code(), Some(3), "stopped, JSON");

    // A configuration error is 2 for every command that reads one.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[venue]\n").unwrap();
    for args in [
        &["status", "--config"][..],
        &["journal", "export", "--config"],
        &["journal", "verify", "--config"],
        &["config", "check"],
        &["run", "--config"],
    ] {
        assert_eq!(slotgate(args, &broken).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn the_exit_status_table_is_in_the_help() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for line in
        ["0  success", "1  runtime failure", "2  unusable configuration", "3  `slotgate status`"]
    {
        assert!(help.contains(line), "{help}");
    }
}

// === One daemon per state directory (issue 15, item 16) ===

#[test]
fn a_second_daemon_on_the_same_state_directory_names_the_first_and_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "");
    let log = dir.path().join("first.log");
    let first = start_daemon(&config, &log);
    let started = Instant::now();
    let second = slotgate(&["run", "--config"], &config);
    let elapsed = started.elapsed();
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("another slotgate (pid {}) is using", first.0.id())), "{err}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(first.terminate().success(), "the first one is unharmed: {}", read(&log));
}

// === Private state files (issue 15, item 17) ===

#[test]
fn every_state_file_is_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let (sim, machines) = simulate(1, &ledger, &["--rte", "--game-rate", "60", "--seed", "7"]);
    let config = write_config(dir.path(), &machines);
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let daemon = Proc(
        Command::new("sh")
            .args(["-c", "umask 022 && exec \"$0\" run --config \"$1\""])
            .arg(BIN)
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let state = dir.path().join("state");
    let inflight = state.join("lines");
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_events(&state.join("journal"))
        .iter()
        .filter(|e| e["kind"] == "game_ended")
        .count()
        < 2
        || std::fs::read_dir(&inflight).map_or(0, Iterator::count) == 0
    {
        assert!(Instant::now() < deadline, "{}", read(&dir.path().join("run.log")));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.terminate().success(), "{}", read(&dir.path().join("run.log")));
    sim.terminate();

    let mut seen = 0;
    let mut pending = vec![state.clone()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:03o}", path.display());
        seen += 1;
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen >= 6, "journal, lines, status and lock at least: {seen}");
}

// === Logs (issue 15, item 12) ===

#[test]
fn logs_to_a_pipe_or_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "");
    let log = dir.path().join("run.log");
    let daemon = Proc(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read(&log).contains("Polling.") {
        assert!(Instant::now() < deadline, "{}", read(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(daemon.terminate().success());
    let text = read(&log);
    assert!(text.contains(" INFO ") && text.contains("Stopped."), "{text}");
    assert!(!text.contains("\x1b["), "colour codes in a log file: {text:?}");
}

#[test]
fn a_terminal_gets_colour_codes_unless_no_color_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "");
    // A journal directory that is a file: `run` logs its start (a warning about the missing
    // signing key), then fails and exits by itself.
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/journal"), "").unwrap();
    for (no_color, colour) in [(None, true), (Some("1"), false)] {
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null());
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let (status, seen) = stderr_on_terminal(command);
        assert_eq!(status.code(), Some(1));
        assert!(seen.contains("signing_key"), "{seen}");
        assert_eq!(seen.contains("\x1b["), colour, "NO_COLOR={no_color:?}: {seen:?}");
    }
}

// === The systemd unit (issue 15, item 8) ===

#[test]
fn the_systemd_unit_verifies_clean() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED: systemd-analyze is not installed (.ci/test installs it)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = read(&root.join("systemd/slotgate.service"));
    assert!(unit.contains("ExecStart=/usr/bin/slotgate "), "{unit}");
    // verify checks that the binary exists: point the unit at the one cargo built. It also
    // looks up the man page Documentation= names: the one the binary generates.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("slotgate.service");
    std::fs::write(&copy, unit.replace("/usr/bin/slotgate", BIN)).unwrap();
    let man = dir.path().join("man");
    let generated =
        Command::new(BIN).arg("generate-assets").arg(man.join("man1")).status().unwrap();
    assert!(generated.success());
    let out = Command::new(analyze).arg("verify").arg(&copy).env("MANPATH", &man).output().unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success() && printed.is_empty(), "{printed}");

    // The user it runs as comes from the sysusers file shipped beside it.
    assert!(unit.lines().any(|l| l == "User=slotgate"), "{unit}");
    assert!(!unit.lines().any(|l| l.starts_with("DynamicUser")), "{unit}");
    if let Ok(sysusers) = which("systemd-sysusers") {
        let out = Command::new(sysusers)
            .arg("--dry-run")
            .arg(root.join("systemd/slotgate.sysusers"))
            .output()
            .unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(out.status.success() && !printed.contains("gnor"), "{printed}");
    }
}

fn which(program: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file()).ok_or(())
}
