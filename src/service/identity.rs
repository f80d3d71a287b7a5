//! Self-identification (requirements R21): at every start the gateway journals what runs — its
//! version, the git commit it was built from, the SHA-256 of its own binary and of its
//! configuration file — so the audit trail shows every software and configuration change.

use std::io::Read;
use std::path::Path;

use serde::Serialize;

use crate::journal::NewRecord;

/// The `alarm` name of the record, which goes upstream as a gateway record.
pub const SOFTWARE_ID: &str = "software_id";

/// What runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SoftwareId {
    pub version: String,
    /// The commit of the build, "-dirty" when built with uncommitted changes, "unknown" from a
    /// tree without git (build.rs).
    pub git_commit: String,
    /// Hex SHA-256 of the running executable (`/proc/self/exe`: the file this process was
    /// started from, even if it was replaced on disk since).
    pub binary_sha256: String,
    /// Hex SHA-256 of the configuration file.
    pub config_sha256: String,
}

impl SoftwareId {
    /// This process's identity, with `config` as its configuration file. Reads the whole
    /// binary: run it off the async workers.
    pub fn of_this_process(config: &Path) -> std::io::Result<Self> {
        Ok(Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            git_commit: env!("SLOTGATE_GIT_COMMIT").to_owned(),
            binary_sha256: sha256_file(Path::new("/proc/self/exe"))?,
            config_sha256: sha256_file(config)?,
        })
    }

    /// The journal record: a gateway record of the significant class (never refused for the
    /// cap, never compacted), its message the identity as JSON.
    pub fn record(&self) -> NewRecord {
        super::audit_record(SOFTWARE_ID, self)
    }
}

/// Hex SHA-256 of a file's content, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(buf.get(..n).unwrap_or_default()),
        }
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hash_is_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
