//! Meter bookkeeping for one machine: lifetime virtual meters across rollovers and resets, and
//! the reconciliation window between two consecutive snapshots.
//!
//! A *reconciling* snapshot is one for the whole machine (game 0) that carries coin in (0000),
//! coin out (0001) and jackpot (0002): LP1C, LP0F, LP19, or LP2F/LP6F asking for those three. It
//! closes the window that the previous one opened: events in the window are compared with the
//! meter deltas, a link-outage window is summarised, and games reported without data are priced.
//!
//! The same holds per game (R2): an LP2F/LP6F snapshot of game N ≠ 0 with those three meters
//! closes game N's own window, whose bets and wins are the play events reported while game N was
//! selected (8C). It only compares (a `reconciliation` with `game_number` N); outages are
//! summarised and games without data priced for the machine alone.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use firmware_protocols::sas::MeterCode;

use crate::event::money::{bill_value, credits_to_minor, hundredths_to_minor};
use crate::event::{
    Amount, AmountStatus, Counts, Currency, EventKind, Figures, MeterJump, MeterReading, MeterUnit,
    ReconciliationOutcome, SnapshotTrigger, WindowContext,
};

/// A meter as the normalizer tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum MeterKey {
    /// A SAS meter code (sas-protocol.md §7.4).
    Sas(u16),
    /// LP1C's slot-door-open count, which has no meter code.
    SlotDoorOpenCount,
    /// LP1C's power-reset count, which has no meter code.
    PowerResetCount,
    /// LP1D's four legacy EFT meters, in reply order.
    LegacyEft(u8),
}

const COIN_IN: MeterKey = MeterKey::Sas(MeterCode::TOTAL_COIN_IN.0);
const COIN_OUT: MeterKey = MeterKey::Sas(MeterCode::TOTAL_COIN_OUT.0);
const JACKPOT: MeterKey = MeterKey::Sas(MeterCode::TOTAL_JACKPOT.0);
const GAMES_PLAYED: MeterKey = MeterKey::Sas(MeterCode::GAMES_PLAYED.0);

const LEGACY_EFT_NAMES: [&str; 4] = [
    "legacy_eft_promo_in",
    "legacy_eft_non_cash_in",
    "legacy_eft_transferred",
    "legacy_eft_cashable_in",
];

impl MeterKey {
    /// The canonical name: the meter's common name, or `sas_` and the four-digit hex code.
    pub(super) fn name(self) -> String {
        let known = match self {
            Self::SlotDoorOpenCount => "slot_door_open_count",
            Self::PowerResetCount => "power_reset_count",
            Self::LegacyEft(index) => {
                LEGACY_EFT_NAMES.get(usize::from(index)).copied().unwrap_or("legacy_eft")
            }
            // Bills accepted per denomination: `bills_accepted_` and the face value in
            // currency units, the bill codes' order (§7.4).
            Self::Sas(code @ 0x40..=0x57) => {
                let value = u8::try_from(code - 0x40).ok().and_then(bill_value);
                return value.map_or_else(
                    || format!("sas_{code:04x}"),
                    |value| format!("bills_accepted_{value}"),
                );
            }
            Self::Sas(code) => match code {
                0x00 => "coin_in",
                0x01 => "coin_out",
                0x02 => "jackpot",
                0x03 => "handpaid_cancelled_credits",
                0x04 => "cancelled_credits",
                0x05 => "games_played",
                0x06 => "games_won",
                0x07 => "games_lost",
                0x0B => "bills_accepted_credits",
                0x0C => "current_credits",
                0x0D => "cashable_ticket_in_cents",
                0x0E => "cashable_ticket_out_cents",
                0x0F => "restricted_ticket_in_cents",
                0x10 => "restricted_ticket_out_cents",
                0x15 => "total_ticket_in",
                0x16 => "total_ticket_out",
                0x22 => "total_won",
                0x23 => "total_hand_paid",
                0x24 => "drop",
                0x25 => "games_since_power_reset",
                0x26 => "games_since_slot_door_closure",
                0x1D => "machine_paid_progressive",
                0x1E => "machine_paid_external_bonus",
                0x20 => "attendant_paid_progressive",
                0x21 => "attendant_paid_external_bonus",
                0xA0 => "aft_cashable_in_cents",
                0xA1 => "aft_cashable_in_count",
                0xA2 => "aft_restricted_in_cents",
                0xA3 => "aft_restricted_in_count",
                0xA4 => "aft_non_restricted_in_cents",
                0xA5 => "aft_non_restricted_in_count",
                0xB8 => "aft_cashable_out_cents",
                0xB9 => "aft_cashable_out_count",
                0xBA => "aft_restricted_out_cents",
                0xBB => "aft_restricted_out_count",
                0xBC => "aft_non_restricted_out_cents",
                0xBD => "aft_non_restricted_out_count",
                _ => return format!("sas_{code:04x}"),
            },
        };
        known.to_owned()
    }

    /// Inverse of [`Self::name`] with the reading's code, for resuming from a journalled snapshot.
    pub(super) fn from_reading(name: &str, sas_code: Option<u16>) -> Option<Self> {
        if let Some(code) = sas_code {
            return Some(Self::Sas(code));
        }
        match name {
            "slot_door_open_count" => Some(Self::SlotDoorOpenCount),
            "power_reset_count" => Some(Self::PowerResetCount),
            _ => LEGACY_EFT_NAMES
                .iter()
                .position(|n| *n == name)
                .and_then(|i| u8::try_from(i).ok())
                .map(Self::LegacyEft),
        }
    }

    pub(super) fn sas_code(self) -> Option<u16> {
        match self {
            Self::Sas(code) => Some(code),
            _ => None,
        }
    }

    /// What the meter counts (sas-protocol.md §7.4). Codes not listed are `other`: reported raw,
    /// never priced.
    pub(super) fn unit(self) -> MeterUnit {
        let code = match self {
            Self::SlotDoorOpenCount | Self::PowerResetCount => return MeterUnit::Count,
            Self::LegacyEft(_) => return MeterUnit::Other,
            Self::Sas(code) => code,
        };
        if MeterCode(code).is_cents() {
            return MeterUnit::Cents;
        }
        match code {
            0x00..=0x04 | 0x08..=0x0C | 0x15..=0x24 | 0x27..=0x34 => MeterUnit::Credits,
            0x05..=0x07 | 0x11..=0x14 | 0x25 | 0x26 | 0x35..=0x39 | 0x3E | 0x40..=0x79 | 0x7C => {
                MeterUnit::Count
            }
            // The quantity halves of the cents/quantity pairs.
            0x80..=0x93 | 0xA0..=0xBD => MeterUnit::Count,
            _ => MeterUnit::Other,
        }
    }

    /// Whether the meter only ever goes up (until it wraps or is reset). Current credits, current
    /// restricted credits, the since-power-reset and since-door-closure game counters and the
    /// stacker meters go down in normal operation and are reported raw.
    pub(super) fn is_lifetime(self) -> bool {
        match self {
            Self::Sas(code) => {
                !matches!(code, 0x0C | 0x1B | 0x25 | 0x26 | 0x3E | 0x3F)
                    && self.unit() != MeterUnit::Other
            }
            Self::SlotDoorOpenCount | Self::PowerResetCount => true,
            Self::LegacyEft(_) => false,
        }
    }
}

/// One value as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Read {
    pub key: MeterKey,
    pub raw: u64,
    /// BCD digits on the wire.
    pub digits: u8,
}

/// What the normalizer knows when a snapshot arrives.
#[derive(Debug, Clone, Copy)]
pub(super) struct SnapshotContext {
    pub now: Timestamp,
    /// The accounting denomination code, if LP1F gave a valid one.
    pub denomination: Option<u8>,
    pub currency: Currency,
    /// An exception since the last reconciling snapshot said the meters were reset (3A, 7A,
    /// 32–35): every decrease is then a reset, never a rollover.
    pub reset_signal: Option<u8>,
    /// Why the meters were read, unless this is the baseline.
    pub trigger: SnapshotTrigger,
    /// The link came back (or the gateway restarted) since the last reconciling snapshot; the
    /// value is when it went down, if known.
    pub gap: Option<Option<Timestamp>>,
}

/// What a snapshot produced, in emission order.
#[derive(Debug)]
pub(super) enum Outcome {
    Reset(EventKind),
    Snapshot(EventKind),
    GapSummary(EventKind),
    DerivedBet(EventKind),
    DerivedWin(EventKind),
    Reconciliation(EventKind),
}

/// A running money total of a lifetime meter.
type MinorTotal = Result<i64, AmountStatus>;

#[derive(Debug, Clone, Copy)]
struct Tracker {
    raw: u64,
    digits: u8,
    lifetime: u64,
    minor: MinorTotal,
}

/// Lifetime level of one meter at a reconciling snapshot.
#[derive(Debug, Clone, Copy)]
struct Level {
    credits: u64,
    minor: MinorTotal,
}

#[derive(Debug, Clone, Copy)]
struct Base {
    at: Timestamp,
    coin_in: Level,
    coin_out: Level,
    jackpot: Level,
    games: Option<u64>,
}

/// A sum of event amounts: minor units (an error status once one was not exact) and credits
/// (null once one was counted in another denomination than the accounting one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sum {
    minor: MinorTotal,
    credits: Option<u64>,
}

impl Sum {
    const ZERO: Self = Self { minor: Ok(0), credits: Some(0) };

    pub(super) fn add(&mut self, amount: &Amount, accounting: Option<u8>) {
        self.minor = match (self.minor, amount.minor_units) {
            (Ok(total), Some(minor)) => total.checked_add(minor).ok_or(AmountStatus::Overflow),
            (Ok(_), None) => Err(amount.status),
            (Err(status), _) => Err(status),
        };
        self.credits = match (self.credits, amount.credits) {
            (Some(total), Some(credits)) if amount.denomination_code == accounting => {
                total.checked_add(credits)
            }
            _ => None,
        };
    }
}

/// Events since the last reconciling snapshot.
#[derive(Debug, Clone)]
pub(super) struct Window {
    pub bets: Sum,
    pub wins: Sum,
    pub games_ended: u64,
    /// A bare 7E/7F arrived: the machine reports games without data, so the snapshot that closes
    /// the window prices them from the meters.
    pub games_without_data: bool,
    pub context: BTreeSet<WindowContext>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            bets: Sum::ZERO,
            wins: Sum::ZERO,
            games_ended: 0,
            games_without_data: false,
            context: BTreeSet::new(),
        }
    }
}

/// Lifetime meters and the open reconciliation windows of one machine.
#[derive(Debug, Default)]
pub(super) struct MeterBook {
    trackers: BTreeMap<(u16, MeterKey), Tracker>,
    base: Option<Base>,
    pub window: Window,
    /// Per game N ≠ 0: the levels at its last reconciling snapshot, and the window since.
    game_bases: BTreeMap<u16, Base>,
    game_windows: BTreeMap<u16, Window>,
}

/// `10^digits`, the value at which a meter of that many BCD digits wraps; `None` if it does not
/// fit, in which case the meter is taken never to wrap.
fn modulus(digits: u8) -> Option<u64> {
    10u64.checked_pow(u32::from(digits))
}

/// Money value of `quantity` units of a meter.
fn money(
    unit: MeterUnit,
    quantity: u64,
    denomination: Option<u8>,
    currency: &Currency,
) -> MinorTotal {
    let result = match unit {
        MeterUnit::Credits => match denomination {
            Some(code) => credits_to_minor(quantity, code, currency),
            None => return Err(AmountStatus::DenominationUnknown),
        },
        MeterUnit::Cents => hundredths_to_minor(quantity, currency),
        MeterUnit::Count | MeterUnit::Other => return Ok(0),
    };
    result.map_err(|e| AmountStatus::from(&e))
}

fn amount_of(
    credits: Option<u64>,
    minor: MinorTotal,
    denomination: Option<u8>,
    currency: &Currency,
) -> Amount {
    Amount {
        minor_units: minor.ok(),
        currency: currency.code(),
        credits,
        denomination_code: denomination,
        status: minor.err().unwrap_or(AmountStatus::Exact),
    }
}

/// Difference of two lifetime levels.
#[derive(Debug, Clone, Copy)]
struct Delta {
    credits: u64,
    minor: MinorTotal,
}

fn delta(from: Level, to: Level) -> Delta {
    let minor = match (from.minor, to.minor) {
        (Ok(a), Ok(b)) => b.checked_sub(a).ok_or(AmountStatus::Overflow),
        (Err(status), _) | (_, Err(status)) => Err(status),
    };
    // Lifetime levels never go down, so this cannot saturate.
    Delta { credits: to.credits.saturating_sub(from.credits), minor }
}

fn sum_deltas(a: Delta, b: Delta) -> Delta {
    let minor = match (a.minor, b.minor) {
        (Ok(x), Ok(y)) => x.checked_add(y).ok_or(AmountStatus::Overflow),
        (Err(status), _) | (_, Err(status)) => Err(status),
    };
    Delta { credits: a.credits.saturating_add(b.credits), minor }
}

/// What remains of a meter delta after the events already reported, if it is positive.
fn remainder(delta: Delta, reported: Sum, ctx: &SnapshotContext) -> Option<Amount> {
    let credits = reported.credits.and_then(|c| delta.credits.checked_sub(c));
    let minor = match (delta.minor, reported.minor) {
        (Ok(m), Ok(r)) => m.checked_sub(r).ok_or(AmountStatus::Overflow),
        (Err(status), _) | (_, Err(status)) => Err(status),
    };
    let positive = match (minor, credits) {
        (Ok(m), _) => m > 0,
        (Err(_), Some(c)) => c > 0,
        (Err(_), None) => false,
    };
    positive.then(|| amount_of(credits, minor, ctx.denomination, &ctx.currency))
}

fn figures(events: Option<i64>, meters: MinorTotal, currency: &Currency) -> Figures {
    let meters = meters.ok();
    let difference = match (events, meters) {
        (Some(e), Some(m)) => m.checked_sub(e),
        _ => None,
    };
    Figures {
        currency: currency.code(),
        events_minor_units: events,
        meters_minor_units: meters,
        difference,
    }
}

impl MeterBook {
    /// Rebuilds the lifetime meters from readings the journal kept, so that lifetime values
    /// continue across a gateway restart. The next reconciling snapshot is compared with them.
    pub(super) fn restore(
        &mut self,
        at: Timestamp,
        game: u16,
        meters: &BTreeMap<String, MeterReading>,
    ) {
        for (name, reading) in meters {
            let (Some(key), Some(lifetime)) =
                (MeterKey::from_reading(name, reading.sas_code), reading.lifetime)
            else {
                continue;
            };
            let minor = match &reading.amount {
                Some(amount) => amount.minor_units.ok_or(amount.status),
                None => Ok(0),
            };
            let tracker = Tracker { raw: reading.raw, digits: reading.digits, lifetime, minor };
            self.trackers.insert((game, key), tracker);
        }
        match self.base_of(game, at) {
            Some(base) if game == 0 => self.base = Some(base),
            Some(base) => {
                self.game_bases.insert(game, base);
                self.game_windows.entry(game).or_default();
            }
            None => {}
        }
    }

    /// The accounting denomination became known for the first time: price the lifetime credits
    /// read so far at it, so that the next window can be reconciled.
    pub(super) fn denomination_learned(&mut self, denomination: u8, currency: &Currency) {
        for ((_, key), tracker) in &mut self.trackers {
            if key.unit() == MeterUnit::Credits
                && tracker.minor == Err(AmountStatus::DenominationUnknown)
            {
                tracker.minor =
                    money(MeterUnit::Credits, tracker.lifetime, Some(denomination), currency);
            }
        }
        for base in self.base.iter_mut().chain(self.game_bases.values_mut()) {
            for level in [&mut base.coin_in, &mut base.coin_out, &mut base.jackpot] {
                if level.minor == Err(AmountStatus::DenominationUnknown) {
                    level.minor =
                        money(MeterUnit::Credits, level.credits, Some(denomination), currency);
                }
            }
        }
    }

    /// Something happened that may explain a mismatch: every open window, the machine's and
    /// each game's, holds it.
    pub(super) fn mark(&mut self, context: WindowContext) {
        self.window.context.insert(context);
        for window in self.game_windows.values_mut() {
            window.context.insert(context);
        }
    }

    /// A bare 7E/7F: games are reported without data, in every window.
    pub(super) fn games_without_data(&mut self) {
        self.window.games_without_data = true;
        for window in self.game_windows.values_mut() {
            window.games_without_data = true;
        }
    }

    /// The machine's window, and game `game`'s if a game is selected: where a play event's
    /// amount is summed.
    pub(super) fn play_windows(&mut self, game: Option<u16>) -> Vec<&mut Window> {
        let mut windows = vec![&mut self.window];
        if let Some(game) = game {
            windows.push(self.game_windows.entry(game).or_default());
        }
        windows
    }

    /// Game `game`'s window, where its play events are summed (alongside the machine's).
    pub(super) fn game_window(&mut self, game: u16) -> &mut Window {
        self.game_windows.entry(game).or_default()
    }

    fn level(&self, game: u16, key: MeterKey) -> Option<Level> {
        self.trackers.get(&(game, key)).map(|t| Level { credits: t.lifetime, minor: t.minor })
    }

    fn current_base(&self, at: Timestamp) -> Option<Base> {
        self.base_of(0, at)
    }

    fn base_of(&self, game: u16, at: Timestamp) -> Option<Base> {
        Some(Base {
            at,
            coin_in: self.level(game, COIN_IN)?,
            coin_out: self.level(game, COIN_OUT)?,
            jackpot: self.level(game, JACKPOT)?,
            games: self.level(game, GAMES_PLAYED).map(|l| l.credits),
        })
    }

    /// Takes one snapshot in. See the module documentation.
    pub(super) fn snapshot(
        &mut self,
        ctx: &SnapshotContext,
        game: u16,
        reads: &[Read],
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        let mut jumps = Vec::new();
        let mut meters = BTreeMap::new();
        for read in reads {
            let (reading, jump) = self.read(ctx, game, *read);
            jumps.extend(jump);
            meters.insert(read.key.name(), reading);
        }
        if !jumps.is_empty() {
            self.window.context.insert(WindowContext::MeterReset);
            out.push(Outcome::Reset(EventKind::MeterReset {
                meters: jumps,
                signalled_by: ctx.reset_signal,
            }));
        }
        let has = |key: MeterKey| reads.iter().any(|r| r.key == key);
        let reconciling = has(COIN_IN) && has(COIN_OUT) && has(JACKPOT);
        let baseline = match game {
            0 => self.base.is_none(),
            game => !self.game_bases.contains_key(&game),
        };
        let trigger = if reconciling && baseline { SnapshotTrigger::Baseline } else { ctx.trigger };
        out.push(Outcome::Snapshot(EventKind::MeterSnapshot {
            trigger,
            game_number: game,
            meters,
        }));
        if reconciling && game == 0 {
            self.close_window(ctx, &mut out);
        } else if reconciling {
            self.close_game_window(ctx, game, &mut out);
        }
        out
    }

    /// Compares game `game`'s events since its last reconciling snapshot with its meter deltas
    /// and opens its next window.
    fn close_game_window(&mut self, ctx: &SnapshotContext, game: u16, out: &mut Vec<Outcome>) {
        let Some(current) = self.base_of(game, ctx.now) else { return };
        let window = std::mem::take(self.game_window(game));
        let Some(base) = self.game_bases.insert(game, current) else { return };
        let coin_in = delta(base.coin_in, current.coin_in);
        let won = sum_deltas(
            delta(base.coin_out, current.coin_out),
            delta(base.jackpot, current.jackpot),
        );
        let games = match (base.games, current.games) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        // Games reported without data are priced for the machine alone, so a game's own
        // figures cannot be compared.
        let priced = !window.games_without_data;
        let window_start = base.at;
        out.extend(reconciliation(
            Some(game),
            window,
            priced,
            (coin_in, won, games),
            window_start,
            ctx,
        ));
    }

    /// Updates one meter's tracker and returns its reading, and the jump if it went down.
    fn read(
        &mut self,
        ctx: &SnapshotContext,
        game: u16,
        read: Read,
    ) -> (MeterReading, Option<MeterJump>) {
        let unit = read.key.unit();
        let mut reading = MeterReading {
            sas_code: read.key.sas_code(),
            unit,
            raw: read.raw,
            digits: read.digits,
            lifetime: None,
            amount: None,
            rolled_over: false,
        };
        let priced = matches!(unit, MeterUnit::Credits | MeterUnit::Cents);
        let credits = (unit == MeterUnit::Credits).then_some(read.raw);
        if !read.key.is_lifetime() {
            if priced {
                let minor = money(unit, read.raw, ctx.denomination, &ctx.currency);
                reading.amount = Some(amount_of(credits, minor, ctx.denomination, &ctx.currency));
            }
            return (reading, None);
        }
        let mut jump = None;
        let tracker = match self.trackers.get_mut(&(game, read.key)) {
            None => {
                let minor = money(unit, read.raw, ctx.denomination, &ctx.currency);
                let tracker =
                    Tracker { raw: read.raw, digits: read.digits, lifetime: read.raw, minor };
                self.trackers.entry((game, read.key)).or_insert(tracker)
            }
            Some(tracker) => {
                // Compare modulo the narrower width, so that one meter read as 4 bytes (LP1C)
                // and as 5 or more (LP2F, LP6F) does not look like a reset.
                let m = match (modulus(tracker.digits), modulus(read.digits)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let (before, after) = match m {
                    Some(m) => (tracker.raw % m, read.raw % m),
                    None => (tracker.raw, read.raw),
                };
                let increase = if after >= before {
                    after - before
                } else {
                    let wrapped = m.map(|m| m - before + after);
                    match wrapped {
                        // A rollover: the meter passed 10^digits. Told apart from a reset by
                        // the size of the step (at most a tenth of the range) and by the
                        // machine not having announced a reset.
                        Some(step)
                            if ctx.reset_signal.is_none() && m.is_some_and(|m| step <= m / 10) =>
                        {
                            reading.rolled_over = true;
                            step
                        }
                        // A reset (RAM clear, 7A): the meter restarted from zero, so its value
                        // now is what happened since.
                        _ => {
                            jump = Some(MeterJump {
                                meter: read.key.name(),
                                before: tracker.raw,
                                after: read.raw,
                            });
                            after
                        }
                    }
                };
                tracker.raw = read.raw;
                tracker.digits = read.digits;
                tracker.lifetime = tracker.lifetime.saturating_add(increase);
                tracker.minor =
                    match (tracker.minor, money(unit, increase, ctx.denomination, &ctx.currency)) {
                        (Ok(total), Ok(step)) => {
                            total.checked_add(step).ok_or(AmountStatus::Overflow)
                        }
                        (Err(status), _) | (_, Err(status)) => Err(status),
                    };
                tracker
            }
        };
        reading.lifetime = Some(tracker.lifetime);
        if priced {
            let credits = (unit == MeterUnit::Credits).then_some(tracker.lifetime);
            reading.amount =
                Some(amount_of(credits, tracker.minor, ctx.denomination, &ctx.currency));
        }
        (reading, jump)
    }

    /// Compares the window's events with the meter deltas since the last reconciling snapshot,
    /// summarises an outage, prices games reported without data, and opens the next window.
    fn close_window(&mut self, ctx: &SnapshotContext, out: &mut Vec<Outcome>) {
        let Some(current) = self.current_base(ctx.now) else { return };
        let mut window = std::mem::take(&mut self.window);
        let Some(base) = self.base.replace(current) else {
            // The baseline: nothing to compare with. An outage before it cannot be summarised.
            return;
        };
        let coin_in = delta(base.coin_in, current.coin_in);
        let coin_out = delta(base.coin_out, current.coin_out);
        let jackpot = delta(base.jackpot, current.jackpot);
        let won = sum_deltas(coin_out, jackpot);
        let games = match (base.games, current.games) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let amount =
            |d: Delta| amount_of(Some(d.credits), d.minor, ctx.denomination, &ctx.currency);

        if let Some(offline_at) = ctx.gap {
            window.context.insert(WindowContext::LinkOutage);
            out.push(Outcome::GapSummary(EventKind::LinkGapSummary {
                since: base.at,
                offline_at,
                games_played: games,
                coin_in: amount(coin_in),
                coin_out: amount(coin_out),
                jackpot: amount(jackpot),
            }));
        }

        // Games reported without data are priced from the meters; never across an outage,
        // whose play the gap summary accounts for.
        if window.games_without_data && !window.context.contains(&WindowContext::LinkOutage) {
            if let Some(bet) = remainder(coin_in, window.bets, ctx) {
                let games = games.unwrap_or(0);
                window.bets.add(&bet, ctx.denomination);
                out.push(Outcome::DerivedBet(EventKind::BetAccepted {
                    amount: bet,
                    games,
                    max_bet: None,
                    wager_type: None,
                    progressive_group: None,
                    coin_in_meter: None,
                }));
            }
            let games = games.unwrap_or(0).saturating_sub(window.games_ended);
            let win = remainder(won, window.wins, ctx);
            if games > 0 || win.is_some() {
                let win = win
                    .unwrap_or_else(|| amount_of(Some(0), Ok(0), ctx.denomination, &ctx.currency));
                window.wins.add(&win, ctx.denomination);
                window.games_ended = window.games_ended.saturating_add(games);
                out.push(Outcome::DerivedWin(EventKind::GameEnded { win, games }));
            }
        }

        out.extend(reconciliation(None, window, true, (coin_in, won, games), base.at, ctx));
    }
}

/// A window's bets and wins (if `priced`) against the coin-in and won (coin out + jackpot)
/// deltas: a `reconciliation` unless they match and the window holds no context.
fn reconciliation(
    game_number: Option<u16>,
    window: Window,
    priced: bool,
    (coin_in, won, games): (Delta, Delta, Option<u64>),
    window_start: Timestamp,
    ctx: &SnapshotContext,
) -> Option<Outcome> {
    let reported = |sum: Sum| if priced { sum.minor.ok() } else { None };
    let bets = figures(reported(window.bets), coin_in.minor, &ctx.currency);
    let wins = figures(reported(window.wins), won.minor, &ctx.currency);
    let outcome = match (bets.difference, wins.difference) {
        (Some(0), Some(0)) => ReconciliationOutcome::Matched,
        (Some(_), Some(_)) => ReconciliationOutcome::Mismatch,
        _ => ReconciliationOutcome::Incomplete,
    };
    let quiet = outcome == ReconciliationOutcome::Matched && window.context.is_empty();
    (!quiet).then(|| {
        Outcome::Reconciliation(EventKind::Reconciliation {
            game_number,
            outcome,
            context: window.context.into_iter().collect(),
            window_start,
            bets,
            wins,
            games: Counts { events: window.games_ended, meters: games },
        })
    })
}
