//! A bounded ring of counter samples: the last [`CAPACITY`] readings of a fixed list of
//! monotonic counters, from which per-period counts (deltas) are read back.
//!
//! Filled once a second by the dashboard's sampler (`admin::rates`), read by its `rates` frame;
//! never touched on the message path. What the columns are is the sampler's business: here a
//! sample is a row of `u64`s, every row as long as the first.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Samples kept: five minutes at one a second.
pub(crate) const CAPACITY: usize = 300;

/// The ring. A lock, taken by the sampler once a period and by the frame builder once a
/// dashboard tick, never by routing.
#[derive(Default)]
pub(crate) struct Samples {
    rows: Mutex<VecDeque<Box<[u64]>>>,
}

impl Samples {
    /// Records one reading of `width` counters (`read` fills the row), forgetting the oldest
    /// beyond [`CAPACITY`]. A full ring reuses the oldest row, so it allocates nothing.
    /// `width` is the same at every call (the sampler's columns are fixed for the daemon's life).
    pub(crate) fn record(&self, width: usize, read: impl FnOnce(&mut [u64])) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let mut row = if rows.len() >= CAPACITY {
            rows.pop_front().expect("a full ring has a front")
        } else {
            vec![0; width].into_boxed_slice()
        };
        read(&mut row);
        rows.push_back(row);
    }

    /// For each column, the increase between consecutive samples, oldest first: one value fewer
    /// than there are samples (none for fewer than two). A counter that went down (it cannot:
    /// the counters are monotonic for the life of the process) counts as 0.
    pub(crate) fn deltas(&self) -> Vec<Vec<u64>> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let width = rows.front().map_or(0, |r| r.len());
        let mut columns = vec![Vec::with_capacity(rows.len().saturating_sub(1)); width];
        for (before, after) in rows.iter().zip(rows.iter().skip(1)) {
            for (column, (b, a)) in columns.iter_mut().zip(before.iter().zip(after.iter())) {
                column.push(a.saturating_sub(*b));
            }
        }
        columns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_samples_and_gives_their_deltas() {
        let samples = Samples::default();
        assert!(samples.deltas().is_empty(), "no sample, no column");
        samples.record(2, |row| row.copy_from_slice(&[5, 0]));
        assert_eq!(samples.deltas(), vec![Vec::<u64>::new(); 2], "one sample");
        samples.record(2, |row| row.copy_from_slice(&[8, 1]));
        samples.record(2, |row| row.copy_from_slice(&[8, 4]));
        assert_eq!(samples.deltas(), vec![vec![3, 0], vec![1, 3]]);

        // Bounded: after many more, CAPACITY samples remain, so CAPACITY - 1 deltas, the
        // latest ones.
        for i in 0..(2 * CAPACITY as u64) {
            samples.record(2, |row| row.copy_from_slice(&[8 + i * i, 4]));
        }
        let deltas = samples.deltas();
        assert_eq!(deltas[0].len(), CAPACITY - 1);
        let last = 2 * CAPACITY as u64 - 1;
        assert_eq!(
            deltas[0].last(),
            Some(&(last * last - (last - 1) * (last - 1)))
        );
        assert!(deltas[1].iter().all(|d| *d == 0));

        // A counter that went down (a restarted daemon starts a new ring; this cannot happen in
        // one) counts as no increase rather than wrapping.
        samples.record(2, |row| row.copy_from_slice(&[0, 4]));
        assert_eq!(samples.deltas()[0].last(), Some(&0));
    }
}
