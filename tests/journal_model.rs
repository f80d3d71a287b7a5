//! Model check of the journal: random appends (with duplicate machine seqs), acknowledgements,
//! reopens and reads against an in-memory model, on a real log (16 KiB segments, so it rolls
//! and removes acknowledged segments) and keyed state.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod journal_support;

use std::collections::{BTreeMap, HashMap};

use journal_support::*;
use proptest::prelude::*;
use slotgate::journal::{Class, Journal, JournalConfig, JournalError, Record, WriterHandle};

const DESTS: [&str; 2] = ["a", "b"];
const MACHINES: [&str; 3] = ["M1", "M2", "M3"];

#[derive(Debug, Clone)]
enum Mseq {
    /// Machine's next seq (plus a small jump ahead).
    Next(u64),
    /// An already-appended one: `next - 1 - back` (a retry), skipped by the journal.
    Dup(u64),
}

#[derive(Debug, Clone)]
struct NewRec {
    class: Class,
    machine: usize,
    mseq: Option<Mseq>,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<NewRec>),
    /// Destination, and `through` as a permille of `next_seq + 4` (or u64::MAX).
    Ack(usize, Option<u32>),
    Reopen,
    Read(u32, usize),
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Financial),
        Just(Class::Significant),
        Just(Class::Snapshot),
        Just(Class::Status),
        Just(Class::Alarm),
    ]
}

fn new_rec() -> impl Strategy<Value = NewRec> {
    let mseq = prop_oneof![
        2 => Just(None),
        5 => (0u64..3).prop_map(|j| Some(Mseq::Next(j))),
        3 => (0u64..4).prop_map(|b| Some(Mseq::Dup(b))),
    ];
    (class(), 0..MACHINES.len(), mseq).prop_map(|(class, machine, mseq)| NewRec {
        class,
        machine,
        // Gateway alarms have no machine seq.
        mseq: if class == Class::Alarm { None } else { mseq },
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop::collection::vec(new_rec(), 1..20).prop_map(Op::Append),
        3 => (0..2usize, prop_oneof![4 => (0u32..1200).prop_map(Some), 1 => Just(None)])
            .prop_map(|(d, t)| Op::Ack(d, t)),
        1 => Just(Op::Reopen),
        2 => (0u32..1200, 0usize..30).prop_map(|(f, l)| Op::Read(f, l)),
    ]
}

/// What the journal should hold.
#[derive(Debug, Default)]
struct Model {
    /// seq → (class, machine, machine seq, payload)
    records: BTreeMap<u64, (Class, String, Option<u64>, String)>,
    first: u64,
    next: u64,
    cursors: [u64; 2],
    machine_next: HashMap<String, u64>,
    counter: u64,
}

impl Model {
    fn min_cursor(&self) -> u64 {
        self.cursors.iter().copied().min().unwrap()
    }

    /// The journal removed every record below `first` (whole acknowledged segments).
    fn removed_below(&mut self, first: u64) {
        assert!(first >= self.first, "the first kept seq went backwards");
        assert!(first <= self.min_cursor(), "unacknowledged records removed: first {first}");
        self.records = self.records.split_off(&first);
        self.first = first;
    }

    /// A read may start later than asked only where the writer removed acknowledged records
    /// meanwhile.
    fn check_read(&self, from: u64, limit: usize, got: &[Record]) {
        let start = got.first().map_or_else(|| from.max(self.first), |r| r.header.seq);
        if start > from.max(self.first) {
            assert!(start <= self.min_cursor(), "read({from}) skipped unacknowledged records");
        }
        if got.is_empty() && limit > 0 {
            assert!(self.records.range(from..).all(|(s, _)| *s < self.min_cursor()));
            return;
        }
        let want: Vec<_> = self.records.range(start..).take(limit).collect();
        assert_eq!(
            got.iter().map(|r| r.header.seq).collect::<Vec<_>>(),
            want.iter().map(|(s, _)| **s).collect::<Vec<_>>(),
            "read({from}, {limit}) returned other seqs than the model"
        );
        for (r, (seq, (class, machine, mseq, payload))) in got.iter().zip(want) {
            assert_eq!(r.header.class, *class, "class of {seq}");
            assert_eq!(&r.header.machine, machine, "machine of {seq}");
            assert_eq!(r.header.machine_seq, *mseq, "machine seq of {seq}");
            assert_eq!(payload_of(r).as_deref(), Some(payload.as_str()), "body of {seq}");
        }
    }
}

struct Harness {
    config: JournalConfig,
    journal: Option<(Journal, WriterHandle)>,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn j(&self) -> &Journal {
        &self.journal.as_ref().unwrap().0
    }

    /// A command whose answer arrives only after the writer finished the previous group and its
    /// maintenance (pruning, status): an empty append.
    fn barrier(&self, model: &Model) {
        let a = self.rt.block_on(self.j().append(Vec::new())).unwrap();
        assert_eq!((a.first, a.next), (model.next, model.next));
    }

    fn check(&self, model: &mut Model, previous_cursors: &mut [u64; 2]) {
        self.barrier(model);
        let status = self.j().status().borrow().clone();
        assert_eq!(status.next_seq, model.next, "next seq");
        model.removed_below(status.first_seq);
        for (i, d) in DESTS.iter().enumerate() {
            let c = status.cursors[*d];
            assert_eq!(c, model.cursors[i], "cursor {d}");
            assert!(c >= previous_cursors[i], "cursor {d} went backwards");
            assert!(c <= status.next_seq, "cursor {d} beyond next seq");
            previous_cursors[i] = c;
        }
        let all = read_all(self.j());
        model.check_read(0, usize::MAX, &all);
        // Contiguous, gap-free, chained.
        for w in all.windows(2) {
            assert_eq!(w[1].header.seq, w[0].header.seq + 1, "gap in seqs");
            assert_eq!(w[1].prev_hash, w[0].record_hash(), "chain link at {}", w[1].header.seq);
        }
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::in_dir(&dir.path().join("journal"));
    config.destinations = DESTS.iter().map(|d| (*d).to_owned()).collect();
    config.cap_bytes = 1 << 20;
    let mut h = Harness { journal: Some(open(&config)), config, rt: runtime(), _dir: dir };
    let mut model = Model::default();
    let mut seen_cursors = [0u64; 2];
    for op in ops {
        match op {
            Op::Append(recs) => {
                let mut batch = Vec::new();
                let first = model.next;
                for r in recs {
                    let machine = MACHINES[r.machine];
                    let next = model.machine_next.get(machine).copied().unwrap_or(0);
                    let mseq = match r.mseq {
                        None => None,
                        Some(Mseq::Next(j)) => Some(next + j),
                        Some(Mseq::Dup(b)) => Some(next.saturating_sub(1 + b)),
                    };
                    model.counter += 1;
                    let payload = format!("p{}", model.counter);
                    batch.push(rec(r.class, machine, mseq, &payload));
                    if let Some(s) = mseq {
                        if s < next {
                            continue; // durable already: the journal skips it
                        }
                        model.machine_next.insert(machine.to_owned(), s + 1);
                    }
                    model.records.insert(model.next, (r.class, machine.to_owned(), mseq, payload));
                    model.next += 1;
                }
                let a = h.rt.block_on(h.j().append(batch)).unwrap();
                assert_eq!((a.first, a.next), (first, model.next), "appended span");
            }
            Op::Ack(d, through) => {
                let through = match through {
                    Some(p) => (model.next + 4) * u64::from(p) / 1000,
                    None => u64::MAX,
                };
                h.rt.block_on(h.j().acknowledge(DESTS[d], through)).unwrap();
                let at = through.saturating_add(1).min(model.next).max(model.cursors[d]);
                model.cursors[d] = at;
            }
            Op::Reopen => {
                let (journal, writer) = h.journal.take().unwrap();
                close(journal, writer);
                h.journal = Some(open(&h.config));
            }
            Op::Read(from, limit) => {
                let from = (model.next + 4) * u64::from(from) / 1000;
                let got = h.j().read(from, limit).unwrap();
                model.check_read(from, limit, &got);
            }
        }
        h.check(&mut model, &mut seen_cursors);
    }
    // An unknown destination is refused, not created.
    let err = h.rt.block_on(h.j().acknowledge("nowhere", 0)).unwrap_err();
    assert!(matches!(err, JournalError::UnknownDestination(_)));
    let (journal, writer) = h.journal.take().unwrap();
    close(journal, writer);
    // Everything survives a final reopen too.
    h.journal = Some(open(&h.config));
    h.check(&mut model, &mut seen_cursors);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_journal_behaves_like_its_model(ops in prop::collection::vec(op(), 1..30)) {
        run(ops);
    }
}

/// sled releases its file lock from background jobs after the `Db` is dropped; a close
/// followed at once by an open in the same process used to fail with "could not acquire lock".
#[test]
fn a_closed_journal_reopens_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig::in_dir(&dir.path().join("journal"));
    let rt = runtime();
    for i in 0..40u64 {
        let (journal, writer) = open(&config);
        let a = rt.block_on(journal.append(vec![rec(Class::Status, "M1", None, "x")])).unwrap();
        assert_eq!(a.first, i);
        close(journal, writer);
    }
}
