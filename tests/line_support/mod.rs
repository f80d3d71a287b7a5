//! Helpers shared by the tests that run one line task against a scripted machine on an
//! in-memory line (`poller_resume`, `follow_up_restart`): the machine's poller as the daemon
//! builds it, and the machine end of the line.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use firmware_protocols::FirmwareProfile;
use firmware_protocols::sas::Address;
use firmware_protocols::sas::codec::RequestDecoder;
use jiff::tz::TimeZone;
use slotgate::event::{Currency, RegistryId, VenueId};
use slotgate::normalizer::{MachineIdentity, VenueSettings};
use slotgate::poller::{MachinePoller, Schedule};
use slotgate::transport::{Character, Connect, Line, MemoryLine, TransportError, WakeupMethod};

/// The registry id of the one machine, at address 1.
pub const MACHINE: &str = "UA-0001";

/// The poller of the machine at address 1, generic profile with bare exceptions (RTE off, so
/// bills and game ends need their follow-up polls), numbering its events from `next_seq`.
pub fn machine(next_seq: u64, now: std::time::Instant) -> MachinePoller {
    let venue = VenueSettings {
        venue_id: VenueId::new("hall-1").unwrap(),
        currency: Currency::UAH,
        time_zone: TimeZone::UTC,
        clock_drift_threshold: Duration::from_secs(60),
        ticket_numbers: Default::default(),
    };
    let identity = MachineIdentity {
        registry_id: RegistryId::new(MACHINE).unwrap(),
        address: Address::new(1).unwrap(),
        asset_number: None,
        denomination_code: None,
    };
    let mut profile = FirmwareProfile::generic();
    profile.rte.enable = false;
    let schedule = Schedule {
        meter_snapshot_interval: Duration::from_secs(3600),
        clock_sync_interval: Duration::from_secs(3600),
    };
    MachinePoller::new(venue, identity, &profile, schedule, next_seq, &[], now).unwrap()
}

/// Every canonical event in `journal`, oldest first, as JSON.
pub fn journal_events(journal: &slotgate::journal::Journal) -> Vec<serde_json::Value> {
    journal
        .read(0, 100_000)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.body {
            Some(slotgate::journal::Body::Event { canonical_json, .. }) => {
                serde_json::from_slice(&canonical_json).ok()
            }
            _ => None,
        })
        .collect()
}

/// The next message the machine end receives, framed as a machine frames it.
pub async fn next_message(egm: &mut MemoryLine, framer: &mut RequestDecoder) -> Vec<u8> {
    let mut input = Vec::new();
    loop {
        tokio::time::timeout(Duration::from_secs(5), egm.recv(&mut input)).await.unwrap().unwrap();
        let now = std::time::Instant::now();
        for c in input.drain(..) {
            if let Some(request) = framer.push(now, c.byte, Some(c.wakeup)) {
                return request.bytes;
            }
        }
    }
}

/// Bytes as the machine sends them (no wakeup bit).
pub fn chars(bytes: &[u8]) -> Vec<Character> {
    bytes.iter().map(|&byte| Character { byte, wakeup: false }).collect()
}

/// Hands out one end of an in-memory line, once, `delay` after it is asked; later attempts
/// never end.
#[derive(Clone)]
pub struct OnceLine {
    line: Arc<Mutex<Option<MemoryLine>>>,
    delay: Duration,
}

impl OnceLine {
    pub fn new(line: MemoryLine, delay: Duration) -> Self {
        Self { line: Arc::new(Mutex::new(Some(line))), delay }
    }
}

impl Connect for OnceLine {
    type Line = MemoryLine;

    async fn connect(&self) -> Result<MemoryLine, TransportError> {
        tokio::time::sleep(self.delay).await;
        let line = self.line.lock().unwrap().take();
        match line {
            Some(line) => Ok(line),
            None => std::future::pending().await,
        }
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    fn planned_wakeup(&self) -> WakeupMethod {
        WakeupMethod::Framed
    }
}
