//! The record log: numbered segment files of CRC-framed records (full ones sealed into
//! zstd-compressed blocks by a thread beside the writer), one writer, any number of readers. The formats, durability points and recovery cases are in the journal's module doc;
//! this file is their code. It knows nothing of cursors, machines or alarms: it stores records
//! in sequence order and finds them again, and says where it could not.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};

use super::record::{Entry, Hash, Record};

/// Segment file header: magic (8 bytes, the layout's version) and the first seq (u64 LE).
/// `SGJLOG01`: plain frames — the active segment, and sealed ones written before issue 14's
/// compression (or left plain because they hold damage).
pub const SEGMENT_MAGIC: [u8; 8] = *b"SGJLOG01";
/// `SGJLOG02`: a sealed segment of zstd-compressed blocks and a block index.
pub const SEALED_MAGIC: [u8; 8] = *b"SGJLOG02";
pub const SEGMENT_HEADER: u64 = 16;
/// Block: marker, compressed length (u32 LE), raw length (u32 LE), first seq (u64 LE), record
/// count (u32 LE), the first record's `prev_hash` (32 bytes), CRC-32 of bytes 4..56 and the
/// compressed bytes (u32 LE); then the compressed bytes.
pub const BLOCK_MARKER: [u8; 4] = *b"SGB1";
pub const BLOCK_HEADER: usize = 60;
/// Raw bytes gathered into one block: large enough for zstd to find the events' repetition,
/// small enough that a reader starting mid-segment decompresses little it does not need, and
/// that one damaged block costs a few hundred records at most.
const BLOCK_RAW_BYTES: usize = 128 << 10;
/// Block index at the end of a sealed segment: marker, count (u32 LE), count × (first seq u64
/// LE, block offset u64 LE), CRC-32 of count and entries (u32 LE); then the trailer: the
/// index's offset (u64 LE) and `SGJLEND1`.
const INDEX_MARKER: [u8; 4] = *b"SGBI";
const TRAILER_MAGIC: [u8; 8] = *b"SGJLEND1";
const TRAILER: u64 = 16;
/// zstd's level for sealing: sealing runs beside the writer, never in an append's path.
const ZSTD_LEVEL: i32 = 3;
/// A sealed segment is written under this suffix, synced, then renamed over the plain one.
const SEALING_SUFFIX: &str = ".sealing";
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
    walk(bytes, base, FRAME_MARKER, frame_at, |found| match found {
        Found::Whole { offset, end, value } => {
            f(Item::Record { offset, end, record: Box::new(value) })
        }
        Found::Garbage { offset, end } => f(Item::Garbage { offset, end }),
        Found::Torn { offset } => f(Item::Torn { offset }),
    });
}

/// What [`walk`] found: a whole unit (frame or block), damage, or a torn end.
enum Found<T> {
    Whole { offset: u64, end: u64, value: T },
    Garbage { offset: u64, end: u64 },
    Torn { offset: u64 },
}

/// Walks units that start with `marker` and that `parse` checks, resynchronising on the next
/// marker at which `parse` succeeds after damage.
fn walk<T>(
    bytes: &[u8],
    base: u64,
    marker: [u8; 4],
    parse: impl Fn(&[u8]) -> Option<(T, usize)>,
    mut f: impl FnMut(Found<T>) -> bool,
) {
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = bytes.get(at..).unwrap_or_default();
        if let Some((value, len)) = parse(rest) {
            let offset = base + at as u64;
            if !f(Found::Whole { offset, end: offset + len as u64, value }) {
                return;
            }
            at += len;
            continue;
        }
        // Damage: find the next place a whole unit starts.
        let next = (at + 1..bytes.len()).find(|&i| {
            bytes.get(i..i + 4) == Some(&marker[..])
                && parse(bytes.get(i..).unwrap_or_default()).is_some()
        });
        match next {
            Some(i) => {
                if !f(Found::Garbage { offset: base + at as u64, end: base + i as u64 }) {
                    return;
                }
                at = i;
            }
            None => {
                f(Found::Torn { offset: base + at as u64 });
                return;
            }
        }
    }
}

/// A segment file's layout, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Sealed,
}

/// The layout of the segment of `first_seq` whose file starts with `header`; `None` if it is
/// no segment of `first_seq` (garbled, or its header never reached the disk).
pub fn format_of(header: &[u8], first_seq: u64) -> Option<Format> {
    if header.get(8..16) != Some(&first_seq.to_le_bytes()[..]) {
        return None;
    }
    match header.get(..8) {
        Some(m) if m == SEGMENT_MAGIC => Some(Format::Plain),
        Some(m) if m == SEALED_MAGIC => Some(Format::Sealed),
        _ => None,
    }
}

/// Walks the records of a whole segment file's `bytes`, either layout; `None` (and no call)
/// if the header is not that of segment `first_seq`. In a sealed segment a record's offsets
/// are its block's, and a damaged block is one `Garbage` item.
pub fn scan_segment(
    bytes: &[u8],
    first_seq: u64,
    mut f: impl FnMut(Item) -> bool,
) -> Option<Format> {
    let format = format_of(bytes, first_seq)?;
    match format {
        Format::Plain => scan(bytes.get(16..).unwrap_or_default(), SEGMENT_HEADER, f),
        Format::Sealed => {
            let end = block_index(bytes).map_or(bytes.len(), |(at, _)| at);
            let blocks = bytes.get(16..end).unwrap_or_default();
            walk(blocks, SEGMENT_HEADER, BLOCK_MARKER, block_at::<Record>, |found| match found {
                Found::Whole { offset, end, value } => value
                    .into_iter()
                    .all(|record| f(Item::Record { offset, end, record: Box::new(record) })),
                Found::Garbage { offset, end } => f(Item::Garbage { offset, end }),
                // A sealed file is whole before it gets its name: an unreadable end is damage.
                Found::Torn { offset } => {
                    f(Item::Garbage { offset, end: SEGMENT_HEADER + blocks.len() as u64 })
                }
            });
        }
    }
    Some(format)
}

/// The sealed file of segment `first_seq` holding `records` (in order): blocks of about
/// [`BLOCK_RAW_BYTES`] of sealed records, each compressed on its own, then the block index.
/// A record whose `prev_hash` is not its predecessor's hash starts a new block, so the
/// stored anchors keep every link exactly as it was.
pub fn seal(first_seq: u64, records: &[Record]) -> io::Result<Vec<u8>> {
    let mut sealing = Sealing::new(first_seq)?;
    for record in records {
        sealing.push(record)?;
    }
    sealing.finish()
}

/// A sealed file being built one record at a time, so that sealing holds one raw block, not
/// a segment's worth of decoded records (the memory target of issue 14).
struct Sealing {
    out: Vec<u8>,
    blocks: Vec<(u64, u64)>,
    raw: Vec<u8>,
    /// The open block's first seq, anchor and record count.
    open: Option<(u64, Hash, u32)>,
    prev: Option<Hash>,
    /// One compression context for every block of the file.
    compressor: zstd::bulk::Compressor<'static>,
}

impl Sealing {
    fn new(first_seq: u64) -> io::Result<Self> {
        Ok(Self {
            out: header(SEALED_MAGIC, first_seq).to_vec(),
            blocks: Vec::new(),
            raw: Vec::with_capacity(BLOCK_RAW_BYTES + (64 << 10)),
            open: None,
            prev: None,
            compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
        })
    }

    fn push(&mut self, record: &Record) -> io::Result<()> {
        let chained = self.prev == Some(record.prev_hash);
        if !chained || self.raw.len() >= BLOCK_RAW_BYTES {
            self.close_block()?;
        }
        let (_, _, count) = self.open.get_or_insert((record.header.seq, record.prev_hash, 0));
        *count += 1;
        let entry = record.encode_sealed();
        let len = u32::try_from(entry.len()).map_err(|_| io::Error::other("record too large"))?;
        self.raw.extend_from_slice(&len.to_le_bytes());
        self.raw.extend_from_slice(&entry);
        self.prev = Some(record.record_hash());
        Ok(())
    }

    fn close_block(&mut self) -> io::Result<()> {
        let Some((first_seq, anchor, count)) = self.open.take() else { return Ok(()) };
        let compressed = self.compressor.compress(&self.raw)?;
        let too_large = || io::Error::other("block too large");
        let clen = u32::try_from(compressed.len()).map_err(|_| too_large())?;
        let rlen = u32::try_from(self.raw.len()).map_err(|_| too_large())?;
        self.raw.clear();
        self.blocks.push((first_seq, self.out.len() as u64));
        let mut head = Vec::with_capacity(BLOCK_HEADER);
        head.extend_from_slice(&BLOCK_MARKER);
        head.extend_from_slice(&clen.to_le_bytes());
        head.extend_from_slice(&rlen.to_le_bytes());
        head.extend_from_slice(&first_seq.to_le_bytes());
        head.extend_from_slice(&count.to_le_bytes());
        head.extend_from_slice(&anchor);
        let mut crc = crc32fast::Hasher::new();
        crc.update(head.get(4..).unwrap_or_default());
        crc.update(&compressed);
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(&crc.finalize().to_le_bytes());
        self.out.extend_from_slice(&compressed);
        Ok(())
    }

    /// The whole file: the blocks, the block index and the trailer.
    fn finish(mut self) -> io::Result<Vec<u8>> {
        self.close_block()?;
        let mut out = self.out;
        let index_at = out.len() as u64;
        let count =
            u32::try_from(self.blocks.len()).map_err(|_| io::Error::other("too many blocks"))?;
        let mut index = count.to_le_bytes().to_vec();
        for (seq, offset) in &self.blocks {
            index.extend_from_slice(&seq.to_le_bytes());
            index.extend_from_slice(&offset.to_le_bytes());
        }
        out.extend_from_slice(&INDEX_MARKER);
        out.extend_from_slice(&index);
        out.extend_from_slice(&crc32fast::hash(&index).to_le_bytes());
        out.extend_from_slice(&index_at.to_le_bytes());
        out.extend_from_slice(&TRAILER_MAGIC);
        Ok(out)
    }
}

/// Decodes the block at the start of `bytes`: its records (as `T` reads them from the anchor)
/// and the block's length. `None` if the CRC, the decompression or a record fails.
fn block_at<T: Readable>(bytes: &[u8]) -> Option<(T::Block, usize)> {
    if bytes.get(..4)? != BLOCK_MARKER {
        return None;
    }
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let clen = u32_at(4)?;
    let rlen = u32_at(8)?;
    if clen > MAX_FRAME || rlen > MAX_FRAME.saturating_mul(2) {
        return None;
    }
    let first_seq = u64::from_le_bytes(bytes.get(12..20)?.try_into().ok()?);
    let count = u32_at(20)?;
    let anchor: Hash = bytes.get(24..56)?.try_into().ok()?;
    let crc = u32_at(56)?;
    let end = BLOCK_HEADER.checked_add(usize::try_from(clen).ok()?)?;
    let compressed = bytes.get(BLOCK_HEADER..end)?;
    let mut h = crc32fast::Hasher::new();
    h.update(bytes.get(4..56)?);
    h.update(compressed);
    if h.finalize() != crc {
        return None;
    }
    let count = usize::try_from(count).ok()?;
    let raw = decompress(compressed, usize::try_from(rlen).ok()?)?;
    Some((T::decode_block(raw, anchor, count, first_seq)?, end))
}

/// The decompressed bytes of one block, `None` unless they are `rlen` bytes. The context is
/// kept per thread: a reader decompresses thousands of blocks in a row, and a fresh context
/// per block was a twentieth of the forwarders' read (issue 14).
fn decompress(compressed: &[u8], rlen: usize) -> Option<Vec<u8>> {
    thread_local! {
        static CONTEXT: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    CONTEXT.with(|context| {
        let mut context = context.try_borrow_mut().ok()?;
        if context.is_none() {
            *context = Some(zstd::bulk::Decompressor::new().ok()?);
        }
        let mut raw = Vec::with_capacity(rlen);
        match context.as_mut()?.decompress_to_buffer(compressed, &mut raw) {
            Ok(n) if n == rlen => Some(raw),
            _ => None,
        }
    })
}

/// Calls `f` with each sealed record's bytes in a block's raw bytes; `None` if the lengths do
/// not add up or `f` fails.
fn each_entry(raw: &[u8], mut f: impl FnMut(&[u8]) -> Option<()>) -> Option<()> {
    let mut at = 0usize;
    while at < raw.len() {
        let len =
            usize::try_from(u32::from_le_bytes(raw.get(at..at + 4)?.try_into().ok()?)).ok()?;
        f(raw.get(at + 4..(at + 4).checked_add(len)?)?)?;
        at += 4 + len;
    }
    Some(())
}

/// What a reader reads: checked [`Record`]s (a sealed segment's hashes recomputed, for
/// verification, export, checkpoints and re-applying) or [`Entry`]s for sending (no hashes,
/// about a third of the cost). Both read the same frames and blocks behind the same CRCs.
pub trait Readable: Sized {
    /// What the readers' cache keeps of a sealed block.
    type Block: Send + Sync;
    fn seq(&self) -> u64;
    /// From a plain frame's record (which stores its hashes, so nothing is recomputed).
    fn from_record(record: Record) -> Self;
    /// A sealed block's raw bytes, whose first `prev_hash` is `anchor`, as the cache keeps
    /// them; `None` unless they hold `count` records from `first_seq`.
    fn decode_block(
        raw: Vec<u8>,
        anchor: Hash,
        count: usize,
        first_seq: u64,
    ) -> Option<Self::Block>;
    /// Adds the block's records from `expected` on to `out` ([`take`]); false once `out` is
    /// complete.
    fn take_block(
        block: &Self::Block,
        expected: &mut u64,
        until: u64,
        limit: usize,
        out: &mut ReadOut<Self>,
    ) -> bool;
    /// The readers' cache of this kind's blocks.
    fn cache(index: &Index) -> &Mutex<VecDeque<CachedBlock<Self::Block>>>;
}

/// Checked records are decoded once per block: each `prev_hash` needs its predecessor's hash.
impl Readable for Record {
    type Block = Vec<Self>;

    fn seq(&self) -> u64 {
        self.header.seq
    }

    fn from_record(record: Record) -> Self {
        record
    }

    fn decode_block(raw: Vec<u8>, anchor: Hash, count: usize, first_seq: u64) -> Option<Vec<Self>> {
        let mut records = Vec::with_capacity(count.min(1 << 16));
        let mut prev = anchor;
        each_entry(&raw, |entry| {
            let record = Self::decode_sealed(entry, prev).ok()?;
            prev = record.record_hash();
            records.push(record);
            Some(())
        })?;
        let whole =
            records.len() == count && records.first().is_some_and(|r| r.header.seq == first_seq);
        whole.then_some(records)
    }

    fn take_block(
        block: &Vec<Self>,
        expected: &mut u64,
        until: u64,
        limit: usize,
        out: &mut ReadOut<Self>,
    ) -> bool {
        for record in block {
            if record.header.seq >= *expected && !take(record.clone(), expected, until, limit, out)
            {
                return false;
            }
        }
        true
    }

    fn cache(index: &Index) -> &Mutex<VecDeque<CachedBlock<Vec<Self>>>> {
        &index.blocks
    }
}

/// Entries are cached as the block's raw bytes and decoded straight into the reader's output:
/// nothing is decoded twice or copied out of a cache (issue 14's replay read). Records before
/// `expected` are skipped by their seq alone.
impl Readable for Entry {
    type Block = Vec<u8>;

    fn seq(&self) -> u64 {
        self.seq
    }

    fn from_record(record: Record) -> Self {
        record.into()
    }

    fn decode_block(raw: Vec<u8>, _anchor: Hash, count: usize, first_seq: u64) -> Option<Vec<u8>> {
        let mut seen = 0usize;
        let mut first = None;
        each_entry(&raw, |entry| {
            seen += 1;
            if first.is_none() {
                first = Some(Self::sealed_seq(entry)?);
            }
            Some(())
        })?;
        (seen == count && first == Some(first_seq)).then_some(raw)
    }

    fn take_block(
        block: &Vec<u8>,
        expected: &mut u64,
        until: u64,
        limit: usize,
        out: &mut ReadOut<Self>,
    ) -> bool {
        let mut more = true;
        // A record that does not decode behind a good CRC (never written so): the rest of
        // the block is skipped and shows as a gap, as a damaged block does.
        let _ = each_entry(block, |bytes| {
            if Self::sealed_seq(bytes)? < *expected {
                return Some(());
            }
            let entry = Self::decode_sealed(bytes).ok()?;
            more = take(entry, expected, until, limit, out);
            more.then_some(())
        });
        more
    }

    fn cache(index: &Index) -> &Mutex<VecDeque<CachedBlock<Vec<u8>>>> {
        &index.entry_blocks
    }
}

/// The block index of a sealed segment's `bytes`: where it starts and its (first seq, block
/// offset) entries; `None` if the trailer or the index is damaged.
fn block_index(bytes: &[u8]) -> Option<(usize, Vec<(u64, u64)>)> {
    let len = bytes.len();
    let trailer = bytes.get(len.checked_sub(TRAILER as usize)?..)?;
    if trailer.get(8..)? != TRAILER_MAGIC {
        return None;
    }
    let at = usize::try_from(u64::from_le_bytes(trailer.get(..8)?.try_into().ok()?)).ok()?;
    parse_index(bytes.get(at..len - TRAILER as usize)?).map(|blocks| (at, blocks))
}

/// The entries of an index region (`SGBI` … CRC).
fn parse_index(region: &[u8]) -> Option<Vec<(u64, u64)>> {
    if region.get(..4)? != INDEX_MARKER {
        return None;
    }
    let body = region.get(4..region.len().checked_sub(4)?)?;
    let crc = u32::from_le_bytes(region.get(region.len() - 4..)?.try_into().ok()?);
    if crc32fast::hash(body) != crc {
        return None;
    }
    let count = usize::try_from(u32::from_le_bytes(body.get(..4)?.try_into().ok()?)).ok()?;
    let entries = body.get(4..)?;
    if entries.len() != count.checked_mul(16)? {
        return None;
    }
    Some(
        entries
            .chunks_exact(16)
            .filter_map(|e| {
                let seq = u64::from_le_bytes(e.get(..8)?.try_into().ok()?);
                let offset = u64::from_le_bytes(e.get(8..)?.try_into().ok()?);
                Some((seq, offset))
            })
            .collect(),
    )
}

/// Reads a sealed file's block index with two reads; `None` if damaged.
fn read_block_index(file: &File, len: u64) -> Option<(u64, Vec<(u64, u64)>)> {
    let mut trailer = [0u8; TRAILER as usize];
    file.read_exact_at(&mut trailer, len.checked_sub(TRAILER)?).ok()?;
    if trailer[8..] != TRAILER_MAGIC {
        return None;
    }
    let at = u64::from_le_bytes(trailer[..8].try_into().ok()?);
    let size = usize::try_from(len.checked_sub(TRAILER)?.checked_sub(at)?).ok()?;
    if size > (MAX_FRAME as usize) {
        return None;
    }
    let mut region = vec![0u8; size];
    file.read_exact_at(&mut region, at).ok()?;
    parse_index(&region).map(|blocks| (at, blocks))
}

/// Where records start, shared by the writer and the readers.
#[derive(Debug, Default)]
pub struct Index {
    /// Segments by first seq.
    segments: RwLock<BTreeMap<u64, PathBuf>>,
    /// seq → (segment first seq, offset of that seq's frame), every `INDEX_EVERY` records of
    /// plain segments (a sealed one has its block index; its entries go when it is sealed).
    starts: Mutex<BTreeMap<u64, (u64, u64)>>,
    /// Bytes of all segment files.
    bytes: AtomicU64,
    /// Held while a sealed file replaces a plain one and while the writer forgets a removed
    /// segment, so a removed segment is never brought back by its sealing.
    seal_lock: Mutex<()>,
    /// The last few decoded sealed blocks, by (segment, block offset): a forwarder reads a
    /// few dozen records per call, and a block holds hundreds.
    blocks: Mutex<VecDeque<CachedBlock<Vec<Record>>>>,
    /// The same for reads of [`Entry`]s (the forwarders'): the blocks' raw bytes.
    entry_blocks: Mutex<VecDeque<CachedBlock<Vec<u8>>>>,
}

/// A sealed block as a reader kind caches it: its segment, its offset, its contents.
pub type CachedBlock<B> = (u64, u64, Arc<B>);

/// Segments a read looks up at a time.
const SEGMENTS_PER_LOOKUP: usize = 4;

/// Decoded blocks kept for readers: one per concurrent sequential reader, roughly.
const CACHED_BLOCKS: usize = 4;

impl Index {
    pub fn set_segments(&self, segments: BTreeMap<u64, PathBuf>) {
        *self.segments.write().unwrap_or_else(PoisonError::into_inner) = segments;
        self.starts.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.entry_blocks.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Up to `n` segments, by first seq, from the one starting at `from` on: copied out, so no
    /// lock is held while they are read, and never the whole list (over a thousand segments
    /// in a 20 M backlog).
    pub fn segments_from(&self, from: u64, n: usize) -> Vec<(u64, PathBuf)> {
        let segments = self.segments.read().unwrap_or_else(PoisonError::into_inner);
        segments.range(from..).take(n).map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    fn add_bytes(&self, add: u64, sub: u64) {
        let _ = self.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
            Some(b.saturating_add(add).saturating_sub(sub))
        });
    }

    fn add_segment(&self, first: u64, path: PathBuf) {
        self.segments.write().unwrap_or_else(PoisonError::into_inner).insert(first, path);
    }

    fn remove_segment(&self, first: u64, next_first: u64) {
        self.segments.write().unwrap_or_else(PoisonError::into_inner).remove(&first);
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner).retain(|(s, _, _)| *s != first);
        self.entry_blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(s, _, _)| *s != first);
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
    /// in between that could not be read (missing segment, damaged frames). `T` says whether
    /// a sealed segment's hashes are recomputed ([`Record`]) or not ([`Entry`]).
    pub fn read<T: Readable>(&self, from: u64, until: u64, limit: usize) -> io::Result<ReadOut<T>> {
        let mut out = ReadOut { records: Vec::with_capacity(limit.min(4096)), gaps: Vec::new() };
        if from >= until || limit == 0 {
            return Ok(out);
        }
        let mut expected = from;
        let mut next_key = {
            let segments = self.segments.read().unwrap_or_else(PoisonError::into_inner);
            segments.range(..=from).next_back().map_or(0, |(k, _)| *k)
        };
        loop {
            let walk = self.segments_from(next_key, SEGMENTS_PER_LOOKUP + 1);
            let more = walk.get(SEGMENTS_PER_LOOKUP).map(|(k, _)| *k);
            for (i, (first, path)) in walk.iter().enumerate().take(SEGMENTS_PER_LOOKUP) {
                if *first >= until || out.records.len() >= limit {
                    return Ok(out);
                }
                let segment_end = walk.get(i + 1).map_or(until, |(n, _)| (*n).min(until));
                if segment_end <= expected {
                    continue;
                }
                self.read_one(path, *first, &mut expected, segment_end, limit, &mut out)?;
            }
            match more {
                Some(key) => next_key = key,
                None => break,
            }
        }
        // What lies between the last record read and the end of the readable range is not
        // reported here: it may simply not have been read yet (limit).
        Ok(out)
    }

    /// Reads segment `first` (at `path`) from `expected` up to `segment_end`, either layout.
    fn read_one<T: Readable>(
        &self,
        path: &Path,
        first: u64,
        expected: &mut u64,
        segment_end: u64,
        limit: usize,
        out: &mut ReadOut<T>,
    ) -> io::Result<()> {
        let offset = {
            let starts = self.starts.lock().unwrap_or_else(PoisonError::into_inner);
            starts
                .range(..=(*expected).max(first))
                .next_back()
                .filter(|(_, (seg, _))| *seg == first)
                .map_or(SEGMENT_HEADER, |(_, (_, off))| *off)
        };
        let file = match File::open(path) {
            Ok(f) => f,
            // Removed after every destination acknowledged it, meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut head = [0u8; SEGMENT_HEADER as usize];
        let format = file.read_exact_at(&mut head, 0).ok().and_then(|()| format_of(&head, first));
        match format {
            Some(Format::Plain) => {
                self.read_segment(&file, first, offset, expected, segment_end, limit, out)
            }
            Some(Format::Sealed) => {
                self.read_sealed(&file, first, expected, segment_end, limit, out)
            }
            None => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read_segment<T: Readable>(
        &self,
        file: &File,
        first: u64,
        offset: u64,
        expected: &mut u64,
        until: u64,
        limit: usize,
        out: &mut ReadOut<T>,
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
                        self.note(record.header.seq, first, offset);
                        stop = !take(T::from_record(*record), expected, until, limit, out);
                    }
                    !stop
                });
                return Ok(());
            };
            self.note(record.header.seq, first, at);
            if !take(T::from_record(record), expected, until, limit, out) {
                return Ok(());
            }
            at += len as u64;
        }
    }
}

/// Adds a record to `out`; false once past `until` or at `limit`.
fn take<T: Readable>(
    record: T,
    expected: &mut u64,
    until: u64,
    limit: usize,
    out: &mut ReadOut<T>,
) -> bool {
    let seq = record.seq();
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

impl Index {
    /// Reads from a sealed segment, starting at the block that holds `expected` (its block
    /// index), one block at a time. A damaged block is skipped (its seqs show as a gap); a
    /// damaged index falls back to walking every block.
    fn read_sealed<T: Readable>(
        &self,
        file: &File,
        first: u64,
        expected: &mut u64,
        until: u64,
        limit: usize,
        out: &mut ReadOut<T>,
    ) -> io::Result<()> {
        let len = file.metadata()?.len();
        let Some((index_at, blocks)) = read_block_index(file, len) else {
            let mut bytes = Vec::new();
            let mut file = file;
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut bytes)?;
            scan_segment(&bytes, first, |item| match item {
                Item::Record { record, .. } => {
                    take(T::from_record(*record), expected, until, limit, out)
                }
                Item::Garbage { .. } | Item::Torn { .. } => true,
            });
            return Ok(());
        };
        let start = blocks.partition_point(|(seq, _)| *seq <= *expected).saturating_sub(1);
        for (i, (_, offset)) in blocks.iter().enumerate().skip(start) {
            if out.records.len() >= limit {
                break;
            }
            let end = blocks.get(i + 1).map_or(index_at, |(_, next)| *next);
            let Some(block) = self.block::<T>(file, first, *offset, end)? else { continue };
            if !T::take_block(&block, expected, until, limit, out) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The records of the block at `offset..end` of sealed segment `first`, from the cache or
    /// decoded; `None` if the block is damaged.
    fn block<T: Readable>(
        &self,
        file: &File,
        first: u64,
        offset: u64,
        end: u64,
    ) -> io::Result<Option<Arc<T::Block>>> {
        {
            let cache = T::cache(self).lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, _, records)) =
                cache.iter().find(|(s, o, _)| *s == first && *o == offset)
            {
                return Ok(Some(records.clone()));
            }
        }
        let Some(size) = end.checked_sub(offset).and_then(|s| usize::try_from(s).ok()) else {
            return Ok(None);
        };
        if size > BLOCK_HEADER + MAX_FRAME as usize {
            return Ok(None);
        }
        let mut buf = vec![0u8; size];
        file.read_exact_at(&mut buf, offset)?;
        let Some((records, _)) = block_at::<T>(&buf) else { return Ok(None) };
        let records = Arc::new(records);
        let mut cache = T::cache(self).lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHED_BLOCKS {
            cache.pop_front();
        }
        cache.push_back((first, offset, records.clone()));
        Ok(Some(records))
    }
}

/// Records read, and seq ranges (inclusive) found missing before them.
#[derive(Debug)]
pub struct ReadOut<T = Record> {
    pub records: Vec<T>,
    pub gaps: Vec<(u64, u64)>,
}

/// The writer's side of the log: the active segment, appends, rolls, removal, and the
/// sealer thread that compresses the segments it rolled away from.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    active: File,
    active_first: u64,
    active_len: u64,
    roll_bytes: u64,
    index: Arc<Index>,
    sealer: Sealer,
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
    /// not yet unlinked when the process died) are unlinked now, and so are half-written
    /// sealed files; plain segments other than the active one are queued for sealing.
    pub fn open(
        dir: &Path,
        first_seq: u64,
        roll_bytes: u64,
        index: &Arc<Index>,
    ) -> io::Result<(Self, Recovered)> {
        crate::durable::create_dir_all(dir)?;
        let mut unlinked = remove_half_sealed(dir)?;
        let mut segments = list_segments(dir)?;
        // A segment wholly below the first kept seq: the ledger moved past it before the
        // unlink (vector PR #25570's lesson: ledger first, then the file; a missing file is fine).
        let firsts: Vec<u64> = segments.keys().copied().collect();
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
        let total: u64 =
            segments.values().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        index.bytes.store(total, Ordering::Release);
        let sealer = Sealer::start(dir, index.clone())?;
        let mut recovered = Recovered { next_seq: first_seq, ..Recovered::default() };
        let Some((&active_first, active_path)) = segments.iter().next_back() else {
            index.set_segments(BTreeMap::new());
            let writer = Self::create(dir, first_seq, roll_bytes, index, sealer)?;
            return Ok((writer, recovered));
        };
        let active_path = active_path.clone();
        let mut bytes = std::fs::read(&active_path)?;
        let format = format_of(&bytes, active_first);
        // Queued once the index lists them: the sealer seals only segments it lists.
        let plain: Vec<u64> = segments
            .range(..active_first)
            .filter(|(first, path)| is_plain(path, **first))
            .map(|(first, _)| *first)
            .collect();
        if format == Some(Format::Sealed) {
            // The last segment is sealed (its successor went missing): never append to it.
            let last = last_record(&active_path, active_first)?;
            let next = last.as_ref().map_or(active_first, |r| r.header.seq + 1).max(first_seq);
            index.set_segments(segments);
            plain.iter().for_each(|first| sealer.queue(*first));
            let writer = Self::create(dir, next, roll_bytes, index, sealer)?;
            recovered.next_seq = next;
            recovered.last = last;
            return Ok((writer, recovered));
        }
        let header_ok = format == Some(Format::Plain);
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
            file.write_all_at(&header(SEGMENT_MAGIC, active_first), 0)?;
            file.sync_data()?;
            good_end = SEGMENT_HEADER;
            index.add_bytes(SEGMENT_HEADER, len);
        } else if len > good_end {
            recovered.torn_bytes = len - good_end;
            file.set_len(good_end)?;
            file.sync_data()?;
            index.add_bytes(0, recovered.torn_bytes);
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
        index.set_segments(segments);
        plain.iter().for_each(|first| sealer.queue(*first));
        let mut active = file;
        active.seek(SeekFrom::End(0))?;
        let writer = Self {
            dir: dir.to_path_buf(),
            active,
            active_first,
            active_len: good_end,
            roll_bytes,
            index: index.clone(),
            sealer,
        };
        Ok((writer, recovered))
    }

    /// Creates the active segment of `first_seq`: header synced, then its directory.
    fn create(
        dir: &Path,
        first_seq: u64,
        roll_bytes: u64,
        index: &Arc<Index>,
        sealer: Sealer,
    ) -> io::Result<Self> {
        let active = create_segment(dir, first_seq)?;
        index.add_segment(first_seq, dir.join(segment_name(first_seq)));
        index.add_bytes(SEGMENT_HEADER, 0);
        Ok(Self {
            dir: dir.to_path_buf(),
            active,
            active_first: first_seq,
            active_len: SEGMENT_HEADER,
            roll_bytes,
            index: index.clone(),
            sealer,
        })
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.index.bytes()
    }

    /// Writes the frames of `records` (consecutive seqs) and makes them durable
    /// (`fdatasync`): the one durability point of an append. On error the segment is cut back
    /// to where it was, so no half-written group stays behind.
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
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
            self.index.note(seq, self.active_first, offset);
        }
        self.active_len += buf.len() as u64;
        self.index.add_bytes(buf.len() as u64, 0);
        Ok(())
    }

    /// Starts a new segment at `next_seq` once the active one reached the roll size, and hands
    /// the full one to the sealer; returns the new segment's first seq if it rolled.
    pub fn roll_if_full(&mut self, next_seq: u64) -> io::Result<Option<u64>> {
        if self.active_len < self.roll_bytes || next_seq == self.active_first {
            return Ok(None);
        }
        self.active = create_segment(&self.dir, next_seq)?;
        self.index.add_segment(next_seq, self.dir.join(segment_name(next_seq)));
        self.index.add_bytes(SEGMENT_HEADER, 0);
        self.sealer.queue(self.active_first);
        self.active_first = next_seq;
        self.active_len = SEGMENT_HEADER;
        Ok(Some(next_seq))
    }

    pub fn active_first(&self) -> u64 {
        self.active_first
    }

    /// Forgets the segment starting at `first` (the ledger, applied but maybe not yet durable,
    /// already says it is gone) and hands its unlink to the sealer thread, which makes the
    /// ledger durable first (`ledger`), then unlinks and syncs the directory: the writer never
    /// waits for either (issue 14's append p99 while a backlog is removed). A missing file is
    /// fine; a crash before the unlink leaves a file below the base, which open unlinks.
    pub fn remove(&mut self, first: u64, next_first: u64, ledger: Ledger) {
        let path = self.dir.join(segment_name(first));
        {
            let _sealing = self.index.seal_lock.lock().unwrap_or_else(PoisonError::into_inner);
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            self.index.remove_segment(first, next_first);
            self.index.add_bytes(0, len);
        }
        self.sealer.send(Job::Remove { first, ledger });
    }
}

/// A new plain segment file: header written and synced, then its directory, so a synced
/// frame is never in a file whose name a power cut took away.
fn create_segment(dir: &Path, first_seq: u64) -> io::Result<File> {
    let path = dir.join(segment_name(first_seq));
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    file.write_all(&header(SEGMENT_MAGIC, first_seq))?;
    file.sync_data()?;
    crate::durable::sync_dir(dir)?;
    Ok(file)
}

fn is_plain(path: &Path, first: u64) -> bool {
    let mut head = [0u8; SEGMENT_HEADER as usize];
    File::open(path).and_then(|f| f.read_exact_at(&mut head, 0)).is_ok()
        && format_of(&head, first) == Some(Format::Plain)
}

/// Unlinks sealed files that never got their segment's name (the process died while
/// sealing): the plain segment is still there, whole. Returns whether any was unlinked.
fn remove_half_sealed(dir: &Path) -> io::Result<bool> {
    let mut any = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(|n| n.ends_with(SEALING_SUFFIX)) {
            remove_file(&entry.path())?;
            any = true;
        }
    }
    Ok(any)
}

/// Makes the keyed state's ledger durable (sled's flush and `fdatasync`), from the sealer
/// thread, before a removed segment is unlinked.
pub type Ledger = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// Work for the thread beside the writer.
enum Job {
    Seal(u64),
    /// Unlink the segment starting at `first` once `ledger` made its removal durable.
    Remove {
        first: u64,
        ledger: Ledger,
    },
}

/// The thread beside the writer: it seals segments the writer rolled away from and unlinks
/// removed ones, so neither compression nor removal delays an append. Sealing and removal
/// run one after the other here, so a removed segment is never renamed back into existence.
/// Dropping it finishes the queue (closing a journal leaves every full segment sealed and
/// every removed one unlinked).
struct Sealer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Sealer {
    fn start(dir: &Path, index: Arc<Index>) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let dir = dir.to_path_buf();
        let thread =
            std::thread::Builder::new().name("journal-sealer".into()).spawn(move || {
                while let Ok(job) = rx.recv() {
                    let mut removed = Vec::new();
                    let mut ledger = None;
                    let mut seals = Vec::new();
                    for job in std::iter::once(job).chain(rx.try_iter()) {
                        match job {
                            Job::Seal(first) => seals.push(first),
                            Job::Remove { first, ledger: newest } => {
                                removed.push(first);
                                ledger = Some(newest);
                            }
                        }
                    }
                    // One flush covers every removal queued before it (each ledger applied
                    // its base before it was queued); removals go first, so no segment is
                    // sealed only to be unlinked.
                    if let Some(ledger) = ledger {
                        unlink_removed(&dir, &removed, ledger);
                    }
                    for first in seals {
                        if let Err(error) = seal_segment(&dir, first, &index) {
                            // The plain segment stays, whole and readable, only larger; the
                            // next open queues it again.
                            tracing::warn!(%error, segment = first, "Cannot seal a journal segment.");
                            let _ = remove_file(&sealing_path(&dir, first));
                        }
                    }
                }
            })?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    fn queue(&self, first: u64) {
        self.send(Job::Seal(first));
    }

    fn send(&self, job: Job) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ledger first, then the files (vector PR #25570): if the ledger cannot be made durable the
/// files stay, below the base, and the next open unlinks them.
fn unlink_removed(dir: &Path, removed: &[u64], ledger: Ledger) {
    if let Err(error) = ledger() {
        tracing::warn!(%error, "Cannot make a journal removal durable; the segments are unlinked at the next open.");
        return;
    }
    for first in removed {
        if let Err(error) = remove_file(&dir.join(segment_name(*first))) {
            tracing::warn!(%error, segment = first, "Cannot unlink an acknowledged segment; retried at open.");
        }
    }
    if let Err(error) = crate::durable::sync_dir(dir) {
        tracing::warn!(%error, "Cannot sync the journal's log directory after a removal.");
    }
}

fn sealing_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{}{SEALING_SUFFIX}", segment_name(first)))
}

/// Replaces the plain segment of `first` by its sealed file: the sealed bytes go to a
/// `.sealing` file (with the plain file's modification time, which retention reads), which
/// is synced, renamed over the segment, and the directory synced. A crash before the rename
/// leaves the plain segment and a `.sealing` file open removes; after it, the sealed one.
/// A segment with damage is left plain, as the evidence it is.
fn seal_segment(dir: &Path, first: u64, index: &Index) -> io::Result<()> {
    let path = dir.join(segment_name(first));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut sealing = Sealing::new(first)?;
    let mut records = 0usize;
    let mut clean = true;
    let mut failed = None;
    let format = scan_segment(&bytes, first, |item| {
        match item {
            Item::Record { record, .. } => match sealing.push(&record) {
                Ok(()) => records += 1,
                Err(error) => {
                    failed = Some(error);
                    return false;
                }
            },
            // A damaged segment stays plain: nothing more to compress.
            Item::Garbage { .. } | Item::Torn { .. } => {
                clean = false;
                return false;
            }
        }
        true
    });
    if let Some(error) = failed {
        return Err(error);
    }
    if format != Some(Format::Plain) {
        return Ok(());
    }
    if !clean {
        tracing::warn!(segment = first, "A journal segment holds damage; it stays uncompressed.");
        return Ok(());
    }
    if records == 0 {
        return Ok(());
    }
    let sealed = sealing.finish()?;
    let modified = std::fs::metadata(&path)?.modified()?;
    let tmp = sealing_path(dir, first);
    let mut file = File::create(&tmp)?;
    file.write_all(&sealed)?;
    file.set_modified(modified)?;
    file.sync_all()?;
    drop(file);
    let _sealing = index.seal_lock.lock().unwrap_or_else(PoisonError::into_inner);
    if !index.segments.read().unwrap_or_else(PoisonError::into_inner).contains_key(&first) {
        // Removed (acknowledged and expired) meanwhile.
        return remove_file(&tmp);
    }
    std::fs::rename(&tmp, &path)?;
    crate::durable::sync_dir(dir)?;
    index.add_bytes(sealed.len() as u64, bytes.len() as u64);
    // A sealed segment is read through its block index: its sparse-index entries would only
    // grow with the backlog (78,000 of them at 20 M records).
    index
        .starts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|_, (segment, _)| *segment != first);
    Ok(())
}

fn header(magic: [u8; 8], first_seq: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&magic);
    h[8..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The last readable record of a segment file, either layout.
pub fn last_record(path: &Path, first: u64) -> io::Result<Option<Record>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last = None;
    scan_segment(&bytes, first, |item| {
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

    /// `n` chained records of `size`-byte event bodies from `first`, with a compacted body at
    /// `first + 3` and a chain break (a stored anchor that is no predecessor's hash) at
    /// `first + n / 2`.
    fn chained(first: u64, n: u64, size: usize) -> Vec<Record> {
        let mut prev = [7; 32];
        (first..first + n)
            .map(|seq| {
                let body = Body::Event {
                    canonical_json: format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(size))
                        .into_bytes(),
                    raw: seq.to_le_bytes().to_vec(),
                };
                let mut r = rec(seq);
                r.header.class = Class::Financial;
                r.header.body_hash = body_hash(&body);
                r.body = Some(body);
                if seq == first + 3 {
                    r.body = None;
                }
                if seq == first + n / 2 {
                    prev = [9; 32];
                }
                r.prev_hash = prev;
                prev = r.record_hash();
                r
            })
            .collect()
    }

    fn read_file(path: &Path, first: u64, from: u64, limit: usize) -> ReadOut {
        let index = Index::default();
        index.set_segments(BTreeMap::from([(first, path.to_path_buf())]));
        index.read(from, u64::MAX, limit).unwrap()
    }

    #[test]
    fn a_sealed_segment_holds_exactly_the_records_and_is_read_from_any_block() {
        let dir = tempfile::tempdir().unwrap();
        let records = chained(100, 400, 1500);
        let sealed = seal(100, &records).unwrap();
        let raw: usize = records.iter().map(|r| frame(r).len()).sum();
        assert!(sealed.len() * 4 < raw, "compressed: {} of {raw}", sealed.len());
        let (_, blocks) = block_index(&sealed).unwrap();
        assert!(blocks.len() >= 5, "{blocks:?}");
        // The chain break starts a block of its own, so its anchor is stored as it was.
        assert!(blocks.iter().any(|(seq, _)| *seq == 300), "{blocks:?}");
        let mut scanned = Vec::new();
        assert_eq!(
            scan_segment(&sealed, 100, |item| {
                if let Item::Record { record, .. } = item {
                    scanned.push(*record);
                }
                true
            }),
            Some(Format::Sealed)
        );
        assert_eq!(scanned, records);
        let path = dir.path().join(segment_name(100));
        std::fs::write(&path, &sealed).unwrap();
        for from in [100, 101, 299, 300, 377, 499] {
            let out = read_file(&path, 100, from, 50);
            let want: Vec<Record> =
                records.iter().skip((from - 100) as usize).take(50).cloned().collect();
            assert_eq!(out.records, want, "from {from}");
            assert!(out.gaps.is_empty());
        }
        // A forwarder's small sequential reads through one index (its decoded-block cache).
        let index = Index::default();
        index.set_segments(BTreeMap::from([(100, path.clone())]));
        let mut from = 100;
        let mut all = Vec::new();
        loop {
            let out = index.read::<Record>(from, u64::MAX, 25).unwrap();
            let Some(last) = out.records.last() else { break };
            from = last.header.seq + 1;
            all.extend(out.records);
        }
        assert_eq!(all, records);
        assert_eq!(last_record(&path, 100).unwrap().as_ref(), records.last());
        assert_eq!(first_record(&path, 100).unwrap().as_ref(), records.first());
    }

    /// Reads all of `path` through one index in small sequential reads, as a forwarder does.
    fn read_all<T: Readable>(path: &Path, first: u64) -> (Vec<T>, Vec<(u64, u64)>) {
        let index = Index::default();
        index.set_segments(BTreeMap::from([(first, path.to_path_buf())]));
        let (mut from, mut all, mut gaps) = (first, Vec::new(), Vec::new());
        loop {
            let out = index.read::<T>(from, u64::MAX, 25).unwrap();
            let Some(last) = out.records.last() else { break };
            from = last.seq() + 1;
            all.extend(out.records);
            gaps.extend(out.gaps);
        }
        (all, gaps)
    }

    /// Sealing drops a segment's entries from the readers' sparse index (they would grow with
    /// the backlog); the sealed segments are read through their block index as before.
    #[test]
    fn sealed_segments_leave_the_sparse_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(Index::default());
        let records = chained(0, 3000, 200);
        let (mut writer, _) = LogWriter::open(dir.path(), 0, 64 << 10, &index).unwrap();
        for group in records.chunks(50) {
            writer.append(group).unwrap();
            writer.roll_if_full(group.last().unwrap().header.seq + 1).unwrap();
        }
        let active = writer.active_first();
        drop(writer); // the sealer finishes its queue
        let segments = index.segments_from(0, usize::MAX);
        assert!(segments.len() > 5, "{} segments", segments.len());
        let starts = index.starts.lock().unwrap().clone();
        assert!(starts.values().all(|(segment, _)| *segment == active), "{starts:?}");
        let out = index.read::<Entry>(0, u64::MAX, 5000).unwrap();
        assert_eq!(out.records.len(), 3000);
        assert!(out.gaps.is_empty());
    }

    /// Reads over more segments than one lookup takes, sealed and plain in turn, from every
    /// seq and with every kind of limit, return exactly the records in between.
    #[test]
    fn reads_across_many_segments_return_exactly_the_records_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let records = chained(0, 300, 200);
        let index = Index::default();
        let mut segments = BTreeMap::new();
        for (n, chunk) in records.chunks(30).enumerate() {
            let first = chunk[0].header.seq;
            let path = dir.path().join(segment_name(first));
            if n % 2 == 0 {
                std::fs::write(&path, seal(first, chunk).unwrap()).unwrap();
            } else {
                let mut plain = header(SEGMENT_MAGIC, first).to_vec();
                chunk.iter().for_each(|r| plain.extend_from_slice(&frame(r)));
                std::fs::write(&path, &plain).unwrap();
            }
            segments.insert(first, path);
        }
        assert!(segments.len() > 2 * SEGMENTS_PER_LOOKUP);
        index.set_segments(segments);
        for from in (0..300).step_by(7) {
            for limit in [1, 13, 64, 1000] {
                let want: Vec<u64> = (from..300.min(from + limit as u64)).collect();
                let entries = index.read::<Entry>(from, u64::MAX, limit).unwrap();
                let checked = index.read::<Record>(from, u64::MAX, limit).unwrap();
                assert_eq!(entries.records.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
                assert_eq!(checked.records.iter().map(|r| r.header.seq).collect::<Vec<_>>(), want);
                assert!(entries.gaps.is_empty() && checked.gaps.is_empty());
                // `until` bounds the read too.
                let until = from + 5;
                let bounded = index.read::<Entry>(from, until, limit).unwrap();
                assert!(bounded.records.iter().all(|e| e.seq < until));
            }
        }
    }

    #[test]
    fn the_forwarders_read_returns_exactly_what_the_checked_read_returns() {
        let dir = tempfile::tempdir().unwrap();
        let records = chained(1000, 400, 1500);
        let sealed_path = dir.path().join("sealed").join(segment_name(1000));
        let plain_path = dir.path().join("plain").join(segment_name(1000));
        let damaged_path = dir.path().join("damaged").join(segment_name(1000));
        for path in [&sealed_path, &plain_path, &damaged_path] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        }
        let sealed = seal(1000, &records).unwrap();
        std::fs::write(&sealed_path, &sealed).unwrap();
        let mut plain = header(SEGMENT_MAGIC, 1000).to_vec();
        for record in &records {
            plain.extend_from_slice(&frame(record));
        }
        std::fs::write(&plain_path, &plain).unwrap();
        // A damaged block: both reads lose the same records and report the same gap.
        let (_, blocks) = block_index(&sealed).unwrap();
        let mut damaged = sealed.clone();
        damaged[blocks[2].1 as usize + BLOCK_HEADER + 10] ^= 0x40;
        std::fs::write(&damaged_path, &damaged).unwrap();
        let all: Vec<Entry> = records.iter().cloned().map(Entry::from).collect();
        for path in [&sealed_path, &plain_path, &damaged_path] {
            let (checked, checked_gaps) = read_all::<Record>(path, 1000);
            let (entries, entry_gaps) = read_all::<Entry>(path, 1000);
            let want: Vec<Entry> = checked.into_iter().map(Entry::from).collect();
            assert_eq!(entries, want, "{path:?}");
            assert_eq!(entry_gaps, checked_gaps, "{path:?}");
            if path == &damaged_path {
                assert_eq!(entry_gaps, vec![(blocks[2].0, blocks[3].0 - 1)]);
                assert!(entries.len() < all.len());
            } else {
                // The compacted body (1003) and the chain break (1200) included.
                assert_eq!(entries, all, "{path:?}");
                assert!(entry_gaps.is_empty());
            }
        }
    }

    #[test]
    fn a_damaged_block_costs_that_block_and_a_damaged_index_costs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let records = chained(0, 400, 1500);
        let sealed = seal(0, &records).unwrap();
        let (index_at, blocks) = block_index(&sealed).unwrap();
        let (lost_first, offset) = blocks[1];
        let lost_end = blocks[2].0;
        let path = dir.path().join(segment_name(0));
        let mut bad_block = sealed.clone();
        bad_block[offset as usize + BLOCK_HEADER + 10] ^= 0x40;
        std::fs::write(&path, &bad_block).unwrap();
        let out = read_file(&path, 0, 0, usize::MAX);
        assert_eq!(out.gaps, vec![(lost_first, lost_end - 1)]);
        assert_eq!(out.records.len() as u64, 400 - (lost_end - lost_first));
        let mut garbage = Vec::new();
        scan_segment(&bad_block, 0, |item| {
            if let Item::Garbage { offset, .. } = item {
                garbage.push(offset);
            }
            true
        });
        assert_eq!(garbage, vec![offset]);
        // The block index is only a shortcut: without it every block is still found.
        let mut bad_index = sealed.clone();
        bad_index[index_at + 9] ^= 0x01;
        std::fs::write(&path, &bad_index).unwrap();
        let out = read_file(&path, 0, 250, usize::MAX);
        assert!(out.gaps.is_empty());
        assert_eq!(out.records, records[250..].to_vec());
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
