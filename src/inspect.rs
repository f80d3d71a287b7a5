//! `slotgate journal …`: the read-only views a technician or an inspector
//! uses. Nothing here writes to the journal; verification opens a copy of it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::{JournalCommand, JournalTarget};
use crate::config::Config;
use crate::journal::checkpoint::{self, load_public_key};
use crate::journal::verify::{self, Snapshot};

/// How a journal command ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// `verify` found a broken link or a bad checkpoint.
    Tampered,
}

/// The journals moved to `quarantine` (`journal-<time>`), oldest first.
fn quarantined_in(quarantine: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(quarantine) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("journal-"))
        })
        .collect();
    found.sort();
    found
}

/// What a target names: the journal directory, the trusted public keys, and, given a
/// configuration, where it quarantines journals.
struct Resolved {
    dir: PathBuf,
    keys: Vec<PathBuf>,
    quarantine: Option<PathBuf>,
}

fn resolve(target: &JournalTarget) -> anyhow::Result<Resolved> {
    match (&target.config, &target.dir) {
        (Some(file), _) => {
            let config = Config::load(file)?;
            let mut keys = config.journal.trusted_keys.clone();
            if let Some(secret) = &config.journal.signing_key {
                keys.push(checkpoint::public_path(secret));
            }
            let quarantine = Some(config.storage.quarantine_dir());
            Ok(Resolved { dir: config.storage.journal_dir(), keys, quarantine })
        }
        (None, Some(dir)) => Ok(Resolved { dir: dir.clone(), keys: Vec::new(), quarantine: None }),
        (None, None) => anyhow::bail!("give --config FILE or --dir DIR"),
    }
}

pub fn journal(command: JournalCommand) -> anyhow::Result<Outcome> {
    match command {
        JournalCommand::Keygen { out } => {
            let public = checkpoint::generate(&out)?;
            let hex: String = public.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
            println!("Secret key: {} (mode 0600)", out.display());
            println!("Public key: {} ({hex})", checkpoint::public_path(&out).display());
            Ok(Outcome::Done)
        }
        JournalCommand::Verify { target, trusted_keys, json } => {
            let Resolved { dir, mut keys, quarantine } = resolve(&target)?;
            keys.extend(trusted_keys);
            let trusted = keys.iter().map(|p| load_public_key(p)).collect::<Result<Vec<_>, _>>()?;
            let snapshot = Snapshot::open(&dir)?;
            let bar = crate::progress::bar(None);
            bar.set_message("verifying");
            let report = verify::verify_with_progress(&snapshot, &trusted, |n| {
                // A message per record would cost more than the hashing it reports on.
                if n.is_multiple_of(1024) {
                    bar.set_message(format!("{n} records verified"));
                }
            });
            bar.finish_and_clear();
            let report = report?;
            // A quarantined journal is evidence of an incident: verified with the same keys and
            // reported, and what it lost (records flushed before the damage, per its own mark)
            // fails the verification, as a break in the live journal would.
            let quarantined: Vec<Quarantined> = quarantine
                .as_deref()
                .map(quarantined_in)
                .unwrap_or_default()
                .into_iter()
                .map(|path| {
                    let report = Snapshot::open(&path)
                        .and_then(|s| verify::verify(&s, &trusted))
                        .map_err(|e| e.reason);
                    Quarantined { path, report }
                })
                .collect();
            let ok = report.ok() && quarantined.iter().all(Quarantined::ok);
            if json {
                let out = serde_json::json!({
                    "ok": ok,
                    "journal": report,
                    "quarantined": quarantined,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_report(&dir, &report, trusted.len());
                for q in &quarantined {
                    match &q.report {
                        Ok(r) => {
                            println!("Quarantined journal (kept as evidence):");
                            print_report(&q.path, r, trusted.len());
                        }
                        Err(reason) => {
                            println!(
                                "Quarantined journal {}: UNREADABLE: {reason}",
                                q.path.display()
                            );
                        }
                    }
                }
                if !quarantined.is_empty() {
                    println!("{}", if ok { "OK (with quarantined journals)" } else { "FAILED" });
                }
            }
            Ok(if ok { Outcome::Done } else { Outcome::Tampered })
        }
        JournalCommand::Stats { target } => {
            let dir = resolve(&target)?.dir;
            let stats = verify::stats(&Snapshot::open(&dir)?)?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(Outcome::Done)
        }
        JournalCommand::Export { target, out } => {
            let dir = resolve(&target)?.dir;
            let snapshot = Snapshot::open(&dir)?;
            export(&snapshot, out.as_deref())?;
            Ok(Outcome::Done)
        }
    }
}

/// A quarantined journal and what verifying it found.
#[derive(Debug, serde::Serialize)]
struct Quarantined {
    path: PathBuf,
    report: Result<verify::VerifyReport, String>,
}

impl Quarantined {
    /// Intact and complete: the damage that quarantined it cost no flushed record.
    fn ok(&self) -> bool {
        self.report.as_ref().is_ok_and(verify::VerifyReport::ok)
    }
}

fn print_report(dir: &Path, report: &verify::VerifyReport, keys: usize) {
    println!("Journal {}", dir.display());
    println!(
        "  records {} (seq {}..{}), {} compacted snapshot(s)",
        report.records, report.first_seq, report.next_seq, report.compacted
    );
    match &report.first_break {
        None => println!("  hash chain: intact"),
        Some(b) => println!("  hash chain: BROKEN at record {}: {}", b.seq, b.reason),
    }
    println!(
        "  checkpoints: {} stored, {} verified with {keys} trusted key(s)",
        report.checkpoints, report.checkpoints_verified
    );
    for p in &report.checkpoint_problems {
        println!("  checkpoint problem: {}", p.reason);
    }
    for gap in &report.gaps {
        println!("  unreadable: {}", gap.reason);
    }
    if let Some(lost) = &report.lost_tail {
        println!("  LOST: {}", lost.reason);
    }
    if keys == 0 && report.checkpoints > 0 {
        println!("  (no trusted key given: pass --trusted-key or --config to check signatures)");
    }
    println!("{}", if report.ok() { "OK" } else { "FAILED" });
}

fn export(snapshot: &Snapshot, out: Option<&Path>) -> anyhow::Result<()> {
    let bar = crate::progress::bar(None);
    bar.set_message("exporting");
    let progress = |n: u64| {
        bar.set_position(n);
        bar.set_message(format!("{n} records"));
    };
    let written = match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let n = verify::export(snapshot, &mut w, progress)?;
            w.flush().with_context(|| format!("writing {}", path.display()))?;
            n
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(PipeWatch { inner: stdout.lock(), closed: false });
            let n = verify::export(snapshot, &mut w, progress);
            if w.get_ref().closed {
                return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
            }
            w.flush().context("writing standard output")?;
            n?
        }
    };
    bar.finish_and_clear();
    // Standard error may be the closed pipe too (`2>&1 | head`): nothing to tell then.
    let _ = writeln!(std::io::stderr(), "Exported {written} record(s).");
    Ok(())
}

/// Notes whether the reader of the output went away (`| head`), which the export reports only
/// as text.
struct PipeWatch<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> Write for PipeWatch<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write_all(buf).inspect_err(|e| self.closed |= is_broken_pipe(e))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().inspect_err(|e| self.closed |= is_broken_pipe(e))
    }
}

fn is_broken_pipe(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::BrokenPipe
}
