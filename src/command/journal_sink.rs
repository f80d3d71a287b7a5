//! The audit trail's place in the hash-chained journal: an [`AuditSink`] that appends each
//! [`AuditRecord`] as a `remote_command` canonical event and returns only once it is durable.
//!
//! # Which machine and sequence
//! A machine's `machine_seq` belongs to its line task (strictly increasing, no gaps, across
//! every kind), and the command path runs beside the line tasks, not in them. So the audit
//! events are filed under one gateway pseudo-machine, [`AUDIT_MACHINE`] (SAS address 0, which
//! no machine can have), with a sequence of its own that continues across restarts from the
//! journal ([`crate::journal::Journal::machine_state`]). One event is written per machine the
//! step concerns, the machine named at the head of `detail` (`machine <id>`); a step that
//! concerns no machine (bytes that did not parse) is one event without it.
//!
//! The sink blocks until the journal's writer has flushed: call it from a blocking context
//! (`tokio::task::spawn_blocking`), as the sled-backed command store is.

use super::audit::{AuditRecord, AuditSink};
use crate::event::{
    CanonicalEvent, MachineRef, RegistryId, SCHEMA_VERSION, Source, SourceKind, VenueId, event_id,
    idempotency_key,
};
use crate::journal::{Journal, NewRecord};

/// The registry id the remote-command audit events are filed under (configuration refuses it
/// for a machine).
pub const AUDIT_MACHINE: &str = crate::config::COMMAND_AUDIT_MACHINE;

/// Appends audit records to the journal, durably.
#[derive(Debug)]
pub struct JournalSink {
    journal: Journal,
    runtime: tokio::runtime::Handle,
    venue: VenueId,
    time_zone: jiff::tz::TimeZone,
    machine: MachineRef,
    next_seq: u64,
}

impl JournalSink {
    /// Picks the pseudo-machine's sequence up where the journal left it.
    pub fn open(
        journal: Journal,
        runtime: tokio::runtime::Handle,
        venue: VenueId,
        time_zone: jiff::tz::TimeZone,
    ) -> anyhow::Result<Self> {
        let registry_id = RegistryId::new(AUDIT_MACHINE)?;
        let (next_seq, _) = journal.machine_state(AUDIT_MACHINE)?;
        let machine = MachineRef { registry_id, sas_address: 0, asset_number: None, serial: None };
        Ok(Self { journal, runtime, venue, time_zone, machine, next_seq })
    }

    /// The canonical events of one record, numbered from `self.next_seq`.
    fn events(&self, record: &AuditRecord) -> Vec<CanonicalEvent> {
        let offset = self.time_zone.to_offset(record.at);
        let occurred_at_local = record.at.display_with_offset(offset).to_string();
        let targets: Vec<Option<&str>> = if record.machines.is_empty() {
            vec![None]
        } else {
            record.machines.iter().map(|m| Some(m.as_str())).collect()
        };
        let mut seq = self.next_seq;
        targets
            .into_iter()
            .map(|target| {
                let machine_seq = seq;
                seq = seq.saturating_add(1);
                let key = idempotency_key(&self.venue, &self.machine.registry_id, machine_seq);
                let mut one = record.clone();
                one.detail = match (target, &record.detail) {
                    (Some(m), Some(d)) => Some(format!("machine {m}: {d}")),
                    (Some(m), None) => Some(format!("machine {m}")),
                    (None, d) => d.clone(),
                };
                CanonicalEvent {
                    schema_version: SCHEMA_VERSION,
                    event_id: event_id(&key),
                    idempotency_key: key,
                    venue_id: self.venue.clone(),
                    machine: self.machine.clone(),
                    machine_seq,
                    occurred_at: record.at,
                    occurred_at_local: occurred_at_local.clone(),
                    egm_time: None,
                    game: None,
                    source: Source {
                        kind: SourceKind::Gateway,
                        code: None,
                        name: "remote_command".into(),
                    },
                    derived: false,
                    kind: one.event_kind(),
                }
            })
            .collect()
    }
}

impl AuditSink for JournalSink {
    fn append(&mut self, record: AuditRecord) -> Result<(), String> {
        let events = self.events(&record);
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        let records = events
            .iter()
            .map(|event| NewRecord::event(event, &[]))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        self.runtime.block_on(self.journal.append(records)).map_err(|e| e.to_string())?;
        // Only once durable: a failed append is retried under the same numbers.
        self.next_seq = self.next_seq.saturating_add(count);
        Ok(())
    }
}
