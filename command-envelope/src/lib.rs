//! The remote-command envelope of slotgate (issue 10): what a state system or a technician sends
//! to switch a machine off (`disable`, SAS LP 01) or on (`enable`, LP 02), parsed strictly from
//! JSON, and the canonical byte encoding its Ed25519 signatures cover
//! (`docs/upstream-protocol.md`, "Remote commands", documents both byte by byte).
//!
//! This crate parses and encodes; it decides nothing. Whether a key is trusted, may do what it
//! signed, whether the command is due or expired, and whether the machines exist is
//! `slotgate::command::verify`'s job. It is a crate of its own, with no I/O and no clock, so that
//! the fuzz crate (`firmware-protocols/fuzz`, target `envelope`) can exercise the parser of
//! untrusted input without building the daemon.
//!
//! # Strictness
//! - The size limit ([`MAX_ENVELOPE_BYTES`]) is checked before a byte is parsed.
//! - Unknown fields, duplicate fields, a missing field, a sub-second or out-of-order time,
//!   an invalid target id, a duplicate target or signer, and a signature that is not 128 hex
//!   digits are all [`ParseError::Malformed`]: anything the canonical encoding could not
//!   represent exactly is refused, so what was signed is exactly what is executed.
//! - The action is an enum of two values; nothing else can be expressed.

// Input comes from the network: no index may panic.
#![deny(clippy::indexing_slicing)]

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Largest envelope accepted, in bytes, checked before parsing. 256 targets of 64 characters
/// with a full reason and four signatures fit in 20 KiB.
pub const MAX_ENVELOPE_BYTES: usize = 24 * 1024;
/// Most machines one command may name (a UA licence covers at most 250).
pub const MAX_TARGETS: usize = 256;
/// Longest target id: the registry id of `slotgate::event::RegistryId`.
pub const MAX_TARGET_LEN: usize = 64;
/// Longest reason, in bytes of UTF-8.
pub const MAX_REASON_BYTES: usize = 512;
/// Longest issuer key id.
pub const MAX_KEY_ID_LEN: usize = 64;
/// Most signatures one envelope may carry.
pub const MAX_SIGNATURES: usize = 4;
/// The first bytes of every signed message: binds a signature to this purpose and version, so
/// that no other slotgate signature (journal checkpoints) can be replayed as a command.
pub const DOMAIN: &[u8] = b"slotgate remote command v1\0";

/// What a command asks of the machines. Nothing else can be expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Lock out play (SAS LP 01); a game in progress completes.
    Disable,
    /// Re-enable play (SAS LP 02).
    Enable,
}

impl Action {
    /// The byte of the canonical encoding.
    pub fn code(self) -> u8 {
        match self {
            Self::Disable => 0x01,
            Self::Enable => 0x02,
        }
    }

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Enable => "enable",
        }
    }
}

/// One signature and the key that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    /// The issuer key id, as configured in `[[commands.keys]]`.
    pub key_id: String,
    pub signature: [u8; 64],
}

/// A parsed, well-formed command. Not yet trusted: see `slotgate::command::verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The command id; a repeated id is the same command.
    pub id: Uuid,
    /// Registry ids of the machines, in the order signed.
    pub targets: Vec<String>,
    pub action: Action,
    /// Why, for the audit trail.
    pub reason: String,
    /// Whole seconds, `issued_at <= not_before < expires_at`.
    pub issued_at: Timestamp,
    pub not_before: Timestamp,
    pub expires_at: Timestamp,
    /// The first is the issuer's; a bulk command may need a second from another key.
    pub signatures: Vec<SignatureEntry>,
}

/// Why bytes are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("command is {len} bytes, more than the {limit}-byte limit")]
    Oversized { len: usize, limit: usize },
    #[error("malformed command: {0}")]
    Malformed(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    id: Uuid,
    targets: Vec<String>,
    action: Action,
    reason: String,
    issued_at: Timestamp,
    not_before: Timestamp,
    expires_at: Timestamp,
    signatures: Vec<WireSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    key_id: String,
    /// 128 lowercase or uppercase hex digits.
    signature: String,
}

/// Parses one envelope from its JSON bytes.
pub fn parse(bytes: &[u8]) -> Result<Envelope, ParseError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(ParseError::Oversized { len: bytes.len(), limit: MAX_ENVELOPE_BYTES });
    }
    let wire: Wire =
        serde_json::from_slice(bytes).map_err(|e| ParseError::Malformed(e.to_string()))?;
    let malformed = |reason: String| Err(ParseError::Malformed(reason));
    if wire.targets.is_empty() || wire.targets.len() > MAX_TARGETS {
        return malformed(format!("targets: 1–{MAX_TARGETS} registry ids"));
    }
    for (i, target) in wire.targets.iter().enumerate() {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if target.is_empty() || target.len() > MAX_TARGET_LEN || !target.chars().all(valid) {
            return malformed(format!("targets[{i}]: not a registry id"));
        }
        if wire.targets.iter().take(i).any(|t| t == target) {
            return malformed(format!("targets[{i}]: {target} is named twice"));
        }
    }
    if wire.reason.is_empty() || wire.reason.len() > MAX_REASON_BYTES {
        return malformed(format!("reason: 1–{MAX_REASON_BYTES} bytes"));
    }
    if wire.reason.chars().any(char::is_control) {
        return malformed("reason: control characters".into());
    }
    for (name, at) in [
        ("issued_at", wire.issued_at),
        ("not_before", wire.not_before),
        ("expires_at", wire.expires_at),
    ] {
        if at.subsec_nanosecond() != 0 {
            return malformed(format!("{name}: whole seconds only"));
        }
    }
    if wire.not_before < wire.issued_at || wire.expires_at <= wire.not_before {
        return malformed("times: issued_at <= not_before < expires_at".into());
    }
    if wire.signatures.len() > MAX_SIGNATURES {
        return malformed(format!("signatures: at most {MAX_SIGNATURES}"));
    }
    let mut signatures = Vec::with_capacity(wire.signatures.len());
    for (i, entry) in wire.signatures.into_iter().enumerate() {
        if entry.key_id.is_empty()
            || entry.key_id.len() > MAX_KEY_ID_LEN
            || !entry.key_id.chars().all(|c| c.is_ascii_graphic())
        {
            return malformed(format!(
                "signatures[{i}].key_id: 1–{MAX_KEY_ID_LEN} printable ASCII"
            ));
        }
        if signatures.iter().any(|s: &SignatureEntry| s.key_id == entry.key_id) {
            return malformed(format!("signatures[{i}]: key {} signed twice", entry.key_id));
        }
        let Some(signature) = decode_hex64(&entry.signature) else {
            return malformed(format!("signatures[{i}].signature: 128 hex digits"));
        };
        signatures.push(SignatureEntry { key_id: entry.key_id, signature });
    }
    Ok(Envelope {
        id: wire.id,
        targets: wire.targets,
        action: wire.action,
        reason: wire.reason,
        issued_at: wire.issued_at,
        not_before: wire.not_before,
        expires_at: wire.expires_at,
        signatures,
    })
}

impl Envelope {
    /// The canonical encoding every signature covers (docs/upstream-protocol.md, "Remote
    /// commands"): [`DOMAIN`]; the id's 16 bytes; the action byte; the target count (u16 BE),
    /// then each target as a length byte and its ASCII; the reason as a u16 BE length and its
    /// UTF-8; then `issued_at`, `not_before` and `expires_at` as i64 BE Unix seconds. Signer
    /// key ids are not covered: each signature binds to its key by verifying under it.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(DOMAIN.len() + 64 + self.reason.len() + 65 * self.targets.len());
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(self.id.as_bytes());
        out.push(self.action.code());
        // The limits checked by `parse` keep these conversions exact; saturating keeps a
        // hand-built envelope from wrapping.
        out.extend_from_slice(&u16::try_from(self.targets.len()).unwrap_or(u16::MAX).to_be_bytes());
        for target in &self.targets {
            out.push(u8::try_from(target.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(target.as_bytes());
        }
        out.extend_from_slice(&u16::try_from(self.reason.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(self.reason.as_bytes());
        for at in [self.issued_at, self.not_before, self.expires_at] {
            out.extend_from_slice(&at.as_second().to_be_bytes());
        }
        out
    }

    /// Adds a signature by `key` under `key_id` (issuers and tests; the gateway only verifies).
    pub fn sign(&mut self, key_id: &str, key: &SigningKey) {
        let signature = key.sign(&self.signed_bytes()).to_bytes();
        self.signatures.push(SignatureEntry { key_id: key_id.to_owned(), signature });
    }

    /// Whether `signature` is a valid strict Ed25519 signature of this command under `key`.
    pub fn verify_signature(&self, key: &VerifyingKey, signature: &[u8; 64]) -> bool {
        key.verify_strict(&self.signed_bytes(), &Signature::from_bytes(signature)).is_ok()
    }

    /// The JSON wire form.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            id: self.id,
            targets: self.targets.clone(),
            action: self.action,
            reason: self.reason.clone(),
            issued_at: self.issued_at,
            not_before: self.not_before,
            expires_at: self.expires_at,
            signatures: self
                .signatures
                .iter()
                .map(|s| WireSignature {
                    key_id: s.key_id.clone(),
                    signature: encode_hex(&s.signature),
                })
                .collect(),
        };
        // A struct of strings, ids and timestamps always serialises.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

/// Lowercase hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for nibble in bytes.iter().flat_map(|b| [b >> 4, b & 0x0F]) {
        out.extend(char::from_digit(u32::from(nibble), 16));
    }
    out
}

fn decode_hex64(text: &str) -> Option<[u8; 64]> {
    let digits = text.as_bytes();
    if digits.len() != 128 {
        return None;
    }
    let mut out = [0u8; 64];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        let nibble = |d: u8| char::from(d).to_digit(16).and_then(|v| u8::try_from(v).ok());
        *byte = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
