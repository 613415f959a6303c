//! Capability tokens: a client presents a random secret, the config holds its SHA-256 digest,
//! and digests are compared in constant time (`subtle`), as Codex's `--ws-auth
//! capability-token` does, so neither the file nor the timing of a refusal gives the token away.

use std::sync::Arc;

use codex_bus_config::TokenEntry;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::Identity;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest([u8; 32]);

impl Digest {
    /// Parses 64 hex digits (either case).
    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Digest(bytes))
    }

    /// The digest of `token`'s bytes.
    pub(crate) fn of(token: &[u8]) -> Self {
        Digest(Sha256::digest(token).into())
    }

    /// Whether `token` hashes to this digest, compared in constant time.
    pub(crate) fn matches(&self, token: &[u8]) -> bool {
        Digest::of(token).0.ct_eq(&self.0).into()
    }
}

/// One configured token.
struct Entry {
    digest: Digest,
    identity: Identity,
}

/// Every configured token.
pub(crate) struct TokenTable(Vec<Entry>);

impl TokenTable {
    /// The table of `entries` (inline and from the tokens file).
    ///
    /// # Errors
    ///
    /// The same digest in two entries (the config checks each list; this checks them together).
    pub(crate) fn new(entries: &[TokenEntry]) -> Result<Self, String> {
        let mut table: Vec<Entry> = Vec::with_capacity(entries.len());
        for entry in entries {
            let digest = Digest::from_hex(&entry.sha256)
                .ok_or_else(|| "auth.tokens: a sha256 is not 64 hex digits".to_owned())?;
            if table.iter().any(|e| e.digest == digest) {
                return Err(format!(
                    "auth: the token of tenant '{}' is configured twice (tokens and tokens_file)",
                    entry.tenant
                ));
            }
            let subject = entry.subject.as_deref().unwrap_or(&entry.tenant);
            table.push(Entry {
                digest,
                identity: Identity {
                    tenant: entry.tenant.as_str().into(),
                    subject: Arc::from(subject),
                    method: "token",
                },
            });
        }
        Ok(TokenTable(table))
    }

    /// The identity of `token`, if it is configured. Every entry is compared, each in constant
    /// time, so the time taken does not depend on which entry (if any) matches.
    pub(crate) fn find(&self, token: &str) -> Option<Identity> {
        let presented = Digest::of(token.as_bytes());
        let mut found = None;
        for entry in &self.0 {
            if bool::from(presented.0.ct_eq(&entry.digest.0)) {
                found = Some(&entry.identity);
            }
        }
        found.cloned()
    }

    /// How many tokens are configured.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no token is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(token: &str) -> String {
        Digest::of(token.as_bytes())
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn a_token_is_found_by_its_digest_and_nothing_else_is() {
        let entries = [
            TokenEntry {
                tenant: "a".into(),
                sha256: hex("secret-a"),
                subject: Some("ci".into()),
            },
            TokenEntry {
                tenant: "b".into(),
                sha256: hex("secret-b").to_ascii_uppercase(),
                subject: None,
            },
        ];
        let table = TokenTable::new(&entries).unwrap();
        let a = table.find("secret-a").unwrap();
        assert_eq!((&*a.tenant, &*a.subject), ("a", "ci"));
        let b = table.find("secret-b").unwrap();
        assert_eq!((&*b.tenant, &*b.subject), ("b", "b"));
        assert_eq!(table.find("secret-c"), None);
        assert_eq!(table.find(""), None);
        assert_eq!(
            table.find(&hex("secret-a")),
            None,
            "the digest is not the token"
        );
    }

    #[test]
    fn the_same_token_twice_is_refused() {
        let entry = TokenEntry {
            tenant: "a".into(),
            sha256: hex("t"),
            subject: None,
        };
        let error = TokenTable::new(&[entry.clone(), entry]).err().unwrap();
        assert!(error.contains("configured twice"), "{error}");
    }

    #[test]
    fn a_digest_matches_only_its_token() {
        let digest = Digest::from_hex(&hex("tok")).unwrap();
        assert!(digest.matches(b"tok"));
        assert!(!digest.matches(b"tok "));
        assert!(Digest::from_hex("zz").is_none());
        assert!(Digest::from_hex(&"g".repeat(64)).is_none());
    }
}
