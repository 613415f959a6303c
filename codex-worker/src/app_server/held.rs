//! Notifications for threads nobody owns yet, held briefly: `thread/started` (and anything after
//! it) can outrun the response that tells the worker which session created the thread.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use codex_bus_worker_io::log;

/// Most lines held at once; beyond it the oldest are dropped, so a child that chatters about
/// threads the worker never learns of cannot grow memory without bound.
const MAX_HELD: usize = 1024;

/// Held lines per thread, in arrival order.
#[derive(Debug, Default)]
pub struct Held {
    by_thread: HashMap<String, VecDeque<(Instant, Vec<u8>)>>,
    order: VecDeque<(Instant, String)>,
    count: usize,
}

impl Held {
    /// Holds `line` about `thread` until `deadline`.
    pub fn hold(&mut self, thread: &str, line: &[u8], deadline: Instant) {
        if self.count >= MAX_HELD {
            self.drop_oldest();
        }
        self.by_thread
            .entry(thread.to_owned())
            .or_default()
            .push_back((deadline, line.to_vec()));
        self.order.push_back((deadline, thread.to_owned()));
        self.count += 1;
    }

    /// Takes the lines held for `thread`, oldest first.
    pub fn release(&mut self, thread: &str) -> Vec<Vec<u8>> {
        let lines: Vec<Vec<u8>> = self
            .by_thread
            .remove(thread)
            .map(|lines| lines.into_iter().map(|(_, line)| line).collect())
            .unwrap_or_default();
        self.count -= lines.len();
        lines
    }

    /// Drops the lines whose deadline passed; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some((deadline, thread)) = self.order.front() {
            if *deadline > now {
                break;
            }
            let thread = thread.clone();
            self.order.pop_front();
            dropped += self.drop_front_of(&thread, now);
        }
        dropped
    }

    /// Forgets everything (the child that sent the lines is gone).
    pub fn clear(&mut self) {
        self.by_thread.clear();
        self.order.clear();
        self.count = 0;
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn drop_oldest(&mut self) {
        if let Some((_, thread)) = self.order.pop_front() {
            log::line(format_args!(
                "holding too many notifications for unknown threads; dropping one for {thread}"
            ));
            self.drop_front_of(
                &thread,
                Instant::now() + std::time::Duration::from_secs(3600),
            );
        }
    }

    /// Drops the front line of `thread` if it is due by `now`; returns 1 if it did.
    fn drop_front_of(&mut self, thread: &str, now: Instant) -> usize {
        let Some(lines) = self.by_thread.get_mut(thread) else {
            return 0;
        };
        let due = lines.front().is_some_and(|(deadline, _)| *deadline <= now);
        if due {
            lines.pop_front();
            self.count -= 1;
        }
        if lines.is_empty() {
            self.by_thread.remove(thread);
        }
        usize::from(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_released_in_order_or_expire() {
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        let mut held = Held::default();
        held.hold("a", b"1", later);
        held.hold("b", b"x", later);
        held.hold("a", b"2", later);
        assert_eq!(held.release("a"), vec![b"1".to_vec(), b"2".to_vec()]);
        assert!(!held.is_empty());
        assert_eq!(held.expire(now), 0);
        assert_eq!(held.expire(later), 1);
        assert!(held.is_empty());
        assert!(held.release("b").is_empty());
    }

    #[test]
    fn the_hold_is_bounded() {
        let now = Instant::now();
        let mut held = Held::default();
        for n in 0..MAX_HELD + 10 {
            held.hold(&format!("t{n}"), b"x", now);
        }
        assert!(held.count <= MAX_HELD);
        assert!(held.release("t0").is_empty());
        assert_eq!(held.release(&format!("t{}", MAX_HELD + 9)).len(), 1);
    }
}
