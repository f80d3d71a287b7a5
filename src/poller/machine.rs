//! One machine on a line: its SAS session, its normalizer, and the polls the gateway schedules
//! for it (discovery at link-up, periodic meter snapshots, clock set and read-back). Pure state:
//! the line task owns the I/O and passes time in.
//!
//! A machine that reports more than one game (LP51 at link-up) has each game's configuration
//! read (LP53: its denomination) and each game's meters read with every snapshot (LP2F for game
//! N: coin in, coin out, jackpot, games played), so that reconciliation runs per game (R2).

use std::time::{Duration, Instant};

use firmware_protocols::FirmwareProfile;
use firmware_protocols::sas::message::{DateTime, MAX_SELECTED_METERS};
use firmware_protocols::sas::session::{HostSession, SessionEvent};
use firmware_protocols::sas::{Address, Exception, LongPoll, Reply};

use crate::event::{CanonicalEvent, RegistryId};
use crate::journal::Pressure;
use crate::normalizer::{MachineIdentity, NormalizeError, Normalizer, VenueSettings};

/// Most games whose configuration and meters are read per machine: a bound on the polls one
/// answer (LP51) can cause. SAS machines implement a handful; 64 covers every real cabinet.
const MAX_GAMES_READ: u16 = 64;

/// The meters read per game: what per-game reconciliation compares (sas-protocol.md §7.3).
const GAME_METERS: [u8; 4] = [0x00, 0x01, 0x02, 0x05];

/// How often the gateway asks for what machines do not volunteer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub meter_snapshot_interval: Duration,
    pub clock_sync_interval: Duration,
}

/// Most LP4D records read for one exception: the machine's validation buffer has indexes 01–1F
/// (sas-protocol.md §8), so a machine still reporting unread records after that many reads is
/// inventing them.
pub const MAX_VALIDATION_READS: u8 = 31;

/// Session, normalizer and schedule of one machine.
#[derive(Debug)]
pub struct MachinePoller {
    /// Drives the SAS exchanges; the line task sends what it asks for and feeds it input.
    pub(crate) session: HostSession,
    /// Turns session events into canonical events with gap-free sequence numbers.
    normalizer: Normalizer,
    registry_id: RegistryId,
    schedule: Schedule,
    time_zone: jiff::tz::TimeZone,
    /// Next periodic meter snapshot; `None` while the link is not up.
    next_snapshot: Option<Instant>,
    /// Next clock set and read-back; `None` while the link is not up.
    next_clock_sync: Option<Instant>,
    /// Games whose meters are read one by one (LP51's answer, bounded); 0 until read and for a
    /// single-game machine, whose game is the machine.
    games: u16,
    /// Bytes received since the last message to this machine: the raw source of the events
    /// its answer produces, kept with them in the journal.
    reply: Vec<u8>,
    /// LP4D records read since the exception that asked for them, or the last empty record.
    validation_reads: u8,
    /// Times a machine still had unread records after [`MAX_VALIDATION_READS`].
    validation_overflows: u64,
}

impl MachinePoller {
    /// A machine polled with `profile`, whose events continue after `next_seq` (and after the
    /// meter snapshots recovered from durable storage, oldest first).
    pub fn new(
        venue: VenueSettings,
        identity: MachineIdentity,
        profile: &FirmwareProfile,
        schedule: Schedule,
        next_seq: u64,
        snapshots: &[CanonicalEvent],
        now: Instant,
    ) -> Result<Self, NormalizeError> {
        let registry_id = identity.registry_id.clone();
        let address = identity.address;
        let time_zone = venue.time_zone.clone();
        let normalizer = if snapshots.is_empty() && next_seq == 0 {
            Normalizer::new(venue, identity, next_seq)
        } else {
            Normalizer::resume(venue, identity, next_seq, snapshots)?
        };
        Ok(Self {
            session: HostSession::new(address, profile, now),
            normalizer,
            registry_id,
            schedule,
            time_zone,
            next_snapshot: None,
            next_clock_sync: None,
            games: 0,
            reply: Vec::new(),
            validation_reads: 0,
            validation_overflows: 0,
        })
    }

    /// The machine's SAS address.
    pub fn address(&self) -> Address {
        self.session.address()
    }

    /// The machine's id in the state registry.
    pub fn registry_id(&self) -> &RegistryId {
        &self.registry_id
    }

    /// The sequence number this machine's next event gets.
    pub fn next_seq(&self) -> u64 {
        self.normalizer.next_seq()
    }

    /// Reports this machine sent that the gateway dropped as implausible: LP4D reads beyond
    /// [`MAX_VALIDATION_READS`] for one exception, and all-zero LP1B answers.
    pub fn dropped_reports(&self) -> u64 {
        self.validation_overflows.saturating_add(self.normalizer.empty_handpays())
    }

    /// A message is about to go to this machine: what comes back from now on is its answer.
    pub fn start_exchange(&mut self) {
        self.reply.clear();
    }

    /// A byte of this machine's answer (or a chirp).
    pub fn received(&mut self, byte: u8) {
        // Bounded: a babbling line must not grow memory; real answers are far shorter.
        if self.reply.len() < 512 {
            self.reply.push(byte);
        }
    }

    /// Queues the polls that are due by schedule. Periodic meter snapshots are low-value polling
    /// when the journal runs short of space: spaced out four times from `High`, skipped from
    /// `Critical` (link-up, resync and game-end snapshots are not affected).
    pub fn tick(&mut self, now: Instant, wall: jiff::Timestamp, pressure: Pressure) {
        if self.next_snapshot.is_some_and(|t| now >= t) {
            let interval = self.schedule.meter_snapshot_interval;
            match pressure {
                Pressure::Normal | Pressure::Elevated => {
                    self.queue_snapshot();
                    self.next_snapshot = Some(now + interval);
                }
                Pressure::High => {
                    self.queue_snapshot();
                    self.next_snapshot = Some(now + interval * 4);
                }
                Pressure::Critical | Pressure::Full => self.next_snapshot = Some(now + interval),
            }
        }
        if self.next_clock_sync.is_some_and(|t| now >= t) {
            self.queue_clock_sync(wall);
            self.next_clock_sync = Some(now + self.schedule.clock_sync_interval);
        }
    }

    /// The earliest moment this machine needs attention: its session's deadline or a schedule.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.session.poll_timeout(), self.next_snapshot, self.next_clock_sync]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes every session event out and turns it into canonical events. Link-up starts
    /// discovery (sas-protocol.md §13: serial and version, machine info and accounting
    /// denomination, a full meter snapshot, clock set and read-back).
    pub fn take_events(
        &mut self,
        now: Instant,
        wall: jiff::Timestamp,
        out: &mut Vec<(CanonicalEvent, Vec<u8>)>,
    ) {
        while let Some(event) = self.session.poll_event() {
            match &event {
                SessionEvent::LinkUp => self.discover(now, wall),
                SessionEvent::Reply {
                    poll: LongPoll::SendEnhancedValidation { function: 0 },
                    reply: Reply::EnhancedValidation(record),
                } => self.validation_read(record.is_empty()),
                SessionEvent::Exception(exception) => self.exception_seen(*exception),
                SessionEvent::RealTimeEvent(event) => self.exception_seen(event.exception()),
                SessionEvent::Reply { reply: Reply::NumberOfGames(games), .. } => {
                    self.games_learned(*games);
                }
                SessionEvent::LinkDown => {
                    self.next_snapshot = None;
                    self.next_clock_sync = None;
                }
                _ => {}
            }
            match self.normalizer.handle(wall, &event) {
                Ok(events) => out.extend(events.into_iter().map(|e| (e, self.reply.clone()))),
                // Only an exhausted sequence (2^64 events) gets here; nothing can be numbered.
                Err(error) => tracing::error!(
                    machine = %self.registry_id,
                    %error,
                    "An event could not be normalised and is lost."
                ),
            }
        }
    }

    /// One exception may stand for several records (two tickets printed before the follow-up
    /// went out): read on until the machine has none left, but no further than its buffer
    /// holds, or a hostile machine keeps the line busy inventing tickets.
    fn validation_read(&mut self, empty: bool) {
        if empty {
            self.validation_reads = 0;
            return;
        }
        self.validation_reads = self.validation_reads.saturating_add(1);
        if self.validation_reads < MAX_VALIDATION_READS {
            self.enqueue(LongPoll::SendEnhancedValidation { function: 0 });
            return;
        }
        self.validation_overflows = self.validation_overflows.saturating_add(1);
        self.validation_reads = 0;
        tracing::warn!(
            machine = %self.registry_id,
            reads = MAX_VALIDATION_READS,
            "LP4D still reports unread records after the whole validation buffer was read; \
             no further reads until the machine reports another exception."
        );
    }

    /// An exception that asks for LP4D starts a new count of reads.
    fn exception_seen(&mut self, exception: Exception) {
        if matches!(
            exception,
            Exception::CashoutTicketPrinted
                | Exception::HandpayValidated
                | Exception::TicketTransferComplete
        ) {
            self.validation_reads = 0;
        }
    }

    fn discover(&mut self, now: Instant, wall: jiff::Timestamp) {
        // LP1F ahead of everything, LP0E (which the session queues at link-up) included: money
        // needs the accounting denomination, and events start flowing once RTE is on.
        if let Err(error) = self.session.enqueue_first(LongPoll::SendMachineInfo) {
            tracing::warn!(machine = %self.registry_id, %error, "LP1F cannot be sent.");
        }
        self.enqueue(LongPoll::SendVersionAndSerial);
        self.enqueue(LongPoll::SendNumberOfGames);
        // What the machine supports (validation style, AFT, bonuses): part of `machine_info`.
        self.enqueue(LongPoll::SendEnabledFeatures { game: 0 });
        self.queue_snapshot();
        self.queue_clock_sync(wall);
        self.next_snapshot = Some(now + self.schedule.meter_snapshot_interval);
        self.next_clock_sync = Some(now + self.schedule.clock_sync_interval);
    }

    pub(crate) fn queue_snapshot(&mut self) {
        self.enqueue(LongPoll::SendMeters);
        self.enqueue(LongPoll::SendMeters10To15);
        // What the basic meters leave out: tickets in and out (cents and counts), bills in and
        // hand-paid cash-outs, so that every money event has a meter to reconcile against.
        let money = vec![0x0D, 0x0E, 0x11, 0x12, 0x0B, 0x03];
        self.enqueue(LongPoll::SendSelectedMeters { game: 0, meters: money });
        // What `aft_transfer`, `progressive_win` and `bonus_award` reconcile against: AFT in and
        // out per class (cents), machine- and attendant-paid progressives and external bonuses.
        let electronic = vec![0xA0, 0xA2, 0xA4, 0xB8, 0xBA, 0xBC, 0x1D, 0x1E, 0x20, 0x21];
        self.enqueue(LongPoll::SendSelectedMeters { game: 0, meters: electronic });
        // Bills in by denomination (0040–0057, $1 … $1 000 000), what each bill's `credits_in`
        // counts against: 24 meters, more than one LP2F may ask for.
        let bills: Vec<u8> = (0x40..=0x57).collect();
        for meters in bills.chunks(MAX_SELECTED_METERS) {
            self.enqueue(LongPoll::SendSelectedMeters { game: 0, meters: meters.to_vec() });
        }
        self.queue_game_snapshots();
    }

    /// LP51 answered: on a multi-game machine, each game's configuration (its denomination) and
    /// a first reading of its meters, the baseline of its reconciliation.
    fn games_learned(&mut self, games: u16) {
        let games = if games > 1 { games.min(MAX_GAMES_READ) } else { 0 };
        if games == self.games {
            return;
        }
        self.games = games;
        for game in 1..=games {
            self.enqueue(LongPoll::SendGameConfiguration { game });
        }
        self.queue_game_snapshots();
    }

    fn queue_game_snapshots(&mut self) {
        for game in 1..=self.games {
            self.enqueue(LongPoll::SendSelectedMeters { game, meters: GAME_METERS.to_vec() });
        }
    }

    /// LP7F with the venue's local time (SAS clocks have no zone, §8), then LP7E to read it back.
    fn queue_clock_sync(&mut self, wall: jiff::Timestamp) {
        let local = wall.to_zoned(self.time_zone.clone());
        let set = DateTime {
            year: local.year().clamp(0, 9999) as u16,
            month: local.month() as u8,
            day: local.day() as u8,
            hour: local.hour() as u8,
            minute: local.minute() as u8,
            second: local.second() as u8,
        };
        self.enqueue(LongPoll::SetDateTime(set));
        self.enqueue(LongPoll::SendDateTime);
    }

    fn enqueue(&mut self, poll: LongPoll) {
        if let Err(error) = self.session.enqueue(poll) {
            // The profile or the machine rules the poll out; the session reported it already.
            tracing::debug!(machine = %self.registry_id, %error, "Poll not queued.");
        }
    }
}

/// A machine at `address` on the generic profile, for the poller's tests.
#[cfg(test)]
pub(super) fn test_poller(address: u8, now: Instant) -> MachinePoller {
    use crate::event::{Currency, VenueId};
    use firmware_protocols::sas::Address;
    let venue = VenueSettings {
        venue_id: VenueId::new("hall-1").unwrap(),
        currency: Currency::UAH,
        time_zone: jiff::tz::TimeZone::UTC,
        clock_drift_threshold: Duration::from_secs(60),
        ticket_numbers: Default::default(),
    };
    let identity = MachineIdentity {
        registry_id: RegistryId::new(format!("UA-000{address}")).unwrap(),
        address: Address::new(address).unwrap(),
        asset_number: None,
        denomination_code: None,
    };
    let schedule = Schedule {
        meter_snapshot_interval: Duration::from_secs(3600),
        clock_sync_interval: Duration::from_secs(3600),
    };
    let profile = FirmwareProfile::generic();
    MachinePoller::new(venue, identity, &profile, schedule, 5, &[], now).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Sans-IO code under test: any instant will do as its `now`.
    #[allow(clippy::disallowed_methods)]
    fn poller() -> MachinePoller {
        test_poller(1, Instant::now())
    }

    /// (LP53 games, LP2F games other than 0) in the session's queue.
    fn per_game_polls(poller: &MachinePoller) -> (Vec<u16>, Vec<u16>) {
        let mut configurations = Vec::new();
        let mut meters = Vec::new();
        for poll in poller.session.queued() {
            match poll {
                LongPoll::SendGameConfiguration { game } => configurations.push(*game),
                LongPoll::SendSelectedMeters { game, meters: codes } if *game != 0 => {
                    assert_eq!(codes, &GAME_METERS);
                    meters.push(*game);
                }
                _ => {}
            }
        }
        (configurations, meters)
    }

    #[test]
    fn a_multi_game_machine_gets_each_games_configuration_and_meters_read() {
        let mut machine = poller();
        machine.games_learned(3);
        assert_eq!(per_game_polls(&machine), (vec![1, 2, 3], vec![1, 2, 3]));
        // The same answer again (a new link-up) queues nothing more; every snapshot does.
        machine.games_learned(3);
        assert_eq!(per_game_polls(&machine), (vec![1, 2, 3], vec![1, 2, 3]));
        machine.queue_snapshot();
        assert_eq!(per_game_polls(&machine).1, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn a_snapshot_reads_bills_per_denomination_in_lp2fs_the_spec_allows() {
        let mut machine = poller();
        machine.queue_snapshot();
        let mut bills = Vec::new();
        for poll in machine.session.queued() {
            if let LongPoll::SendSelectedMeters { game: 0, meters } = poll {
                assert!(meters.len() <= MAX_SELECTED_METERS, "{meters:?}");
                bills.extend(meters.iter().copied().filter(|code| (0x40..=0x57).contains(code)));
            }
        }
        assert_eq!(bills, (0x40..=0x57).collect::<Vec<u8>>());
    }

    #[test]
    fn a_single_game_machine_is_its_game_and_a_huge_count_is_bounded() {
        let mut single = poller();
        single.games_learned(1);
        single.queue_snapshot();
        assert_eq!(per_game_polls(&single), (vec![], vec![]));
        let mut huge = poller();
        huge.games_learned(9999);
        let (configurations, meters) = per_game_polls(&huge);
        assert_eq!((configurations.len(), meters.len()), (64, 64));
    }
}
