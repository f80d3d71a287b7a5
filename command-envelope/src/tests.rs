#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;

/// The test vector of docs/upstream-protocol.md ("Remote commands"): issuers check their
/// encoder and signer against it.
fn vector() -> (SigningKey, Envelope) {
    let key = SigningKey::from_bytes(&[0x42; 32]);
    let envelope = Envelope {
        id: Uuid::parse_str("6f1c9a52-8d0e-4b7a-9c3e-2a5b8f4d1e07").unwrap(),
        targets: vec!["UA-0001".into(), "UA-0002".into()],
        action: Action::Disable,
        reason: "regulator order 17".into(),
        issued_at: "2026-12-07T03:00:00Z".parse().unwrap(),
        not_before: "2026-12-07T03:00:00Z".parse().unwrap(),
        expires_at: "2026-12-07T04:00:00Z".parse().unwrap(),
        signatures: Vec::new(),
    };
    (key, envelope)
}

const VECTOR_SIGNED_BYTES: &str = concat!(
    "736c6f74676174652072656d6f746520636f6d6d616e6420763100", // DOMAIN
    "6f1c9a528d0e4b7a9c3e2a5b8f4d1e07",                       // id
    "01",                                                     // disable
    "0002",
    "07",
    "55412d30303031",
    "07",
    "55412d30303032", // targets
    "0012",
    "726567756c61746f72206f72646572203137", // reason
    "000000006b162130",                     // issued_at 1796612400
    "000000006b162130",                     // not_before
    "000000006b162f40",                     // expires_at 1796616000
);

#[test]
fn canonical_encoding_and_signature_match_the_documented_vector() {
    let (key, mut envelope) = vector();
    assert_eq!(encode_hex(&envelope.signed_bytes()), VECTOR_SIGNED_BYTES);
    assert_eq!(
        encode_hex(key.verifying_key().as_bytes()),
        "2152f8d19b791d24453242e15f2eab6cb7cffa7b6a5ed30097960e069881db12"
    );
    envelope.sign("regulator-2026", &key);
    assert_eq!(encode_hex(&envelope.signatures[0].signature), VECTOR_SIGNATURE);
    let parsed = parse(envelope.to_json().as_bytes()).unwrap();
    assert_eq!(parsed, envelope);
    assert!(parsed.verify_signature(&key.verifying_key(), &parsed.signatures[0].signature));
}

/// Computed independently of this crate (Python `cryptography` 48, RFC 8032 Ed25519).
const VECTOR_SIGNATURE: &str = concat!(
    "5b24b71de89a1cab2ee4bc06391896eda0c9b9538fe18cd86cf7267a740e2c14",
    "85be2c4c43f8edd357dba03e9641e496b9b6c71001d24412581411961d1b6406",
);

#[test]
fn a_changed_field_breaks_the_signature() {
    let (key, mut envelope) = vector();
    envelope.sign("k", &key);
    let signature = envelope.signatures[0].signature;
    let public = key.verifying_key();
    let mut changed = envelope.clone();
    changed.action = Action::Enable;
    assert!(!changed.verify_signature(&public, &signature));
    let mut changed = envelope.clone();
    changed.targets.reverse();
    assert!(!changed.verify_signature(&public, &signature));
    let mut changed = envelope.clone();
    changed.expires_at = "2026-12-07T05:00:00Z".parse().unwrap();
    assert!(!changed.verify_signature(&public, &signature));
    // Moving bytes between the reason and a target is not the same message either.
    let mut changed = envelope;
    changed.targets = vec!["UA-0001".into(), "UA-0002r".into()];
    changed.reason = "egulator order 17".into();
    assert!(!changed.verify_signature(&public, &signature));
}

fn json_with(field: &str, value: &str) -> String {
    let (key, mut envelope) = vector();
    envelope.sign("k", &key);
    let mut v: serde_json::Value = serde_json::from_str(&envelope.to_json()).unwrap();
    v[field] = serde_json::from_str(value).unwrap();
    v.to_string()
}

#[test]
fn refuses_what_the_encoding_cannot_represent() {
    let malformed = |json: String| {
        assert!(matches!(parse(json.as_bytes()), Err(ParseError::Malformed(_))), "{json}");
    };
    malformed(json_with("action", r#""reboot""#));
    malformed(json_with("action", r#""Disable""#));
    malformed(json_with("targets", "[]"));
    malformed(json_with("targets", r#"["UA-1","UA-1"]"#));
    malformed(json_with("targets", r#"["UA/1"]"#));
    malformed(json_with("reason", r#""""#));
    malformed(json_with("reason", r#""line\nbreak""#));
    malformed(json_with("issued_at", r#""2026-12-07T03:00:00.5Z""#));
    malformed(json_with("expires_at", r#""2026-12-07T03:00:00Z""#));
    malformed(json_with("not_before", r#""2026-12-07T02:59:59Z""#));
    malformed(json_with("id", r#""not-a-uuid""#));
    malformed(json_with("signatures", r#"[{"key_id":"k","signature":"zz"}]"#));
    malformed(json_with("signatures", r#"[{"key_id":"k","signature":"00","extra":1}]"#));
    malformed(json_with("extra", "1"));
    malformed(r#"{"id":"6f1c9a52-8d0e-4b7a-9c3e-2a5b8f4d1e07"}"#.into());
    malformed("not json".into());
    malformed(String::new());
    let mut doubled = json_with("reason", r#""a""#);
    doubled.insert_str(1, r#""reason":"b","#);
    malformed(doubled);
}

#[test]
fn the_size_limit_is_checked_before_parsing() {
    let big = vec![b'x'; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(
        parse(&big),
        Err(ParseError::Oversized { len: MAX_ENVELOPE_BYTES + 1, limit: MAX_ENVELOPE_BYTES })
    );
    // The largest legal command fits under the limit.
    let (key, mut envelope) = vector();
    envelope.targets = (0..MAX_TARGETS).map(|i| format!("{i:0>64}")).collect();
    envelope.reason = "r".repeat(MAX_REASON_BYTES);
    for i in 0..MAX_SIGNATURES {
        envelope.sign(
            &"k".repeat(MAX_KEY_ID_LEN - 1)
                .chars()
                .chain([char::from(b'0' + i as u8)])
                .collect::<String>(),
            &key,
        );
    }
    let json = envelope.to_json();
    assert!(json.len() <= MAX_ENVELOPE_BYTES, "{}", json.len());
    assert_eq!(parse(json.as_bytes()).unwrap(), envelope);
}

#[test]
fn the_documented_envelope_is_the_test_vector_and_verifies() {
    let doc = include_str!("../../docs/upstream-protocol.md");
    let section = doc.split("### Envelope (JSON").nth(1).unwrap();
    let json = section.split("```\n").nth(1).unwrap();
    let (key, mut expected) = vector();
    expected.sign("regulator-2026", &key);
    let parsed = parse(json.as_bytes()).unwrap();
    assert_eq!(parsed, expected);
    assert!(parsed.verify_signature(&key.verifying_key(), &parsed.signatures[0].signature));
}
