//! "Did you mean" hints for unknown keys.

use strsim::{jaro_winkler, osa_distance};

/// Similarity above which a candidate is offered even when many edits away (e.g. a missing `_sec` suffix).
const CLOSE_SIMILARITY: f64 = 0.9;

/// The known key `unknown` was most likely meant to be, if any is close enough to be worth suggesting.
pub(crate) fn closest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    let typed = normalize(unknown);
    // Short keys get fewer edits, otherwise "x" would be "corrected" to "id".
    let max_edits = (typed.chars().count() / 3).clamp(1, 2);
    known
        .iter()
        .map(|&candidate| {
            let wanted = normalize(candidate);
            let edits = osa_distance(&typed, &wanted);
            (candidate, edits, jaro_winkler(&typed, &wanted))
        })
        .filter(|&(_, edits, similarity)| edits <= max_edits || similarity >= CLOSE_SIMILARITY)
        .min_by(|a, b| a.1.cmp(&b.1).then(b.2.total_cmp(&a.2)))
        .map(|(candidate, _, _)| candidate)
}

/// camelCase and kebab-case spellings of a snake_case key are the same key to a human.
fn normalize(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::closest;
    use crate::schema::{LIMIT_KEYS, POOL_KEYS, TOP_KEYS};

    #[test]
    fn corrects_typos_and_other_spellings() {
        assert_eq!(
            closest("drain_timout_sec", LIMIT_KEYS),
            Some("drain_timeout_sec")
        );
        assert_eq!(closest("maxRestarts", LIMIT_KEYS), Some("max_restarts"));
        assert_eq!(
            closest("restart_window", LIMIT_KEYS),
            Some("restart_window_sec")
        );
        assert_eq!(closest("agrs", POOL_KEYS), Some("args"));
        assert_eq!(closest("pool", TOP_KEYS), Some("pools"));
    }

    #[test]
    fn offers_nothing_for_unrelated_keys() {
        assert_eq!(closest("x", POOL_KEYS), None);
        assert_eq!(closest("hostname", POOL_KEYS), None);
        assert_eq!(closest("name", POOL_KEYS), None);
    }
}
