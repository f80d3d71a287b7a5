//! Commands a technician gives on the gateway itself (`slotgate machine disable|enable`, the
//! admin socket): the daemon signs them with the local technician key (`[commands] local_key`)
//! and submits them like any other inbound command, so they meet the same verification (the
//! key must be trusted, current and allowed the action) and leave the same audit trail, with
//! the caller's uid as the origin. The key gives no power of its own: remove its
//! `[[commands.keys]]` entry, or its role, and local commands are rejected like forged ones.

use ed25519_dalek::SigningKey;
use jiff::{SignedDuration, Timestamp};

use super::envelope::{Action, Envelope};
use crate::config::CommandSettings;

/// How long a local command stays valid: long enough to wait for a machine that is briefly
/// offline (the `queue` policy), short enough that a technician's disable does not fire at
/// the end of a long outage.
pub const VALIDITY: SignedDuration = SignedDuration::from_hours(1);

/// The local technician key and the trusted key id it signs as.
pub struct LocalIssuer {
    key_id: String,
    key: SigningKey,
}

impl std::fmt::Debug for LocalIssuer {
    // The secret key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl LocalIssuer {
    /// The configured local key; none if `[commands] local_key` is not set.
    pub fn load(settings: &CommandSettings) -> anyhow::Result<Option<Self>> {
        let issuer = settings.local_issuer().map_err(anyhow::Error::msg)?;
        Ok(issuer.map(|(key_id, key)| Self { key_id, key }))
    }

    /// The signed envelope of `action` on `machine` for `reason`, issued at `now` (whole
    /// seconds) under a fresh random id.
    pub fn envelope(&self, action: Action, machine: &str, reason: &str, now: Timestamp) -> Vec<u8> {
        let issued_at = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        let mut envelope = Envelope {
            id: uuid::Builder::from_random_bytes(id).into_uuid(),
            targets: vec![machine.to_owned()],
            action,
            reason: reason.to_owned(),
            issued_at,
            not_before: issued_at,
            expires_at: issued_at.saturating_add(VALIDITY).unwrap_or(issued_at),
            signatures: Vec::new(),
        };
        envelope.sign(&self.key_id, &self.key);
        envelope.to_json().into_bytes()
    }
}

/// The origin recorded for a command from the admin socket.
pub fn origin(uid: u32) -> String {
    format!("admin uid={uid}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::verify::{TrustedKey, Verifier};

    #[test]
    fn a_local_command_verifies_as_its_trusted_key_and_is_fresh_each_time() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let settings = CommandSettings {
            keys: Vec::new(),
            max_clock_skew: std::time::Duration::from_secs(60),
            bulk_threshold: 10,
            bulk_signatures: 2,
            offline_policy: crate::config::OfflinePolicy::Queue,
            confirm_window: std::time::Duration::from_secs(60),
            local_key: None,
        };
        let trusted = TrustedKey {
            id: "tech".into(),
            key: key.verifying_key(),
            roles: vec![Action::Disable],
            retired: false,
        };
        let verifier = Verifier::new(&settings, vec![trusted]);
        let issuer = LocalIssuer { key_id: "tech".into(), key };
        let now: Timestamp = "2026-12-07T03:00:00.750Z".parse().unwrap_or_default();
        let bytes = issuer.envelope(Action::Disable, "EGM-1", "door forced", now);
        let verified = verifier.check(&bytes, now, |m| m == "EGM-1");
        let Ok(verified) = verified else { panic!("{verified:?}") };
        assert_eq!(verified.signers, ["tech"]);
        assert_eq!(
            verified.envelope.expires_at.duration_since(verified.envelope.issued_at),
            VALIDITY
        );
        let again = issuer.envelope(Action::Disable, "EGM-1", "door forced", now);
        assert_ne!(parse_id(&bytes), parse_id(&again), "every local command has its own id");
        // The role decides, not the key's being local.
        let enable = issuer.envelope(Action::Enable, "EGM-1", "fixed", now);
        let refused = verifier.check(&enable, now, |m| m == "EGM-1").map(|_| ());
        assert_eq!(
            refused.map_err(|r| r.reason),
            Err(crate::command::verify::RejectReason::RoleNotAllowed)
        );
    }

    fn parse_id(bytes: &[u8]) -> Option<uuid::Uuid> {
        crate::command::envelope::parse(bytes).ok().map(|e| e.id)
    }
}
