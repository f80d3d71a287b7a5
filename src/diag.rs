//! `slotgate diag-bundle`: one tar.gz a technician sends to support: versions, the configuration
//! with anything secret taken out, the daemon's state (live or the last it left), the journal's
//! figures, and the service's recent log. Secrets never enter it: the secret files the
//! configuration names are not read at all, and the configuration's own text is redacted.

use std::path::Path;

use anyhow::Context;

use crate::config::Config;

/// Keys whose string values are replaced whatever they hold.
const SECRET_WORDS: [&str; 6] = ["password", "token", "secret", "api_key", "hmac", "passphrase"];

/// Writes the bundle for `config_file` to `out`. `log` adds a log file; without it the service's
/// journald log of the last day is taken when `journalctl` is there.
pub fn bundle(config_file: &Path, out: &Path, log: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config_file)?;
    let progress = crate::progress::bar(Some(7));
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        progress.set_message(name.to_owned());
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(jiff::Timestamp::now().as_second().max(0).unsigned_abs());
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).with_context(|| format!("adding {name}"))?;
        progress.inc(1);
        Ok(())
    };
    add("versions.txt", versions().as_bytes())?;
    let text = std::fs::read_to_string(config_file)
        .with_context(|| format!("cannot read {}", config_file.display()))?;
    add("config.toml", redact_config(&text)?.as_bytes())?;
    let (status, source) = state(&config);
    add("status.json", status.as_bytes())?;
    add("status-source.txt", source.as_bytes())?;
    let journal = match serde_json::from_str::<serde_json::Value>(&status) {
        Ok(value) => serde_json::to_string_pretty(&value["journal"]).unwrap_or_default(),
        Err(_) => "no status: the journal's figures are unknown\n".to_owned(),
    };
    add("journal-stats.json", journal.as_bytes())?;
    add("quarantine.txt", listing(&config.storage.quarantine_dir()).as_bytes())?;
    let logs = match log {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => service_log(),
    };
    add("log.txt", &logs)?;
    let gz = tar.into_inner().context("finishing the archive")?;
    let file = gz.finish().context("finishing the compression")?;
    file.sync_all().with_context(|| format!("cannot write {}", out.display()))?;
    progress.finish_and_clear();
    println!("{}: diagnostics bundle written (no secrets inside)", out.display());
    Ok(())
}

fn versions() -> String {
    let uname = nix::sys::utsname::uname().ok();
    let os = uname.map_or_else(
        || "unknown".to_owned(),
        |u| {
            format!(
                "{} {} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        },
    );
    format!(
        "slotgate {}\nevent schema {}\nadmin API {}\nOS {os}\nwritten {}\n",
        env!("CARGO_PKG_VERSION"),
        crate::event::SCHEMA_VERSION,
        crate::admin::API_VERSION,
        jiff::Timestamp::now()
    )
}

/// The configuration with every value under a secret-sounding key replaced and every URL
/// stripped of user information and query. File paths stay: they say where a secret is, not
/// what it is.
pub fn redact_config(text: &str) -> anyhow::Result<String> {
    let mut value: toml::Value = toml::from_str(text).context("the configuration is not TOML")?;
    redact(&mut value, "");
    toml::to_string_pretty(&value).context("writing the redacted configuration")
}

fn redact(value: &mut toml::Value, key: &str) {
    match value {
        toml::Value::Table(table) => table.iter_mut().for_each(|(k, v)| redact(v, k)),
        toml::Value::Array(items) => items.iter_mut().for_each(|v| redact(v, key)),
        toml::Value::String(s) => {
            let lower = key.to_ascii_lowercase();
            // `token_file`, `signing_key`, `client_key`, `trusted_keys`: where a secret is (the
            // configuration is strict about its keys, so these are always paths).
            let path = lower.ends_with("_file")
                || (lower.ends_with("_key") && lower != "api_key")
                || lower.ends_with("_keys");
            if path {
            } else if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
                *s = "***".into();
            } else if s.contains("://") {
                *s = crate::forward::redact_url(s);
            }
        }
        _ => {}
    }
}

/// The daemon's state as JSON, asked live or read from its status file, and where it came from.
fn state(config: &Config) -> (String, String) {
    let asked = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
        rt.block_on(crate::admin::client::request(
            &config.admin.socket,
            hyper::Method::GET,
            "/v1/status",
        ))
    });
    if let Ok(Ok(value)) = asked {
        return (
            serde_json::to_string_pretty(&value).unwrap_or_default(),
            format!("live, from {}\n", config.admin.socket.display()),
        );
    }
    let path = config.storage.status_file();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            (text, format!("the daemon did not answer; {} as it left it\n", path.display()))
        }
        Err(e) => ("{}".to_owned(), format!("no state: {}: {e}\n", path.display())),
    }
}

fn listing(dir: &Path) -> String {
    use std::fmt::Write as _;
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> =
                entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            names.iter().fold(String::new(), |mut out, n| {
                let _ = writeln!(out, "{n}");
                out
            })
        }
        Err(e) => format!("{}: {e}\n", dir.display()),
    }
}

fn service_log() -> Vec<u8> {
    let run = std::process::Command::new("journalctl")
        .args(["--unit", "slotgate", "--since", "-1d", "--no-pager", "--output", "short-iso"])
        .output();
    match run {
        Ok(out) if out.status.success() => out.stdout,
        Ok(out) => format!(
            "journalctl failed ({}): {}\n",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into_bytes(),
        Err(e) => {
            format!("no journalctl ({e}); pass --log FILE to include a log file\n").into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_and_url_credentials_are_taken_out_paths_stay() {
        let text = "[[destination]]\nname = \"d\"\nurl = \"https://u:p@h/x?sig=abc\"\n\
                    token_file = \"/etc/slotgate/token\"\npassword = \"hunter2\"\n\
                    [journal]\nsigning_key = \"/etc/slotgate/journal.key\"\n";
        let redacted = redact_config(text).unwrap();
        assert!(!redacted.contains("hunter2") && !redacted.contains("sig=abc"), "{redacted}");
        assert!(!redacted.contains("u:p@"), "{redacted}");
        assert!(redacted.contains("/etc/slotgate/token"), "{redacted}");
        assert!(redacted.contains("/etc/slotgate/journal.key"), "{redacted}");
    }
}
