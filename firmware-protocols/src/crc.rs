//! CRC-16/KERMIT exactly as SAS places it on the wire (sas-protocol.md §2.4, §3).
//!
//! The CRC covers the whole message including the address byte and is appended low byte first. A
//! message followed by its own CRC has a residue of zero, which is how [`has_valid_crc`] checks it.

const KERMIT: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_KERMIT);

/// CRC-16/KERMIT (reflected 0x1021, init 0, no final xor) of `bytes`.
pub fn crc16(bytes: &[u8]) -> u16 {
    KERMIT.checksum(bytes)
}

/// Appends the CRC of everything already in `frame`, low byte first.
pub fn append_crc(frame: &mut Vec<u8>) {
    let crc = crc16(frame);
    frame.extend_from_slice(&crc.to_le_bytes());
}

/// True when the last two bytes of `frame` are the CRC of the bytes before them.
pub fn has_valid_crc(frame: &[u8]) -> bool {
    frame.len() >= 3 && crc16(frame) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the hex notation of sas-protocol.md (`01 01 51 08`).
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("test vector is hex"))
            .collect()
    }

    #[test]
    fn check_value_matches_the_catalogue() {
        assert_eq!(crc16(b"123456789"), 0x2189);
    }

    /// Every vector of sas-protocol.md §3.2 and §3.3: the CRC of all but the last two bytes must
    /// equal those two bytes, low byte first, and the residue over the whole frame must be zero.
    #[test]
    fn every_vector_of_the_reference_has_a_valid_crc() {
        const VECTORS: &[&str] = &[
            // §3.2, found verbatim in public code
            "01 01 51 08",
            "01 02 CA 3A",
            "01 71 01 FF 1F D0",
            "01 72 02 FF 00 0F 22",
            "01 94 75 CB",
            "01 1A 00 01 00 00 1F A6",
            // §3.3, computed golden vectors
            "01 0E 01 45 D1",
            "01 0E 00 CC C0",
            "01 21 00 00 5C 45",
            "01 09 00 01 00 FF EB",
            "00 01 89 11",
            "01 7F 03 15 20 24 13 45 30 ED 74",
            "00 7F 03 15 20 24 13 45 30 10 39",
            "01 7E 03 15 20 24 13 45 30 52 F5",
            "01 08 FF FF FF 00 01 7F 59",
            "01 2F 06 98 76 0C 05 1B 0D 06 5E",
            "01 2F 17 98 76 0C 00 00 12 34 05 00 00 56 78 1B 00 00 90 12 0D 00 00 00 67 89 D2 53",
            "01 6F 06 00 00 00 00 05 00 3B 09",
            "01 6F 11 00 00 00 00 05 00 00 12 34 56 05 00 04 00 00 07 89 DE 8F",
            "01 1C 00 12 34 56 00 10 00 00 00 05 00 00 00 00 00 00 00 00 07 89 00 00 03 21 00 00 00 12 00 00 00 03 E1 56",
            "01 0F 00 00 20 00 00 12 34 56 00 10 00 00 00 05 00 00 00 00 00 00 00 00 07 89 0F 7D",
            "01 1F 41 54 31 32 33 01 C9 12 00 00 31 32 33 34 35 36 39 30 35 30 40 96",
            "01 54 09 36 30 32 41 42 43 31 32 33 D7 3A",
            "01 FF 7E 00 25 00 12 34 81 41 00 44 46",
            "01 FF 7F 00 00 00 40 F4 5F",
            "01 FF 8C 00 03 42 55",
            "01 FF 4F 37 02 00 00 00 17 91 C8",
        ];
        for v in VECTORS {
            let frame = hex(v);
            let (body, crc) = frame.split_at(frame.len() - 2);
            let mut rebuilt = body.to_vec();
            append_crc(&mut rebuilt);
            assert_eq!(rebuilt, frame, "CRC of {v}");
            assert!(has_valid_crc(&frame), "residue of {v}");
            assert_eq!(crc16(body).to_le_bytes(), [crc[0], crc[1]]);
        }
    }

    #[test]
    fn a_flipped_crc_byte_is_rejected() {
        // MON's test uses `52 08` as the wrong-CRC twin of the LP01 shutdown poll.
        assert!(!has_valid_crc(&hex("01 01 52 08")));
        assert!(!has_valid_crc(&[0x01, 0x01]));
    }
}
