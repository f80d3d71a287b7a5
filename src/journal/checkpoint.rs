//! Ed25519-signed checkpoints of the journal's chain head, and the key files they use.
//!
//! A checkpoint says "record `seq` has chain hash `head`", signed. Anyone holding the public
//! key can then tell that no record up to `seq` was edited, removed or reordered since, even
//! one with write access to the store, who could rebuild the hash chain but not the signature.
//!
//! Key files are text: 64 hex digits (the 32-byte Ed25519 seed; `*.key`, mode 0600) or the
//! 32-byte public key (`*.pub`). Rotation: configure a new signing key and list the old public
//! keys under `trusted_keys`; each checkpoint names its key by `key_id` (the first 8 bytes of
//! SHA-256 of the public key), so old checkpoints keep verifying.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::record::Hash;

/// A signed statement about the chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub head: Hash,
    pub at_ms: i64,
    pub key_id: [u8; 8],
    /// 64 bytes (serde has no impl for arrays that long).
    pub signature: Vec<u8>,
}

/// What is signed: a domain tag, then the fields, fixed-width.
fn message(seq: u64, head: &Hash, at_ms: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(b"slotgate-checkpoint-v1");
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&at_ms.to_be_bytes());
    m
}

pub fn key_id(key: &VerifyingKey) -> [u8; 8] {
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let mut id = [0; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

impl Checkpoint {
    pub fn sign(key: &SigningKey, seq: u64, head: Hash, at_ms: i64) -> Self {
        let signature = key.sign(&message(seq, &head, at_ms));
        Self {
            seq,
            head,
            at_ms,
            key_id: key_id(&key.verifying_key()),
            signature: signature.to_bytes().to_vec(),
        }
    }

    /// Checks the signature against whichever trusted key the checkpoint names.
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<(), String> {
        let Some(key) = trusted.iter().find(|k| key_id(k) == self.key_id) else {
            return Err(format!("signed by an untrusted key {}", hex8(&self.key_id)));
        };
        let bytes: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| format!("signature has {} bytes, not 64", self.signature.len()))?;
        let signature = Signature::from_bytes(&bytes);
        key.verify_strict(&message(self.seq, &self.head, self.at_ms), &signature)
            .map_err(|_| "signature does not verify".to_owned())
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

fn hex8(id: &[u8; 8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key file that cannot be used, naming the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("key file {path}: {reason}")]
pub struct KeyError {
    pub path: PathBuf,
    pub reason: String,
}

fn read_hex32(path: &Path) -> Result<[u8; 32], KeyError> {
    let err = |reason: String| KeyError { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let text = text.trim();
    if text.len() != 64 {
        return Err(err(format!("expected 64 hex digits, found {} characters", text.len())));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = text.get(2 * i..2 * i + 2).ok_or_else(|| err("not hex".into()))?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| err(format!("not hex: {pair:?}")))?;
    }
    Ok(out)
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            return Err(KeyError {
                path: path.to_path_buf(),
                reason: "readable by group or others; chmod 600 it".into(),
            });
        }
    }
    Ok(SigningKey::from_bytes(&read_hex32(path)?))
}

pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read_hex32(path)?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| KeyError {
        path: path.to_path_buf(),
        reason: format!("not an Ed25519 public key: {e}"),
    })
}

/// Writes a new key pair: `path` (secret, mode 0600) and `path` + `.pub`. Refuses to overwrite.
pub fn generate(path: &Path) -> Result<VerifyingKey, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err =
        |p: &Path, e: std::io::Error| KeyError { path: p.to_path_buf(), reason: e.to_string() };
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(path, e))?;
    writeln!(file, "{}", hex(&seed)).and_then(|()| file.sync_all()).map_err(|e| err(path, e))?;
    let public = key.verifying_key();
    let pub_path = public_path(path);
    std::fs::write(&pub_path, format!("{}\n", hex(public.as_bytes())))
        .map_err(|e| err(&pub_path, e))?;
    Ok(public)
}

pub fn public_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_with_its_key_and_unaltered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.key");
        let public = generate(&path).unwrap();
        let key = load_signing_key(&path).unwrap();
        assert_eq!(load_public_key(&public_path(&path)).unwrap(), public);
        let cp = Checkpoint::sign(&key, 41, [7; 32], 1_700_000_000_000);
        cp.verify(&[public]).unwrap();
        let other = generate(&dir.path().join("k.key")).unwrap();
        assert!(cp.verify(&[other]).unwrap_err().contains("untrusted"));
        let mut forged = cp.clone();
        forged.seq = 42;
        assert!(forged.verify(&[public]).unwrap_err().contains("does not verify"));
        assert!(generate(&path).is_err(), "never overwrites a key");
    }

    #[test]
    fn a_world_readable_secret_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.key");
        generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_signing_key(&path).unwrap_err().to_string().contains("chmod 600"));
    }
}
