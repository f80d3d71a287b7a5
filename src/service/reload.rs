//! The pure half of a SIGHUP reload (R18, R21): read and validate the new configuration file,
//! and describe what changed as the audited `config_changed` record — every changed setting by
//! its path, secrets redacted, and the SHA-256 of the new file. A file that does not validate
//! yields the [`ConfigError`] (file, field, reason) and nothing else; applying the change to the
//! running lines is the supervisor's part (`app`).

use std::path::Path;

use serde::Serialize;
use toml::Value;

use crate::config::{Config, ConfigError};
use crate::journal::NewRecord;

/// The `alarm` name of the record, which goes upstream as a gateway record.
pub const CONFIG_CHANGED: &str = "config_changed";

/// Shown instead of a secret's value.
const REDACTED: &str = "***";

/// A validated new configuration and what changed from the running one.
#[derive(Debug)]
pub struct Reload {
    pub config: Config,
    /// The new file's text: the base of the next reload's diff.
    pub text: String,
    pub change: ConfigChange,
}

/// What the `config_changed` record carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigChange {
    /// Hex SHA-256 of the new file, as read.
    pub config_sha256: String,
    /// One line per changed setting, sorted by path: `path: old -> new`, `path: added = new`,
    /// `path: removed (was old)`.
    pub changes: Vec<String>,
    /// The changed settings the running daemon keeps until a restart (see [`plan`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<String>,
}

/// How a running daemon takes a change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The lines whose task is stopped, started or restarted: every line named in a change.
    pub lines: std::collections::BTreeSet<String>,
    /// The destinations whose settings changed: their forwarder is restarted.
    pub destinations: std::collections::BTreeSet<String>,
    /// The paths of the other changed settings: storage, admin socket, journal, venue,
    /// polling and commands are read once at the start, and so is the set of destinations
    /// (the journal's decides which records it may remove): a destination added or removed
    /// waits for a restart too.
    pub needs_restart: Vec<String>,
}

/// The plan for `changes` (as [`diff`] writes them).
pub fn plan(changes: &[String]) -> Plan {
    let mut plan = Plan::default();
    for change in changes {
        let path = change.split_once(": ").map_or(change.as_str(), |(path, _)| path);
        // `array[name]` (the whole entry) or `array[name].field…`: the name, and whether a
        // field of it changed.
        let entry = |array: &str| {
            let rest = path.strip_prefix(array)?.strip_prefix('[')?;
            match rest.find("].") {
                Some(end) => Some((rest.get(..end)?, true)),
                None => Some((rest.strip_suffix(']')?, false)),
            }
        };
        if let Some((name, _)) = entry("line") {
            plan.lines.insert(name.to_owned());
        } else if let Some((name, true)) = entry("destination") {
            plan.destinations.insert(name.to_owned());
        } else if !plan.needs_restart.iter().any(|p| p == path) {
            plan.needs_restart.push(path.to_owned());
        }
    }
    plan
}

impl ConfigChange {
    /// The journal record: a gateway record of the significant class, its message this change
    /// as JSON.
    pub fn record(&self) -> NewRecord {
        super::audit_record(CONFIG_CHANGED, self)
    }
}

/// Reads `path`, validates it as `slotgate run` does (including the files it names, devices
/// when `devices`), and compares it with `running_text`, the text the running configuration
/// was read from. `Ok(None)`: nothing changed.
pub fn prepare(
    path: &Path,
    running_text: &str,
    devices: bool,
) -> Result<Option<Reload>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        field: "(file)".into(),
        reason: format!("cannot read: {e}"),
    })?;
    let config = Config::from_toml_str(path, &text)?;
    config.check_files(devices)?;
    let changes = diff(running_text, &text);
    if changes.is_empty() {
        return Ok(None);
    }
    let config_sha256 = {
        use sha2::Digest;
        super::identity::hex(&sha2::Sha256::digest(text.as_bytes()))
    };
    Ok(Some(Reload {
        config,
        text,
        change: ConfigChange { config_sha256, changes, needs_restart: Vec::new() },
    }))
}

/// The settings that differ between two configuration texts, secrets redacted. Texts that do
/// not parse compare as empty (both were validated before they get here).
pub fn diff(old: &str, new: &str) -> Vec<String> {
    let parse = |text: &str| text.parse::<toml::Table>().map(Value::Table).ok();
    let empty = Value::Table(toml::Table::new());
    let (old, new) = (parse(old).unwrap_or_else(|| empty.clone()), parse(new).unwrap_or(empty));
    let mut changes = Vec::new();
    compare("", &old, &new, false, &mut changes);
    changes
}

fn compare(path: &str, old: &Value, new: &Value, secret: bool, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Table(a), Value::Table(b)) => {
            for (key, value) in a {
                let at = join(path, key);
                let secret = secret || is_secret(key);
                match b.get(key) {
                    Some(other) => compare(&at, value, other, secret, out),
                    None => out.push(format!("{at}: removed (was {})", show(value, secret))),
                }
            }
            for (key, value) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                let secret = secret || is_secret(key);
                out.push(format!("{}: added = {}", join(path, key), show(value, secret)));
            }
        }
        // Lines and machines are matched by their name or registry id, so removing one does
        // not read as a change of every one after it.
        (Value::Array(a), Value::Array(b)) if a.iter().chain(b).all(|v| label(v).is_some()) => {
            for value in a {
                let at = format!("{path}[{}]", label(value).unwrap_or_default());
                match b.iter().find(|v| label(v) == label(value)) {
                    Some(other) => compare(&at, value, other, secret, out),
                    None => out.push(format!("{at}: removed")),
                }
            }
            for value in b.iter().filter(|v| !a.iter().any(|o| label(o) == label(v))) {
                let at = format!("{path}[{}]", label(value).unwrap_or_default());
                out.push(format!("{at}: added = {}", show(value, secret)));
            }
        }
        (a, b) if a != b => {
            out.push(format!("{path}: {} -> {}", show(a, secret), show(b, secret)));
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// A table's identity within its array: its `name` or `registry_id`.
fn label(value: &Value) -> Option<String> {
    let table = value.as_table()?;
    ["name", "registry_id"].iter().find_map(|k| table.get(*k)?.as_str().map(str::to_owned))
}

/// Keys whose values are credentials. Paths to secret files (`*_file`) are not secrets.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    !key.ends_with("_file")
        && ["password", "token", "secret", "api_key", "hmac", "credential"]
            .iter()
            .any(|s| key.contains(s))
}

/// A value as the diff shows it: redacted when secret, and URLs without their user part.
fn show(value: &Value, secret: bool) -> String {
    if secret {
        return REDACTED.to_owned();
    }
    match value {
        Value::String(s) => format!("{:?}", without_userinfo(s)),
        Value::Table(t) => {
            let fields: Vec<String> =
                t.iter().map(|(k, v)| format!("{k} = {}", show(v, is_secret(k)))).collect();
            format!("{{ {} }}", fields.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(|v| show(v, false)).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// `scheme://user:password@host/…` → `scheme://***@host/…`.
fn without_userinfo(s: &str) -> String {
    if let Some((scheme, rest)) = s.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest.get(..authority_end).and_then(|a| a.rfind('@')) {
            return format!("{scheme}://{REDACTED}{}", rest.get(at..).unwrap_or_default());
        }
    }
    s.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"
[venue]
id = "UA-TEST-1"

[[destination]]
name = "regulator"
url = "https://user:hunter2@state.example/events"
password = "hunter2"
token_file = "/etc/slotgate/token"

[[line]]
name = "line-1"
  [[line.machine]]
  registry_id = "EGM-1"
  address = 1
  [[line.machine]]
  registry_id = "EGM-2"
  address = 2
"#;

    #[test]
    fn machines_are_matched_by_registry_id_and_secrets_never_shown() {
        let new = OLD
            .replace("hunter2", "correct-horse")
            .replace(
                "registry_id = \"EGM-1\"\n  address = 1",
                "registry_id = \"EGM-3\"\n  address = 3",
            )
            .replace("address = 2", "address = 4")
            .replace("/etc/slotgate/token", "/etc/slotgate/token2");
        let changes = diff(OLD, &new);
        assert_eq!(
            changes,
            [
                "destination[regulator].password: *** -> ***",
                "destination[regulator].token_file: \"/etc/slotgate/token\" -> \"/etc/slotgate/token2\"",
                "destination[regulator].url: \"https://***@state.example/events\" -> \"https://***@state.example/events\"",
                "line[line-1].machine[EGM-1]: removed",
                "line[line-1].machine[EGM-2].address: 2 -> 4",
                "line[line-1].machine[EGM-3]: added = { address = 3, registry_id = \"EGM-3\" }",
            ]
        );
        assert!(changes.iter().all(|c| !c.contains("hunter2") && !c.contains("correct-horse")));
    }

    #[test]
    fn a_change_restarts_the_lines_it_names_and_lists_what_needs_a_restart() {
        let changes: Vec<String> = [
            "destination[regulator].url: \"a\" -> \"b\"",
            "destination[backup]: removed",
            "line[line-1].machine[EGM-1]: removed",
            "line[line-1].machine[EGM-3]: added = { address = 3, registry_id = \"EGM-3\" }",
            "line[hall.b]: added = { name = \"hall.b\" }",
            "line[old]: removed",
            "polling.meter_snapshot_interval: \"5m\" -> \"1m\"",
        ]
        .map(str::to_owned)
        .into();
        let plan = plan(&changes);
        assert_eq!(plan.lines.into_iter().collect::<Vec<_>>(), ["hall.b", "line-1", "old"]);
        assert_eq!(plan.destinations.into_iter().collect::<Vec<_>>(), ["regulator"]);
        assert_eq!(plan.needs_restart, ["destination[backup]", "polling.meter_snapshot_interval"]);
    }

    #[test]
    fn an_unchanged_file_is_no_change() {
        assert!(diff(OLD, OLD).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slotgate.toml");
        std::fs::write(&path, "[venue]\nid = \"UA-TEST-1\"\n").unwrap();
        // Not a valid configuration: the error names the file and the field, nothing else.
        let error = prepare(&path, OLD, false).unwrap_err();
        assert_eq!(error.file, path.display().to_string());
    }
}
