//! The demo's final tally: what the simulated machines really did (the simulator's ledger),
//! what the gateway journalled and what the upstream receiver got, per machine, compared. The
//! demo succeeds only when the three agree and nothing journalled is missing upstream.
//!
//! The figures are games, credits bet and credits won: the money the regulator follows. Both
//! the journal and the receiver are read through the same [`add_event`], from the canonical
//! event JSON, so a difference can only come from what reached each of them.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Games and money of one machine, in accounting credits (denomination 0.01 in the demo, so
/// credits are kopecks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Play {
    pub games: u64,
    pub bet: u64,
    pub win: u64,
}

impl Play {
    fn add(&mut self, other: Self) {
        self.games += other.games;
        self.bet += other.bet;
        self.win += other.win;
    }
}

impl fmt::Display for Play {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "games:{},bet:{},win:{}", self.games, self.bet, self.win)
    }
}

/// [`Play`] per machine registry id.
pub type PerMachine = BTreeMap<String, Play>;

/// Adds one canonical event (`docs/event-schema.md`) to `totals`: a `bet_accepted` its bet, a
/// `game_ended` its games and win. Other kinds move no money in the demo's play.
pub fn add_event(totals: &mut PerMachine, event: &Value) {
    let credits = |amount: &Value| amount["credits"].as_u64().unwrap_or(0);
    let play = match event["kind"].as_str() {
        Some("bet_accepted") => Play { games: 0, bet: credits(&event["data"]["amount"]), win: 0 },
        Some("game_ended") => Play {
            games: event["data"]["games"].as_u64().unwrap_or(0),
            bet: 0,
            win: credits(&event["data"]["win"]),
        },
        _ => return,
    };
    let Some(machine) = event["machine"]["registry_id"].as_str() else { return };
    totals.entry(machine.to_owned()).or_default().add(play);
}

/// The ground truth from the simulator's ledger (`src/simulator/ledger.rs`): every `game`
/// record, under the registry id `registry_id` gives its serial. A line that is not JSON is an
/// error: the ledger is the reference, it must be read whole.
pub fn ledger_totals(
    ledger: &str,
    registry_id: impl Fn(&str) -> String,
) -> Result<PerMachine, String> {
    let mut totals = PerMachine::new();
    for (n, line) in ledger.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line)
            .map_err(|e| format!("ledger line {}: not JSON: {e}", n + 1))?;
        if record["type"] != "game" {
            continue;
        }
        let (Some(serial), Some(bet), Some(win)) =
            (record["serial"].as_str(), record["bet"].as_u64(), record["win"].as_u64())
        else {
            return Err(format!("ledger line {}: a game without serial, bet or win", n + 1));
        };
        totals.entry(registry_id(serial)).or_default().add(Play { games: 1, bet, win });
    }
    Ok(totals)
}

/// Everything the tally line reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub ledger: PerMachine,
    pub journal: PerMachine,
    pub received: PerMachine,
    /// Records in the journal.
    pub journalled: u64,
    /// Distinct records the receiver accepted.
    pub received_records: u64,
    /// Journalled records the receiver never got.
    pub missing: u64,
    /// New events that arrived out of `gatewayseq` order or with a gap in `machineseq`.
    pub out_of_order: u64,
    /// Events received again (the protocol allows it; the receiver keeps one).
    pub duplicates: u64,
    /// Events delivered as `historical`: the replay after the outage.
    pub replayed: u64,
    /// The largest backlog (the replay lane; while down, everything unacknowledged) the
    /// gateway reported during the run.
    pub max_backlog: u64,
}

impl Tally {
    /// Games the ledger has that the journal or the receiver lack (or invented ones), plus
    /// journalled records the receiver never got.
    pub fn lost(&self) -> u64 {
        let machines = self.ledger.keys().chain(self.journal.keys()).chain(self.received.keys());
        let mut seen = std::collections::BTreeSet::new();
        let mut lost = self.missing;
        for machine in machines.filter(|m| seen.insert(*m)) {
            let games = |t: &PerMachine| t.get(machine).map_or(0, |p| p.games);
            let ledger = games(&self.ledger);
            lost += ledger.abs_diff(games(&self.journal)) + ledger.abs_diff(games(&self.received));
        }
        lost
    }

    /// Ledger = journal = received for every machine, nothing lost, nothing out of order.
    pub fn balances(&self) -> bool {
        let same = |a: &PerMachine, b: &PerMachine| {
            let nonzero = |t: &PerMachine| -> PerMachine {
                t.iter()
                    .filter(|(_, p)| **p != Play::default())
                    .map(|(k, p)| (k.clone(), *p))
                    .collect()
            };
            nonzero(a) == nonzero(b)
        };
        same(&self.ledger, &self.journal)
            && same(&self.journal, &self.received)
            && self.lost() == 0
            && self.out_of_order == 0
    }

    /// One line per machine whose three figures differ.
    pub fn differences(&self) -> Vec<String> {
        let mut machines: Vec<&String> =
            self.ledger.keys().chain(self.journal.keys()).chain(self.received.keys()).collect();
        machines.sort();
        machines.dedup();
        machines
            .into_iter()
            .filter_map(|m| {
                let of = |t: &PerMachine| t.get(m).copied().unwrap_or_default();
                let (l, j, r) = (of(&self.ledger), of(&self.journal), of(&self.received));
                (l != j || j != r)
                    .then(|| format!("MISMATCH {m}: ledger {l}  journal {j}  received {r}"))
            })
            .collect()
    }
}

fn sum(totals: &PerMachine) -> Play {
    totals.values().fold(Play::default(), |mut all, p| {
        all.add(*p);
        all
    })
}

/// The stable, parseable tally line: `TALLY key=value …`, `result=BALANCED` or
/// `result=UNBALANCED` last.
impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TALLY machines={} ledger={} journal={} received={} records_journalled={} \
             records_received={} replayed={} max_backlog={} duplicates={} lost={} \
             out_of_order={} result={}",
            self.ledger.len(),
            sum(&self.ledger),
            sum(&self.journal),
            sum(&self.received),
            self.journalled,
            self.received_records,
            self.replayed,
            self.max_backlog,
            self.duplicates,
            self.lost(),
            self.out_of_order,
            if self.balances() { "BALANCED" } else { "UNBALANCED" }
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bet(machine: &str, credits: u64) -> Value {
        json!({"kind": "bet_accepted", "machine": {"registry_id": machine},
               "data": {"amount": {"credits": credits}, "games": 1}})
    }

    fn end(machine: &str, win: u64) -> Value {
        json!({"kind": "game_ended", "machine": {"registry_id": machine},
               "data": {"win": {"credits": win}, "games": 1}})
    }

    const LEDGER: &str = r#"{"type":"start","serial":"A1"}
{"type":"game","serial":"A1","bet":5,"win":10}
{"type":"game","serial":"B2","bet":2,"win":0}
{"type":"game","serial":"A1","bet":1,"win":0}
"#;

    fn balanced() -> Tally {
        let ledger = ledger_totals(LEDGER, |s| format!("EGM-{s}")).unwrap();
        let mut journal = PerMachine::new();
        for e in [bet("EGM-A1", 5), end("EGM-A1", 10), bet("EGM-B2", 2), end("EGM-B2", 0)] {
            add_event(&mut journal, &e);
        }
        for e in [bet("EGM-A1", 1), end("EGM-A1", 0), json!({"kind": "link_state"})] {
            add_event(&mut journal, &e);
        }
        Tally {
            ledger,
            received: journal.clone(),
            journal,
            journalled: 7,
            received_records: 7,
            replayed: 3,
            max_backlog: 3,
            ..Tally::default()
        }
    }

    #[test]
    fn three_agreeing_sources_balance() {
        let tally = balanced();
        assert_eq!(tally.ledger["EGM-A1"], Play { games: 2, bet: 6, win: 10 });
        assert!(tally.balances(), "{tally}");
        assert!(tally.differences().is_empty());
        assert_eq!(
            tally.to_string(),
            "TALLY machines=2 ledger=games:3,bet:8,win:10 journal=games:3,bet:8,win:10 \
             received=games:3,bet:8,win:10 records_journalled=7 records_received=7 replayed=3 \
             max_backlog=3 duplicates=0 lost=0 out_of_order=0 result=BALANCED"
        );
    }

    #[test]
    fn a_game_missing_upstream_is_lost_and_unbalanced() {
        let mut tally = balanced();
        // The receiver never got B2's game end.
        tally.received.insert("EGM-B2".into(), Play { games: 0, bet: 2, win: 0 });
        assert!(!tally.balances());
        assert_eq!(tally.lost(), 1);
        assert!(tally.to_string().contains("lost=1 out_of_order=0 result=UNBALANCED"));
        assert_eq!(tally.differences().len(), 1, "{:?}", tally.differences());
    }

    #[test]
    fn a_game_the_journal_lacks_is_lost_even_if_upstream_agrees_with_it() {
        let mut tally = balanced();
        tally.journal.insert("EGM-B2".into(), Play::default());
        tally.received.insert("EGM-B2".into(), Play::default());
        assert_eq!(tally.lost(), 2);
        assert!(!tally.balances());
    }

    #[test]
    fn a_wrong_amount_a_missing_record_or_disorder_is_unbalanced() {
        let mut wrong = balanced();
        wrong.received.insert("EGM-A1".into(), Play { games: 2, bet: 6, win: 11 });
        assert_eq!(wrong.lost(), 0, "the games are there");
        assert!(!wrong.balances(), "but a win differs");
        let mut missing = balanced();
        missing.missing = 1;
        assert!(!missing.balances());
        let mut disorder = balanced();
        disorder.out_of_order = 1;
        assert!(!disorder.balances());
        assert!(disorder.to_string().ends_with("out_of_order=1 result=UNBALANCED"));
    }

    #[test]
    fn a_ledger_that_is_not_json_is_an_error() {
        assert!(ledger_totals("{\"type\":\"game\"", |s| s.to_owned()).is_err());
        assert!(ledger_totals(r#"{"type":"game","serial":"A"}"#, |s| s.to_owned()).is_err());
    }
}
