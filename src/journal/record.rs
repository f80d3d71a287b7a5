//! The journal's record format: versioned postcard envelopes, and the hash chain that links
//! them. The layout is described in the journal's module doc; this file is its code.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The chain's anchor before the first record ever written.
pub const GENESIS: Hash = [0; 32];

/// How much an event matters when space runs short. Only `Snapshot` bodies may be compacted;
/// the class is part of the hashed header, so relabelling a record to make it compactable
/// breaks the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Class {
    /// Bets, wins, credits in and out, handpays, bills, tickets, meter movements.
    Financial,
    /// GLI-13 significant events: doors, power, faults, RAM clears, remote control.
    Significant,
    /// A periodic meter snapshot: its meters are also in every later snapshot.
    Snapshot,
    /// Link states, poll failures and other gateway-observed status.
    Status,
    /// A gateway alarm (capacity, disk, quarantine).
    Alarm,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Self::Financial => "financial",
            Self::Significant => "significant",
            Self::Snapshot => "snapshot",
            Self::Status => "status",
            Self::Alarm => "alarm",
        }
    }
}

/// What a record carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A canonical event as its schema's JSON bytes (the schema evolves on its own, with
    /// `schema_version` inside), and the raw SAS bytes it came from.
    ///
    /// `serde_bytes` makes postcard copy each field in one go instead of one element at a time;
    /// the bytes on disk are the same (a varint length, then the bytes), as the golden test
    /// below pins.
    Event {
        #[serde(with = "serde_bytes")]
        canonical_json: Vec<u8>,
        #[serde(with = "serde_bytes")]
        raw: Vec<u8>,
    },
    /// A gateway alarm.
    Alarm { alarm: String, level: String, message: String },
}

/// The hashed part of a record: everything but the body, which enters through `body_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub seq: u64,
    /// Milliseconds since the Unix epoch at append.
    pub appended_at_ms: i64,
    pub class: Class,
    /// Registry id of the machine; empty for gateway records.
    pub machine: String,
    /// The event's per-machine sequence number, for gateway-side duplicate suppression.
    pub machine_seq: Option<u64>,
    pub body_hash: Hash,
}

/// Version 1 of a stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordV1 {
    pub header: Header,
    /// The previous record's `record_hash` (or the chain anchor).
    pub prev_hash: Hash,
    /// `None` once compacted: header and hashes stay, so the chain still verifies.
    pub body: Option<Body>,
}

/// What is stored under a record key. Variants are never reordered or removed; a new layout is
/// a new variant and old ones are upgraded on read (field-lessons.md §B6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    V1(RecordV1),
}

/// A record as the rest of the journal sees it.
pub type Record = RecordV1;

/// Why stored bytes are not a record.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a journal record: {0}")]
    Decode(#[from] postcard::Error),
    #[error("{0} bytes left over after the record (written by a newer version?)")]
    Trailing(usize),
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs and enums into a Vec cannot fail; an empty value would be
        // caught by `decode` as a malformed record rather than go unnoticed.
        postcard::to_stdvec(&Envelope::V1(self.clone())).unwrap_or_default()
    }

    /// Decodes stored bytes; leftover bytes are an error, not silently ignored (postcard's
    /// `from_bytes` would ignore them, §B6).
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let (envelope, rest) = postcard::take_from_bytes::<Envelope>(bytes)?;
        if !rest.is_empty() {
            return Err(FormatError::Trailing(rest.len()));
        }
        match envelope {
            Envelope::V1(record) => Ok(record),
        }
    }

    /// This record's link in the chain: `SHA-256("slotgate-journal-v1" ‖ prev_hash ‖ header)`.
    pub fn record_hash(&self) -> Hash {
        chain_hash(&self.prev_hash, &self.header)
    }
}

pub fn chain_hash(prev: &Hash, header: &Header) -> Hash {
    let mut h = Sha256::new();
    h.update(b"slotgate-journal-v1");
    h.update(prev);
    h.update(postcard::to_stdvec(header).unwrap_or_default());
    h.finalize().into()
}

pub fn body_hash(body: &Body) -> Hash {
    Sha256::digest(postcard::to_stdvec(body).unwrap_or_default()).into()
}

pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let body =
            Body::Event { canonical_json: b"{\"k\":1}".to_vec(), raw: vec![0x01, 0xFF, 0x7E] };
        Record {
            header: Header {
                seq: 7,
                appended_at_ms: 1_700_000_000_000,
                class: Class::Financial,
                machine: "UA-1".into(),
                machine_seq: Some(3),
                body_hash: body_hash(&body),
            },
            prev_hash: GENESIS,
            body: Some(body),
        }
    }

    /// Golden bytes: a silent change of the stored format (a field added, reordered, a serde
    /// attribute) must break this test, not old journals.
    #[test]
    fn the_v1_envelope_layout_is_fixed() {
        let bytes = sample().encode();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&hex[..24], "000780a0abfef96200045541");
        // Some(body), Event, len 7, {"k":1}, len 3, 01 FF 7E; the same bytes before and after
        // the body fields became `serde_bytes`.
        assert_eq!(
            hex,
            "000780a0abfef962000455412d3101036db6c9476b6804ca655dd31a743a8e2c85ec77282594ce63b2c0\
             e968cefe552e000000000000000000000000000000000000000000000000000000000000000001000\
             77b226b223a317d0301ff7e"
        );
        assert_eq!(bytes.len(), 1 + 1 + 6 + 1 + 5 + 2 + 32 + 32 + 1 + 1 + 1 + 7 + 1 + 3);
        assert_eq!(Record::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn trailing_bytes_and_garbage_are_errors() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert!(matches!(Record::decode(&bytes), Err(FormatError::Trailing(1))));
        assert!(Record::decode(&[0x05, 0x01]).is_err());
        assert!(Record::decode(&[]).is_err());
    }

    #[test]
    fn the_chain_hash_covers_every_header_field() {
        let r = sample();
        let base = r.record_hash();
        let mut h = r.header.clone();
        h.seq += 1;
        assert_ne!(chain_hash(&r.prev_hash, &h), base);
        let mut h = r.header.clone();
        h.class = Class::Snapshot;
        assert_ne!(chain_hash(&r.prev_hash, &h), base);
        let mut h = r.header.clone();
        h.body_hash[0] ^= 1;
        assert_ne!(chain_hash(&r.prev_hash, &h), base);
        assert_ne!(chain_hash(&[1; 32], &r.header), base);
    }
}
