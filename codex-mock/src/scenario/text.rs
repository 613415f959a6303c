//! The agent's text: seeded words cut into deltas of an exact byte size.

use super::rng::Rng;

const WORDS: &[&str] = &[
    "the", "bus", "routes", "each", "session", "to", "one", "worker", "and", "codex", "answers",
    "with", "a", "stream", "of", "deltas", "while", "tests", "check", "every", "line", "arrives",
    "in", "order", "for", "its", "own", "client", "only",
];

/// One delta of exactly `bytes` ASCII bytes.
pub fn delta(rng: &mut Rng, bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 8);
    while text.len() < bytes {
        let word = WORDS[usize::try_from(rng.below(WORDS.len() as u64)).unwrap_or(0)];
        text.push_str(word);
        text.push(' ');
    }
    text.truncate(bytes);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_have_the_exact_size_and_depend_on_the_seed() {
        let mut rng = Rng::new(3);
        for bytes in [1, 5, 16, 100] {
            assert_eq!(delta(&mut rng, bytes).len(), bytes);
        }
        assert_eq!(delta(&mut Rng::new(9), 40), delta(&mut Rng::new(9), 40));
        assert_ne!(delta(&mut Rng::new(9), 40), delta(&mut Rng::new(10), 40));
    }
}
