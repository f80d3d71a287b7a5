//! Progress of long work (journal export and verify, replay, diag-bundle): a bar or spinner on
//! standard error when it is a terminal, nothing at all in a pipe or a log.

use std::io::IsTerminal;

/// A bar of `len` steps, or a spinner when the amount of work is not known; hidden unless
/// standard error is a terminal.
pub fn bar(len: Option<u64>) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    match len {
        Some(len) => indicatif::ProgressBar::new(len),
        None => indicatif::ProgressBar::new_spinner(),
    }
}
