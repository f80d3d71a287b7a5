//! Making file-system changes survive a power cut, not only the death of the process.
//!
//! A `write` survives a SIGKILL (the page cache keeps it) but not a power cut; only `fsync` or
//! `fdatasync` of the file commits its data and size, and only `fsync` of the directory commits
//! a name created, renamed or removed in it (POSIX promises nothing else; ext4 and xfs keep to
//! it). `sync_file_range`, which sled 0.34.7 uses, commits neither the size nor the disk cache.
//! Every durability point of slotgate therefore ends here. The power-cut tests
//! (`tests/powercut`) model exactly these rules and nothing more generous.

use std::fs::File;
use std::io;
use std::path::Path;

/// Commits the entries of `dir` (names created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, and commits each new name in its parent, so the
/// directory is still there after a power cut.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || path.is_dir() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    for path in missing.into_iter().rev() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Renames `from` to `to` and commits both directories.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    for parent in [to.parent(), from.parent()].into_iter().flatten() {
        if !parent.as_os_str().is_empty() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_and_renames() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        rename(&deep, &root.path().join("a/c")).unwrap();
        assert!(root.path().join("a/c").is_dir());
        sync_dir(root.path()).unwrap();
    }
}
