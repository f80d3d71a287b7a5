//! Errors of the sans-IO crate. A device's NACK or busy answer is not an error here: it is a
//! [`Reply`](crate::sas::Reply) variant, so link failures and machine answers stay apart.

/// A packed-BCD field that cannot be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BcdError {
    /// A nibble above 9 at byte `index` of the field.
    #[error("invalid BCD byte {byte:#04x} at offset {index}")]
    InvalidNibble { byte: u8, index: usize },
    /// The value needs more digits than `bytes` bytes hold.
    #[error("value {value} does not fit {bytes} BCD bytes")]
    TooLarge { value: u64, bytes: usize },
    /// More than 18 digits were asked for; SAS meters never have more.
    #[error("a BCD field of {bytes} bytes is wider than 9")]
    TooWide { bytes: usize },
}

/// Why bytes could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The CRC over the frame does not match.
    #[error("bad CRC on a {len}-byte frame")]
    BadCrc { len: usize },
    /// A BCD field held a non-decimal nibble.
    #[error("field `{field}`: {source}")]
    Bcd { field: &'static str, source: BcdError },
    /// The frame's address byte is not the polled machine's.
    #[error("reply from address {found}, expected {expected}")]
    AddressMismatch { expected: u8, found: u8 },
    /// The reply echoes a different command than the one polled.
    #[error("reply to command {found:#04x}, expected {expected:#04x}")]
    CommandMismatch { expected: u8, found: u8 },
    /// A length byte or a length implied by the content is impossible for this message.
    #[error("bad length {len} for command {command:#04x}")]
    BadLength { command: u8, len: usize },
    /// A field holds a value the message does not allow.
    #[error("field `{field}` holds invalid value {value:#x}")]
    InvalidField { field: &'static str, value: u64 },
    /// The line went quiet in the middle of a frame.
    #[error("frame truncated after {received} of {expected} bytes")]
    Truncated { received: usize, expected: usize },
    /// More garbage than the resync budget allows was skipped without finding a frame.
    #[error("lost sync: skipped {skipped} bytes without a valid frame")]
    LostSync { skipped: usize },
    /// A command this crate has no layout for.
    #[error("unknown command {command:#04x}")]
    UnknownCommand { command: u8 },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A numeric field does not fit its BCD width.
    #[error("field `{field}`: {source}")]
    Bcd { field: &'static str, source: BcdError },
    /// A list or text field is longer than the message allows.
    #[error("field `{field}` has {len} entries, at most {max} allowed")]
    TooLong { field: &'static str, len: usize, max: usize },
    /// A field holds a value the message does not allow.
    #[error("field `{field}` holds invalid value {value:#x}")]
    InvalidField { field: &'static str, value: u64 },
}

/// Helper for the many `bcd::decode` calls that name their field.
pub(crate) fn bcd_field(field: &'static str) -> impl Fn(BcdError) -> DecodeError {
    move |source| DecodeError::Bcd { field, source }
}

/// Helper for the many `bcd::encode` calls that name their field.
pub(crate) fn bcd_encode_field(field: &'static str) -> impl Fn(BcdError) -> EncodeError {
    move |source| EncodeError::Bcd { field, source }
}
