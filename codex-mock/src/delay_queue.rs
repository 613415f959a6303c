//! Replies held back by `mock/delay`, released in deadline order, or withdrawn when the request is
//! cancelled.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

/// A min-heap of pre-rendered reply lines keyed by deadline.
#[derive(Debug, Default)]
pub struct DelayQueue {
    heap: BinaryHeap<Reverse<Held>>,
    next_seq: u64,
}

/// One held reply; `seq` keeps equal deadlines in arrival order.
#[derive(Debug)]
struct Held {
    deadline: Instant,
    seq: u64,
    /// The request's id token, by which a cancellation names it.
    id: Vec<u8>,
    line: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

impl DelayQueue {
    /// Holds `line`, the reply to the request whose id token is `id`, until `deadline`.
    pub fn push(&mut self, deadline: Instant, id: Vec<u8>, line: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Held {
            deadline,
            seq,
            id,
            line,
        }));
    }

    /// The earliest deadline, if anything is held.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(held)| held.deadline)
    }

    /// Appends every line due at `now` to `out`, earliest first.
    pub fn release_due(&mut self, now: Instant, out: &mut Vec<u8>) {
        while self
            .heap
            .peek()
            .is_some_and(|Reverse(held)| held.deadline <= now)
        {
            if let Some(Reverse(held)) = self.heap.pop() {
                out.extend_from_slice(&held.line);
            }
        }
    }

    /// Drops the held reply to the request whose id token is `id`; whether there was one.
    pub fn withdraw(&mut self, id: &[u8]) -> bool {
        let before = self.heap.len();
        self.heap.retain(|Reverse(held)| held.id != id);
        self.heap.len() != before
    }

    /// Whether any reply is still held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn releases_due_lines_in_deadline_then_arrival_order() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut queue = DelayQueue::default();
        queue.push(at(30), b"3".to_vec(), b"c\n".to_vec());
        queue.push(at(10), b"1".to_vec(), b"a\n".to_vec());
        queue.push(at(10), b"2".to_vec(), b"b\n".to_vec());
        queue.push(at(50), b"4".to_vec(), b"d\n".to_vec());
        queue.push(at(20), b"5".to_vec(), b"x\n".to_vec());
        assert!(queue.withdraw(b"5"));
        assert!(!queue.withdraw(b"5"), "withdrawn once");
        assert_eq!(queue.next_deadline(), Some(at(10)));

        let mut out = Vec::new();
        queue.release_due(at(5), &mut out);
        assert!(out.is_empty());
        queue.release_due(at(30), &mut out);
        assert_eq!(out, b"a\nb\nc\n");
        assert_eq!(queue.next_deadline(), Some(at(50)));
        assert!(!queue.is_empty());
        queue.release_due(at(50), &mut out);
        assert!(queue.is_empty());
        assert_eq!(queue.next_deadline(), None);
    }
}
