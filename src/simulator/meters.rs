//! The machine's meters, kept consistent by construction: every change goes through one of the
//! operations below (bet, win, bill, cash-out, handpay), each of which moves all the meters that
//! the operation touches. Meter meanings follow sas-protocol.md §7.4 and §7.5.
//!
//! Meters are held as full `u64` counts. The wire carries only the low digits (4 BCD bytes =
//! 8 digits for the fixed polls), so rollover at 10^8 happens where a real machine has it: in
//! the encoding, see [`on_wire`].

use firmware_protocols::bcd;
use firmware_protocols::sas::MeterCode;
use serde::Serialize;

use super::config::BILL_VALUES;

/// All meters of one machine. Credit meters are in accounting-denomination credits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Meters {
    /// 0000 — every credit wagered.
    pub coin_in: u64,
    /// 0001 — wins paid by the machine to the credit meter.
    pub coin_out: u64,
    /// 0002 — wins paid by an attendant (handpay jackpots).
    pub jackpot: u64,
    /// 0003 — cash-outs paid by an attendant.
    pub handpaid_cancelled_credits: u64,
    /// 0004 — every cash-out: paid by the machine and hand paid (the hand-paid ones are also in
    /// 0003 and 0023).
    pub cancelled_credits: u64,
    /// 0005.
    pub games_played: u64,
    /// 0006.
    pub games_won: u64,
    /// 0007.
    pub games_lost: u64,
    /// 000B — credits from bills.
    pub bill_credits: u64,
    /// 000C.
    pub current_credits: u64,
    /// 0025 / LP18.
    pub games_since_power_up: u64,
    /// 0026 / LP18.
    pub games_since_door_closed: u64,
    /// LP1C slot-door-open count.
    pub slot_door_openings: u64,
    /// LP1C power-reset count.
    pub power_resets: u64,
    /// 0040–0057: bills accepted per SAS bill denomination code.
    pub bills_accepted: [u64; 24],
    /// 000D — cashable tickets redeemed, in cents.
    pub ticket_in_cents: u64,
    /// 0011 / 0035 — how many.
    pub tickets_in: u64,
    /// 0015 / 0028 / 0029 — the same in credits.
    pub ticket_in_credits: u64,
    /// 000E — cashable tickets printed, in cents.
    pub ticket_out_cents: u64,
    /// 0012 / 0038 — how many.
    pub tickets_out: u64,
    /// 0016 / 002C — the same in credits.
    pub ticket_out_credits: u64,
    /// 00A0 / 00A2 / 00A4 — in-house AFT transfers to the machine, in cents, per class
    /// (cashable, restricted, non-restricted); 00A1 / 00A3 / 00A5 how many.
    pub aft_in_cents: [u64; 3],
    pub aft_in_count: [u64; 3],
    /// 00B8 / 00BA / 00BC — in-house AFT transfers to the host, in cents, per class; 00B9 /
    /// 00BB / 00BD how many.
    pub aft_out_cents: [u64; 3],
    pub aft_out_count: [u64; 3],
    /// 0017 / 0018 — electronic transfers to the machine / to the host, in credits.
    pub aft_in_credits: u64,
    pub aft_out_credits: u64,
    /// 001D — SAS progressive wins paid by the machine (part of coin out).
    pub machine_paid_progressive: u64,
    /// 001E — legacy bonuses paid by the machine (part of coin out).
    pub machine_paid_bonus: u64,
    /// 0020 — SAS progressive wins paid by an attendant (part of jackpot).
    pub attendant_paid_progressive: u64,
}

impl Meters {
    /// Meters of a machine whose credit meters start at `initial` (history before the ledger).
    pub fn starting_at(initial: u64) -> Self {
        Self {
            coin_in: initial,
            coin_out: initial,
            bill_credits: initial,
            cancelled_credits: initial,
            ..Self::default()
        }
    }

    /// 0024 — total drop: bills, tickets and electronic transfers in (no coins here).
    pub fn drop(&self) -> u64 {
        self.bill_credits + self.ticket_in_credits + self.aft_in_credits
    }

    /// An AFT transfer of `cents` (`credits`) of `class` (0 cashable, 1 restricted, 2
    /// non-restricted) from the cashless system onto the credit meter.
    pub fn aft_in(&mut self, class: usize, cents: u64, credits: u64) {
        if let (Some(c), Some(n)) =
            (self.aft_in_cents.get_mut(class), self.aft_in_count.get_mut(class))
        {
            *c += cents;
            *n += 1;
        }
        self.aft_in_credits += credits;
        self.current_credits += credits;
    }

    /// The player cashed out `credits` (`cents`, cashable) to the cashless system.
    pub fn aft_out(&mut self, cents: u64, credits: u64) {
        self.aft_out_cents[0] += cents;
        self.aft_out_count[0] += 1;
        self.aft_out_credits += credits;
        self.current_credits -= credits.min(self.current_credits);
    }

    /// A SAS progressive win or a legacy bonus paid to the credit meter: coin out, and the
    /// meter of its source.
    pub fn paid_extra(&mut self, credits: u64, progressive: bool) {
        if progressive {
            self.machine_paid_progressive += credits;
        } else {
            self.machine_paid_bonus += credits;
        }
        self.coin_out += credits;
        self.current_credits += credits;
    }

    /// 0022 — total won.
    pub fn total_won(&self) -> u64 {
        self.coin_out + self.jackpot
    }

    /// 0023 — total hand paid.
    pub fn total_hand_paid(&self) -> u64 {
        self.handpaid_cancelled_credits + self.jackpot
    }

    /// 003E — bills in the stacker.
    pub fn bills_in_stacker(&self) -> u64 {
        self.bills_accepted.iter().sum()
    }

    /// A game starts: the bet leaves the credit meter.
    pub fn bet(&mut self, credits: u64) {
        self.coin_in += credits;
        self.current_credits -= credits.min(self.current_credits);
        self.games_played += 1;
        self.games_since_power_up += 1;
        self.games_since_door_closed += 1;
    }

    /// A game ends; `machine_paid` wins go to the credit meter, others wait for a handpay.
    pub fn game_ended(&mut self, win: u64, machine_paid: bool) {
        if win == 0 {
            self.games_lost += 1;
        } else {
            self.games_won += 1;
        }
        if machine_paid {
            self.coin_out += win;
            self.current_credits += win;
        }
    }

    /// A bill was stacked.
    pub fn bill(&mut self, code: u8, credits: u64) {
        if let Some(count) = self.bills_accepted.get_mut(usize::from(code)) {
            *count += 1;
        }
        self.bill_credits += credits;
        self.current_credits += credits;
    }

    /// A ticket worth `cents` (`credits`) was redeemed onto the credit meter.
    pub fn ticket_in(&mut self, cents: u64, credits: u64) {
        self.ticket_in_cents += cents;
        self.tickets_in += 1;
        self.ticket_in_credits += credits;
        self.current_credits += credits;
    }

    /// The player cashed out `credits` (`cents`) to a printed ticket.
    pub fn ticket_out(&mut self, cents: u64, credits: u64) {
        self.cashout(credits);
        self.ticket_out_cents += cents;
        self.tickets_out += 1;
        self.ticket_out_credits += credits;
    }

    /// The player cashed out `credits` paid by the machine.
    pub fn cashout(&mut self, credits: u64) {
        self.cancelled_credits += credits;
        self.current_credits -= credits.min(self.current_credits);
    }

    /// An attendant paid a jackpot.
    pub fn jackpot_handpaid(&mut self, credits: u64) {
        self.jackpot += credits;
    }

    /// An attendant paid a SAS progressive win.
    pub fn progressive_handpaid(&mut self, credits: u64) {
        self.jackpot += credits;
        self.attendant_paid_progressive += credits;
    }

    /// An attendant paid a cash-out; the credits leave the credit meter only now.
    pub fn cashout_handpaid(&mut self, credits: u64) {
        self.handpaid_cancelled_credits += credits;
        self.cancelled_credits += credits;
        self.current_credits -= credits.min(self.current_credits);
    }

    /// The value of a meter by its SAS code, or `None` for meters this machine does not keep
    /// (LP2F and LP6F/AF omit those, sas-protocol.md §7.3). Cents meters are 0: this machine has
    /// no tickets.
    pub fn value(&self, code: MeterCode) -> Option<u64> {
        Some(match code.0 {
            0x0000 => self.coin_in,
            0x0001 => self.coin_out,
            0x0002 => self.jackpot,
            0x0003 => self.handpaid_cancelled_credits,
            0x0004 => self.cancelled_credits,
            0x0005 => self.games_played,
            0x0006 => self.games_won,
            0x0007 => self.games_lost,
            // Coin acceptor, hopper and coin drop: this machine has none.
            0x0008..=0x000A => 0,
            0x000B => self.bill_credits,
            0x000C => self.current_credits,
            // Tickets, cashable only: restricted and promotional ones are zero.
            0x000D => self.ticket_in_cents,
            0x000E => self.ticket_out_cents,
            0x0011 | 0x0035 => self.tickets_in,
            0x0012 | 0x0038 => self.tickets_out,
            0x0015 | 0x0028 | 0x0029 => self.ticket_in_credits,
            0x0016 | 0x002C => self.ticket_out_credits,
            0x000F | 0x0010 | 0x0013 | 0x0014 | 0x002A | 0x002B | 0x002D | 0x0036 | 0x0037
            | 0x0039 => 0,
            0x0017 => self.aft_in_credits,
            0x0018 => self.aft_out_credits,
            // Machine-paid paytable win, progressive and external bonus make up coin out.
            0x001C => self.coin_out - self.machine_paid_progressive - self.machine_paid_bonus,
            0x001D => self.machine_paid_progressive,
            0x001E => self.machine_paid_bonus,
            // Attendant-paid paytable win; progressive and external bonus: none.
            0x001F => self.jackpot - self.attendant_paid_progressive,
            0x0020 => self.attendant_paid_progressive,
            0x0021 => 0,
            0x0022 => self.total_won(),
            0x0023 => self.total_hand_paid(),
            0x0024 => self.drop(),
            0x0025 => self.games_since_power_up,
            0x0026 => self.games_since_door_closed,
            0x003E => self.bills_in_stacker(),
            0x003F => self.bill_credits,
            code @ 0x0040..=0x0057 => {
                self.bills_accepted.get(usize::from(code - 0x0040)).copied().unwrap_or(0)
            }
            // In-house AFT in and out; debit, bonus and to-ticket transfers: none.
            code @ (0x00A0..=0x00A5 | 0x00B8..=0x00BD) => {
                let (base, cents, count) = if code < 0x00B8 {
                    (0x00A0, &self.aft_in_cents, &self.aft_in_count)
                } else {
                    (0x00B8, &self.aft_out_cents, &self.aft_out_count)
                };
                // Pairs of cents and count: cashable, restricted, non-restricted.
                let class = usize::from((code - base) / 2);
                let meter = if code.is_multiple_of(2) { cents } else { count };
                meter.get(class).copied().unwrap_or(0)
            }
            0x00A6..=0x00B7 => 0,
            _ => return None,
        })
    }

    /// The six LP1E bill counts: $1, $5, $10, $20, $50, $100.
    pub fn lp1e_bill_counts(&self) -> Vec<u64> {
        [1, 5, 10, 20, 50, 100]
            .iter()
            .map(|v| {
                BILL_VALUES
                    .iter()
                    .position(|b| b == v)
                    .and_then(|i| self.bills_accepted.get(i))
                    .copied()
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// The low digits of `value` that fit `width` BCD bytes: how a meter rolls over on the wire
/// (sas-protocol.md §7.1).
pub fn on_wire(value: u64, width: usize) -> u64 {
    value % bcd::modulus(width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_of_play_moves_every_related_meter() {
        let mut m = Meters::default();
        m.bill(4, 2_000);
        m.bet(25);
        m.game_ended(50, true);
        m.bet(25);
        m.game_ended(0, true);
        m.cashout(m.current_credits);
        assert_eq!(m.coin_in, 50);
        assert_eq!(m.coin_out, 50);
        assert_eq!((m.games_played, m.games_won, m.games_lost), (2, 1, 1));
        assert_eq!(m.cancelled_credits, 2_000);
        assert_eq!(m.current_credits, 0);
        assert_eq!(m.value(MeterCode(0x0044)), Some(1), "one $20 bill");
        assert_eq!(m.lp1e_bill_counts(), [0, 0, 0, 1, 0, 0]);
        assert_eq!(m.value(MeterCode(0x0024)), Some(2_000));
        assert_eq!(m.value(MeterCode(0x00A0)), Some(0));
        assert_eq!(m.value(MeterCode(0x00C0)), None);
    }

    #[test]
    fn aft_progressive_and_bonus_move_their_meters_and_coin_out_is_their_sum() {
        let mut m = Meters::default();
        m.aft_in(0, 2_000, 400);
        m.aft_in(2, 500, 100);
        m.bet(300);
        m.game_ended(100, true);
        m.paid_extra(50, true);
        m.paid_extra(20, false);
        m.aft_out(1_850, 370);
        let v = |code| m.value(MeterCode(code)).unwrap();
        assert_eq!((v(0xA0), v(0xA1), v(0xA4), v(0xA5), v(0xA2)), (2_000, 1, 500, 1, 0));
        assert_eq!((v(0xB8), v(0xB9), v(0xBC)), (1_850, 1, 0));
        assert_eq!((v(0x17), v(0x18)), (500, 370));
        assert_eq!((v(0x1C), v(0x1D), v(0x1E), v(0x01)), (100, 50, 20, 170));
        assert_eq!(m.current_credits, 0);
        assert_eq!(m.drop(), 500, "electronic transfers in count in the drop");
    }

    #[test]
    fn meters_roll_over_at_ten_to_the_eighth_on_the_wire() {
        assert_eq!(on_wire(100_000_123, 4), 123);
        assert_eq!(on_wire(99_999_999, 4), 99_999_999);
        assert_eq!(on_wire(12_345, 2), 2_345);
    }
}
