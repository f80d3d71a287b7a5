//! Whether a command may be executed: trusted issuer keys with roles, signatures, the bulk
//! two-signature rule, validity times and clock skew, and the machines it names. Sans-IO: the
//! time is passed in, keys are loaded once ([`Verifier::load`]) and checked from memory.
//!
//! Every refusal is a [`Rejection`] with a typed [`RejectReason`], which the audit record and
//! the upstream result carry. Checks run in a fixed order: the bytes (size, then shape), then
//! authenticity (signatures, keys, roles), then validity (times), then the targets. So a
//! reason that depends on the command's content is only ever given for an authenticated
//! command ([`Rejection::authenticated`]), and only such a rejection may be stored under the
//! command's id: a forger cannot burn the id of a genuine command.

use ed25519_dalek::VerifyingKey;
use jiff::Timestamp;
use uuid::Uuid;

use super::envelope::{self, Action, Envelope, ParseError};
use crate::config::CommandSettings;

/// Why a command was refused. The names are part of the audit and upstream vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Larger than [`envelope::MAX_ENVELOPE_BYTES`]; not parsed.
    Oversized,
    /// Not a well-formed envelope.
    Malformed,
    /// No signature, or fewer valid ones than a bulk command needs.
    MissingSignature,
    /// A signature that does not verify under the key it names.
    BadSignature,
    /// A key id that is not configured.
    UnknownKey,
    /// A configured key that is retired.
    RetiredKey,
    /// The key may not sign this action.
    RoleNotAllowed,
    /// `expires_at` has passed.
    Expired,
    /// `not_before` has not come yet.
    NotYetValid,
    /// `issued_at` lies further ahead of the gateway's clock than `max_clock_skew`.
    ClockSkew,
    /// A target is not a machine of this gateway.
    UnknownMachine,
    /// The command id was seen before; the stored result stands and nothing runs twice.
    Replayed,
    /// The machine was offline and the policy is to reject.
    MachineOffline,
}

impl RejectReason {
    /// The snake_case name used in audit records and results.
    pub fn name(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::RetiredKey => "retired_key",
            Self::RoleNotAllowed => "role_not_allowed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::ClockSkew => "clock_skew",
            Self::UnknownMachine => "unknown_machine",
            Self::Replayed => "replayed",
            Self::MachineOffline => "machine_offline",
        }
    }
}

/// A refused command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// What exactly, for people (never a secret: keys are named by id).
    pub detail: String,
    /// The command, when it parsed (not yet authenticated unless [`Self::authenticated`]).
    pub envelope: Option<Box<Envelope>>,
    /// Every signature the command needs verified under a trusted, current key.
    pub authenticated: bool,
}

impl Rejection {
    /// The command id, when the bytes parsed.
    pub fn command_id(&self) -> Option<Uuid> {
        self.envelope.as_ref().map(|e| e.id)
    }
}

/// A command that passed every check at the time given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub envelope: Envelope,
    /// Ids of the keys whose signatures verified, issuer first.
    pub signers: Vec<String>,
}

/// One trusted issuer key, loaded.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub id: String,
    pub key: VerifyingKey,
    pub roles: Vec<Action>,
    pub retired: bool,
}

/// The checks of `[commands]`, with the keys in memory.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<TrustedKey>,
    max_clock_skew: jiff::SignedDuration,
    bulk_threshold: usize,
    bulk_signatures: usize,
}

impl Verifier {
    /// Reads the configured public keys.
    pub fn load(settings: &CommandSettings) -> Result<Self, crate::journal::checkpoint::KeyError> {
        let mut keys = Vec::with_capacity(settings.keys.len());
        for key in &settings.keys {
            keys.push(TrustedKey {
                id: key.id.clone(),
                key: crate::journal::checkpoint::load_public_key(&key.public_key_file)?,
                roles: key.roles.clone(),
                retired: key.retired,
            });
        }
        Ok(Self::new(settings, keys))
    }

    /// With keys already loaded (tests, and keys from elsewhere than files).
    pub fn new(settings: &CommandSettings, keys: Vec<TrustedKey>) -> Self {
        Self {
            keys,
            // `max_clock_skew` is validated to at most an hour.
            max_clock_skew: jiff::SignedDuration::try_from(settings.max_clock_skew)
                .unwrap_or(jiff::SignedDuration::MAX),
            bulk_threshold: settings.bulk_threshold,
            bulk_signatures: settings.bulk_signatures,
        }
    }

    /// Checks `bytes` as received at `now`; `is_machine` says whether a registry id belongs
    /// to this gateway.
    pub fn check(
        &self,
        bytes: &[u8],
        now: Timestamp,
        is_machine: impl Fn(&str) -> bool,
    ) -> Result<Verified, Rejection> {
        let envelope = envelope::parse(bytes).map_err(|e| {
            let reason = match e {
                ParseError::Oversized { .. } => RejectReason::Oversized,
                ParseError::Malformed(_) => RejectReason::Malformed,
            };
            Rejection { reason, detail: e.to_string(), envelope: None, authenticated: false }
        })?;
        let refuse = |envelope: Envelope, reason, detail: String, authenticated| Rejection {
            reason,
            detail,
            envelope: Some(Box::new(envelope)),
            authenticated,
        };
        let signers = match self.authenticate(&envelope) {
            Ok(signers) => signers,
            Err((reason, detail)) => return Err(refuse(envelope, reason, detail, false)),
        };
        if now >= envelope.expires_at {
            let detail = format!("expired at {}", envelope.expires_at);
            return Err(refuse(envelope, RejectReason::Expired, detail, true));
        }
        if envelope.issued_at > now.saturating_add(self.max_clock_skew).unwrap_or(now) {
            let detail = format!("issued at {}, ahead of the gateway's {now}", envelope.issued_at);
            return Err(refuse(envelope, RejectReason::ClockSkew, detail, true));
        }
        if now < envelope.not_before {
            let detail = format!("not valid before {}", envelope.not_before);
            return Err(refuse(envelope, RejectReason::NotYetValid, detail, true));
        }
        if let Some(unknown) = envelope.targets.iter().find(|t| !is_machine(t)) {
            let detail = format!("{unknown} is not a machine of this gateway");
            return Err(refuse(envelope, RejectReason::UnknownMachine, detail, true));
        }
        Ok(Verified { envelope, signers })
    }

    /// Checks every signature and the number of them; the signer ids on success.
    fn authenticate(&self, envelope: &Envelope) -> Result<Vec<String>, (RejectReason, String)> {
        if envelope.signatures.is_empty() {
            return Err((RejectReason::MissingSignature, "the command is not signed".into()));
        }
        let mut signers: Vec<&TrustedKey> = Vec::new();
        for entry in &envelope.signatures {
            let Some(key) = self.keys.iter().find(|k| k.id == entry.key_id) else {
                return Err((
                    RejectReason::UnknownKey,
                    format!("key {} is not trusted", entry.key_id),
                ));
            };
            if key.retired {
                return Err((RejectReason::RetiredKey, format!("key {} is retired", key.id)));
            }
            if !envelope.verify_signature(&key.key, &entry.signature) {
                return Err((
                    RejectReason::BadSignature,
                    format!("the signature of key {} does not verify", key.id),
                ));
            }
            if !key.roles.contains(&envelope.action) {
                return Err((
                    RejectReason::RoleNotAllowed,
                    format!("key {} may not {}", key.id, envelope.action.name()),
                ));
            }
            // Two ids configured for one public key are one signer.
            if !signers.iter().any(|s| s.key == key.key) {
                signers.push(key);
            }
        }
        let needed =
            if envelope.targets.len() > self.bulk_threshold { self.bulk_signatures } else { 1 };
        if signers.len() < needed {
            return Err((
                RejectReason::MissingSignature,
                format!(
                    "a command for {} machines needs {needed} signatures from distinct keys",
                    envelope.targets.len()
                ),
            ));
        }
        Ok(signers.into_iter().map(|k| k.id.clone()).collect())
    }
}
