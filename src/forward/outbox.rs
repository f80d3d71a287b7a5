//! Which journal records a destination is sent next, and how far it has acknowledged: the two
//! lanes, the replay budget and the contiguous-prefix cursor. No I/O and no clock: time is passed
//! in (quinn-proto's habit), so the whole policy is tested with made-up instants.
//!
//! - **Cursor.** The first seq the destination has not acknowledged. Acknowledgements may come
//!   out of order (two lanes, batches); the cursor moves only over a contiguous acknowledged
//!   prefix, and only the cursor is persisted in the journal. Acknowledgements above it are kept
//!   so a reconnect does not resend what already arrived.
//! - **Lanes.** Records that were already in the journal when the destination (re)connected —
//!   the backlog of an outage, a restart, or messages lost in flight with a dropped connection —
//!   go on the replay lane, oldest first, marked historical, within a token-bucket rate budget,
//!   so a backlog never floods the receiver. Records appended later go on the live lane. Within
//!   each lane seqs go out in order, so each machine's events do too.
//! - **Order** (requirements R8), a policy per destination:
//!   - [`Order::Strict`] (the default): journal order, end to end. While the replay lane has
//!     records to send, the boundary between the lanes follows the journal's head, so what is
//!     appended meanwhile queues behind the backlog (and is sent as historical, within the
//!     budget). Once the replay lane has sent everything, the boundary stays put, and the live
//!     lane opens when everything below it has been acknowledged, so that not even a second
//!     connection or a retried batch lets a newer event overtake an older one. This is stricter
//!     than "per machine": which machines a backlog holds is only known by reading all of it,
//!     and after an uplink outage every machine that played has records in it.
//!   - [`Order::LiveFirst`]: live records go out at once while the backlog drains beside them,
//!     so the state system sees the hall in real time during a long replay; each machine's
//!     events are in order within each lane, and the `historical` flag tells them apart.
//! - **In flight.** Sent and not yet acknowledged. A failed send puts its records back at the
//!   front of their lane; a reconnect puts everything unacknowledged back into the replay lane.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

/// The lane a record travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Appended after the destination (re)connected: sent at once (in strict order, once the
    /// backlog has been acknowledged).
    Live,
    /// In the journal before the destination (re)connected: sent within the replay budget.
    Replay,
}

/// The replay lane's budget: `rate` records per second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayBudget {
    pub rate: u32,
    pub burst: u32,
}

/// Whether new records wait for the backlog; module doc. Configured as `strict` or
/// `live-first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Requirements R8: strict until the state system says otherwise.
    #[default]
    Strict,
    LiveFirst,
}

/// A token bucket counted in millionths of a record, so refills stay exact in integers.
#[derive(Debug, Clone)]
struct TokenBucket {
    budget: ReplayBudget,
    micro_tokens: u64,
    refilled_at: Instant,
}

const MICRO: u64 = 1_000_000;

impl TokenBucket {
    fn new(budget: ReplayBudget, now: Instant) -> Self {
        Self { budget, micro_tokens: u64::from(budget.burst) * MICRO, refilled_at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let earned = (elapsed.as_micros()).saturating_mul(u128::from(self.budget.rate));
        let cap = u64::from(self.budget.burst.max(1)) * MICRO;
        self.micro_tokens =
            self.micro_tokens.saturating_add(u64::try_from(earned).unwrap_or(u64::MAX)).min(cap);
        self.refilled_at = now;
    }

    fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.micro_tokens / MICRO
    }

    fn take(&mut self, n: u64) {
        self.micro_tokens = self.micro_tokens.saturating_sub(n * MICRO);
    }

    /// When at least `n` tokens (at most a burst) will be available.
    fn tokens_at(&self, n: u64) -> Instant {
        let wanted = n.clamp(1, u64::from(self.budget.burst.max(1))) * MICRO;
        if self.micro_tokens >= wanted || self.budget.rate == 0 {
            return self.refilled_at;
        }
        let missing = wanted - self.micro_tokens;
        let micros = missing.div_ceil(u64::from(self.budget.rate));
        self.refilled_at + Duration::from_micros(micros)
    }
}

/// One destination's delivery state.
#[derive(Debug, Clone)]
pub struct Outbox {
    cursor: u64,
    acked: BTreeSet<u64>,
    in_flight: BTreeSet<u64>,
    /// Seqs from here on are live; below it, replay.
    live_from: u64,
    next_live: u64,
    next_replay: u64,
    bucket: TokenBucket,
    order: Order,
    /// Strict order: the replay lane has sent everything below `live_from`, which no longer
    /// follows the head.
    boundary_fixed: bool,
}

impl Outbox {
    /// A destination that has acknowledged everything below `cursor`, with the journal's durable
    /// records ending before `head`: everything in between is backlog.
    pub fn new(cursor: u64, head: u64, budget: ReplayBudget, order: Order, now: Instant) -> Self {
        let head = head.max(cursor);
        Self {
            cursor,
            acked: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            live_from: head,
            next_live: head,
            next_replay: cursor,
            bucket: TokenBucket::new(budget, now),
            order,
            boundary_fixed: false,
        }
    }

    /// The connection was (re-)established with the journal durable up to `head`: nothing is in
    /// flight any more, and everything below `head` not yet acknowledged is replayed.
    pub fn connected(&mut self, head: u64) {
        self.in_flight.clear();
        self.live_from = head.max(self.live_from).max(self.cursor);
        self.next_live = self.live_from;
        self.next_replay = self.cursor;
        self.boundary_fixed = false;
    }

    /// Strict order: until the replay lane has sent everything, records appended meanwhile join
    /// it instead of the live lane.
    fn follow_head(&mut self, head: u64) {
        if self.order != Order::Strict || self.boundary_fixed {
            return;
        }
        if self.next_replay >= self.live_from {
            self.boundary_fixed = true;
            return;
        }
        self.live_from = self.live_from.max(head);
        self.next_live = self.next_live.max(self.live_from);
    }

    /// Up to `room` records to send now on `lane`, with the journal durable up to `head`. Marked in
    /// flight. Replay records also need a token each.
    pub fn take(&mut self, lane: Lane, now: Instant, head: u64, room: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        self.follow_head(head);
        match lane {
            Lane::Live => {
                // Strict order: not before the backlog has been sent and acknowledged.
                if self.order == Order::Strict && (!self.boundary_fixed || self.replaying()) {
                    return seqs;
                }
                while seqs.len() < room && self.next_live < head {
                    let seq = self.next_live;
                    self.next_live += 1;
                    if self.acked.contains(&seq) || !self.in_flight.insert(seq) {
                        continue;
                    }
                    seqs.push(seq);
                }
            }
            Lane::Replay => {
                let tokens = self.bucket.available(now);
                let room = room.min(usize::try_from(tokens).unwrap_or(usize::MAX));
                let end = self.live_from.min(head);
                while seqs.len() < room && self.next_replay < end {
                    let seq = self.next_replay;
                    self.next_replay += 1;
                    if seq < self.cursor || self.acked.contains(&seq) || !self.in_flight.insert(seq)
                    {
                        continue;
                    }
                    seqs.push(seq);
                }
                self.bucket.take(seqs.len() as u64);
            }
        }
        seqs
    }

    /// Whether the replay lane has records waiting (sent or not) below the live lane.
    pub fn replaying(&self) -> bool {
        self.cursor < self.live_from
    }

    /// When the replay lane may send again, if it is waiting for tokens only.
    pub fn replay_ready_at(&self) -> Option<Instant> {
        self.replay_ready_for(1)
    }

    /// When the replay lane can send `n` records (fewer if fewer wait), if it has any to send.
    pub fn replay_ready_for(&self, n: u64) -> Option<Instant> {
        let unsent = self.live_from.saturating_sub(self.next_replay);
        (unsent > 0).then(|| self.bucket.tokens_at(n.min(unsent)))
    }

    /// `seq` arrived. Returns whether the cursor moved.
    pub fn acknowledged(&mut self, seq: u64) -> bool {
        self.in_flight.remove(&seq);
        if seq < self.cursor {
            return false;
        }
        self.acked.insert(seq);
        let before = self.cursor;
        while self.acked.remove(&self.cursor) {
            self.cursor += 1;
        }
        if self.next_replay < self.cursor {
            self.next_replay = self.cursor;
        }
        self.cursor != before
    }

    /// `seqs` were not delivered: they go back to the front of their lanes.
    pub fn failed(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            if !self.in_flight.remove(&seq) || self.acked.contains(&seq) {
                continue;
            }
            if seq >= self.live_from {
                self.next_live = self.next_live.min(seq);
            } else {
                self.next_replay = self.next_replay.min(seq);
            }
        }
    }

    /// The first seq not acknowledged.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Records of the replay lane not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        let acked_below = self.acked.range(..self.live_from).count() as u64;
        self.live_from.saturating_sub(self.cursor).saturating_sub(acked_below)
    }

    /// Records sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: ReplayBudget = ReplayBudget { rate: 10, burst: 5 };

    impl Outbox {
        fn new_live_first(cursor: u64, head: u64, budget: ReplayBudget, now: Instant) -> Self {
            Self::new(cursor, head, budget, Order::LiveFirst, now)
        }
    }

    #[test]
    fn in_strict_order_records_appended_during_a_replay_queue_behind_it() {
        let t0 = Instant::now();
        let budget = ReplayBudget { rate: 1000, burst: 4 };
        let mut o = Outbox::new(10, 14, budget, Order::Strict, t0);
        assert_eq!(o.take(Lane::Live, t0, 16, 100), Vec::<u64>::new(), "the backlog first");
        assert_eq!(o.take(Lane::Replay, t0, 16, 100), vec![10, 11, 12, 13], "the burst");
        assert_eq!(o.backlog(), 6, "14 and 15 joined the backlog");
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(o.take(Lane::Live, t1, 17, 100), Vec::<u64>::new());
        assert_eq!(o.take(Lane::Replay, t1, 17, 100), vec![14, 15, 16], "within the budget");
        // Everything is sent: the boundary stays at 17. The live lane waits for the acks.
        assert_eq!(o.take(Lane::Live, t1, 19, 100), Vec::<u64>::new(), "10..17 unacknowledged");
        assert_eq!(o.take(Lane::Replay, t1, 19, 100), Vec::<u64>::new(), "17, 18 are live");
        for seq in 10..16 {
            o.acknowledged(seq);
        }
        assert_eq!(o.take(Lane::Live, t1, 19, 100), Vec::<u64>::new(), "16 still in flight");
        o.acknowledged(16);
        assert_eq!(o.take(Lane::Live, t1, 19, 100), vec![17, 18]);
        assert_eq!(o.take(Lane::Live, t1, 20, 100), vec![19], "live from now on");
    }

    /// The forwarder's clock is tokio's: with time paused, a replay that waits for its budget
    /// wakes exactly when the next token is earned, not a tick earlier or later.
    #[tokio::test(start_paused = true)]
    async fn a_replay_waiting_for_its_budget_wakes_exactly_when_a_token_is_earned() {
        let t0 = Instant::now();
        let mut o = Outbox::new(0, 20, BUDGET, Order::Strict, t0);
        assert_eq!(o.take(Lane::Replay, Instant::now(), 20, 100).len(), 5, "the burst");
        let ready = o.replay_ready_at().unwrap();
        assert_eq!(ready - t0, Duration::from_millis(100), "10 per second: one every 100 ms");
        tokio::time::sleep_until(ready).await;
        assert_eq!(Instant::now() - t0, Duration::from_millis(100));
        assert_eq!(o.take(Lane::Replay, Instant::now(), 20, 100), vec![5]);
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(o.take(Lane::Replay, Instant::now(), 20, 100).is_empty(), "1 ms early");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(o.take(Lane::Replay, Instant::now(), 20, 100), vec![6]);
    }

    #[test]
    fn in_strict_order_without_a_backlog_live_records_go_out_at_once() {
        let t0 = Instant::now();
        let mut o = Outbox::new(5, 5, BUDGET, Order::Strict, t0);
        assert_eq!(o.take(Lane::Live, t0, 8, 100), vec![5, 6, 7]);
        assert_eq!(o.take(Lane::Live, t0, 9, 100), vec![8], "not held for 5..8's acks");
    }

    #[test]
    fn in_strict_order_a_reconnect_puts_new_records_behind_what_was_in_flight() {
        let t0 = Instant::now();
        let budget = ReplayBudget { rate: 1000, burst: 1000 };
        let mut o = Outbox::new(0, 0, budget, Order::Strict, t0);
        assert_eq!(o.take(Lane::Live, t0, 3, 100), vec![0, 1, 2]);
        o.acknowledged(1);
        o.connected(5);
        assert_eq!(o.take(Lane::Live, t0, 6, 100), Vec::<u64>::new(), "0 and 2 go first");
        assert_eq!(o.take(Lane::Replay, t0, 6, 100), vec![0, 2, 3, 4, 5]);
        for seq in [0, 2, 3, 4, 5] {
            o.acknowledged(seq);
        }
        assert_eq!(o.take(Lane::Live, t0, 7, 100), vec![6]);
    }

    #[test]
    fn a_fresh_outbox_replays_the_backlog_within_the_burst_and_sends_live_records_at_once() {
        let t0 = Instant::now();
        let mut o = Outbox::new_live_first(10, 30, BUDGET, t0);
        assert_eq!(o.backlog(), 20);
        assert_eq!(o.take(Lane::Live, t0, 30, 100), Vec::<u64>::new(), "nothing live yet");
        assert_eq!(o.take(Lane::Replay, t0, 30, 100), vec![10, 11, 12, 13, 14], "the burst");
        assert_eq!(o.take(Lane::Replay, t0, 30, 100), Vec::<u64>::new(), "no tokens left");
        assert_eq!(o.take(Lane::Live, t0, 33, 100), vec![30, 31, 32], "live goes out at once");
        // 10 records/s: one token every 100 ms.
        assert_eq!(o.replay_ready_at(), Some(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(o.take(Lane::Replay, t1, 33, 100), vec![15, 16, 17]);
    }

    #[test]
    fn the_replay_lane_can_wait_for_a_full_batch() {
        let t0 = Instant::now();
        let mut o = Outbox::new_live_first(0, 100, ReplayBudget { rate: 1000, burst: 50 }, t0);
        assert_eq!(o.take(Lane::Replay, t0, 100, 50).len(), 50);
        // 20 tokens take 20 ms at 1000/s; more than a burst is never asked for.
        assert_eq!(o.replay_ready_for(20), Some(t0 + Duration::from_millis(20)));
        assert_eq!(o.replay_ready_for(500), Some(t0 + Duration::from_millis(50)));
        o.take(Lane::Replay, t0 + Duration::from_millis(50), 100, 50);
        assert_eq!(o.replay_ready_for(20), None, "nothing left to replay");
    }

    #[test]
    fn the_cursor_moves_only_over_a_contiguous_acknowledged_prefix() {
        let t0 = Instant::now();
        let mut o = Outbox::new_live_first(0, 0, BUDGET, t0);
        assert_eq!(o.take(Lane::Live, t0, 4, 10), vec![0, 1, 2, 3]);
        assert!(!o.acknowledged(2));
        assert!(!o.acknowledged(1));
        assert_eq!(o.cursor(), 0);
        assert!(o.acknowledged(0));
        assert_eq!(o.cursor(), 3);
        assert!(o.acknowledged(3));
        assert_eq!(o.cursor(), 4);
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn a_reconnect_replays_what_was_in_flight_but_not_what_already_arrived() {
        let t0 = Instant::now();
        let mut o = Outbox::new_live_first(0, 0, ReplayBudget { rate: 1000, burst: 1000 }, t0);
        assert_eq!(o.take(Lane::Live, t0, 5, 10), vec![0, 1, 2, 3, 4]);
        o.acknowledged(1);
        o.acknowledged(3);
        o.connected(7);
        assert_eq!(o.in_flight(), 0);
        assert_eq!(o.backlog(), 5, "0, 2, 4, 5, 6");
        assert_eq!(o.take(Lane::Replay, t0, 7, 10), vec![0, 2, 4, 5, 6]);
        assert_eq!(o.take(Lane::Live, t0, 8, 10), vec![7]);
    }

    #[test]
    fn a_failed_send_goes_back_to_the_front_of_its_lane() {
        let t0 = Instant::now();
        let mut o = Outbox::new_live_first(0, 3, ReplayBudget { rate: 1000, burst: 1000 }, t0);
        assert_eq!(o.take(Lane::Replay, t0, 6, 10), vec![0, 1, 2]);
        assert_eq!(o.take(Lane::Live, t0, 6, 10), vec![3, 4, 5]);
        o.failed(&[4, 5]);
        o.failed(&[0, 1, 2]);
        assert_eq!(o.take(Lane::Live, t0, 6, 10), vec![4, 5]);
        assert_eq!(o.take(Lane::Replay, t0, 6, 2), vec![0, 1]);
        assert_eq!(o.take(Lane::Replay, t0, 6, 2), vec![2]);
    }

    #[test]
    fn nothing_is_sent_twice_while_in_flight_or_after_it_arrived() {
        let t0 = Instant::now();
        let mut o = Outbox::new_live_first(0, 0, BUDGET, t0);
        assert_eq!(o.take(Lane::Live, t0, 2, 10), vec![0, 1]);
        o.acknowledged(1);
        o.failed(&[0, 1]);
        assert_eq!(o.take(Lane::Live, t0, 2, 10), vec![0], "1 arrived already");
        assert_eq!(o.take(Lane::Live, t0, 2, 10), Vec::<u64>::new(), "0 is in flight");
    }

    #[test]
    fn the_replay_rate_holds_over_time_whatever_the_polling_pattern() {
        let t0 = Instant::now();
        let budget = ReplayBudget { rate: 1000, burst: 10 };
        let mut o = Outbox::new_live_first(0, 1_000_000, budget, t0);
        let mut sent = 0usize;
        // Ten seconds polled every 7 ms with room for a lot.
        let mut t = t0;
        while t < t0 + Duration::from_secs(10) {
            sent += o.take(Lane::Replay, t, 1_000_000, 10_000).len();
            t += Duration::from_millis(7);
        }
        assert!((9_900..=10_010).contains(&sent), "{sent} records in 10 s at 1000/s");
    }
}
