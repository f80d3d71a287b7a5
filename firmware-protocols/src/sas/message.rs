//! Typed SAS messages: what the host sends ([`HostMessage`], [`LongPoll`]) and what a machine
//! answers ([`Reply`], [`RealTimeEvent`]). Layouts follow sas-protocol.md §2, §6, §7 and §8:
//! BCD and ASCII fields most significant byte first, binary fields least significant first, CRC
//! over everything before it, low byte first.
//!
//! Encoding and decoding here work on complete frames. Finding where a frame starts and ends on a
//! noisy line is [`codec`](super::codec)'s job.

use super::{Address, Exception, MeterCode};
use crate::bcd;
use crate::crc::{append_crc, has_valid_crc};
use crate::error::{DecodeError, EncodeError, bcd_encode_field, bcd_field};

/// The byte after the address that marks a real-time event frame (sas-protocol.md §6).
pub const RTE_MARKER: u8 = 0xFF;

/// Long-poll command bytes used in this crate, named as in the spec.
pub mod command {
    /// 0x01 — shutdown (lock out play).
    pub const SHUTDOWN: u8 = 0x01;
    /// 0x02 — startup (re-enable play).
    pub const STARTUP: u8 = 0x02;
    /// 0x0E — enable/disable real-time event reporting.
    pub const REAL_TIME_EVENT_REPORTING: u8 = 0x0E;
    /// 0x0F — send meters 10 through 15.
    pub const SEND_METERS_10_TO_15: u8 = 0x0F;
    /// 0x1A — send current credits.
    pub const SEND_CURRENT_CREDITS: u8 = 0x1A;
    /// 0x1B — send handpay information.
    pub const SEND_HANDPAY_INFO: u8 = 0x1B;
    /// 0x1C — send meters (the eight basic meters).
    pub const SEND_METERS: u8 = 0x1C;
    /// 0x1F — send gaming machine ID and information.
    pub const SEND_MACHINE_INFO: u8 = 0x1F;
    /// 0x21 — ROM signature verification.
    pub const ROM_SIGNATURE: u8 = 0x21;
    /// 0x2F — send selected meters for game N.
    pub const SEND_SELECTED_METERS: u8 = 0x2F;
    /// 0x48 — send last accepted bill information.
    pub const SEND_LAST_BILL: u8 = 0x48;
    /// Send enabled features of a game (0 = the machine).
    pub const SEND_ENABLED_FEATURES: u8 = 0xA0;
    /// Send enhanced validation information (ticket and receipt records, read-only).
    pub const SEND_ENHANCED_VALIDATION: u8 = 0x4D;
    /// 0x51 — send the number of games implemented.
    pub const SEND_NUMBER_OF_GAMES: u8 = 0x51;
    /// 0x53 — send game N configuration (the LP1F fields for one game, its denomination
    /// included).
    pub const SEND_GAME_CONFIGURATION: u8 = 0x53;
    /// 0x54 — send SAS version and machine serial number.
    pub const SEND_VERSION_AND_SERIAL: u8 = 0x54;
    /// 0x6F — send extended meters for game N.
    pub const SEND_EXTENDED_METERS: u8 = 0x6F;
    /// 0x70 — send ticket validation data.
    pub const SEND_TICKET_VALIDATION_DATA: u8 = 0x70;
    /// 0x71 — redeem ticket.
    pub const REDEEM_TICKET: u8 = 0x71;
    /// 0x72 — AFT transfer funds; slotgate sends only its interrogation form
    /// ([`AFT_INTERROGATION`](super::AFT_INTERROGATION)).
    pub const AFT_TRANSFER_FUNDS: u8 = 0x72;
    /// 0x7E — send current date and time.
    pub const SEND_DATE_TIME: u8 = 0x7E;
    /// 0x7F — receive date and time.
    pub const SET_DATE_TIME: u8 = 0x7F;
    /// 0x85 — send SAS progressive win amount.
    pub const SEND_PROGRESSIVE_WIN: u8 = 0x85;
    /// 0x87 — send multiple SAS progressive win amounts.
    pub const SEND_PROGRESSIVE_WINS: u8 = 0x87;
    /// 0x90 — send legacy bonus win amount.
    pub const SEND_LEGACY_BONUS_WIN: u8 = 0x90;
    /// 0xAF — send extended meters for game N (alternate code, so that two consecutive
    /// extended-meter polls are not an implied NACK).
    pub const SEND_EXTENDED_METERS_ALT: u8 = 0xAF;
}

/// The LP72 transfer code of an interrogation: "tell me the status of a transfer", which moves
/// nothing. Every other transfer code (00/01 transfer, 80 cancel) is a transfer request, which
/// no [`LongPoll`] can hold (requirements R22).
pub const AFT_INTERROGATION: u8 = 0xFF;

/// The general poll to address 0: the sync poll, and an implied ACK of whatever came before.
pub const SYNC_POLL: u8 = 0x80;

// === Host messages ===

/// A complete message from the host. The first byte always carries the wakeup bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    /// `80|addr`: asks one machine for its next exception.
    GeneralPoll(Address),
    /// `80`: general poll to address 0; the sync poll (sas-protocol.md §4.3).
    SyncPoll,
    /// `addr cmd …`: a long poll to one machine.
    LongPoll(Address, LongPoll),
    /// `00 cmd …`: a type G broadcast; machines do not answer.
    Broadcast(LongPoll),
}

impl HostMessage {
    /// Wire bytes of the message.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        match self {
            Self::GeneralPoll(address) => Ok(vec![address.general_poll_byte()]),
            Self::SyncPoll => Ok(vec![SYNC_POLL]),
            Self::LongPoll(address, poll) => poll.encode(address.get()),
            Self::Broadcast(poll) => poll.encode(0),
        }
    }

    /// Parses one complete host message (used by the machine side of the simulator).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some(&first) = bytes.first() else {
            return Err(DecodeError::Truncated { received: 0, expected: 1 });
        };
        if first & 0x80 != 0 {
            if bytes.len() != 1 {
                return Err(DecodeError::BadLength { command: first, len: bytes.len() });
            }
            return Ok(match Address::new(first & 0x7F) {
                Some(address) => Self::GeneralPoll(address),
                None => Self::SyncPoll,
            });
        }
        let poll = LongPoll::decode(bytes)?;
        Ok(match Address::new(first) {
            Some(address) => Self::LongPoll(address, poll),
            None => Self::Broadcast(poll),
        })
    }
}

/// The kinds of long poll slotgate sends (sas-protocol.md §2.2, §8).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LongPoll {
    /// 0x01 — shutdown: lock out play; a game in progress completes first.
    Shutdown,
    /// 0x02 — startup: re-enable play.
    Startup,
    /// 0x0E — enable (`true`) or disable real-time event reporting.
    RealTimeEventReporting(bool),
    /// 0x0F — cancelled credits, coin in, coin out, drop, jackpot, games played.
    SendMeters10To15,
    /// 0x10–0x19, 0x1D, 0x1E — one of the fixed single-meter polls.
    SendMeter(MeterPoll),
    /// 0x1A — current credits.
    SendCurrentCredits,
    /// 0x1B — handpay information.
    SendHandpayInfo,
    /// 0x1C — the eight basic meters.
    SendMeters,
    /// 0x1F — machine ID, accounting denomination and paytable.
    SendMachineInfo,
    /// 0x21 — ROM signature with the given seed.
    RomSignature { seed: u16 },
    /// 0x2F — selected meters (one-byte codes) for game N; game 0 is the whole machine.
    SendSelectedMeters { game: u16, meters: Vec<u8> },
    /// 0x48 — last accepted bill.
    SendLastBill,
    /// 0x4D — one validation record (ticket printed, receipt, ticket redeemed): `function` 00 =
    /// the oldest unread record (which the machine then marks read), 01–1F = the record at that
    /// buffer index, FF = look ahead without marking.
    SendEnhancedValidation { function: u8 },
    /// 0xA0 — the features enabled for game N (0 = the machine): validation style, ticket
    /// redemption, AFT, legacy bonus, extended meters, multi-denomination.
    SendEnabledFeatures { game: u16 },
    /// 0x51 — how many games the machine implements (game numbers 1 to N).
    SendNumberOfGames,
    /// 0x53 — game N's configuration: the LP1F fields, its denomination among them.
    SendGameConfiguration { game: u16 },
    /// 0x54 — SAS version and serial number.
    SendVersionAndSerial,
    /// 0x6F, or 0xAF when `alternate` — extended meters for game N.
    SendExtendedMeters { alternate: bool, game: u16, meters: Vec<MeterCode> },
    /// 0x70 — ticket validation data.
    SendTicketValidationData,
    /// 0x71 — redeem a ticket, or (transfer code 0xFF) ask for the redemption status.
    RedeemTicket(TicketMessage),
    /// 0x72 in its interrogation form (transfer code [`AFT_INTERROGATION`]): the status of the
    /// transfer at `index` (00 = the current or most recent one, 01–7F a history buffer
    /// position). A transfer request has no variant: it cannot be built, encoded or decoded.
    AftInterrogate { index: u8 },
    /// 0x85 — the amount of the SAS progressive level just hit (after exception 56).
    SendProgressiveWin,
    /// 0x87 — every SAS progressive level hit since the last read (after exception 56, on a
    /// machine whose LPA0 says it reports several at once).
    SendProgressiveWins,
    /// 0x90 — the legacy bonus just awarded (after exception 7C).
    SendLegacyBonusWin,
    /// 0x7E — current date and time.
    SendDateTime,
    /// 0x7F — set date and time (type S, or type G as a broadcast).
    SetDateTime(DateTime),
}

/// The only polls a remote command may cause (requirements R13, R22): LP 01 shutdown and LP 02
/// startup. The remote-command path produces this type and nothing else, and it converts into a
/// [`LongPoll`] only through `From`, so a command can never become a ticket redemption (LP 71), a
/// clock set or any other poll: there is no value of this type that would encode one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteControl {
    /// LP 01: lock out play; a game in progress completes first.
    Shutdown,
    /// LP 02: re-enable play.
    Startup,
}

impl From<RemoteControl> for LongPoll {
    fn from(control: RemoteControl) -> Self {
        match control {
            RemoteControl::Shutdown => Self::Shutdown,
            RemoteControl::Startup => Self::Startup,
        }
    }
}

/// Most meter codes an LP2F request may carry (sas-protocol.md §7.3).
pub const MAX_SELECTED_METERS: usize = 10;
/// Most meter codes an LP6F/AF request may carry.
pub const MAX_EXTENDED_METERS: usize = 12;

impl LongPoll {
    /// The command byte.
    pub fn command(&self) -> u8 {
        use command::*;
        match self {
            Self::Shutdown => SHUTDOWN,
            Self::Startup => STARTUP,
            Self::RealTimeEventReporting(_) => REAL_TIME_EVENT_REPORTING,
            Self::SendMeters10To15 => SEND_METERS_10_TO_15,
            Self::SendMeter(poll) => *poll as u8,
            Self::SendCurrentCredits => SEND_CURRENT_CREDITS,
            Self::SendHandpayInfo => SEND_HANDPAY_INFO,
            Self::SendMeters => SEND_METERS,
            Self::SendMachineInfo => SEND_MACHINE_INFO,
            Self::RomSignature { .. } => ROM_SIGNATURE,
            Self::SendSelectedMeters { .. } => SEND_SELECTED_METERS,
            Self::SendLastBill => SEND_LAST_BILL,
            Self::SendEnhancedValidation { .. } => SEND_ENHANCED_VALIDATION,
            Self::SendEnabledFeatures { .. } => SEND_ENABLED_FEATURES,
            Self::SendNumberOfGames => SEND_NUMBER_OF_GAMES,
            Self::SendGameConfiguration { .. } => SEND_GAME_CONFIGURATION,
            Self::SendVersionAndSerial => SEND_VERSION_AND_SERIAL,
            Self::SendExtendedMeters { alternate: false, .. } => SEND_EXTENDED_METERS,
            Self::SendExtendedMeters { alternate: true, .. } => SEND_EXTENDED_METERS_ALT,
            Self::SendTicketValidationData => SEND_TICKET_VALIDATION_DATA,
            Self::RedeemTicket(_) => REDEEM_TICKET,
            Self::AftInterrogate { .. } => AFT_TRANSFER_FUNDS,
            Self::SendProgressiveWin => SEND_PROGRESSIVE_WIN,
            Self::SendProgressiveWins => SEND_PROGRESSIVE_WINS,
            Self::SendLegacyBonusWin => SEND_LEGACY_BONUS_WIN,
            Self::SendDateTime => SEND_DATE_TIME,
            Self::SetDateTime(_) => SET_DATE_TIME,
        }
    }

    /// Whether this poll moves money or takes part in moving it (redeeming a ticket, an
    /// electronic transfer, a bonus award, assigning a validation number). A monitoring host
    /// never sends one (requirements R22); the host session refuses to queue or send any poll for
    /// which this is true. The match is exhaustive on purpose: a new poll cannot be added without
    /// deciding here which side of the line it is on.
    pub fn moves_money(&self) -> bool {
        match self {
            // LP71 redeems a ticket; even its status-query form belongs to the validation host's
            // redemption exchange, which a monitoring host stays out of.
            Self::RedeemTicket(_) => true,
            Self::Shutdown
            | Self::Startup
            | Self::RealTimeEventReporting(_)
            | Self::SendMeters10To15
            | Self::SendMeter(_)
            | Self::SendCurrentCredits
            | Self::SendHandpayInfo
            | Self::SendMeters
            | Self::SendMachineInfo
            | Self::RomSignature { .. }
            | Self::SendSelectedMeters { .. }
            | Self::SendLastBill
            | Self::SendEnhancedValidation { .. }
            | Self::SendEnabledFeatures { .. }
            | Self::SendNumberOfGames
            | Self::SendGameConfiguration { .. }
            | Self::SendVersionAndSerial
            | Self::SendExtendedMeters { .. }
            | Self::SendTicketValidationData
            // Reads: the status of a transfer someone else made, and what was won.
            | Self::AftInterrogate { .. }
            | Self::SendProgressiveWin
            | Self::SendProgressiveWins
            | Self::SendLegacyBonusWin
            | Self::SendDateTime
            | Self::SetDateTime(_) => false,
        }
    }

    /// Type R polls are just `addr cmd`, with no CRC.
    pub fn is_type_r(&self) -> bool {
        matches!(
            self,
            Self::SendMeters10To15
                | Self::SendMeter(_)
                | Self::SendCurrentCredits
                | Self::SendHandpayInfo
                | Self::SendMeters
                | Self::SendMachineInfo
                | Self::SendLastBill
                | Self::SendNumberOfGames
                | Self::SendVersionAndSerial
                | Self::SendTicketValidationData
                | Self::SendProgressiveWin
                | Self::SendProgressiveWins
                | Self::SendLegacyBonusWin
                | Self::SendDateTime
        )
    }

    /// Wire bytes of this poll sent to `address` (0 for a broadcast).
    pub fn encode(&self, address: u8) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![address, self.command()];
        if self.is_type_r() {
            return Ok(out);
        }
        match self {
            Self::RealTimeEventReporting(enable) => out.push(u8::from(*enable)),
            Self::RomSignature { seed } => out.extend_from_slice(&seed.to_le_bytes()),
            Self::SendSelectedMeters { game, meters } => {
                if meters.len() > MAX_SELECTED_METERS {
                    return Err(EncodeError::TooLong {
                        field: "meters",
                        len: meters.len(),
                        max: MAX_SELECTED_METERS,
                    });
                }
                out.push((2 + meters.len()) as u8);
                bcd::encode(u64::from(*game), 2, &mut out).map_err(bcd_encode_field("game"))?;
                out.extend_from_slice(meters);
            }
            Self::SendExtendedMeters { game, meters, .. } => {
                if meters.len() > MAX_EXTENDED_METERS {
                    return Err(EncodeError::TooLong {
                        field: "meters",
                        len: meters.len(),
                        max: MAX_EXTENDED_METERS,
                    });
                }
                out.push((2 + 2 * meters.len()) as u8);
                bcd::encode(u64::from(*game), 2, &mut out).map_err(bcd_encode_field("game"))?;
                for code in meters {
                    out.extend_from_slice(&code.0.to_le_bytes());
                }
            }
            Self::RedeemTicket(ticket) => ticket.encode_body(&mut out)?,
            Self::SendEnhancedValidation { function } => out.push(*function),
            Self::AftInterrogate { index } => {
                out.extend_from_slice(&[2, AFT_INTERROGATION, *index])
            }
            Self::SendEnabledFeatures { game } | Self::SendGameConfiguration { game } => {
                bcd::encode(u64::from(*game), 2, &mut out).map_err(bcd_encode_field("game"))?;
            }
            Self::SetDateTime(time) => time.encode_into(&mut out)?,
            _ => {} // Shutdown and Startup carry nothing but their CRC.
        }
        append_crc(&mut out);
        Ok(out)
    }

    /// Parses a complete long poll or broadcast (`addr cmd … [crc]`).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        use command::*;
        let &[_, command, ..] = bytes else {
            return Err(DecodeError::Truncated { received: bytes.len(), expected: 2 });
        };
        if let Some(poll) = Self::type_r(command) {
            if bytes.len() != 2 {
                return Err(DecodeError::BadLength { command, len: bytes.len() });
            }
            return Ok(poll);
        }
        if Self::request_len(command, None).is_none() {
            return Err(DecodeError::UnknownCommand { command });
        }
        let mut r = Reader::new(command, checked_body(bytes)?);
        let poll = match command {
            SHUTDOWN => Self::Shutdown,
            STARTUP => Self::Startup,
            REAL_TIME_EVENT_REPORTING => match r.u8()? {
                0 => Self::RealTimeEventReporting(false),
                1 => Self::RealTimeEventReporting(true),
                other => {
                    return Err(DecodeError::InvalidField { field: "flag", value: other.into() });
                }
            },
            ROM_SIGNATURE => Self::RomSignature { seed: r.u16_le()? },
            SEND_ENHANCED_VALIDATION => Self::SendEnhancedValidation { function: r.u8()? },
            SEND_ENABLED_FEATURES => Self::SendEnabledFeatures { game: r.bcd(2, "game")? as u16 },
            SEND_GAME_CONFIGURATION => {
                Self::SendGameConfiguration { game: r.bcd(2, "game")? as u16 }
            }
            SEND_SELECTED_METERS => {
                let mut body = r.length_prefixed()?;
                let game = body.bcd(2, "game")? as u16;
                let meters = body.rest().to_vec();
                if meters.len() > MAX_SELECTED_METERS {
                    return Err(DecodeError::BadLength { command, len: bytes.len() });
                }
                Self::SendSelectedMeters { game, meters }
            }
            SEND_EXTENDED_METERS | SEND_EXTENDED_METERS_ALT => {
                let mut body = r.length_prefixed()?;
                let game = body.bcd(2, "game")? as u16;
                let mut meters = Vec::new();
                while !body.is_empty() {
                    meters.push(MeterCode(body.u16_le()?));
                }
                if meters.len() > MAX_EXTENDED_METERS {
                    return Err(DecodeError::BadLength { command, len: bytes.len() });
                }
                Self::SendExtendedMeters {
                    alternate: command == SEND_EXTENDED_METERS_ALT,
                    game,
                    meters,
                }
            }
            REDEEM_TICKET => Self::RedeemTicket(TicketMessage::decode_body(&mut r)?),
            AFT_TRANSFER_FUNDS => {
                let mut body = r.length_prefixed()?;
                let code = body.u8()?;
                if code != AFT_INTERROGATION {
                    // A transfer request (or a cancel): nothing a monitoring host sends (R22).
                    return Err(DecodeError::InvalidField {
                        field: "transfer_code",
                        value: code.into(),
                    });
                }
                let index = body.u8()?;
                body.finish()?;
                Self::AftInterrogate { index }
            }
            SET_DATE_TIME => Self::SetDateTime(DateTime::decode_from(&mut r)?),
            other => return Err(DecodeError::UnknownCommand { command: other }),
        };
        r.finish()?;
        Ok(poll)
    }

    fn type_r(command: u8) -> Option<Self> {
        use command::*;
        Some(match command {
            SEND_METERS_10_TO_15 => Self::SendMeters10To15,
            SEND_CURRENT_CREDITS => Self::SendCurrentCredits,
            SEND_HANDPAY_INFO => Self::SendHandpayInfo,
            SEND_METERS => Self::SendMeters,
            SEND_MACHINE_INFO => Self::SendMachineInfo,
            SEND_LAST_BILL => Self::SendLastBill,
            SEND_NUMBER_OF_GAMES => Self::SendNumberOfGames,
            SEND_VERSION_AND_SERIAL => Self::SendVersionAndSerial,
            SEND_TICKET_VALIDATION_DATA => Self::SendTicketValidationData,
            SEND_PROGRESSIVE_WIN => Self::SendProgressiveWin,
            SEND_PROGRESSIVE_WINS => Self::SendProgressiveWins,
            SEND_LEGACY_BONUS_WIN => Self::SendLegacyBonusWin,
            SEND_DATE_TIME => Self::SendDateTime,
            other => Self::SendMeter(MeterPoll::from_command(other)?),
        })
    }

    /// Length of the host message that starts with `addr cmd` and, for variable-length polls,
    /// `len`. `None` for commands this crate does not know (sas-protocol.md §8.1).
    pub fn request_len(command: u8, length_byte: Option<u8>) -> Option<RequestLen> {
        use command::*;
        if Self::type_r(command).is_some() {
            return Some(RequestLen::Fixed(2));
        }
        Some(match command {
            SHUTDOWN | STARTUP => RequestLen::Fixed(4),
            REAL_TIME_EVENT_REPORTING | SEND_ENHANCED_VALIDATION => RequestLen::Fixed(5),
            ROM_SIGNATURE | SEND_ENABLED_FEATURES | SEND_GAME_CONFIGURATION => RequestLen::Fixed(6),
            SET_DATE_TIME => RequestLen::Fixed(11),
            SEND_SELECTED_METERS
            | SEND_EXTENDED_METERS
            | SEND_EXTENDED_METERS_ALT
            | AFT_TRANSFER_FUNDS
            | REDEEM_TICKET => match length_byte {
                Some(len) => RequestLen::Fixed(3 + usize::from(len) + 2),
                None => RequestLen::NeedLengthByte,
            },
            _ => return None,
        })
    }
}

/// How long a request is, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestLen {
    /// The whole message is this many bytes.
    Fixed(usize),
    /// The third byte (the length byte) is needed first.
    NeedLengthByte,
}

/// The fixed-layout meter polls: command byte, then `count` BCD values of `width` bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MeterPoll {
    /// 0x10 — total cancelled credits.
    CancelledCredits = 0x10,
    /// 0x11 — total coin in.
    CoinIn = 0x11,
    /// 0x12 — total coin out.
    CoinOut = 0x12,
    /// 0x13 — total drop.
    Drop = 0x13,
    /// 0x14 — total jackpot.
    Jackpot = 0x14,
    /// 0x15 — games played.
    GamesPlayed = 0x15,
    /// 0x16 — games won.
    GamesWon = 0x16,
    /// 0x17 — games lost.
    GamesLost = 0x17,
    /// 0x18 — games since power-up and games since slot door closure (2 × 2 BCD).
    GamesSincePowerUp = 0x18,
    /// 0x19 — coin in, coin out, drop, jackpot, games played.
    Meters11To15 = 0x19,
    /// 0x1D — legacy EFT meters: promo in, non-cash in, transferred, cashable in.
    LegacyEftMeters = 0x1D,
    /// 0x1E — bill counts: $1, $5, $10, $20, $50, $100.
    BillCounts = 0x1E,
}

impl MeterPoll {
    /// Every fixed meter poll.
    pub const ALL: [Self; 12] = [
        Self::CancelledCredits,
        Self::CoinIn,
        Self::CoinOut,
        Self::Drop,
        Self::Jackpot,
        Self::GamesPlayed,
        Self::GamesWon,
        Self::GamesLost,
        Self::GamesSincePowerUp,
        Self::Meters11To15,
        Self::LegacyEftMeters,
        Self::BillCounts,
    ];

    fn from_command(command: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|poll| *poll as u8 == command)
    }

    /// Number of values and BCD width of each (sas-protocol.md §7.2).
    pub fn layout(self) -> (usize, usize) {
        match self {
            Self::GamesSincePowerUp => (2, 2),
            Self::Meters11To15 => (5, 4),
            Self::LegacyEftMeters => (4, 4),
            Self::BillCounts => (6, 4),
            _ => (1, 4),
        }
    }
}

// === Replies ===

/// Everything a machine can answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `addr`: the long poll was accepted.
    Ack,
    /// `addr|80`: bad CRC or invalid data.
    Nack,
    /// `addr 00`: the machine cannot answer now; ask again later.
    Busy,
    /// One byte answering a general poll (no address, no CRC).
    Exception(Exception),
    /// `addr FF code data… crc`: a real-time event (RTE mode).
    Event(RealTimeEvent),
    /// `addr 21 sig crc`: a ROM signature, delivered directly or on a later general poll.
    RomSignature(u16),
    /// LP0F.
    Meters10To15(Meters10To15),
    /// LP10–19, 1D, 1E: the values in the order of [`MeterPoll::layout`].
    Meter { poll: MeterPoll, values: Vec<u64> },
    /// LP1A: current credits.
    CurrentCredits(u64),
    /// LP1B.
    HandpayInfo(HandpayInfo),
    /// LP1C.
    Meters(BasicMeters),
    /// LP1F.
    MachineInfo(MachineInfo),
    /// LP2F.
    SelectedMeters(SelectedMeters),
    /// LP48.
    LastBill(LastBill),
    /// LP51: the number of games.
    NumberOfGames(u16),
    /// LP53: one game's configuration.
    GameConfiguration { game: u16, info: MachineInfo },
    /// LP54.
    VersionAndSerial(VersionAndSerial),
    /// LP6F / LPAF.
    ExtendedMeters(ExtendedMeters),
    /// LP4D.
    EnhancedValidation(ValidationRecord),
    /// LPA0.
    EnabledFeatures(EnabledFeatures),
    /// LP70.
    TicketValidationData(TicketMessage),
    /// LP71.
    TicketRedemption(TicketMessage),
    /// LP72 interrogation.
    AftTransfer(AftTransferStatus),
    /// LP85.
    ProgressiveWin(ProgressiveWin),
    /// LP87.
    ProgressiveWins(ProgressiveWins),
    /// LP90.
    LegacyBonusWin(LegacyBonusWin),
    /// LP7E.
    DateTime(DateTime),
}

impl Reply {
    /// Wire bytes of this reply from the machine at `address`.
    pub fn encode(&self, address: Address) -> Result<Vec<u8>, EncodeError> {
        use command::*;
        let addr = address.get();
        let mut out = vec![addr];
        match self {
            Self::Ack => return Ok(out),
            Self::Nack => return Ok(vec![addr | 0x80]),
            Self::Busy => return Ok(vec![addr, 0x00]),
            Self::Exception(e) => return Ok(vec![e.code()]),
            Self::Event(event) => {
                out.push(RTE_MARKER);
                event.encode_body(&mut out)?;
            }
            Self::RomSignature(sig) => {
                out.push(ROM_SIGNATURE);
                out.extend_from_slice(&sig.to_le_bytes());
            }
            Self::Meters10To15(m) => {
                out.push(SEND_METERS_10_TO_15);
                put_meters(&mut out, &m.values(), 4)?;
            }
            Self::Meter { poll, values } => {
                out.push(*poll as u8);
                let (count, width) = poll.layout();
                if values.len() != count {
                    return Err(EncodeError::TooLong {
                        field: "values",
                        len: values.len(),
                        max: count,
                    });
                }
                put_meters(&mut out, values, width)?;
            }
            Self::CurrentCredits(credits) => {
                out.push(SEND_CURRENT_CREDITS);
                put_meters(&mut out, &[*credits], 4)?;
            }
            Self::HandpayInfo(h) => {
                out.push(SEND_HANDPAY_INFO);
                h.encode_body(&mut out)?;
            }
            Self::Meters(m) => {
                out.push(SEND_METERS);
                put_meters(&mut out, &m.values(), 4)?;
            }
            Self::MachineInfo(info) => {
                out.push(SEND_MACHINE_INFO);
                info.encode_body(&mut out);
            }
            Self::SelectedMeters(m) => {
                out.push(SEND_SELECTED_METERS);
                m.encode_body(&mut out)?;
            }
            Self::LastBill(bill) => {
                out.push(SEND_LAST_BILL);
                bill.encode_body(&mut out)?;
            }
            Self::NumberOfGames(games) => {
                out.push(SEND_NUMBER_OF_GAMES);
                bcd::encode(u64::from(*games), 2, &mut out).map_err(bcd_encode_field("games"))?;
            }
            Self::GameConfiguration { game, info } => {
                out.push(SEND_GAME_CONFIGURATION);
                bcd::encode(u64::from(*game), 2, &mut out).map_err(bcd_encode_field("game"))?;
                info.encode_body(&mut out);
            }
            Self::VersionAndSerial(v) => {
                out.push(SEND_VERSION_AND_SERIAL);
                v.encode_body(&mut out)?;
            }
            Self::ExtendedMeters(m) => {
                out.push(if m.alternate { SEND_EXTENDED_METERS_ALT } else { SEND_EXTENDED_METERS });
                m.encode_body(&mut out)?;
            }
            Self::EnhancedValidation(record) => {
                out.push(SEND_ENHANCED_VALIDATION);
                record.encode_body(&mut out)?;
            }
            Self::EnabledFeatures(f) => {
                out.push(SEND_ENABLED_FEATURES);
                bcd::encode(u64::from(f.game), 2, &mut out).map_err(bcd_encode_field("game"))?;
                out.extend_from_slice(&f.features);
            }
            Self::TicketValidationData(t) => {
                out.push(SEND_TICKET_VALIDATION_DATA);
                t.encode_body(&mut out)?;
            }
            Self::TicketRedemption(t) => {
                out.push(REDEEM_TICKET);
                t.encode_body(&mut out)?;
            }
            Self::AftTransfer(t) => {
                out.push(AFT_TRANSFER_FUNDS);
                t.encode_body(&mut out)?;
            }
            Self::ProgressiveWin(w) => {
                out.push(SEND_PROGRESSIVE_WIN);
                out.extend_from_slice(&[w.group, w.level]);
                bcd::encode(w.amount, 5, &mut out).map_err(bcd_encode_field("amount"))?;
            }
            Self::ProgressiveWins(w) => {
                out.push(SEND_PROGRESSIVE_WINS);
                w.encode_body(&mut out)?;
            }
            Self::LegacyBonusWin(b) => {
                out.push(SEND_LEGACY_BONUS_WIN);
                b.encode_body(&mut out)?;
            }
            Self::DateTime(t) => {
                out.push(SEND_DATE_TIME);
                t.encode_into(&mut out)?;
            }
        }
        append_crc(&mut out);
        Ok(out)
    }

    /// Parses one complete multi-byte frame `addr cmd … crc` from the machine at `address`.
    /// Single-byte answers (ACK, NACK, exception) and busy carry no CRC and are told apart by
    /// [`codec`](super::codec), which knows what was polled.
    pub fn decode_frame(address: Address, bytes: &[u8]) -> Result<Self, DecodeError> {
        use command::*;
        let &[addr, command, ..] = bytes else {
            return Err(DecodeError::Truncated { received: bytes.len(), expected: 2 });
        };
        if addr != address.get() {
            return Err(DecodeError::AddressMismatch { expected: address.get(), found: addr });
        }
        if command == 0x00 && bytes.len() == 2 {
            return Ok(Self::Busy);
        }
        let mut r = Reader::new(command, checked_body(bytes)?);
        let reply = match command {
            RTE_MARKER => Self::Event(RealTimeEvent::decode_body(&mut r)?),
            ROM_SIGNATURE => Self::RomSignature(r.u16_le()?),
            SEND_METERS_10_TO_15 => Self::Meters10To15(Meters10To15::from_values(r.meters(6, 4)?)),
            SEND_CURRENT_CREDITS => Self::CurrentCredits(r.bcd(4, "credits")?),
            SEND_HANDPAY_INFO => Self::HandpayInfo(HandpayInfo::decode_body(&mut r)?),
            SEND_METERS => Self::Meters(BasicMeters::from_values(r.meters(8, 4)?)),
            SEND_MACHINE_INFO => Self::MachineInfo(MachineInfo::decode_body(&mut r)?),
            SEND_SELECTED_METERS => Self::SelectedMeters(SelectedMeters::decode_body(&mut r)?),
            SEND_LAST_BILL => Self::LastBill(LastBill::decode_body(&mut r)?),
            SEND_NUMBER_OF_GAMES => Self::NumberOfGames(r.bcd(2, "games")? as u16),
            SEND_GAME_CONFIGURATION => Self::GameConfiguration {
                game: r.bcd(2, "game")? as u16,
                info: MachineInfo::decode_body(&mut r)?,
            },
            SEND_VERSION_AND_SERIAL => {
                Self::VersionAndSerial(VersionAndSerial::decode_body(&mut r)?)
            }
            SEND_EXTENDED_METERS | SEND_EXTENDED_METERS_ALT => Self::ExtendedMeters(
                ExtendedMeters::decode_body(command == SEND_EXTENDED_METERS_ALT, &mut r)?,
            ),
            SEND_TICKET_VALIDATION_DATA => {
                Self::TicketValidationData(TicketMessage::decode_body(&mut r)?)
            }
            SEND_ENHANCED_VALIDATION => {
                Self::EnhancedValidation(ValidationRecord::decode_body(&mut r)?)
            }
            SEND_ENABLED_FEATURES => Self::EnabledFeatures(EnabledFeatures {
                game: r.bcd(2, "game")? as u16,
                features: r.array()?,
            }),
            REDEEM_TICKET => Self::TicketRedemption(TicketMessage::decode_body(&mut r)?),
            AFT_TRANSFER_FUNDS => Self::AftTransfer(AftTransferStatus::decode_body(&mut r)?),
            SEND_PROGRESSIVE_WIN => Self::ProgressiveWin(ProgressiveWin {
                group: r.u8()?,
                level: r.u8()?,
                amount: r.bcd(5, "amount")?,
            }),
            SEND_PROGRESSIVE_WINS => Self::ProgressiveWins(ProgressiveWins::decode_body(&mut r)?),
            SEND_LEGACY_BONUS_WIN => Self::LegacyBonusWin(LegacyBonusWin::decode_body(&mut r)?),
            SEND_DATE_TIME => Self::DateTime(DateTime::decode_from(&mut r)?),
            other => match MeterPoll::from_command(other) {
                Some(poll) => {
                    let (count, width) = poll.layout();
                    Self::Meter { poll, values: r.meters(count, width)? }
                }
                None => return Err(DecodeError::UnknownCommand { command: other }),
            },
        };
        r.finish()?;
        Ok(reply)
    }

    /// Total length of the data reply to long poll `command`, as far as `frame` (which starts
    /// with `addr cmd`) tells. `None` when the command's reply layout is unknown.
    pub fn data_reply_len(command: u8, frame: &[u8]) -> Option<ReplyLen> {
        use command::*;
        let fixed = |n| Some(ReplyLen::Fixed(n));
        match command {
            SEND_METERS_10_TO_15 => fixed(2 + 6 * 4 + 2),
            SEND_CURRENT_CREDITS => fixed(2 + 4 + 2),
            SEND_HANDPAY_INFO => fixed(2 + HandpayInfo::BODY_LEN + 2),
            SEND_METERS => fixed(2 + 8 * 4 + 2),
            SEND_MACHINE_INFO => fixed(2 + MachineInfo::BODY_LEN + 2),
            ROM_SIGNATURE => fixed(2 + 2 + 2),
            SEND_LAST_BILL => fixed(2 + LastBill::BODY_LEN + 2),
            SEND_DATE_TIME => fixed(2 + DateTime::BODY_LEN + 2),
            SEND_ENHANCED_VALIDATION => fixed(2 + ValidationRecord::BODY_LEN + 2),
            SEND_ENABLED_FEATURES => fixed(2 + 2 + 3 + 2),
            SEND_PROGRESSIVE_WIN => fixed(2 + 1 + 1 + 5 + 2),
            SEND_LEGACY_BONUS_WIN => fixed(2 + LegacyBonusWin::BODY_LEN + 2),
            SEND_NUMBER_OF_GAMES => fixed(2 + 2 + 2),
            SEND_GAME_CONFIGURATION => fixed(2 + 2 + MachineInfo::BODY_LEN + 2),
            SEND_SELECTED_METERS
            | SEND_VERSION_AND_SERIAL
            | SEND_EXTENDED_METERS
            | SEND_EXTENDED_METERS_ALT
            | SEND_TICKET_VALIDATION_DATA
            | AFT_TRANSFER_FUNDS
            | SEND_PROGRESSIVE_WINS
            | REDEEM_TICKET => match frame.get(2) {
                Some(&len) => fixed(3 + usize::from(len) + 2),
                None => Some(ReplyLen::NeedLengthByte),
            },
            other => {
                let (count, width) = MeterPoll::from_command(other)?.layout();
                fixed(2 + count * width + 2)
            }
        }
    }
}

/// How long a reply frame is, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyLen {
    /// The whole frame is this many bytes, CRC included.
    Fixed(usize),
    /// The length byte (offset 2) has not arrived yet.
    NeedLengthByte,
}

fn put_meters(out: &mut Vec<u8>, values: &[u64], width: usize) -> Result<(), EncodeError> {
    for value in values {
        bcd::encode(*value, width, out).map_err(bcd_encode_field("meter"))?;
    }
    Ok(())
}

/// LP0F reply: six 4-byte meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meters10To15 {
    pub cancelled_credits: u64,
    pub coin_in: u64,
    pub coin_out: u64,
    pub drop: u64,
    pub jackpot: u64,
    pub games_played: u64,
}

impl Meters10To15 {
    fn values(&self) -> [u64; 6] {
        [
            self.cancelled_credits,
            self.coin_in,
            self.coin_out,
            self.drop,
            self.jackpot,
            self.games_played,
        ]
    }

    fn from_values(v: Vec<u64>) -> Self {
        let get = |i: usize| v.get(i).copied().unwrap_or_default();
        Self {
            cancelled_credits: get(0),
            coin_in: get(1),
            coin_out: get(2),
            drop: get(3),
            jackpot: get(4),
            games_played: get(5),
        }
    }
}

/// LP1C reply: the eight basic meters, in accounting credits except the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct BasicMeters {
    pub coin_in: u64,
    pub coin_out: u64,
    pub drop: u64,
    pub jackpot: u64,
    pub games_played: u64,
    pub games_won: u64,
    pub slot_door_opened: u64,
    pub power_resets: u64,
}

impl BasicMeters {
    fn values(&self) -> [u64; 8] {
        [
            self.coin_in,
            self.coin_out,
            self.drop,
            self.jackpot,
            self.games_played,
            self.games_won,
            self.slot_door_opened,
            self.power_resets,
        ]
    }

    fn from_values(v: Vec<u64>) -> Self {
        let get = |i: usize| v.get(i).copied().unwrap_or_default();
        Self {
            coin_in: get(0),
            coin_out: get(1),
            drop: get(2),
            jackpot: get(3),
            games_played: get(4),
            games_won: get(5),
            slot_door_opened: get(6),
            power_resets: get(7),
        }
    }
}

/// LP1B reply: the pending handpay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandpayInfo {
    pub progressive_group: u8,
    pub level: u8,
    /// Amount in cents (5 BCD bytes).
    pub amount: u64,
    /// Partial pay in cents (2 BCD bytes).
    pub partial_pay: u64,
    pub reset_id: u8,
}

impl HandpayInfo {
    /// Group, level, amount (5), partial pay (2), reset ID, then 10 unused bytes: the 24-byte
    /// frame of SAS 6.02 table 7.8a as hosts read it.
    const BODY_LEN: usize = 1 + 1 + 5 + 2 + 1 + 10;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.extend_from_slice(&[self.progressive_group, self.level]);
        bcd::encode(self.amount, 5, out).map_err(bcd_encode_field("amount"))?;
        bcd::encode(self.partial_pay, 2, out).map_err(bcd_encode_field("partial_pay"))?;
        out.push(self.reset_id);
        out.extend_from_slice(&[0; 10]);
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let info = Self {
            progressive_group: r.u8()?,
            level: r.u8()?,
            amount: r.bcd(5, "amount")?,
            partial_pay: r.bcd(2, "partial_pay")?,
            reset_id: r.u8()?,
        };
        r.bytes(10)?; // unused
        Ok(info)
    }
}

/// LP1F reply: machine identity and the accounting denomination.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MachineInfo {
    /// Game ID, 2 ASCII characters.
    pub game_id: [u8; 2],
    /// Additional ID, 3 ASCII characters.
    pub additional_id: [u8; 3],
    /// Accounting denomination as a SAS denomination code (see [`super::meter`]).
    pub denomination: u8,
    /// Largest bet in credits; 0xFF means 255 or more.
    pub max_bet: u8,
    pub progressive_group: u8,
    /// Game options bit field (binary, LSB first on the wire).
    pub game_options: u16,
    /// Paytable ID, 6 ASCII characters.
    pub paytable_id: [u8; 6],
    /// Theoretical base percentage, 4 ASCII digits: "9050" = 90.50 %.
    pub base_percentage: [u8; 4],
}

impl MachineInfo {
    const BODY_LEN: usize = 2 + 3 + 1 + 1 + 1 + 2 + 6 + 4;

    fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.game_id);
        out.extend_from_slice(&self.additional_id);
        out.extend_from_slice(&[self.denomination, self.max_bet, self.progressive_group]);
        out.extend_from_slice(&self.game_options.to_le_bytes());
        out.extend_from_slice(&self.paytable_id);
        out.extend_from_slice(&self.base_percentage);
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            game_id: r.array()?,
            additional_id: r.array()?,
            denomination: r.u8()?,
            max_bet: r.u8()?,
            progressive_group: r.u8()?,
            game_options: r.u16_le()?,
            paytable_id: r.array()?,
            base_percentage: r.array()?,
        })
    }
}

/// LP2F reply: selected one-byte meter codes with their values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SelectedMeters {
    pub game: u16,
    /// (meter code, value); the value width follows from the code ([`MeterCode::lp2f_value_len`]).
    pub meters: Vec<(u8, u64)>,
}

impl SelectedMeters {
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut body = Vec::new();
        bcd::encode(u64::from(self.game), 2, &mut body).map_err(bcd_encode_field("game"))?;
        for &(code, value) in &self.meters {
            body.push(code);
            bcd::encode(value, MeterCode(code.into()).lp2f_value_len(), &mut body)
                .map_err(bcd_encode_field("meter"))?;
        }
        push_length_prefixed(out, &body, "meters")
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut body = r.length_prefixed()?;
        let game = body.bcd(2, "game")? as u16;
        let mut meters = Vec::new();
        while !body.is_empty() {
            let code = body.u8()?;
            meters.push((code, body.bcd(MeterCode(code.into()).lp2f_value_len(), "meter")?));
        }
        Ok(Self { game, meters })
    }
}

/// LP6F/AF reply: two-byte meter codes, each value with its own size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtendedMeters {
    /// Answer to 0xAF rather than 0x6F.
    pub alternate: bool,
    pub game: u16,
    pub meters: Vec<ExtendedMeter>,
}

/// One entry of an LP6F/AF reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendedMeter {
    pub code: MeterCode,
    /// BCD bytes of the value on the wire (up to 9).
    pub size: u8,
    pub value: u64,
}

impl ExtendedMeters {
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut body = Vec::new();
        bcd::encode(u64::from(self.game), 2, &mut body).map_err(bcd_encode_field("game"))?;
        for m in &self.meters {
            body.extend_from_slice(&m.code.0.to_le_bytes());
            body.push(m.size);
            bcd::encode(m.value, m.size.into(), &mut body).map_err(bcd_encode_field("meter"))?;
        }
        push_length_prefixed(out, &body, "meters")
    }

    fn decode_body(alternate: bool, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut body = r.length_prefixed()?;
        let game = body.bcd(2, "game")? as u16;
        let mut meters = Vec::new();
        while !body.is_empty() {
            let code = MeterCode(body.u16_le()?);
            let size = body.u8()?;
            let value = body.bcd(size.into(), "meter")?;
            meters.push(ExtendedMeter { code, size, value });
        }
        Ok(Self { alternate, game, meters })
    }
}

/// LP48 reply: the last bill accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LastBill {
    /// Country code (1 BCD byte).
    pub country: u8,
    /// Bill denomination code (1 BCD byte).
    pub denomination_code: u8,
    /// How many bills of this denomination have been accepted (4 BCD bytes).
    pub count: u64,
}

impl LastBill {
    const BODY_LEN: usize = 1 + 1 + 4;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        bcd::encode(self.country.into(), 1, out).map_err(bcd_encode_field("country"))?;
        bcd::encode(self.denomination_code.into(), 1, out)
            .map_err(bcd_encode_field("denomination_code"))?;
        bcd::encode(self.count, 4, out).map_err(bcd_encode_field("count"))
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            country: r.bcd(1, "country")? as u8,
            denomination_code: r.bcd(1, "denomination_code")? as u8,
            count: r.bcd(4, "count")?,
        })
    }
}

/// LP54 reply: SAS version and the machine's serial number.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionAndSerial {
    /// Three ASCII digits, e.g. "602".
    pub version: [u8; 3],
    /// 0–40 ASCII characters.
    pub serial: Vec<u8>,
}

/// Longest serial number LP54 carries.
pub const MAX_SERIAL_LEN: usize = 40;

impl VersionAndSerial {
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.serial.len() > MAX_SERIAL_LEN {
            return Err(EncodeError::TooLong {
                field: "serial",
                len: self.serial.len(),
                max: MAX_SERIAL_LEN,
            });
        }
        let mut body = self.version.to_vec();
        body.extend_from_slice(&self.serial);
        push_length_prefixed(out, &body, "serial")
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut body = r.length_prefixed()?;
        let version = body.array()?;
        let serial = body.rest().to_vec();
        if serial.len() > MAX_SERIAL_LEN {
            return Err(DecodeError::BadLength { command: r.command, len: serial.len() });
        }
        Ok(Self { version, serial })
    }
}

/// The shared layout of LP70 replies and LP71 requests and replies: a status or transfer code,
/// then, unless the message is the one-byte status form, amount, parsing code and validation data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TicketMessage {
    /// LP70: ticket status; LP71 request: transfer code (0xFF = status query); LP71 reply:
    /// machine status.
    pub status: u8,
    pub detail: Option<TicketDetail>,
}

/// Amount and validation data of a ticket message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TicketDetail {
    /// Amount in cents (5 BCD bytes).
    pub amount: u64,
    pub parsing_code: u8,
    /// Validation number and any restricted-ticket trailer, as sent.
    pub validation_data: Vec<u8>,
}

impl TicketMessage {
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut body = vec![self.status];
        if let Some(d) = &self.detail {
            bcd::encode(d.amount, 5, &mut body).map_err(bcd_encode_field("amount"))?;
            body.push(d.parsing_code);
            body.extend_from_slice(&d.validation_data);
        }
        push_length_prefixed(out, &body, "validation_data")
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut body = r.length_prefixed()?;
        let status = body.u8()?;
        let detail = if body.is_empty() {
            None
        } else {
            Some(TicketDetail {
                amount: body.bcd(5, "amount")?,
                parsing_code: body.u8()?,
                validation_data: body.rest().to_vec(),
            })
        };
        Ok(Self { status, detail })
    }
}

/// LP72 answer to an interrogation (SAS 6.02 §8.3, layout as MON's `LP72AftTransferFundsParser`
/// documents it): the transfer's buffer position and status, its type and amounts in cents, the
/// host's transaction ID and, once complete, when it completed. A machine with no transfer to
/// report may send only position and status (`FF`); the other fields are then zero.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AftTransferStatus {
    /// 00 = the current or most recent transfer, else its history buffer position.
    pub position: u8,
    /// 00 full transfer, 01 partial transfer successful, 40 pending, 80–9F and C0–C1 refused,
    /// FF no transfer information.
    pub status: u8,
    /// 00 printed, 20 printing, 40 pending, FF no receipt.
    pub receipt_status: u8,
    /// 00 in-house host → machine, 10 / 11 bonus coin-out / jackpot win host → machine, 20
    /// in-house host → ticket, 40 debit host → machine, 60 debit host → ticket, 80 in-house
    /// machine → host, 90 win machine → host.
    pub transfer_type: u8,
    /// Amounts in cents (5 BCD bytes each).
    pub cashable: u64,
    pub restricted: u64,
    pub non_restricted: u64,
    pub flags: u8,
    /// Asset number, binary, least significant byte first.
    pub asset_number: u32,
    /// The host's transaction ID, 0–20 ASCII characters as sent.
    pub transaction_id: Vec<u8>,
    /// When the transfer completed; `None` while pending or when the machine sent zeros.
    pub completed: Option<DateTime>,
}

/// Longest AFT transaction ID.
pub const MAX_TRANSACTION_ID_LEN: usize = 20;

impl AftTransferStatus {
    /// Whether the transfer moved money: completed, in full or in part.
    pub fn is_complete(&self) -> bool {
        matches!(self.status, 0x00 | 0x01)
    }

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.transaction_id.len() > MAX_TRANSACTION_ID_LEN {
            return Err(EncodeError::TooLong {
                field: "transaction_id",
                len: self.transaction_id.len(),
                max: MAX_TRANSACTION_ID_LEN,
            });
        }
        let mut body = vec![self.position, self.status, self.receipt_status, self.transfer_type];
        for (field, value) in [
            ("cashable", self.cashable),
            ("restricted", self.restricted),
            ("non_restricted", self.non_restricted),
        ] {
            bcd::encode(value, 5, &mut body).map_err(bcd_encode_field(field))?;
        }
        body.push(self.flags);
        body.extend_from_slice(&self.asset_number.to_le_bytes());
        push_length_prefixed(&mut body, &self.transaction_id, "transaction_id")?;
        match &self.completed {
            Some(t) => t.encode_into(&mut body)?,
            None => body.extend_from_slice(&[0; DateTime::BODY_LEN]),
        }
        // Expiration (4 BCD), pool ID (2), and three cumulative meters not sent (size 0).
        body.extend_from_slice(&[0; 4 + 2 + 3]);
        push_length_prefixed(out, &body, "aft_status")
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut body = r.length_prefixed()?;
        let mut status = Self { position: body.u8()?, status: body.u8()?, ..Self::default() };
        if body.is_empty() {
            return Ok(status);
        }
        status.receipt_status = body.u8()?;
        status.transfer_type = body.u8()?;
        status.cashable = body.bcd(5, "cashable")?;
        status.restricted = body.bcd(5, "restricted")?;
        status.non_restricted = body.bcd(5, "non_restricted")?;
        status.flags = body.u8()?;
        status.asset_number = u32::from_le_bytes(body.array()?);
        let id_len = usize::from(body.u8()?);
        if id_len > MAX_TRANSACTION_ID_LEN {
            return Err(DecodeError::InvalidField {
                field: "transaction_id",
                value: id_len as u64,
            });
        }
        status.transaction_id = body.bytes(id_len)?.to_vec();
        if body.buf.len() >= DateTime::BODY_LEN {
            let raw = body.bytes(DateTime::BODY_LEN)?;
            if raw.iter().any(|&b| b != 0) {
                status.completed = Some(DateTime::decode_from(&mut Reader::new(r.command, raw))?);
            }
        }
        // Expiration, pool ID and the cumulative meters: the gateway reads meters itself.
        body.rest();
        Ok(status)
    }
}

/// LP85 reply: the SAS progressive level hit and its amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressiveWin {
    pub group: u8,
    /// 01–20 (hex).
    pub level: u8,
    /// Amount in cents (5 BCD bytes).
    pub amount: u64,
}

/// LP87 reply: `addr 87 len group count {level amount(5 BCD)}… crc`, every level hit since
/// the last read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProgressiveWins {
    pub group: u8,
    /// (level 01–20, amount in cents).
    pub levels: Vec<(u8, u64)>,
}

/// Most levels an LP87 reply can carry: levels are 01–20 (hex).
pub const MAX_PROGRESSIVE_LEVELS: usize = 32;

impl ProgressiveWins {
    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.levels.len() > MAX_PROGRESSIVE_LEVELS {
            return Err(EncodeError::TooLong {
                field: "levels",
                len: self.levels.len(),
                max: MAX_PROGRESSIVE_LEVELS,
            });
        }
        let mut body = vec![self.group, self.levels.len() as u8];
        for &(level, amount) in &self.levels {
            body.push(level);
            bcd::encode(amount, 5, &mut body).map_err(bcd_encode_field("amount"))?;
        }
        push_length_prefixed(out, &body, "levels")
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut body = r.length_prefixed()?;
        let group = body.u8()?;
        let count = usize::from(body.u8()?);
        if count > MAX_PROGRESSIVE_LEVELS {
            return Err(DecodeError::InvalidField { field: "levels", value: count as u64 });
        }
        let levels = (0..count)
            .map(|_| Ok((body.u8()?, body.bcd(5, "amount")?)))
            .collect::<Result<_, _>>()?;
        body.finish()?;
        Ok(Self { group, levels })
    }
}

/// LP90 reply (and the RTE 7C payload): a legacy bonus award.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LegacyBonusWin {
    /// 00 = not a multiplied jackpot, else the multiplier.
    pub multiplier: u8,
    /// Multiplied win, accounting credits (4 BCD bytes).
    pub multiplied_win: u64,
    /// 00 deductible, 01 non-deductible, 02 wager match.
    pub tax_status: u8,
    /// Bonus, accounting credits (4 BCD bytes).
    pub bonus: u64,
}

impl LegacyBonusWin {
    const BODY_LEN: usize = 1 + 4 + 1 + 4;

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.multiplier);
        bcd::encode(self.multiplied_win, 4, out).map_err(bcd_encode_field("multiplied_win"))?;
        out.push(self.tax_status);
        bcd::encode(self.bonus, 4, out).map_err(bcd_encode_field("bonus"))
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            multiplier: r.u8()?,
            multiplied_win: r.bcd(4, "multiplied_win")?,
            tax_status: r.u8()?,
            bonus: r.bcd(4, "bonus")?,
        })
    }
}

/// LPA0: the features enabled for a game, three bit fields (SAS 6.02 layout as recalled
/// [unverified against the licensed spec]; 6.03 machines may send a fourth byte, which this
/// decoder refuses as a bad length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EnabledFeatures {
    pub game: u16,
    /// Features 1–3, raw: 1 = bit 0 jackpot multiplier, 1 AFT bonus awards, 2 legacy bonus
    /// awards, 3 tournament, 4 validation extensions, 5–6 validation style (00 none, 01 system,
    /// 10 secure enhanced), 7 ticket redemption; 2 = bits 0–1 meter model, 2 tickets to total drop
    /// and cancelled credits, 3 extended meters, 4 component authentication, 6 AFT, 7
    /// multi-denomination extensions; 3 = bit 0 maximum polling rate (40 ms), 1 multiple SAS
    /// progressive win reporting.
    pub features: [u8; 3],
}

impl EnabledFeatures {
    /// The validation style of bits 5–6 of the first byte.
    pub fn validation(&self) -> &'static str {
        match (self.features[0] >> 5) & 0b11 {
            0b00 => "none",
            0b01 => "system",
            0b10 => "secure_enhanced",
            _ => "reserved",
        }
    }

    fn bit(&self, byte: usize, bit: u8) -> bool {
        self.features.get(byte).is_some_and(|b| b & (1 << bit) != 0)
    }

    pub fn ticket_redemption(&self) -> bool {
        self.bit(0, 7)
    }

    pub fn legacy_bonus_awards(&self) -> bool {
        self.bit(0, 2)
    }

    pub fn aft(&self) -> bool {
        self.bit(1, 6)
    }

    pub fn extended_meters(&self) -> bool {
        self.bit(1, 3)
    }

    pub fn multi_denomination(&self) -> bool {
        self.bit(1, 7)
    }

    /// Several SAS progressive levels reported at once (LP87 rather than LP85).
    pub fn multiple_progressive_wins(&self) -> bool {
        self.bit(2, 1)
    }
}

/// One validation record as LP4D reports it (sas-protocol.md §13; SAS 6.02 §15.13, layout as
/// recalled [unverified against the licensed spec]): validation type, buffer index, date and
/// time, the 16-digit validation number, the amount in cents, ticket number, validation system
/// ID, expiration and pool ID. A machine with nothing to report sends every field zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValidationRecord {
    /// 00 cashable ticket from a cash-out or win, 01 restricted promotional ticket from a
    /// cash-out, 02–04 tickets from AFT, 10 / 20 cancelled-credit / jackpot handpay with receipt,
    /// 40 / 60 the same without receipt, 80–82 cashable / restricted / non-restricted ticket
    /// redeemed.
    pub validation_type: u8,
    /// Position in the machine's validation buffer; 0 when there is no record.
    pub index: u8,
    /// When the ticket was printed or redeemed; `None` when the machine sent zeros.
    pub date_time: Option<DateTime>,
    /// The validation number without its system ID (16 BCD digits).
    pub validation_number: u64,
    /// Amount in cents (5 BCD bytes).
    pub amount: u64,
    /// Ticket number (4 BCD digits).
    pub ticket_number: u16,
    /// Validation system ID (2 BCD digits): with the number, the 18 digits on the ticket.
    pub validation_system_id: u8,
    /// Expiration (MMDDYYYY, or 0000DDDD days), 8 BCD digits as sent.
    pub expiration: u32,
    /// Pool ID, binary.
    pub pool_id: u16,
}

impl ValidationRecord {
    const BODY_LEN: usize = 1 + 1 + DateTime::BODY_LEN + 8 + 5 + 2 + 1 + 4 + 2;

    /// A buffer with nothing to report answers with an all-zero record.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.validation_type);
        out.push(self.index);
        match &self.date_time {
            Some(t) => t.encode_into(out)?,
            None => out.extend_from_slice(&[0; DateTime::BODY_LEN]),
        }
        let fields: [(&'static str, u64, usize); 5] = [
            ("validation_number", self.validation_number, 8),
            ("amount", self.amount, 5),
            ("ticket_number", self.ticket_number.into(), 2),
            ("validation_system_id", self.validation_system_id.into(), 1),
            ("expiration", self.expiration.into(), 4),
        ];
        for (field, value, width) in fields {
            bcd::encode(value, width, out).map_err(bcd_encode_field(field))?;
        }
        out.extend_from_slice(&self.pool_id.to_le_bytes());
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let validation_type = r.u8()?;
        let index = r.u8()?;
        let raw_time = r.bytes(DateTime::BODY_LEN)?;
        let date_time = if raw_time.iter().all(|&b| b == 0) {
            None
        } else {
            Some(DateTime::decode_from(&mut Reader::new(r.command, raw_time))?)
        };
        // The widths make every value fit its type: 16, 4, 2 and 8 BCD digits.
        Ok(Self {
            validation_type,
            index,
            date_time,
            validation_number: r.bcd(8, "validation_number")?,
            amount: r.bcd(5, "amount")?,
            ticket_number: r.bcd(2, "ticket_number")? as u16,
            validation_system_id: r.bcd(1, "validation_system_id")? as u8,
            expiration: r.bcd(4, "expiration")? as u32,
            pool_id: r.u16_le()?,
        })
    }
}

/// A date and time as LP7E/7F carry it: MMDDYYYY and HHMMSS in BCD, no time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DateTime {
    const BODY_LEN: usize = 7;

    fn validate(&self) -> Result<(), (&'static str, u64)> {
        let checks: [(&'static str, u64, bool); 6] = [
            ("year", self.year.into(), self.year <= 9999),
            ("month", self.month.into(), (1..=12).contains(&self.month)),
            ("day", self.day.into(), (1..=31).contains(&self.day)),
            ("hour", self.hour.into(), self.hour < 24),
            ("minute", self.minute.into(), self.minute < 60),
            ("second", self.second.into(), self.second < 60),
        ];
        match checks.iter().find(|(_, _, ok)| !ok) {
            Some(&(field, value, _)) => Err((field, value)),
            None => Ok(()),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.validate().map_err(|(field, value)| EncodeError::InvalidField { field, value })?;
        for (value, width) in [
            (u64::from(self.month), 1),
            (u64::from(self.day), 1),
            (u64::from(self.year), 2),
            (u64::from(self.hour), 1),
            (u64::from(self.minute), 1),
            (u64::from(self.second), 1),
        ] {
            bcd::encode(value, width, out).map_err(bcd_encode_field("date_time"))?;
        }
        Ok(())
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let t = Self {
            month: r.bcd(1, "month")? as u8,
            day: r.bcd(1, "day")? as u8,
            year: r.bcd(2, "year")? as u16,
            hour: r.bcd(1, "hour")? as u8,
            minute: r.bcd(1, "minute")? as u8,
            second: r.bcd(1, "second")? as u8,
        };
        t.validate().map_err(|(field, value)| DecodeError::InvalidField { field, value })?;
        Ok(t)
    }
}

// === Real-time events ===

/// A real-time event frame's payload (sas-protocol.md §6).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RealTimeEvent {
    /// 0x7E — game started.
    GameStarted {
        /// Credits wagered, in player-denomination credits (2 BCD bytes).
        credits_wagered: u64,
        /// Total coin-in meter after this wager, in accounting credits (4 BCD bytes).
        total_coin_in: u64,
        /// Bit 7 max bet, bit 6 multi-denomination, low bits the player denomination code.
        wager_type: u8,
        progressive_group: u8,
    },
    /// 0x7F — game ended.
    GameEnded {
        /// Win in accounting credits, excluding external bonuses (4 BCD bytes).
        win: u64,
    },
    /// 0x8C — game selected.
    GameSelected { game: u16 },
    /// 0x4F — bill accepted.
    BillAccepted { country: u8, denomination_code: u8, count: u64 },
    /// 0x88 — reel N stopped.
    ReelStopped { reel: u8, physical_stop: u8 },
    /// 0x8B — card held or not held: bit 7 held, low bits the card index.
    CardHeld { card: u8 },
    /// 0x7C — legacy bonus pay awarded.
    LegacyBonus { multiplier: u8, multiplied_win: u64, tax_status: u8, bonus: u64 },
    /// Any other exception; in RTE mode these carry no data.
    Exception(Exception),
}

impl RealTimeEvent {
    /// The exception code the frame carries.
    pub fn exception(&self) -> Exception {
        Exception::from_code(match self {
            Self::GameStarted { .. } => 0x7E,
            Self::GameEnded { .. } => 0x7F,
            Self::GameSelected { .. } => 0x8C,
            Self::BillAccepted { .. } => 0x4F,
            Self::ReelStopped { .. } => 0x88,
            Self::CardHeld { .. } => 0x8B,
            Self::LegacyBonus { .. } => 0x7C,
            Self::Exception(e) => return *e,
        })
    }

    /// Total frame length (`addr FF code data crc`) for codes with a known payload; `None` for
    /// codes whose payload this crate does not know, which the codec frames by CRC residue.
    pub fn frame_len(code: u8) -> Option<usize> {
        let payload = match code {
            0x7E => 8,
            0x7F => 4,
            0x8C => 2,
            0x4F => 6,
            0x88 => 2,
            0x8B => 1,
            0x7C => 10,
            _ if Self::carries_no_data(code) => 0,
            _ => return None,
        };
        Some(3 + payload + 2)
    }

    /// Codes known to have no RTE payload: every named exception except those with one.
    fn carries_no_data(code: u8) -> bool {
        !matches!(code, 0x7E | 0x7F | 0x8C | 0x4F | 0x88 | 0x8B | 0x7C | 0x8A | 0x89 | 0x87)
            && !matches!(Exception::from_code(code), Exception::Unknown(_))
    }

    fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let code = self.exception().code();
        out.push(code);
        let field = bcd_encode_field;
        match self {
            Self::GameStarted { credits_wagered, total_coin_in, wager_type, progressive_group } => {
                bcd::encode(*credits_wagered, 2, out).map_err(field("credits_wagered"))?;
                bcd::encode(*total_coin_in, 4, out).map_err(field("total_coin_in"))?;
                out.extend_from_slice(&[*wager_type, *progressive_group]);
            }
            Self::GameEnded { win } => bcd::encode(*win, 4, out).map_err(field("win"))?,
            Self::GameSelected { game } => {
                bcd::encode((*game).into(), 2, out).map_err(field("game"))?;
            }
            Self::BillAccepted { country, denomination_code, count } => {
                bcd::encode((*country).into(), 1, out).map_err(field("country"))?;
                bcd::encode((*denomination_code).into(), 1, out)
                    .map_err(field("denomination_code"))?;
                bcd::encode(*count, 4, out).map_err(field("count"))?;
            }
            Self::ReelStopped { reel, physical_stop } => {
                out.extend_from_slice(&[*reel, *physical_stop])
            }
            Self::CardHeld { card } => out.push(*card),
            Self::LegacyBonus { multiplier, multiplied_win, tax_status, bonus } => {
                out.push(*multiplier);
                bcd::encode(*multiplied_win, 4, out).map_err(field("multiplied_win"))?;
                out.push(*tax_status);
                bcd::encode(*bonus, 4, out).map_err(field("bonus"))?;
            }
            Self::Exception(e) => {
                if Self::frame_len(code) != Some(5) && !matches!(e, Exception::Unknown(_)) {
                    // A data-carrying code must use its typed variant, or the frame would lie
                    // about its length.
                    return Err(EncodeError::InvalidField { field: "code", value: code.into() });
                }
            }
        }
        Ok(())
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let code = r.u8()?;
        Ok(match code {
            0x7E => Self::GameStarted {
                credits_wagered: r.bcd(2, "credits_wagered")?,
                total_coin_in: r.bcd(4, "total_coin_in")?,
                wager_type: r.u8()?,
                progressive_group: r.u8()?,
            },
            0x7F => Self::GameEnded { win: r.bcd(4, "win")? },
            0x8C => Self::GameSelected { game: r.bcd(2, "game")? as u16 },
            0x4F => Self::BillAccepted {
                country: r.bcd(1, "country")? as u8,
                denomination_code: r.bcd(1, "denomination_code")? as u8,
                count: r.bcd(4, "count")?,
            },
            0x88 => Self::ReelStopped { reel: r.u8()?, physical_stop: r.u8()? },
            0x8B => Self::CardHeld { card: r.u8()? },
            0x7C => Self::LegacyBonus {
                multiplier: r.u8()?,
                multiplied_win: r.bcd(4, "multiplied_win")?,
                tax_status: r.u8()?,
                bonus: r.bcd(4, "bonus")?,
            },
            other => {
                // Unknown payloads are skipped, not rejected: the code itself is the event and
                // must reach the journal (sas-protocol.md §5, "unknown codes preserved").
                r.rest();
                Self::Exception(Exception::from_code(other))
            }
        })
    }
}

// === Byte reader ===

/// The body of a checked frame `addr cmd body… crc`: between the command byte and the CRC.
fn checked_body(frame: &[u8]) -> Result<&[u8], DecodeError> {
    if !has_valid_crc(frame) {
        return Err(DecodeError::BadCrc { len: frame.len() });
    }
    // Three bytes can have a zero CRC residue (`01 89 11`), but a frame has at least an address,
    // a command and two CRC bytes.
    frame
        .len()
        .checked_sub(2)
        .and_then(|end| frame.get(2..end))
        .ok_or(DecodeError::Truncated { received: frame.len(), expected: 4 })
}

fn push_length_prefixed(
    out: &mut Vec<u8>,
    body: &[u8],
    field: &'static str,
) -> Result<(), EncodeError> {
    let len = u8::try_from(body.len()).map_err(|_| EncodeError::TooLong {
        field,
        len: body.len(),
        max: 255,
    })?;
    out.push(len);
    out.extend_from_slice(body);
    Ok(())
}

/// A cursor over a frame body that names what went wrong.
struct Reader<'a> {
    command: u8,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(command: u8, buf: &'a [u8]) -> Self {
        Self { command, buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::BadLength { command: self.command, len: self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let [byte] = self.array()?;
        Ok(byte)
    }

    fn u16_le(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn bcd(&mut self, n: usize, field: &'static str) -> Result<u64, DecodeError> {
        bcd::decode(self.bytes(n)?).map_err(bcd_field(field))
    }

    fn meters(&mut self, count: usize, width: usize) -> Result<Vec<u64>, DecodeError> {
        (0..count).map(|_| self.bcd(width, "meter")).collect()
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Splits off the body announced by a length byte; the length must cover the rest exactly.
    fn length_prefixed(&mut self) -> Result<Self, DecodeError> {
        let len = usize::from(self.u8()?);
        if len != self.buf.len() {
            return Err(DecodeError::BadLength { command: self.command, len });
        }
        Ok(Self { command: self.command, buf: self.rest() })
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::BadLength { command: self.command, len: self.buf.len() })
        }
    }
}
