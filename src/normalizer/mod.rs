//! The normalizer: turns what one machine's host session reports ([`SessionEvent`]) into
//! [`CanonicalEvent`]s.
//!
//! **Pure and synchronous. Protocol quirks end here; everything downstream sees only canonical
//! events.** No async, no I/O, no clock reads: the caller passes `now` (the gateway's UTC clock,
//! the authoritative one) with every session event.
//!
//! # Invariants
//!
//! - **Sequence.** Every emitted event gets the next per-machine sequence number: strictly
//!   increasing by one, no gaps, across every kind. The idempotency key and event id follow from
//!   it (see [`crate::event`]).
//! - **Nothing held back.** Everything a session event carries comes out of the same
//!   [`Normalizer::handle`] call. The session acknowledges a machine's report once the caller has
//!   journalled the events of that call ([`SessionEvent::needs_confirmation`]), so an event held
//!   in memory here would be lost on a crash. A bet that arrives before the denomination is known
//!   is therefore emitted at once with its credits and `status: denomination_unknown`, not held
//!   until LP1F arrives.
//! - **Money never wraps, rounds or disappears.** Amounts are computed with checked arithmetic;
//!   an amount that cannot be computed keeps the machine's credits and says why
//!   ([`crate::event::AmountStatus`]). [`Normalizer::handle`] therefore has no money error: the
//!   only error is running out of sequence numbers.
//! - **Lifetime meters never go backwards.** Rollovers add the wrapped step, resets add the
//!   value after the reset, and [`Normalizer::resume`] carries the totals across restarts.
//!
//! # Rules
//!
//! - *Identity.* The accounting denomination comes from LP1F, the serial from LP54; both are
//!   re-read at every resync. A `machine_info` event is emitted when either is first read or
//!   changes.
//! - *Money.* Credits × denomination (sas-protocol.md §7.1), cents as hundredths, bill face
//!   values in whole currency units, all scaled to the venue currency's minor unit. RTE 7E
//!   wagers are priced at the player denomination when the wager type has the multi-denomination
//!   flag (bit 6) and its low six bits are a valid code, else at the accounting denomination.
//! - *Games with RTE.* 8C sets the game number for later play events; 7E is a `bet_accepted`,
//!   7F a `game_ended` (win possibly 0).
//! - *Games without RTE.* A bare 7E/7F is a `game_phase` marker. The snapshot that closes the
//!   window prices the games: what the coin-in delta exceeds the bets already reported by is a
//!   derived `bet_accepted`, what the coin-out + jackpot delta exceeds the wins by (or zero, if
//!   games were played) a derived `game_ended`.
//! - *Reconciliation.* Each reconciling snapshot (see `meters.rs`) compares the window's bets with
//!   the coin-in delta and its wins with the coin-out + jackpot delta; handpays are not counted,
//!   because the jackpot meter already counts the wins they pay. A mismatch or an incomplete
//!   comparison emits `reconciliation`, as does any window with an event gap, outage, meter reset
//!   or denomination change.
//! - *Games.* LP51 and LP53 describe a multi-game machine (`machine_info.number_of_games`,
//!   `games`). Every play and money event carries the selected game (last 8C) and that game's
//!   denomination: LP53's, else the player denomination its multi-denomination 7E named, else the
//!   accounting one. A snapshot of game N with coin in, coin out and jackpot reconciles game N's
//!   own window (see `meters.rs`), emitting `reconciliation` with `game_number` N under the same
//!   rules as the machine's.
//! - *Meters.* A lifetime meter that went down rolled over if the wrapped step is at most a tenth
//!   of its range and no reset was announced (3A, 7A, 32–35); otherwise it was reset, which emits
//!   `meter_reset`.
//! - *Link.* `link_state` is emitted on transitions only: online, offline, chirping (repeated
//!   chirps are one state). After the link comes back, or after [`Normalizer::resume`], the next
//!   reconciling snapshot yields a derived `link_gap_summary`; games in that window are not
//!   priced as bets, the summary accounts for them. A foreign chirp is reported once per address
//!   until the link is next online.
//! - *Event gap.* Exception 70 emits `event_gap`; the next reconciling snapshot always emits a
//!   `reconciliation` for that window, matched or not.
//! - *Clock.* An LP7E read-back is read as civil time in the venue's zone (in a DST fold or gap,
//!   the reading nearest the gateway clock); beyond the threshold it emits `clock_drift`. An
//!   ACKed LP7F emits `clock_set`. Both keep the machine's clock for `egm_time`.

mod exceptions;
mod meters;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::civil;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use firmware_protocols::sas::message::{
    AftTransferStatus, BasicMeters, DateTime, HandpayInfo, LegacyBonusWin,
    MachineInfo as SasMachineInfo, MeterPoll, Meters10To15, ValidationRecord, VersionAndSerial,
};
use firmware_protocols::sas::meter::denomination_minor_units;
use firmware_protocols::sas::session::SessionEvent;
use firmware_protocols::sas::{Address, Exception, LongPoll, RealTimeEvent, Reply};

use crate::event::money::bill_value;
use crate::event::{
    AftDirection, Amount, BillInfo, CanonicalEvent, Category, CreditMethod, Currency, EventKind,
    GameInfo, GamePhase, GameRef, LinkStatus, MachineInfo, MachineRef, RegistryId, SCHEMA_VERSION,
    SnapshotTrigger, Source, SourceKind, TicketClass, TicketInfo, TicketNumbers, VenueId,
    WindowContext, event_id, idempotency_key,
};
use exceptions::Mapping;
use meters::{MeterBook, MeterKey, Outcome, Read, SnapshotContext};

/// What the normalizer needs to know about the venue.
#[derive(Debug, Clone)]
pub struct VenueSettings {
    pub venue_id: VenueId,
    /// The currency the machines count in; amounts are its minor units.
    pub currency: Currency,
    /// The zone the machines' clocks show (SAS clocks carry no zone or DST flag).
    pub time_zone: TimeZone,
    /// A machine clock further than this from the gateway's emits `clock_drift`.
    pub clock_drift_threshold: Duration,
    /// How much of a ticket's validation number leaves the gateway.
    pub ticket_numbers: TicketNumbers,
}

/// Who the machine is, from configuration.
#[derive(Debug, Clone)]
pub struct MachineIdentity {
    pub registry_id: RegistryId,
    pub address: Address,
    pub asset_number: Option<String>,
    /// The accounting denomination (SAS code) as registered for this machine, if the operator
    /// configured it. It prices events from the first one, before LP1F has been read; LP1F then
    /// confirms it, and a different LP1F value replaces it and marks the reconciliation window
    /// with `denomination_change`.
    pub denomination_code: Option<u8>,
}

/// Why the normalizer refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NormalizeError {
    /// The per-machine sequence number would pass `u64::MAX`. Nothing was emitted; the machine's
    /// sequence cannot continue.
    #[error("machine sequence numbers exhausted at {next_seq}")]
    SequenceExhausted { next_seq: u64 },
    /// [`Normalizer::resume`] was given an event that is not a meter snapshot.
    #[error("event {machine_seq} is a {kind}, not a meter snapshot")]
    NotASnapshot { machine_seq: u64, kind: &'static str },
    /// [`Normalizer::resume`] was given another venue's or machine's snapshot.
    #[error("snapshot {idempotency_key} belongs to another venue or machine")]
    WrongMachine { idempotency_key: String },
}

/// An event before it has its sequence number.
#[derive(Debug)]
struct Draft {
    kind: EventKind,
    source: Source,
    derived: bool,
    /// Whether to attach the current game (play events).
    play: bool,
}

/// The link as the normalizer has reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Unknown,
    Online,
    Down { since: Timestamp, chirping: bool },
}

/// Why the next snapshot is being read.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    event_gap: bool,
    resync: bool,
    game_end: bool,
    reset_signal: Option<u8>,
    /// The link came back (or the gateway restarted): `Some(when it went down)`.
    gap: Option<Option<Timestamp>>,
}

/// The normalizer of one machine. See the module documentation.
#[derive(Debug)]
pub struct Normalizer {
    venue: VenueSettings,
    machine: MachineIdentity,
    next_seq: u64,
    info: MachineInfo,
    game_number: Option<u16>,
    /// Player denominations that 7E wagers flagged as multi-denomination named, per game: the
    /// game's denomination until LP53 says it.
    wager_denominations: BTreeMap<u16, u8>,
    link: Link,
    foreign_chirps: BTreeSet<u8>,
    /// The machine's clock as last read or set, and the gateway time then.
    egm_clock: Option<(civil::DateTime, Timestamp)>,
    pending: Pending,
    meters: MeterBook,
    /// All-zero LP1B answers dropped (see [`Normalizer::empty_handpays`]).
    empty_handpays: u64,
    /// The last completed AFT transfer reported: reading it again (a restored follow-up, a
    /// repeated 69) is not a second transfer.
    last_aft: Option<AftTransferStatus>,
}

impl Normalizer {
    /// A normalizer for a machine whose next event gets sequence number `next_seq` (the journal
    /// knows it; 0 for a new machine).
    pub fn new(venue: VenueSettings, machine: MachineIdentity, next_seq: u64) -> Self {
        let configured =
            machine.denomination_code.filter(|c| denomination_minor_units(*c).is_some());
        let denomination =
            configured.map(|code| Amount::from_credits(1, Some(code), &venue.currency));
        Self {
            venue,
            machine,
            next_seq,
            info: MachineInfo {
                sas_version: None,
                serial: None,
                game_id: None,
                additional_id: None,
                paytable_id: None,
                base_percentage: None,
                denomination_code: configured,
                denomination,
                max_bet: None,
                progressive_group: None,
                game_options: None,
                features: None,
                number_of_games: None,
                games: Vec::new(),
            },
            game_number: None,
            wager_denominations: BTreeMap::new(),
            link: Link::Unknown,
            foreign_chirps: BTreeSet::new(),
            egm_clock: None,
            pending: Pending::default(),
            meters: MeterBook::default(),
            empty_handpays: 0,
            last_aft: None,
        }
    }

    /// A normalizer that continues after a gateway restart: lifetime meters continue from the
    /// journalled `snapshots` (the last `meter_snapshot` of each kind of meter poll, oldest
    /// first), and the next reconciling snapshot yields a `link_gap_summary` for the time the
    /// gateway was away.
    pub fn resume(
        venue: VenueSettings,
        machine: MachineIdentity,
        next_seq: u64,
        snapshots: &[CanonicalEvent],
    ) -> Result<Self, NormalizeError> {
        let mut normalizer = Self::new(venue, machine, next_seq);
        for event in snapshots {
            if event.venue_id != normalizer.venue.venue_id
                || event.machine.registry_id != normalizer.machine.registry_id
            {
                return Err(NormalizeError::WrongMachine {
                    idempotency_key: event.idempotency_key.clone(),
                });
            }
            let EventKind::MeterSnapshot { game_number, meters, .. } = &event.kind else {
                return Err(NormalizeError::NotASnapshot {
                    machine_seq: event.machine_seq,
                    kind: event.kind.name(),
                });
            };
            normalizer.meters.restore(event.occurred_at, *game_number, meters);
        }
        normalizer.pending.gap = Some(None);
        normalizer.meters.mark(WindowContext::LinkOutage);
        Ok(normalizer)
    }

    /// Sequence number of the next event.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// LP1B answers dropped because every field was zero: what a machine sends once an
    /// attendant has reset the handpay, or a hostile one to invent a handpay of 0.
    pub fn empty_handpays(&self) -> u64 {
        self.empty_handpays
    }

    /// What the machine has said about itself so far (LP1F, LP54).
    pub fn machine_info(&self) -> &MachineInfo {
        &self.info
    }

    /// Turns one session event observed at `now` into canonical events, in order.
    pub fn handle(
        &mut self,
        now: Timestamp,
        event: &SessionEvent,
    ) -> Result<Vec<CanonicalEvent>, NormalizeError> {
        let mut drafts = Vec::new();
        match event {
            SessionEvent::Chirp => self.chirp(now, &mut drafts),
            SessionEvent::Exception(exception) => {
                let source = Source {
                    kind: SourceKind::Exception,
                    code: Some(exception.code()),
                    name: exception.name().to_owned(),
                };
                self.exception(*exception, source, &mut drafts);
            }
            SessionEvent::FollowUpLost { exception, poll, error } => drafts.push(Draft::plain(
                EventKind::FollowUpLost {
                    exception: exception.code(),
                    command: poll.command(),
                    poll: format!("{poll:?}"),
                    error: error.to_string(),
                },
                long_poll_source(poll),
            )),
            SessionEvent::LinkDown => self.link_down(now, &mut drafts),
            SessionEvent::LinkUp => self.link_up(&mut drafts),
            SessionEvent::PollFailed { poll, error } => drafts.push(Draft::plain(
                EventKind::PollFailed {
                    command: poll.command(),
                    poll: format!("{poll:?}"),
                    error: error.to_string(),
                },
                long_poll_source(poll),
            )),
            SessionEvent::RealTimeEvent(rte) => self.real_time_event(rte, &mut drafts),
            SessionEvent::Reply { poll, reply } => self.reply(now, poll, reply, &mut drafts),
            // The exception that carried it has just been reported; what matters here is that
            // the next snapshot is a resync.
            SessionEvent::ResyncRequired(_) => self.pending.resync = true,
            SessionEvent::RomSignature { seed, signature } => drafts.push(Draft::plain(
                EventKind::RomSignature { seed: *seed, signature: *signature },
                Source {
                    kind: SourceKind::LongPoll,
                    code: Some(0x21),
                    name: "RomSignature".into(),
                },
            )),
            SessionEvent::UnknownChirp(address) => {
                if self.foreign_chirps.insert(*address) {
                    drafts.push(Draft::plain(
                        EventKind::ForeignChirp { address: *address },
                        session_source("UnknownChirp"),
                    ));
                }
            }
            SessionEvent::Unsupported(command) => drafts.push(Draft::plain(
                EventKind::PollUnsupported { command: *command },
                session_source("Unsupported"),
            )),
            other => drafts.push(Draft::plain(
                EventKind::Unrecognized { description: format!("{other:?}") },
                session_source("Unrecognized"),
            )),
        }
        self.finish(now, drafts)
    }

    // === Link ===

    fn chirp(&mut self, now: Timestamp, drafts: &mut Vec<Draft>) {
        let since = match self.link {
            Link::Down { chirping: true, .. } => return,
            Link::Down { since, .. } => since,
            Link::Unknown | Link::Online => {
                self.meters.mark(WindowContext::LinkOutage);
                now
            }
        };
        self.link = Link::Down { since, chirping: true };
        drafts.push(Draft::plain(
            EventKind::LinkState { state: LinkStatus::Chirping, offline_since: None },
            session_source("Chirp"),
        ));
    }

    fn link_down(&mut self, now: Timestamp, drafts: &mut Vec<Draft>) {
        if matches!(self.link, Link::Down { .. }) {
            return;
        }
        self.link = Link::Down { since: now, chirping: false };
        self.meters.mark(WindowContext::LinkOutage);
        drafts.push(Draft::plain(
            EventKind::LinkState { state: LinkStatus::Offline, offline_since: None },
            session_source("LinkDown"),
        ));
    }

    fn link_up(&mut self, drafts: &mut Vec<Draft>) {
        let offline_since = match self.link {
            Link::Down { since, .. } => Some(since),
            Link::Online => return,
            Link::Unknown => None,
        };
        if let Some(since) = offline_since {
            self.pending.gap = Some(Some(since));
        }
        self.link = Link::Online;
        self.foreign_chirps.clear();
        drafts.push(Draft::plain(
            EventKind::LinkState { state: LinkStatus::Online, offline_since },
            session_source("LinkUp"),
        ));
    }

    // === Exceptions and real-time events ===

    fn exception(&mut self, exception: Exception, source: Source, drafts: &mut Vec<Draft>) {
        if exceptions::announces_meter_reset(exception) {
            self.pending.reset_signal = Some(exception.code());
            // The window holds a reset even if no snapshot ever sees a meter go down (the meters
            // may be back where the last snapshot left them): its figures cannot be expected to
            // agree, and the reconciliation must say why.
            self.meters.mark(WindowContext::MeterReset);
        }
        let currency = self.venue.currency;
        let kind = match exceptions::map(exception) {
            Mapping::Idle => return,
            Mapping::Significant(category) => EventKind::SignificantEvent {
                category,
                event: exceptions::snake_case(exception.name()),
                details: Default::default(),
            },
            Mapping::GamePhase(phase) => {
                self.meters.games_without_data();
                if phase == GamePhase::Ended {
                    self.pending.game_end = true;
                }
                drafts.push(Draft::play(EventKind::GamePhase { phase }, source));
                return;
            }
            Mapping::GameSelected => {
                drafts.push(Draft::play(EventKind::GameSelected { game_number: None }, source));
                return;
            }
            Mapping::BillIn(value) => {
                let kind = EventKind::CreditsIn {
                    method: CreditMethod::Bill,
                    amount: value.map(|units| Amount::from_major(units, &currency)),
                    bill: None,
                };
                drafts.push(Draft::play(kind, source));
                return;
            }
            Mapping::EventGap => {
                self.pending.event_gap = true;
                self.meters.mark(WindowContext::EventGap);
                EventKind::EventGap {}
            }
            Mapping::HandpayReset => EventKind::HandpayReset {},
            Mapping::Unknown => EventKind::UnknownException { code: exception.code() },
        };
        drafts.push(Draft::plain(kind, source));
    }

    fn real_time_event(&mut self, event: &RealTimeEvent, drafts: &mut Vec<Draft>) {
        let code = event.exception();
        let source = Source {
            kind: SourceKind::RealTimeEvent,
            code: Some(code.code()),
            name: code.name().to_owned(),
        };
        let currency = self.venue.currency;
        let accounting = self.accounting_denomination();
        match event {
            RealTimeEvent::GameStarted {
                credits_wagered,
                total_coin_in,
                wager_type,
                progressive_group,
            } => {
                let denomination = self.wager_denomination(*wager_type);
                if let (Some(game), Some(code)) = (self.game_number, denomination)
                    && wager_type & 0x40 != 0
                {
                    self.wager_denominations.insert(game, code);
                }
                let amount = Amount::from_credits(*credits_wagered, denomination, &currency);
                for window in self.play_windows() {
                    window.bets.add(&amount, accounting);
                }
                let kind = EventKind::BetAccepted {
                    amount,
                    games: 1,
                    max_bet: Some(wager_type & 0x80 != 0),
                    wager_type: Some(*wager_type),
                    progressive_group: Some(*progressive_group),
                    coin_in_meter: Some(*total_coin_in),
                };
                drafts.push(Draft::play(kind, source));
            }
            RealTimeEvent::GameEnded { win } => {
                let win = Amount::from_credits(*win, accounting, &currency);
                for window in self.play_windows() {
                    window.wins.add(&win, accounting);
                    window.games_ended = window.games_ended.saturating_add(1);
                }
                drafts.push(Draft::play(EventKind::GameEnded { win, games: 1 }, source));
            }
            RealTimeEvent::GameSelected { game } => {
                self.game_number = Some(*game);
                drafts.push(Draft::play(
                    EventKind::GameSelected { game_number: Some(*game) },
                    source,
                ));
            }
            RealTimeEvent::BillAccepted { country, denomination_code, count } => {
                let value = bill_value(*denomination_code);
                let bill = BillInfo {
                    country_code: *country,
                    denomination_code: *denomination_code,
                    value,
                    count: Some(*count),
                };
                let amount = value.map(|units| Amount::from_major(units, &currency));
                let kind =
                    EventKind::CreditsIn { method: CreditMethod::Bill, amount, bill: Some(bill) };
                drafts.push(Draft::play(kind, source));
            }
            RealTimeEvent::ReelStopped { reel, physical_stop } => {
                let details =
                    [("reel", u64::from(*reel)), ("physical_stop", u64::from(*physical_stop))];
                drafts.push(significant(Category::GamePlay, code, &details, source));
            }
            RealTimeEvent::CardHeld { card } => {
                drafts.push(significant(
                    Category::GamePlay,
                    code,
                    &[("card", u64::from(*card))],
                    source,
                ));
            }
            RealTimeEvent::LegacyBonus { multiplier, multiplied_win, tax_status, bonus } => {
                let award = LegacyBonusWin {
                    multiplier: *multiplier,
                    multiplied_win: *multiplied_win,
                    tax_status: *tax_status,
                    bonus: *bonus,
                };
                self.bonus_award(&award, source, drafts);
            }
            RealTimeEvent::Exception(exception) => self.exception(*exception, source, drafts),
            other => drafts.push(Draft::plain(
                EventKind::Unrecognized { description: format!("{other:?}") },
                source,
            )),
        }
    }

    /// The windows a play event counts in: the machine's, and the selected game's if one is.
    fn play_windows(&mut self) -> Vec<&mut meters::Window> {
        self.meters.play_windows(self.game_number)
    }

    /// The selected game's denomination code: LP53's if read, else the one its multi-denomination
    /// wagers named, else the accounting one.
    fn game_denomination(&self) -> Option<u8> {
        let game = self.game_number;
        game.and_then(|number| self.info.games.iter().find(|g| g.number == number))
            .map(|game| game.denomination_code)
            .filter(|code| denomination_minor_units(*code).is_some())
            .or_else(|| game.and_then(|number| self.wager_denominations.get(&number).copied()))
            .or_else(|| self.accounting_denomination())
    }

    /// The accounting denomination code, if LP1F gave one the spec defines.
    fn accounting_denomination(&self) -> Option<u8> {
        self.info.denomination_code.filter(|code| denomination_minor_units(*code).is_some())
    }

    /// The denomination an RTE 7E wager is counted in: the player denomination from the wager
    /// type when the multi-denomination flag is set and the code is valid (sas-protocol.md §6),
    /// else the selected game's (LP53), else the accounting denomination.
    fn wager_denomination(&self, wager_type: u8) -> Option<u8> {
        let player = wager_type & 0x3F;
        if wager_type & 0x40 != 0 && denomination_minor_units(player).is_some() {
            return Some(player);
        }
        self.game_denomination()
    }

    // === Replies ===

    fn reply(&mut self, now: Timestamp, poll: &LongPoll, reply: &Reply, drafts: &mut Vec<Draft>) {
        let source = long_poll_source(poll);
        let currency = self.venue.currency;
        match reply {
            Reply::Ack => self.acknowledged(now, poll, source, drafts),
            Reply::Meters(meters) => self.snapshot(now, 0, &basic_meters(meters), source, drafts),
            Reply::Meters10To15(meters) => {
                self.snapshot(now, 0, &meters_10_to_15(meters), source, drafts);
            }
            Reply::Meter { poll: meter_poll, values } => {
                self.snapshot(now, 0, &single_meters(*meter_poll, values), source, drafts);
            }
            Reply::CurrentCredits(credits) => {
                let read = Read { key: MeterKey::Sas(0x0C), raw: *credits, digits: 8 };
                self.snapshot(now, 0, &[read], source, drafts);
            }
            Reply::SelectedMeters(selected) => {
                let reads: Vec<Read> = selected
                    .meters
                    .iter()
                    .map(|&(code, raw)| {
                        let key = MeterKey::Sas(code.into());
                        let bytes =
                            firmware_protocols::sas::MeterCode(code.into()).lp2f_value_len();
                        Read { key, raw, digits: u8::try_from(bytes * 2).unwrap_or(u8::MAX) }
                    })
                    .collect();
                self.snapshot(now, selected.game, &reads, source, drafts);
            }
            Reply::ExtendedMeters(extended) => {
                let reads: Vec<Read> = extended
                    .meters
                    .iter()
                    .map(|m| Read {
                        key: MeterKey::Sas(m.code.0),
                        raw: m.value,
                        digits: m.size.saturating_mul(2),
                    })
                    .collect();
                self.snapshot(now, extended.game, &reads, source, drafts);
            }
            // Nothing pending: no handpay, however many times the 51 is re-reported.
            Reply::HandpayInfo(info) if *info == HandpayInfo::default() => {
                self.empty_handpays = self.empty_handpays.saturating_add(1);
                tracing::warn!(
                    machine = %self.machine.registry_id,
                    "LP1B answered with every field zero: no handpay pending; dropped."
                );
            }
            Reply::HandpayInfo(info) => {
                let kind = handpay(info, self.accounting_denomination(), &currency);
                // A progressive level is no part of its game's 7F win, but the jackpot meter
                // counts it: a win of its own in the window.
                if let EventKind::Handpay { amount, .. } = &kind
                    && is_progressive_level(info.level)
                {
                    self.meters.window.wins.add(amount, self.accounting_denomination());
                }
                drafts.push(Draft::play(kind, source));
            }
            Reply::MachineInfo(info) => self.learn_machine_info(info, source, drafts),
            Reply::VersionAndSerial(version) => self.learn_serial(version, source, drafts),
            Reply::NumberOfGames(games) => {
                let mut updated = self.info.clone();
                updated.number_of_games = Some(*games);
                self.update_info(updated, source, drafts);
            }
            Reply::GameConfiguration { game, info } => {
                self.learn_game(*game, info, source, drafts);
            }
            Reply::EnabledFeatures(f) if f.game == 0 => {
                let mut updated = self.info.clone();
                updated.features = Some(crate::event::Features {
                    raw: f.features.to_vec(),
                    validation: f.validation().to_owned(),
                    ticket_redemption: f.ticket_redemption(),
                    aft: f.aft(),
                    legacy_bonus_awards: f.legacy_bonus_awards(),
                    extended_meters: f.extended_meters(),
                    multi_denomination: f.multi_denomination(),
                });
                self.update_info(updated, source, drafts);
            }
            Reply::LastBill(bill) => {
                let value = bill_value(bill.denomination_code);
                let info = BillInfo {
                    country_code: bill.country,
                    denomination_code: bill.denomination_code,
                    value,
                    count: Some(bill.count),
                };
                let amount = value.map(|units| Amount::from_major(units, &currency));
                drafts.push(Draft::plain(EventKind::BillDetails { bill: info, amount }, source));
            }
            Reply::EnhancedValidation(record) => self.validation_record(record, source, drafts),
            Reply::AftTransfer(status) => self.aft_transfer(status, source, drafts),
            Reply::ProgressiveWin(win) => {
                self.progressive_win(win.group, win.level, win.amount, source, drafts);
            }
            Reply::ProgressiveWins(wins) => {
                for &(level, cents) in &wins.levels {
                    self.progressive_win(wins.group, level, cents, source.clone(), drafts);
                }
            }
            Reply::LegacyBonusWin(award) => self.bonus_award(award, source, drafts),
            Reply::TicketValidationData(ticket) | Reply::TicketRedemption(ticket) => {
                let event = match reply {
                    Reply::TicketRedemption(_) => "ticket_redemption_status",
                    _ => "ticket_validation_data",
                };
                let mut details = vec![("status", u64::from(ticket.status))];
                if let Some(detail) = &ticket.detail {
                    details.push(("amount_cents", detail.amount));
                    details.push(("parsing_code", u64::from(detail.parsing_code)));
                }
                let kind = EventKind::SignificantEvent {
                    category: Category::Ticketing,
                    event: event.to_owned(),
                    details: details.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                };
                drafts.push(Draft::plain(kind, source));
            }
            Reply::DateTime(time) => self.clock_read(now, time, source, drafts),
            Reply::Event(event) => self.real_time_event(event, drafts),
            Reply::Exception(exception) => self.exception(*exception, source, drafts),
            Reply::RomSignature(signature) => drafts.push(Draft::plain(
                EventKind::RomSignature { seed: None, signature: *signature },
                source,
            )),
            other => drafts.push(Draft::plain(
                EventKind::Unrecognized { description: format!("{poll:?} answered {other:?}") },
                source,
            )),
        }
    }

    fn acknowledged(
        &mut self,
        now: Timestamp,
        poll: &LongPoll,
        source: Source,
        drafts: &mut Vec<Draft>,
    ) {
        let event = match poll {
            LongPoll::Shutdown => "shutdown_acknowledged",
            LongPoll::Startup => "startup_acknowledged",
            // Whether games come with data shows in the reports themselves (RTE frames or bare
            // 7E/7F), which is what the rules go by.
            LongPoll::RealTimeEventReporting(_) => return,
            // The signature follows on a later general poll (sas-protocol.md §4.4).
            LongPoll::RomSignature { .. } => return,
            LongPoll::SetDateTime(time) => {
                let kind = match civil_time(time) {
                    Some(set_to) => {
                        self.egm_clock = Some((set_to, now));
                        EventKind::ClockSet { set_to }
                    }
                    None => EventKind::Unrecognized {
                        description: format!("clock set to an impossible date {}", raw_clock(time)),
                    },
                };
                drafts.push(Draft::plain(kind, source));
                return;
            }
            other => {
                drafts.push(Draft::plain(
                    EventKind::Unrecognized { description: format!("{other:?} acknowledged") },
                    source,
                ));
                return;
            }
        };
        let kind = EventKind::SignificantEvent {
            category: Category::RemoteControl,
            event: event.to_owned(),
            details: Default::default(),
        };
        drafts.push(Draft::plain(kind, source));
    }

    /// An LP4D record: a printed ticket, a handpay receipt or a redeemed ticket, priced in cents.
    /// An empty record (nothing unread) is no event.
    fn validation_record(
        &mut self,
        record: &ValidationRecord,
        source: Source,
        drafts: &mut Vec<Draft>,
    ) {
        if record.is_empty() {
            return;
        }
        let amount = Amount::from_hundredths(record.amount, &self.venue.currency);
        let printed = format!("{:02}{:016}", record.validation_system_id, record.validation_number);
        let (validation_number, masked) = self.venue.ticket_numbers.apply(&printed);
        let class = match record.validation_type {
            0x01 | 0x03 | 0x81 => TicketClass::Restricted,
            0x82 => TicketClass::NonRestricted,
            _ => TicketClass::Cashable,
        };
        let ticket = TicketInfo {
            validation_number,
            masked,
            validation_type: record.validation_type,
            class,
            machine_time: record.date_time.as_ref().and_then(civil_time),
            ticket_number: record.ticket_number,
        };
        let kind = match record.validation_type {
            0x00..=0x04 => EventKind::TicketOut { amount, ticket },
            0x10 | 0x20 | 0x40 | 0x60 => EventKind::HandpayReceipt { amount, ticket },
            0x80..=0x82 => EventKind::TicketIn { amount, ticket },
            // The number stays out of the description: it may not be masked there.
            other => EventKind::Unrecognized {
                description: format!("LP4D validation record of type {other:#04x}"),
            },
        };
        drafts.push(Draft::play(kind, source));
    }

    /// An LP72 interrogation answer: a completed transfer is one `aft_transfer` per class it
    /// moved. A pending or refused transfer moved nothing, and the same completed transfer read
    /// again is not a second one.
    fn aft_transfer(
        &mut self,
        status: &AftTransferStatus,
        source: Source,
        drafts: &mut Vec<Draft>,
    ) {
        if !status.is_complete() || self.last_aft.as_ref() == Some(status) {
            return;
        }
        self.last_aft = Some(status.clone());
        let Some(direction) = AftDirection::of_transfer_type(status.transfer_type) else {
            drafts.push(Draft::plain(
                EventKind::Unrecognized {
                    description: format!(
                        "LP72 transfer of type {:#04x}: cashable {}, restricted {}, \
                         non-restricted {} cents",
                        status.transfer_type,
                        status.cashable,
                        status.restricted,
                        status.non_restricted
                    ),
                },
                source,
            ));
            return;
        };
        let transaction_id = ascii(&status.transaction_id);
        let machine_time = status.completed.as_ref().and_then(civil_time);
        let classes = [
            (TicketClass::Cashable, status.cashable),
            (TicketClass::Restricted, status.restricted),
            (TicketClass::NonRestricted, status.non_restricted),
        ];
        for (class, cents) in classes.into_iter().filter(|(_, cents)| *cents > 0) {
            let kind = EventKind::AftTransfer {
                direction,
                class,
                amount: Amount::from_hundredths(cents, &self.venue.currency),
                transfer_type: status.transfer_type,
                status: status.status,
                transaction_id: transaction_id.clone(),
                machine_time,
            };
            drafts.push(Draft::play(kind, source.clone()));
        }
    }

    /// A SAS progressive level paid to the credit meter (LP85, LP87): a win outside the game's
    /// 7F, in cents.
    fn progressive_win(
        &mut self,
        group: u8,
        level: u8,
        cents: u64,
        source: Source,
        drafts: &mut Vec<Draft>,
    ) {
        let amount = Amount::from_hundredths(cents, &self.venue.currency);
        self.meters.window.wins.add(&amount, self.accounting_denomination());
        drafts.push(Draft::play(EventKind::ProgressiveWin { group, level, amount }, source));
    }

    /// A legacy bonus paid to the credit meter (RTE 7C or LP90): a win outside the game's 7F.
    fn bonus_award(&mut self, award: &LegacyBonusWin, source: Source, drafts: &mut Vec<Draft>) {
        let accounting = self.accounting_denomination();
        let currency = self.venue.currency;
        let amount = Amount::from_credits(award.bonus, accounting, &currency);
        self.meters.window.wins.add(&amount, accounting);
        let kind = EventKind::BonusAward {
            amount,
            multiplier: award.multiplier,
            multiplied_win: Amount::from_credits(award.multiplied_win, accounting, &currency),
            tax_status: award.tax_status,
        };
        drafts.push(Draft::play(kind, source));
    }

    fn learn_machine_info(
        &mut self,
        info: &SasMachineInfo,
        source: Source,
        drafts: &mut Vec<Draft>,
    ) {
        let previous = self.accounting_denomination();
        let code = info.denomination;
        let mut updated = self.info.clone();
        updated.game_id = Some(ascii(&info.game_id));
        updated.additional_id = Some(ascii(&info.additional_id));
        updated.paytable_id = Some(ascii(&info.paytable_id));
        updated.base_percentage = Some(ascii(&info.base_percentage));
        updated.denomination_code = Some(code);
        updated.denomination = Some(Amount::from_credits(1, Some(code), &self.venue.currency));
        updated.max_bet = Some(info.max_bet);
        updated.progressive_group = Some(info.progressive_group);
        updated.game_options = Some(info.game_options);
        if self.info.denomination_code.is_some_and(|old| old != code) {
            self.meters.mark(WindowContext::DenominationChange);
        }
        if updated == self.info {
            return;
        }
        self.info = updated;
        if previous.is_none()
            && let Some(denomination) = self.accounting_denomination()
        {
            self.meters.denomination_learned(denomination, &self.venue.currency);
        }
        drafts.push(Draft::plain(EventKind::MachineInfo(Box::new(self.info.clone())), source));
    }

    /// LP53: one game's denomination and paytable. A game whose denomination changed starts a
    /// window that says so.
    fn learn_game(
        &mut self,
        number: u16,
        info: &SasMachineInfo,
        source: Source,
        drafts: &mut Vec<Draft>,
    ) {
        let code = info.denomination;
        let game = GameInfo {
            number,
            denomination_code: code,
            denomination: Some(Amount::from_credits(1, Some(code), &self.venue.currency)),
            paytable_id: ascii(&info.paytable_id),
            max_bet: info.max_bet,
        };
        let mut updated = self.info.clone();
        if let Some(known) = updated.games.iter_mut().find(|g| g.number == number) {
            if known.denomination_code != code {
                self.meters.game_window(number).context.insert(WindowContext::DenominationChange);
            }
            *known = game;
        } else {
            updated.games.push(game);
            updated.games.sort_by_key(|g| g.number);
        }
        self.update_info(updated, source, drafts);
    }

    /// Emits `machine_info` if `updated` differs from what was last reported.
    fn update_info(&mut self, updated: MachineInfo, source: Source, drafts: &mut Vec<Draft>) {
        if updated != self.info {
            self.info = updated;
            drafts.push(Draft::plain(EventKind::MachineInfo(Box::new(self.info.clone())), source));
        }
    }

    fn learn_serial(
        &mut self,
        version: &VersionAndSerial,
        source: Source,
        drafts: &mut Vec<Draft>,
    ) {
        let mut updated = self.info.clone();
        updated.sas_version = Some(ascii(&version.version));
        updated.serial = Some(ascii(&version.serial));
        self.update_info(updated, source, drafts);
    }

    // === Clock ===

    fn clock_read(
        &mut self,
        now: Timestamp,
        time: &DateTime,
        source: Source,
        drafts: &mut Vec<Draft>,
    ) {
        let threshold = self.venue.clock_drift_threshold;
        let drift = civil_time(time).and_then(|egm| {
            self.egm_clock = Some((egm, now));
            drift(&self.venue.time_zone, egm, now)
        });
        if drift.is_some_and(|d| d.unsigned_abs() <= threshold) {
            return;
        }
        let kind = EventKind::ClockDrift {
            egm_clock: raw_clock(time),
            drift_seconds: drift.map(|d| d.as_secs()),
            threshold_seconds: threshold.as_secs(),
        };
        drafts.push(Draft::plain(kind, source));
    }

    // === Meters ===

    fn snapshot(
        &mut self,
        now: Timestamp,
        game: u16,
        reads: &[Read],
        source: Source,
        drafts: &mut Vec<Draft>,
    ) {
        let pending = self.pending;
        let trigger = if pending.gap.is_some() {
            SnapshotTrigger::LinkUp
        } else if pending.event_gap {
            SnapshotTrigger::EventGap
        } else if pending.resync || pending.reset_signal.is_some() {
            SnapshotTrigger::Resync
        } else if pending.game_end {
            SnapshotTrigger::GameEnd
        } else {
            SnapshotTrigger::Periodic
        };
        let ctx = SnapshotContext {
            now,
            denomination: self.accounting_denomination(),
            currency: self.venue.currency,
            reset_signal: pending.reset_signal,
            trigger,
            gap: pending.gap,
        };
        for outcome in self.meters.snapshot(&ctx, game, reads) {
            let gateway =
                |name: &str| Source { kind: SourceKind::Gateway, code: None, name: name.into() };
            let draft = match outcome {
                Outcome::Reset(kind) => Draft::derived(kind, gateway("meter_continuity"), false),
                Outcome::Snapshot(kind) => Draft::plain(kind, source.clone()),
                Outcome::GapSummary(kind) => {
                    Draft::derived(kind, gateway("link_gap_summary"), false)
                }
                Outcome::DerivedBet(kind) | Outcome::DerivedWin(kind) => {
                    Draft::derived(kind, source.clone(), true)
                }
                Outcome::Reconciliation(kind) => {
                    Draft::derived(kind, gateway("reconciliation"), false)
                }
            };
            drafts.push(draft);
        }
        // Only a snapshot that closes a window (see `meters`) consumes what was pending for it.
        let closes_window = game == 0
            && [0x00, 0x01, 0x02]
                .iter()
                .all(|code| reads.iter().any(|r| r.key == MeterKey::Sas(*code)));
        if closes_window {
            self.pending = Pending::default();
        }
    }

    // === Emitting ===

    fn finish(
        &mut self,
        now: Timestamp,
        drafts: Vec<Draft>,
    ) -> Result<Vec<CanonicalEvent>, NormalizeError> {
        let count = u64::try_from(drafts.len()).unwrap_or(u64::MAX);
        if self.next_seq.checked_add(count).is_none() {
            return Err(NormalizeError::SequenceExhausted { next_seq: self.next_seq });
        }
        let offset = self.venue.time_zone.to_offset(now);
        let occurred_at_local = now.display_with_offset(offset).to_string();
        let egm_time =
            self.egm_clock.and_then(|(egm, at)| egm.checked_add(now.duration_since(at)).ok());
        let machine = MachineRef {
            registry_id: self.machine.registry_id.clone(),
            sas_address: self.machine.address.get(),
            asset_number: self.machine.asset_number.clone(),
            serial: self.info.serial.clone(),
        };
        let game = GameRef {
            number: self.game_number,
            game_id: self.info.game_id.clone(),
            paytable_id: self.info.paytable_id.clone(),
            denomination_code: self.game_denomination(),
        };
        let events = drafts
            .into_iter()
            .map(|draft| {
                let machine_seq = self.next_seq;
                // Cannot overflow: checked for the whole batch above.
                self.next_seq += 1;
                let key =
                    idempotency_key(&self.venue.venue_id, &self.machine.registry_id, machine_seq);
                CanonicalEvent {
                    schema_version: SCHEMA_VERSION,
                    event_id: event_id(&key),
                    idempotency_key: key,
                    venue_id: self.venue.venue_id.clone(),
                    machine: machine.clone(),
                    machine_seq,
                    occurred_at: now,
                    occurred_at_local: occurred_at_local.clone(),
                    egm_time,
                    game: draft.play.then(|| game.clone()),
                    source: draft.source,
                    derived: draft.derived,
                    kind: draft.kind,
                }
            })
            .collect();
        Ok(events)
    }
}

impl Draft {
    fn plain(kind: EventKind, source: Source) -> Self {
        Self { kind, source, derived: false, play: false }
    }

    fn play(kind: EventKind, source: Source) -> Self {
        Self { kind, source, derived: false, play: true }
    }

    fn derived(kind: EventKind, source: Source, play: bool) -> Self {
        Self { kind, source, derived: true, play }
    }
}

fn session_source(name: &str) -> Source {
    Source { kind: SourceKind::Session, code: None, name: name.to_owned() }
}

fn long_poll_source(poll: &LongPoll) -> Source {
    let debug = format!("{poll:?}");
    // The variant name, without its fields: `SendSelectedMeters { .. }` → `SendSelectedMeters`.
    let name = debug.split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or_default();
    Source { kind: SourceKind::LongPoll, code: Some(poll.command()), name: name.to_owned() }
}

fn significant(
    category: Category,
    code: Exception,
    details: &[(&str, u64)],
    source: Source,
) -> Draft {
    let kind = EventKind::SignificantEvent {
        category,
        event: exceptions::snake_case(code.name()),
        details: details.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    };
    Draft::play(kind, source)
}

/// LP1B reports a progressive handpay (levels 01–20) in cents and any other (00 non-progressive
/// win, 40 top award, 80 cancelled credits) in accounting credits (sas-protocol.md §7.2, MON
/// `LP1BSendHandpayInfoHandler`).
fn handpay(info: &HandpayInfo, accounting: Option<u8>, currency: &Currency) -> EventKind {
    let amount = if is_progressive_level(info.level) {
        Amount::from_hundredths(info.amount, currency)
    } else {
        Amount::from_credits(info.amount, accounting, currency)
    };
    EventKind::Handpay {
        amount,
        partial_pay: Amount::from_hundredths(info.partial_pay, currency),
        progressive_group: info.progressive_group,
        level: info.level,
        reset_id: info.reset_id,
    }
}

/// SAS progressive levels are 01–20 (hex); 00, 40 and 80 are not progressive.
fn is_progressive_level(level: u8) -> bool {
    (0x01..=0x20).contains(&level)
}

/// Text from the machine: printable ASCII as is, anything else as `\xNN`, so nothing is lost or
/// invented.
fn ascii(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_graphic() || byte == b' ' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("\\x{byte:02X}"));
        }
    }
    out
}

/// A SAS date and time as a civil time, if it is a real date.
fn civil_time(time: &DateTime) -> Option<civil::DateTime> {
    civil::DateTime::new(
        i16::try_from(time.year).ok()?,
        i8::try_from(time.month).ok()?,
        i8::try_from(time.day).ok()?,
        i8::try_from(time.hour).ok()?,
        i8::try_from(time.minute).ok()?,
        i8::try_from(time.second).ok()?,
        0,
    )
    .ok()
}

/// What the machine sent, formatted like a civil time even when it is not a real date.
fn raw_clock(time: &DateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        time.year, time.month, time.day, time.hour, time.minute, time.second
    )
}

/// Machine clock minus gateway clock, reading the machine's civil time in `zone`. In a DST gap
/// or fold the civil time has two readings; the one nearer the gateway clock is taken, since a
/// machine clock without DST is more likely right than an hour off.
fn drift(zone: &TimeZone, egm: civil::DateTime, now: Timestamp) -> Option<SignedDuration> {
    let offsets = match zone.to_ambiguous_timestamp(egm).offset() {
        AmbiguousOffset::Unambiguous { offset } => vec![offset],
        AmbiguousOffset::Gap { before, after } | AmbiguousOffset::Fold { before, after } => {
            vec![before, after]
        }
    };
    offsets
        .into_iter()
        .filter_map(|offset| offset.to_timestamp(egm).ok())
        .map(|instant| instant.duration_since(now))
        .min_by_key(|drift| drift.unsigned_abs())
}

fn basic_meters(m: &BasicMeters) -> Vec<Read> {
    let sas = |code: u16, raw| Read { key: MeterKey::Sas(code), raw, digits: 8 };
    vec![
        sas(0x00, m.coin_in),
        sas(0x01, m.coin_out),
        sas(0x24, m.drop),
        sas(0x02, m.jackpot),
        sas(0x05, m.games_played),
        sas(0x06, m.games_won),
        Read { key: MeterKey::SlotDoorOpenCount, raw: m.slot_door_opened, digits: 8 },
        Read { key: MeterKey::PowerResetCount, raw: m.power_resets, digits: 8 },
    ]
}

fn meters_10_to_15(m: &Meters10To15) -> Vec<Read> {
    let sas = |code: u16, raw| Read { key: MeterKey::Sas(code), raw, digits: 8 };
    vec![
        sas(0x04, m.cancelled_credits),
        sas(0x00, m.coin_in),
        sas(0x01, m.coin_out),
        sas(0x24, m.drop),
        sas(0x02, m.jackpot),
        sas(0x05, m.games_played),
    ]
}

/// The fixed single-meter polls (sas-protocol.md §7.2), value by value.
fn single_meters(poll: MeterPoll, values: &[u64]) -> Vec<Read> {
    let (_, width) = poll.layout();
    let digits = u8::try_from(width * 2).unwrap_or(u8::MAX);
    let keys: Vec<MeterKey> = match poll {
        MeterPoll::CancelledCredits => vec![MeterKey::Sas(0x04)],
        MeterPoll::CoinIn => vec![MeterKey::Sas(0x00)],
        MeterPoll::CoinOut => vec![MeterKey::Sas(0x01)],
        MeterPoll::Drop => vec![MeterKey::Sas(0x24)],
        MeterPoll::Jackpot => vec![MeterKey::Sas(0x02)],
        MeterPoll::GamesPlayed => vec![MeterKey::Sas(0x05)],
        MeterPoll::GamesWon => vec![MeterKey::Sas(0x06)],
        MeterPoll::GamesLost => vec![MeterKey::Sas(0x07)],
        MeterPoll::GamesSincePowerUp => vec![MeterKey::Sas(0x25), MeterKey::Sas(0x26)],
        MeterPoll::Meters11To15 => [0x00, 0x01, 0x24, 0x02, 0x05].map(MeterKey::Sas).to_vec(),
        MeterPoll::LegacyEftMeters => (0..4).map(MeterKey::LegacyEft).collect(),
        // $1, $5, $10, $20, $50, $100: meters 0040 + the bill's position in §7.4's order.
        MeterPoll::BillCounts => [0x40, 0x42, 0x43, 0x44, 0x46, 0x47].map(MeterKey::Sas).to_vec(),
    };
    keys.into_iter().zip(values).map(|(key, &raw)| Read { key, raw, digits }).collect()
}
