//! The journal's high-water mark, kept beside sled's files but outside sled: the next sequence
//! number and the chain head after the last successful flush.
//!
//! sled 0.34.7 recovers a damaged log by keeping the prefix before the first bad entry, and says
//! nothing: a garbled or truncated `db` file opens with fewer records and no error (the tests in
//! `tests/journal_corruption.rs` show it). The journal would then hand out the lost sequence
//! numbers again. Comparing the store with this mark at open turns that silent loss into a
//! quarantine with an alarm.
//!
//! The mark is written with `pwrite` after every flush (it survives the death of the process)
//! and fsynced on the writer's tick. The store's flush is durable before the mark is written
//! (`store::SledStore`'s flush ends in `fdatasync`), so after a power cut the mark may lag the
//! store, never lead it, and a store behind its mark has really lost records. (Before that
//! `fdatasync`, sled's `sync_file_range` let a synced mark lead a store the cut had rolled back,
//! and every restart after a power cut quarantined the journal.) Format: `SGWM`, next seq (u64 LE), head
//! (32 bytes), CRC-32 of the preceding bytes; anything else reads as no mark.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::Hash;

const NAME: &str = "slotgate-watermark";
const MAGIC: [u8; 4] = *b"SGWM";
const LEN: usize = 4 + 8 + 32 + 4;

/// The mark: the next seq and the chain head at the last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub next_seq: u64,
    pub head: Hash,
}

impl Mark {
    fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..12].copy_from_slice(&self.next_seq.to_le_bytes());
        out[12..44].copy_from_slice(&self.head);
        let crc = crc32fast::hash(&out[..44]);
        out[44..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(data: &[u8]) -> Option<Self> {
        let data: &[u8; LEN] = data.try_into().ok()?;
        if data[..4] != MAGIC || crc32fast::hash(&data[..44]).to_le_bytes() != data[44..] {
            return None;
        }
        let next_seq = u64::from_le_bytes(data[4..12].try_into().ok()?);
        let head: Hash = data[12..44].try_into().ok()?;
        Some(Self { next_seq, head })
    }
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(NAME)
}

/// The mark in `dir`, if there is a valid one.
pub fn read(dir: &Path) -> Option<Mark> {
    Mark::decode(&std::fs::read(path(dir)).ok()?)
}

/// The writer's handle on the mark.
#[derive(Debug)]
pub struct Watermark {
    file: File,
    dirty: bool,
}

impl Watermark {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path(dir))?;
        file.sync_all()?;
        crate::durable::sync_dir(dir)?;
        Ok(Self { file, dirty: false })
    }

    pub fn record(&mut self, mark: Mark) -> io::Result<()> {
        self.file.write_all_at(&mark.encode(), 0)?;
        self.dirty = true;
        Ok(())
    }

    /// Makes the last mark durable; cheap when nothing changed.
    pub fn sync(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.dirty) {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_damage_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        let mut w = Watermark::open(dir.path()).unwrap();
        let mark = Mark { next_seq: 1234, head: [9; 32] };
        w.record(mark).unwrap();
        w.sync().unwrap();
        assert_eq!(read(dir.path()), Some(mark));
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        bytes[5] ^= 1;
        std::fs::write(path(dir.path()), &bytes).unwrap();
        assert_eq!(read(dir.path()), None);
    }
}
