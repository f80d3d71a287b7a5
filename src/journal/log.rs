//! The record log: numbered segment files of CRC-framed records, one writer, any number of
//! readers. The formats, durability points and recovery cases are in the journal's module doc;
//! this file is their code. It knows nothing of cursors, machines or alarms: it stores records
//! in sequence order and finds them again, and says where it could not.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use super::record::Record;

/// Segment file header: magic (8 bytes) and the first seq (u64 LE).
pub const SEGMENT_MAGIC: [u8; 8] = *b"SGJLOG01";
pub const SEGMENT_HEADER: u64 = 16;
/// Frame: marker (4 bytes), payload length (u32 LE), CRC-32 of length and payload (u32 LE).
pub const FRAME_MARKER: [u8; 4] = *b"SGF1";
pub const FRAME_HEADER: usize = 12;
/// No record comes near this; a larger length is damage, not a record.
pub const MAX_FRAME: u32 = 16 << 20;
/// A reader remembers where every this-many-th record starts.
const INDEX_EVERY: u64 = 256;
const SUFFIX: &str = ".seg";

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SUFFIX}")
}

fn parse_name(name: &str) -> Option<u64> {
    name.strip_suffix(SUFFIX).filter(|s| s.len() == 20)?.parse().ok()
}

/// The segments present in `dir`, by first seq.
pub fn list_segments(dir: &Path) -> io::Result<BTreeMap<u64, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_name) {
            out.insert(first, entry.path());
        }
    }
    Ok(out)
}

/// One frame's bytes for `record`.
pub fn frame(record: &Record) -> Vec<u8> {
    let payload = record.encode();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&FRAME_MARKER);
    out.extend_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len.to_le_bytes());
    crc.update(&payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// What a scan of segment bytes found, in file order.
#[derive(Debug)]
pub enum Item {
    /// A whole, checked frame: its offset, end offset and record.
    Record { offset: u64, end: u64, record: Box<Record> },
    /// Bytes that are no frame (damage), from `offset` to `end`, followed by more frames.
    Garbage { offset: u64, end: u64 },
    /// Bytes after the last good frame that hold no frame: a torn tail.
    Torn { offset: u64 },
}

/// Decodes the frame at the start of `bytes`: the record and the frame's length.
fn frame_at(bytes: &[u8]) -> Option<(Record, usize)> {
    if bytes.get(..4)? != FRAME_MARKER {
        return None;
    }
    let len = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len > MAX_FRAME {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    let end = FRAME_HEADER.checked_add(usize::try_from(len).ok()?)?;
    let payload = bytes.get(FRAME_HEADER..end)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    if h.finalize() != crc {
        return None;
    }
    let record = Record::decode(payload).ok()?;
    Some((record, end))
}

/// Walks frames in `bytes` (which start at file offset `base`), resynchronising on the frame
/// marker after damage.
pub fn scan(bytes: &[u8], base: u64, mut f: impl FnMut(Item) -> bool) {
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = bytes.get(at..).unwrap_or_default();
        if let Some((record, len)) = frame_at(rest) {
            let offset = base + at as u64;
            if !f(Item::Record { offset, end: offset + len as u64, record: Box::new(record) }) {
                return;
            }
            at += len;
            continue;
        }
        // Damage: find the next place a whole frame starts.
        let next = (at + 1..bytes.len()).find(|&i| {
            bytes.get(i..i + 4) == Some(&FRAME_MARKER[..])
                && frame_at(bytes.get(i..).unwrap_or_default()).is_some()
        });
        match next {
            Some(i) => {
                if !f(Item::Garbage { offset: base + at as u64, end: base + i as u64 }) {
                    return;
                }
                at = i;
            }
            None => {
                f(Item::Torn { offset: base + at as u64 });
                return;
            }
        }
    }
}

/// Reads a segment's header; `None` if it is not a segment of `first_seq`.
fn check_header(file: &File, first_seq: u64) -> Option<()> {
    let mut h = [0u8; 16];
    file.read_exact_at(&mut h, 0).ok()?;
    (h[..8] == SEGMENT_MAGIC && h[8..] == first_seq.to_le_bytes()).then_some(())
}

/// Where records start, shared by the writer and the readers.
#[derive(Debug, Default)]
pub struct Index {
    /// Segments by first seq.
    segments: RwLock<BTreeMap<u64, PathBuf>>,
    /// seq → (segment first seq, offset of that seq's frame), every `INDEX_EVERY` records.
    starts: Mutex<BTreeMap<u64, (u64, u64)>>,
}

impl Index {
    pub fn set_segments(&self, segments: BTreeMap<u64, PathBuf>) {
        *self.segments.write().unwrap_or_else(PoisonError::into_inner) = segments;
        self.starts.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    pub fn segments(&self) -> BTreeMap<u64, PathBuf> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn add_segment(&self, first: u64, path: PathBuf) {
        self.segments.write().unwrap_or_else(PoisonError::into_inner).insert(first, path);
    }

    fn remove_segment(&self, first: u64, next_first: u64) {
        self.segments.write().unwrap_or_else(PoisonError::into_inner).remove(&first);
        let mut starts = self.starts.lock().unwrap_or_else(PoisonError::into_inner);
        *starts = starts.split_off(&next_first);
    }

    fn note(&self, seq: u64, segment: u64, offset: u64) {
        if seq.is_multiple_of(INDEX_EVERY) {
            self.starts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(seq, (segment, offset));
        }
    }

    /// Up to `limit` records with `from <= seq < until`, in order, and the ranges of seqs
    /// in between that could not be read (missing segment, damaged frames).
    pub fn read(&self, from: u64, until: u64, limit: usize) -> io::Result<ReadOut> {
        let mut out = ReadOut::default();
        if from >= until || limit == 0 {
            return Ok(out);
        }
        let segments = self.segments();
        let start_segment = segments.range(..=from).next_back().map(|(k, _)| *k);
        let mut expected = from;
        let walk: Vec<(u64, PathBuf)> = match start_segment {
            Some(s) => segments.range(s..).map(|(k, v)| (*k, v.clone())).collect(),
            None => segments.iter().map(|(k, v)| (*k, v.clone())).collect(),
        };
        for (i, (first, path)) in walk.iter().enumerate() {
            if *first >= until || out.records.len() >= limit {
                break;
            }
            let segment_end = walk.get(i + 1).map_or(until, |(n, _)| (*n).min(until));
            if segment_end <= expected {
                continue;
            }
            let offset = {
                let starts = self.starts.lock().unwrap_or_else(PoisonError::into_inner);
                starts
                    .range(..=expected.max(*first))
                    .next_back()
                    .filter(|(_, (seg, _))| seg == first)
                    .map_or(SEGMENT_HEADER, |(_, (_, off))| *off)
            };
            let file = match File::open(path) {
                Ok(f) => f,
                // Removed after every destination acknowledged it, meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if check_header(&file, *first).is_none() {
                continue;
            }
            self.read_segment(&file, *first, offset, &mut expected, segment_end, limit, &mut out)?;
        }
        // What lies between the last record read and the end of the readable range is not
        // reported here: it may simply not have been read yet (limit).
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn read_segment(
        &self,
        file: &File,
        first: u64,
        offset: u64,
        expected: &mut u64,
        until: u64,
        limit: usize,
        out: &mut ReadOut,
    ) -> io::Result<()> {
        let mut reader = io::BufReader::with_capacity(256 << 10, file);
        reader.seek(SeekFrom::Start(offset))?;
        let mut at = offset;
        let mut head = [0u8; FRAME_HEADER];
        loop {
            if out.records.len() >= limit {
                return Ok(());
            }
            match reader.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let mut buf = Vec::new();
            let good = head[..4] == FRAME_MARKER && len <= MAX_FRAME && {
                buf.resize(FRAME_HEADER + len as usize, 0);
                buf[..FRAME_HEADER].copy_from_slice(&head);
                reader.read_exact(&mut buf[FRAME_HEADER..]).is_ok()
            };
            let decoded = if good { frame_at(&buf) } else { None };
            let Some((record, len)) = decoded else {
                // Damage: rescan the rest of the segment, resynchronising on frames.
                let mut rest = Vec::new();
                let mut file = file;
                file.seek(SeekFrom::Start(at))?;
                file.read_to_end(&mut rest)?;
                let mut stop = false;
                scan(&rest, at, |item| {
                    if let Item::Record { offset, record, .. } = item {
                        stop = !self.take(*record, first, offset, expected, until, limit, out);
                    }
                    !stop
                });
                return Ok(());
            };
            if !self.take(record, first, at, expected, until, limit, out) {
                return Ok(());
            }
            at += len as u64;
        }
    }

    /// Adds a record read at `offset` to `out`; false once past `until`.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        record: Record,
        segment: u64,
        offset: u64,
        expected: &mut u64,
        until: u64,
        limit: usize,
        out: &mut ReadOut,
    ) -> bool {
        let seq = record.header.seq;
        self.note(seq, segment, offset);
        if seq >= until {
            return false;
        }
        if seq < *expected {
            return true;
        }
        if seq > *expected {
            out.gaps.push((*expected, seq - 1));
        }
        *expected = seq + 1;
        out.records.push(record);
        out.records.len() < limit
    }
}

/// Records read, and seq ranges (inclusive) found missing before them.
#[derive(Debug, Default)]
pub struct ReadOut {
    pub records: Vec<Record>,
    pub gaps: Vec<(u64, u64)>,
}

/// The writer's side of the log: the active segment, appends, rolls, removal.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    active: File,
    active_first: u64,
    active_len: u64,
    roll_bytes: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
}

/// What recovery found when the log was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The seq the next record gets, and the last record (to chain from), if any.
    pub next_seq: u64,
    pub last: Option<Record>,
    /// Seq ranges (inclusive) lost to damage or missing segments.
    pub gaps: Vec<(u64, u64)>,
    /// Bytes cut off the active segment's torn tail.
    pub torn_bytes: u64,
}

impl LogWriter {
    /// Opens the log in `dir` (creating it), recovering the active segment: a torn tail is cut
    /// off, damage followed by good frames is kept and reported as a gap. `first_seq` is where
    /// the log starts if it is empty. Segments below `first_seq` (removed from the ledger but
    /// not yet unlinked when the process died) are unlinked now.
    pub fn open(
        dir: &Path,
        first_seq: u64,
        roll_bytes: u64,
        index: &Index,
    ) -> io::Result<(Self, Recovered)> {
        crate::durable::create_dir_all(dir)?;
        let mut segments = list_segments(dir)?;
        // A segment wholly below the first kept seq: the ledger moved past it before the
        // unlink (vector PR #25570's lesson: ledger first, then the file; a missing file is fine).
        let firsts: Vec<u64> = segments.keys().copied().collect();
        let mut unlinked = false;
        for w in firsts.windows(2) {
            if let [a, b] = w
                && *b <= first_seq
                && let Some(path) = segments.remove(a)
            {
                remove_file(&path)?;
                unlinked = true;
            }
        }
        if unlinked {
            crate::durable::sync_dir(dir)?;
        }
        let mut recovered = Recovered { next_seq: first_seq, ..Recovered::default() };
        let Some((&active_first, active_path)) = segments.iter().next_back() else {
            let writer = Self::create(dir, first_seq, roll_bytes)?;
            index.set_segments(BTreeMap::from([(first_seq, dir.join(segment_name(first_seq)))]));
            return Ok((writer, recovered));
        };
        let active_path = active_path.clone();
        let mut bytes = std::fs::read(&active_path)?;
        let header_ok = bytes.get(..8) == Some(&SEGMENT_MAGIC[..])
            && bytes.get(8..16) == Some(&active_first.to_le_bytes()[..]);
        if !header_ok {
            // A segment whose header never reached the disk holds nothing durable.
            bytes.clear();
        }
        let mut good_end = SEGMENT_HEADER;
        let mut expected = active_first;
        let mut last: Option<Record> = None;
        scan(bytes.get(16..).unwrap_or_default(), SEGMENT_HEADER, |item| {
            match item {
                Item::Record { end, record, .. } => {
                    let seq = record.header.seq;
                    if seq < expected {
                        return true;
                    }
                    if seq > expected {
                        recovered.gaps.push((expected, seq - 1));
                    }
                    expected = seq + 1;
                    good_end = end;
                    last = Some(*record);
                }
                Item::Garbage { .. } => {}
                Item::Torn { offset } => good_end = offset.max(good_end),
            }
            true
        });
        let file = OpenOptions::new().read(true).write(true).open(&active_path)?;
        let len = file.metadata()?.len();
        if !header_ok {
            file.set_len(0)?;
            file.write_all_at(&header(active_first), 0)?;
            file.sync_data()?;
            good_end = SEGMENT_HEADER;
        } else if len > good_end {
            recovered.torn_bytes = len - good_end;
            file.set_len(good_end)?;
            file.sync_data()?;
        }
        drop(bytes);
        recovered.next_seq = expected.max(first_seq);
        if last.is_none() {
            // An empty active segment: chain from the last record before it.
            let before: Vec<(u64, PathBuf)> =
                segments.range(..active_first).rev().map(|(k, v)| (*k, v.clone())).collect();
            for (first, path) in before {
                if let Some(record) = last_record(&path, first)? {
                    last = Some(record);
                    break;
                }
            }
        }
        recovered.last = last;
        let total: u64 =
            segments.values().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        index.set_segments(segments);
        let mut active = file;
        active.seek(SeekFrom::End(0))?;
        let writer = Self {
            dir: dir.to_path_buf(),
            active,
            active_first,
            active_len: good_end,
            roll_bytes,
            bytes: total,
        };
        Ok((writer, recovered))
    }

    fn create(dir: &Path, first_seq: u64, roll_bytes: u64) -> io::Result<Self> {
        let path = dir.join(segment_name(first_seq));
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        file.write_all(&header(first_seq))?;
        file.sync_data()?;
        crate::durable::sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            active: file,
            active_first: first_seq,
            active_len: SEGMENT_HEADER,
            roll_bytes,
            bytes: SEGMENT_HEADER,
        })
    }

    /// Writes the frames of `records` (consecutive seqs) and makes them durable
    /// (`fdatasync`): the one durability point of an append. On error the segment is cut back
    /// to where it was, so no half-written group stays behind.
    pub fn append(&mut self, records: &[Record], index: &Index) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(records.len());
        for record in records {
            offsets.push((record.header.seq, self.active_len + buf.len() as u64));
            buf.extend_from_slice(&frame(record));
        }
        let result = self.active.write_all(&buf).and_then(|()| self.active.sync_data());
        if let Err(e) = result {
            let _ = self.active.set_len(self.active_len);
            let _ = self.active.seek(SeekFrom::Start(self.active_len));
            return Err(e);
        }
        for (seq, offset) in offsets {
            index.note(seq, self.active_first, offset);
        }
        self.active_len += buf.len() as u64;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Starts a new segment at `next_seq` once the active one reached the roll size; returns
    /// the new segment's first seq if it rolled.
    pub fn roll_if_full(&mut self, next_seq: u64, index: &Index) -> io::Result<Option<u64>> {
        if self.active_len < self.roll_bytes || next_seq == self.active_first {
            return Ok(None);
        }
        let new = Self::create(&self.dir, next_seq, self.roll_bytes)?;
        self.bytes += new.active_len;
        self.active = new.active;
        self.active_first = next_seq;
        self.active_len = new.active_len;
        index.add_segment(next_seq, self.dir.join(segment_name(next_seq)));
        Ok(Some(next_seq))
    }

    pub fn active_first(&self) -> u64 {
        self.active_first
    }

    /// Unlinks the segment starting at `first` (the ledger already says it is gone); a missing
    /// file is fine.
    pub fn remove(&mut self, first: u64, next_first: u64, index: &Index) -> io::Result<()> {
        let path = self.dir.join(segment_name(first));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        index.remove_segment(first, next_first);
        remove_file(&path)?;
        crate::durable::sync_dir(&self.dir)?;
        self.bytes = self.bytes.saturating_sub(len);
        Ok(())
    }
}

fn header(first_seq: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The last readable record of a segment file.
pub fn last_record(path: &Path, first: u64) -> io::Result<Option<Record>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.get(..8) != Some(&SEGMENT_MAGIC[..])
        || bytes.get(8..16) != Some(&first.to_le_bytes()[..])
    {
        return Ok(None);
    }
    let mut last = None;
    scan(bytes.get(16..).unwrap_or_default(), SEGMENT_HEADER, |item| {
        if let Item::Record { record, .. } = item {
            last = Some(*record);
        }
        true
    });
    Ok(last)
}

/// The first readable record of a segment file.
pub fn first_record(path: &Path, first: u64) -> io::Result<Option<Record>> {
    let index = Index::default();
    index.set_segments(BTreeMap::from([(first, path.to_path_buf())]));
    Ok(index.read(first, u64::MAX, 1)?.records.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{Body, Class, GENESIS, Header, body_hash};

    fn rec(seq: u64) -> Record {
        let body =
            Body::Alarm { alarm: "t".into(), level: "info".into(), message: format!("{seq}") };
        Record {
            header: Header {
                seq,
                appended_at_ms: 0,
                class: Class::Alarm,
                machine: String::new(),
                machine_seq: None,
                body_hash: body_hash(&body),
            },
            prev_hash: GENESIS,
            body: Some(body),
        }
    }

    #[test]
    fn scan_skips_damage_and_reports_a_torn_tail() {
        let mut bytes = frame(&rec(0));
        let damaged_at = bytes.len();
        let mut second = frame(&rec(1));
        second[20] ^= 0xFF;
        bytes.extend_from_slice(&second);
        bytes.extend_from_slice(&frame(&rec(2)));
        bytes.extend_from_slice(&frame(&rec(3))[..7]);
        let mut items = Vec::new();
        scan(&bytes, 0, |i| {
            items.push(match i {
                Item::Record { record, .. } => format!("r{}", record.header.seq),
                Item::Garbage { offset, .. } => format!("g{offset}"),
                Item::Torn { .. } => "t".into(),
            });
            true
        });
        assert_eq!(items, vec!["r0".to_owned(), format!("g{damaged_at}"), "r2".into(), "t".into()]);
    }
}
