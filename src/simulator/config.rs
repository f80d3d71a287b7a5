//! What one simulated machine is and how it behaves: identity, paytable, player behaviour,
//! protocol options and fault rates. Values arrive from the command line (or a test) and are
//! checked once here, so the machine model never meets an impossible setting.
//!
//! Money is integer credits throughout. Probabilities and rates are `f64` because they are not
//! money; every amount derived from them (bets, wins, bills) is drawn from integer tables.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use firmware_protocols::sas::Address;
use firmware_protocols::sas::message::MAX_SERIAL_LEN;
use firmware_protocols::sas::meter::denomination_minor_units;

use super::games::{MAX_GAMES, credit_ratio};

/// Largest bet: RTE 7E carries credits wagered in 2 BCD bytes (sas-protocol.md §6).
pub const MAX_BET: u64 = 9_999;
/// Largest win: RTE 7F and the 4-byte meters carry 8 BCD digits (sas-protocol.md §6, §7.1).
pub const MAX_WIN: u64 = 99_999_999;
/// Smallest exception queue the spec allows (sas-protocol.md §4.1: FIFO of at least 20).
pub const SPEC_MIN_QUEUE: usize = 20;

/// Bill values in whole currency units, indexed by SAS bill denomination code. The same order is
/// used by the LP08 bitmask and by meters 0040–0057 (sas-protocol.md §7.4, §8).
pub const BILL_VALUES: [u64; 24] = [
    1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1_000, 2_000, 2_500, 5_000, 10_000, 20_000,
    25_000, 50_000, 100_000, 200_000, 250_000, 500_000, 1_000_000,
];

/// A configuration that cannot describe a machine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The SAS address is 0 or above 127 (sas-protocol.md §2.1).
    #[error("SAS address {0} is outside 1..=127")]
    Address(u16),
    /// Not a SAS denomination code (sas-protocol.md §7.1).
    #[error("{0:#04x} is not a SAS denomination code")]
    Denomination(u8),
    /// A `value:weight` list could not be parsed or is empty.
    #[error("invalid weighted list {spec:?}: {reason}")]
    Weighted { spec: String, reason: String },
    /// A bet outside 1..=9999 credits.
    #[error("bet {0} is outside 1..={MAX_BET} credits")]
    Bet(u64),
    /// The largest bet times the largest multiplier does not fit 8 BCD digits.
    #[error("largest win {0} exceeds {MAX_WIN} credits")]
    Win(u64),
    /// A bill value the SAS bill table does not have.
    #[error("{0} is not a SAS bill denomination")]
    Bill(u64),
    /// A bill that is not a whole number of credits at the accounting denomination.
    #[error(
        "a bill of {value} is not a whole number of credits at denomination {denomination:#04x}"
    )]
    BillNotWholeCredits { value: u64, denomination: u8 },
    /// No bills at all: credits could never be inserted.
    #[error("at least one bill value is needed")]
    NoBills,
    /// A probability outside 0..=1, or a negative or non-finite rate.
    #[error("{name} = {value} is out of range")]
    Rate { name: &'static str, value: f64 },
    /// An exception queue of zero entries.
    #[error("the exception queue needs at least one entry")]
    QueueSize,
    /// The serial number does not fit LP54 (0–40 ASCII characters).
    #[error("serial number {0:?} is not 0–{MAX_SERIAL_LEN} ASCII characters")]
    Serial(String),
    /// A duration that must be positive is zero.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// The country code does not fit one BCD byte.
    #[error("bill country code {0} is above 99")]
    Country(u8),
    /// A game whose denomination is not a whole number of accounting credits, or too many
    /// games.
    #[error("game {game}: {reason}")]
    Game { game: usize, reason: String },
}

/// A discrete distribution: values with integer weights. Written `value:weight,value:weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weighted {
    entries: Vec<(u64, u32)>,
    total: u64,
}

impl Weighted {
    /// Builds a distribution; at least one weight must be non-zero.
    pub fn new(entries: Vec<(u64, u32)>) -> Result<Self, ConfigError> {
        let total = entries.iter().map(|&(_, w)| u64::from(w)).sum();
        if total == 0 {
            return Err(ConfigError::Weighted {
                spec: format!("{entries:?}"),
                reason: "the weights add up to zero".into(),
            });
        }
        Ok(Self { entries, total })
    }

    /// A distribution that always yields `value`.
    pub fn constant(value: u64) -> Self {
        Self { entries: vec![(value, 1)], total: 1 }
    }

    /// Sum of the weights.
    pub fn total_weight(&self) -> u64 {
        self.total
    }

    /// The value at `ticket`, a number in `0..total_weight()`.
    pub fn pick(&self, ticket: u64) -> u64 {
        let mut rest = ticket;
        for &(value, weight) in &self.entries {
            if rest < u64::from(weight) {
                return value;
            }
            rest -= u64::from(weight);
        }
        // `ticket` is below the total by contract; the last entry absorbs anything else.
        self.entries.last().map_or(0, |&(value, _)| value)
    }

    /// Values that can be drawn (weight above zero).
    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().filter(|(_, w)| *w > 0).map(|&(v, _)| v)
    }

    /// Σ value × weight, for the expected return of a multiplier table.
    pub fn weighted_sum(&self) -> u128 {
        self.entries.iter().map(|&(v, w)| u128::from(v) * u128::from(w)).sum()
    }
}

impl FromStr for Weighted {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail =
            |reason: &str| ConfigError::Weighted { spec: spec.into(), reason: reason.into() };
        let mut entries = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (value, weight) = match part.split_once(':') {
                Some((v, w)) => (v.trim(), w.trim()),
                None => (part, "1"),
            };
            let value = value.parse().map_err(|_| fail("values are whole numbers"))?;
            let weight = weight.parse().map_err(|_| fail("weights are whole numbers"))?;
            entries.push((value, weight));
        }
        if entries.is_empty() {
            return Err(fail("no entries"));
        }
        Self::new(entries).map_err(|_| fail("the weights add up to zero"))
    }
}

impl fmt::Display for Weighted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.entries.iter().map(|(v, w)| format!("{v}:{w}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// What a machine answers to a general poll in RTE mode when nothing is pending
/// (sas-protocol.md §2.2, §6: the spec says silence, MON sends `addr FF 00 crc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RteIdle {
    /// `addr FF 00 crc`, as MON does.
    NoActivity,
    /// No answer, as the spec digest says.
    Silent,
}

/// How the LP21 ROM signature reaches the host (sas-protocol.md §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RomSignatureDelivery {
    /// ACK now, signature as the answer to a later general poll (MON).
    Deferred,
    /// The signature frame answers LP21 directly.
    Direct,
}

/// How the machine validates tickets (TITO, sas-protocol.md §5: exceptions 3D, 3E, 57, 67, 68).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Validation {
    /// No ticket printer or validator: LP70/71 are unsupported, cash-outs are paid to the hopper
    /// or by hand.
    #[default]
    None,
    /// The validation system assigns each ticket's number.
    System,
    /// The machine computes the number from its validation ID (LP4C).
    SecureEnhanced,
}

/// Vendor deviations a simulated machine can show (sas-protocol.md §11; the firmware profiles
/// in `firmware-protocols/profiles/` describe how the gateway copes with each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Quirk {
    /// Answers its own polls from power-up and after a loop break without first seeing a poll
    /// to another address (profile `sync = "none"`).
    NoSync,
    /// Sends every reply of two bytes or more with a pause of [`SLOW_BYTES_PAUSE`] in the
    /// middle, beyond the 5 ms inter-byte limit (a profile with a longer
    /// `timing.inter_byte_limit_ms`).
    SlowBytes,
    /// In RTE mode, answers a general poll with nothing new by repeating its last report
    /// instead of `addr FF 00` (profile `rte.repeats_last_report`).
    RepeatReport,
}

/// The pause inside every reply of a [`Quirk::SlowBytes`] machine.
pub const SLOW_BYTES_PAUSE: Duration = Duration::from_millis(8);

/// The player at the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayConfig {
    /// Mean games started per minute; 0 means nobody plays.
    pub games_per_minute: f64,
    /// From game start (7E) to game end (7F).
    pub game_duration: Duration,
    /// Bet per game, in credits.
    pub bets: Weighted,
    /// Win as a whole multiple of the bet.
    pub win_multipliers: Weighted,
    /// Chance, after each game, that the player cashes out everything.
    pub cashout_probability: f64,
    /// Wins and cash-outs of at least this many credits are paid by an attendant (handpay).
    pub handpay_limit: u64,
    /// How long an attendant takes to pay and reset a handpay.
    pub handpay_duration: Duration,
    /// Stop playing after this many games.
    pub max_games: Option<u64>,
    /// With validation: the chance that the player funds play with a ticket instead of a bill.
    pub ticket_in_probability: f64,
    /// The chance that the player funds play by an AFT transfer from the cashless system
    /// instead of a bill, and cashes out to it instead of a ticket or the hopper. Above 0 the
    /// machine supports AFT (LPA0, LP72 interrogation).
    pub aft_probability: f64,
    /// The chance, at each game end, that a SAS progressive level is hit and paid to the credit
    /// meter (56, LP85). Above 0 the machine is on a SAS progressive link.
    pub progressive_probability: f64,
    /// The chance, at each game end, that the bonusing system awards a legacy bonus paid to the
    /// credit meter (7C, LP90). Above 0 the machine supports legacy bonus awards (LPA0).
    pub bonus_probability: f64,
}

/// Security events unrelated to faults.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationsConfig {
    /// Slot door openings per hour.
    pub door_openings_per_hour: f64,
    /// How long the slot door stays open.
    pub door_open_duration: Duration,
}

/// Injected faults. Reply faults are probabilities per transmitted reply; machine faults are
/// mean occurrences per hour (exponentially distributed gaps).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultConfig {
    /// A reply with a CRC goes out with a corrupted CRC.
    pub corrupt_crc: f64,
    /// A reply is computed (and the poll executed) but never sent.
    pub drop_reply: f64,
    /// A reply starts after `late_delay` instead of at once.
    pub late_reply: f64,
    /// How late a late reply is; longer than the 20 ms reply window (sas-protocol.md §4.1).
    pub late_delay: Duration,
    /// A multi-byte reply is split by a pause of `gap_delay`.
    pub inter_byte_gap: f64,
    /// The pause inside a split reply; longer than the 5 ms inter-byte limit.
    pub gap_delay: Duration,
    /// A long poll is answered busy (`addr 00`) and not executed.
    pub busy: f64,
    /// Power cycles per hour (18 at loss, 17 at power-up, sync lost).
    pub power_cycles_per_hour: f64,
    /// How long the power stays off.
    pub power_off_duration: Duration,
    /// RAM clears per hour (meters zeroed, queue lost, 3A).
    pub ram_clears_per_hour: f64,
    /// Exception bursts per hour large enough to overflow the queue (70).
    pub overflows_per_hour: f64,
}

/// Everything about one simulated machine.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineConfig {
    /// Position in the simulation, from 0.
    pub index: u16,
    /// SAS address, 1–127.
    pub address: u8,
    /// Serial number reported by LP54 and written to the ledger.
    pub serial: String,
    /// Seed of this machine's random streams.
    pub seed: u64,
    /// Accounting denomination as a SAS denomination code (LP1F).
    pub denomination: u8,
    /// Player denomination of each game, game 1 first ([`super::games`]); empty: one game at
    /// the accounting denomination.
    pub games: Vec<u8>,
    pub play: PlayConfig,
    /// Bill values the acceptor takes, in whole currency units.
    pub bills: Vec<u64>,
    /// Country code reported with bills (LP48, RTE 4F), one BCD byte.
    pub bill_country: u8,
    /// RTE on at power-up.
    pub rte_at_power_up: bool,
    pub rte_idle: RteIdle,
    /// Capacity of the exception FIFO; priority exceptions are held apart.
    pub queue_size: usize,
    pub rom_signature: RomSignatureDelivery,
    /// Ticket validation: with it, cash-outs print tickets and the player inserts tickets too.
    pub validation: Validation,
    /// Vendor deviations this machine shows.
    pub quirks: Vec<Quirk>,
    /// How long a deferred ROM signature takes to compute.
    pub rom_signature_delay: Duration,
    /// LP01 shutdown survives a power cycle.
    pub persist_shutdown: bool,
    /// EGM clock minus true time at start, in seconds (clock drift for LP7E/7F tests).
    pub clock_offset_secs: i64,
    /// Starting value of the credit meters (coin in/out, drop, bills, cancelled credits), e.g. to
    /// test rollover at 10^8.
    pub initial_meters: u64,
    pub operations: OperationsConfig,
    pub faults: FaultConfig,
}

impl MachineConfig {
    /// A machine with the documented defaults and no faults.
    pub fn new(index: u16, address: u8, serial: impl Into<String>) -> Self {
        Self {
            index,
            address,
            serial: serial.into(),
            seed: 1,
            denomination: 0x01,
            games: Vec::new(),
            play: PlayConfig {
                games_per_minute: 10.0,
                game_duration: Duration::from_secs(3),
                bets: Weighted::constant(1),
                win_multipliers: Weighted::constant(0),
                cashout_probability: 0.0,
                handpay_limit: 120_000,
                handpay_duration: Duration::from_secs(10),
                max_games: None,
                ticket_in_probability: 0.0,
                aft_probability: 0.0,
                progressive_probability: 0.0,
                bonus_probability: 0.0,
            },
            bills: vec![1, 5, 10, 20, 50, 100],
            bill_country: 0,
            rte_at_power_up: false,
            rte_idle: RteIdle::NoActivity,
            queue_size: SPEC_MIN_QUEUE,
            rom_signature: RomSignatureDelivery::Deferred,
            validation: Validation::None,
            quirks: Vec::new(),
            rom_signature_delay: Duration::from_millis(500),
            persist_shutdown: false,
            clock_offset_secs: 0,
            initial_meters: 0,
            operations: OperationsConfig {
                door_openings_per_hour: 0.0,
                door_open_duration: Duration::from_secs(10),
            },
            faults: FaultConfig {
                late_delay: Duration::from_millis(40),
                gap_delay: Duration::from_millis(10),
                power_off_duration: Duration::from_secs(3),
                ..FaultConfig::default()
            },
        }
    }

    /// Checks every field; the machine model relies on this having passed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if Address::new(self.address).is_none() {
            return Err(ConfigError::Address(self.address.into()));
        }
        if !self.serial.is_ascii() || self.serial.len() > MAX_SERIAL_LEN {
            return Err(ConfigError::Serial(self.serial.clone()));
        }
        let minor = denomination_minor_units(self.denomination)
            .ok_or(ConfigError::Denomination(self.denomination))?;
        if let Some(bet) = self.play.bets.values().find(|b| !(1..=MAX_BET).contains(b)) {
            return Err(ConfigError::Bet(bet));
        }
        let max_bet = self.play.bets.values().max().unwrap_or(0);
        let max_multiplier = self.play.win_multipliers.values().max().unwrap_or(0);
        let max_win = max_bet.saturating_mul(max_multiplier);
        if max_win > MAX_WIN {
            return Err(ConfigError::Win(max_win));
        }
        if self.games.len() > MAX_GAMES {
            let reason = format!("at most {MAX_GAMES} games");
            return Err(ConfigError::Game { game: self.games.len(), reason });
        }
        for (i, &code) in self.games.iter().enumerate() {
            let game = i + 1;
            let Some(ratio) = credit_ratio(code, self.denomination) else {
                let reason = format!(
                    "denomination {code:#04x} is not a whole number of accounting credits at \
                     {:#04x}",
                    self.denomination
                );
                return Err(ConfigError::Game { game, reason });
            };
            let win = max_win.saturating_mul(ratio);
            if win > MAX_WIN {
                return Err(ConfigError::Win(win));
            }
        }
        if self.bills.is_empty() {
            return Err(ConfigError::NoBills);
        }
        for &value in &self.bills {
            if !BILL_VALUES.contains(&value) {
                return Err(ConfigError::Bill(value));
            }
            if (value * 100) % minor != 0 {
                return Err(ConfigError::BillNotWholeCredits {
                    value,
                    denomination: self.denomination,
                });
            }
        }
        if self.bill_country > 99 {
            return Err(ConfigError::Country(self.bill_country));
        }
        if self.queue_size == 0 {
            return Err(ConfigError::QueueSize);
        }
        let f = &self.faults;
        for (name, value) in [
            ("cashout probability", self.play.cashout_probability),
            ("ticket-in probability", self.play.ticket_in_probability),
            ("AFT probability", self.play.aft_probability),
            ("progressive probability", self.play.progressive_probability),
            ("bonus probability", self.play.bonus_probability),
            ("CRC fault probability", f.corrupt_crc),
            ("drop fault probability", f.drop_reply),
            ("late fault probability", f.late_reply),
            ("gap fault probability", f.inter_byte_gap),
            ("busy fault probability", f.busy),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Rate { name, value });
            }
        }
        for (name, value) in [
            ("game rate", self.play.games_per_minute),
            ("door rate", self.operations.door_openings_per_hour),
            ("power-cycle rate", f.power_cycles_per_hour),
            ("RAM-clear rate", f.ram_clears_per_hour),
            ("overflow rate", f.overflows_per_hour),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(ConfigError::Rate { name, value });
            }
        }
        for (name, value) in [
            ("game duration", self.play.game_duration),
            ("handpay duration", self.play.handpay_duration),
            ("power-off duration", f.power_off_duration),
            ("door-open duration", self.operations.door_open_duration),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        Ok(())
    }

    /// The SAS address; valid once [`validate`](Self::validate) passed.
    pub fn sas_address(&self) -> Result<Address, ConfigError> {
        Address::new(self.address).ok_or_else(|| ConfigError::Address(self.address.into()))
    }

    /// Value of one credit in hundredths of the currency unit.
    pub fn credit_minor_units(&self) -> Result<u64, ConfigError> {
        denomination_minor_units(self.denomination)
            .ok_or(ConfigError::Denomination(self.denomination))
    }

    /// Theoretical return in hundredths of a percent, from the multiplier table: what LP1F
    /// reports as the base percentage ("9600" = 96.00 %).
    pub fn base_percentage(&self) -> u64 {
        let m = &self.play.win_multipliers;
        let hundredths = m.weighted_sum() * 10_000 / u128::from(m.total_weight());
        u64::try_from(hundredths.min(9_999)).unwrap_or(9_999)
    }
}

/// SAS bill denomination code (index into [`BILL_VALUES`]) of a bill value.
pub fn bill_code(value: u64) -> Option<u8> {
    BILL_VALUES.iter().position(|&v| v == value).and_then(|i| u8::try_from(i).ok())
}

/// Parses a SAS code written in decimal or as `0x..` hex.
pub fn parse_code(text: &str) -> Result<u8, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?}: {e}"))
}

/// Parses a comma-separated list of bill values.
pub fn parse_bills(text: &str) -> Result<Vec<u64>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|e| format!("{p:?}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_lists_parse_and_pick_by_cumulative_weight() {
        let w: Weighted = "1:3, 5:1".parse().unwrap();
        assert_eq!(w.total_weight(), 4);
        assert_eq!((0..4).map(|t| w.pick(t)).collect::<Vec<_>>(), [1, 1, 1, 5]);
        assert_eq!(w.to_string(), "1:3,5:1");
        assert!("".parse::<Weighted>().is_err());
        assert!("1:0".parse::<Weighted>().is_err());
        assert!("x:1".parse::<Weighted>().is_err());
    }

    #[test]
    fn the_default_machine_is_valid_and_bad_fields_are_named() {
        let mut c = MachineConfig::new(0, 1, "SIM0");
        assert_eq!(c.validate(), Ok(()));
        c.address = 128;
        assert_eq!(c.validate(), Err(ConfigError::Address(128)));
        let mut c = MachineConfig::new(0, 1, "SIM0");
        c.denomination = 0x06; // $1 credits
        c.bills = vec![1, 5];
        assert_eq!(c.validate(), Ok(()));
        c.denomination = 0x07; // $5 credits: a $1 bill is not a whole credit
        assert_eq!(
            c.validate(),
            Err(ConfigError::BillNotWholeCredits { value: 1, denomination: 0x07 })
        );
        let mut c = MachineConfig::new(0, 1, "SIM0");
        c.play.bets = Weighted::constant(10_000);
        assert_eq!(c.validate(), Err(ConfigError::Bet(10_000)));
    }

    #[test]
    fn base_percentage_is_the_expected_multiplier_in_hundredths() {
        let mut c = MachineConfig::new(0, 1, "SIM0");
        c.play.win_multipliers = "0:7400,1:1600,2:500,5:300,10:150,50:40,200:10".parse().unwrap();
        assert_eq!(c.base_percentage(), 9_600);
    }

    #[test]
    fn codes_parse_in_decimal_and_hex() {
        assert_eq!(parse_code("0x1A"), Ok(0x1A));
        assert_eq!(parse_code("26"), Ok(26));
        assert!(parse_code("0x100").is_err());
        assert_eq!(bill_code(20), Some(4));
        assert_eq!(bill_code(3), None);
    }
}
