//! The in-flight record of one line: a tiny file holding the last message the gateway put on
//! the line and whether the events its answer produced are durable, so that a process started
//! after a crash can resume that exchange ([`HostSession::resume`]) instead of acknowledging a
//! report it never stored.
//!
//! # Why
//!
//! SAS acknowledges implicitly: the next different message on a line ACKs the previous reply
//! (sas-protocol.md §4.2), and a new session starts with the `80` sync poll, which ACKs
//! everything. A process killed between reading a reply that carried an event and making that
//! event durable would have its successor ACK the event away. With this record the successor
//! repeats the last message instead (an implied NACK), the machine sends its reply again, and the
//! event is stored before anything acknowledges it.
//!
//! # Life of a record
//!
//! - [`State::Sent`] is written before a message goes on the wire, with its exact bytes, its
//!   address and whether RTE was on for that machine. Retries of the same message rewrite
//!   nothing.
//! - [`State::Confirmed`] is written right after the events of the exchange were made durable and
//!   the sessions confirmed them. On start-up a `Confirmed` record means "start normally": the
//!   `80` then acknowledges only what is already stored.
//! - The record also holds the machine's next per-machine sequence number at send time. A process
//!   that dies after the journal flush but before the `Confirmed` write leaves `Sent`, but the
//!   journal's next number for that machine is then past the recorded one: the answer's events
//!   are stored, and the successor starts normally instead of storing them twice. (The daemon
//!   crash test found that window: one duplicate in a few hundred kills.)
//!
//! # Durability
//!
//! A `Sent` record is made durable (`fdatasync`) before its message goes on the wire: after a
//! power cut the successor must still know the message, or its `80` acknowledges a report that
//! never reached the journal. Writes that change nothing are skipped, and the sync poll and
//! broadcasts (address 0) are not recorded at all (the line task's `record_sent`): they leave
//! nothing unacknowledged, and a record of the poll before them, resumed, is a stale resume the
//! machine takes as a new poll. So a machine polled `80 81 80 81` costs no write; a long poll,
//! or the first poll after an exchange that carried events, costs one `fdatasync`. `Confirmed`
//! is written but not synced: losing it costs nothing, since the journal's per-machine number,
//! already durable, tells the successor that the answer was stored.
//!
//! # Follow-ups owed
//!
//! The record also carries the follow-up polls the line's sessions owe their machines
//! ([`HostSession::owed_follow_ups`]): LP1B after a handpay's 51, LP48 after a bill, and so on.
//! The machine forgets the exception once it is acknowledged, and the acknowledgement is the
//! next message on the line, so the list is made durable before that message goes out: with the
//! message's own `Sent` record, or, before a sync poll or broadcast (which are otherwise not
//! recorded), by rewriting the record with the new list ([`InflightFile::owing`]). A restarted
//! line hands the list back to its sessions ([`HostSession::restore_follow_ups`]), which read
//! the follow-ups first or report them lost. The kill loop that found this lost the amount of
//! 213 of 628 handpays.
//!
//! # Format
//!
//! One fixed-size record of [`RECORD_LEN`] bytes at offset 0, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `SGIF` |
//! | 4 | 1 | version, 3 |
//! | 5 | 1 | state: 1 sent, 2 confirmed |
//! | 6 | 1 | address (0 for the sync poll or a broadcast) |
//! | 7 | 1 | flags: bit 0 RTE on |
//! | 8 | 2 | message length, 1 to [`MAX_MESSAGE`] |
//! | 10 | 256 | message bytes, zero padded |
//! | 266 | 8 | the machine's next per-machine sequence number when the message was sent |
//! | 274 | 1 | follow-ups owed, 0 to [`MAX_OWED`] |
//! | 275 | 3 × [`MAX_OWED`] | each: machine address, long-poll command, exception code; zero padded |
//! | 467 | 4 | CRC-32 (IEEE) of bytes 0 to 466 |
//!
//! Anything else (a short or torn file, a wrong magic, version or CRC, a field out of range)
//! reads as "nothing known", and the line starts normally. (A version 2 record, left by a
//! release before follow-ups were kept, also reads as nothing known: upgrades follow a clean
//! stop, which leaves nothing unacknowledged.)
//!
//! [`HostSession::resume`]: firmware_protocols::sas::session::HostSession::resume
//! [`HostSession::owed_follow_ups`]: firmware_protocols::sas::session::HostSession::owed_follow_ups
//! [`HostSession::restore_follow_ups`]: firmware_protocols::sas::session::HostSession::restore_follow_ups

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Size of the record on disk.
pub const RECORD_LEN: usize = 471;
/// Longest message a record holds; every message slotgate sends is far shorter.
pub const MAX_MESSAGE: usize = 256;
/// Most follow-ups a record holds for its line: eight machines with a resync and a handpay each.
pub const MAX_OWED: usize = 64;

const MAGIC: [u8; 4] = *b"SGIF";
const VERSION: u8 = 3;
const BYTES_AT: usize = 10;
const SEQ_AT: usize = BYTES_AT + MAX_MESSAGE;
const OWED_AT: usize = SEQ_AT + 8;
const CRC_AT: usize = OWED_AT + 1 + 3 * MAX_OWED;

/// A follow-up poll a session owes its machine (module doc, Follow-ups owed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    pub address: u8,
    /// The long poll's command; every follow-up poll is one without data.
    pub command: u8,
    /// The exception it follows up.
    pub exception: u8,
}

/// Where the last exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The message went (or was about to go) on the wire; its answer may not be durable.
    Sent,
    /// The events of the exchange are durable and confirmed.
    Confirmed,
}

/// The last message on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub state: State,
    /// The address the message was for; 0 for the sync poll or a broadcast.
    pub address: u8,
    /// Whether RTE was on for that machine, which decides how its answer is framed.
    pub rte_on: bool,
    /// The exact wire bytes, 1 to [`MAX_MESSAGE`] of them.
    pub bytes: Vec<u8>,
    /// The addressed machine's next per-machine sequence number when the message was sent.
    pub next_machine_seq: u64,
    /// Follow-ups the line's sessions owe, at most [`MAX_OWED`].
    pub owed: Vec<Owed>,
}

impl Record {
    /// The on-disk form, or `None` for a message that does not fit.
    pub fn encode(&self) -> Option<[u8; RECORD_LEN]> {
        if self.bytes.is_empty() || self.bytes.len() > MAX_MESSAGE || self.owed.len() > MAX_OWED {
            return None;
        }
        let len = u16::try_from(self.bytes.len()).ok()?;
        let mut out = [0u8; RECORD_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = match self.state {
            State::Sent => 1,
            State::Confirmed => 2,
        };
        out[6] = self.address;
        out[7] = u8::from(self.rte_on);
        out[8..10].copy_from_slice(&len.to_le_bytes());
        out[BYTES_AT..BYTES_AT + self.bytes.len()].copy_from_slice(&self.bytes);
        out[SEQ_AT..OWED_AT].copy_from_slice(&self.next_machine_seq.to_le_bytes());
        out[OWED_AT] = u8::try_from(self.owed.len()).ok()?;
        for (slot, owed) in out[OWED_AT + 1..CRC_AT].chunks_exact_mut(3).zip(&self.owed) {
            slot.copy_from_slice(&[owed.address, owed.command, owed.exception]);
        }
        let crc = crc32fast::hash(&out[..CRC_AT]);
        out[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        Some(out)
    }

    /// Reads a record; `None` for anything but a complete, valid one.
    pub fn decode(data: &[u8]) -> Option<Self> {
        let data: &[u8; RECORD_LEN] = data.try_into().ok()?;
        let (body, crc) = data.split_at(CRC_AT);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        if body.get(..4)? != MAGIC || body[4] != VERSION {
            return None;
        }
        let state = match body[5] {
            1 => State::Sent,
            2 => State::Confirmed,
            _ => return None,
        };
        let rte_on = match body[7] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let len = usize::from(u16::from_le_bytes([body[8], body[9]]));
        if !(1..=MAX_MESSAGE).contains(&len) || body[6] > 0x7F {
            return None;
        }
        let bytes = body.get(BYTES_AT..BYTES_AT + len)?.to_vec();
        let next_machine_seq = u64::from_le_bytes(body.get(SEQ_AT..OWED_AT)?.try_into().ok()?);
        let count = usize::from(*body.get(OWED_AT)?);
        if count > MAX_OWED {
            return None;
        }
        let owed = body
            .get(OWED_AT + 1..CRC_AT)?
            .chunks_exact(3)
            .take(count)
            .map(|e| match *e {
                [address, command, exception] if address <= 0x7F => {
                    Some(Owed { address, command, exception })
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { state, address: body[6], rte_on, bytes, next_machine_seq, owed })
    }
}

/// The file name for a line's record: the line name where it is safe in a path, else the safe
/// part and a hash of the name, so that two names never share a file.
pub fn file_name(line: &str) -> String {
    let safe: String = line
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if safe == line {
        format!("{safe}.inflight")
    } else {
        format!("{safe}-{:08x}.inflight", crc32fast::hash(line.as_bytes()))
    }
}

/// A line's record file, open for the life of the line task.
#[derive(Debug)]
pub struct InflightFile {
    file: File,
    path: PathBuf,
    /// What the file holds, as far as this process wrote or read it.
    current: Option<Record>,
}

impl InflightFile {
    /// Opens (creating it and its directory if need be) the file at `path`, and returns it with
    /// the record a previous process left there, if a valid one.
    pub fn open(path: &Path) -> io::Result<(Self, Option<Record>)> {
        if let Some(dir) = path.parent() {
            crate::durable::create_dir_all(dir)?;
        }
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            crate::durable::sync_dir(dir)?;
        }
        let mut data = vec![0u8; RECORD_LEN + 1];
        let mut read = 0;
        // One extra byte: a longer file is not a record either.
        while read < data.len() {
            match file.read_at(&mut data[read..], read as u64)? {
                0 => break,
                n => read += n,
            }
        }
        let previous = Record::decode(&data[..read]);
        let inflight = Self { file, path: path.to_path_buf(), current: previous.clone() };
        Ok((inflight, previous))
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that `bytes` for `address` are about to go on the wire. A retry of the message
    /// already recorded as sent writes nothing.
    pub fn sent(
        &mut self,
        address: u8,
        bytes: &[u8],
        rte_on: bool,
        next_machine_seq: u64,
        owed: Vec<Owed>,
    ) -> io::Result<()> {
        let bytes = bytes.to_vec();
        let record = Record { state: State::Sent, address, rte_on, bytes, next_machine_seq, owed };
        if self.current.as_ref() == Some(&record) {
            return Ok(());
        }
        self.write_durably(record)
    }

    /// Makes `owed` durable before a message that is not recorded (the sync poll, a broadcast)
    /// goes out: the record keeps its message and takes the new list. Nothing is written when
    /// the list did not change.
    pub fn owing(&mut self, owed: Vec<Owed>) -> io::Result<()> {
        let record = match self.current.clone() {
            Some(current) if current.owed == owed => return Ok(()),
            Some(current) => Record { owed, ..current },
            None if owed.is_empty() => return Ok(()),
            // Known to be for no machine: a successor restores the list and starts normally.
            None => Record {
                state: State::Confirmed,
                address: 0,
                rte_on: false,
                bytes: vec![0x80],
                next_machine_seq: 0,
                owed,
            },
        };
        self.write_durably(record)
    }

    /// Records that the events of the exchange recorded as sent are durable and confirmed.
    pub fn confirmed(&mut self) -> io::Result<()> {
        let Some(record) = self.current.as_ref().filter(|r| r.state == State::Sent) else {
            return Ok(());
        };
        let record = Record { state: State::Confirmed, ..record.clone() };
        self.write(record)
    }

    /// Writes `record` and makes it durable.
    fn write_durably(&mut self, record: Record) -> io::Result<()> {
        self.write(record)?;
        self.file.sync_data().inspect_err(|_| self.current = None)
    }

    fn write(&mut self, record: Record) -> io::Result<()> {
        // What the file holds is unknown until the write succeeds; a failed write leaves
        // `current` empty so that the next call writes again.
        self.current = None;
        match record.encode() {
            Some(data) => {
                self.file.write_all_at(&data, 0)?;
                self.current = Some(record);
            }
            // Nothing slotgate sends is this long; should it ever be, the stale record must go,
            // or a successor would resume a message that is no longer the last one.
            None => self.file.write_all_at(&[0u8; RECORD_LEN], 0)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent() -> Record {
        Record {
            state: State::Sent,
            address: 3,
            rte_on: true,
            bytes: vec![0x03, 0x1C],
            next_machine_seq: 41,
            owed: vec![Owed { address: 3, command: 0x1B, exception: 0x51 }],
        }
    }

    #[test]
    fn a_record_round_trips() {
        for record in [
            sent(),
            Record {
                state: State::Confirmed,
                address: 0,
                rte_on: false,
                bytes: vec![0x80],
                next_machine_seq: 0,
                owed: Vec::new(),
            },
            Record {
                state: State::Sent,
                address: 127,
                rte_on: false,
                bytes: vec![0xAB; 256],
                next_machine_seq: u64::MAX,
                owed: vec![Owed { address: 127, command: 0x1C, exception: 0x3C }; MAX_OWED],
            },
        ] {
            let data = record.encode().expect("fits");
            assert_eq!(Record::decode(&data), Some(record));
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let data = sent().encode().expect("fits");
        assert_eq!(&data[..10], b"SGIF\x03\x01\x03\x01\x02\x00");
        assert_eq!(&data[10..12], [0x03, 0x1C]);
        assert!(data[12..266].iter().all(|&b| b == 0));
        assert_eq!(data[266..274], 41u64.to_le_bytes());
        assert_eq!(data[274..278], [1, 0x03, 0x1B, 0x51]);
        assert!(data[278..467].iter().all(|&b| b == 0));
        assert_eq!(data[467..], crc32fast::hash(&data[..467]).to_le_bytes());
    }

    #[test]
    fn messages_that_do_not_fit_are_not_encoded() {
        let mut record = sent();
        record.bytes.clear();
        assert_eq!(record.encode(), None);
        record.bytes = vec![0; MAX_MESSAGE + 1];
        assert_eq!(record.encode(), None);
    }

    #[test]
    fn torn_short_long_or_garbage_data_reads_as_nothing() {
        let data = sent().encode().expect("fits");
        assert_eq!(Record::decode(&[]), None);
        assert_eq!(Record::decode(&data[..RECORD_LEN - 1]), None, "short");
        let mut long = data.to_vec();
        long.push(0);
        assert_eq!(Record::decode(&long), None, "long");
        // A torn write: the first half new, the second half of an older record.
        let older = Record { bytes: vec![0x83], ..sent() }.encode().expect("fits");
        let mut torn = data;
        torn[RECORD_LEN / 2..].copy_from_slice(&older[RECORD_LEN / 2..]);
        assert_eq!(Record::decode(&torn), None, "torn");
        assert_eq!(Record::decode(&[0xFF; RECORD_LEN]), None, "garbage");
        assert_eq!(Record::decode(&[0; RECORD_LEN]), None, "zeroed");
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let data = sent().encode().expect("fits");
        for i in 0..RECORD_LEN * 8 {
            let mut bad = data;
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(Record::decode(&bad), None, "bit {i}");
        }
    }

    #[test]
    fn fields_out_of_range_are_refused_even_with_a_valid_crc() {
        let resealed = |patch: &dyn Fn(&mut [u8; RECORD_LEN])| {
            let mut data = sent().encode().expect("fits");
            patch(&mut data);
            let crc = crc32fast::hash(&data[..CRC_AT]);
            data[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
            Record::decode(&data)
        };
        assert!(resealed(&|_| {}).is_some());
        assert_eq!(resealed(&|d| d[0] = b'X'), None, "magic");
        assert_eq!(resealed(&|d| d[4] = 1), None, "version");
        assert_eq!(resealed(&|d| d[5] = 3), None, "state");
        assert_eq!(resealed(&|d| d[6] = 0x80), None, "address");
        assert_eq!(resealed(&|d| d[7] = 2), None, "flags");
        assert_eq!(resealed(&|d| d[8..10].copy_from_slice(&0u16.to_le_bytes())), None, "len 0");
        assert_eq!(resealed(&|d| d[8..10].copy_from_slice(&257u16.to_le_bytes())), None, "len");
        assert_eq!(resealed(&|d| d[OWED_AT] = 65), None, "owed count");
        assert_eq!(resealed(&|d| d[OWED_AT + 1] = 0x80), None, "owed address");
        let mut too_many = sent();
        too_many.owed = vec![too_many.owed[0]; MAX_OWED + 1];
        assert_eq!(too_many.encode(), None);
    }

    #[test]
    fn the_file_keeps_the_last_message_and_its_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("lines").join(file_name("hall 1"));
        let (mut file, previous) = InflightFile::open(&path).expect("created");
        assert_eq!(previous, None, "a new file knows nothing");
        file.sent(3, &[0x83], false, 41, Vec::new()).expect("written");
        file.sent(3, &[0x03, 0x1C], true, 41, sent().owed).expect("written");
        assert_eq!(InflightFile::open(&path).expect("opens").1, Some(sent()));
        file.confirmed().expect("written");
        let (_, read) = InflightFile::open(&path).expect("opens");
        assert_eq!(read, Some(Record { state: State::Confirmed, ..sent() }));
        // A message that cannot be recorded wipes the stale record.
        file.sent(3, &[0; MAX_MESSAGE + 1], false, 41, Vec::new()).expect("written");
        assert_eq!(InflightFile::open(&path).expect("opens").1, None);
        // The follow-ups owed change before a sync poll: the record keeps its message.
        let (mut file, _) = InflightFile::open(&path).expect("opens");
        file.sent(3, &[0x03, 0x1C], true, 41, sent().owed).expect("written");
        file.owing(Vec::new()).expect("written");
        let read = InflightFile::open(&path).expect("opens").1;
        assert_eq!(read, Some(Record { owed: Vec::new(), ..sent() }));
        std::fs::write(&path, b"torn").expect("written");
        assert_eq!(InflightFile::open(&path).expect("opens").1, None);
    }

    #[test]
    fn line_names_map_to_distinct_safe_file_names() {
        assert_eq!(file_name("hall-1_a"), "hall-1_a.inflight");
        let spaced = file_name("hall 1");
        assert!(spaced.starts_with("hall_1-") && spaced.ends_with(".inflight"), "{spaced}");
        assert_ne!(file_name("hall 1"), file_name("hall/1"));
        assert_ne!(file_name("hall_1"), file_name("hall 1"));
        assert!(!file_name("../x").contains('/'));
    }
}
