//! Firmware profiles: what one vendor's firmware supports and how it deviates from SAS 6.02, as
//! data (sas-protocol.md §11). Each profile is a TOML file in `firmware-protocols/profiles/`; the
//! schema is documented in `profiles/README.md`. This crate parses profile *text*; reading the
//! file is the daemon's job, so errors carry the file name the caller passes in.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

/// A validated firmware profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareProfile {
    /// Profile name, `<vendor>-<model>-<firmware>` by convention; unique among profiles.
    pub name: String,
    /// Free text for technicians.
    pub description: String,
    pub timing: Timing,
    pub sync: SyncStyle,
    pub wakeup: WakeupStyle,
    pub rte: RteSupport,
    /// Long polls this firmware is known not to answer; never sent.
    pub unsupported_long_polls: BTreeSet<u8>,
    /// Whether LP21 is answered directly or on a later general poll.
    pub rom_signature: RomSignatureDelivery,
    /// Whether LP6F/AF extended meters may be used.
    pub extended_meters: bool,
}

/// Timing rules for one firmware (sas-protocol.md §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long to wait for the first byte of a reply after the poll has left.
    pub reply_timeout: Duration,
    /// Longest gap between bytes of one frame.
    pub inter_byte_limit: Duration,
    /// Time between polls to this machine: 200 ms unless the machine supports 40 ms.
    pub poll_spacing: Duration,
    /// Back-off after a busy (`addr 00`) answer.
    pub busy_backoff: Duration,
    /// Transmissions of one poll before giving up on it (SAS: at most 3).
    pub tries: u8,
    /// Consecutive failed exchanges after which the machine counts as offline.
    pub offline_after: u32,
    /// Extra pause after the wakeup byte, for firmware that needs one (EGT, Apex; §11).
    pub post_wakeup_delay: Duration,
}

/// How a machine is synchronised (sas-protocol.md §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncStyle {
    /// Needs the `80` sync poll after power-up and loop breaks; the host runs the `80 81` cycle.
    SyncPoll,
    /// Answers its own general poll without a prior poll to another address.
    None,
}

/// How the host produces the wakeup bit on a real UART (sas-protocol.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WakeupStyle {
    /// Mark/space sticky parity (CMSPAR).
    StickyParity,
    /// Per-byte odd/even switching, for adapters that refuse CMSPAR.
    OddEvenSwitching,
}

/// Real-time event reporting (sas-protocol.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RteSupport {
    /// LP0E may be used.
    pub supported: bool,
    /// Whether the gateway turns it on at link-up.
    pub enable: bool,
    /// The machine re-sends its last report on every poll until a new one replaces it (§11:
    /// "always answers the current event"), so a report identical to the previous one is always
    /// a re-report, never a new event.
    pub repeats_last_report: bool,
}

/// Where LP21's signature arrives (sas-protocol.md §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RomSignatureDelivery {
    /// ACK now, signature on a later general poll.
    Deferred,
    /// Signature as the direct answer.
    Direct,
}

/// A profile that cannot be used, naming the file, the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: field `{field}`: {reason}")]
pub struct ProfileError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

/// The generic SAS 6.02 profile, shipped with the crate.
pub const GENERIC_SAS_602: &str = include_str!("../profiles/generic-sas-602.toml");

/// Every profile shipped in `profiles/`, as (file name, text).
pub const BUILT_IN: &[(&str, &str)] = &[
    ("generic-sas-602.toml", GENERIC_SAS_602),
    ("egt-p24-generic.toml", include_str!("../profiles/egt-p24-generic.toml")),
    (
        "novomatic-gaminator-generic.toml",
        include_str!("../profiles/novomatic-gaminator-generic.toml"),
    ),
    ("rte-repeating-generic.toml", include_str!("../profiles/rte-repeating-generic.toml")),
];

// The raw TOML shape. `deny_unknown_fields` turns a misspelt key into an error naming it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    timing: RawTiming,
    #[serde(default = "default_sync")]
    sync: SyncStyle,
    #[serde(default = "default_wakeup")]
    wakeup: WakeupStyle,
    #[serde(default)]
    rte: RawRte,
    #[serde(default)]
    long_polls: RawLongPolls,
    #[serde(default)]
    meters: RawMeters,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTiming {
    reply_timeout_ms: u64,
    inter_byte_limit_ms: u64,
    poll_spacing_ms: u64,
    busy_backoff_ms: u64,
    tries: u8,
    offline_after: u32,
    post_wakeup_delay_ms: u64,
}

impl Default for RawTiming {
    fn default() -> Self {
        Self {
            reply_timeout_ms: 20,
            inter_byte_limit_ms: 5,
            poll_spacing_ms: 200,
            busy_backoff_ms: 200,
            tries: 3,
            offline_after: 5,
            post_wakeup_delay_ms: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRte {
    supported: bool,
    enable: bool,
    repeats_last_report: bool,
}

impl Default for RawRte {
    fn default() -> Self {
        Self { supported: true, enable: true, repeats_last_report: false }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLongPolls {
    unsupported: Vec<u8>,
    rom_signature: RomSignatureDelivery,
}

impl Default for RawLongPolls {
    fn default() -> Self {
        Self { unsupported: Vec::new(), rom_signature: RomSignatureDelivery::Deferred }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMeters {
    extended: bool,
}

impl Default for RawMeters {
    fn default() -> Self {
        Self { extended: true }
    }
}

fn default_sync() -> SyncStyle {
    SyncStyle::SyncPoll
}

fn default_wakeup() -> WakeupStyle {
    WakeupStyle::StickyParity
}

impl FirmwareProfile {
    /// Parses and validates profile text. `file` names the source in errors.
    pub fn from_toml_str(file: &str, text: &str) -> Result<Self, ProfileError> {
        let error = |field: &str, reason: String| ProfileError {
            file: file.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let raw: RawProfile = toml::from_str(text).map_err(|e| {
            // toml names the offending key in its message; keep its first line, which also
            // carries the line and column.
            let message = e.to_string();
            let field = e
                .span()
                .and_then(|span| text.get(span))
                .map(|s| s.split(['=', '\n']).next().unwrap_or(s).trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "(document)".to_owned());
            error(&field, message.lines().collect::<Vec<_>>().join(" "))
        })?;

        if raw.name.trim().is_empty() {
            return Err(error("name", "must not be empty".into()));
        }
        let t = &raw.timing;
        let ms = Duration::from_millis;
        if !(1..=1000).contains(&t.reply_timeout_ms) {
            return Err(error("timing.reply_timeout_ms", "must be 1–1000 ms (SAS: 20 ms)".into()));
        }
        if !(1..=100).contains(&t.inter_byte_limit_ms) {
            return Err(error("timing.inter_byte_limit_ms", "must be 1–100 ms (SAS: 5 ms)".into()));
        }
        if !(40..=5000).contains(&t.poll_spacing_ms) {
            return Err(error(
                "timing.poll_spacing_ms",
                "must be 40–5000 ms: SAS forbids polling faster than 40 ms or slower than 5 s"
                    .into(),
            ));
        }
        if !(1..=3).contains(&t.tries) {
            return Err(error(
                "timing.tries",
                "must be 1–3: SAS allows at most two retries".into(),
            ));
        }
        if t.offline_after == 0 {
            return Err(error("timing.offline_after", "must be at least 1".into()));
        }
        if t.busy_backoff_ms > 5000 || t.post_wakeup_delay_ms > 100 {
            let field = if t.busy_backoff_ms > 5000 {
                "timing.busy_backoff_ms"
            } else {
                "timing.post_wakeup_delay_ms"
            };
            return Err(error(
                field,
                "is out of range (busy ≤ 5000 ms, wakeup delay ≤ 100 ms)".into(),
            ));
        }
        if raw.rte.enable && !raw.rte.supported {
            return Err(error("rte.enable", "cannot be true when rte.supported is false".into()));
        }
        if raw.long_polls.unsupported.contains(&0) {
            // 0x00 after an address byte is the busy answer, never a command.
            return Err(error("long_polls.unsupported", "0x00 is not a long poll".into()));
        }
        Ok(Self {
            name: raw.name,
            description: raw.description,
            timing: Timing {
                reply_timeout: ms(t.reply_timeout_ms),
                inter_byte_limit: ms(t.inter_byte_limit_ms),
                poll_spacing: ms(t.poll_spacing_ms),
                busy_backoff: ms(t.busy_backoff_ms),
                tries: t.tries,
                offline_after: t.offline_after,
                post_wakeup_delay: ms(t.post_wakeup_delay_ms),
            },
            sync: raw.sync,
            wakeup: raw.wakeup,
            rte: RteSupport {
                supported: raw.rte.supported,
                enable: raw.rte.enable,
                repeats_last_report: raw.rte.repeats_last_report,
            },
            unsupported_long_polls: raw.long_polls.unsupported.into_iter().collect(),
            rom_signature: raw.long_polls.rom_signature,
            extended_meters: raw.meters.extended,
        })
    }

    /// The generic SAS 6.02 profile.
    pub fn generic() -> Self {
        // The shipped text is validated by the `every_built_in_profile_is_valid` test; failing
        // here would mean a broken build, not bad input.
        #[allow(clippy::expect_used)]
        Self::from_toml_str("generic-sas-602.toml", GENERIC_SAS_602)
            .expect("built-in generic profile is valid")
    }

    /// Whether this firmware answers long poll `command`.
    pub fn supports(&self, command: u8) -> bool {
        !self.unsupported_long_polls.contains(&command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_profile_is_valid() {
        let mut names = BTreeSet::new();
        for (file, text) in BUILT_IN {
            let p = FirmwareProfile::from_toml_str(file, text).unwrap();
            assert!(names.insert(p.name.clone()), "duplicate profile name {}", p.name);
            assert_eq!(format!("{}.toml", p.name), *file, "file is named after the profile");
        }
    }

    #[test]
    fn the_generic_profile_follows_the_spec_defaults() {
        let p = FirmwareProfile::generic();
        assert_eq!(p.timing.poll_spacing, Duration::from_millis(200));
        assert_eq!(p.timing.reply_timeout, Duration::from_millis(20));
        assert_eq!(p.timing.tries, 3);
        assert_eq!(p.sync, SyncStyle::SyncPoll);
    }

    #[test]
    fn an_unknown_key_is_named_with_the_file() {
        let e = FirmwareProfile::from_toml_str(
            "x.toml",
            "name = \"x\"\n[timing]\nreply_timout_ms = 20\n",
        )
        .unwrap_err();
        assert_eq!(e.file, "x.toml");
        assert!(e.to_string().contains("reply_timout_ms"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_field_and_reason() {
        let e = FirmwareProfile::from_toml_str(
            "x.toml",
            "name = \"x\"\n[timing]\npoll_spacing_ms = 10\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "timing.poll_spacing_ms");
        assert!(e.reason.contains("40"), "{e}");
        let e = FirmwareProfile::from_toml_str("x.toml", "name = \"x\"\n[timing]\ntries = 4\n")
            .unwrap_err();
        assert_eq!(e.field, "timing.tries");
        let e =
            FirmwareProfile::from_toml_str("x.toml", "name = \"x\"\n[rte]\nsupported = false\n")
                .unwrap_err();
        assert_eq!(e.field, "rte.enable");
    }

    #[test]
    fn a_wrong_type_is_reported_not_panicked_on() {
        let e = FirmwareProfile::from_toml_str("x.toml", "name = 3\n").unwrap_err();
        assert_eq!(e.file, "x.toml");
        assert!(e.reason.contains("string"), "{e}");
    }
}
