//! `slotgate diag-bundle` (issue 13): the archive support gets holds what it promises and none
//! of the configured secrets, with the daemon stopped and running.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{BIN, Simulated, run_gateway, write_config};

/// Every file of the tar.gz at `archive`, by name, as `tar` extracts it.
fn unpack(archive: &Path, into: &Path) -> Vec<(String, String)> {
    std::fs::create_dir_all(into).unwrap();
    let out = Command::new("tar").arg("-xzf").arg(archive).arg("-C").arg(into).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut files: Vec<(String, String)> = std::fs::read_dir(into)
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_bundle_has_state_config_and_versions_and_no_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let token = secret("token", "tok-SECRET-4711\n");
    let password = secret("password", "pw-SECRET-0815\n");
    let hmac = secret("hmac", "hmac-SECRET-1234\n");
    let secrets = ["tok-SECRET-4711", "pw-SECRET-0815", "hmac-SECRET-1234", "sig-SECRET-99"];
    // A line nobody answers: the daemon runs, polls nothing, and has its state to report.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let machine = Simulated {
        address: 1,
        serial: "X1".into(),
        endpoint: format!("127.0.0.1:{port}"),
        pty: false,
    };
    let config = write_config(dir.path(), &[machine]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[destination]]\nname = \"central\"\nkind = \"https\"\n\
         url = \"https://127.0.0.1:9/events?sig=sig-SECRET-99\"\ntoken_file = {:?}\n\
         hmac_key_file = {:?}\n\n[[destination]]\nname = \"state\"\nkind = \"mqtt\"\n\
         url = \"mqtt://127.0.0.1:9\"\nallow_plaintext = true\nusername = \"gw\"\n\
         password_file = {:?}\n",
        token.display().to_string(),
        hmac.display().to_string(),
        password.display().to_string()
    ));
    std::fs::write(&config, text).unwrap();

    // Running first: the stopped daemon then has its status file to report.
    for running in [true, false] {
        let gateway = running.then(|| {
            let gateway = run_gateway(&config, &dir.path().join("gateway.log"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !dir.path().join("admin.sock").exists() {
                assert!(std::time::Instant::now() < deadline, "no admin socket");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            gateway
        });
        let archive = dir.path().join(format!("bundle-{running}.tar.gz"));
        let out = Command::new(BIN)
            .args(["diag-bundle", "--out"])
            .arg(&archive)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(out.stderr.is_empty(), "no progress bar in a pipe: {out:?}");
        let files = unpack(&archive, &dir.path().join(format!("unpacked-{running}")));
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "config.toml",
                "journal-stats.json",
                "log.txt",
                "quarantine.txt",
                "status-source.txt",
                "status.json",
                "versions.txt"
            ]
        );
        for (name, content) in &files {
            for secret in secrets {
                assert!(!content.contains(secret), "{secret} in {name}: {content}");
            }
        }
        let file = |name: &str| &files.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(file("versions.txt").starts_with("slotgate "), "{}", file("versions.txt"));
        assert!(file("config.toml").contains("token_file"), "paths stay: {}", file("config.toml"));
        let status: serde_json::Value = serde_json::from_str(file("status.json")).unwrap();
        assert_eq!(status["lines"][0]["machines"][0]["registry_id"], "EGM-X1", "{status}");
        assert!(file("journal-stats.json").contains("next_seq"));
        let source = file("status-source.txt");
        assert_eq!(source.starts_with("live"), running, "{source}");
        if let Some(gateway) = gateway {
            assert!(gateway.terminate().success());
        }
    }
}
