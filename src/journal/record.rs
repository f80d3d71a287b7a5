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

/// A record as a sealed (compressed) segment stores it: without what can be recomputed. The
/// block it is in stores the first record's `prev_hash`; every later one is its predecessor's
/// `record_hash`, and `body_hash` is `SHA-256(postcard(body))` unless stored (module doc of
/// the journal, Files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedV1 {
    pub seq: u64,
    pub appended_at_ms: i64,
    pub class: Class,
    pub machine: String,
    pub machine_seq: Option<u64>,
    pub body: SealedBody,
}

/// A sealed record's body: recomputable (the usual case), or stored with its hash as found
/// (a compacted record from the sled layout, or a body that no longer matches its hash, kept
/// as evidence exactly as it was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SealedBody {
    Hashed(Body),
    Stored { body_hash: Hash, body: Option<Body> },
}

/// What a sealed block stores per record; versioned like [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SealedEnvelope {
    V1(SealedV1),
}

/// [`SealedEnvelope`] as [`Entry::decode_sealed`] reads it: the same bytes, with the machine
/// id borrowed instead of allocated (an entry does not carry it). A forwarder decodes every
/// record it replays, so one allocation less per record counts (issue 14's replay read).
#[derive(Deserialize)]
enum SealedEntryEnvelope<'a> {
    #[serde(borrow)]
    V1(SealedEntryV1<'a>),
}

#[derive(Deserialize)]
struct SealedEntryV1<'a> {
    seq: u64,
    appended_at_ms: i64,
    class: Class,
    #[serde(borrow, with = "serde_bytes")]
    _machine: &'a [u8],
    _machine_seq: Option<u64>,
    body: SealedBody,
}

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

    /// The sealed form: the same record without `prev_hash` and, when it can be recomputed,
    /// without `body_hash`.
    pub fn encode_sealed(&self) -> Vec<u8> {
        let body = match &self.body {
            Some(body) if body_hash(body) == self.header.body_hash => {
                SealedBody::Hashed(body.clone())
            }
            body => SealedBody::Stored { body_hash: self.header.body_hash, body: body.clone() },
        };
        let sealed = SealedV1 {
            seq: self.header.seq,
            appended_at_ms: self.header.appended_at_ms,
            class: self.header.class,
            machine: self.header.machine.clone(),
            machine_seq: self.header.machine_seq,
            body,
        };
        postcard::to_stdvec(&SealedEnvelope::V1(sealed)).unwrap_or_default()
    }

    /// Decodes a sealed record whose predecessor's `record_hash` (or the block's anchor) is
    /// `prev_hash`; leftover bytes are an error.
    pub fn decode_sealed(bytes: &[u8], prev_hash: Hash) -> Result<Self, FormatError> {
        let (envelope, rest) = postcard::take_from_bytes::<SealedEnvelope>(bytes)?;
        if !rest.is_empty() {
            return Err(FormatError::Trailing(rest.len()));
        }
        let SealedEnvelope::V1(sealed) = envelope;
        let (body_hash, body) = match sealed.body {
            SealedBody::Hashed(body) => (body_hash(&body), Some(body)),
            SealedBody::Stored { body_hash, body } => (body_hash, body),
        };
        let header = Header {
            seq: sealed.seq,
            appended_at_ms: sealed.appended_at_ms,
            class: sealed.class,
            machine: sealed.machine,
            machine_seq: sealed.machine_seq,
            body_hash,
        };
        Ok(Self { header, prev_hash, body })
    }

    /// This record's link in the chain: `SHA-256("slotgate-journal-v1" ‖ prev_hash ‖ header)`.
    pub fn record_hash(&self) -> Hash {
        chain_hash(&self.prev_hash, &self.header)
    }
}

/// A record as read for sending: what a forwarder sends, without the chain. Read from a sealed
/// segment its hashes are never recomputed (two SHA-256 per record), so nothing here has been
/// checked against the chain — only against the frame's or block's CRC-32, which still guards
/// every byte sent. A distinct type, not a [`Record`] with zeroed hashes, so an unchecked
/// record cannot be taken for a checked one; verification, export and checkpoints read
/// [`Record`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// Milliseconds since the Unix epoch at append.
    pub appended_at_ms: i64,
    pub class: Class,
    /// `None` once compacted.
    pub body: Option<Body>,
}

impl From<Record> for Entry {
    fn from(record: Record) -> Self {
        let Header { seq, appended_at_ms, class, .. } = record.header;
        Self { seq, appended_at_ms, class, body: record.body }
    }
}

impl Entry {
    /// A sealed record's seq alone (the envelope's variant, then the seq: two varints), so a
    /// reader skips the records before the one it wants without decoding them.
    pub fn sealed_seq(bytes: &[u8]) -> Option<u64> {
        match postcard::take_from_bytes::<(u32, u64)>(bytes) {
            Ok(((0, seq), _)) => Some(seq),
            _ => None,
        }
    }

    /// Decodes a sealed record without recomputing its hashes; leftover bytes are an error.
    pub fn decode_sealed(bytes: &[u8]) -> Result<Self, FormatError> {
        let (envelope, rest) = postcard::take_from_bytes::<SealedEntryEnvelope<'_>>(bytes)?;
        if !rest.is_empty() {
            return Err(FormatError::Trailing(rest.len()));
        }
        let SealedEntryEnvelope::V1(sealed) = envelope;
        let body = match sealed.body {
            SealedBody::Hashed(body) => Some(body),
            SealedBody::Stored { body, .. } => body,
        };
        Ok(Self {
            seq: sealed.seq,
            appended_at_ms: sealed.appended_at_ms,
            class: sealed.class,
            body,
        })
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

    /// Golden bytes of the sealed form, and what it leaves out: both hashes (64 bytes).
    #[test]
    fn the_sealed_v1_layout_is_fixed_and_recomputes_both_hashes() {
        let record = sample();
        let bytes = record.encode_sealed();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // V1, seq 7, time, Financial, "UA-1", Some(3), Hashed, Event, {"k":1}, 01 FF 7E.
        assert_eq!(hex, "000780a0abfef962000455412d3101030000077b226b223a317d0301ff7e");
        assert_eq!(bytes.len() + 64, record.encode().len());
        assert_eq!(Record::decode_sealed(&bytes, GENESIS).unwrap(), record);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(Record::decode_sealed(&trailing, GENESIS), Err(FormatError::Trailing(1))));
    }

    /// A body that no longer matches its hash, or none at all, is sealed with its hash as
    /// found: sealing never launders evidence.
    #[test]
    fn a_mismatched_or_missing_body_keeps_its_stored_hash() {
        let mut edited = sample();
        edited.body =
            Some(Body::Alarm { alarm: "x".into(), level: "y".into(), message: "z".into() });
        let prev = [9; 32];
        edited.prev_hash = prev;
        assert_eq!(Record::decode_sealed(&edited.encode_sealed(), prev).unwrap(), edited);
        let mut compacted = sample();
        compacted.body = None;
        assert_eq!(Record::decode_sealed(&compacted.encode_sealed(), GENESIS).unwrap(), compacted);
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
