//! Money: integer minor units of an ISO 4217 currency, computed with checked arithmetic.
//!
//! SAS counts in credits of the accounting denomination (a denomination code from LP1F,
//! sas-protocol.md §7.1) or in cents, i.e. hundredths of the currency unit (LP1B, tickets). Both go
//! through hundredths: `credits × denomination` gives hundredths, which are then scaled to the
//! currency's minor unit. Every step is checked: an overflow or an amount that is not a whole
//! number of minor units is an error, never a wrapped or rounded value. There is no floating point
//! anywhere in this module.

use std::fmt;

use serde::{Deserialize, Serialize};

use firmware_protocols::sas::meter::denomination_minor_units;

/// Why an amount could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// The SAS denomination code is not in the spec's table (sas-protocol.md §7.1).
    #[error("SAS denomination code {code:#04x} is not defined")]
    UnknownDenomination { code: u8 },
    /// The product or the scaling does not fit the arithmetic (`u64` on the way, `i64` at the end).
    #[error("{quantity} × {factor} overflows the amount range")]
    Overflow { quantity: u64, factor: u64 },
    /// The amount is not a whole number of the currency's minor units (a currency with fewer than
    /// two decimals and an amount in hundredths that does not divide evenly).
    #[error("{hundredths} hundredths is not a whole number of {currency} minor units")]
    NotRepresentable { hundredths: u64, currency: CurrencyCode },
    /// A currency code that is not three ASCII capital letters.
    #[error("currency code {code:?} is not three capital letters (ISO 4217)")]
    InvalidCurrencyCode { code: String },
    /// A minor-unit exponent that no ISO 4217 currency has.
    #[error("{exponent} decimal places is not an ISO 4217 minor unit (0–4)")]
    InvalidExponent { exponent: u8 },
}

/// Most decimal places an ISO 4217 currency has (CLF and UYW have 4).
const MAX_EXPONENT: u8 = 4;

/// Three capital letters, ISO 4217 (e.g. `UAH`). Serialised as the string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CurrencyCode([u8; 3]);

impl CurrencyCode {
    /// Checks the shape only; whether the code is assigned is configuration's business.
    pub fn new(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(MoneyError::InvalidCurrencyCode { code: code.to_owned() }),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // The constructor admits ASCII capitals only, which are valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for CurrencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for CurrencyCode {
    type Error = MoneyError;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Self::new(&code)
    }
}

impl From<CurrencyCode> for String {
    fn from(code: CurrencyCode) -> Self {
        code.as_str().to_owned()
    }
}

/// A currency as the venue configures it: the ISO 4217 code and its number of decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: CurrencyCode,
    exponent: u8,
}

impl Currency {
    /// Ukrainian hryvnia, 2 decimals (kopiyky).
    pub const UAH: Self = Self { code: CurrencyCode(*b"UAH"), exponent: 2 };
    /// Euro, 2 decimals (Montenegro).
    pub const EUR: Self = Self { code: CurrencyCode(*b"EUR"), exponent: 2 };

    /// A currency with `exponent` decimal places (ISO 4217 "minor unit").
    pub fn new(code: &str, exponent: u8) -> Result<Self, MoneyError> {
        if exponent > MAX_EXPONENT {
            return Err(MoneyError::InvalidExponent { exponent });
        }
        Ok(Self { code: CurrencyCode::new(code)?, exponent })
    }

    /// The ISO 4217 code.
    pub fn code(&self) -> CurrencyCode {
        self.code
    }

    /// Decimal places of the minor unit.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

/// Hundredths of the currency unit (SAS "cents") to minor units of `currency`.
pub fn hundredths_to_minor(hundredths: u64, currency: &Currency) -> Result<i64, MoneyError> {
    let minor = if currency.exponent >= 2 {
        let factor = 10u64.pow(u32::from(currency.exponent - 2));
        hundredths
            .checked_mul(factor)
            .ok_or(MoneyError::Overflow { quantity: hundredths, factor })?
    } else {
        let divisor = 10u64.pow(u32::from(2 - currency.exponent));
        if !hundredths.is_multiple_of(divisor) {
            return Err(MoneyError::NotRepresentable { hundredths, currency: currency.code });
        }
        hundredths / divisor
    };
    i64::try_from(minor).map_err(|_| MoneyError::Overflow { quantity: minor, factor: 1 })
}

/// Whole currency units (a bill's face value) to minor units of `currency`.
pub fn major_to_minor(units: u64, currency: &Currency) -> Result<i64, MoneyError> {
    let factor = 10u64.pow(u32::from(currency.exponent));
    let minor =
        units.checked_mul(factor).ok_or(MoneyError::Overflow { quantity: units, factor })?;
    i64::try_from(minor).map_err(|_| MoneyError::Overflow { quantity: minor, factor: 1 })
}

/// `credits` of the SAS denomination `denomination_code` in minor units of `currency`:
/// `credits × denomination`, checked.
pub fn credits_to_minor(
    credits: u64,
    denomination_code: u8,
    currency: &Currency,
) -> Result<i64, MoneyError> {
    let denomination = denomination_minor_units(denomination_code)
        .ok_or(MoneyError::UnknownDenomination { code: denomination_code })?;
    let hundredths = credits
        .checked_mul(denomination)
        .ok_or(MoneyError::Overflow { quantity: credits, factor: denomination })?;
    hundredths_to_minor(hundredths, currency)
}

/// Face value in whole currency units of a SAS bill denomination code (LP48, RTE 4F). The codes
/// follow the bit order of the LP08 denomination bitmap (sas-protocol.md §8). `None` for codes
/// outside the table.
pub fn bill_value(bill_code: u8) -> Option<u64> {
    const VALUES: [u64; 24] = [
        1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1_000, 2_000, 2_500, 5_000, 10_000, 20_000,
        25_000, 50_000, 100_000, 200_000, 250_000, 500_000, 1_000_000,
    ];
    VALUES.get(usize::from(bill_code)).copied()
}

/// Whether an amount is exact, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmountStatus {
    /// The accounting denomination was not known yet (no LP1F), or its code is not in the spec's
    /// table: `credits` is the machine's figure, `minor_units` is null.
    DenominationUnknown,
    /// `minor_units` is exact.
    Exact,
    /// The amount is not a whole number of the currency's minor units.
    NotRepresentable,
    /// The amount does not fit the arithmetic; `credits` is the machine's figure.
    Overflow,
}

impl From<&MoneyError> for AmountStatus {
    /// How a failed conversion shows in an amount.
    fn from(error: &MoneyError) -> Self {
        match error {
            MoneyError::UnknownDenomination { .. } => Self::DenominationUnknown,
            MoneyError::NotRepresentable { .. } => Self::NotRepresentable,
            MoneyError::Overflow { .. }
            | MoneyError::InvalidCurrencyCode { .. }
            | MoneyError::InvalidExponent { .. } => Self::Overflow,
        }
    }
}

/// An amount of money. `minor_units` is set exactly when `status` is `exact`; what the machine
/// reported (`credits` and the `denomination_code` they were counted in) is kept either way, so an
/// amount that could not be converted is never lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    /// Integer minor units of `currency` (kopiyky for UAH); null unless `status` is `exact`.
    pub minor_units: Option<i64>,
    /// ISO 4217 code.
    pub currency: CurrencyCode,
    /// Credits as the machine counted them, when the amount came from credits.
    pub credits: Option<u64>,
    /// SAS denomination code the credits are counted in (sas-protocol.md §7.1), when known.
    pub denomination_code: Option<u8>,
    pub status: AmountStatus,
}

impl Amount {
    /// An exact amount in minor units.
    pub fn from_minor(minor_units: i64, currency: &Currency) -> Self {
        Self {
            minor_units: Some(minor_units),
            currency: currency.code,
            credits: None,
            denomination_code: None,
            status: AmountStatus::Exact,
        }
    }

    /// `credits` of `denomination_code`; a failed conversion is recorded in `status`.
    pub fn from_credits(credits: u64, denomination_code: Option<u8>, currency: &Currency) -> Self {
        let mut amount = match denomination_code {
            Some(code) => Self::from_result(credits_to_minor(credits, code, currency), currency),
            None => Self {
                minor_units: None,
                currency: currency.code,
                credits: None,
                denomination_code: None,
                status: AmountStatus::DenominationUnknown,
            },
        };
        amount.credits = Some(credits);
        amount.denomination_code = denomination_code;
        amount
    }

    /// Hundredths of the currency unit (SAS cents).
    pub fn from_hundredths(hundredths: u64, currency: &Currency) -> Self {
        Self::from_result(hundredths_to_minor(hundredths, currency), currency)
    }

    /// Whole currency units.
    pub fn from_major(units: u64, currency: &Currency) -> Self {
        Self::from_result(major_to_minor(units, currency), currency)
    }

    fn from_result(result: Result<i64, MoneyError>, currency: &Currency) -> Self {
        let (minor_units, status) = match result {
            Ok(minor) => (Some(minor), AmountStatus::Exact),
            Err(error) => (None, AmountStatus::from(&error)),
        };
        Self {
            minor_units,
            currency: currency.code,
            credits: None,
            denomination_code: None,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_times_denomination_is_exact_minor_units() {
        // 0x0B is $0.20: 25 credits are 5.00, 500 kopiyky.
        assert_eq!(credits_to_minor(25, 0x0B, &Currency::UAH), Ok(500));
        assert_eq!(credits_to_minor(123_456, 0x01, &Currency::UAH), Ok(123_456));
        assert_eq!(credits_to_minor(3, 0x16, &Currency::EUR), Ok(1_500_000));
    }

    #[test]
    fn an_overflowing_product_is_an_error_not_a_wrapped_value() {
        // An 18-digit extended meter times the largest denomination ($5000) overflows u64.
        let credits = 999_999_999_999_999_999;
        assert!(matches!(
            credits_to_minor(credits, 0x16, &Currency::UAH),
            Err(MoneyError::Overflow { .. })
        ));
        // Fits u64 but not i64: still an error.
        assert!(matches!(
            hundredths_to_minor(u64::MAX / 2 + 1, &Currency::UAH),
            Err(MoneyError::Overflow { .. })
        ));
        let amount = Amount::from_credits(credits, Some(0x16), &Currency::UAH);
        assert_eq!(amount.status, AmountStatus::Overflow);
        assert_eq!((amount.minor_units, amount.credits), (None, Some(credits)));
    }

    #[test]
    fn an_undefined_denomination_keeps_the_credits_and_flags_the_amount() {
        let amount = Amount::from_credits(40, None, &Currency::UAH);
        assert_eq!(amount.status, AmountStatus::DenominationUnknown);
        assert_eq!((amount.minor_units, amount.credits), (None, Some(40)));
        assert_eq!(
            credits_to_minor(1, 0x1B, &Currency::UAH),
            Err(MoneyError::UnknownDenomination { code: 0x1B })
        );
    }

    #[test]
    fn hundredths_scale_to_the_currency_exponent() {
        let yen = Currency::new("JPY", 0).unwrap();
        let dinar = Currency::new("KWD", 3).unwrap();
        assert_eq!(hundredths_to_minor(1_500, &yen), Ok(15));
        assert!(matches!(
            hundredths_to_minor(1_550, &yen),
            Err(MoneyError::NotRepresentable { .. })
        ));
        assert_eq!(hundredths_to_minor(1_550, &dinar), Ok(15_500));
        assert_eq!(major_to_minor(5, &Currency::UAH), Ok(500));
    }

    #[test]
    fn currency_codes_are_three_capital_letters() {
        assert!(CurrencyCode::new("UAH").is_ok());
        assert!(CurrencyCode::new("uah").is_err());
        assert!(CurrencyCode::new("UA").is_err());
        assert!(Currency::new("EUR", 5).is_err());
        assert_eq!(serde_json::to_string(&Currency::UAH.code()).unwrap(), "\"UAH\"");
    }

    #[test]
    fn bill_codes_follow_the_lp08_bitmap_order() {
        assert_eq!(bill_value(0x00), Some(1));
        assert_eq!(bill_value(0x02), Some(5));
        assert_eq!(bill_value(0x17), Some(1_000_000));
        assert_eq!(bill_value(0x18), None);
    }
}
