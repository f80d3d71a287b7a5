//! Packed BCD as SAS sends meters, amounts and dates: two digits a byte, most significant first
//! (sas-protocol.md §2.3, §7.1). Non-decimal nibbles are rejected, never guessed.

use crate::error::BcdError;

/// Largest width accepted: 9 bytes = 18 digits (LP6F/AF meters), which still fits a `u64`.
pub const MAX_BYTES: usize = 9;

/// Decodes packed BCD, most significant byte first.
pub fn decode(bytes: &[u8]) -> Result<u64, BcdError> {
    if bytes.len() > MAX_BYTES {
        return Err(BcdError::TooWide { bytes: bytes.len() });
    }
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate() {
        let (hi, lo) = (byte >> 4, byte & 0x0F);
        if hi > 9 || lo > 9 {
            return Err(BcdError::InvalidNibble { byte, index });
        }
        value = value * 100 + u64::from(hi) * 10 + u64::from(lo);
    }
    Ok(value)
}

/// Encodes `value` into exactly `out.len()` bytes of packed BCD.
pub fn encode_into(value: u64, out: &mut [u8]) -> Result<(), BcdError> {
    if out.len() > MAX_BYTES {
        return Err(BcdError::TooWide { bytes: out.len() });
    }
    let mut rest = value;
    for slot in out.iter_mut().rev() {
        let pair = rest % 100;
        rest /= 100;
        // `pair` < 100, so both digits fit a nibble.
        *slot = (((pair / 10) << 4) | (pair % 10)) as u8;
    }
    if rest != 0 {
        return Err(BcdError::TooLarge { value, bytes: out.len() });
    }
    Ok(())
}

/// Encodes `value` as `width` bytes of packed BCD, appended to `out`.
pub fn encode(value: u64, width: usize, out: &mut Vec<u8>) -> Result<(), BcdError> {
    let mut buf = [0; MAX_BYTES];
    let field = buf.get_mut(..width).ok_or(BcdError::TooWide { bytes: width })?;
    encode_into(value, field)?;
    out.extend_from_slice(field);
    Ok(())
}

/// The largest value `bytes` BCD bytes can hold, plus one: where a meter of that width rolls over.
pub fn modulus(bytes: usize) -> u64 {
    10u64.pow(2 * bytes.min(MAX_BYTES) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_the_lp1a_credit_value() {
        // `01 1A 00 01 00 00 1F A6`: 10 000 credits.
        assert_eq!(decode(&[0x00, 0x01, 0x00, 0x00]), Ok(10_000));
    }

    #[test]
    fn rejects_a_hex_nibble_and_says_where() {
        assert_eq!(decode(&[0x00, 0x1A]), Err(BcdError::InvalidNibble { byte: 0x1A, index: 1 }));
        assert_eq!(decode(&[0xF0]), Err(BcdError::InvalidNibble { byte: 0xF0, index: 0 }));
    }

    #[test]
    fn refuses_values_that_do_not_fit_the_width() {
        let mut out = Vec::new();
        assert_eq!(
            encode(100_000_000, 4, &mut out),
            Err(BcdError::TooLarge { value: 100_000_000, bytes: 4 })
        );
        assert!(out.is_empty(), "a failed encode leaves the buffer as it was");
        assert_eq!(decode(&[0; 10]), Err(BcdError::TooWide { bytes: 10 }));
    }

    #[test]
    fn rollover_modulus_of_a_four_byte_meter_is_ten_to_the_eighth() {
        assert_eq!(modulus(4), 100_000_000);
        assert_eq!(modulus(5), 10_000_000_000);
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(width in 1usize..=MAX_BYTES, raw in any::<u64>()) {
            let value = raw % modulus(width);
            let mut out = Vec::new();
            encode(value, width, &mut out).unwrap();
            prop_assert_eq!(out.len(), width);
            prop_assert_eq!(decode(&out), Ok(value));
        }
    }
}
