//! Synchronisation and implied ACK/NACK on the machine side (sas-protocol.md §4.2, §4.3): given
//! who a message is for and its first bytes, decide whether the machine processes it, ignores
//! it, or re-sends its previous reply, and which earlier report the message acknowledges.
//!
//! The rules, as MON's `HostAcknowledgementProvider` applies them:
//! - After power-up or a loss of sync, polls to this machine are ignored until a poll to another
//!   address or to address 0 has been seen; the next poll to this machine is then processed and
//!   synchronises the link.
//! - After a reply, the next message is an implied **ACK** unless it repeats the same poll (same
//!   address and command, i.e. the same first two bytes; one byte for a general poll). A global
//!   message is always an ACK.
//! - The first repeat is an implied **NACK**: the previous reply is re-sent unchanged and the poll
//!   is *not* executed again. The second repeat (third transmission) is the final NACK: no
//!   answer, and the reported item stays queued for a later report.
//! - No implied ACK for 30 s drops the link back to "waiting for another address".
//!
//! One deliberate difference from MON: MON demotes a synchronised link to "waiting for the first
//! poll" on every sync poll, which makes it ignore a second global message in a row (such as an
//! LP7F broadcast right after `80`). Here a synchronised link stays synchronised; the sync poll
//! only restarts the 30 s timer, which has the same effect on the timeout.

use std::time::{Duration, Instant};

/// No implied ACK for this long → link down (sas-protocol.md §4.1).
pub const IMPLIED_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Final NACK on the second repeat (the third transmission of the same poll).
const FINAL_NACK_REPEATS: u8 = 2;

/// Who a host message is addressed to, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Address 0: the sync poll `80` or a type G broadcast `00 …`.
    Global,
    /// A poll to another machine on the loop.
    OtherAddress,
    /// A general or long poll to this machine.
    Own,
}

impl Target {
    /// Classifies a message by its first byte for the machine at `address`.
    pub fn of(first_byte: u8, address: u8) -> Self {
        match first_byte & 0x7F {
            0 => Self::Global,
            a if a == address => Self::Own,
            _ => Self::OtherAddress,
        }
    }
}

/// The bytes that make two polls "the same poll" (sas-protocol.md §4.2).
pub fn ack_key(bytes: &[u8]) -> Vec<u8> {
    let len = match bytes.first() {
        Some(b) if b & 0x80 != 0 => 1,
        _ => 2,
    };
    bytes.iter().take(len).copied().collect()
}

/// What a reply reported, so that its acknowledgement can be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Nothing that waits for an acknowledgement (a long-poll answer, "no activity").
    Nothing,
    /// The queued exception with this ledger sequence number, reported as an RTE frame (`rte`)
    /// or as a single byte.
    Exception { id: u64, code: u8, rte: bool },
    /// The deferred LP21 signature message.
    RomSignature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncState {
    WaitingForOtherAddress,
    WaitingForFirstPoll,
    Synchronised,
}

/// The last reply, waiting for its implied ACK.
#[derive(Debug, Clone)]
struct Pending {
    key: Vec<u8>,
    reply: Vec<u8>,
    reported: Reported,
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not synchronised, or final NACK: no processing, no answer.
    Ignore,
    /// Process the message normally.
    Process,
    /// Implied NACK: send these bytes (the previous reply) again, execute nothing.
    Resend(Vec<u8>),
}

/// The result of [`Link::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub verdict: Verdict,
    /// A report the host acknowledged: dequeue it.
    pub acknowledged: Option<Reported>,
    /// A report the host gave up on (final NACK): keep it queued, report it again later.
    pub abandoned: Option<Reported>,
    /// This message synchronised the link.
    pub synchronised: bool,
}

impl Checked {
    fn verdict(verdict: Verdict) -> Self {
        Self { verdict, acknowledged: None, abandoned: None, synchronised: false }
    }
}

/// The machine's view of the host link.
#[derive(Debug)]
pub struct Link {
    state: SyncState,
    /// A machine that needs no sync (a vendor quirk) is never out of sync.
    needs_sync: bool,
    pending: Option<Pending>,
    repeats: u8,
    ack_deadline: Option<Instant>,
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

impl Link {
    /// A link as after power-up: not synchronised.
    pub fn new() -> Self {
        Self {
            state: SyncState::WaitingForOtherAddress,
            needs_sync: true,
            pending: None,
            repeats: 0,
            ack_deadline: None,
        }
    }

    /// A link of a machine that answers its own polls without a prior poll to another address
    /// (§11), at power-up and after a loss of sync alike.
    pub fn without_sync() -> Self {
        Self { state: SyncState::Synchronised, needs_sync: false, ..Self::new() }
    }

    /// Whether polls to this machine are being processed.
    pub fn is_synchronised(&self) -> bool {
        self.state == SyncState::Synchronised
    }

    /// When the implied-ACK timer runs out, if it runs.
    pub fn ack_deadline(&self) -> Option<Instant> {
        self.ack_deadline
    }

    /// Applies the ACK/NACK and sync rules to a message whose first bytes are `key`.
    pub fn check(&mut self, now: Instant, target: Target, key: &[u8]) -> Checked {
        let synchronised = self.is_synchronised();
        let Some(pending) = self.pending.as_ref().filter(|_| synchronised) else {
            return self.check_without_pending(now, target);
        };
        if target == Target::Global || pending.key != key {
            let acknowledged = self.pending.take().map(|p| p.reported);
            self.repeats = 0;
            self.ack_deadline = Some(now + IMPLIED_ACK_TIMEOUT);
            return Checked { acknowledged, ..Checked::verdict(Verdict::Process) };
        }
        self.repeats += 1;
        if self.repeats >= FINAL_NACK_REPEATS {
            self.repeats = 0;
            let abandoned = self.pending.take().map(|p| p.reported);
            return Checked { abandoned, ..Checked::verdict(Verdict::Ignore) };
        }
        Checked::verdict(Verdict::Resend(pending.reply.clone()))
    }

    fn check_without_pending(&mut self, now: Instant, target: Target) -> Checked {
        // A pending reply of an unsynchronised link can no longer be acknowledged.
        let abandoned = self.pending.take().map(|p| p.reported);
        self.repeats = 0;
        let mut checked = Checked { abandoned, ..Checked::verdict(Verdict::Ignore) };
        match (target, self.state) {
            (Target::Global | Target::OtherAddress, SyncState::Synchronised) => {
                self.ack_deadline = Some(now + IMPLIED_ACK_TIMEOUT);
                checked.verdict = Verdict::Process;
            }
            (Target::Global | Target::OtherAddress, _) => {
                self.state = SyncState::WaitingForFirstPoll;
            }
            (Target::Own, SyncState::WaitingForFirstPoll) => {
                self.state = SyncState::Synchronised;
                self.ack_deadline = Some(now + IMPLIED_ACK_TIMEOUT);
                checked.verdict = Verdict::Process;
                checked.synchronised = true;
            }
            (Target::Own, SyncState::Synchronised) => checked.verdict = Verdict::Process,
            (Target::Own, SyncState::WaitingForOtherAddress) => {}
        }
        checked
    }

    /// Records a reply that expects an implied ACK.
    pub fn replied(&mut self, key: Vec<u8>, reply: Vec<u8>, reported: Reported) {
        self.pending = Some(Pending { key, reply, reported });
        self.repeats = 0;
    }

    /// Link down (30 s without ACK, loop break, power loss): sync is lost and an unacknowledged
    /// report is abandoned, to be reported again after resync.
    pub fn lose_sync(&mut self) -> Option<Reported> {
        if self.needs_sync {
            self.state = SyncState::WaitingForOtherAddress;
        }
        self.ack_deadline = None;
        self.repeats = 0;
        self.pending.take().map(|p| p.reported)
    }
}

// Sans-IO code under test: any instant will do as its `now`.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: u8 = 1;

    fn synced(now: Instant) -> Link {
        let mut link = Link::new();
        assert_eq!(link.check(now, Target::Global, &[0x80]).verdict, Verdict::Ignore);
        let c = link.check(now, Target::Own, &[0x81]);
        assert_eq!(c.verdict, Verdict::Process);
        assert!(c.synchronised);
        link
    }

    #[test]
    fn own_polls_are_ignored_until_another_address_was_seen() {
        let now = Instant::now();
        let mut link = Link::new();
        assert_eq!(link.check(now, Target::Own, &[0x81]).verdict, Verdict::Ignore);
        assert_eq!(link.check(now, Target::Own, &[0x01, 0x1C]).verdict, Verdict::Ignore);
        assert_eq!(link.check(now, Target::OtherAddress, &[0x82]).verdict, Verdict::Ignore);
        assert!(!link.is_synchronised());
        assert_eq!(link.check(now, Target::Own, &[0x01, 0x1C]).verdict, Verdict::Process);
        assert!(link.is_synchronised());
    }

    #[test]
    fn a_repeat_resends_and_the_third_transmission_is_a_final_nack() {
        let now = Instant::now();
        let mut link = synced(now);
        link.replied(vec![0x81], vec![0x11], Reported::Exception { id: 7, code: 0x11, rte: false });
        let c = link.check(now, Target::Own, &[0x81]);
        assert_eq!(c.verdict, Verdict::Resend(vec![0x11]));
        let c = link.check(now, Target::Own, &[0x81]);
        assert_eq!(c.verdict, Verdict::Ignore);
        assert_eq!(c.abandoned, Some(Reported::Exception { id: 7, code: 0x11, rte: false }));
        // The fourth transmission is a new poll.
        assert_eq!(link.check(now, Target::Own, &[0x81]).verdict, Verdict::Process);
    }

    #[test]
    fn a_different_poll_or_a_global_message_acknowledges() {
        let now = Instant::now();
        let mut link = synced(now);
        link.replied(vec![0x81], vec![0x11], Reported::Exception { id: 7, code: 0x11, rte: false });
        let c = link.check(now, Target::Own, &[0x01, 0x1C]);
        assert_eq!(
            (c.verdict, c.acknowledged),
            (Verdict::Process, Some(Reported::Exception { id: 7, code: 0x11, rte: false }))
        );
        link.replied(vec![0x01, 0x1C], vec![0x01, 0x1C], Reported::Nothing);
        let c = link.check(now, Target::Global, &[0x80]);
        assert_eq!(c.acknowledged, Some(Reported::Nothing));
        assert!(link.is_synchronised(), "a sync poll keeps a synchronised link synchronised");
    }

    #[test]
    fn losing_sync_abandons_the_pending_report() {
        let now = Instant::now();
        let mut link = synced(now);
        assert_eq!(link.ack_deadline(), Some(now + IMPLIED_ACK_TIMEOUT));
        link.replied(vec![0x81], vec![0x11], Reported::Exception { id: 3, code: 0x11, rte: false });
        assert_eq!(link.lose_sync(), Some(Reported::Exception { id: 3, code: 0x11, rte: false }));
        assert_eq!(link.check(now, Target::Own, &[0x81]).verdict, Verdict::Ignore);
    }

    #[test]
    fn targets_and_keys_follow_the_first_byte() {
        assert_eq!(Target::of(0x80, ADDR), Target::Global);
        assert_eq!(Target::of(0x00, ADDR), Target::Global);
        assert_eq!(Target::of(0x81, ADDR), Target::Own);
        assert_eq!(Target::of(0x01, ADDR), Target::Own);
        assert_eq!(Target::of(0x82, ADDR), Target::OtherAddress);
        assert_eq!(ack_key(&[0x81]), [0x81]);
        assert_eq!(ack_key(&[0x01, 0x7F, 0x03, 0x15]), [0x01, 0x7F]);
    }
}
