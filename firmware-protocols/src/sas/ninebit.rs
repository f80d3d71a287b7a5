//! 9-bit characters over a byte stream: every character travels as two bytes, a flag byte whose
//! bit 0 is the wakeup bit (all other bits zero) followed by the data byte. This is how 9-bit
//! capable device servers tunnel SAS over TCP (sas-protocol.md §1.5), and both slotgate's TCP
//! transport and the simulator speak it. The format is documented in `firmware-protocols/README.md`.

use super::Character;

/// Appends a host message: wakeup on the first byte only, as SAS requires of the host.
pub fn encode_message(bytes: &[u8], out: &mut Vec<u8>) {
    for (i, &byte) in bytes.iter().enumerate() {
        encode_character(Character { byte, wakeup: i == 0 }, out);
    }
}

/// Appends bytes with the wakeup bit clear on all of them: how a machine replies.
pub fn encode_reply(bytes: &[u8], out: &mut Vec<u8>) {
    for &byte in bytes {
        encode_character(Character { byte, wakeup: false }, out);
    }
}

/// Appends one character.
pub fn encode_character(c: Character, out: &mut Vec<u8>) {
    out.extend_from_slice(&[u8::from(c.wakeup), c.byte]);
}

/// A flag byte with bits other than bit 0 set: the stream is not 9-bit framed, or it lost
/// alignment. TCP does not lose bytes, so this means a misconfigured peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid 9-bit flag byte {0:#04x}")]
pub struct InvalidFlag(pub u8);

/// Turns a byte stream back into characters.
#[derive(Debug, Default)]
pub struct Decoder {
    flag: Option<bool>,
}

impl Decoder {
    /// Feeds one byte; returns a character once its data byte has arrived.
    pub fn push(&mut self, byte: u8) -> Result<Option<Character>, InvalidFlag> {
        match self.flag.take() {
            Some(wakeup) => Ok(Some(Character { byte, wakeup })),
            None if byte & !1 == 0 => {
                self.flag = Some(byte == 1);
                Ok(None)
            }
            None => Err(InvalidFlag(byte)),
        }
    }

    /// Decodes a chunk, appending characters to `out`.
    pub fn decode(&mut self, bytes: &[u8], out: &mut Vec<Character>) -> Result<(), InvalidFlag> {
        for &b in bytes {
            if let Some(c) = self.push(b)? {
                out.push(c);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_poll_carries_the_wakeup_on_its_address_byte_only() {
        let mut out = Vec::new();
        encode_message(&[0x01, 0x01, 0x51, 0x08], &mut out);
        assert_eq!(out, [1, 0x01, 0, 0x01, 0, 0x51, 0, 0x08]);
    }

    #[test]
    fn decoding_restores_characters_across_chunk_boundaries() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.decode(&[1, 0x81, 0], &mut out).unwrap();
        d.decode(&[0x11], &mut out).unwrap();
        assert_eq!(
            out,
            [Character { byte: 0x81, wakeup: true }, Character { byte: 0x11, wakeup: false }]
        );
    }

    #[test]
    fn a_flag_byte_with_other_bits_is_refused() {
        assert_eq!(Decoder::default().push(0x02), Err(InvalidFlag(0x02)));
    }
}
