//! Splitting a byte stream into lines across reads.

use memchr::{memchr, memchr_iter};

/// Keeps only the unfinished last line between reads, so many connections can share one read
/// buffer instead of each holding a large one.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Calls `each` with every line completed by `data` (newline excluded), in order.
    pub fn feed(&mut self, data: &[u8], mut each: impl FnMut(&[u8])) {
        let mut rest = data;
        if !self.partial.is_empty() {
            let Some(newline) = memchr(b'\n', rest) else {
                self.partial.extend_from_slice(rest);
                return;
            };
            self.partial.extend_from_slice(&rest[..newline]);
            each(&self.partial);
            self.partial.clear();
            rest = &rest[newline + 1..];
        }
        let mut start = 0;
        for newline in memchr_iter(b'\n', rest) {
            each(&rest[start..newline]);
            start = newline + 1;
        }
        self.partial.extend_from_slice(&rest[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_anywhere_come_out_whole() {
        let stream = b"one\ntwo\n\nthree is longer\nfour\n";
        for cut in 0..stream.len() {
            let mut lines = Lines::default();
            let mut got: Vec<Vec<u8>> = Vec::new();
            for chunk in [&stream[..cut], &stream[cut..]] {
                lines.feed(chunk, |l| got.push(l.to_vec()));
            }
            let want: Vec<&[u8]> = vec![b"one", b"two", b"", b"three is longer", b"four"];
            assert_eq!(got, want, "cut at {cut}");
        }
    }
}
