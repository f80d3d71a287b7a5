//! The canonical event: the one record everything downstream of the normalizer sees (journal,
//! forwarders, regulator adapters). Its JSON form is documented field by field in
//! `docs/event-schema.md` and checked by `docs/event-schema.json` (JSON Schema 2020-12).
//!
//! # Invariants
//!
//! - **Versioned.** Every event carries `schema_version` ([`SCHEMA_VERSION`]). Removing or
//!   re-typing a field, or changing what one means, is a new version; adding a kind is too, since
//!   consumers validate the `kind` list.
//! - **Money is exact.** Amounts are integer minor units of an ISO 4217 currency, computed with
//!   checked arithmetic ([`money`]); no floating point. An amount that cannot be computed keeps
//!   what the machine reported and says why ([`money::AmountStatus`]); it is never dropped.
//! - **Identity is fixed at creation.** The idempotency key is `{venue}/{registry_id}/{machine_seq}`
//!   and the event id is the UUID v5 of that key ([`idempotency_key`], [`event_id`]). Both are
//!   computed once, when the normalizer assigns the sequence number, and stored with the event:
//!   retries and replays read them back and never recompute them from time or content.
//! - **Same kind, same keys.** Optional values serialise as `null` rather than being left out,
//!   so every event of one kind has exactly the same JSON keys.

pub mod money;

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use money::{Amount, AmountStatus, Currency, CurrencyCode, MoneyError};

/// Version of the event schema this code writes.
pub const SCHEMA_VERSION: u32 = 3;

/// Namespace of the UUID v5 event ids. Fixed forever: changing it changes every event id.
pub const EVENT_ID_NAMESPACE: Uuid = uuid::uuid!("118a79c3-2bd0-4849-b62f-eaa91cda6ee8");

/// The idempotency key of event number `machine_seq` of a machine: unique per venue and machine,
/// and the same on every retry and replay because the sequence number is assigned once.
pub fn idempotency_key(venue: &VenueId, registry_id: &RegistryId, machine_seq: u64) -> String {
    format!("{venue}/{registry_id}/{machine_seq}")
}

/// The event id: UUID v5 of the idempotency key under [`EVENT_ID_NAMESPACE`].
pub fn event_id(idempotency_key: &str) -> Uuid {
    Uuid::new_v5(&EVENT_ID_NAMESPACE, idempotency_key.as_bytes())
}

// === Identifiers ===

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Empty, longer than [`MAX_ID_LEN`], or with a character outside `A–Z a–z 0–9 . _ : -`.
    #[error("identifier {value:?} must be 1–{MAX_ID_LEN} characters of A–Z a–z 0–9 . _ : -")]
    Invalid { value: String },
}

/// Longest venue or registry identifier.
pub const MAX_ID_LEN: usize = 64;

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// 1–64 characters of `A–Z a–z 0–9 . _ : -`: no `/`, so the idempotency key
        /// `{venue}/{registry_id}/{seq}` splits one way only, and nothing a URL or header would
        /// need to escape.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks the character set and length.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                let valid_char =
                    |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
                if value.is_empty() || value.len() > MAX_ID_LEN || !value.chars().all(valid_char) {
                    return Err(IdError::Invalid { value });
                }
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

identifier! {
    /// The venue (gaming hall) as the state registry knows it.
    VenueId
}

identifier! {
    /// A machine's unique id in the state registry (UA: the id shown in the ДСОМ user cabinet),
    /// taken from configuration.
    RegistryId
}

// === The event ===

/// One canonical event. See `docs/event-schema.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanonicalEvent {
    /// [`SCHEMA_VERSION`] of the code that wrote the event.
    pub schema_version: u32,
    /// UUID v5 of `idempotency_key` ([`event_id`]).
    pub event_id: Uuid,
    /// `{venue_id}/{machine.registry_id}/{machine_seq}` ([`idempotency_key`]).
    pub idempotency_key: String,
    pub venue_id: VenueId,
    pub machine: MachineRef,
    /// Per-machine sequence number: strictly increasing by one, no gaps, across every kind.
    pub machine_seq: u64,
    /// When the gateway observed the event (its clock is the authoritative one), UTC, RFC 3339.
    pub occurred_at: Timestamp,
    /// The same instant with the venue's UTC offset, RFC 3339 (e.g. `2026-03-01T14:05:09+02:00`).
    pub occurred_at_local: String,
    /// The machine's own clock at that moment, as the civil time it displays (SAS clocks have no
    /// zone): the last LP7E read-back or LP7F set, advanced by the gateway time elapsed since.
    /// Null until the gateway has read or set the machine's clock.
    pub egm_time: Option<jiff::civil::DateTime>,
    /// The game, on play events (bets, wins, game phases and selections); null otherwise.
    pub game: Option<GameRef>,
    /// What the gateway read that produced this event, with the raw code.
    pub source: Source,
    /// True when the event was computed by the gateway (from meter deltas, or by comparing
    /// meters) rather than reported by the machine as it happened.
    pub derived: bool,
    /// `kind` (the tag) and `data` (the kind's fields).
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The machine an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRef {
    /// The state registry's id, from configuration.
    pub registry_id: RegistryId,
    /// SAS address, 1–127.
    pub sas_address: u8,
    /// The venue's asset number, from configuration.
    pub asset_number: Option<String>,
    /// Serial number the machine reported (LP54); null until read.
    pub serial: Option<String>,
}

/// The game a play event belongs to, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameRef {
    /// Game number last selected on the machine (RTE 8C); null if none was reported.
    pub number: Option<u16>,
    /// Game ID from LP1F (2 characters).
    pub game_id: Option<String>,
    /// Paytable ID from LP1F (6 characters).
    pub paytable_id: Option<String>,
    /// The game's denomination, raw SAS code: LP53's for a game of a multi-game machine, else
    /// the accounting denomination (LP1F or configuration); null while neither is known.
    pub denomination_code: Option<u8>,
}

/// What the gateway read that produced the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// The raw byte: exception or RTE code, or long-poll command. Null for session and gateway
    /// sources.
    pub code: Option<u8>,
    /// The protocol's name for it (`GameStarted`, `SendMeters`, `LinkUp`, `reconciliation`).
    pub name: String,
}

/// Where an event came from. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A general-poll exception code without data (sas-protocol.md §5).
    Exception,
    /// Computed by the gateway (reconciliation, derived events, meter continuity).
    Gateway,
    /// The answer to a long poll.
    LongPoll,
    /// A real-time event frame (`addr FF code …`, sas-protocol.md §6).
    RealTimeEvent,
    /// The host session's view of the link.
    Session,
}

// === Kinds ===

/// What happened. Serialised as `"kind": "<snake_case name>"` next to `"data": { … }`.
/// Variants are alphabetical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// An electronic funds transfer (AFT) the machine completed, as its interrogation (LP72,
    /// transfer code FF) reports it after exception 69: one event per credit class the transfer
    /// moved, all with the same `transaction_id`. The gateway only reads: the transfer was made
    /// by the venue's cashless system.
    AftTransfer {
        direction: AftDirection,
        class: TicketClass,
        /// In cents, as LP72 reports it.
        amount: Amount,
        /// LP72 transfer type, raw (00 in-house to machine, 10/11 bonus to machine, 20 to
        /// ticket, 40 debit to machine, 60 debit to ticket, 80 in-house to host, 90 win to host).
        transfer_type: u8,
        /// 00 full, 01 partial transfer.
        status: u8,
        /// The cashless system's transaction ID (ASCII; anything else as `\xNN`).
        transaction_id: String,
        /// When the machine completed it, by its own clock (no zone); null if it did not say.
        machine_time: Option<jiff::civil::DateTime>,
    },
    /// A wager was accepted. From RTE 7E (one game), or derived from the coin-in meter delta
    /// when the machine reports games without data (`derived`, `games` may exceed 1).
    BetAccepted {
        amount: Amount,
        /// Games the wager covers: 1 when reported, the games-played delta when derived.
        games: u64,
        /// RTE 7E wager type bit 7; null when derived.
        max_bet: Option<bool>,
        /// RTE 7E wager type byte, raw; null when derived.
        wager_type: Option<u8>,
        /// RTE 7E progressive group, raw; null when derived.
        progressive_group: Option<u8>,
        /// RTE 7E total coin-in meter after this wager, accounting credits; null when derived.
        coin_in_meter: Option<u64>,
    },
    /// A wager was returned to the player. SAS 6.0x has no standard refund or void report
    /// (sas-protocol.md §7.5), so the SAS normalizer never emits this kind; it exists for machines
    /// that do report refunds (vendor extensions, G2S), and no data is invented for it.
    BetRefunded { amount: Amount },
    /// LP48, read after a bill exception without data: identifies the last bill. Informational:
    /// the credit itself is the `credits_in` event that precedes it.
    BillDetails { bill: BillInfo, amount: Option<Amount> },
    /// The machine's clock (LP7E) differs from the gateway's by more than the threshold, or is
    /// not a valid date.
    ClockDrift {
        /// What the machine reported, `YYYY-MM-DDTHH:MM:SS`, even when not a valid date.
        egm_clock: String,
        /// Machine minus gateway, whole seconds, the machine's civil time read in the venue's
        /// zone; null when `egm_clock` is not a valid date.
        drift_seconds: Option<i64>,
        threshold_seconds: u64,
    },
    /// The machine acknowledged LP7F: its clock was set to `set_to` (venue civil time).
    ClockSet { set_to: jiff::civil::DateTime },
    /// Money entered the machine's credit meter.
    CreditsIn {
        method: CreditMethod,
        /// Null when the machine did not say how much (bare 4F; LP48 follows as `bill_details`).
        amount: Option<Amount>,
        bill: Option<BillInfo>,
    },
    /// Money left the credit meter other than by handpay.
    CreditsOut {
        method: CreditMethod,
        /// Null when the report carries no amount (exception 3D: the ticket data is read with
        /// LP3D/4D, and the cancelled-credits meter in the next LP0F snapshot covers it).
        amount: Option<Amount>,
    },
    /// The machine's exception queue overflowed (exception 70): events were lost on the machine.
    /// The next meter snapshot reconciles the gap.
    EventGap {},
    /// A follow-up poll owed for an exception the machine has since forgotten (LP1B after a
    /// handpay's 51, LP48 after a bill, LP70 after a ticket, LP0F after a cash-out ticket, the
    /// resync polls) was given up: the machine no longer answers it (it was reset, say), so what
    /// it would have told is lost. The exception itself was journalled before.
    FollowUpLost {
        /// The exception the poll followed up.
        exception: u8,
        command: u8,
        poll: String,
        error: String,
    },
    /// Another machine chirped on this machine's line (its address with the wakeup bit).
    ForeignChirp { address: u8 },
    /// A legacy bonus the machine paid to the credit meter: RTE 7C, or LP90 after a bare 7C.
    /// Counts as a win (meter 001E, machine-paid external bonus, is part of coin out); a game's
    /// 7F win excludes it.
    BonusAward {
        /// The bonus, accounting credits priced at the accounting denomination.
        amount: Amount,
        /// 00 = not a multiplied jackpot, else the multiplier.
        multiplier: u8,
        /// The multiplied win, accounting credits.
        multiplied_win: Amount,
        /// 00 deductible, 01 non-deductible, 02 wager match, raw.
        tax_status: u8,
    },
    /// A game ended with a prize, possibly 0. From RTE 7F, or derived from the coin-out and
    /// jackpot meter deltas (`derived`, `games` may exceed 1).
    GameEnded {
        /// Accounting credits won (RTE 7F excludes external bonuses; derived includes every win
        /// the coin-out and jackpot meters count).
        win: Amount,
        games: u64,
    },
    /// A bare 7E/7F exception (no RTE): a game started or ended, without amounts. The amounts
    /// follow as derived `bet_accepted` / `game_ended` at the next meter snapshot.
    GamePhase { phase: GamePhase },
    /// A game was selected (8C); the number is null when the exception came without data.
    GameSelected { game_number: Option<u16> },
    /// A handpay, as LP1B reports it after exception 51.
    Handpay { amount: Amount, partial_pay: Amount, progressive_group: u8, level: u8, reset_id: u8 },
    /// The handpay was reset (exception 52).
    HandpayReset {},
    /// A receipt was printed for a handpay (exception 3E, record from LP4D). Informational: the
    /// money is the `handpay` itself.
    HandpayReceipt { amount: Amount, ticket: TicketInfo },
    /// What happened while the machine could not be polled, from the meters read on either
    /// side of the outage (always `derived`). Informational: it is not a bet or a win and must
    /// not be counted as one; games the machine reported afterwards arrive as their own events.
    LinkGapSummary {
        /// The snapshot before the outage.
        since: Timestamp,
        /// When the link went down; null after a gateway restart.
        offline_at: Option<Timestamp>,
        games_played: Option<u64>,
        coin_in: Amount,
        coin_out: Amount,
        jackpot: Amount,
    },
    /// The link to the machine changed state.
    LinkState {
        state: LinkStatus,
        /// On `online`: when the link went down, if it did since the gateway started.
        offline_since: Option<Timestamp>,
    },
    /// What the machine says it is (LP1F, LP54); emitted when first read and when it changes.
    /// Each event carries the whole current picture.
    MachineInfo(Box<MachineInfo>),
    /// Lifetime meters went down other than by rollover: a RAM clear or meter reset. The
    /// gateway's lifetime meters continue from their last value (always `derived`).
    MeterReset {
        meters: Vec<MeterJump>,
        /// The exception that announced it (3A, 7A, 32–35), if one did.
        signalled_by: Option<u8>,
    },
    /// Meter values read from the machine.
    MeterSnapshot {
        trigger: SnapshotTrigger,
        /// 0 for the whole machine, else the game the meters belong to (LP2F / LP6F game N).
        game_number: u16,
        /// Keyed by canonical meter name (`coin_in`, `games_played`, `sas_001c`, …).
        meters: BTreeMap<String, MeterReading>,
    },
    /// A SAS progressive level was hit and paid by the machine (exception 56, amount from LP85).
    /// Counts as a win (meter 001D, machine-paid progressive, is part of coin out). A hit paid
    /// by an attendant is a `handpay` with its level instead.
    ProgressiveWin {
        group: u8,
        /// 01–20 (hex).
        level: u8,
        /// In cents, as LP85 reports it.
        amount: Amount,
    },
    /// A long poll was given up (every try failed, refused, or became unsupported).
    PollFailed { command: u8, poll: String, error: String },
    /// The machine ignores this long poll: a per-machine capability gap.
    PollUnsupported { command: u8 },
    /// Events compared with meter deltas between two consecutive snapshots (always `derived`).
    /// Emitted on a mismatch or an incomplete comparison, and after any window with a
    /// noteworthy context (event gap, outage, reset, denomination change) even when it matches.
    Reconciliation {
        /// The game whose meters (LP2F for game N) were compared; null for the whole machine.
        game_number: Option<u16>,
        outcome: ReconciliationOutcome,
        /// What happened in the window that may explain a mismatch.
        context: Vec<WindowContext>,
        /// Time of the snapshot that opened the window.
        window_start: Timestamp,
        /// Sum of bets reported in the window vs the coin-in meter delta.
        bets: Figures,
        /// Sum of wins reported in the window vs the coin-out + jackpot meter deltas.
        wins: Figures,
        /// Games ended reported vs games-played meter delta (not part of the outcome).
        games: Counts,
    },
    /// A remote command (issue 10) reached a state: the audit trail of remote shutdown and
    /// startup, journalled before the step it records (`command::audit`).
    RemoteCommand {
        /// Null when the bytes did not parse.
        command_id: Option<Uuid>,
        /// `disable` or `enable`; null when the bytes did not parse.
        action: Option<String>,
        /// `received`, `verified`, `sent`, `confirmed`, `done`, `rejected`, `failed`, `expired`,
        /// or `reasserted` (desired state sent again after a power cycle, link-up, RAM clear or
        /// gateway restart).
        state: String,
        /// On `rejected`, `failed` and `expired`: why (`bad_signature`, `unknown_key`, …).
        reason: Option<String>,
        /// Where the command came from: `mqtt:<destination>`, `https:<destination>`,
        /// `admin:uid=<uid>`.
        origin: String,
        /// Ids of the keys whose signatures verified, issuer first; empty if none did.
        signers: Vec<String>,
        /// For people.
        detail: Option<String>,
    },
    /// A ROM signature (LP21).
    RomSignature { seed: Option<u16>, signature: u16 },
    /// A significant event without money: doors, power, tilts, memory errors, meter resets,
    /// configuration changes, bill validator and printer faults, and the rest of the SAS
    /// exception set (sas-protocol.md §5).
    SignificantEvent {
        category: Category,
        /// Canonical snake_case name, e.g. `slot_door_opened`.
        event: String,
        /// Raw data the report carried, by field name (RTE payloads, ticket replies).
        details: BTreeMap<String, u64>,
    },
    /// A ticket was redeemed onto the credit meter (exception 68, record from LP4D).
    TicketIn { amount: Amount, ticket: TicketInfo },
    /// A cash-out ticket was printed: the credits left the credit meter (exception 3D, record
    /// from LP4D).
    TicketOut { amount: Amount, ticket: TicketInfo },
    /// An exception code the protocol crate does not name; the raw code is kept.
    UnknownException { code: u8 },
    /// A session report this version of the normalizer does not know, kept as text so that
    /// nothing is dropped.
    Unrecognized { description: String },
}

impl EventKind {
    /// Every kind's name, as serialised in `kind`.
    pub const NAMES: &'static [&'static str] = &[
        "aft_transfer",
        "bet_accepted",
        "bet_refunded",
        "bill_details",
        "bonus_award",
        "clock_drift",
        "clock_set",
        "credits_in",
        "credits_out",
        "event_gap",
        "follow_up_lost",
        "foreign_chirp",
        "game_ended",
        "game_phase",
        "game_selected",
        "handpay",
        "handpay_receipt",
        "handpay_reset",
        "link_gap_summary",
        "link_state",
        "machine_info",
        "meter_reset",
        "meter_snapshot",
        "poll_failed",
        "poll_unsupported",
        "progressive_win",
        "reconciliation",
        "remote_command",
        "rom_signature",
        "significant_event",
        "ticket_in",
        "ticket_out",
        "unknown_exception",
        "unrecognized",
    ];

    /// The name serialised in `kind`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AftTransfer { .. } => "aft_transfer",
            Self::BetAccepted { .. } => "bet_accepted",
            Self::BetRefunded { .. } => "bet_refunded",
            Self::BillDetails { .. } => "bill_details",
            Self::BonusAward { .. } => "bonus_award",
            Self::ClockDrift { .. } => "clock_drift",
            Self::ClockSet { .. } => "clock_set",
            Self::CreditsIn { .. } => "credits_in",
            Self::CreditsOut { .. } => "credits_out",
            Self::EventGap {} => "event_gap",
            Self::FollowUpLost { .. } => "follow_up_lost",
            Self::ForeignChirp { .. } => "foreign_chirp",
            Self::GameEnded { .. } => "game_ended",
            Self::GamePhase { .. } => "game_phase",
            Self::GameSelected { .. } => "game_selected",
            Self::Handpay { .. } => "handpay",
            Self::HandpayReceipt { .. } => "handpay_receipt",
            Self::HandpayReset {} => "handpay_reset",
            Self::LinkGapSummary { .. } => "link_gap_summary",
            Self::LinkState { .. } => "link_state",
            Self::MachineInfo(_) => "machine_info",
            Self::MeterReset { .. } => "meter_reset",
            Self::MeterSnapshot { .. } => "meter_snapshot",
            Self::PollFailed { .. } => "poll_failed",
            Self::PollUnsupported { .. } => "poll_unsupported",
            Self::ProgressiveWin { .. } => "progressive_win",
            Self::Reconciliation { .. } => "reconciliation",
            Self::RemoteCommand { .. } => "remote_command",
            Self::RomSignature { .. } => "rom_signature",
            Self::SignificantEvent { .. } => "significant_event",
            Self::TicketIn { .. } => "ticket_in",
            Self::TicketOut { .. } => "ticket_out",
            Self::UnknownException { .. } => "unknown_exception",
            Self::Unrecognized { .. } => "unrecognized",
        }
    }
}

/// A bill as SAS describes it (LP48, RTE 4F).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillInfo {
    /// SAS country code, raw.
    pub country_code: u8,
    /// SAS bill denomination code, raw.
    pub denomination_code: u8,
    /// Face value in whole currency units, from the code ([`money::bill_value`]); null for codes
    /// outside the table.
    pub value: Option<u64>,
    /// Bills of this denomination accepted so far, as the machine counts them.
    pub count: Option<u64>,
}

/// A ticket or receipt as the machine's validation record (LP4D) describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketInfo {
    /// The 18 digits on the ticket (validation system ID, then 16 digits). A ticket is a bearer
    /// instrument: unless the configuration asks for full numbers, all but the last 4 digits are
    /// `*` ([`TicketNumbers`]).
    pub validation_number: String,
    /// Whether `validation_number` is masked.
    pub masked: bool,
    /// LP4D validation type, raw (00 cash-out ticket, 10/20 handpay receipts, 80–82 redeemed …).
    pub validation_type: u8,
    pub class: TicketClass,
    /// When the machine printed or redeemed it, by its own clock (no zone); null if it did not
    /// say.
    pub machine_time: Option<jiff::civil::DateTime>,
    /// The machine's ticket number, raw.
    pub ticket_number: u16,
}

/// Where an AFT transfer took the money. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AftDirection {
    /// From the credit meter to the cashless system (LP72 types 80, 90).
    ToHost,
    /// From the cashless system onto the credit meter (types 00, 10, 11, 40).
    ToMachine,
    /// From the cashless system to a printed ticket (types 20, 60).
    ToTicket,
}

impl AftDirection {
    /// The direction of an LP72 transfer type; `None` for types the spec does not define.
    pub fn of_transfer_type(transfer_type: u8) -> Option<Self> {
        match transfer_type {
            0x00 | 0x10 | 0x11 | 0x40 => Some(Self::ToMachine),
            0x20 | 0x60 => Some(Self::ToTicket),
            0x80 | 0x90 => Some(Self::ToHost),
            _ => None,
        }
    }
}

/// Cashable, restricted or non-restricted (promotional) credits: of a ticket or of an AFT
/// transfer. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketClass {
    Cashable,
    NonRestricted,
    Restricted,
}

/// How much of a ticket's validation number leaves the gateway (configuration
/// `venue.ticket_numbers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TicketNumbers {
    /// The last 4 digits, the rest `*` (the default: a number is worth its amount to anyone
    /// holding it while the ticket is unredeemed).
    #[default]
    Masked,
    /// Every digit.
    Full,
}

impl TicketNumbers {
    /// `number` as this setting lets it out, and whether it was masked.
    pub fn apply(self, number: &str) -> (String, bool) {
        match self {
            Self::Full => (number.to_owned(), false),
            Self::Masked => {
                let keep = number.len().saturating_sub(4);
                let masked =
                    number.char_indices().map(|(i, c)| if i < keep { '*' } else { c }).collect();
                (masked, true)
            }
        }
    }
}

/// How credits moved. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditMethod {
    /// A bank note (bill validator).
    Bill,
    /// An electronic transfer (AFT/EFT/WAT).
    ElectronicTransfer,
    /// A ticket/voucher (TITO).
    Ticket,
    /// The report does not say.
    Unknown,
}

/// Phase of a game reported without data. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GamePhase {
    Ended,
    Started,
}

/// Link state. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    /// The machine declared a loop break (it sends its address with the wakeup bit).
    Chirping,
    /// The machine stopped answering.
    Offline,
    /// The machine answers.
    Online,
}

/// What the machine says it is. Fields are null until the poll that carries them was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// LP54, e.g. `602`.
    pub sas_version: Option<String>,
    /// LP54.
    pub serial: Option<String>,
    /// LP1F game ID.
    pub game_id: Option<String>,
    /// LP1F additional ID.
    pub additional_id: Option<String>,
    /// LP1F paytable ID.
    pub paytable_id: Option<String>,
    /// LP1F theoretical base percentage, as sent (`9050` = 90.50 %).
    pub base_percentage: Option<String>,
    /// LP1F accounting denomination, raw SAS code.
    pub denomination_code: Option<u8>,
    /// Value of one accounting credit; null if the code is not in the spec's table.
    pub denomination: Option<Amount>,
    /// LP1F largest bet in credits (255 = 255 or more).
    pub max_bet: Option<u8>,
    pub progressive_group: Option<u8>,
    pub game_options: Option<u16>,
    /// LPA0 (read at link-up): what the machine has enabled; null until read or if unsupported.
    pub features: Option<Features>,
    /// LP51 (read at link-up): how many games the machine implements; null until read.
    pub number_of_games: Option<u16>,
    /// LP53 per game (read at link-up on a multi-game machine), by game number.
    pub games: Vec<GameInfo>,
}

/// One game of a multi-game machine, from LP53.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameInfo {
    pub number: u16,
    /// The game's denomination, raw SAS code.
    pub denomination_code: u8,
    /// Value of one credit of the game; null if the code is not in the spec's table.
    pub denomination: Option<Amount>,
    pub paytable_id: String,
    /// Largest bet in credits of the game (255 = 255 or more).
    pub max_bet: u8,
}

/// What LPA0 says a machine supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// The feature bytes as sent.
    pub raw: Vec<u8>,
    /// `none`, `system`, `secure_enhanced` or `reserved`.
    pub validation: String,
    pub ticket_redemption: bool,
    pub aft: bool,
    pub legacy_bonus_awards: bool,
    pub extended_meters: bool,
    pub multi_denomination: bool,
}

/// A lifetime meter that went down (before → after, raw machine values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterJump {
    pub meter: String,
    pub before: u64,
    pub after: u64,
}

/// One meter in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterReading {
    /// SAS meter code (sas-protocol.md §7.4); null for the LP1C counters without one.
    pub sas_code: Option<u16>,
    pub unit: MeterUnit,
    /// The value as read.
    pub raw: u64,
    /// BCD digits of the value on the wire: the meter wraps at 10^digits.
    pub digits: u8,
    /// The gateway's lifetime value: continues across rollovers, RAM clears, meter resets and
    /// gateway restarts, and never goes backwards. Null for meters that legitimately go down
    /// (current credits, counters since power-up or door closure).
    pub lifetime: Option<u64>,
    /// The money value for credit and cent meters: the lifetime value (or the raw value for
    /// meters without one). For lifetime meters `minor_units` accumulates each increase at the
    /// denomination in force when it was read, so it never goes backwards either.
    pub amount: Option<Amount>,
    /// The raw value wrapped past 10^digits since the previous reading.
    pub rolled_over: bool,
}

/// What a meter counts. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterUnit {
    /// Hundredths of the currency unit.
    Cents,
    /// Things (games, bills, door openings).
    Count,
    /// Accounting-denomination credits.
    Credits,
    /// Something else (percentages, vendor meters): reported raw only.
    Other,
}

/// Why the meters were read, as far as the normalizer can tell. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotTrigger {
    /// The first snapshot: nothing to compare with yet.
    Baseline,
    /// The first after an exception-queue overflow (70).
    EventGap,
    /// After a game ended without data (bare 7F).
    GameEnd,
    /// The first after the link came back or the gateway restarted.
    LinkUp,
    /// None of the others.
    Periodic,
    /// After an exception that invalidates meters or configuration (3A, 7A, 31–35, 3C).
    Resync,
}

/// Result of a reconciliation. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconciliationOutcome {
    /// A figure could not be computed (denomination unknown, amount not exact).
    Incomplete,
    Matched,
    Mismatch,
}

/// Something that happened in a reconciliation window. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowContext {
    /// The accounting denomination changed (LP1F).
    DenominationChange,
    /// The exception queue overflowed (70).
    EventGap,
    /// The link was down, or the gateway restarted.
    LinkOutage,
    /// A meter went down (RAM clear, meter reset).
    MeterReset,
}

/// Two figures in minor units: what the events add up to, what the meters say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub currency: CurrencyCode,
    /// Sum of the events in the window; null if an amount was not exact.
    pub events_minor_units: Option<i64>,
    /// Meter delta over the window; null if the denomination was unknown.
    pub meters_minor_units: Option<i64>,
    /// `meters − events`; null if either is.
    pub difference: Option<i64>,
}

/// Two counts: events, and the meter delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub events: u64,
    /// Null if the snapshots did not carry games played.
    pub meters: Option<u64>,
}

/// Significant-event categories. Variants are alphabetical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Change lamp (attendant call).
    Attendant,
    /// Out of service.
    Availability,
    /// Bill validator faults, version changes, period resets.
    BillValidator,
    /// Legacy bonus awards.
    Bonus,
    /// Cash-out button.
    CashOut,
    /// Cashbox removed, installed, full.
    Cashbox,
    /// Operator changed options, enabled games or denominations, meter changes.
    ConfigurationChange,
    /// Door opened or closed, including access while powered off.
    Door,
    /// AFT transfers, registration, game lock.
    ElectronicTransfer,
    /// Fine-grained play (reels stopped, cards held, game-play periods).
    GamePlay,
    /// Handpay pending, cancelled by the player.
    Handpay,
    /// Hopper full or low.
    Hopper,
    /// Low backup battery.
    Maintenance,
    /// NVRAM, CMOS, EEPROM errors and RAM clears.
    MemoryError,
    /// Soft meters reset to zero (7A).
    MeterReset,
    /// Attendant or operator menus, self-test.
    OperatorMenu,
    /// AC power applied or lost.
    Power,
    /// Printer faults and paper.
    Printer,
    /// Progressive hits, wins, link loss.
    Progressive,
    /// The machine acknowledged a remote shutdown (LP01) or startup (LP02).
    RemoteControl,
    /// EPROM signatures, component list, authentication.
    SoftwareIntegrity,
    /// Ticket (TITO) validation and redemption.
    Ticketing,
    /// Tilts and mechanism faults.
    Tilt,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_the_key_separator_and_empty_values() {
        assert!(VenueId::new("kyiv-hall-7").is_ok());
        assert!(RegistryId::new("UA:000123").is_ok());
        assert!(VenueId::new("a/b").is_err());
        assert!(RegistryId::new("").is_err());
        assert!(RegistryId::new("x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(serde_json::from_str::<VenueId>("\"a b\"").is_err());
    }

    #[test]
    fn the_event_id_is_the_uuid_v5_of_the_idempotency_key() {
        let venue = VenueId::new("hall-1").unwrap();
        let machine = RegistryId::new("UA-42").unwrap();
        let key = idempotency_key(&venue, &machine, 7);
        assert_eq!(key, "hall-1/UA-42/7");
        let id = event_id(&key);
        assert_eq!(id.get_version_num(), 5);
        assert_eq!(id, event_id("hall-1/UA-42/7"));
        assert_ne!(id, event_id("hall-1/UA-42/8"));
    }

    #[test]
    fn every_kind_name_is_listed_once() {
        let mut names = EventKind::NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventKind::NAMES.len());
        assert!(EventKind::NAMES.contains(&EventKind::EventGap {}.name()));
    }
}
