//! The upstream wire format: a journal record as a CloudEvents 1.0 JSON event (structured mode),
//! and a batch of them as `application/cloudevents-batch+json`. `docs/upstream-protocol.md` is the
//! reference, and its examples are checked against this code's output by tests.
//!
//! The canonical event's JSON is embedded byte for byte as `data`, never re-serialised, so what
//! the state system receives is exactly what the journal hash-chained. Sequence numbers travel
//! as decimal strings: CloudEvents integers are 32-bit, and journal seqs are not.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::journal::{Body, Entry};

/// CloudEvents media type of one event (MQTT payloads, documentation).
pub const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json";
/// CloudEvents media type of a JSON array of events (HTTPS bodies).
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// Who sends: the venue and the gateway within it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub venue: String,
    pub gateway: String,
    /// `slotgate/{venue}/{gateway}`, the CloudEvents `source`.
    pub source: String,
}

impl Origin {
    pub fn new(venue: &str, gateway: &str) -> Self {
        Self {
            venue: venue.to_owned(),
            gateway: gateway.to_owned(),
            source: format!("slotgate/{venue}/{gateway}"),
        }
    }
}

/// One encoded event, ready for a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub seq: u64,
    /// The machine's registry id, or the gateway id for gateway records.
    pub subject: String,
    /// The CloudEvents `id`: the event's idempotency key.
    pub id: String,
    /// A gateway alarm rather than a machine's event.
    pub alarm: bool,
    pub json: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("record {seq}: its canonical event is not readable: {source}")]
    Event { seq: u64, source: serde_json::Error },
}

/// What the envelope needs from the canonical event; the rest stays inside `data` untouched.
#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(borrow)]
    idempotency_key: Cow<'a, str>,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    machine_seq: u64,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    machine: MachineHead<'a>,
}

#[derive(Deserialize)]
struct MachineHead<'a> {
    #[serde(borrow)]
    registry_id: Cow<'a, str>,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    subject: &'a str,
    time: &'a str,
    datacontenttype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    machineseq: Option<String>,
    gatewayseq: String,
    eventclass: &'static str,
    historical: bool,
}

/// `envelope` as a JSON object with `"data":` + `data` as its last member. `data` must be one
/// valid JSON value; it is copied, not parsed again. One allocation of the final size: growing
/// the envelope's buffer and copying it again for `data` took a fifth of the encoding time
/// (1.5 → 1.2 µs per record, BENCHMARKS.md).
fn with_data(envelope: &CloudEvent<'_>, data: &[u8], seq: u64) -> Result<Vec<u8>, EncodeError> {
    let mut json = Vec::with_capacity(ENVELOPE_ROOM + data.len());
    serde_json::to_writer(&mut json, envelope)
        .map_err(|source| EncodeError::Event { seq, source })?;
    json.pop(); // the closing brace
    json.extend_from_slice(b",\"data\":");
    json.extend_from_slice(data);
    json.push(b'}');
    Ok(json)
}

/// Room for the envelope's attributes, ids and names included, with margin.
const ENVELOPE_ROOM: usize = 1024;

/// `record` as a CloudEvent; `None` for a compacted record, whose body is gone (a periodic meter
/// snapshot dropped under disk pressure: later snapshots carry the same meters).
pub fn encode(
    record: &Entry,
    origin: &Origin,
    historical: bool,
) -> Result<Option<Encoded>, EncodeError> {
    let seq = record.seq;
    let Some(body) = &record.body else { return Ok(None) };
    let class = record.class.name();
    let event = match body {
        Body::Event { canonical_json, .. } => {
            // Parsing the head reads (and so validates) the whole document, so its bytes can
            // be embedded as they are.
            let head: EventHead<'_> = serde_json::from_slice(canonical_json)
                .map_err(|source| EncodeError::Event { seq, source })?;
            let kind = format!("slotgate.{}", head.kind);
            let envelope = CloudEvent {
                specversion: "1.0",
                id: &head.idempotency_key,
                source: &origin.source,
                kind: &kind,
                subject: &head.machine.registry_id,
                time: &head.occurred_at,
                datacontenttype: "application/json",
                machineseq: Some(head.machine_seq.to_string()),
                gatewayseq: seq.to_string(),
                eventclass: class,
                historical,
            };
            let json = with_data(&envelope, canonical_json, seq)?;
            Encoded {
                seq,
                subject: head.machine.registry_id.into_owned(),
                id: head.idempotency_key.into_owned(),
                alarm: false,
                json,
            }
        }
        Body::Alarm { alarm, level, message } => {
            let id = format!("{}/{}/journal/{seq}", origin.venue, origin.gateway);
            let time = jiff::Timestamp::from_millisecond(record.appended_at_ms)
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
                .to_string();
            let data = serde_json::json!({ "alarm": alarm, "level": level, "message": message });
            let data =
                serde_json::to_vec(&data).map_err(|source| EncodeError::Event { seq, source })?;
            let envelope = CloudEvent {
                specversion: "1.0",
                id: &id,
                source: &origin.source,
                kind: "slotgate.gateway_alarm",
                subject: &origin.gateway,
                time: &time,
                datacontenttype: "application/json",
                machineseq: None,
                gatewayseq: seq.to_string(),
                eventclass: class,
                historical,
            };
            let json = with_data(&envelope, &data, seq)?;
            Encoded { seq, subject: origin.gateway.clone(), id, alarm: true, json }
        }
    };
    Ok(Some(event))
}

/// Events as one `application/cloudevents-batch+json` body.
pub fn batch<'a>(events: impl IntoIterator<Item = &'a Encoded>) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&event.json);
    }
    body.push(b']');
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Class;

    fn record(seq: u64, body: Option<Body>, class: Class) -> Entry {
        Entry { seq, appended_at_ms: 1_764_590_400_000, class, body }
    }

    const EVENT: &str = r#"{"schema_version":1,"event_id":"0f0e","idempotency_key":"UA-1/EGM-1/7","venue_id":"UA-1","machine":{"registry_id":"EGM-1","sas_address":1},"machine_seq":7,"occurred_at":"2026-12-01T12:00:00Z","kind":"game_ended","data":{"win":{"minor_units":40}}}"#;

    #[test]
    fn an_event_keeps_its_canonical_json_byte_for_byte_as_data() {
        let body = Body::Event { canonical_json: EVENT.as_bytes().to_vec(), raw: vec![1, 2] };
        let origin = Origin::new("UA-1", "gw-1");
        let encoded =
            encode(&record(42, Some(body), Class::Financial), &origin, true).unwrap().unwrap();
        assert_eq!(encoded.id, "UA-1/EGM-1/7");
        assert_eq!(encoded.subject, "EGM-1");
        let text = String::from_utf8(encoded.json.clone()).unwrap();
        assert!(text.ends_with(&format!(r#""data":{EVENT}}}"#)), "{text}");
        let v: serde_json::Value = serde_json::from_slice(&encoded.json).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "slotgate.game_ended");
        assert_eq!(v["source"], "slotgate/UA-1/gw-1");
        assert_eq!(v["time"], "2026-12-01T12:00:00Z");
        assert_eq!(v["machineseq"], "7");
        assert_eq!(v["gatewayseq"], "42");
        assert_eq!(v["eventclass"], "financial");
        assert_eq!(v["historical"], true);
        let b: serde_json::Value = serde_json::from_slice(&batch([&encoded, &encoded])).unwrap();
        assert_eq!(b.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn an_alarm_gets_a_gateway_scoped_id_and_a_compacted_record_is_not_sent() {
        let origin = Origin::new("UA-1", "gw-1");
        let alarm = Body::Alarm {
            alarm: "journal_usage".into(),
            level: "warning".into(),
            message: "50 %".into(),
        };
        let encoded =
            encode(&record(5, Some(alarm), Class::Alarm), &origin, false).unwrap().unwrap();
        assert_eq!(encoded.id, "UA-1/gw-1/journal/5");
        let v: serde_json::Value = serde_json::from_slice(&encoded.json).unwrap();
        assert_eq!(v["type"], "slotgate.gateway_alarm");
        assert_eq!(v["data"]["alarm"], "journal_usage");
        assert!(v.get("machineseq").is_none());
        assert_eq!(encode(&record(6, None, Class::Snapshot), &origin, false).unwrap(), None);
    }

    /// The ```json blocks of docs/upstream-protocol.md: an event, an alarm, a batch.
    fn documented_examples() -> Vec<serde_json::Value> {
        let doc = include_str!("../../docs/upstream-protocol.md");
        doc.split("```json")
            .skip(1)
            .map(|block| serde_json::from_str(block.split("```").next().unwrap()).unwrap())
            .collect()
    }

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn documented_examples_match_the_encoder() {
        let examples = documented_examples();
        assert_eq!(examples.len(), 3, "an event, an alarm and a batch");
        let origin = Origin::new("UA-KY-0042", "gw-1");
        let body = Body::Event { canonical_json: EVENT.as_bytes().to_vec(), raw: vec![] };
        let event = encode(&record(990_412, Some(body), Class::Financial), &origin, false)
            .unwrap()
            .unwrap();
        let alarm = Body::Alarm { alarm: "a".into(), level: "warning".into(), message: "m".into() };
        let alarm =
            encode(&record(990_500, Some(alarm), Class::Alarm), &origin, true).unwrap().unwrap();
        let real: Vec<serde_json::Value> =
            [&event, &alarm].iter().map(|e| serde_json::from_slice(&e.json).unwrap()).collect();
        for (doc, real) in examples[..2].iter().zip(&real) {
            assert_eq!(keys(doc), keys(real), "attributes of {doc}");
            for fixed in ["specversion", "source", "datacontenttype", "eventclass", "gatewayseq"] {
                assert_eq!(doc[fixed], real[fixed], "{fixed}");
            }
            assert!(doc["type"].as_str().unwrap().starts_with("slotgate."));
            assert!(doc["historical"].is_boolean() && doc["gatewayseq"].is_string());
        }
        assert_eq!(examples[1]["id"], real[1]["id"], "alarm ids");
        assert_eq!(examples[1]["type"], real[1]["type"]);
        assert_eq!(examples[0]["id"], examples[0]["data"]["idempotency_key"]);
        let batch = examples[2].as_array().unwrap();
        assert!(batch.iter().all(|e| keys(e) == keys(&real[0])), "batch elements are events");
    }

    #[test]
    fn an_unreadable_event_is_an_error_naming_its_seq() {
        let body = Body::Event { canonical_json: b"{".to_vec(), raw: vec![] };
        let origin = Origin::new("UA-1", "gw-1");
        let error = encode(&record(9, Some(body), Class::Financial), &origin, false).unwrap_err();
        assert!(error.to_string().starts_with("record 9:"), "{error}");
    }
}
