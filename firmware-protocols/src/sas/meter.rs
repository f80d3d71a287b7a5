//! Meter codes and SAS denomination codes (sas-protocol.md §7). Meter values on the wire are
//! accounting-denomination credits unless the meter is a cents or quantity meter; turning credits
//! into money is the normalizer's job, with the denomination from LP1F.

/// A SAS meter code as used by LP2F (low byte) and LP6F/AF (two bytes, LSB first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterCode(pub u16);

impl MeterCode {
    /// 0x0000 — total coin in: every credit wagered.
    pub const TOTAL_COIN_IN: Self = Self(0x0000);
    /// 0x0001 — total coin out: wins paid by the machine (not cash-outs).
    pub const TOTAL_COIN_OUT: Self = Self(0x0001);
    /// 0x0002 — total jackpot: attendant-paid wins.
    pub const TOTAL_JACKPOT: Self = Self(0x0002);
    /// 0x0003 — total hand-paid cancelled credits.
    pub const TOTAL_HANDPAID_CANCELLED_CREDITS: Self = Self(0x0003);
    /// 0x0004 — total cancelled credits (cash-outs).
    pub const TOTAL_CANCELLED_CREDITS: Self = Self(0x0004);
    /// 0x0005 — games played.
    pub const GAMES_PLAYED: Self = Self(0x0005);
    /// 0x0006 — games won.
    pub const GAMES_WON: Self = Self(0x0006);
    /// 0x0007 — games lost.
    pub const GAMES_LOST: Self = Self(0x0007);
    /// 0x000B — credits from bills accepted.
    pub const BILLS_ACCEPTED_CREDITS: Self = Self(0x000B);
    /// 0x000C — current credits.
    pub const CURRENT_CREDITS: Self = Self(0x000C);
    /// 0x000D — SAS cashable ticket in, in cents.
    pub const CASHABLE_TICKET_IN_CENTS: Self = Self(0x000D);
    /// 0x000E — SAS cashable ticket out, in cents.
    pub const CASHABLE_TICKET_OUT_CENTS: Self = Self(0x000E);
    /// 0x000F — SAS restricted ticket in, in cents.
    pub const RESTRICTED_TICKET_IN_CENTS: Self = Self(0x000F);
    /// 0x0010 — SAS restricted ticket out, in cents.
    pub const RESTRICTED_TICKET_OUT_CENTS: Self = Self(0x0010);
    /// 0x0015 — total ticket in, in credits.
    pub const TOTAL_TICKET_IN: Self = Self(0x0015);
    /// 0x0016 — total ticket out, in credits.
    pub const TOTAL_TICKET_OUT: Self = Self(0x0016);
    /// 0x0022 — total won (coin out + jackpot).
    pub const TOTAL_WON: Self = Self(0x0022);
    /// 0x0023 — total hand paid.
    pub const TOTAL_HAND_PAID: Self = Self(0x0023);
    /// 0x0024 — total drop.
    pub const TOTAL_DROP: Self = Self(0x0024);

    /// True for meters counted in cents rather than credits or quantities. LP2F sends these as
    /// 5 BCD bytes (sas-protocol.md §7.1, §7.4: 000D–0010, and the cents halves of the
    /// 0080–0093 and 00A0–00BD cents/quantity pairs).
    pub fn is_cents(self) -> bool {
        match self.0 {
            0x0D..=0x10 => true,
            0x80..=0x93 | 0xA0..=0xBD => self.0.is_multiple_of(2),
            _ => false,
        }
    }

    /// Width of the value in an LP2F reply.
    pub fn lp2f_value_len(self) -> usize {
        if self.is_cents() { 5 } else { 4 }
    }
}

/// Value of a SAS denomination code (sas-protocol.md §7.1) in hundredths of the currency unit,
/// i.e. minor units of a two-decimal currency. `None` for codes the spec does not define.
pub fn denomination_minor_units(code: u8) -> Option<u64> {
    Some(match code {
        0x01 => 1,
        0x02 => 5,
        0x03 => 10,
        0x04 => 25,
        0x05 => 50,
        0x06 => 100,
        0x07 => 500,
        0x08 => 1_000,
        0x09 => 2_000,
        0x0A => 10_000,
        0x0B => 20,
        0x0C => 200,
        0x0D => 250,
        0x0E => 2_500,
        0x0F => 5_000,
        0x10 => 20_000,
        0x11 => 25_000,
        0x12 => 50_000,
        0x13 => 100_000,
        0x14 => 200_000,
        0x15 => 250_000,
        0x16 => 500_000,
        0x17 => 2,
        0x18 => 3,
        0x19 => 15,
        0x1A => 40,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_meters_are_five_bytes_in_lp2f() {
        assert_eq!(MeterCode::CASHABLE_TICKET_IN_CENTS.lp2f_value_len(), 5);
        assert_eq!(MeterCode::TOTAL_COIN_IN.lp2f_value_len(), 4);
        assert_eq!(MeterCode(0x1B).lp2f_value_len(), 4);
        assert!(MeterCode(0xA0).is_cents());
        assert!(!MeterCode(0xA1).is_cents(), "the quantity half of a pair");
    }

    #[test]
    fn denominations_are_integer_minor_units() {
        assert_eq!(denomination_minor_units(0x01), Some(1));
        assert_eq!(denomination_minor_units(0x0D), Some(250));
        assert_eq!(denomination_minor_units(0x16), Some(500_000));
        assert_eq!(denomination_minor_units(0x00), None);
        assert_eq!(denomination_minor_units(0x1B), None);
    }
}
