//! Long work shows progress on a terminal and nothing in a pipe (issue 13): `journal verify`
//! and `journal export` run by the real binary with standard error on a pseudo-terminal, then
//! on a pipe.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use slotgate::journal::{Journal, JournalConfig, NewRecord};

/// A journal of `records` audit records at `dir`.
fn journal(dir: &Path, records: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (journal, writer) = Journal::open(JournalConfig::in_dir(dir)).unwrap();
    runtime.block_on(async {
        for chunk in (0..records).collect::<Vec<_>>().chunks(1000) {
            let batch = chunk.iter().map(|n| NewRecord::audit("test", n)).collect();
            journal.append(batch).await.unwrap();
        }
    });
    drop(journal);
    writer.join().unwrap();
}

/// Runs `args` with standard error on a terminal (`true`) or a pipe; returns what it wrote
/// there.
fn stderr_of(args: &[&str], terminal: bool) -> String {
    let mut command = Command::new(common::BIN);
    command.args(args).stdout(Stdio::null());
    if !terminal {
        let out = command.stderr(Stdio::piped()).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        return String::from_utf8_lossy(&out.stderr).into_owned();
    }
    let (status, seen) = common::stderr_on_terminal(command);
    assert!(status.success(), "{seen}");
    seen
}

#[test]
fn verify_and_export_show_progress_on_a_terminal_and_nothing_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    journal(&journal_dir, 5000);
    let dir_arg = journal_dir.to_str().unwrap();
    let out = dir.path().join("export.jsonl");
    let export = ["journal", "export", "--dir", dir_arg, "--out", out.to_str().unwrap()];
    let verify = ["journal", "verify", "--dir", dir_arg];
    for (args, progress) in [(&verify[..], "records verified"), (&export[..], " records")] {
        let on_terminal = stderr_of(args, true);
        assert!(on_terminal.contains(progress), "{args:?}: {on_terminal:?}");
        let in_pipe = stderr_of(args, false);
        assert!(!in_pipe.contains(progress) && !in_pipe.contains('\r'), "{args:?}: {in_pipe:?}");
    }
}
