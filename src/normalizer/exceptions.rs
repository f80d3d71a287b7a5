//! The SAS exception table (sas-protocol.md §5): what each general exception code becomes.
//! Every code maps to a canonical kind; only the idle answers (00, 1F) map to nothing, and the
//! session never reports those.

use firmware_protocols::sas::Exception;

use crate::event::{Category, GamePhase};

/// What an exception without data turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mapping {
    /// 47–4E, 50: a bill of this face value (whole currency units); 4F: a bill of unknown value.
    BillIn(Option<u64>),
    /// 70: the machine's exception queue overflowed.
    EventGap,
    /// Bare 7E / 7F.
    GamePhase(GamePhase),
    /// Bare 8C.
    GameSelected,
    /// 52.
    HandpayReset,
    /// 00, 1F: nothing to report.
    Idle,
    /// Every other named code.
    Significant(Category),
    /// A code the protocol crate does not name.
    Unknown,
}

/// The table. Ranges follow sas-protocol.md §5.
pub(super) fn map(exception: Exception) -> Mapping {
    use Category::*;
    use Mapping::*;
    if let Exception::Unknown(_) = exception {
        return Unknown;
    }
    match exception.code() {
        0x00 | 0x1F => Idle,
        0x11..=0x16 | 0x19 | 0x1A | 0x1D | 0x1E | 0x98..=0x9B => Significant(Door),
        0x17 | 0x18 => Significant(Power),
        0x1B | 0x1C | 0x27 | 0x2E => Significant(Cashbox),
        0x20..=0x25 | 0x2D | 0x40..=0x46 | 0x79 => Significant(Tilt),
        0x28..=0x2C | 0x2F | 0x7B => Significant(BillValidator),
        0x31..=0x35 | 0x3A => Significant(MemoryError),
        0x36..=0x39 | 0x8E | 0x8F => Significant(SoftwareIntegrity),
        0x3B => Significant(Maintenance),
        0x3C | 0xA0..=0xA2 => Significant(ConfigurationChange),
        // The tickets themselves are the LP4D records read after 3D, 3E and 68.
        0x3D | 0x3E | 0x3F | 0x57 | 0x67 | 0x68 => Significant(Ticketing),
        0x47..=0x4E | 0x50 => BillIn(bill_value(exception.code())),
        0x4F => BillIn(None),
        0x51 | 0x55 => Significant(Handpay),
        0x52 => HandpayReset,
        0x53 | 0x54 | 0x56 | 0x59 | 0x5A => Significant(Progressive),
        0x60 | 0x61 | 0x74..=0x78 => Significant(Printer),
        0x66 => Significant(CashOut),
        0x69..=0x6F => Significant(ElectronicTransfer),
        0x70 => EventGap,
        0x71 | 0x72 => Significant(Attendant),
        0x7A => Significant(MeterReset),
        0x7C => Significant(Bonus),
        0x7E => GamePhase(crate::event::GamePhase::Started),
        0x7F => GamePhase(crate::event::GamePhase::Ended),
        0x80 | 0x81 => Significant(Hopper),
        0x82..=0x85 => Significant(OperatorMenu),
        0x86 => Significant(Availability),
        0x87..=0x8B | 0x9E | 0x9F => Significant(GamePlay),
        0x8C => GameSelected,
        // A code the protocol crate names but this table does not: kept with its raw code.
        _ => Unknown,
    }
}

/// Face value of the fixed-denomination bill exceptions (sas-protocol.md §5: 47–4E, 50 are $1,
/// $5, $10, $20, $50, $100, $2, $500, $200), in whole currency units.
fn bill_value(code: u8) -> Option<u64> {
    Some(match code {
        0x47 => 1,
        0x48 => 5,
        0x49 => 10,
        0x4A => 20,
        0x4B => 50,
        0x4C => 100,
        0x4D => 2,
        0x4E => 500,
        0x50 => 200,
        _ => return None,
    })
}

/// Exceptions that announce that the meters were cleared or may have been: a RAM clear (3A),
/// soft meters reset (7A), and the memory errors without recovery (32–35). After one of these a
/// meter that went down is a reset, never a rollover. 31 (recovered from EEPROM) does not count.
pub(super) fn announces_meter_reset(exception: Exception) -> bool {
    matches!(exception.code(), 0x32..=0x35 | 0x3A | 0x7A)
        && !matches!(exception, Exception::Unknown(_))
}

/// `SlotDoorOpened` → `slot_door_opened`: the canonical name of a significant event.
pub(super) fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_exception_maps_to_a_known_kind() {
        for &exception in Exception::ALL {
            let mapping = map(exception);
            assert_ne!(mapping, Mapping::Unknown, "{exception:?} has no canonical kind");
            assert_eq!(mapping == Mapping::Idle, exception.is_idle(), "{exception:?}");
        }
    }

    #[test]
    fn unnamed_codes_are_unknown_never_idle() {
        assert_eq!(map(Exception::from_code(0x26)), Mapping::Unknown);
        assert_eq!(map(Exception::from_code(0xFE)), Mapping::Unknown);
    }

    #[test]
    fn the_headline_codes_map_as_the_requirements_say() {
        assert_eq!(map(Exception::SlotDoorOpened), Mapping::Significant(Category::Door));
        assert_eq!(map(Exception::AcPowerLost), Mapping::Significant(Category::Power));
        assert_eq!(map(Exception::MemoryErrorReset), Mapping::Significant(Category::MemoryError));
        assert_eq!(map(Exception::SoftMetersReset), Mapping::Significant(Category::MeterReset));
        assert_eq!(map(Exception::ExceptionBufferOverflow), Mapping::EventGap);
        assert_eq!(map(Exception::Bill20Accepted), Mapping::BillIn(Some(20)));
        assert_eq!(map(Exception::Bill2Accepted), Mapping::BillIn(Some(2)));
        assert_eq!(map(Exception::BillAccepted), Mapping::BillIn(None));
        assert!(announces_meter_reset(Exception::MemoryErrorReset));
        assert!(!announces_meter_reset(Exception::CmosRamErrorRecovered));
    }

    #[test]
    fn significant_event_names_are_snake_case() {
        assert_eq!(snake_case("SlotDoorOpened"), "slot_door_opened");
        assert_eq!(snake_case("AcPowerApplied"), "ac_power_applied");
        assert_eq!(snake_case("Reel1Tilt"), "reel1_tilt");
    }
}
