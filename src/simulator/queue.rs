//! The machine's exception queue (sas-protocol.md §4.1, §5, §10): a bounded FIFO of ordinary
//! exceptions plus a separate list of priority exceptions, which are reported first and never
//! count against the FIFO's capacity.
//!
//! When the FIFO is full, a new exception drops the oldest one and the caller raises priority
//! exception 70 (buffer overflow). An exception leaves the queue only when the host acknowledges
//! its report (implied ACK, §4.2): [`ExceptionQueue::acknowledge`] removes it by id, so an entry
//! that a later overflow already dropped, or a new head that arrived in the meantime, is never
//! removed by mistake. The queue lives in simulated NVRAM: it survives power cycles and is lost
//! only on a RAM clear.

use std::collections::VecDeque;

use firmware_protocols::sas::{Exception, RealTimeEvent};

/// One queued exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The ledger's exception sequence number.
    pub id: u64,
    /// What an RTE frame carries (sas-protocol.md §6).
    pub event: RealTimeEvent,
    /// The one-byte code outside RTE mode (bills have per-denomination codes, §5).
    pub legacy: Exception,
}

impl Queued {
    /// The code of the exception, as the ledger names it.
    pub fn code(&self) -> Exception {
        self.event.exception()
    }
}

/// What [`ExceptionQueue::push`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// The oldest entry, dropped to make room.
    pub dropped: Option<Queued>,
}

/// FIFO plus priority list.
#[derive(Debug)]
pub struct ExceptionQueue {
    capacity: usize,
    fifo: VecDeque<Queued>,
    priority: VecDeque<Queued>,
}

impl ExceptionQueue {
    /// An empty queue holding at most `capacity` ordinary exceptions.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), fifo: VecDeque::new(), priority: VecDeque::new() }
    }

    /// Appends an exception; priority exceptions go to the priority list.
    pub fn push(&mut self, entry: Queued) -> Pushed {
        if entry.legacy.is_priority() {
            self.priority.push_back(entry);
            return Pushed::default();
        }
        let dropped = if self.fifo.len() >= self.capacity { self.fifo.pop_front() } else { None };
        self.fifo.push_back(entry);
        Pushed { dropped }
    }

    /// The exception the next general poll reports: priority ones first.
    pub fn peek(&self) -> Option<&Queued> {
        self.priority.front().or_else(|| self.fifo.front())
    }

    /// Whether a priority exception with this code is waiting.
    pub fn has_priority(&self, code: Exception) -> bool {
        self.priority.iter().any(|q| q.legacy == code)
    }

    /// Removes the entry the host acknowledged; `None` if it is already gone.
    pub fn acknowledge(&mut self, id: u64) -> Option<Queued> {
        for list in [&mut self.priority, &mut self.fifo] {
            if let Some(pos) = list.iter().position(|q| q.id == id) {
                return list.remove(pos);
            }
        }
        None
    }

    /// Empties the queue (RAM clear), returning what was lost, oldest first.
    pub fn clear(&mut self) -> Vec<Queued> {
        self.priority.drain(..).chain(self.fifo.drain(..)).collect()
    }

    /// Entries waiting, priority and ordinary.
    pub fn len(&self) -> usize {
        self.priority.len() + self.fifo.len()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, code: u8) -> Queued {
        let legacy = Exception::from_code(code);
        Queued { id, event: RealTimeEvent::Exception(legacy), legacy }
    }

    #[test]
    fn priority_exceptions_are_reported_before_older_ordinary_ones() {
        let mut q = ExceptionQueue::new(20);
        q.push(entry(1, 0x11));
        q.push(entry(2, 0x51));
        assert_eq!(q.peek().map(|e| e.id), Some(2));
        assert_eq!(q.acknowledge(2).map(|e| e.id), Some(2));
        assert_eq!(q.peek().map(|e| e.id), Some(1));
    }

    #[test]
    fn a_full_fifo_drops_its_oldest_entry() {
        let mut q = ExceptionQueue::new(2);
        assert_eq!(q.push(entry(1, 0x11)), Pushed::default());
        q.push(entry(2, 0x12));
        let pushed = q.push(entry(3, 0x11));
        assert_eq!(pushed.dropped.map(|e| e.id), Some(1));
        assert_eq!(q.len(), 2);
        // Priority entries do not count against the capacity.
        assert_eq!(q.push(entry(4, 0x70)), Pushed::default());
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn acknowledging_a_dropped_entry_removes_nothing() {
        let mut q = ExceptionQueue::new(1);
        q.push(entry(1, 0x11));
        q.push(entry(2, 0x12));
        assert_eq!(q.acknowledge(1), None);
        assert_eq!(q.peek().map(|e| e.id), Some(2));
        assert_eq!(q.clear().len(), 1);
        assert!(q.is_empty());
    }
}
