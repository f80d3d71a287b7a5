//! The daemon's configuration file: parsed and validated into typed values in one step ("parse,
//! don't validate"), so the rest of slotgate never sees an unchecked setting. Every error names
//! the file, the field (as a path such as `line[1].machine[0].address`) and the reason. The
//! documented example is `config/slotgate.example.toml`; a test parses it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use firmware_protocols::FirmwareProfile;
use firmware_protocols::profile::BUILT_IN;
use firmware_protocols::sas::Address;
use serde::Deserialize;

use crate::event::money::Currency;
use crate::event::{RegistryId, TicketNumbers, VenueId};

/// The registry id the gateway files the audit trail of remote commands under (`command`); no
/// machine may have it, or its events and the audit records would share one sequence.
pub const COMMAND_AUDIT_MACHINE: &str = "gateway:commands";

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: field `{field}`: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from; relative profile paths are resolved against its folder.
    pub file: PathBuf,
    pub venue: Venue,
    pub polling: Polling,
    pub storage: Storage,
    pub journal: JournalSettings,
    pub admin: Admin,
    pub lines: Vec<LineConfig>,
    /// Where events are forwarded (the state system); none means journal only.
    pub destinations: Vec<DestinationConfig>,
    /// Who may switch machines off and on remotely (issue 10); no keys means nobody.
    pub commands: CommandSettings,
}

/// What the daemon exposes to the venue's operators.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admin {
    /// Serve Prometheus metrics (`GET /metrics`) on this address; none by default.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The admin socket (`docs/admin-api.md`); [`DEFAULT_ADMIN_SOCKET`] by default.
    pub socket: PathBuf,
}

/// Where the admin socket is unless `admin.socket` says otherwise: systemd's
/// `RuntimeDirectory=slotgate`.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/slotgate/admin.sock";

/// The venue every event is attributed to.
#[derive(Debug, Clone)]
pub struct Venue {
    /// The venue's identifier in the state registry.
    pub id: VenueId,
    /// ISO 4217 currency the machines' credits are worth, with its number of minor-unit digits.
    pub currency: Currency,
    /// IANA name of the zone the machines' clocks run in (SAS clocks carry no zone, §8).
    pub time_zone_name: String,
    pub time_zone: jiff::tz::TimeZone,
    /// This gateway within the venue: part of the upstream `source` and of alarm ids.
    pub gateway_id: String,
    /// `ticket_numbers`: `masked` (default; last 4 digits) or `full`. A ticket's validation
    /// number is a bearer instrument.
    pub ticket_numbers: TicketNumbers,
}

/// One upstream destination (the state system's MQTT broker or HTTPS endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationConfig {
    /// Unique; names the journal cursor, so renaming a destination replays everything kept.
    pub name: String,
    pub kind: DestinationKind,
    /// The backlog's rate budget: records per second on average, and at most this many at once.
    pub replay_rate: u32,
    pub replay_burst: u32,
    /// Whether new events wait for the backlog (requirements R8; `forward::outbox`).
    pub order: crate::forward::outbox::Order,
    /// TLS material; `None` only for plaintext, which needs `allow_plaintext`.
    pub tls: Option<crate::forward::tls::TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationKind {
    Mqtt(MqttDestination),
    Https(HttpsDestination),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttDestination {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Topic template: `{venue}`, `{gateway}` and `{machine}` are replaced.
    pub topic: String,
    pub username: Option<String>,
    /// The password (or token) is read from this file at start, never from the config itself.
    pub password_file: Option<PathBuf>,
    pub keep_alive: Duration,
    /// Messages in flight (unacknowledged) at most.
    pub max_in_flight: u16,
    /// No acknowledgement for this long while messages are in flight: the connection is
    /// recycled (a connected-but-stuck client).
    pub stuck_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsDestination {
    pub url: String,
    /// `Authorization: Bearer` token, read from this file at start.
    pub token_file: Option<PathBuf>,
    /// `X-Api-Key`, read from this file at start.
    pub api_key_file: Option<PathBuf>,
    /// Key of the `X-Slotgate-Signature` HMAC-SHA256 over each body, read from this file.
    pub hmac_key_file: Option<PathBuf>,
    pub batch_size: usize,
    pub timeout: Duration,
    /// Where pending remote commands are fetched; `None`: this state system sends none.
    pub commands: Option<CommandPoll>,
}

/// The periodic fetch of pending remote commands from an HTTPS destination
/// (docs/upstream-protocol.md, "Remote commands over HTTPS").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPoll {
    /// `GET {url}/pending`, `POST {url}/{id}/ack`; no query, no user info.
    pub url: String,
    pub interval: Duration,
}

/// How often the gateway asks for what machines do not volunteer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polling {
    /// A full meter snapshot (LP1C, LP0F) this often, besides link-up and resyncs.
    pub meter_snapshot_interval: Duration,
    /// Set the machine clock (LP7F) at link-up and this often.
    pub clock_sync_interval: Duration,
    /// A machine clock further than this from the gateway's is reported as drift.
    pub clock_drift_threshold: Duration,
}

/// The gateway's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Holds `journal/`, `quarantine/`, `lines/` (per-line resume records) and `status.json`.
    pub dir: PathBuf,
}

impl Storage {
    pub fn journal_dir(&self) -> PathBuf {
        self.dir.join("journal")
    }

    pub fn quarantine_dir(&self) -> PathBuf {
        self.dir.join("quarantine")
    }

    pub fn lines_dir(&self) -> PathBuf {
        self.dir.join("lines")
    }

    pub fn status_file(&self) -> PathBuf {
        self.dir.join("status.json")
    }
}

/// The journal's limits and tamper evidence (see `src/journal/mod.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSettings {
    /// Live record bytes the journal aims to stay under; alarms at 50/80/95 %.
    pub cap_bytes: u64,
    /// Free space below which events are refused (machines hold them).
    pub disk_floor_bytes: u64,
    /// sled's cache.
    pub cache_bytes: u64,
    /// Acknowledged records are kept this long while space allows.
    pub retain_acknowledged: Duration,
    /// The Ed25519 key that signs checkpoints; none disables them (with a warning).
    pub signing_key: Option<PathBuf>,
    /// Public keys of earlier signing keys, so their checkpoints keep verifying.
    pub trusted_keys: Vec<PathBuf>,
    pub checkpoint_interval: Duration,
}

/// One SAS line: a serial port or a 9-bit TCP device server, and the machines on it.
#[derive(Debug, Clone)]
pub struct LineConfig {
    pub name: String,
    pub endpoint: Endpoint,
    pub profile: FirmwareProfile,
    pub machines: Vec<MachineConfig>,
}

impl LineConfig {
    /// How the transport opens the line: the endpoint with the profile's wakeup style (unless
    /// the line overrides it) and post-wakeup pause. The daemon and `slotgate probe` open lines
    /// the same way.
    pub fn transport(&self) -> crate::transport::TransportConfig {
        use crate::transport::{SerialConfig, TcpConfig, TransportConfig};
        let post_wakeup_delay = self.profile.timing.post_wakeup_delay;
        match &self.endpoint {
            Endpoint::Tcp { address, connect_timeout } => TransportConfig::Tcp(TcpConfig {
                connect_timeout: *connect_timeout,
                post_wakeup_delay,
                ..TcpConfig::new(address.clone())
            }),
            Endpoint::Serial { device, wakeup } => TransportConfig::Serial(SerialConfig {
                wakeup: wakeup.unwrap_or_else(|| self.profile.wakeup.into()),
                post_wakeup_delay,
                ..SerialConfig::new(device.display().to_string())
            }),
        }
    }
}

/// How a line is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A 9-bit-capable device server or SMIB, two bytes per character.
    Tcp { address: String, connect_timeout: Duration },
    /// A local UART; `wakeup` overrides the profile's way of producing the 9th bit.
    Serial { device: PathBuf, wakeup: Option<crate::transport::WakeupStyle> },
}

/// One machine on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// SAS address, 1–127.
    pub address: Address,
    /// The state registry's unique id of this machine.
    pub registry_id: RegistryId,
    /// The venue's asset number, if it has one.
    pub asset: Option<String>,
    /// The accounting denomination as registered, as a SAS denomination code; prices events
    /// before LP1F has been read (the machine's own LP1F answer then takes precedence).
    pub denomination_code: Option<u8>,
}

// === Raw file shape ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    venue: RawVenue,
    #[serde(default)]
    polling: RawPolling,
    storage: RawStorage,
    #[serde(default)]
    journal: RawJournal,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    line: Vec<RawLine>,
    #[serde(default)]
    destination: Vec<RawDestination>,
    #[serde(default)]
    commands: RawCommands,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    name: String,
    kind: DestinationKindName,
    url: String,
    #[serde(default)]
    allow_plaintext: bool,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    #[serde(default = "default_replay_rate")]
    replay_rate: u32,
    #[serde(default = "default_replay_burst")]
    replay_burst: u32,
    #[serde(default)]
    order: crate::forward::outbox::Order,
    // MQTT
    client_id: Option<String>,
    topic: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    keep_alive: Duration,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: u16,
    #[serde(default = "default_stuck_after", with = "humantime_serde")]
    stuck_after: Duration,
    // HTTPS
    token_file: Option<PathBuf>,
    api_key_file: Option<PathBuf>,
    hmac_key_file: Option<PathBuf>,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    timeout: Duration,
    commands_url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    commands_interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DestinationKindName {
    Mqtt,
    Https,
}

fn default_replay_rate() -> u32 {
    2_000
}

fn default_replay_burst() -> u32 {
    1_000
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn default_max_in_flight() -> u16 {
    100
}

fn default_stuck_after() -> Duration {
    Duration::from_secs(30)
}

fn default_batch_size() -> usize {
    500
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How often pending remote commands are fetched unless configured: a disable waits at most
/// this long at the state system.
const DEFAULT_COMMANDS_INTERVAL: Duration = Duration::from_secs(10);

/// Default MQTT topic template.
pub const DEFAULT_TOPIC: &str = "slotgate/{venue}/{machine}/events";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVenue {
    id: String,
    currency: String,
    #[serde(default = "default_minor_digits")]
    currency_minor_digits: u8,
    time_zone: String,
    #[serde(default = "default_gateway_id")]
    gateway_id: String,
    #[serde(default)]
    ticket_numbers: Option<String>,
}

fn default_gateway_id() -> String {
    "gateway".to_owned()
}

fn default_minor_digits() -> u8 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPolling {
    #[serde(with = "humantime_serde")]
    meter_snapshot_interval: Duration,
    #[serde(with = "humantime_serde")]
    clock_sync_interval: Duration,
    #[serde(with = "humantime_serde")]
    clock_drift_threshold: Duration,
}

impl Default for RawPolling {
    fn default() -> Self {
        Self {
            meter_snapshot_interval: Duration::from_secs(5 * 60),
            clock_sync_interval: Duration::from_secs(24 * 3600),
            clock_drift_threshold: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    metrics_listen: Option<String>,
    socket: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawJournal {
    cap: String,
    disk_floor: String,
    cache: String,
    #[serde(with = "humantime_serde")]
    retain_acknowledged: Duration,
    signing_key: Option<PathBuf>,
    trusted_keys: Vec<PathBuf>,
    #[serde(with = "humantime_serde")]
    checkpoint_interval: Duration,
}

impl Default for RawJournal {
    fn default() -> Self {
        Self {
            cap: "4GiB".into(),
            disk_floor: "512MiB".into(),
            cache: "16MiB".into(),
            retain_acknowledged: Duration::from_secs(90 * 24 * 3600),
            signing_key: None,
            trusted_keys: Vec::new(),
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

/// A byte size: a whole number with an optional `KiB`, `MiB`, `GiB` or `TiB` suffix.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size like \"4GiB\""))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        other => return Err(format!("unknown unit `{other}` (use B, KiB, MiB, GiB or TiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{text}` is too large"))
}

fn validate_journal(raw: &RawJournal, paths: Paths<'_>) -> Result<JournalSettings, FieldError> {
    let cap_bytes = parse_size(&raw.cap).map_err(|r| ("journal.cap", r))?;
    if cap_bytes < 1 << 20 {
        return Err(("journal.cap", "must be at least 1MiB".into()));
    }
    let disk_floor_bytes = parse_size(&raw.disk_floor).map_err(|r| ("journal.disk_floor", r))?;
    let cache_bytes = parse_size(&raw.cache).map_err(|r| ("journal.cache", r))?;
    if !(1 << 20..=4 << 30).contains(&cache_bytes) {
        return Err(("journal.cache", "must be between 1MiB and 4GiB".into()));
    }
    if raw.checkpoint_interval < Duration::from_secs(1)
        || raw.checkpoint_interval > Duration::from_secs(24 * 3600)
    {
        return Err(("journal.checkpoint_interval", "must be between 1s and 24h".into()));
    }
    let trusted_keys = raw
        .trusted_keys
        .iter()
        .map(|p| paths.resolve(p).map_err(|r| ("journal.trusted_keys", r)))
        .collect::<Result<_, _>>()?;
    Ok(JournalSettings {
        cap_bytes,
        disk_floor_bytes,
        cache_bytes,
        retain_acknowledged: raw.retain_acknowledged,
        signing_key: paths.optional("journal.signing_key", &raw.signing_key)?,
        trusted_keys,
        checkpoint_interval: raw.checkpoint_interval,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    name: String,
    kind: LineKind,
    address: Option<String>,
    device: Option<PathBuf>,
    wakeup: Option<crate::transport::WakeupStyle>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_profile")]
    profile: String,
    #[serde(default)]
    machine: Vec<RawMachine>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LineKind {
    Tcp,
    Serial,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    address: u8,
    registry_id: String,
    asset: Option<String>,
    denomination: Option<String>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_profile() -> String {
    "generic-sas-602".to_owned()
}

// === Remote commands (issue 10) ===

/// Who may switch machines off and on remotely, and the rules their commands meet
/// (`command::verify` applies them; docs/upstream-protocol.md, "Remote commands").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSettings {
    /// Trusted issuer keys; several at once is how keys rotate.
    pub keys: Vec<IssuerKey>,
    /// How far a command's `issued_at` may lie ahead of the gateway's clock.
    pub max_clock_skew: Duration,
    /// A command naming more machines than this is a bulk command.
    pub bulk_threshold: usize,
    /// Signatures from distinct keys a bulk command needs (1 or 2).
    pub bulk_signatures: usize,
    /// What happens to a command for a machine that is offline when it arrives.
    pub offline_policy: OfflinePolicy,
    /// How long after the machine's ACK a shutdown must see no new game start to be done.
    pub confirm_window: Duration,
    /// The technician key (a secret Ed25519 key file, `journal keygen`'s format) with which the
    /// daemon signs `slotgate machine disable|enable` from the admin socket. Its public half
    /// must be a current `[[commands.keys]]` entry; none: no local commands.
    pub local_key: Option<PathBuf>,
}

impl CommandSettings {
    /// The local technician key and the id of the trusted key that is its public half (the
    /// first current one with that public key). The reason when it cannot be used.
    pub fn local_issuer(&self) -> Result<Option<(String, ed25519_dalek::SigningKey)>, String> {
        let Some(path) = &self.local_key else { return Ok(None) };
        let key = crate::journal::checkpoint::load_signing_key(path).map_err(|e| e.to_string())?;
        let public = key.verifying_key();
        for trusted in self.keys.iter().filter(|k| !k.retired) {
            if crate::journal::checkpoint::load_public_key(&trusted.public_key_file)
                .is_ok_and(|k| k == public)
            {
                return Ok(Some((trusted.id.clone(), key)));
            }
        }
        Err(format!("the public half of {} is no current key of [[commands.keys]]", path.display()))
    }
}

/// One trusted issuer key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerKey {
    /// The `key_id` commands name it by.
    pub id: String,
    /// 64 hex digits of an Ed25519 public key (the format of `journal keygen`'s `.pub`).
    pub public_key_file: PathBuf,
    /// The actions it may sign.
    pub roles: Vec<command_envelope::Action>,
    /// Kept so that its commands are rejected as retired rather than as unknown.
    pub retired: bool,
}

/// Commands for a machine that is offline when they arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflinePolicy {
    /// Keep the command until the machine is back or the command expires.
    #[default]
    Queue,
    /// Reject it at once.
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCommands {
    keys: Vec<RawIssuerKey>,
    #[serde(with = "humantime_serde")]
    max_clock_skew: Duration,
    bulk_threshold: usize,
    bulk_signatures: usize,
    offline_policy: OfflinePolicy,
    #[serde(with = "humantime_serde")]
    confirm_window: Duration,
    local_key: Option<PathBuf>,
}

impl Default for RawCommands {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            max_clock_skew: Duration::from_secs(300),
            bulk_threshold: 10,
            bulk_signatures: 2,
            offline_policy: OfflinePolicy::Queue,
            confirm_window: Duration::from_secs(60),
            local_key: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuerKey {
    id: String,
    public_key_file: PathBuf,
    roles: Vec<command_envelope::Action>,
    #[serde(default)]
    retired: bool,
}

fn validate_commands(
    raw: &RawCommands,
    paths: Paths<'_>,
) -> Result<CommandSettings, (String, String)> {
    let mut keys: Vec<IssuerKey> = Vec::new();
    for (i, key) in raw.keys.iter().enumerate() {
        let at = |field: &str| format!("commands.keys[{i}].{field}");
        if key.id.is_empty()
            || key.id.len() > command_envelope::MAX_KEY_ID_LEN
            || !key.id.chars().all(|c| c.is_ascii_graphic())
        {
            return Err((at("id"), "must be 1–64 printable ASCII characters".into()));
        }
        if keys.iter().any(|k| k.id == key.id) {
            return Err((at("id"), format!("`{}` names two keys", key.id)));
        }
        if key.roles.is_empty() {
            return Err((at("roles"), "name at least one of \"disable\", \"enable\"".into()));
        }
        let mut roles = Vec::new();
        for role in &key.roles {
            if !roles.contains(role) {
                roles.push(*role);
            }
        }
        let public_key_file =
            paths.resolve(&key.public_key_file).map_err(|r| (at("public_key_file"), r))?;
        keys.push(IssuerKey { id: key.id.clone(), public_key_file, roles, retired: key.retired });
    }
    if raw.max_clock_skew < Duration::from_secs(1) || raw.max_clock_skew > Duration::from_secs(3600)
    {
        return Err(("commands.max_clock_skew".into(), "must be between 1s and 1h".into()));
    }
    if raw.bulk_threshold == 0 {
        return Err(("commands.bulk_threshold".into(), "must be at least 1".into()));
    }
    if !(1..=2).contains(&raw.bulk_signatures) {
        return Err(("commands.bulk_signatures".into(), "must be 1 or 2".into()));
    }
    if raw.confirm_window < Duration::from_secs(1) || raw.confirm_window > Duration::from_secs(3600)
    {
        return Err(("commands.confirm_window".into(), "must be between 1s and 1h".into()));
    }
    Ok(CommandSettings {
        keys,
        max_clock_skew: raw.max_clock_skew,
        bulk_threshold: raw.bulk_threshold,
        bulk_signatures: raw.bulk_signatures,
        offline_policy: raw.offline_policy,
        confirm_window: raw.confirm_window,
        local_key: paths
            .optional("commands.local_key", &raw.local_key)
            .map_err(|(field, reason)| (field.to_owned(), reason))?,
    })
}

// === Loading ===

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            field: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_toml_str(path, &text)
    }

    /// Validates configuration text; `path` names it in errors and anchors relative paths.
    /// Credential paths (`credential:NAME`) are read in `$CREDENTIALS_DIRECTORY`.
    pub fn from_toml_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from);
        Self::from_toml_str_with(path, text, credentials.as_deref())
    }

    /// [`Config::from_toml_str`] with the credentials directory given.
    fn from_toml_str_with(
        path: &Path,
        text: &str,
        credentials: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let error = |field: &str, reason: String| ConfigError {
            file: file.clone(),
            field: field.to_owned(),
            reason,
        };
        let raw: RawConfig = toml::Deserializer::parse(text)
            .map_err(|e| error("(document)", one_line(&e.to_string())))
            .and_then(|de| {
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let field = match e.path().to_string() {
                        p if p == "." => "(document)".to_owned(),
                        p => p,
                    };
                    error(&field, one_line(&e.inner().to_string()))
                })
            })?;

        let venue = validate_venue(&raw.venue).map_err(|(f, r)| error(f, r))?;
        let polling = validate_polling(&raw.polling).map_err(|(f, r)| error(f, r))?;
        if raw.line.is_empty() {
            return Err(error("line", "at least one [[line]] is needed".into()));
        }
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let paths = Paths { base, credentials };
        let mut names = BTreeSet::new();
        let mut registry_ids: BTreeMap<String, String> = BTreeMap::new();
        let mut lines = Vec::new();
        for (i, line) in raw.line.iter().enumerate() {
            let at = |field: &str| format!("line[{i}].{field}");
            if line.name.trim().is_empty() {
                return Err(error(&at("name"), "must not be empty".into()));
            }
            if !names.insert(line.name.clone()) {
                return Err(error(&at("name"), format!("`{}` names two lines", line.name)));
            }
            let endpoint = match line.kind {
                LineKind::Tcp => {
                    if line.device.is_some() {
                        return Err(error(&at("device"), "only for kind = \"serial\"".into()));
                    }
                    if line.wakeup.is_some() {
                        return Err(error(&at("wakeup"), "only for kind = \"serial\"".into()));
                    }
                    let address = line.address.clone().ok_or_else(|| {
                        error(&at("address"), "required for kind = \"tcp\"".into())
                    })?;
                    validate_host_port(&address).map_err(|r| error(&at("address"), r))?;
                    if line.connect_timeout.is_zero()
                        || line.connect_timeout > Duration::from_secs(60)
                    {
                        return Err(error(
                            &at("connect_timeout"),
                            "must be between 1 ms and 60 s".into(),
                        ));
                    }
                    Endpoint::Tcp { address, connect_timeout: line.connect_timeout }
                }
                LineKind::Serial => {
                    if line.address.is_some() {
                        return Err(error(&at("address"), "only for kind = \"tcp\"".into()));
                    }
                    let device = line.device.clone().ok_or_else(|| {
                        error(&at("device"), "required for kind = \"serial\"".into())
                    })?;
                    if device.as_os_str().is_empty() {
                        return Err(error(&at("device"), "must not be empty".into()));
                    }
                    Endpoint::Serial { device, wakeup: line.wakeup }
                }
            };
            let profile =
                load_profile(base, &line.profile).map_err(|r| error(&at("profile"), r))?;
            if line.machine.is_empty() {
                return Err(error(
                    &at("machine"),
                    "a line needs at least one [[line.machine]]".into(),
                ));
            }
            let mut addresses = BTreeSet::new();
            let mut machines = Vec::new();
            for (j, m) in line.machine.iter().enumerate() {
                let at = |field: &str| format!("line[{i}].machine[{j}].{field}");
                let address = Address::new(m.address).ok_or_else(|| {
                    error(
                        &at("address"),
                        format!("{} is not a SAS machine address (1–127)", m.address),
                    )
                })?;
                if !addresses.insert(m.address) {
                    return Err(error(
                        &at("address"),
                        format!("address {} is used twice on this line", m.address),
                    ));
                }
                let registry_id = RegistryId::new(m.registry_id.clone()).map_err(|_| {
                    error(&at("registry_id"), format!("`{}` {ID_RULE}", m.registry_id))
                })?;
                if m.registry_id == COMMAND_AUDIT_MACHINE {
                    return Err(error(
                        &at("registry_id"),
                        format!(
                            "`{COMMAND_AUDIT_MACHINE}` is reserved for the audit trail of remote \
                             commands"
                        ),
                    ));
                }
                if let Some(other) = registry_ids.insert(m.registry_id.clone(), at("registry_id")) {
                    return Err(error(
                        &at("registry_id"),
                        format!("`{}` is already the registry id at {other}", m.registry_id),
                    ));
                }
                let denomination_code = match &m.denomination {
                    None => None,
                    Some(text) => {
                        Some(denomination_code(text).map_err(|r| error(&at("denomination"), r))?)
                    }
                };
                machines.push(MachineConfig {
                    address,
                    registry_id,
                    denomination_code,
                    asset: m.asset.clone().filter(|a| !a.trim().is_empty()),
                });
            }
            lines.push(LineConfig { name: line.name.clone(), endpoint, profile, machines });
        }
        let dir = if raw.storage.dir.is_relative() {
            base.join(&raw.storage.dir)
        } else {
            raw.storage.dir.clone()
        };
        if dir.as_os_str().is_empty() {
            return Err(error("storage.dir", "must not be empty".into()));
        }
        let journal = validate_journal(&raw.journal, paths).map_err(|(f, r)| error(f, r))?;
        let metrics_listen = match &raw.admin.metrics_listen {
            None => None,
            Some(text) => Some(text.parse::<std::net::SocketAddr>().map_err(|_| {
                error(
                    "admin.metrics_listen",
                    format!("`{text}` is not an IP address and port, e.g. \"127.0.0.1:9464\""),
                )
            })?),
        };
        let socket = match &raw.admin.socket {
            Some(path) if path.is_relative() => base.join(path),
            Some(path) => path.clone(),
            None => PathBuf::from(DEFAULT_ADMIN_SOCKET),
        };
        // sun_path holds 108 bytes with the terminating NUL.
        if socket.as_os_str().len() > 107 {
            return Err(error(
                "admin.socket",
                format!(
                    "{} is longer than a Unix socket path may be (107 bytes)",
                    socket.display()
                ),
            ));
        }
        let mut destinations = Vec::new();
        for (i, raw) in raw.destination.iter().enumerate() {
            let destination = validate_destination(raw, &venue, paths)
                .map_err(|(f, r)| error(&format!("destination[{i}].{f}"), r))?;
            if destinations.iter().any(|d: &DestinationConfig| d.name == destination.name) {
                return Err(error(
                    &format!("destination[{i}].name"),
                    format!("`{}` names two destinations", destination.name),
                ));
            }
            destinations.push(destination);
        }
        Ok(Self {
            file: path.to_path_buf(),
            venue,
            polling,
            storage: Storage { dir },
            journal,
            admin: Admin { metrics_listen, socket },
            lines,
            destinations,
            commands: validate_commands(&raw.commands, paths).map_err(|(f, r)| error(&f, r))?,
        })
    }

    /// Machines across all lines.
    pub fn machine_count(&self) -> usize {
        self.lines.iter().map(|l| l.machines.len()).sum()
    }

    /// Checks the files the configuration names as the daemon will use them, as the user running
    /// this: keys, certificates and secrets exist and can be read and parsed, secrets are not
    /// readable by group or others, and (with `devices`) every serial device exists and can be
    /// opened for reading and writing. `config check` and the start of `run` both call it, so
    /// an unusable file is a configuration error (exit status 2) naming its field.
    pub fn check_files(&self, devices: bool) -> Result<(), ConfigError> {
        let error = |field: String, reason: String| ConfigError {
            file: self.file.display().to_string(),
            field,
            reason,
        };
        if let Some(key) = &self.journal.signing_key {
            crate::journal::checkpoint::load_signing_key(key)
                .map_err(|e| error("journal.signing_key".into(), e.to_string()))?;
        }
        for (i, key) in self.journal.trusted_keys.iter().enumerate() {
            crate::journal::checkpoint::load_public_key(key)
                .map_err(|e| error(format!("journal.trusted_keys[{i}]"), e.to_string()))?;
        }
        for (i, key) in self.commands.keys.iter().enumerate() {
            crate::journal::checkpoint::load_public_key(&key.public_key_file)
                .map_err(|e| error(format!("commands.keys[{i}].public_key_file"), e.to_string()))?;
        }
        self.commands
            .local_issuer()
            .map_err(|reason| error("commands.local_key".into(), reason))?;
        for (i, d) in self.destinations.iter().enumerate() {
            let at = |field: &str| format!("destination[{i}].{field}");
            // (field, file, whether it goes into an HTTP header as it is)
            let secrets = match &d.kind {
                DestinationKind::Mqtt(m) => vec![("password_file", &m.password_file, false)],
                DestinationKind::Https(h) => vec![
                    ("token_file", &h.token_file, true),
                    ("api_key_file", &h.api_key_file, true),
                    ("hmac_key_file", &h.hmac_key_file, false),
                ],
            };
            for (field, path, header) in secrets {
                let Some(path) = path else { continue };
                let text = secret_file(path).map_err(|r| error(at(field), r))?;
                if header && text.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    let reason = format!(
                        "{} holds control characters, which cannot go in an HTTP header",
                        path.display()
                    );
                    return Err(error(at(field), reason));
                }
            }
            let Some(tls) = &d.tls else { continue };
            for (field, path) in [("ca_file", &tls.ca_file), ("client_cert", &tls.client_cert)] {
                if let Some(path) = path {
                    readable_file(path).map_err(|r| error(at(field), r))?;
                }
            }
            if let Some(path) = &tls.client_key {
                secret_file(path).map_err(|r| error(at("client_key"), r))?;
            }
            // What is left to fail is the content: a certificate that is not one, a key that is
            // not the certificate's, no CA at all.
            let field = if tls.client_cert.is_some() { "client_cert" } else { "ca_file" };
            crate::forward::tls::client_config(tls)
                .map_err(|e| error(at(field), format!("{e:#}")))?;
        }
        if devices {
            for (i, line) in self.lines.iter().enumerate() {
                if let Endpoint::Serial { device, .. } = &line.endpoint {
                    serial_device(device).map_err(|r| error(format!("line[{i}].device"), r))?;
                }
            }
        }
        Ok(())
    }
}

/// A file that can be opened and read, not a directory.
fn readable_file(path: &Path) -> Result<std::fs::Metadata, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read {shown}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("{shown} is a directory, not a file"));
    }
    Ok(meta)
}

/// A password, token or key: readable, not empty, and private to its owner (as the journal's
/// signing key must be). Returns its content without surrounding white space, as it is used.
fn secret_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = readable_file(path)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:03o}); chmod 600 it",
            path.display()
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim_ascii();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text.to_vec())
}

/// A character device this process may read and write (opening it could disturb a line in
/// use, so only its permissions are checked).
fn serial_device(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if !meta.file_type().is_char_device() {
        return Err(format!("{shown} is not a serial device (not a character device)"));
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK)
        .map_err(|e| {
            format!("{shown} cannot be opened for reading and writing: {e} (is the user in the dialout group?)")
        })
}

/// toml's multi-line message (location, source excerpt with carets, reason) as one line:
/// `line 12, column 1: unknown field …`.
fn one_line(message: &str) -> String {
    let is_excerpt = |l: &str| {
        let l = l.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
        l.starts_with('|') || l.chars().all(|c| c == '^' || c == ' ')
    };
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_excerpt(l))
        .map(|l| l.strip_prefix("TOML parse error at ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(": ")
}

type FieldError = (&'static str, String);

fn validate_destination(
    raw: &RawDestination,
    venue: &Venue,
    paths: Paths<'_>,
) -> Result<DestinationConfig, FieldError> {
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 64
        && raw.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(("name", format!("`{}` must be 1–64 characters of A–Z a–z 0–9 - _", raw.name)));
    }
    // The files are checked by `Config::check_files`, which also reads them.
    // A user name and password in the URL would be printed wherever the URL is (logs, status):
    // refused without echoing it. Messages below show the URL without its query, which may
    // carry a token.
    let (scheme, rest) = raw.url.split_once("://").unwrap_or(("", &raw.url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err((
            "url",
            "must not carry a user name or password (user:password@host); put the credential in \
             password_file (MQTT) or token_file (HTTPS)"
                .into(),
        ));
    }
    let shown = raw.url.split(['?', '#']).next().unwrap_or_default();
    if scheme.is_empty() {
        return Err(("url", format!("`{shown}` is not a URL like \"mqtts://host:8883\"")));
    }
    let secure = match (raw.kind, scheme) {
        (DestinationKindName::Mqtt, "mqtts") | (DestinationKindName::Https, "https") => true,
        (DestinationKindName::Mqtt, "mqtt") | (DestinationKindName::Https, "http") => false,
        (DestinationKindName::Mqtt, _) => {
            return Err(("url", format!("`{shown}`: an MQTT destination needs mqtts://")));
        }
        (DestinationKindName::Https, _) => {
            return Err(("url", format!("`{shown}`: an HTTPS destination needs https://")));
        }
    };
    if !secure && !raw.allow_plaintext {
        return Err((
            "url",
            format!(
                "`{shown}` is plaintext: events and credentials would cross the network readable; \
                 use TLS, or set allow_plaintext = true (tests only)"
            ),
        ));
    }
    let tls = if secure {
        let files = crate::forward::tls::TlsFiles {
            ca_file: paths.optional("ca_file", &raw.ca_file)?,
            client_cert: paths.optional("client_cert", &raw.client_cert)?,
            client_key: paths.optional("client_key", &raw.client_key)?,
        };
        if files.client_cert.is_some() != files.client_key.is_some() {
            return Err(("client_key", "client_cert and client_key go together".into()));
        }
        Some(files)
    } else {
        None
    };
    if raw.replay_rate == 0 || raw.replay_burst == 0 {
        return Err(("replay_rate", "replay_rate and replay_burst must be at least 1".into()));
    }
    let mqtt_only = [
        ("client_id", raw.client_id.is_some()),
        ("topic", raw.topic.is_some()),
        ("username", raw.username.is_some()),
        ("password_file", raw.password_file.is_some()),
    ];
    let https_only = [
        ("token_file", raw.token_file.is_some()),
        ("api_key_file", raw.api_key_file.is_some()),
        ("hmac_key_file", raw.hmac_key_file.is_some()),
        ("commands_url", raw.commands_url.is_some()),
        ("commands_interval", raw.commands_interval.is_some()),
    ];
    let kind = match raw.kind {
        DestinationKindName::Mqtt => {
            if let Some((field, _)) = https_only.iter().find(|(_, set)| *set) {
                return Err((field, "only for kind = \"https\"".into()));
            }
            let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
                Some((host, port)) => {
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| ("url", format!("`{shown}`: bad port `{port}`")))?;
                    (host.to_owned(), port)
                }
                None => (rest.trim_end_matches('/').to_owned(), if secure { 8883 } else { 1883 }),
            };
            if host.is_empty() || host.contains('/') {
                return Err(("url", format!("`{shown}`: expected scheme://host[:port]")));
            }
            let topic = raw.topic.clone().unwrap_or_else(|| DEFAULT_TOPIC.to_owned());
            if topic.is_empty() || topic.contains(['+', '#']) || !topic.contains("{machine}") {
                return Err((
                    "topic",
                    format!("`{topic}`: needs {{machine}} and no wildcards (+ #)"),
                ));
            }
            if raw.max_in_flight == 0 {
                return Err(("max_in_flight", "must be at least 1".into()));
            }
            if raw.stuck_after < Duration::from_secs(1) {
                return Err(("stuck_after", "must be at least 1s".into()));
            }
            if raw.keep_alive < Duration::from_secs(1) {
                return Err(("keep_alive", "must be at least 1s".into()));
            }
            let client_id = raw
                .client_id
                .clone()
                .unwrap_or_else(|| format!("slotgate-{}-{}", venue.id, venue.gateway_id));
            // The session is persistent, which needs a client id (rumqttc asserts it).
            if client_id.is_empty()
                || client_id.len() > 256
                || client_id.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err((
                    "client_id",
                    format!("`{client_id}` must be 1–256 characters without spaces"),
                ));
            }
            DestinationKind::Mqtt(MqttDestination {
                host,
                port,
                client_id,
                topic,
                username: raw.username.clone(),
                password_file: paths.optional("password_file", &raw.password_file)?,
                keep_alive: raw.keep_alive,
                max_in_flight: raw.max_in_flight,
                stuck_after: raw.stuck_after,
            })
        }
        DestinationKindName::Https => {
            if let Some((field, _)) = mqtt_only.iter().find(|(_, set)| *set) {
                return Err((field, "only for kind = \"mqtt\"".into()));
            }
            if raw.batch_size == 0 || raw.batch_size > 10_000 {
                return Err(("batch_size", "must be between 1 and 10000".into()));
            }
            if raw.timeout.is_zero() {
                return Err(("timeout", "must be more than 0s".into()));
            }
            let commands = validate_command_poll(raw, secure)?;
            DestinationKind::Https(HttpsDestination {
                url: raw.url.clone(),
                token_file: paths.optional("token_file", &raw.token_file)?,
                api_key_file: paths.optional("api_key_file", &raw.api_key_file)?,
                hmac_key_file: paths.optional("hmac_key_file", &raw.hmac_key_file)?,
                batch_size: raw.batch_size,
                timeout: raw.timeout,
                commands,
            })
        }
    };
    Ok(DestinationConfig {
        name: raw.name.clone(),
        kind,
        replay_rate: raw.replay_rate,
        replay_burst: raw.replay_burst,
        order: raw.order,
        tls,
    })
}

/// `commands_url` and `commands_interval` of an HTTPS destination whose events go over TLS
/// (`secure`) or not.
fn validate_command_poll(
    raw: &RawDestination,
    secure: bool,
) -> Result<Option<CommandPoll>, FieldError> {
    let Some(url) = &raw.commands_url else {
        return match raw.commands_interval {
            Some(_) => Err(("commands_interval", "needs commands_url".into())),
            None => Ok(None),
        };
    };
    let (scheme, rest) = url.split_once("://").unwrap_or_default();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let reason = if authority.contains('@') {
        Some("must not carry a user name or password; the destination's token_file is sent")
    } else if url.contains(['?', '#']) {
        Some("must not have a query or fragment: `/pending` and `/{id}/ack` are appended to it")
    } else if authority.is_empty() || !(scheme == "https" || (scheme == "http" && !secure)) {
        Some("must be an https:// URL (http:// only when the events url is plaintext)")
    } else {
        None
    };
    if let Some(reason) = reason {
        let shown = url.split(['?', '#']).next().unwrap_or_default();
        let shown = shown.rsplit_once('@').map_or(shown, |(_, host)| host);
        return Err(("commands_url", format!("`{shown}` {reason}")));
    }
    let interval = raw.commands_interval.unwrap_or(DEFAULT_COMMANDS_INTERVAL);
    if interval < Duration::from_secs(1) || interval > Duration::from_secs(3600) {
        return Err(("commands_interval", "must be between 1s and 1h".into()));
    }
    Ok(Some(CommandPoll { url: url.trim_end_matches('/').to_owned(), interval }))
}

/// How the paths of the file are read: relative ones from the file's folder, and systemd
/// credentials (`LoadCredential=`, systemd.exec(5)) from the directory systemd passes the
/// service in `$CREDENTIALS_DIRECTORY`, written `credential:NAME` or
/// `${CREDENTIALS_DIRECTORY}/NAME`. No other variable is expanded.
#[derive(Debug, Clone, Copy)]
struct Paths<'a> {
    base: &'a Path,
    credentials: Option<&'a Path>,
}

/// The forms of a path that name a systemd credential.
const CREDENTIAL_PREFIX: &str = "credential:";
const CREDENTIALS_VARIABLE: [&str; 2] = ["${CREDENTIALS_DIRECTORY}", "$CREDENTIALS_DIRECTORY"];

impl Paths<'_> {
    fn resolve(&self, path: &Path) -> Result<PathBuf, String> {
        let Some(text) = path.to_str() else { return Ok(self.base.join(path)) };
        let credential = match text.strip_prefix(CREDENTIAL_PREFIX) {
            Some(name) => {
                let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
                if !plain {
                    return Err(format!(
                        "`{text}`: a credential's name is a file name (what LoadCredential= \
                         gives before the colon), without `/`"
                    ));
                }
                Some(Path::new(name))
            }
            None => CREDENTIALS_VARIABLE.iter().find_map(|variable| {
                text.strip_prefix(variable).and_then(|rest| rest.strip_prefix('/')).map(Path::new)
            }),
        };
        match (credential, self.credentials) {
            (Some(name), Some(dir)) => Ok(dir.join(name)),
            (Some(_), None) => Err(format!(
                "`{text}` is a systemd credential, but CREDENTIALS_DIRECTORY is not set: \
                 systemd sets it for a service with LoadCredential=; outside systemd give the \
                 file's path"
            )),
            (None, _) if text.contains('$') => Err(format!(
                "`{text}`: only `credential:NAME` or `${{CREDENTIALS_DIRECTORY}}/NAME` is \
                 expanded in a path"
            )),
            (None, _) => Ok(self.base.join(path)),
        }
    }

    fn optional(
        &self,
        field: &'static str,
        path: &Option<PathBuf>,
    ) -> Result<Option<PathBuf>, FieldError> {
        path.as_deref().map(|p| self.resolve(p).map_err(|r| (field, r))).transpose()
    }
}

/// What registry and venue ids may contain: they are joined with `/` into idempotency keys.
const ID_RULE: &str = "must be 1–64 characters of A–Z a–z 0–9 . _ : -";

fn validate_venue(raw: &RawVenue) -> Result<Venue, FieldError> {
    let id = VenueId::new(raw.id.clone())
        .map_err(|_| ("venue.id", format!("`{}` {ID_RULE}", raw.id)))?;
    if raw.currency.len() != 3 || !raw.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err((
            "venue.currency",
            format!(
                "`{}` is not an ISO 4217 code (three capital letters, e.g. UAH, EUR)",
                raw.currency
            ),
        ));
    }
    let currency = Currency::new(&raw.currency, raw.currency_minor_digits).map_err(|e| {
        ("venue.currency_minor_digits", format!("{} is not usable: {e}", raw.currency_minor_digits))
    })?;
    let time_zone = jiff::tz::TimeZone::get(&raw.time_zone).map_err(|e| {
        ("venue.time_zone", format!("`{}` is not a known IANA time zone: {e}", raw.time_zone))
    })?;
    if RegistryId::new(raw.gateway_id.clone()).is_err() {
        return Err(("venue.gateway_id", format!("`{}` {ID_RULE}", raw.gateway_id)));
    }
    let ticket_numbers = match raw.ticket_numbers.as_deref() {
        None | Some("masked") => TicketNumbers::Masked,
        Some("full") => TicketNumbers::Full,
        Some(other) => {
            return Err((
                "venue.ticket_numbers",
                format!("`{other}` is not `masked` (the last 4 digits, the default) or `full`"),
            ));
        }
    };
    Ok(Venue {
        id,
        currency,
        time_zone_name: raw.time_zone.clone(),
        time_zone,
        gateway_id: raw.gateway_id.clone(),
        ticket_numbers,
    })
}

fn validate_polling(raw: &RawPolling) -> Result<Polling, FieldError> {
    let checks: [(&'static str, Duration, Duration, Duration); 3] = [
        (
            "polling.meter_snapshot_interval",
            raw.meter_snapshot_interval,
            Duration::from_secs(10),
            Duration::from_secs(24 * 3600),
        ),
        (
            "polling.clock_sync_interval",
            raw.clock_sync_interval,
            Duration::from_secs(60),
            Duration::from_secs(7 * 24 * 3600),
        ),
        (
            "polling.clock_drift_threshold",
            raw.clock_drift_threshold,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ),
    ];
    for (field, value, min, max) in checks {
        if value < min || value > max {
            return Err((
                field,
                format!(
                    "{} is out of range ({} to {})",
                    humantime::format_duration(value),
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ));
        }
    }
    Ok(Polling {
        meter_snapshot_interval: raw.meter_snapshot_interval,
        clock_sync_interval: raw.clock_sync_interval,
        clock_drift_threshold: raw.clock_drift_threshold,
    })
}

/// A credit value such as `"0.01"` or `"2.50"` (currency units), as the SAS denomination code
/// that has it (sas-protocol.md §7.1).
fn denomination_code(text: &str) -> Result<u8, String> {
    let text = text.trim();
    let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
    let parsed = (fraction.len() <= 2 && fraction.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("{fraction:0<2}"))
        .and_then(|f| units.parse::<u64>().ok()?.checked_mul(100)?.checked_add(f.parse().ok()?));
    let hundredths = parsed.ok_or_else(|| format!("`{text}` is not an amount like \"0.01\""))?;
    (1..=u8::MAX)
        .find(|&code| {
            firmware_protocols::sas::meter::denomination_minor_units(code) == Some(hundredths)
        })
        .ok_or_else(|| {
            format!("{text} is not a SAS denomination (0.01, 0.05, 0.10, 0.25, 1.00, …)")
        })
}

/// `host:port`, where host is an IP address or a DNS name. Resolution happens at connect time.
fn validate_host_port(address: &str) -> Result<(), String> {
    let (host, port) =
        address.rsplit_once(':').ok_or_else(|| format!("`{address}` is not HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("`{port}` is not a TCP port"))?;
    if port == 0 {
        return Err("port 0 cannot be connected to".into());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{address}` has no host"));
    }
    Ok(())
}

/// A built-in profile by name, or a TOML file by path (relative to the config file).
fn load_profile(base: &Path, name: &str) -> Result<FirmwareProfile, String> {
    if let Some((file, text)) =
        BUILT_IN.iter().find(|(file, _)| file.strip_suffix(".toml") == Some(name))
    {
        return FirmwareProfile::from_toml_str(file, text).map_err(|e| e.to_string());
    }
    if !name.ends_with(".toml") {
        let known: Vec<&str> =
            BUILT_IN.iter().filter_map(|(f, _)| f.strip_suffix(".toml")).collect();
        return Err(format!(
            "`{name}` is neither a built-in profile ({}) nor a path to a .toml file",
            known.join(", ")
        ));
    }
    let path = base.join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read profile {}: {e}", path.display()))?;
    FirmwareProfile::from_toml_str(&path.display().to_string(), &text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[venue]
id = "UA-0042"
currency = "UAH"
time_zone = "Europe/Kyiv"

[storage]
dir = "state"

[[line]]
name = "a"
kind = "tcp"
address = "127.0.0.1:4001"

[[line.machine]]
address = 1
registry_id = "EGM-1"
"#;

    fn check(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(Path::new("/etc/slotgate/slotgate.toml"), text)
    }

    fn field_of(text: &str) -> String {
        check(text).expect_err("invalid config").field
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/slotgate.example.toml");
        let config = Config::load(&path).unwrap();
        assert!(config.machine_count() >= 2);
        assert_eq!(config.venue.currency, Currency::UAH);
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let c = check(MINIMAL).unwrap();
        assert_eq!(c.polling.meter_snapshot_interval, Duration::from_secs(300));
        assert_eq!(c.lines[0].profile.name, "generic-sas-602");
        assert_eq!(c.storage.journal_dir(), Path::new("/etc/slotgate/state/journal"));
        assert_eq!(c.journal.cap_bytes, 4 << 30);
        assert_eq!(c.journal.disk_floor_bytes, 512 << 20);
        assert_eq!(c.journal.retain_acknowledged, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(c.journal.signing_key, None);
        assert_eq!(
            c.lines[0].endpoint,
            Endpoint::Tcp {
                address: "127.0.0.1:4001".into(),
                connect_timeout: Duration::from_secs(3)
            }
        );
    }

    #[test]
    fn errors_name_the_file_the_field_and_the_reason() {
        let e = check(&MINIMAL.replace("address = 1", "address = 0")).unwrap_err();
        assert_eq!(e.file, "/etc/slotgate/slotgate.toml");
        assert_eq!(e.field, "line[0].machine[0].address");
        assert!(e.reason.contains("1–127"), "{e}");
    }

    #[test]
    fn ticket_numbers_are_masked_unless_configured_full() {
        assert_eq!(check(MINIMAL).unwrap().venue.ticket_numbers, TicketNumbers::Masked);
        let with = |value: &str| {
            MINIMAL.replace("time_zone = ", &format!("ticket_numbers = \"{value}\"\ntime_zone = "))
        };
        assert_eq!(check(&with("full")).unwrap().venue.ticket_numbers, TicketNumbers::Full);
        assert_eq!(check(&with("masked")).unwrap().venue.ticket_numbers, TicketNumbers::Masked);
        let e = check(&with("last4")).unwrap_err();
        assert_eq!(e.field, "venue.ticket_numbers");
        assert!(e.reason.contains("`last4`") && e.reason.contains("full"), "{e}");
    }

    #[test]
    fn a_misspelt_key_is_refused_with_its_path() {
        let e = check(&MINIMAL.replace("registry_id", "registryid")).unwrap_err();
        assert!(e.field.starts_with("line[0].machine[0]"), "{e}");
        assert!(e.reason.contains("registryid"), "{e}");
    }

    #[test]
    fn wrong_types_and_bad_values_are_refused() {
        assert_eq!(field_of(&MINIMAL.replace("\"UAH\"", "\"uah\"")), "venue.currency");
        assert_eq!(field_of(&MINIMAL.replace("Europe/Kyiv", "Mars/Olympus")), "venue.time_zone");
        assert_eq!(field_of(&MINIMAL.replace("UA-0042", "UA/0042")), "venue.id");
        assert_eq!(field_of(&MINIMAL.replace("EGM-1", "EGM 1")), "line[0].machine[0].registry_id");
        assert_eq!(field_of(&MINIMAL.replace("127.0.0.1:4001", "nowhere")), "line[0].address");
        assert_eq!(field_of(&MINIMAL.replace("\"tcp\"", "\"usb\"")), "line[0].kind");
        let odd_denomination = MINIMAL
            .replace("registry_id = \"EGM-1\"", "registry_id = \"EGM-1\"\ndenomination = \"0.07\"");
        assert_eq!(field_of(&odd_denomination), "line[0].machine[0].denomination");
        assert_eq!(
            field_of(&MINIMAL.replace("address = 1", "address = \"one\"")),
            "line[0].machine[0].address"
        );
        let bad_profile = MINIMAL.replace("kind = \"tcp\"", "kind = \"tcp\"\nprofile = \"acme\"");
        assert_eq!(field_of(&bad_profile), "line[0].profile");
        let bad_interval = format!("{MINIMAL}\n[polling]\nmeter_snapshot_interval = \"1s\"\n");
        assert_eq!(field_of(&bad_interval), "polling.meter_snapshot_interval");
        let bad_cap = format!("{MINIMAL}\n[journal]\ncap = \"4 gigs\"\n");
        let e = check(&bad_cap).unwrap_err();
        assert_eq!(e.field, "journal.cap");
        assert!(e.reason.contains("gigs"), "{e}");
        assert_eq!(field_of(&format!("{MINIMAL}\n[journal]\ncap = \"1KiB\"\n")), "journal.cap");
        assert_eq!(field_of(&format!("{MINIMAL}\n[journal]\nkey = \"x\"\n")), "journal.key");
        let bad_listen = format!("{MINIMAL}\n[admin]\nmetrics_listen = \"localhost\"\n");
        assert_eq!(field_of(&bad_listen), "admin.metrics_listen");
    }

    #[test]
    fn a_destination_replays_in_strict_order_unless_told_live_first() {
        let destination = "\n[[destination]]\nname = \"d\"\nkind = \"mqtt\"\n\
                           url = \"mqtt://127.0.0.1:1\"\nallow_plaintext = true\n";
        let order_of = |extra: &str| {
            check(&format!("{MINIMAL}{destination}{extra}")).map(|c| c.destinations[0].order)
        };
        assert_eq!(order_of("").unwrap(), crate::forward::outbox::Order::Strict);
        assert_eq!(
            order_of("order = \"live-first\"\n").unwrap(),
            crate::forward::outbox::Order::LiveFirst
        );
        let e = order_of("order = \"fifo\"\n").unwrap_err();
        assert_eq!(e.field, "destination[0].order", "{e}");
        assert!(e.reason.contains("live-first"), "{e}");
    }

    #[test]
    fn an_mqtt_destination_needs_a_client_id() {
        let destination = "\n[[destination]]\nname = \"d\"\nkind = \"mqtt\"\n\
                           url = \"mqtt://127.0.0.1:1\"\nallow_plaintext = true\n";
        for id in ["", " ", "gw 1"] {
            let text = format!("{MINIMAL}{destination}client_id = \"{id}\"\n");
            assert_eq!(field_of(&text), "destination[0].client_id", "{id:?}");
        }
        let text = format!("{MINIMAL}{destination}client_id = \"gw-1\"\n");
        assert!(check(&text).is_ok());
    }

    #[test]
    fn credentials_in_a_destination_url_are_refused_without_being_echoed() {
        for url in [
            "https://user:hunter2@central.example.com/events",
            "https://hunter2@central.example.com/events?x=1",
            "mqtts://gw:hunter2@broker.example.com:8883",
            "user:hunter2@broker.example.com",
        ] {
            let kind = if url.starts_with("https") { "https" } else { "mqtt" };
            let text = format!(
                "{MINIMAL}\n[[destination]]\nname = \"d\"\nkind = \"{kind}\"\nurl = \"{url}\"\n"
            );
            let e = check(&text).unwrap_err();
            assert_eq!(e.field, "destination[0].url", "{url}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let token = format!(
            "{MINIMAL}\n[[destination]]\nname = \"d\"\nkind = \"https\"\n\
             url = \"http://central.example.com/events?token=hunter2\"\n"
        );
        let e = check(&token).unwrap_err();
        assert!(e.reason.contains("plaintext") && !e.reason.contains("hunter2"), "{e}");
    }

    /// Secrets given to the service by systemd's `LoadCredential=`: `credential:NAME` and
    /// `${CREDENTIALS_DIRECTORY}/NAME` are read in the directory systemd names; without it the
    /// error names the field and says why; nothing else is expanded.
    #[test]
    fn systemd_credentials_are_read_from_the_credentials_directory_in_both_forms() {
        let text = format!(
            "{MINIMAL}\n[journal]\nsigning_key = \"credential:checkpoint.key\"\n\n\
             [[destination]]\nname = \"d\"\nkind = \"https\"\n\
             url = \"https://central.example.com/events\"\n\
             token_file = \"${{CREDENTIALS_DIRECTORY}}/central.token\"\n"
        );
        let path = Path::new("/etc/slotgate/slotgate.toml");
        let dir = Path::new("/run/credentials/slotgate.service");
        let config = Config::from_toml_str_with(path, &text, Some(dir)).unwrap();
        assert_eq!(config.journal.signing_key, Some(dir.join("checkpoint.key")));
        let DestinationKind::Https(https) = &config.destinations[0].kind else {
            panic!("not https")
        };
        assert_eq!(https.token_file, Some(dir.join("central.token")));

        let e = Config::from_toml_str_with(path, &text, None).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.field.as_str()),
            (path.to_str().unwrap(), "journal.signing_key")
        );
        assert!(e.reason.contains("CREDENTIALS_DIRECTORY is not set"), "{e}");
        let token_only = text.replace("signing_key = \"credential:checkpoint.key\"", "");
        let e = Config::from_toml_str_with(path, &token_only, None).unwrap_err();
        assert_eq!(e.field, "destination[0].token_file");
        assert!(e.reason.contains("LoadCredential="), "{e}");

        for bad in ["credential:../checkpoint.key", "credential:", "$HOME/checkpoint.key"] {
            let text = text.replace("credential:checkpoint.key", bad);
            let e = Config::from_toml_str_with(path, &text, Some(dir)).unwrap_err();
            assert_eq!(e.field, "journal.signing_key", "{bad}: {e}");
        }
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("4GB").unwrap_err().contains("unit"));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn a_denomination_is_written_as_money_and_kept_as_its_sas_code() {
        assert_eq!(denomination_code("0.01"), Ok(0x01));
        assert_eq!(denomination_code("0.2"), Ok(0x0B));
        assert_eq!(denomination_code("2.50"), Ok(0x0D));
        assert_eq!(denomination_code("5000"), Ok(0x16));
        assert!(denomination_code("0.001").is_err());
        assert!(denomination_code("abc").is_err());
    }

    #[test]
    fn duplicates_are_refused() {
        let twice = format!("{MINIMAL}\n[[line.machine]]\naddress = 1\nregistry_id = \"EGM-2\"\n");
        assert_eq!(field_of(&twice), "line[0].machine[1].address");
        let same_id =
            format!("{MINIMAL}\n[[line.machine]]\naddress = 2\nregistry_id = \"EGM-1\"\n");
        let e = check(&same_id).unwrap_err();
        assert_eq!(e.field, "line[0].machine[1].registry_id");
        assert!(e.reason.contains("line[0].machine[0].registry_id"), "{e}");
    }

    #[test]
    fn the_command_audit_id_is_no_machine_id() {
        let e = check(&MINIMAL.replace("\"EGM-1\"", "\"gateway:commands\"")).unwrap_err();
        assert_eq!(e.field, "line[0].machine[0].registry_id");
        assert!(e.reason.contains("reserved"), "{e}");
    }

    #[test]
    fn a_line_needs_its_endpoint_and_machines() {
        let serial_without_device =
            MINIMAL.replace("kind = \"tcp\"\naddress = \"127.0.0.1:4001\"", "kind = \"serial\"");
        assert_eq!(field_of(&serial_without_device), "line[0].device");
        let no_machines = MINIMAL.split("[[line.machine]]").next().unwrap().to_owned();
        assert_eq!(field_of(&no_machines), "line[0].machine");
    }

    #[test]
    fn a_profile_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.toml"), "name = \"acme\"\n[timing]\ntries = 9\n")
            .unwrap();
        let text = MINIMAL.replace("kind = \"tcp\"", "kind = \"tcp\"\nprofile = \"acme.toml\"");
        let e = Config::from_toml_str(&dir.path().join("slotgate.toml"), &text).unwrap_err();
        assert_eq!(e.field, "line[0].profile");
        assert!(e.reason.contains("acme.toml") && e.reason.contains("timing.tries"), "{e}");
    }

    #[test]
    fn the_pending_commands_poll_is_optional_and_validated() {
        let https = |extra: &str| {
            format!(
                "{MINIMAL}\n[[destination]]\nname = \"d\"\nkind = \"https\"\n\
                 url = \"https://dsom.example/events\"\n{extra}"
            )
        };
        let poll = |c: Config| match &c.destinations[0].kind {
            DestinationKind::Https(h) => h.commands.clone(),
            DestinationKind::Mqtt(_) => None,
        };
        assert_eq!(poll(check(&https("")).unwrap()), None, "off unless configured");
        let c = check(&https("commands_url = \"https://dsom.example/commands/\"\n")).unwrap();
        assert_eq!(
            poll(c),
            Some(CommandPoll {
                url: "https://dsom.example/commands".into(),
                interval: DEFAULT_COMMANDS_INTERVAL
            })
        );
        for (extra, field) in [
            ("commands_interval = \"5s\"\n", "destination[0].commands_interval"),
            ("commands_url = \"http://dsom.example/c\"\n", "destination[0].commands_url"),
            ("commands_url = \"https://dsom.example/c?t=1\"\n", "destination[0].commands_url"),
            ("commands_url = \"https://u:p@dsom.example/c\"\n", "destination[0].commands_url"),
            (
                "commands_url = \"https://dsom.example/c\"\ncommands_interval = \"100ms\"\n",
                "destination[0].commands_interval",
            ),
        ] {
            let error = check(&https(extra)).unwrap_err();
            assert_eq!(error.field, field, "{extra}");
            assert!(!error.to_string().contains("u:p"), "{error}");
        }
        let mqtt = format!(
            "{MINIMAL}\n[[destination]]\nname = \"m\"\nkind = \"mqtt\"\nurl = \"mqtts://b\"\n\
             commands_url = \"https://x/c\"\n"
        );
        assert_eq!(field_of(&mqtt), "destination[0].commands_url");
    }

    #[test]
    fn the_commands_section_is_validated_with_defaults() {
        let c = check(MINIMAL).unwrap();
        assert!(c.commands.keys.is_empty(), "no keys: nobody may command");
        assert_eq!(c.commands.offline_policy, OfflinePolicy::Queue);
        assert_eq!(c.commands.bulk_signatures, 2);
        let text = format!(
            "{MINIMAL}\n[commands]\nmax_clock_skew = \"2m\"\noffline_policy = \"reject\"\n\
             [[commands.keys]]\nid = \"reg-2026\"\npublic_key_file = \"keys/reg.pub\"\n\
             roles = [\"disable\", \"enable\", \"disable\"]\n\
             [[commands.keys]]\nid = \"reg-2025\"\npublic_key_file = \"/k/old.pub\"\n\
             roles = [\"disable\"]\nretired = true\n"
        );
        let c = check(&text).unwrap();
        assert_eq!(c.commands.max_clock_skew, Duration::from_secs(120));
        assert_eq!(c.commands.offline_policy, OfflinePolicy::Reject);
        let [new, old] = c.commands.keys.as_slice() else { panic!("{:?}", c.commands.keys) };
        assert_eq!(new.public_key_file, Path::new("/etc/slotgate/keys/reg.pub"));
        assert_eq!(
            new.roles,
            [command_envelope::Action::Disable, command_envelope::Action::Enable]
        );
        assert!(old.retired && !new.retired);

        let bad = |extra: &str| field_of(&format!("{MINIMAL}\n{extra}"));
        let key = "[[commands.keys]]\nid = \"k\"\npublic_key_file = \"k.pub\"\n";
        assert_eq!(bad(&format!("{key}roles = []\n")), "commands.keys[0].roles");
        assert_eq!(bad(&format!("{key}roles = [\"reboot\"]\n")), "commands.keys[0].roles[0]");
        assert_eq!(
            bad(&format!("{key}roles = [\"enable\"]\n{key}roles = [\"enable\"]\n")),
            "commands.keys[1].id"
        );
        assert_eq!(bad("[commands]\nbulk_signatures = 3\n"), "commands.bulk_signatures");
        assert_eq!(bad("[commands]\nmax_clock_skew = \"0s\"\n"), "commands.max_clock_skew");
        assert_eq!(bad("[commands]\noffline_policy = \"drop\"\n"), "commands.offline_policy");
        assert_eq!(bad("[commands]\nsecret = 1\n"), "commands.secret");
    }

    #[test]
    fn the_local_key_must_be_a_private_key_whose_public_half_is_a_current_trusted_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slotgate.toml");
        for name in ["tech.key", "other.key"] {
            crate::journal::checkpoint::generate(&dir.path().join(name)).unwrap();
        }
        let config = |local: &str, trusted: &str, retired: bool| {
            let text = format!(
                "{MINIMAL}\n[commands]\nlocal_key = \"{local}\"\n[[commands.keys]]\n\
                 id = \"tech\"\npublic_key_file = \"{trusted}\"\nroles = [\"disable\"]\n\
                 retired = {retired}\n"
            );
            Config::from_toml_str(&path, &text).unwrap()
        };
        let good = config("tech.key", "tech.key.pub", false);
        good.check_files(false).unwrap();
        let (id, _) = good.commands.local_issuer().unwrap().unwrap();
        assert_eq!(id, "tech");
        assert!(check(MINIMAL).unwrap().commands.local_issuer().unwrap().is_none());
        for (local, trusted, retired, why) in [
            ("other.key", "tech.key.pub", false, "no current key"),
            ("tech.key", "tech.key.pub", true, "no current key"),
            ("tech.key.pub", "tech.key.pub", false, "readable by group or others"),
            ("missing.key", "tech.key.pub", false, "missing.key"),
        ] {
            let e = config(local, trusted, retired).check_files(false).unwrap_err();
            assert_eq!(e.field, "commands.local_key", "{local}");
            assert!(e.reason.contains(why), "{local}: {e}");
        }
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("tech.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = good.check_files(false).unwrap_err();
        assert_eq!(e.field, "commands.local_key");
        assert!(e.reason.contains("readable by group or others"), "{e}");
    }
}
