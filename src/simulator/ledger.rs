//! The ground-truth ledger: what really happened on every simulated machine, one JSON object per
//! line. End-to-end tests compare what the gateway reports with this file, so every record names
//! its machine completely and every amount is an integer.
//!
//! # Schema
//!
//! Every line is one object with these common fields:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `seq` | integer | per-machine record number, 1, 2, 3 … without gaps, in the order things happened |
//! | `time` | string | when it happened, RFC 3339 UTC with milliseconds (`2026-03-01T12:05:09.123Z`) |
//! | `machine` | integer | index of the machine in the simulation, from 0 |
//! | `address` | integer | SAS address (1–127) |
//! | `serial` | string | serial number, as LP54 reports it |
//! | `type` | string | one of the record types below |
//!
//! Credits are accounting-denomination credits (`denomination` = SAS code, sas-protocol.md §7.1).
//! Exception `code`s are decimal numbers of the SAS code byte (`126` = 0x7E).
//!
//! | `type` | further fields | written when |
//! |---|---|---|
//! | `start` | `seed`, `denomination`, `credit_minor_units`, `queue_size`, `rte`, `egm_clock_offset_secs`, `meters` | the machine is created (meters may start non-zero, see `--initial-meters`) |
//! | `game` | `game_number` (per machine, from 1, never reset), `game` (game number, 1..N, see `--games`; 1 on a single-game machine), `bet` and `win` in credits of the game's `denomination` (the accounting one unless `--games` says otherwise; the meters move by them × the game's denomination / the accounting one), `started_at`, `paid_by` (`machine` or `handpay`) | a game **ends**; a game still running at stop appears only in `stop.game_in_progress` and as its 7E exception |
//! | `bill` | `value` (currency units), `bill_code` (SAS bill denomination code), `credits`, `game` (the game selected when the money moved; `handpay`, `ticket_out` and `ticket_in` have it too: a jackpot's is the game that won it) | a bill is stacked |
//! | `cashout` | `credits`, `paid_by` (`machine` or `handpay`) | the player cashes out (a handpay cash-out is paid at its `handpay` record) |
//! | `handpay` | `kind` (`jackpot`, `cancelled_credits` or `progressive`), `credits`, `cents`, `receipt` (validation number of the printed receipt, or `null` without validation), `level` (only for `progressive`: the SAS progressive level, 1–32) | an attendant pays and resets a handpay (3E, if a receipt was printed, then 52) |
//! | `ticket_out` | `validation_number` (18 digits: system ID + 16), `validation_type` (LP4D type, 0 = cashable cash-out ticket), `cents`, `credits` | a cash-out ticket is printed (3D); the matching `cashout` record has `paid_by` = `ticket` |
//! | `ticket_in` | `validation_number`, `cents`, `credits` | a ticket is inserted (67) and redeemed by the validation system onto the credit meter (68) |
//! | `aft_transfer` | `direction` (`to_machine` or `to_host`), `class` (`cashable` or `non_restricted`), `transfer_type` (LP72 type: 0 in-house to the machine, 128 in-house to the host), `cents`, `credits`, `transaction_id` | the cashless system completed a transfer the player asked for (69); a cash-out to the host also has a `cashout` record with `paid_by` = `aft` |
//! | `progressive` | `group`, `level`, `cents`, `credits`, `game`, `paid_by` (`machine` or `handpay`) | a SAS progressive level is hit at a game end: paid to the credit meter (56), or at or above the handpay limit by an attendant (51; then a `handpay` record of kind `progressive` when paid) |
//! | `bonus` | `credits`, `cents`, `game` | the bonusing system awards a legacy bonus at a game end, paid to the credit meter (7C) |
//! | `exception` | `exception_seq` (per machine, from 1), `code`, `legacy_code`, `name`, `priority`, `event` | an exception is queued. `code` is what an RTE frame carries, `legacy_code` the single byte reported without RTE (they differ only for bills: 4F vs 47–50). `event` holds the RTE payload for 7E (`credits_wagered`, `total_coin_in`, `wager_type`, `progressive_group`), 7F (`win`), 8C (`game`) and 4F (`country`, `denomination_code`, `count`), else `null` |
//! | `exception_acknowledged` | `exception_seq`, `code`, `name`, `rte` (reported as an RTE frame) | the host implied-ACKed the report: the exception left the queue |
//! | `exception_lost` | `exception_seq`, `code`, `name`, `reason` (`overflow` or `ram_clear`) | the exception left the queue without being acknowledged |
//! | `command` | `command` (long-poll code), `name` (`shutdown`, `startup`, `rte`, `set_clock`), `broadcast`, `rte` (for `rte`), `date_time` (for `set_clock`, `YYYY-MM-DDTHH:MM:SS` as sent) | a host command is executed (an implied-NACK repeat is not executed again and not recorded) |
//! | `fault` | `fault` (`corrupt_crc`, `drop_reply`, `late_reply`, `inter_byte_gap`, `busy`, `power_cycle`, `ram_clear`, `overflow_burst`), `detail` | a fault is injected |
//! | `power` | `state` (`lost` or `applied`) | power goes off or comes back |
//! | `meters_reset` | `reason` (`ram_clear`), `before` (meters) | all meters are zeroed; the `before` values are gone from the machine |
//! | `link` | `state` (`synchronised`, `sync_lost`, `loop_break`), `reason` | the machine's view of the host link changes |
//! | `stop` | `meters`, `queued_exceptions`, `game_in_progress` (game number or `null`) | the simulation stops |
//!
//! `meters` objects hold every meter by name (`coin_in`, `coin_out`, `jackpot`,
//! `handpaid_cancelled_credits`, `cancelled_credits`, `games_played`, `games_won`, `games_lost`,
//! `bill_credits`, `current_credits`, `games_since_power_up`, `games_since_door_closed`,
//! `slot_door_openings`, `power_resets`, `bills_accepted` = 24 counts by bill code, `ticket_in_cents`, `tickets_in`, `ticket_in_credits`,
//! `ticket_out_cents`, `tickets_out`, `ticket_out_credits`, `aft_in_cents`, `aft_in_count`,
//! `aft_out_cents`, `aft_out_count` (three each: cashable, restricted, non-restricted),
//! `aft_in_credits`, `aft_out_credits`, `machine_paid_progressive`, `machine_paid_bonus`).
//!
//! # Reconciling
//!
//! For one machine, from its `start` record to its `stop` record (or to a `meters_reset`, after
//! which the meters restart from zero), the meters move exactly by what the records say:
//! - `coin_in` by Σ `credits_wagered` of its 7E `exception` records (one per game started; on
//!   a multi-denomination game × its denomination / the accounting one), `games_played` by
//!   their count; per game (LP2F/6F for game N) the same, counting only that game's records; `games_won` + `games_lost` by the number of `game` records;
//! - `coin_out` by Σ `win` of `game` records with `paid_by` = `machine`; `jackpot` by Σ
//!   `credits` of `handpay` records of kind `jackpot` (a handpay win is in its `game` record at
//!   once, and in the meter when the attendant pays it);
//! - `cancelled_credits` by Σ `credits` of `cashout` records paid by the machine plus Σ
//!   `credits` of `handpay` records of kind `cancelled_credits` (meter 0004 counts every
//!   cash-out; the hand-paid ones are in 0003 as well); `handpaid_cancelled_credits` by the
//!   latter alone; `bill_credits` by Σ `credits` of `bill` records;
//! - `ticket_out_cents` (000E), `tickets_out`, `ticket_out_credits` by Σ `cents`, the count and
//!   Σ `credits` of `ticket_out` records; `ticket_in_cents` (000D), `tickets_in`,
//!   `ticket_in_credits` likewise from `ticket_in` records; drop (0024) = bills + tickets in;
//! - `aft_in_cents` (00A0 / 00A4 by class), `aft_out_cents` (00B8) by Σ `cents` of
//!   `aft_transfer` records per direction and class; `machine_paid_progressive` (001D) and
//!   `machine_paid_bonus` (001E) by Σ `credits` of `progressive` and `bonus` records, which
//!   `coin_out` counts as well;
//! - `current_credits` = bills + tickets in + AFT in + machine-paid wins, progressives and
//!   bonuses − bets − cash-outs (all kinds).
//!
//! The host received an exception exactly when an `exception_acknowledged` record names its
//! `exception_seq`. An exception can be both `exception_lost` and, later,
//! `exception_acknowledged`: the queue dropped it while its report waited for the implied ACK,
//! so the host did get it. The 7E `total_coin_in` is recorded as the frame carries it
//! (modulo 10^8); `credits_wagered` is never truncated.

use std::path::PathBuf;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::meters::Meters;

/// Records buffered between the machines and the writer before machines wait.
const CHANNEL_CAPACITY: usize = 4_096;

/// One ledger line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub seq: u64,
    pub time: String,
    pub machine: u16,
    pub address: u8,
    pub serial: String,
    #[serde(flatten)]
    pub entry: Entry,
}

/// Who paid a win or a cash-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaidBy {
    Machine,
    Handpay,
    /// A printed cash-out ticket (machines with validation).
    Ticket,
    /// An AFT transfer to the cashless system.
    Aft,
}

/// What a handpay paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HandpayKind {
    Jackpot,
    CancelledCredits,
    /// A SAS progressive level too large for the machine to pay (LP1B reports its level and
    /// amount in cents).
    Progressive,
}

/// Why an exception left the queue unacknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossReason {
    Overflow,
    RamClear,
}

/// Injected faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    CorruptCrc,
    DropReply,
    LateReply,
    InterByteGap,
    Busy,
    PowerCycle,
    RamClear,
    OverflowBurst,
}

/// Power transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    Lost,
    Applied,
}

/// Link transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Synchronised,
    SyncLost,
    LoopBreak,
}

/// RTE payload of an exception (sas-protocol.md §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EventData {
    GameStarted { credits_wagered: u64, total_coin_in: u64, wager_type: u8, progressive_group: u8 },
    GameEnded { win: u64 },
    GameSelected { game: u16 },
    BillAccepted { country: u8, denomination_code: u8, count: u64 },
}

/// The type-specific part of a record.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    Start {
        seed: u64,
        denomination: u8,
        credit_minor_units: u64,
        queue_size: usize,
        rte: bool,
        egm_clock_offset_secs: i64,
        meters: Meters,
    },
    Game {
        game_number: u64,
        game: u16,
        bet: u64,
        win: u64,
        denomination: u8,
        started_at: String,
        paid_by: PaidBy,
    },
    Bill {
        value: u64,
        bill_code: u8,
        credits: u64,
        /// The game selected when the money moved (the one the host's 8C named last).
        game: u16,
    },
    Cashout {
        credits: u64,
        paid_by: PaidBy,
    },
    Handpay {
        kind: HandpayKind,
        credits: u64,
        cents: u64,
        /// The validation number of the receipt printed for it (machines with validation).
        receipt: Option<String>,
        /// The progressive level (01–20) of a `progressive` handpay.
        #[serde(skip_serializing_if = "Option::is_none")]
        level: Option<u8>,
        game: u16,
    },
    TicketOut {
        validation_number: String,
        validation_type: u8,
        cents: u64,
        credits: u64,
        game: u16,
    },
    TicketIn {
        validation_number: String,
        cents: u64,
        credits: u64,
        game: u16,
    },
    Exception {
        exception_seq: u64,
        code: u8,
        legacy_code: u8,
        name: &'static str,
        priority: bool,
        event: Option<EventData>,
    },
    ExceptionAcknowledged {
        exception_seq: u64,
        code: u8,
        name: &'static str,
        rte: bool,
    },
    ExceptionLost {
        exception_seq: u64,
        code: u8,
        name: &'static str,
        reason: LossReason,
    },
    Command {
        command: u8,
        name: &'static str,
        broadcast: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        rte: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        date_time: Option<String>,
    },
    Fault {
        fault: FaultKind,
        detail: String,
    },
    Power {
        state: PowerState,
    },
    MetersReset {
        reason: &'static str,
        before: Meters,
    },
    Link {
        state: LinkState,
        reason: &'static str,
    },
    AftTransfer {
        /// `to_machine` (type 00, in-house to the machine) or `to_host` (type 80).
        direction: &'static str,
        /// `cashable` or `non_restricted`.
        class: &'static str,
        transfer_type: u8,
        cents: u64,
        credits: u64,
        transaction_id: String,
    },
    Progressive {
        group: u8,
        level: u8,
        cents: u64,
        credits: u64,
        game: u16,
        /// `machine` (to the credit meter, 56 and LP85) or `handpay` (51 and LP1B; paid at its
        /// `handpay` record).
        paid_by: PaidBy,
    },
    Bonus {
        credits: u64,
        cents: u64,
        game: u16,
    },
    Stop {
        meters: Meters,
        queued_exceptions: usize,
        game_in_progress: Option<u64>,
    },
}

/// Where machines send their records: a file writer, or nowhere.
#[derive(Debug, Clone)]
pub struct LedgerSink {
    tx: Option<mpsc::Sender<Record>>,
}

impl LedgerSink {
    /// A sink that drops everything (no `--ledger`).
    pub fn discard() -> Self {
        Self { tx: None }
    }

    /// Hands a record to the writer; waits when the writer is behind, so no record is lost.
    pub async fn send(&self, record: Record) {
        if let Some(tx) = &self.tx {
            // The writer only stops once every sink is dropped, so this cannot fail before then;
            // if the writer died of an I/O error, that error is reported when it is joined.
            let _ = tx.send(record).await;
        }
    }
}

/// Opens `path` (truncating it) and starts the writer task. The task ends, after flushing and
/// syncing the file, once every [`LedgerSink`] clone is dropped.
pub async fn open(path: PathBuf) -> std::io::Result<(LedgerSink, JoinHandle<std::io::Result<()>>)> {
    let file = tokio::fs::File::create(&path).await?;
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let task = tokio::spawn(write_all(file, rx));
    Ok((LedgerSink { tx: Some(tx) }, task))
}

async fn write_all(file: tokio::fs::File, mut rx: mpsc::Receiver<Record>) -> std::io::Result<()> {
    let mut out = tokio::io::BufWriter::new(file);
    while let Some(record) = rx.recv().await {
        let mut line = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line).await?;
        // Flush whenever the machines are idle, so that a reader following the file sees
        // records promptly without a write per record under load.
        if rx.is_empty() {
            out.flush().await?;
        }
    }
    out.flush().await?;
    out.into_inner().sync_all().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_serialise_flat_with_a_type_tag() {
        let record = Record {
            seq: 3,
            time: "2026-03-01T12:05:09.123Z".into(),
            machine: 0,
            address: 1,
            serial: "SIM000".into(),
            entry: Entry::Exception {
                exception_seq: 2,
                code: 0x7F,
                legacy_code: 0x7F,
                name: "GameEnded",
                priority: false,
                event: Some(EventData::GameEnded { win: 40 }),
            },
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "seq": 3, "time": "2026-03-01T12:05:09.123Z", "machine": 0, "address": 1,
                "serial": "SIM000", "type": "exception", "exception_seq": 2, "code": 127,
                "legacy_code": 127, "name": "GameEnded", "priority": false,
                "event": {"win": 40}
            })
        );
    }

    #[tokio::test]
    async fn the_writer_flushes_every_record_before_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let (sink, task) = open(path.clone()).await.unwrap();
        for seq in 1..=3 {
            let entry = Entry::Power { state: PowerState::Lost };
            let record = Record {
                seq,
                time: String::new(),
                machine: 0,
                address: 1,
                serial: "S".into(),
                entry,
            };
            sink.send(record).await;
        }
        drop(sink);
        task.await.unwrap().unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().all(|l| l.contains("\"type\":\"power\"")));
    }
}
