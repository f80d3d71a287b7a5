//! The games of a multi-game machine: which games it implements (LP51), each game's player
//! denomination (LP53) and each game's own meters (LP2F / LP6F for game N, sas-protocol.md §7.3).
//!
//! Game numbers are 1..=N in the order configured. A machine configured without games has one,
//! game 1, at the accounting denomination, and its game-1 meters are the machine's.
//!
//! Every meter is in accounting credits, whatever the game's denomination (§7.1): a bet of `b`
//! credits on a game whose denomination is `k` times the accounting one moves coin in by `k·b`.
//! Configuration checks that each game's denomination is a whole multiple of the accounting one.

use std::str::FromStr;

use firmware_protocols::sas::MeterCode;
use firmware_protocols::sas::meter::denomination_minor_units;
use serde::Serialize;

use super::config::parse_code;

/// Most games a simulated machine offers (the gateway reads each one's meters).
pub const MAX_GAMES: usize = 32;

/// The player denominations of the games, game 1 first, as SAS denomination codes. Written
/// `CODE,CODE,…` (decimal or `0x..`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GameList(pub Vec<u8>);

impl FromStr for GameList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_code)
            .collect::<Result<Vec<u8>, String>>()
            .map(Self)
    }
}

/// How many accounting credits one credit of `game_denomination` is worth, if it is a whole
/// number.
pub fn credit_ratio(game_denomination: u8, accounting: u8) -> Option<u64> {
    let game = denomination_minor_units(game_denomination)?;
    let accounting = denomination_minor_units(accounting)?;
    (accounting > 0 && game % accounting == 0).then(|| game / accounting)
}

/// The meters a machine keeps per game (sas-protocol.md §7.4), in accounting credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct GameMeters {
    /// 0000.
    pub coin_in: u64,
    /// 0001: wins paid to the credit meter.
    pub coin_out: u64,
    /// 0002: wins paid by an attendant.
    pub jackpot: u64,
    /// 0005.
    pub games_played: u64,
    /// 0006.
    pub games_won: u64,
    /// 0007.
    pub games_lost: u64,
}

impl GameMeters {
    /// A meter of this game by its SAS code; `None` for meters kept only per machine.
    pub fn value(&self, code: MeterCode) -> Option<u64> {
        Some(match code.0 {
            0x0000 => self.coin_in,
            0x0001 | 0x001C => self.coin_out,
            0x0002 | 0x001F => self.jackpot,
            0x0005 => self.games_played,
            0x0006 => self.games_won,
            0x0007 => self.games_lost,
            0x0022 => self.coin_out + self.jackpot,
            _ => return None,
        })
    }
}

/// The games of one machine and their meters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Games {
    /// Player denomination of game `i + 1`.
    denominations: Vec<u8>,
    meters: Vec<GameMeters>,
    /// Whether the games have meters of their own (more than one game); with one game, game 1's
    /// meters are the machine's.
    own_meters: bool,
    accounting: u8,
}

impl Games {
    /// The games of a machine with `denominations` (empty: one game at `accounting`).
    pub fn new(denominations: &[u8], accounting: u8) -> Self {
        let denominations =
            if denominations.is_empty() { vec![accounting] } else { denominations.to_vec() };
        Self {
            meters: vec![GameMeters::default(); denominations.len()],
            own_meters: denominations.len() > 1,
            denominations,
            accounting,
        }
    }

    /// How many games (LP51).
    pub fn count(&self) -> u16 {
        u16::try_from(self.denominations.len()).unwrap_or(u16::MAX)
    }

    /// Whether a game is played at another denomination than the accounting one (LPA0's
    /// multi-denomination bit).
    pub fn multi_denomination(&self) -> bool {
        self.denominations.iter().any(|code| *code != self.accounting)
    }

    /// Whether `game` is one of this machine's games.
    pub fn has(&self, game: u16) -> bool {
        game >= 1 && usize::from(game) <= self.denominations.len()
    }

    /// Game `game`'s player denomination.
    pub fn denomination(&self, game: u16) -> Option<u8> {
        self.denominations.get(usize::from(game).checked_sub(1)?).copied()
    }

    /// Game `game`'s own meters, if the machine keeps meters per game.
    pub fn meters(&self, game: u16) -> Option<&GameMeters> {
        if !self.own_meters {
            return None;
        }
        self.meters.get(usize::from(game).checked_sub(1)?)
    }

    fn meters_mut(&mut self, game: u16) -> Option<&mut GameMeters> {
        self.meters.get_mut(usize::from(game).checked_sub(1)?)
    }

    /// A game of `game` started with `credits` (accounting credits) wagered.
    pub fn bet(&mut self, game: u16, credits: u64) {
        if let Some(m) = self.meters_mut(game) {
            m.coin_in += credits;
            m.games_played += 1;
        }
    }

    /// A game of `game` ended with `win` accounting credits, paid by the machine or not.
    pub fn game_ended(&mut self, game: u16, win: u64, machine_paid: bool) {
        if let Some(m) = self.meters_mut(game) {
            if win == 0 {
                m.games_lost += 1;
            } else {
                m.games_won += 1;
            }
            if machine_paid {
                m.coin_out += win;
            }
        }
    }

    /// An attendant paid a jackpot won on `game`.
    pub fn jackpot_handpaid(&mut self, game: u16, credits: u64) {
        if let Some(m) = self.meters_mut(game) {
            m.jackpot += credits;
        }
    }

    /// RAM clear: every game's meters start again from zero.
    pub fn clear(&mut self) {
        self.meters.iter_mut().for_each(|m| *m = GameMeters::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn game_lists_parse_and_ratios_are_whole_or_refused() {
        assert_eq!("1, 2,0x17".parse::<GameList>(), Ok(GameList(vec![1, 2, 0x17])));
        assert!("1,x".parse::<GameList>().is_err());
        // 0.05 / 0.01 = 5; 0.01 / 0.05 is no whole number; 0.02 / 0.01 = 2.
        assert_eq!(credit_ratio(0x02, 0x01), Some(5));
        assert_eq!(credit_ratio(0x01, 0x02), None);
        assert_eq!(credit_ratio(0x17, 0x01), Some(2));
        assert_eq!(credit_ratio(0x7F, 0x01), None);
    }

    #[test]
    fn per_game_meters_move_only_for_their_game() {
        let mut games = Games::new(&[0x01, 0x02], 0x01);
        assert_eq!((games.count(), games.denomination(2), games.has(3)), (2, Some(0x02), false));
        games.bet(2, 10);
        games.game_ended(2, 20, true);
        games.bet(1, 3);
        games.game_ended(1, 0, true);
        games.jackpot_handpaid(1, 7);
        let one = games.meters(1).copied().unwrap_or_default();
        let two = games.meters(2).copied().unwrap_or_default();
        assert_eq!((one.coin_in, one.coin_out, one.jackpot, one.games_lost), (3, 0, 7, 1));
        assert_eq!((two.coin_in, two.coin_out, two.games_won), (10, 20, 1));
        assert_eq!(Games::new(&[], 0x01).meters(1), None, "one game: the machine's meters");
        assert!(
            games.multi_denomination() && !Games::new(&[0x01, 0x01], 0x01).multi_denomination()
        );
        games.clear();
        assert_eq!(games.meters(2), Some(&GameMeters::default()));
    }
}
